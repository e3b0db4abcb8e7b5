# Copyright 2026 The transformers-vmamba authors. Licensed under the MIT license.
"""Triton kernels of the SS2D operator on channels-last tensors: ``forward`` and ``backward`` launch functions.

The contract is ``transformers_vmamba.selective_scan.check_ss2d_inputs``: x (batch, H, W, C); dt (batch, H, W, 4, C)
before bias and softplus; A (4, C, N); B, C (batch, H, W, 4, N); D, dt_bias (4, C); y (batch, H, W, C), the four
routes' outputs summed, in float32 (float64 when an input is float64). Inputs may be float16/bfloat16/float32/float64
with any strides: the kernels take each tensor's batch, position, route and channel (or state) strides, with
(H, W) flattened into one position axis, which is a view for every layout but a spatial crop (that one is copied).

Tiling. A program owns ``BLOCK_D`` channels of one route of one image and walks the route's ``H * W`` positions in
chunks of ``CHUNK``. Channels are the contiguous axis of every channels-last tensor, so the working tile is
``[CHUNK, N_PAD, BLOCK_D]`` with channels last: each position's ``BLOCK_D`` channels are one coalesced row (and the
compiler's default layout puts consecutive threads on consecutive channels), while the scan runs along the chunk
axis. Route ``k`` reaches its positions by index arithmetic (row-major, column-major, then both reversed), and adds
its output straight into y (or its input gradient into dx) with atomics: no (batch, 4, ...) route copies. Inside a
chunk the recurrence ``h_t = a_t h_{t-1} + b_t`` is ``tl.associative_scan`` over ``(a, b)`` pairs; the state at
the chunk's end is carried to the next chunk in registers, so any length works. ``N_PAD`` is the state size padded
to a power of two (padded states have A = B = C = 0 and stay zero). Compute is float32 (float64 for float64 inputs).

Backward. The operator saves only its inputs, so the backward kernel recomputes what it needs, in one launch: each
program first re-runs the forward recurrence over its route (no output) and writes the state entering every chunk to
a scratch buffer, then walks the chunks in reverse, recomputes the states inside each chunk from that entry state
and runs the reverse scan of the state gradient ``g_t = C_t dy_t + a_{t+1} g_{t+1}``. Forward pass and backward
pass of the recomputation are the same program, so they always use the same CHUNK. The recomputation costs one more
read of x, dt, B and C (the forward kernel's traffic without its y atomics) plus the scratch: ``N_PAD * C`` values
per chunk and route, i.e. ``4 * N_PAD / CHUNK`` times the size of x in the compute dtype (allocated for the smallest
CHUNK autotune may pick), alive only during the launch. Reductions (over channels for dB/dC, over positions and
images for dA/dD/d dt_bias) are summed in registers and then added with atomics.

Launch configurations come from ``triton.autotune`` (``FORWARD_CONFIGS`` / ``BACKWARD_CONFIGS``, pruned by state size,
tuned per state size, channel count and dtypes). ``forward(..., config=triton.Config(...))`` or the
``pinned_config`` context manager launches one configuration instead, without benchmarking: that is how tests pin
small configurations (several chunks, several channel blocks), and how Triton's interpreter runs these kernels,
since it cannot time the candidates (without a pinned config it runs ``default_config``).
"""

from __future__ import annotations

import contextlib
import contextvars
import os

import torch
import triton
import triton.language as tl

from transformers_vmamba.selective_scan import check_ss2d_inputs, ss2d_compute_dtype


_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ---------------------------------------------------------------------------------------------------------------
# Launch configurations.
# ---------------------------------------------------------------------------------------------------------------


def _config(block_d: int, chunk: int, num_warps: int) -> triton.Config:
    # num_stages=1: Triton's software pipeliner is made for loads feeding tl.dot; here the other programs resident on
    # an SM hide the load latency of a chunk. (Whether num_stages > 1 helps has not been measured on a GPU.)
    return triton.Config({"BLOCK_D": block_d, "CHUNK": chunk}, num_warps=num_warps, num_stages=1)


# Keyed by the largest padded state size they serve; d_state 1 (VMamba v2) and 16 (v0) get a choice. Every
# configuration compiles for sm_90 without register spills (checked offline by tests/test_kernels_triton.py; sm_90
# registers per thread in the comments, bf16 inputs). BLOCK_D * CHUNK * N_PAD / (32 * num_warps) is the number of
# state elements per thread: about 16 in the forward, 8-16 in the backward, which keeps more tiles alive.
# Channel blocks of 8+ channels cover whole 32-byte sectors of each position's row. Not yet timed on a GPU:
# autotune picks among them at the first call for each (N, C, dtypes).
FORWARD_CONFIGS: dict[int, list[triton.Config]] = {
    1: [_config(64, 8, 1), _config(32, 16, 1), _config(128, 16, 4)],  # 130, 162, 168 registers
    4: [_config(32, 16, 2)],  # 123
    16: [_config(16, 8, 4), _config(8, 16, 4), _config(32, 8, 4)],  # 70, 78, 94
    64: [_config(8, 8, 2)],  # 149
}
# The backward's scratch holds 4 * N_PAD / CHUNK times x's size (in the compute dtype); CHUNK 16 keeps it at 4x
# for d_state 16. It is allocated for the smallest CHUNK of a class, so a class keeps its CHUNKs close.
BACKWARD_CONFIGS: dict[int, list[triton.Config]] = {
    1: [_config(32, 8, 1), _config(128, 8, 4), _config(64, 16, 4)],  # 177, 183, 221
    4: [_config(32, 8, 2)],  # 212
    16: [_config(8, 16, 8), _config(16, 16, 8)],  # 174, 223
    64: [_config(8, 8, 8)],  # 191
}


def _state_class(n_pad: int) -> int:
    for bound in sorted(FORWARD_CONFIGS):
        if n_pad <= bound:
            return bound
    raise ValueError(
        f"triton ss2d: state sizes up to {max(FORWARD_CONFIGS)} are supported, got {n_pad} (padded); "
        "VMAMBA_SCAN_BACKEND=torch runs the PyTorch scan instead"
    )


def default_config(state: int, backward: bool = False) -> triton.Config:
    """The first configuration for ``state``: what runs when autotuning is impossible (the interpreter)."""
    table = BACKWARD_CONFIGS if backward else FORWARD_CONFIGS
    return table[_state_class(triton.next_power_of_2(state))][0]


def _prune(table):
    def prune(configs, named_args, **kwargs):
        candidates = table[_state_class(kwargs["N_PAD"])]
        # Channel blocks wider than the (padded) channel count only idle lanes; keep the narrowest such one.
        width = triton.next_power_of_2(named_args["C"])
        fitting = [c for c in candidates if c.kwargs["BLOCK_D"] <= width]
        return fitting or [min(candidates, key=lambda c: c.kwargs["BLOCK_D"])]

    return prune


def _all(table):
    return [config for configs in table.values() for config in configs]


_pinned: contextvars.ContextVar[triton.Config | None] = contextvars.ContextVar("vmamba_ss2d_config", default=None)


@contextlib.contextmanager
def pinned_config(config: triton.Config):
    """Run every ``forward``/``backward`` launch in this block (also through ``torch.ops.vmamba.ss2d_scan``) with
    ``config`` (a ``triton.Config`` with ``BLOCK_D`` and ``CHUNK``) instead of autotuning."""
    token = _pinned.set(config)
    try:
        yield config
    finally:
        _pinned.reset(token)


# ---------------------------------------------------------------------------------------------------------------
# Kernels.
# ---------------------------------------------------------------------------------------------------------------


@triton.jit
def _combine(a_left, b_left, a_right, b_right):
    # h -> a_left h + b_left, then h -> a_right h + b_right.
    return a_left * a_right, b_left * a_right + b_right


@triton.jit
def _softplus(z):
    # torch's softplus (threshold 20), with log1p(e) computed accurately as log(u) * e / (u - 1), u = 1 + e.
    e = tl.exp(-tl.abs(z))
    u = 1.0 + e
    log1p_e = tl.where(u == 1.0, e, tl.log(u) * (e / tl.where(u == 1.0, 1.0, u - 1.0)))
    return tl.where(z > 20.0, z, tl.maximum(z, 0.0) + log1p_e)


@triton.jit
def _softplus_grad(z):
    e = tl.exp(-tl.abs(z))
    sigmoid = tl.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return tl.where(z > 20.0, 1.0, sigmoid)


@triton.jit
def _route_positions(j, k, H, W):
    """Row-major position ``row * W + col`` of route ``k``'s step ``j``: routes 0 and 1 read the map row by row and
    column by column, routes 2 and 3 are those two reversed."""
    j = tl.where(k >= 2, H * W - 1 - j, j)
    return tl.where((k % 2) == 1, (j % H) * W + j // H, j)


@triton.jit
def _load_chunk(
    c, k, H, W, offs_t, mask_d, mask_n, bias, A,
    x_base, sx_l, x_cols, dt_base, sdt_l, dt_cols, B_base, sB_l, B_cols, C_base, sC_l, C_cols,
    CHUNK: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """Chunk ``c`` of route ``k``: its steps, positions and masks, x, raw dt + bias, dt, B, C (as [CHUNK, *]), and
    the decay and input of every step of the recurrence ([CHUNK, N_PAD, BLOCK_D])."""
    j = c * CHUNK + offs_t
    mask_t = j < H * W
    p = _route_positions(j, k, H, W)
    mask_td = mask_t[:, None] & mask_d[None, :]
    mask_tn = mask_t[:, None] & mask_n[None, :]
    x = tl.load(x_base + (p * sx_l)[:, None] + x_cols[None, :], mask=mask_td, other=0.0).to(ACC)
    z = tl.load(dt_base + (p * sdt_l)[:, None] + dt_cols[None, :], mask=mask_td, other=0.0).to(ACC) + bias[None, :]
    dt = tl.where(mask_td, _softplus(z), 0.0)  # dt = 0 past the route's end: decay 1, no input
    Bv = tl.load(B_base + (p * sB_l)[:, None] + B_cols[None, :], mask=mask_tn, other=0.0).to(ACC)
    Cv = tl.load(C_base + (p * sC_l)[:, None] + C_cols[None, :], mask=mask_tn, other=0.0).to(ACC)
    decay = tl.exp(dt[:, None, :] * A[None, :, :])
    drive = (dt * x)[:, None, :] * Bv[:, :, None]
    return j, p, mask_td, mask_tn, x, z, dt, Bv, Cv, decay, drive


@triton.jit
def _program_ids(C, BLOCK_D: tl.constexpr):
    # Routes vary fastest so that the four programs reading the same channels of one image run side by side.
    pid = tl.program_id(0)
    k = pid % 4
    rest = pid // 4
    n_dblocks = tl.cdiv(C, BLOCK_D)
    return k, rest % n_dblocks, (rest // n_dblocks).to(tl.int64)


@triton.jit
def _load_parameters(A_ptr, D_ptr, bias_ptr, k, C, N, offs_n, offs_d, mask_n, mask_d):
    mask_nd = mask_n[:, None] & mask_d[None, :]
    A = tl.load(A_ptr + (k * C + offs_d[None, :]) * N + offs_n[:, None], mask=mask_nd, other=0.0)  # [N_PAD, BLOCK_D]
    D = tl.load(D_ptr + k * C + offs_d, mask=mask_d, other=0.0)
    bias = tl.load(bias_ptr + k * C + offs_d, mask=mask_d, other=0.0)
    return A, D, bias, mask_nd


@triton.autotune(
    configs=_all(FORWARD_CONFIGS), key=["C", "N"], prune_configs_by={"early_config_prune": _prune(FORWARD_CONFIGS)},
    reset_to_zero=["y_ptr"],
)  # fmt: skip
@triton.jit
def ss2d_forward_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, y_ptr,
    H, W, C, N,
    sx_b, sx_l, sx_c,
    sdt_b, sdt_l, sdt_k, sdt_c,
    sB_b, sB_l, sB_k, sB_n,
    sC_b, sC_l, sC_k, sC_n,
    N_PAD: tl.constexpr, ACC: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    # Strides are those of the inputs with (H, W) flattened to one position axis; y is contiguous (batch, H*W, C).
    k, dblock, b = _program_ids(C, BLOCK_D)
    offs_t = tl.arange(0, CHUNK)
    offs_n = tl.arange(0, N_PAD)
    offs_d = dblock * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_n, mask_d = offs_n < N, offs_d < C
    A, D, bias, mask_nd = _load_parameters(A_ptr, D_ptr, bias_ptr, k, C, N, offs_n, offs_d, mask_n, mask_d)

    x_base, x_cols = x_ptr + b * sx_b, offs_d * sx_c
    dt_base, dt_cols = dt_ptr + b * sdt_b + k * sdt_k, offs_d * sdt_c
    B_base, B_cols = B_ptr + b * sB_b + k * sB_k, offs_n * sB_n
    C_base, C_cols = C_ptr + b * sC_b + k * sC_k, offs_n * sC_n
    y_base = y_ptr + b * H * W * C
    is_last = (offs_t == CHUNK - 1)[:, None, None]

    carry = tl.zeros([N_PAD, BLOCK_D], dtype=ACC)
    for c in range(0, tl.cdiv(H * W, CHUNK)):
        j, p, mask_td, mask_tn, x, z, dt, Bv, Cv, decay, drive = _load_chunk(
            c, k, H, W, offs_t, mask_d, mask_n, bias, A,
            x_base, sx_l, x_cols, dt_base, sdt_l, dt_cols, B_base, sB_l, B_cols, C_base, sC_l, C_cols, CHUNK, ACC,
        )  # fmt: skip
        cum_decay, cum_drive = tl.associative_scan((decay, drive), axis=0, combine_fn=_combine)
        h = cum_drive + cum_decay * carry[None, :, :]
        y = tl.sum(h * Cv[:, :, None], axis=1) + D[None, :] * x
        tl.atomic_add(y_base + (p * C)[:, None] + offs_d[None, :], y, mask=mask_td, sem="relaxed")
        carry = tl.sum(tl.where(is_last, h, 0.0), axis=0)


@triton.autotune(
    configs=_all(BACKWARD_CONFIGS), key=["C", "N"], prune_configs_by={"early_config_prune": _prune(BACKWARD_CONFIGS)},
    reset_to_zero=["dx_ptr", "dA_ptr", "dB_ptr", "dC_ptr", "dD_ptr", "dbias_ptr"],
)  # fmt: skip
@triton.jit
def ss2d_backward_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, dy_ptr,
    dx_ptr, ddt_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, states_ptr,
    H, W, C, N, n_slots,
    sx_b, sx_l, sx_c,
    sdt_b, sdt_l, sdt_k, sdt_c,
    sB_b, sB_l, sB_k, sB_n,
    sC_b, sC_l, sC_k, sC_n,
    sdy_b, sdy_l, sdy_c,
    N_PAD: tl.constexpr, ACC: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    # Input strides as in the forward; dx, ddt, dB, dC are contiguous like x, dt, B, C; states is contiguous
    # (batch * 4, n_slots, N_PAD, C).
    k, dblock, b = _program_ids(C, BLOCK_D)
    offs_t = tl.arange(0, CHUNK)
    offs_n = tl.arange(0, N_PAD)
    offs_d = dblock * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_n, mask_d = offs_n < N, offs_d < C
    A, D, bias, mask_nd = _load_parameters(A_ptr, D_ptr, bias_ptr, k, C, N, offs_n, offs_d, mask_n, mask_d)

    HW = H * W
    x_base, x_cols = x_ptr + b * sx_b, offs_d * sx_c
    dt_base, dt_cols = dt_ptr + b * sdt_b + k * sdt_k, offs_d * sdt_c
    B_base, B_cols = B_ptr + b * sB_b + k * sB_k, offs_n * sB_n
    C_base, C_cols = C_ptr + b * sC_b + k * sC_k, offs_n * sC_n
    dy_base, dy_cols = dy_ptr + b * sdy_b, offs_d * sdy_c
    dx_base = dx_ptr + b * HW * C
    ddt_base = ddt_ptr + b * HW * 4 * C + k * C
    dB_base = dB_ptr + b * HW * 4 * N + k * N
    dC_base = dC_ptr + b * HW * 4 * N + k * N
    state_ptrs = states_ptr + (b * 4 + k) * n_slots * N_PAD * C + offs_n[:, None] * C + offs_d[None, :]
    is_last = (offs_t == CHUNK - 1)[:, None, None]
    is_first = (offs_t == 0)[:, None, None]
    n_chunks = tl.cdiv(HW, CHUNK)

    # Pass 1: the forward recurrence; the state entering chunk c >= 1 goes to slot c - 1.
    carry = tl.zeros([N_PAD, BLOCK_D], dtype=ACC)
    for c in range(0, n_chunks - 1):
        j, p, mask_td, mask_tn, x, z, dt, Bv, Cv, decay, drive = _load_chunk(
            c, k, H, W, offs_t, mask_d, mask_n, bias, A,
            x_base, sx_l, x_cols, dt_base, sdt_l, dt_cols, B_base, sB_l, B_cols, C_base, sC_l, C_cols, CHUNK, ACC,
        )  # fmt: skip
        cum_decay, cum_drive = tl.associative_scan((decay, drive), axis=0, combine_fn=_combine)
        h = cum_drive + cum_decay * carry[None, :, :]
        carry = tl.sum(tl.where(is_last, h, 0.0), axis=0)
        tl.store(state_ptrs + c * N_PAD * C, carry, mask=mask_nd)
    tl.debug_barrier()  # pass 2 reads states that other threads of this program wrote

    # Pass 2: chunks in reverse.
    grad_carry = tl.zeros([N_PAD, BLOCK_D], dtype=ACC)  # dL/dh at the first step of the chunk after this one
    dA_acc = tl.zeros([N_PAD, BLOCK_D], dtype=ACC)
    dD_acc = tl.zeros([BLOCK_D], dtype=ACC)
    dbias_acc = tl.zeros([BLOCK_D], dtype=ACC)
    for i in range(0, n_chunks):
        c = n_chunks - 1 - i
        carry = tl.load(state_ptrs + tl.maximum(c - 1, 0) * N_PAD * C, mask=mask_nd, other=0.0)
        carry = tl.where(c > 0, carry, 0.0)  # chunk 0 starts from zero
        j, p, mask_td, mask_tn, x, z, dt, Bv, Cv, decay, drive = _load_chunk(
            c, k, H, W, offs_t, mask_d, mask_n, bias, A,
            x_base, sx_l, x_cols, dt_base, sdt_l, dt_cols, B_base, sB_l, B_cols, C_base, sC_l, C_cols, CHUNK, ACC,
        )  # fmt: skip
        dy = tl.load(dy_base + (p * sdy_l)[:, None] + dy_cols[None, :], mask=mask_td, other=0.0).to(ACC)
        # The decay one step later along the route, a_{t+1}, couples g_t to g_{t+1} (1 past the route's end).
        p_next = _route_positions(j + 1, k, H, W)
        mask_next = (j + 1 < HW)[:, None] & mask_d[None, :]
        z_next = tl.load(dt_base + (p_next * sdt_l)[:, None] + dt_cols[None, :], mask=mask_next, other=0.0)
        dt_next = tl.where(mask_next, _softplus(z_next.to(ACC) + bias[None, :]), 0.0)

        # States of this chunk, recomputed from its entry state.
        cum_decay, cum_drive = tl.associative_scan((decay, drive), axis=0, combine_fn=_combine)
        h = cum_drive + cum_decay * carry[None, :, :]

        # Reverse scan: g_t = C_t dy_t + a_{t+1} g_{t+1}.
        decay_next = tl.exp(dt_next[:, None, :] * A[None, :, :])
        emit = Cv[:, :, None] * dy[:, None, :]
        rev_decay, rev_emit = tl.associative_scan((decay_next, emit), axis=0, combine_fn=_combine, reverse=True)
        g = rev_emit + rev_decay * grad_carry[None, :, :]
        grad_carry = tl.sum(tl.where(is_first, g, 0.0), axis=0)

        # a_t h_{t-1} = h_t - b_t avoids a shifted copy of the state tile.
        decayed_prev = h - drive
        dA_acc += tl.sum(g * decayed_prev * dt[:, None, :], axis=0)
        g_B = tl.sum(g * Bv[:, :, None], axis=1)  # dL/d(dt * x), [CHUNK, BLOCK_D]
        ddt = tl.sum(g * decayed_prev * A[None, :, :], axis=1) + g_B * x
        ddt = tl.where(mask_td, ddt * _softplus_grad(z), 0.0)
        dbias_acc += tl.sum(ddt, axis=0)
        dD_acc += tl.sum(dy * x, axis=0)
        dx = g_B * dt + D[None, :] * dy
        tl.store(ddt_base + (p * 4 * C)[:, None] + offs_d[None, :], ddt, mask=mask_td)
        tl.atomic_add(dx_base + (p * C)[:, None] + offs_d[None, :], dx, mask=mask_td, sem="relaxed")
        dB = tl.sum(g * (dt * x)[:, None, :], axis=2)  # [CHUNK, N_PAD], summed over this block's channels
        dC = tl.sum(h * dy[:, None, :], axis=2)
        bc_offsets = (p * 4 * N)[:, None] + offs_n[None, :]
        tl.atomic_add(dB_base + bc_offsets, dB, mask=mask_tn, sem="relaxed")
        tl.atomic_add(dC_base + bc_offsets, dC, mask=mask_tn, sem="relaxed")

    tl.atomic_add(dA_ptr + (k * C + offs_d[None, :]) * N + offs_n[:, None], dA_acc, mask=mask_nd, sem="relaxed")
    tl.atomic_add(dD_ptr + k * C + offs_d, dD_acc, mask=mask_d, sem="relaxed")
    tl.atomic_add(dbias_ptr + k * C + offs_d, dbias_acc, mask=mask_d, sem="relaxed")


# ---------------------------------------------------------------------------------------------------------------
# Launch functions (the operator contract; no autograd, no op registration: that is transformers_vmamba.ss2d).
# ---------------------------------------------------------------------------------------------------------------


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _check(name: str, tensors) -> None:
    """The shared contract checks, plus what is specific to these kernels (dtypes Triton loads, the device)."""
    check_ss2d_inputs(*tensors)
    for t in tensors:
        if t.dtype not in _SUPPORTED_DTYPES:
            raise TypeError(f"triton ss2d {name}: inputs must be float16/bfloat16/float32/float64, got {t.dtype}")
    device = tensors[0].device
    if device.type != "cuda" and not _interpreting():
        raise RuntimeError(
            f"triton ss2d {name}: the Triton kernels need CUDA tensors, got {device} (the operator "
            "torch.ops.vmamba.ss2d_scan picks another implementation there; TRITON_INTERPRET=1 runs these kernels "
            "in Triton's interpreter for tests)"
        )


def _meta(state: int, acc: torch.dtype) -> dict:
    """Meta-parameters that are not tuned. FMA contraction stays on (explicitly: Triton 3.9 warns otherwise)."""
    return dict(N_PAD=triton.next_power_of_2(state), ACC=tl.float64 if acc == torch.float64 else tl.float32,
                enable_fp_fusion=True)  # fmt: skip


def _resolve_config(config: triton.Config | None, state: int, backward: bool) -> triton.Config | None:
    """The pinned configuration of this launch, or None to autotune (the interpreter gets ``default_config``)."""
    config = config if config is not None else _pinned.get()
    if config is None and _interpreting():
        config = default_config(state, backward)
    return config


def _launch(kernel, grid, args, meta, config):
    if config is None:
        kernel[grid](*args, **meta)
    else:  # the jitted function under the autotuner, with explicit meta-parameters
        kernel.fn[grid](*args, **meta, **config.all_kwargs())


def _grid(batch: int, channels: int):
    return lambda meta: (4 * triton.cdiv(channels, meta["BLOCK_D"]) * batch,)


_INT32_MAX = 2**31 - 1


def _flat_positions(name: str, t: torch.Tensor) -> torch.Tensor:
    """``t`` with (H, W) flattened into one position axis: a view whenever the strides allow (a copy otherwise,
    e.g. for a spatial crop), so the kernels address every position with a single stride."""
    flat = t.flatten(1, 2)
    span = sum((size - 1) * stride for size, stride in zip(flat.shape[1:], flat.stride()[1:]))
    if span > _INT32_MAX:  # the kernels index within an image in 32 bits (across images in 64)
        raise ValueError(f"triton ss2d: {name} spans {span} elements per image, more than 32-bit indexing allows")
    return flat


def _prepare(inputs):
    """Flattened x, dt, B, C; A, D, dt_bias in the compute dtype (tiny); the compute dtype."""
    x, dt, A, B, C, D, dt_bias = inputs
    acc = ss2d_compute_dtype(*inputs)
    height, width, channels = x.shape[1:]
    if height * width * 4 * max(channels, A.shape[2]) > _INT32_MAX:
        raise ValueError(f"triton ss2d: a {height}x{width} map of {channels} channels exceeds 32-bit indexing")
    flat = [_flat_positions(name, t) for name, t in (("x", x), ("dt", dt), ("B", B), ("C", C))]
    params = [t.to(acc).contiguous() for t in (A, D, dt_bias)]
    return flat, params, acc


def forward(x, dt, A, B, C, D, dt_bias, *, config: triton.Config | None = None) -> torch.Tensor:
    """y (batch, H, W, C) of the SS2D contract, in float32 (float64 for float64 inputs). ``config`` pins the launch
    configuration (``triton.Config({"BLOCK_D": ..., "CHUNK": ...}, num_warps=...)``) instead of autotuning."""
    inputs = (x, dt, A, B, C, D, dt_bias)
    _check("forward", inputs)
    (x_f, dt_f, B_f, C_f), (A_c, D_c, bias_c), acc = _prepare(inputs)
    batch, height, width, channels = x.shape
    state = A.shape[2]
    y = torch.zeros(x.shape, dtype=acc, device=x.device)  # contiguous; the four routes add into it
    if y.numel() == 0:
        return y
    args = (
        x_f, dt_f, A_c, B_f, C_f, D_c, bias_c, y, height, width, channels, state,
        *x_f.stride(), *dt_f.stride(), *B_f.stride(), *C_f.stride(),
    )  # fmt: skip
    meta = _meta(state, acc)
    _launch(ss2d_forward_kernel, _grid(batch, channels), args, meta, _resolve_config(config, state, False))
    return y


def _min_chunk(state: int, config: triton.Config | None) -> int:
    if config is not None:
        return config.kwargs["CHUNK"]
    return min(c.kwargs["CHUNK"] for c in BACKWARD_CONFIGS[_state_class(triton.next_power_of_2(state))])


def backward(grad_y, x, dt, A, B, C, D, dt_bias, *, config: triton.Config | None = None):
    """Gradients of ``forward`` with respect to (x, dt, A, B, C, D, dt_bias), each in its input's dtype. Recomputes
    the scan states from the inputs (see the module docstring); ``config`` as in ``forward``."""
    inputs = (x, dt, A, B, C, D, dt_bias)
    _check("backward", inputs)
    if grad_y.shape != x.shape or grad_y.device != x.device or not grad_y.is_floating_point():
        raise ValueError(
            f"triton ss2d backward: grad_y must be a floating-point {tuple(x.shape)} tensor on {x.device}, got "
            f"{grad_y.dtype} {tuple(grad_y.shape)} on {grad_y.device}"
        )
    (x_f, dt_f, B_f, C_f), (A_c, D_c, bias_c), acc = _prepare(inputs)
    batch, height, width, channels = x.shape
    state = A.shape[2]
    n_pad = triton.next_power_of_2(state)
    device = x.device
    # Contiguous gradients: dx, dB, dC, dA, dD, d dt_bias are sums (atomics, so zeros in the compute dtype); every
    # element of ddt is written once, in dt's dtype.
    dx, dB, dC, dA, dD, dbias = (torch.zeros(t.shape, dtype=acc, device=device) for t in (x, B, C, A, D, dt_bias))
    ddt = torch.empty(dt.shape, dtype=dt.dtype, device=device)
    if x.numel() > 0:
        config = _resolve_config(config, state, True)
        # Scratch for the chunk-entry states, sized for the smallest CHUNK autotune may pick.
        n_slots = max(triton.cdiv(height * width, _min_chunk(state, config)) - 1, 1)
        states = torch.empty((batch * 4, n_slots, n_pad, channels), dtype=acc, device=device)
        dy_f = _flat_positions("grad_y", grad_y)
        args = (
            x_f, dt_f, A_c, B_f, C_f, D_c, bias_c, dy_f, dx, ddt, dA, dB, dC, dD, dbias, states,
            height, width, channels, state, n_slots,
            *x_f.stride(), *dt_f.stride(), *B_f.stride(), *C_f.stride(), *dy_f.stride(),
        )  # fmt: skip
        meta = _meta(state, acc)
        _launch(ss2d_backward_kernel, _grid(batch, channels), args, meta, config)
    grads = (dx, ddt, dA, dB, dC, dD, dbias)
    return tuple(g.to(t.dtype) for g, t in zip(grads, inputs))


__all__ = [
    "BACKWARD_CONFIGS",
    "FORWARD_CONFIGS",
    "backward",
    "default_config",
    "forward",
    "pinned_config",
    "ss2d_backward_kernel",
    "ss2d_forward_kernel",
]
