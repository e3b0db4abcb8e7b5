# Copyright 2026 The transformers-vmamba authors. Licensed under the MIT license.
"""torch.library registration of the Triton selective-scan kernels, with autograd.

The ops are ``torch.library.custom_op``s with fake (shape) implementations and registered autograd, so
``torch.compile`` keeps each one in the graph as a single opaque call (no graph break). ``triton_op`` would let
Inductor see inside, but its tracing cannot handle kernels run by Triton's interpreter, which is how the CPU
tests exercise this exact registration.

- ``vmamba::selective_scan_fwd(u, delta, A, B, C, D?, delta_bias?, delta_softplus, save_states) -> (y, chunk_states)``
- ``vmamba::selective_scan_bwd(...) -> (du, ddelta, dA, dB, dC, dD, ddelta_bias)``
- ``vmamba::ss2d_scan_fwd(x, dts, A, Bs, Cs, D?, delta_bias?, delta_softplus, save_states) -> (out, chunk_states)``
- ``vmamba::ss2d_scan_bwd(...) -> (dx, ddts, dA, dBs, dCs, dD, ddelta_bias)``

``chunk_states`` holds the scan state entering every chunk (empty unless ``save_states``, which the public
functions set when autograd will need it); the backward recomputes everything else from the inputs.
"""

from __future__ import annotations

import os

import torch
import triton

from ._triton_scan import selective_scan_bwd_kernel, selective_scan_fwd_kernel


_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# Tests set this to force several chunks on short sequences: (BLOCK_D, CHUNK, num_warps).
CONFIG_OVERRIDE: tuple[int, int, int] | None = None


def _env_config() -> tuple[int, int, int] | None:
    raw = os.environ.get("VMAMBA_TRITON_SCAN_CONFIG")
    if not raw:
        return None
    try:
        block_d, chunk, num_warps = (int(v) for v in raw.split(","))
    except ValueError as err:
        raise ValueError(f"VMAMBA_TRITON_SCAN_CONFIG must be 'BLOCK_D,CHUNK,num_warps', got {raw!r}") from err
    return block_d, chunk, num_warps


# Untuned defaults (no GPU was available to time them), chosen from the sm_90 register counts of the compiled
# kernels so that neither kernel spills and occupancy stays reasonable:
# n_pad -> (CHUNK, forward (BLOCK_D, num_warps), backward (BLOCK_D, num_warps)). Forward and backward may block
# channels differently; they must share CHUNK, which fixes the layout of the stored chunk states.
_DEFAULT_CONFIGS = {
    1: (256, (4, 8), (2, 4)),  # fwd 76 registers, bwd 115
    2: (64, (4, 8), (2, 4)),
    4: (64, (4, 8), (2, 4)),  # fwd 63, bwd 138
    8: (32, (2, 4), (2, 4)),
    16: (32, (2, 4), (2, 4)),  # fwd 89, bwd 180
}


def launch_config(length: int, d_state: int, group_channels: int, backward: bool = False) -> tuple[int, int, int, int]:
    """(BLOCK_D, N_PAD, CHUNK, num_warps) of the forward or backward kernel; the chunk no longer than needed."""
    # int() specialises symbolic sizes under dynamic-shape tracing: the launch geometry is static per graph.
    length, d_state, group_channels = int(length), int(d_state), int(group_channels)
    n_pad = triton.next_power_of_2(d_state)
    override = CONFIG_OVERRIDE or _env_config()
    if override is not None:
        block_d, chunk, num_warps = override
        return block_d, n_pad, chunk, num_warps
    chunk, fwd, bwd = _DEFAULT_CONFIGS.get(n_pad, (16, (1, 4), (1, 4)))
    block_d, num_warps = bwd if backward else fwd
    chunk = max(16, min(chunk, triton.next_power_of_2(length)))
    block_d = max(1, min(block_d, triton.next_power_of_2(group_channels)))
    return block_d, n_pad, chunk, num_warps


def _acc_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _tl_dtype(dtype: torch.dtype):
    return triton.language.float64 if dtype == torch.float64 else triton.language.float32


def _check_common(name: str, tensors: dict[str, torch.Tensor | None]) -> None:
    device = None
    for key, t in tensors.items():
        if t is None:
            continue
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{name}: {key} must be a float16/bfloat16/float32/float64 tensor, got {t.dtype}")
        if device is None:
            device = t.device
        elif t.device != device:
            raise ValueError(f"{name}: all inputs must be on one device, {key} is on {t.device}, others on {device}")
    interpreting = os.environ.get("TRITON_INTERPRET", "0") == "1"
    if device is not None and device.type != "cuda" and not interpreting:
        raise RuntimeError(
            f"{name}: the Triton kernels need CUDA tensors (got {device}); use the torch path "
            "(transformers_vmamba.selective_scan) on CPU, or set TRITON_INTERPRET=1 to run the kernels "
            "in Triton's interpreter for testing."
        )


def _check_scan_shapes(u, delta, A, B, C, D, delta_bias) -> None:
    if u.dim() != 3 or B.dim() != 4:
        raise ValueError(
            f"selective_scan: expected u (batch, K*D, L) and B (batch, K, N, L), got {tuple(u.shape)} and {tuple(B.shape)}"
        )
    batch, channels, length = u.shape
    groups, d_state = B.shape[1], B.shape[2]
    if groups == 0 or channels % groups != 0:
        raise ValueError(f"selective_scan: channels ({channels}) must be a multiple of the B/C groups ({groups})")
    expected = {
        "delta": (delta, (batch, channels, length)),
        "A": (A, (channels, d_state)),
        "B": (B, (batch, groups, d_state, length)),
        "C": (C, (batch, groups, d_state, length)),
        "D": (D, (channels,)),
        "delta_bias": (delta_bias, (channels,)),
    }
    for key, (t, want) in expected.items():
        if t is not None and tuple(t.shape) != want:
            raise ValueError(f"selective_scan: {key} has shape {tuple(t.shape)}, expected {want}")
    _check_common("selective_scan", {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "delta_bias": delta_bias})


def _check_ss2d_shapes(x, dts, A, Bs, Cs, D, delta_bias) -> None:
    if x.dim() != 4 or dts.dim() != 5 or Bs.dim() != 5:
        raise ValueError(
            "ss2d_selective_scan: expected x (B, D, H, W), dts (B, 4, D, H, W), Bs/Cs (B, 4, N, H, W); got "
            f"{tuple(x.shape)}, {tuple(dts.shape)}, {tuple(Bs.shape)}"
        )
    batch, channels, height, width = x.shape
    d_state = Bs.shape[2]
    expected = {
        "dts": (dts, (batch, 4, channels, height, width)),
        "A": (A, (4 * channels, d_state)),
        "Bs": (Bs, (batch, 4, d_state, height, width)),
        "Cs": (Cs, (batch, 4, d_state, height, width)),
        "D": (D, (4 * channels,)),
        "delta_bias": (delta_bias, (4 * channels,)),
    }
    for key, (t, want) in expected.items():
        if t is not None and tuple(t.shape) != want:
            raise ValueError(f"ss2d_selective_scan: {key} has shape {tuple(t.shape)}, expected {want}")
    _check_common(
        "ss2d_selective_scan", {"x": x, "dts": dts, "A": A, "Bs": Bs, "Cs": Cs, "D": D, "delta_bias": delta_bias}
    )


def _contiguous(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


# ---------------------------------------------------------------------------------------------------------------
# Launch geometry shared by the plain and fused layouts.
# ---------------------------------------------------------------------------------------------------------------


class _Geometry:
    """Strides (in elements) that map (batch, direction k, channel d, position) to memory for each tensor."""

    def __init__(self, *, batch, groups, group_channels, d_state, length, height, width, cross, u_strides,
                 delta_strides, bc_strides, y_strides, backward=False):  # fmt: skip
        self.batch, self.groups, self.group_channels = batch, groups, group_channels
        self.d_state, self.length, self.height, self.width, self.cross = d_state, length, height, width, cross
        self.u_strides, self.delta_strides, self.bc_strides, self.y_strides = (
            u_strides, delta_strides, bc_strides, y_strides
        )  # fmt: skip
        self.block_d, self.n_pad, self.chunk, self.num_warps = launch_config(length, d_state, group_channels, backward)
        self.n_chunks = triton.cdiv(length, self.chunk)

    @classmethod
    def plain(cls, u: torch.Tensor, B: torch.Tensor, backward: bool = False) -> "_Geometry":
        batch, channels, length = u.shape
        groups, d_state = B.shape[1], B.shape[2]
        dg = channels // groups
        return cls(
            batch=batch, groups=groups, group_channels=dg, d_state=d_state, length=length, height=1, width=length,
            cross=False, u_strides=(channels * length, dg * length, length),
            delta_strides=(channels * length, dg * length, length),
            bc_strides=(groups * d_state * length, d_state * length, length),
            y_strides=(channels * length, dg * length, length), backward=backward,
        )  # fmt: skip

    @classmethod
    def ss2d(cls, x: torch.Tensor, Bs: torch.Tensor, backward: bool = False) -> "_Geometry":
        batch, channels, height, width = x.shape
        d_state, length = Bs.shape[2], height * width
        return cls(
            batch=batch, groups=4, group_channels=channels, d_state=d_state, length=length, height=height,
            width=width, cross=True, u_strides=(channels * length, 0, length),
            delta_strides=(4 * channels * length, channels * length, length),
            bc_strides=(4 * d_state * length, d_state * length, length),
            y_strides=(channels * length, 0, length), backward=backward,
        )  # fmt: skip

    def grid(self):
        return (triton.cdiv(self.group_channels, self.block_d), self.groups, self.batch)

    def new_states(self, device, dtype, save_states: bool) -> torch.Tensor:
        # Without gradients nothing reads the chunk-entry states: an empty tensor keeps the op's outputs uniform.
        n_chunks = self.n_chunks if save_states else 0
        return torch.empty(
            (self.batch, self.groups, self.group_channels, n_chunks, self.n_pad), device=device, dtype=dtype
        )

    def state_strides(self):
        per_d = self.n_chunks * self.n_pad
        return (self.groups * self.group_channels * per_d, self.group_channels * per_d, per_d)

    def scalar_args(self):
        return (self.length, self.height, self.width, self.group_channels, self.d_state, self.n_chunks,
                *self.u_strides, *self.delta_strides, *self.bc_strides, *self.y_strides, *self.state_strides())  # fmt: skip

    def meta(self, has_d, has_bias, softplus, acc):
        return dict(
            HAS_D=has_d, HAS_BIAS=has_bias, SOFTPLUS=softplus, CROSS=self.cross, BLOCK_D=self.block_d,
            N_PAD=self.n_pad, CHUNK=self.chunk, ACC=_tl_dtype(acc), num_warps=self.num_warps,
        )  # fmt: skip


def _forward(geo: _Geometry, u, delta, A, B, C, D, delta_bias, delta_softplus, save_states, y_shape, launch=True):
    acc = _acc_dtype(u, delta, A, B, C, D, delta_bias)
    # The fused layout accumulates four routes into one output, so it starts from zero.
    y = (torch.zeros if geo.cross else torch.empty)(y_shape, device=u.device, dtype=acc)
    states = geo.new_states(u.device, acc, save_states)
    if not launch:
        return y, states
    dummy = A
    selective_scan_fwd_kernel[geo.grid()](
        u, delta, A, B, C, D if D is not None else dummy, delta_bias if delta_bias is not None else dummy, y, states,
        *geo.scalar_args(), **geo.meta(D is not None, delta_bias is not None, delta_softplus, acc),
        STORE_STATES=save_states,
    )  # fmt: skip
    return y, states


def _backward(geo: _Geometry, dy, u, delta, A, B, C, D, delta_bias, states, delta_softplus, launch=True):
    acc = states.dtype
    if states.shape[3] != geo.n_chunks:
        raise RuntimeError("selective scan backward: the forward ran without save_states=True")
    du = (torch.zeros_like if geo.cross else torch.empty_like)(u, dtype=acc)
    ddelta = torch.empty_like(delta, dtype=acc)
    dA = torch.zeros_like(A, dtype=acc)
    dB = torch.zeros_like(B, dtype=acc)
    dC = torch.zeros_like(C, dtype=acc)
    channels = A.shape[0]
    dD = torch.zeros(channels, device=u.device, dtype=acc)
    dbias = torch.zeros(channels, device=u.device, dtype=acc)
    if not launch:
        return du, ddelta, dA, dB, dC, dD, dbias
    dummy = A
    selective_scan_bwd_kernel[geo.grid()](
        u, delta, A, B, C, D if D is not None else dummy, delta_bias if delta_bias is not None else dummy, dy, states,
        du, ddelta, dA, dB, dC, dD, dbias,
        *geo.scalar_args(), **geo.meta(D is not None, delta_bias is not None, delta_softplus, acc),
    )  # fmt: skip
    return du, ddelta, dA, dB, dC, dD, dbias


# ---------------------------------------------------------------------------------------------------------------
# Plain selective scan.
# ---------------------------------------------------------------------------------------------------------------


@torch.library.custom_op("vmamba::selective_scan_fwd", mutates_args=())
def selective_scan_fwd(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    save_states: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    u, delta, A, B, C, D, delta_bias = map(_contiguous, (u, delta, A, B, C, D, delta_bias))
    geo = _Geometry.plain(u, B)
    return _forward(geo, u, delta, A, B, C, D, delta_bias, delta_softplus, save_states, u.shape)


@selective_scan_fwd.register_fake
def _(u, delta, A, B, C, D, delta_bias, delta_softplus, save_states):
    geo = _Geometry.plain(u, B)
    return _forward(geo, u, delta, A, B, C, D, delta_bias, delta_softplus, save_states, u.shape, launch=False)


@torch.library.custom_op("vmamba::selective_scan_bwd", mutates_args=())
def selective_scan_bwd(
    dy: torch.Tensor,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    states: torch.Tensor,
    delta_softplus: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dy, u, delta, A, B, C, D, delta_bias = map(_contiguous, (dy, u, delta, A, B, C, D, delta_bias))
    geo = _Geometry.plain(u, B, backward=True)
    return _backward(geo, dy.to(states.dtype), u, delta, A, B, C, D, delta_bias, states, delta_softplus)


@selective_scan_bwd.register_fake
def _(dy, u, delta, A, B, C, D, delta_bias, states, delta_softplus):
    geo = _Geometry.plain(u, B, backward=True)
    return _backward(geo, dy, u, delta, A, B, C, D, delta_bias, states, delta_softplus, launch=False)


def _setup_scan_context(ctx, inputs, output):
    u, delta, A, B, C, D, delta_bias, delta_softplus, _ = inputs
    ctx.delta_softplus = delta_softplus
    ctx.has_d, ctx.has_bias = D is not None, delta_bias is not None
    ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, output[1])


def _cast_grads(grads, inputs):
    return tuple(None if t is None else g.to(t.dtype) for g, t in zip(grads, inputs))


def _scan_backward(ctx, grad_y, grad_states):
    u, delta, A, B, C, D, delta_bias, states = ctx.saved_tensors
    grads = torch.ops.vmamba.selective_scan_bwd(grad_y, u, delta, A, B, C, D, delta_bias, states, ctx.delta_softplus)
    return (*_cast_grads(grads, (u, delta, A, B, C, D, delta_bias)), None, None)


selective_scan_fwd.register_autograd(_scan_backward, setup_context=_setup_scan_context)


# ---------------------------------------------------------------------------------------------------------------
# Fused SS2D: cross-scan + selective scan + cross-merge in image layout.
# ---------------------------------------------------------------------------------------------------------------


@torch.library.custom_op("vmamba::ss2d_scan_fwd", mutates_args=())
def ss2d_scan_fwd(
    x: torch.Tensor,
    dts: torch.Tensor,
    A: torch.Tensor,
    Bs: torch.Tensor,
    Cs: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    save_states: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    x, dts, A, Bs, Cs, D, delta_bias = map(_contiguous, (x, dts, A, Bs, Cs, D, delta_bias))
    geo = _Geometry.ss2d(x, Bs)
    return _forward(geo, x, dts, A, Bs, Cs, D, delta_bias, delta_softplus, save_states, x.shape)


@ss2d_scan_fwd.register_fake
def _(x, dts, A, Bs, Cs, D, delta_bias, delta_softplus, save_states):
    geo = _Geometry.ss2d(x, Bs)
    return _forward(geo, x, dts, A, Bs, Cs, D, delta_bias, delta_softplus, save_states, x.shape, launch=False)


@torch.library.custom_op("vmamba::ss2d_scan_bwd", mutates_args=())
def ss2d_scan_bwd(
    dout: torch.Tensor,
    x: torch.Tensor,
    dts: torch.Tensor,
    A: torch.Tensor,
    Bs: torch.Tensor,
    Cs: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    states: torch.Tensor,
    delta_softplus: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dout, x, dts, A, Bs, Cs, D, delta_bias = map(_contiguous, (dout, x, dts, A, Bs, Cs, D, delta_bias))
    geo = _Geometry.ss2d(x, Bs, backward=True)
    return _backward(geo, dout.to(states.dtype), x, dts, A, Bs, Cs, D, delta_bias, states, delta_softplus)


@ss2d_scan_bwd.register_fake
def _(dout, x, dts, A, Bs, Cs, D, delta_bias, states, delta_softplus):
    geo = _Geometry.ss2d(x, Bs, backward=True)
    return _backward(geo, dout, x, dts, A, Bs, Cs, D, delta_bias, states, delta_softplus, launch=False)


def _ss2d_backward(ctx, grad_out, grad_states):
    x, dts, A, Bs, Cs, D, delta_bias, states = ctx.saved_tensors
    grads = torch.ops.vmamba.ss2d_scan_bwd(grad_out, x, dts, A, Bs, Cs, D, delta_bias, states, ctx.delta_softplus)
    return (*_cast_grads(grads, (x, dts, A, Bs, Cs, D, delta_bias)), None, None)


ss2d_scan_fwd.register_autograd(_ss2d_backward, setup_context=_setup_scan_context)


# ---------------------------------------------------------------------------------------------------------------
# Public entry points (validate, then call the registered ops).
# ---------------------------------------------------------------------------------------------------------------


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True):
    _check_scan_shapes(u, delta, A, B, C, D, delta_bias)
    save = _needs_grad(u, delta, A, B, C, D, delta_bias)
    return torch.ops.vmamba.selective_scan_fwd(u, delta, A, B, C, D, delta_bias, bool(delta_softplus), save)[0]


def ss2d_selective_scan(x, dts, A, Bs, Cs, D=None, delta_bias=None, delta_softplus=True):
    _check_ss2d_shapes(x, dts, A, Bs, Cs, D, delta_bias)
    save = _needs_grad(x, dts, A, Bs, Cs, D, delta_bias)
    return torch.ops.vmamba.ss2d_scan_fwd(x, dts, A, Bs, Cs, D, delta_bias, bool(delta_softplus), save)[0]
