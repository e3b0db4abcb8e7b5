# Copyright 2026 The transformers-vmamba authors. Licensed under the MIT license.
"""Pure-PyTorch selective scan and 2D cross-scan used by VMamba.

This module is the specification of the numerics (``selective_scan_reference``, ``cross_scan``,
``cross_merge``) and the fast path that runs wherever the Triton kernels cannot (CPU, export, no Triton).
It imports nothing but torch so that it ships with the Hub remote code next to ``modeling_vmamba.py``.

Shapes (VMamba folds the four scan directions ``K`` into the channel axis):

- ``u``, ``delta``: ``(batch, K * D, L)``
- ``A``: ``(K * D, N)``; ``B``, ``C``: ``(batch, K, N, L)`` shared by the ``D`` channels of a direction
- ``D``, ``delta_bias``: ``(K * D,)``

Recurrence, per channel ``d`` and state ``n``::

    dt_t = softplus(delta_t + delta_bias)            (softplus only if delta_softplus)
    h_t  = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t,   h_{-1} = 0
    y_t  = sum_n C_t * h_t + D * u_t
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 if any input is float64, else float32 (half-precision inputs accumulate in float32)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_scan_shapes(u, delta, A, B, C, D, delta_bias):
    if u.dim() != 3 or B.dim() != 4:
        raise ValueError(f"expected u of shape (batch, K*D, L) and B of shape (batch, K, N, L), got {tuple(u.shape)} and {tuple(B.shape)}")
    batch, channels, length = u.shape
    _, groups, d_state, _ = B.shape
    if channels % groups != 0:
        raise ValueError(f"channels ({channels}) must be a multiple of the number of B/C groups ({groups})")
    expected = {
        "delta": (delta.shape, (batch, channels, length)),
        "A": (A.shape, (channels, d_state)),
        "B": (B.shape, (batch, groups, d_state, length)),
        "C": (C.shape, (batch, groups, d_state, length)),
    }
    if D is not None:
        expected["D"] = (D.shape, (channels,))
    if delta_bias is not None:
        expected["delta_bias"] = (delta_bias.shape, (channels,))
    for name, (got, want) in expected.items():
        if tuple(got) != want:
            raise ValueError(f"selective scan: {name} has shape {tuple(got)}, expected {want}")


def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """Step-by-step selective scan: slow, obviously correct, the yardstick for every other path.

    Returns ``y`` with ``u``'s shape in float32 (float64 when any input is float64).
    """
    _check_scan_shapes(u, delta, A, B, C, D, delta_bias)
    dtype = _compute_dtype(u, delta, A, B, C, D, delta_bias)
    batch, channels, length = u.shape
    groups = B.shape[1]
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    # Each group of channels shares one B/C row: expand to (batch, channels, N, L).
    B = B.repeat_interleave(channels // groups, dim=1)
    C = C.repeat_interleave(channels // groups, dim=1)

    state = u.new_zeros(batch, channels, A.shape[1])
    outputs = []
    for t in range(length):
        decay = torch.exp(delta[:, :, t, None] * A)
        state = decay * state + (delta[:, :, t] * u[:, :, t])[:, :, None] * B[:, :, :, t]
        outputs.append((state * C[:, :, :, t]).sum(-1))
    y = torch.stack(outputs, dim=-1)
    if D is not None:
        y = y + D.to(dtype)[:, None] * u
    return y


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """Unfold a (B, C, H, W) map into VMamba's four scan routes, (B, 4, C, H*W).

    Route 0 reads row by row, route 1 column by column (the transposed map), routes 2 and 3 are routes 0
    and 1 reversed.
    """
    row_major = x.flatten(2)
    col_major = x.transpose(2, 3).flatten(2)
    routes = torch.stack([row_major, col_major], dim=1)
    return torch.cat([routes, routes.flip(-1)], dim=1)


def cross_merge(y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of ``cross_scan``'s layout: put each route back in row-major order and sum, (B, C, H*W).

    ``y`` is (B, 4, C, H*W). This is the adjoint of ``cross_scan``, so its gradient is ``cross_scan``.
    """
    batch, routes, channels, length = y.shape
    if routes != 4 or length != height * width:
        raise ValueError(f"cross_merge expects (B, 4, C, {height}*{width}), got {tuple(y.shape)}")
    forward = y[:, :2] + y[:, 2:].flip(-1)
    col_major = forward[:, 1].reshape(batch, channels, width, height).transpose(2, 3).reshape(batch, channels, length)
    return forward[:, 0] + col_major


def _default_chunk_size(length: int) -> int:
    """About sqrt(L): the in-chunk loop and the cross-chunk carry loop then take equally few steps."""
    return max(1, math.isqrt(max(length - 1, 0)) + 1)


def selective_scan_chunked(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Selective scan without a Python loop over every position: same contract as ``selective_scan_reference``.

    The sequence is cut into ``L / T`` chunks of ``T`` positions. All chunks run the recurrence at once from a
    zero state (``T`` vectorised steps), then a carry pass over the chunks (``L / T`` small steps) finds the state
    entering each chunk, and its effect inside the chunk is added back with the in-chunk decay
    ``exp(A * cumsum(dt))``. Every exponent is a sum of ``dt * A`` terms of one sign, so strong decay only
    underflows to zero, exactly as in the step-by-step recurrence: no ``exp(-cumsum)`` that could overflow.
    """
    _check_scan_shapes(u, delta, A, B, C, D, delta_bias)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    dtype = _compute_dtype(u, delta, A, B, C, D, delta_bias)
    batch, channels, length = u.shape
    groups, d_state = B.shape[1], B.shape[2]
    per_group = channels // groups
    chunk = min(chunk_size or _default_chunk_size(length), length)
    num_chunks = -(-length // chunk)
    pad = num_chunks * chunk - length

    u_c, A_c, B_c, C_c = (t.to(dtype) for t in (u, A, B, C))
    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    dtu = dt * u_c
    if pad:
        # Padded positions have dt = 0 (no decay) and no input; their outputs are dropped.
        dt, dtu = F.pad(dt, (0, pad)), F.pad(dtu, (0, pad))
        B_c, C_c = F.pad(B_c, (0, pad)), F.pad(C_c, (0, pad))

    # Layout (T, batch, groups, chunks, per_group[, N]): one in-chunk step is a contiguous slice.
    def channels_to_steps(t):
        return t.reshape(batch, groups, per_group, num_chunks, chunk).permute(4, 0, 1, 3, 2)

    def states_to_steps(t):
        return t.reshape(batch, groups, d_state, num_chunks, chunk).permute(4, 0, 1, 3, 2)[:, :, :, :, None, :]

    dt, dtu = channels_to_steps(dt), channels_to_steps(dtu)
    B_c, C_c = states_to_steps(B_c), states_to_steps(C_c)
    A_c = A_c.reshape(groups, 1, per_group, d_state)

    decay = torch.exp(dt[..., None] * A_c)
    drive = dtu[..., None] * B_c
    state = drive[0]
    local_states = [state]
    for step in range(1, chunk):
        state = decay[step] * state + drive[step]
        local_states.append(state)
    local_states = torch.stack(local_states)

    # Carry across chunks: state entering chunk c+1 = decay over chunk c * state entering c + local end state of c.
    chunk_decay = torch.exp(dt.sum(0)[..., None] * A_c)
    carry = torch.zeros_like(local_states[0, :, :, 0])
    carries = [carry]
    for index in range(num_chunks - 1):
        carry = chunk_decay[:, :, index] * carry + local_states[-1, :, :, index]
        carries.append(carry)
    carries = torch.stack(carries, dim=2)

    decay_into_chunk = torch.exp(torch.cumsum(dt, dim=0)[..., None] * A_c)
    states = local_states + decay_into_chunk * carries
    y = (states * C_c).sum(-1)
    y = y.permute(1, 2, 4, 3, 0).reshape(batch, channels, num_chunks * chunk)[:, :, :length]
    if D is not None:
        y = y + D.to(dtype)[:, None] * u_c
    return y


def route_order(images: torch.Tensor) -> torch.Tensor:
    """Read direction ``k`` of a (B, 4, C, H, W) image-layout tensor in route ``k``'s order: (B, 4, C, H*W).

    The per-direction projections are pointwise, so computing them on the image and reading them in route order
    equals projecting the four ``cross_scan`` copies, at a quarter of the cost.
    """
    if images.dim() != 5 or images.shape[1] != 4:
        raise ValueError(f"route_order expects (B, 4, C, H, W), got {tuple(images.shape)}")
    row_major = images[:, 0::2].flatten(3)
    col_major = images[:, 1::2].transpose(3, 4).flatten(3)
    # Interleave back to route order 0, 1, 2, 3 and reverse routes 2 and 3.
    routes = torch.stack([row_major, col_major], dim=2).flatten(1, 2)
    return torch.cat([routes[:, :2], routes[:, 2:].flip(-1)], dim=1)


def ss2d_selective_scan_torch(
    x: torch.Tensor,
    dts: torch.Tensor,
    A: torch.Tensor,
    Bs: torch.Tensor,
    Cs: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool = True,
    scan_fn=selective_scan_chunked,
) -> torch.Tensor:
    """VMamba's SS2D core in image layout: four-route scan of ``x`` merged back to (B, D, H, W).

    ``x`` is (B, D, H, W); ``dts`` (B, 4, D, H, W) and ``Bs``, ``Cs`` (B, 4, N, H, W) are the per-direction
    projections at image position (h, w); ``A`` is (4*D, N); ``D`` and ``delta_bias`` are (4*D,).
    """
    if x.dim() != 4:
        raise ValueError(f"ss2d: x must be (B, D, H, W), got {tuple(x.shape)}")
    batch, channels, height, width = x.shape
    if dts.shape != (batch, 4, channels, height, width):
        raise ValueError(f"ss2d: dts has shape {tuple(dts.shape)}, expected {(batch, 4, channels, height, width)}")
    if Bs.dim() != 5 or Bs.shape[:2] != (batch, 4) or Bs.shape[3:] != (height, width):
        raise ValueError(f"ss2d: Bs has shape {tuple(Bs.shape)}, expected (B={batch}, 4, N, H={height}, W={width})")
    if Cs.shape != Bs.shape:
        raise ValueError(f"ss2d: Cs has shape {tuple(Cs.shape)}, expected the shape of Bs {tuple(Bs.shape)}")
    d_state = Bs.shape[2]
    if A.shape != (4 * channels, d_state):
        raise ValueError(f"ss2d: A has shape {tuple(A.shape)}, expected {(4 * channels, d_state)}")
    length = height * width
    u = cross_scan(x).reshape(batch, 4 * channels, length)
    delta = route_order(dts).reshape(batch, 4 * channels, length)
    y = scan_fn(u, delta, A, route_order(Bs), route_order(Cs), D, delta_bias, delta_softplus)
    return cross_merge(y.reshape(batch, 4, channels, length), height, width).reshape(batch, channels, height, width)
