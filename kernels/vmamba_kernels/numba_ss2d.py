# Copyright 2026 The transformers-vmamba authors. Licensed under the MIT license.
"""numba kernels of the SS2D operator on CPU: ``forward`` and ``backward`` on channels-last tensors.

The contract is ``transformers_vmamba.selective_scan.check_ss2d_inputs``: x (batch, H, W, C); dt (batch, H, W, 4, C)
before bias and softplus; A (4, C, N); B, C (batch, H, W, 4, N); D, dt_bias (4, C); y (batch, H, W, C), the four
routes' outputs summed, in float32 (float64 when an input is float64; float16/bfloat16 inputs are converted to
float32 first). Inputs may have any strides: the kernels address x, dt, B, C (and dy) through their batch, row,
column and route strides, so only a feature axis of stride != 1 or another dtype costs a copy (the model's
float32 B and C, strided views of its projection, are read in place). ``forward_low_rank``/``backward_low_rank``
take dt as its per-route low-rank factors (batch, H, W, 4, R) and (4, C, R), as the model computes it: the kernels
form dt at each position from the R factors (R multiply-adds per channel), so the (batch, H, W, 4, C) dt is never
written or read (forming it beforehand with a matmul took about a tenth of VMamba-T s2l5's forward).

Work split. One task owns a block of channels of one image, for all four routes, so it can add every route's output
into y (and every route's input gradient into dx) with no race and no (batch, 4, ...) route copies. Tasks run in
parallel (``prange`` over images x channel blocks, on ``torch.get_num_threads()`` numba threads). With fewer images
than threads (batch 1 on 2 threads) a task may instead own a group of two routes (or one) for its channel block and
write its own partial y (dx), which the launch function sums: a task then pays each position's fixed cost for two
routes instead of four, at full width (VMamba-T's stage 1 at 2 threads, batch 1: forward 1.28x, backward 1.12x
faster than with half the channels per task). Inside a task each route walks the map's ``H * W`` positions in its
order (row-major, column-major, then both reversed) by index arithmetic; at each position the innermost loops run
over the block's channels, the contiguous axis of x, dt, y, so they vectorise and every position reads whole cache
lines.

Backward. The operator saves only its inputs, so the states are recomputed. The reverse (adjoint) sweep
``g_t = C_t dy_t + a_{t+1} g_{t+1}`` needs ``h_{t-1}`` and ``a_t = exp(delta_t A)`` at every step: a task keeps them
for one segment of its route at a time (``segment`` steps, sized so the two buffers stay about
``_SEGMENT_ELEMENTS`` elements each). With more than one segment a first forward sweep stores the state entering
every segment (a checkpoint), then each segment, last first, is recomputed from its checkpoint and swept backwards.
For d_state 1 a VMamba-T route fits one segment (no checkpoint sweep) in blocks of up to 167 channels; for
d_state 16 memory stays bounded by the segment, at the cost of one more forward sweep. Sums over channels (dB,
dC) go to per-channel-block partial buffers reduced afterwards; sums over positions (dA, dD, d dt_bias) to
per-image partials; no atomics anywhere.

Compilation is lazy and cached: importing ``vmamba_kernels`` does not import this module; importing this module
imports numba and defines the kernels, and the first call per compute dtype (float32, float64) compiles them (10-30
seconds for forward and backward), cached on disk
(``cache=True``: next to this file, else numba's user-wide cache directory; with no writable location at all the
kernels compile in memory at every process start instead). Float32 uses the module's own vectorisable exp and
log1p (see ``_expf``), float64 libm's.
"""

from __future__ import annotations

import math
import warnings

import numba
import numpy as np
import torch
from llvmlite import ir as llvm_ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from transformers_vmamba.selective_scan import check_ss2d_inputs, low_rank_dt_grads, ss2d_compute_dtype


# Floating-point flags of the kernels: everything but finite-math assumptions (-inf/inf/NaN must behave) and
# approximate functions; reassociation lets LLVM vectorise the channel sums of dB and dC.
FASTMATH = {"nsz", "arcp", "contract", "reassoc"}
# Elements (segment steps x states x block channels) of each of the backward's two per-task segment buffers (2 MiB
# each in float32): one segment for a whole d_state-1 route of VMamba-T's first stage (3136 steps) up to 167
# channels; 1 << 17 cost a checkpoint sweep there, 1.2-1.3x slower backward (measured).
_SEGMENT_ELEMENTS = 1 << 19
_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

CACHING = True  # whether the kernels are cached on disk (False when numba found no writable cache location)


def _jit(fn):
    """``njit(parallel=True, cache=True)``; without any writable cache location numba refuses ``cache=True`` when
    the function is defined, so compile in memory instead."""
    global CACHING
    options = dict(parallel=True, fastmath=FASTMATH, nogil=True)
    try:
        return njit(cache=True, **options)(fn)
    except RuntimeError as err:  # "cannot cache function ...: no locator available for file ..."
        if "cannot cache" not in str(err):
            raise
        CACHING = False
        warnings.warn(f"vmamba_kernels.numba_ss2d: {err}; compiling without an on-disk cache", stacklevel=2)
        return njit(cache=False, **options)(fn)


@njit(inline="always", fastmath=FASTMATH)
def _pixel(k, t, height, width, length):
    """(row, col) of route ``k``'s step ``t``: routes 0 and 1 read the map row by row and column by column, routes 2
    and 3 are those two reversed."""
    if k >= 2:
        t = length - 1 - t
    if k == 1 or k == 3:
        return t % height, t // height
    return t // width, t % width


@njit(inline="always", fastmath=FASTMATH)
def _at(strides, b, row, col, k):
    """Offset of (image b, pixel (row, col), route k) in a flat input with element strides (batch, H, W, route); the
    channel (or state) axis that follows has stride 1."""
    return b * strides[0] + row * strides[1] + col * strides[2] + k * strides[3]


@njit(inline="always", fastmath=FASTMATH)
def _dt_plus_bias(dt, offset, W_k, bias_k, c0, out):
    """out = dt + dt_bias over one position's channels [c0, c0 + len(out)) of route k. With an empty W_k (rank 0)
    dt is read at ``offset``; otherwise ``offset`` holds the position's R low-rank factors u and dt = sum_r u_r W_k[r]
    (W_k (R, C)) is formed here, so that the (batch, H, W, 4, C) dt never goes through memory. Four factors per
    pass over the channels (then two, then one), so out is loaded and stored about R / 4 times rather than R times
    (1.02-1.09x faster forward, 1.05-1.18x backward for VMamba-T's R of 12 to 48)."""
    width_c = out.shape[0]
    rank = W_k.shape[0]
    if rank == 0:
        dt_p = dt[offset + c0 : offset + c0 + width_c]
        for i in range(width_c):
            out[i] = dt_p[i] + bias_k[i]
    else:
        for i in range(width_c):
            out[i] = bias_k[i]
        r = 0
        while r + 4 <= rank:
            u0, u1, u2, u3 = dt[offset + r], dt[offset + r + 1], dt[offset + r + 2], dt[offset + r + 3]
            W0 = W_k[r, c0 : c0 + width_c]
            W1 = W_k[r + 1, c0 : c0 + width_c]
            W2 = W_k[r + 2, c0 : c0 + width_c]
            W3 = W_k[r + 3, c0 : c0 + width_c]
            for i in range(width_c):
                out[i] += (u0 * W0[i] + u1 * W1[i]) + (u2 * W2[i] + u3 * W3[i])
            r += 4
        if r + 2 <= rank:
            u0, u1 = dt[offset + r], dt[offset + r + 1]
            W0 = W_k[r, c0 : c0 + width_c]
            W1 = W_k[r + 1, c0 : c0 + width_c]
            for i in range(width_c):
                out[i] += u0 * W0[i] + u1 * W1[i]
            r += 2
        while r < rank:
            u = dt[offset + r]
            W_r = W_k[r, c0 : c0 + width_c]
            for i in range(width_c):
                out[i] += u * W_r[i]
            r += 1


# Float32 exp and log1p as plain arithmetic (Cephes' expf polynomial, a fitted log1p one), so that LLVM vectorises
# the channel loops that use them: numba's math.exp/math.log1p are libm calls, which stay scalar without Intel's SVML
# (the softplus alone then costs ~50 ns per element). Relative errors below 3e-7 (2.5 float32 ulp) in the normal range;
# results below 1.2e-38 flush to zero. Float64 keeps libm. The helpers are compiled without reassociation, which
# would undo the split-constant range reduction.
_HELPER_MATH = {"contract", "nsz"}
_f32 = np.float32
_ZERO, _HALF, _ONE = _f32(0.0), _f32(0.5), _f32(1.0)
_LOG2E, _LN2_HI, _LN2_LO = _f32(1.44269504088896341), _f32(0.693359375), _f32(-2.12194440e-4)
_EXP_LOW, _EXP_HIGH = _f32(-87.33654), _f32(88.0)  # exp(-87.34) = 2**-126, exp(88) < 2**127
_E0, _E1, _E2, _E3, _E4, _E5 = (
    _f32(c)
    for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)
)
_G0, _G1, _G2, _G3, _G4, _G5, _G6, _G7 = (
    _f32(c) for c in (-4.9999648333e-01, 3.3321321011e-01, -2.4857160449e-01, 1.9153642654e-01, -1.3753776252e-01,
                      7.9204231501e-02, -3.0065603554e-02, 5.3647770546e-03)
)  # fmt: skip


@intrinsic
def _rint(typingctx, x):
    """x rounded to the nearest integer, as a float32 (LLVM's rint: one vroundps per vector; numba's math.floor
    returns an int64, which costs conversions through 64-bit lanes)."""

    def codegen(context, builder, signature, args):
        fn = builder.module.declare_intrinsic("llvm.rint", [llvm_ir.FloatType()])
        return builder.call(fn, args)

    return types.float32(types.float32), codegen


@intrinsic
def _pow2(typingctx, n):
    """2**n as a float32 for an integral float32 n in [-126, 127]: the exponent field built in 32-bit lanes."""

    def codegen(context, builder, signature, args):
        i32 = llvm_ir.IntType(32)
        biased = builder.add(builder.fptosi(args[0], i32), llvm_ir.Constant(i32, 127))
        return builder.bitcast(builder.shl(biased, llvm_ir.Constant(i32, 23)), llvm_ir.FloatType())

    return types.float32(types.float32), codegen


@intrinsic
def _prefer_512_bit_vectors(typingctx):
    """Ask LLVM for 512-bit vectors in the calling function (called first in each kernel's ``prange`` body, which
    numba compiles as a function of its own). LLVM's tuning for recent Intel cores prefers 256-bit vectors even with
    AVX-512 (where wide vectors once lowered the clock); the kernels are compute-bound, and 512-bit channel loops
    measured 1.05-1.3x faster here. A per-function attribute, so no other numba code changes; without AVX-512
    LLVM keeps the widest legal vectors."""

    def codegen(context, builder, signature, args):
        # llvmlite's add() refuses names outside its list; LLVM takes string attributes as they are. Should a
        # later llvmlite store attributes differently, the kernels compile at LLVM's default width instead.
        try:
            set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        except TypeError:
            pass
        return context.get_dummy_value()

    return types.none(), codegen


# The float32 helpers are branch-free (selects as arithmetic) and inlined into the kernels at numba's IR level:
# left to LLVM they stay calls, and the channel loops do not vectorise (4x slower, measured).
@njit(inline="always", fastmath=_HELPER_MATH)
def _expf(x):
    """exp(x) for float32 x <= 88; 0 below -87.3 (where exp(x) < 2**-126)."""
    clamped = min(max(x, _EXP_LOW), _EXP_HIGH)
    nf = _rint(clamped * _LOG2E)
    r = clamped - nf * _LN2_HI - nf * _LN2_LO
    p = ((((_E0 * r + _E1) * r + _E2) * r + _E3) * r + _E4) * r + _E5
    p = p * r * r + r + _ONE
    return p * _pow2(nf) * _f32(x >= _EXP_LOW)


@njit(inline="always", fastmath=_HELPER_MATH)
def _log1pf(e):
    """log(1 + e) for float32 e in [0, 1] as e + e**2 g(e), g a degree-7 polynomial fitted to (log1p(e) - e) / e**2
    for relative error (within 3.3e-8 of log1p in exact arithmetic, 1.7e-7 evaluated in float32): 9 operations
    where Cephes' logf on the mantissa of 1 + e took about 20 (the softplus was a third of the d_state-1 forward;
    this made the forward 1.06-1.19x and the backward 1.03-1.07x faster on VMamba-T's stage shapes)."""
    g = ((((((_G7 * e + _G6) * e + _G5) * e + _G4) * e + _G3) * e + _G2) * e + _G1) * e + _G0
    return (e * e) * g + e


@njit(inline="always", fastmath=_HELPER_MATH)
def _softplusf(z):
    # Past torch's threshold (20) log1p(exp(-z)) < 2e-9 is below half a float32 ulp of z: the sum is z exactly.
    return max(z, _ZERO) + _log1pf(_expf(-abs(z)))


@njit(inline="always", fastmath=_HELPER_MATH)
def _sigmoidf(z):
    return _ONE / (_ONE + _expf(-z))


@njit(fastmath=_HELPER_MATH)
def _softplus64(z):
    # torch's softplus (beta 1, threshold 20).
    return z if z > 20.0 else math.log1p(math.exp(z))


@njit(fastmath=_HELPER_MATH)
def _sigmoid64(z):
    if z > 20.0:  # torch's softplus gradient past the threshold
        return 1.0
    e = math.exp(-abs(z))
    return 1.0 / (1.0 + e) if z >= 0.0 else e / (1.0 + e)


def _exp(x):  # typed by the overloads below: float32 -> the helpers above, float64 -> libm
    raise NotImplementedError


def _softplus(z):
    raise NotImplementedError


def _softplus_grad(z):
    raise NotImplementedError


@overload(_exp, inline="always", jit_options=dict(fastmath=_HELPER_MATH))
def _exp_typed(x):
    if x == types.float32:
        return lambda x: _expf(x)
    return lambda x: math.exp(x)


@overload(_softplus, inline="always", jit_options=dict(fastmath=_HELPER_MATH))
def _softplus_typed(z):
    if z == types.float32:
        return lambda z: _softplusf(z)
    return lambda z: _softplus64(z)


@overload(_softplus_grad, inline="always", jit_options=dict(fastmath=_HELPER_MATH))
def _softplus_grad_typed(z):
    if z == types.float32:
        return lambda z: _sigmoidf(z)
    return lambda z: _sigmoid64(z)


def _forward_kernel(x, xs, dt, dts, Wt, At, Bm, Bs, Cm, Cs, D, bias, y, batch, height, width, block):
    """x, dt, Bm, Cm: flat inputs (batch, H, W, C), (batch, H, W, 4, C or R), (batch, H, W, 4, N) with element
    strides xs, dts, Bs, Cs (batch, H, W, route; see ``_at``). Wt (4, R, C): dt's low-rank weights (R = 0: dt is
    given whole; see ``_dt_plus_bias``). At (4, N, C); D, bias (4, C); y (groups, batch, H * W, C), written: the
    output of each route group (groups 1, 2 or 4 of 4 // groups consecutive routes), summed by the caller."""
    groups = y.shape[0]
    routes = 4 // groups
    length = height * width
    channels = y.shape[3]
    states = At.shape[1]
    blocks = (channels + block - 1) // block
    for task in prange(batch * blocks * groups):
        _prefer_512_bit_vectors()
        grp = task % groups
        b = task // groups // blocks
        c0 = (task // groups % blocks) * block
        c1 = min(c0 + block, channels)
        width_c = c1 - c0
        h = np.empty((states, width_c), dtype=x.dtype)
        delta = np.empty(width_c, dtype=x.dtype)
        drive = np.empty(width_c, dtype=x.dtype)
        out = np.empty(width_c, dtype=x.dtype)
        for kk in range(routes):
            k = grp * routes + kk
            h[:, :] = 0.0
            bias_k = bias[k, c0:c1]
            D_k = D[k, c0:c1]
            W_k = Wt[k]
            for t in range(length):
                row, col = _pixel(k, t, height, width, length)
                # Slices of this position's channel block: the inner loops then index from 0, so LLVM sees
                # contiguous accesses and vectorises them (an offset index costs a wraparound check per element).
                xo = _at(xs, b, row, col, 0) + c0
                x_p = x[xo : xo + width_c]
                bo = _at(Bs, b, row, col, k)
                co = _at(Cs, b, row, col, k)
                _dt_plus_bias(dt, _at(dts, b, row, col, k), W_k, bias_k, c0, delta)
                for i in range(width_c):
                    d = _softplus(delta[i])
                    xv = x_p[i]
                    delta[i] = d
                    drive[i] = d * xv
                    out[i] = D_k[i] * xv
                for n in range(states):
                    bn = Bm[bo + n]
                    cn = Cm[co + n]
                    A_kn = At[k, n, c0:c1]
                    h_n = h[n]
                    for i in range(width_c):
                        hv = _exp(delta[i] * A_kn[i]) * h_n[i] + drive[i] * bn
                        h_n[i] = hv
                        out[i] += cn * hv
                y_p = y[grp, b, row * width + col, c0:c1]
                if kk == 0:  # y starts as the first route's output: no zero fill
                    for i in range(width_c):
                        y_p[i] = out[i]
                else:
                    for i in range(width_c):
                        y_p[i] += out[i]


def _backward_kernel(
    dy, dys, x, xs, dt, dts, Wt, At, Bm, Bs, Cm, Cs, D, bias, dx, ddt, dAp, dBp, dCp, dDp, dbiasp, one,
    batch, height, width, block, segment,
):  # fmt: skip
    """Inputs as in ``_forward_kernel`` plus dy, flat like x with strides dys. Outputs (contiguous, with the
    positions flattened, L = H * W; every element written): dx (groups, batch, L, C), per route group like y in
    ``_forward_kernel``; ddt (batch, L, 4, C), the gradient of dt (whole, also when dt comes as low-rank factors);
    dAp (batch, 4, N, C), dDp, dbiasp (batch, 4, C) per-image partials; dBp, dCp (blocks, batch, L, 4, N)
    per-channel-block partials. ``one`` is 1 in the compute dtype."""
    groups = dx.shape[0]
    routes = 4 // groups
    length = height * width
    channels = dx.shape[3]
    states = At.shape[1]
    blocks = (channels + block - 1) // block
    segments = (length + segment - 1) // segment
    zero = one - one
    for task in prange(batch * blocks * groups):
        _prefer_512_bit_vectors()
        grp = task % groups
        b = task // groups // blocks
        blk = task // groups % blocks
        c0 = blk * block
        c1 = min(c0 + block, channels)
        width_c = c1 - c0
        h = np.empty((states, width_c), dtype=x.dtype)
        carry = np.empty((states, width_c), dtype=x.dtype)  # a_{t+1} g_{t+1}
        grad_A = np.empty((states, width_c), dtype=x.dtype)
        checkpoints = np.zeros((segments, states, width_c), dtype=x.dtype)
        h_prev = np.empty((segment, states, width_c), dtype=x.dtype)
        decay = np.empty((segment, states, width_c), dtype=x.dtype)
        delta = np.empty((segment, width_c), dtype=x.dtype)
        grad_delta = np.empty(width_c, dtype=x.dtype)
        grad_x = np.empty(width_c, dtype=x.dtype)
        grad_D = np.empty(width_c, dtype=x.dtype)
        grad_bias = np.empty(width_c, dtype=x.dtype)
        pre = np.empty(width_c, dtype=x.dtype)  # dt + dt_bias
        for kk in range(routes):
            k = grp * routes + kk
            bias_k = bias[k, c0:c1]
            D_k = D[k, c0:c1]
            W_k = Wt[k]
            # (Inner loops index slices from 0 so that they vectorise; see ``_forward_kernel``.)
            # Checkpoint sweep: the state entering each segment (only when there is more than one).
            if segments > 1:
                h[:, :] = zero
                delta_0 = delta[0]
                for t in range((segments - 1) * segment):
                    if t % segment == 0:
                        checkpoints[t // segment] = h
                    row, col = _pixel(k, t, height, width, length)
                    xo = _at(xs, b, row, col, 0) + c0
                    x_p = x[xo : xo + width_c]
                    bo = _at(Bs, b, row, col, k)
                    _dt_plus_bias(dt, _at(dts, b, row, col, k), W_k, bias_k, c0, delta_0)
                    for i in range(width_c):
                        d = _softplus(delta_0[i])
                        delta_0[i] = d
                        grad_x[i] = d * x_p[i]  # scratch: the step's input
                    for n in range(states):
                        bn = Bm[bo + n]
                        A_kn = At[k, n, c0:c1]
                        h_n = h[n]
                        for i in range(width_c):
                            h_n[i] = _exp(delta_0[i] * A_kn[i]) * h_n[i] + grad_x[i] * bn
                checkpoints[segments - 1] = h
            carry[:, :] = zero
            grad_A[:, :] = zero
            grad_D[:] = zero
            grad_bias[:] = zero
            for s in range(segments - 1, -1, -1):
                t0 = s * segment
                t1 = min(t0 + segment, length)
                # Recompute the segment from its checkpoint, keeping h_{t-1}, a_t and delta_t.
                h[:, :] = checkpoints[s]
                for t in range(t0, t1):
                    j = t - t0
                    row, col = _pixel(k, t, height, width, length)
                    xo = _at(xs, b, row, col, 0) + c0
                    x_p = x[xo : xo + width_c]
                    bo = _at(Bs, b, row, col, k)
                    delta_j = delta[j]
                    _dt_plus_bias(dt, _at(dts, b, row, col, k), W_k, bias_k, c0, delta_j)
                    for i in range(width_c):
                        d = _softplus(delta_j[i])
                        delta_j[i] = d
                        grad_x[i] = d * x_p[i]  # scratch: the step's input
                    for n in range(states):
                        bn = Bm[bo + n]
                        A_kn = At[k, n, c0:c1]
                        h_n = h[n]
                        h_prev_jn = h_prev[j, n]
                        decay_jn = decay[j, n]
                        for i in range(width_c):
                            a = _exp(delta_j[i] * A_kn[i])
                            h_prev_jn[i] = h_n[i]
                            decay_jn[i] = a
                            h_n[i] = a * h_n[i] + grad_x[i] * bn
                # Reverse sweep of the adjoint g_t = C_t dy_t + a_{t+1} g_{t+1}.
                for t in range(t1 - 1, t0 - 1, -1):
                    j = t - t0
                    row, col = _pixel(k, t, height, width, length)
                    p = row * width + col
                    xo = _at(xs, b, row, col, 0) + c0
                    x_p = x[xo : xo + width_c]
                    dyo = _at(dys, b, row, col, 0) + c0
                    dy_p = dy[dyo : dyo + width_c]
                    bo = _at(Bs, b, row, col, k)
                    co = _at(Cs, b, row, col, k)
                    delta_j = delta[j]
                    for i in range(width_c):
                        gy = dy_p[i]
                        grad_delta[i] = zero
                        grad_x[i] = D_k[i] * gy
                        grad_D[i] += gy * x_p[i]
                    for n in range(states):
                        bn = Bm[bo + n]
                        cn = Cm[co + n]
                        A_kn = At[k, n, c0:c1]
                        h_prev_jn = h_prev[j, n]
                        decay_jn = decay[j, n]
                        carry_n = carry[n]
                        grad_A_n = grad_A[n]
                        grad_b = zero
                        grad_c = zero
                        for i in range(width_c):
                            d = delta_j[i]
                            xv = x_p[i]
                            gy = dy_p[i]
                            carried = decay_jn[i] * h_prev_jn[i]  # a_t h_{t-1}
                            g = cn * gy + carry_n[i]
                            grad_c += gy * (carried + d * xv * bn)  # dy_t h_t
                            grad_b += g * d * xv
                            grad_A_n[i] += g * d * carried
                            grad_delta[i] += g * (A_kn[i] * carried + bn * xv)
                            grad_x[i] += g * d * bn
                            carry_n[i] = decay_jn[i] * g
                        dBp[blk, b, p, k, n] = grad_b
                        dCp[blk, b, p, k, n] = grad_c
                    ddt_p = ddt[b, p, k, c0:c1]
                    _dt_plus_bias(dt, _at(dts, b, row, col, k), W_k, bias_k, c0, pre)
                    for i in range(width_c):
                        g_dt = grad_delta[i] * _softplus_grad(pre[i])
                        ddt_p[i] = g_dt
                        grad_bias[i] += g_dt
                    dx_p = dx[grp, b, p, c0:c1]
                    if kk == 0:  # dx starts as the first route's gradient: no zero fill
                        for i in range(width_c):
                            dx_p[i] = grad_x[i]
                    else:
                        for i in range(width_c):
                            dx_p[i] += grad_x[i]
            for i in range(width_c):
                c = c0 + i
                for n in range(states):
                    dAp[b, k, n, c] = grad_A[n, i]
                dDp[b, k, c] = grad_D[i]
                dbiasp[b, k, c] = grad_bias[i]


_forward_compiled = _jit(_forward_kernel)
_backward_compiled = _jit(_backward_kernel)


# ---------------------------------------------------------------------------------------------------------------
# Launch functions (the operator contract; no autograd, no op registration: that is transformers_vmamba.ss2d).
# ---------------------------------------------------------------------------------------------------------------


def _check(name: str, x, dt, A, B, C, D, dt_bias) -> tuple:
    """The contract's checks plus the kernels' own; returns the tensors to convert (dt may be a dict of factors)."""
    check_ss2d_inputs(x, dt, A, B, C, D, dt_bias)
    tensors = (x, *(dt.values() if isinstance(dt, dict) else [dt]), A, B, C, D, dt_bias)
    for t in tensors:
        if t.dtype not in _SUPPORTED_DTYPES:
            raise TypeError(f"numba ss2d {name}: inputs must be float16/bfloat16/float32/float64, got {t.dtype}")
    if x.device.type != "cpu":
        raise RuntimeError(f"numba ss2d {name}: the numba kernels need CPU tensors, got {x.device}")
    return tensors


def _set_threads() -> None:
    """Run on torch's thread count. The first call launches numba's thread pool, which with the OpenMP layer
    resets the process-wide OpenMP thread count to all cores: put torch's back, or a user's
    ``torch.set_num_threads(1)`` would silently stop holding after the first VMamba forward."""
    wanted = torch.get_num_threads()
    numba.set_num_threads(max(1, min(wanted, numba.config.NUMBA_NUM_THREADS)))
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)


# Cost of one position of a task's route walk, in channel-equivalents (offsets, slices, loop set-up), for
# ``_block_size``; with it the rule picks the fastest of the blocks measured on VMamba-T stage shapes (2 threads,
# batch 1 and 8).
_POSITION_OVERHEAD = 32


# Cost of summing the route groups' partial outputs, as a factor on a split's cost (a guess that keeps whole-route
# tasks whenever a split in channels is as good).
_GROUP_MERGE_COST = 1.05
ROUTE_GROUPS = (1, 2, 4)


def _work_split(batch: int, channels: int, block: int | None, groups: int | None, threads: int | None = None):
    """(channels per task, route groups). By default the cheapest by ``_block_size``'s rule, with each route group
    counted as one more image whose tasks walk 4 / groups routes; ``block`` or ``groups`` pin one of the two
    (tests)."""
    if groups is not None and groups not in ROUTE_GROUPS:
        raise ValueError(f"numba ss2d: groups must be one of {ROUTE_GROUPS}, got {groups}")
    threads = threads or numba.get_num_threads()
    if groups is not None or block is not None:
        groups = groups or 1
        return _block_size(batch * groups, channels, block, threads), groups
    best = None
    for candidate in ROUTE_GROUPS:
        width = _block_size(batch * candidate, channels, None, threads)
        rounds = -(-batch * candidate * -(-channels // width) // threads)
        cost = rounds * (4 // candidate) * (width + _POSITION_OVERHEAD) * (1 if candidate == 1 else _GROUP_MERGE_COST)
        if best is None or cost < best[0]:
            best = (cost, width, candidate)
    return best[1], best[2]


def _block_size(batch: int, channels: int, block: int | None, threads: int | None = None) -> int:
    """Channels per task. Few wide tasks beat many narrow ones (the channel loops vectorise best when long, and
    every position costs offsets and loop set-up), but idle threads cost more: choose the split of each image's
    channels that minimises rounds x (block + per-position overhead), rounds = tasks / threads rounded up, block
    a multiple of 8. At batch 1 on 2 threads VMamba-T's stages get two blocks per image, 1.2-2x faster than the
    fixed 64-channel blocks (halved down to 16) used before."""
    if block is not None:
        if block < 1:
            raise ValueError(f"numba ss2d: block must be positive, got {block}")
        return block
    threads = threads or numba.get_num_threads()
    best = None
    for splits in range(1, -(-channels // 8) + 1):
        width = min(channels, (-(-channels // splits) + 7) // 8 * 8)
        tasks = batch * -(-channels // width)
        cost = -(-tasks // threads) * (width + _POSITION_OVERHEAD)
        if best is None or cost < best[0]:
            best = (cost, width)
        if tasks >= 4 * threads:
            break
    return best[1]


def _params(acc: torch.dtype, A, D, dt_bias, dt_weight):
    """A as (4, N, C), D, dt_bias and dt's low-rank weights as (4, R, C) (R = 0 when dt is given whole), contiguous
    numpy arrays in the compute dtype (tiny)."""
    if dt_weight is None:
        dt_weight = A.new_empty((4, A.shape[1], 0))
    params = (A.transpose(1, 2), D, dt_bias, dt_weight.transpose(1, 2))
    return [t.detach().to(acc).contiguous().numpy() for t in params]


def _strided(t: torch.Tensor, acc: torch.dtype):
    """(flat numpy view, element strides (batch, H, W, route)) of a (batch, H, W, F) or (batch, H, W, 4, F) input
    in the compute dtype. No copy when the dtype matches and the feature axis has stride 1 (e.g. the model's dt,
    whose route axis is not the slowest, or a channel slice); otherwise a contiguous copy."""
    t = t.detach().to(acc)
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        t = t.contiguous()
    span = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    flat = t.as_strided((span,), (1,), t.storage_offset()).numpy()
    strides = (*t.stride()[:3], t.stride(3) if t.dim() == 5 else 0)
    return flat, np.array(strides, dtype=np.int64)


def _dt_arguments(dt, acc):
    """(dt or its low-rank factors u (batch, H, W, 4, R), as ``_strided``; dt's low-rank weights (4, C, R) or None)."""
    if isinstance(dt, dict):
        return _strided(dt["dt_low_rank"], acc), dt["dt_weight"]
    return _strided(dt, acc), None


def _forward(x, dt, A, B, C, D, dt_bias, block, groups):
    acc = ss2d_compute_dtype(*_check("forward", x, dt, A, B, C, D, dt_bias))
    batch, height, width, channels = x.shape
    _set_threads()  # before the split, which asks numba for its thread count (see _set_threads)
    block, groups = _work_split(max(batch, 1), channels, block, groups)
    if x.numel() == 0:
        return torch.empty(x.shape, dtype=acc)
    y = torch.empty((groups, *x.shape), dtype=acc)
    dt_a, dt_weight = _dt_arguments(dt, acc)
    A_a, D_a, bias_a, W_a = _params(acc, A, D, dt_bias, dt_weight)
    _forward_compiled(
        *_strided(x, acc), *dt_a, W_a, A_a, *_strided(B, acc), *_strided(C, acc), D_a, bias_a,
        y.view(groups, batch, height * width, channels).numpy(), batch, height, width, block,
    )  # fmt: skip
    return _merge_groups(y)


def _merge_groups(partials: torch.Tensor) -> torch.Tensor:
    """The sum of the route groups' (groups, ...) partial outputs, added in place into the first (a contiguous
    slab): 2-4x faster than ``partials.sum(0)``."""
    merged = partials[0]
    for group in range(1, partials.shape[0]):
        merged.add_(partials[group])
    return merged


def forward(x, dt, A, B, C, D, dt_bias, *, block: int | None = None, groups: int | None = None) -> torch.Tensor:
    """y (batch, H, W, C) of the SS2D contract, in float32 (float64 for float64 inputs). ``block`` pins the number
    of channels per task, ``groups`` the number of route groups (1, 2 or 4): tests use them to get every work
    split on tiny inputs."""
    return _forward(x, dt, A, B, C, D, dt_bias, block, groups)


def forward_low_rank(
    x, dt_low_rank, dt_weight, A, B, C, D, dt_bias, *, block: int | None = None, groups: int | None = None
) -> torch.Tensor:
    """``forward`` with dt = ``low_rank_dt(dt_low_rank, dt_weight)`` formed inside the kernel (never in memory)."""
    return _forward(x, {"dt_low_rank": dt_low_rank, "dt_weight": dt_weight}, A, B, C, D, dt_bias, block, groups)


def _backward(grad_y, x, dt, A, B, C, D, dt_bias, block, groups, segment):
    """(dx, ddt, dA, dB, dC, dD, d dt_bias) in the compute dtype; ddt is the gradient of dt whole."""
    tensors = _check("backward", x, dt, A, B, C, D, dt_bias)
    if grad_y.shape != x.shape or grad_y.device != x.device or not grad_y.is_floating_point():
        raise ValueError(
            f"numba ss2d backward: grad_y must be a floating-point {tuple(x.shape)} tensor on {x.device}, got "
            f"{grad_y.dtype} {tuple(grad_y.shape)} on {grad_y.device}"
        )
    acc = ss2d_compute_dtype(*tensors)
    batch, height, width, channels = x.shape
    state = A.shape[2]
    length = height * width
    dt_shape = (batch, height, width, 4, channels)
    _set_threads()
    block, groups = _work_split(max(batch, 1), channels, block, groups)
    if x.numel() == 0:
        return tuple(torch.zeros(shape, dtype=acc) for shape in (x.shape, dt_shape, A.shape, B.shape, C.shape,
                                                                 D.shape, dt_bias.shape))  # fmt: skip
    blocks = -(-channels // block)
    if segment is None:
        segment = max(1, _SEGMENT_ELEMENTS // (state * min(block, channels)))
    segment = max(1, min(segment, length))
    dt_a, dt_weight = _dt_arguments(dt, acc)
    A_a, D_a, bias_a, W_a = _params(acc, A, D, dt_bias, dt_weight)
    # Every element of these is written by the kernel (dx: the first route's gradient, then the others added).
    dx, ddt = torch.empty((groups, *x.shape), dtype=acc), torch.empty(dt_shape, dtype=acc)
    dA_partial = torch.empty((batch, 4, state, channels), dtype=acc)
    dD_partial, dbias_partial = (torch.empty((batch, 4, channels), dtype=acc) for _ in range(2))
    dB_partial, dC_partial = (torch.empty((blocks, batch, length, 4, state), dtype=acc) for _ in range(2))
    _backward_compiled(
        *_strided(grad_y, acc), *_strided(x, acc), *dt_a, W_a, A_a, *_strided(B, acc), *_strided(C, acc),
        D_a, bias_a, dx.view(groups, batch, length, channels).numpy(), ddt.view(batch, length, 4, channels).numpy(),
        dA_partial.numpy(), dB_partial.numpy(), dC_partial.numpy(), dD_partial.numpy(), dbias_partial.numpy(),
        np.ones((), dtype=A_a.dtype)[()], batch, height, width, block, segment,
    )  # fmt: skip
    dx = _merge_groups(dx)
    dA = dA_partial.sum(0).transpose(1, 2)
    dB, dC = (p.sum(0).view(B.shape) for p in (dB_partial, dC_partial))
    return dx, ddt, dA, dB, dC, dD_partial.sum(0), dbias_partial.sum(0)


def _in_dtypes(grads, inputs):
    return tuple(g.to(t.dtype).contiguous() if g.dtype != t.dtype or not g.is_contiguous() else g
                 for g, t in zip(grads, inputs))  # fmt: skip


def backward(
    grad_y, x, dt, A, B, C, D, dt_bias, *, block: int | None = None, groups: int | None = None,
    segment: int | None = None,
):  # fmt: skip
    """Gradients of ``forward`` with respect to (x, dt, A, B, C, D, dt_bias), each in its input's dtype. Recomputes
    the states from the inputs (see the module docstring); ``block`` and ``groups`` as in ``forward``, ``segment``
    pins the backward's segment length (tests use it to force checkpoints)."""
    grads = _backward(grad_y, x, dt, A, B, C, D, dt_bias, block, groups, segment)
    return _in_dtypes(grads, (x, dt, A, B, C, D, dt_bias))


def backward_low_rank(
    grad_y, x, dt_low_rank, dt_weight, A, B, C, D, dt_bias, *, block: int | None = None, groups: int | None = None,
    segment: int | None = None,
):  # fmt: skip
    """Gradients of ``forward_low_rank`` with respect to its 8 inputs (dt formed inside the kernel again)."""
    dt = {"dt_low_rank": dt_low_rank, "dt_weight": dt_weight}
    dx, ddt, *rest = _backward(grad_y, x, dt, A, B, C, D, dt_bias, block, groups, segment)
    grad_low_rank, grad_weight = low_rank_dt_grads(ddt, dt_low_rank.to(ddt.dtype), dt_weight.to(ddt.dtype))
    return _in_dtypes((dx, grad_low_rank, grad_weight, *rest), (x, dt_low_rank, dt_weight, A, B, C, D, dt_bias))


__all__ = ["FASTMATH", "backward", "backward_low_rank", "forward", "forward_low_rank"]
