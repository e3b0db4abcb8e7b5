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
