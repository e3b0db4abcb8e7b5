# Copyright 2026 The transformers-vmamba authors. Licensed under the MIT license.
"""Pure-PyTorch selective scan and SS2D (VMamba's four-route 2D scan).

Two roles: the specification of the numerics (``selective_scan_reference``, ``cross_scan``, ``cross_merge``,
``ss2d_reference``: slow, obviously correct, the oracle of every test), and the fallback implementation of the SS2D
operator (``ss2d_forward_torch`` / ``ss2d_backward_torch``: chunked, no Python loop per position) for devices
where no compiled kernel runs. It imports nothing but torch so that it ships with the Hub remote code.

SS2D takes a channels-last map (see ``check_ss2d_inputs``); the plain selective scan (``selective_scan_reference``,
``selective_scan_chunked``) folds the four scan directions ``K`` into the channel axis:

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
        raise ValueError(
            "expected u of shape (batch, K*D, L) and B of shape (batch, K, N, L), "
            f"got {tuple(u.shape)} and {tuple(B.shape)}"
        )
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
    # unbind (rather than indexing [..., t]) keeps autograd's backward linear in L: one stack per input.
    for dt_t, u_t, B_t, C_t in zip(delta.unbind(-1), u.unbind(-1), B.unbind(-1), C.unbind(-1)):
        decay = torch.exp(dt_t[:, :, None] * A)
        state = decay * state + (dt_t * u_t)[:, :, None] * B_t
        outputs.append((state * C_t).sum(-1))
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


def _default_chunk_size(length: int, d_state: int) -> int:
    """About sqrt(L), where the in-chunk sweeps and the cross-chunk loop take equally few steps; half that for
    N > 1, where the per-chunk carry work is small next to the sweeps and longer contiguous rows pay (measured)."""
    root = math.isqrt(max(length - 1, 0)) + 1
    return max(1, root if d_state == 1 else (root + 1) // 2)


# Elements of the (positions x states x channels) working tensors processed at once: bounds the transient memory
# of the backward pass (four such tensors) and keeps a block's sweeps in cache.
_BLOCK_ELEMENTS = 1 << 21


def _to_steps(t: torch.Tensor, chunk: int, num_chunks: int, pad_value: float = 0.0) -> torch.Tensor:
    """(R, X, L) -> (T, R, X, chunks), padded to chunks * T: one in-chunk position of all chunks is a slice.

    Keeping (R, X, chunks) in order makes this a 2D transpose of (R*X*chunks, T); written as one, torch copies it
    several times faster than as the equivalent 4D permute. Plain torch ops, so autograd sees through it.
    """
    rows, features, length = t.shape
    pad = num_chunks * chunk - length
    if pad:
        t = F.pad(t, (0, pad), value=pad_value)
    return t.reshape(-1, chunk).t().contiguous().view(chunk, rows, features, num_chunks)


def _from_steps(t: torch.Tensor, length: int) -> torch.Tensor:
    """(T, R, X, chunks) -> (R, X, L): inverse of ``_to_steps``, dropping the padding."""
    chunk, rows, features, num_chunks = t.shape
    return t.reshape(chunk, -1).t().reshape(rows, features, num_chunks * chunk)[:, :, :length]


# Big working tensors are (T, R, N, Dg, chunks); a step slice [t] is (R, N, Dg, chunks). Small ones are
# dt, dtu, grad_y: (T, R, Dg, chunks) and B, C: (T, R, N, chunks); A is (R, N, Dg, 1).


def _chunk_entry_states(decay, dt, dtu, A, B):
    """State entering every chunk, (R, N, Dg, chunks).

    One sweep over the in-chunk positions (all chunks at once, from a zero state) gives each chunk's end state; a
    loop over chunks then carries it on with the whole-chunk decay ``exp(A * sum(dt))``.
    """
    state = dtu[0].unsqueeze(1) * B[0].unsqueeze(2)
    for step in range(1, decay.shape[0]):
        state.mul_(decay[step]).addcmul_(dtu[step].unsqueeze(1), B[step].unsqueeze(2))
    chunk_decay = torch.exp(dt.sum(0).unsqueeze(1) * A)
    entry = torch.zeros_like(state)
    for index in range(1, state.shape[-1]):
        torch.addcmul(state[..., index - 1], chunk_decay[..., index - 1], entry[..., index - 1], out=entry[..., index])
    return entry


def _block_forward(dt, dtu, A, B, C):
    """y of one block, (T, R, Dg, chunks), in step layout."""
    decay = torch.exp_(dt.unsqueeze(2) * A)
    state = _chunk_entry_states(decay, dt, dtu, A, B)
    # Second sweep from the true entry states; each step's decay is used once, so its slot then holds h_t.
    for step in range(decay.shape[0]):
        state = decay[step].mul_(state).addcmul_(dtu[step].unsqueeze(1), B[step].unsqueeze(2))
    states = decay.mul_(C.unsqueeze(3))
    return states[:, :, 0] if states.shape[2] == 1 else states.sum(2)


def _block_backward(dt, dtu, A, B, C, grad_y):
    """Gradients (dt, dtu, A, B, C) of one block in step layout; grad_A is (R, N, Dg).

    Recomputes the states (nothing big is saved by the forward), runs the adjoint recurrence
    ``lam_t = C_t * grad_y_t + a_{t+1} * lam_{t+1}`` backwards with the same chunked sweeps, then contracts.
    """
    steps = dt.shape[0]
    decay = torch.exp(dt.unsqueeze(2) * A)
    # carried[t] = a_t * h_{t-1}: the part of h_t that came through the decay, formed exactly as the recurrence does.
    carried = torch.empty_like(decay)
    state = _chunk_entry_states(decay, dt, dtu, A, B)
    for step in range(steps):
        torch.mul(state, decay[step], out=carried[step])
        torch.addcmul(carried[step], dtu[step].unsqueeze(1), B[step].unsqueeze(2), out=state)

    # Adjoint: a local reverse sweep gives a_first * lam_first of every chunk from a zero start; the carry entering
    # chunk c from the right is rho_c = a_{first of c+1} * lam_{first of c+1}.
    gy = grad_y.unsqueeze(2)
    Cn = C.unsqueeze(3)
    lam = gy[-1] * Cn[-1]
    lam.mul_(decay[-1])
    for step in range(steps - 2, -1, -1):
        lam.addcmul_(gy[step], Cn[step]).mul_(decay[step])
    chunk_decay = torch.exp(dt.sum(0).unsqueeze(1) * A)
    carry = torch.zeros_like(lam)
    for index in range(lam.shape[-1] - 1, 0, -1):
        torch.addcmul(lam[..., index], chunk_decay[..., index], carry[..., index], out=carry[..., index - 1])
    adjoints = torch.empty_like(decay)
    for step in range(steps - 1, -1, -1):
        torch.addcmul(carry, gy[step], Cn[step], out=adjoints[step])
        torch.mul(adjoints[step], decay[step], out=lam)
        carry, lam = lam, carry
    scratch = decay

    # h_t = carried_t + dtu_t * B_t, so sum_Dg grad_y * h_t is a contraction of carried plus a small product.
    grad_C = torch.mul(carried, gy, out=scratch).sum(3)
    grad_C.addcmul_(B, (grad_y * dtu).sum(2, keepdim=True))
    grad_B = torch.mul(adjoints, dtu.unsqueeze(2), out=scratch).sum(3)
    grad_dtu = torch.mul(adjoints, B.unsqueeze(3), out=scratch).sum(2)
    # The adjoint times a_t * h_{t-1} is the gradient of the exponent dt_t * A.
    weighted = carried.mul_(adjoints)
    grad_A = torch.mul(weighted, dt.unsqueeze(2), out=scratch).sum((0, 4))
    grad_dt = weighted.mul_(A).sum(2)
    return grad_dt, grad_dtu, grad_A, grad_B, grad_C


def _blocks(rows: int, channels: int, d_state: int, padded_length: int):
    """(row slice, channel slice) pairs of at most about ``_BLOCK_ELEMENTS`` state elements each."""
    per_row = channels * d_state * padded_length
    if per_row <= _BLOCK_ELEMENTS:
        rows_per_block = max(1, _BLOCK_ELEMENTS // per_row)
        for start in range(0, rows, rows_per_block):
            yield slice(start, min(start + rows_per_block, rows)), slice(0, channels)
    else:
        splits = -(-per_row // _BLOCK_ELEMENTS)
        width = -(-channels // splits)
        for row in range(rows):
            for start in range(0, channels, width):
                yield slice(row, row + 1), slice(start, min(start + width, channels))


def _block_inputs(u, delta, delta_bias, group_index, rows, channels, delta_softplus):
    """u, dt before and after the softplus, and dt * u of one block, in step layout."""
    u = u[:, rows, channels]
    dt_raw = delta[:, rows, channels]
    if delta_bias is not None:
        dt_raw = dt_raw + delta_bias[group_index][:, channels][None, :, :, None]
    dt = F.softplus(dt_raw) if delta_softplus else dt_raw
    return u, dt_raw, dt, dt * u


def _step_forward(u, delta, A, B, C, D, delta_bias, delta_softplus, groups):
    """Chunked scan on step-layout inputs, no autograd: y (T, R, Dg, chunks).

    u, delta: (T, R, Dg, chunks); A: (groups, N, Dg); B, C: (T, R, N, chunks); D, delta_bias: (groups, Dg) or
    None. Row r is group ``r % groups`` of batch element ``r // groups``. All in the compute dtype. Works through
    blocks of about ``_BLOCK_ELEMENTS`` states so the transient memory stays bounded.
    """
    steps, num_rows, per_group, num_chunks = u.shape
    blocks = list(_blocks(num_rows, per_group, A.shape[1], steps * num_chunks))
    y = torch.empty_like(u) if len(blocks) != 1 else None
    for rows, channels in blocks:
        group_index = torch.arange(rows.start, rows.stop, device=u.device) % groups
        u_block, _, dt, dtu = _block_inputs(u, delta, delta_bias, group_index, rows, channels, delta_softplus)
        y_block = _block_forward(dt, dtu, A[group_index][:, :, channels, None], B[:, rows], C[:, rows])
        if D is not None:
            y_block.addcmul_(D[group_index][:, channels][None, :, :, None], u_block)
        if y is None:  # one block holds everything
            y = y_block
        else:
            y[:, rows, channels] = y_block
    return y


def _step_backward(grad_y, u, delta, A, B, C, D, delta_bias, delta_softplus, groups):
    """Gradients of ``_step_forward`` (u, delta, A, B, C, D, delta_bias; None for absent D/delta_bias), no
    autograd: the states are recomputed block by block, nothing big was saved by the forward."""
    steps, num_rows, per_group, num_chunks = u.shape
    grad_u, grad_delta = torch.empty_like(u), torch.empty_like(delta)
    grad_A, grad_B, grad_C = torch.zeros_like(A), torch.empty_like(B), torch.empty_like(C)
    grad_D = torch.zeros_like(D) if D is not None else None
    grad_bias = torch.zeros_like(delta_bias) if delta_bias is not None else None
    for rows, channels in _blocks(num_rows, per_group, A.shape[1], steps * num_chunks):
        group_index = torch.arange(rows.start, rows.stop, device=u.device) % groups
        u_block, dt_raw, dt, dtu = _block_inputs(u, delta, delta_bias, group_index, rows, channels, delta_softplus)
        gy = grad_y[:, rows, channels]
        g_dt, g_dtu, g_A, g_B, g_C = _block_backward(
            dt, dtu, A[group_index][:, :, channels, None], B[:, rows], C[:, rows], gy
        )
        # dtu = dt * u, dt = softplus(delta + delta_bias), y += D * u.
        g_u = g_dtu * dt
        if D is not None:
            g_u.addcmul_(D[group_index][:, channels][None, :, :, None], gy)
            grad_D[:, channels] += _sum_rows_into_groups((gy * u_block).sum((0, 3)), group_index, groups)
        grad_u[:, rows, channels] = g_u
        g_dt.addcmul_(g_dtu, u_block)
        if delta_softplus:
            g_dt.mul_(torch.sigmoid(dt_raw))
        grad_delta[:, rows, channels] = g_dt
        if delta_bias is not None:
            grad_bias[:, channels] += _sum_rows_into_groups(g_dt.sum((0, 3)), group_index, groups)
        grad_A[:, :, channels] += _sum_rows_into_groups(g_A, group_index, groups)
        if channels.start == 0:
            grad_B[:, rows], grad_C[:, rows] = g_B, g_C
        else:  # a later channel block of the same rows: B and C are shared by the group, accumulate
            grad_B[:, rows] += g_B
            grad_C[:, rows] += g_C
    return grad_u, grad_delta, grad_A, grad_B, grad_C, grad_D, grad_bias


def _sum_rows_into_groups(per_row: torch.Tensor, group_index: torch.Tensor, groups: int) -> torch.Tensor:
    """Sum per-row parameter gradients (R, ...) into their groups (groups, ...)."""
    return per_row.new_zeros(groups, *per_row.shape[1:]).index_add_(0, group_index, per_row)


def _grouped_parameters(A, D, delta_bias, groups, per_group):
    """A (groups*Dg, N) -> (groups, N, Dg); D, delta_bias (groups*Dg,) -> (groups, Dg)."""
    A = A.reshape(groups, per_group, -1).transpose(1, 2)
    D = D.reshape(groups, per_group) if D is not None else None
    delta_bias = delta_bias.reshape(groups, per_group) if delta_bias is not None else None
    return A, D, delta_bias


class _StepScan(torch.autograd.Function):
    """Autograd for the chunked scan: keeps only the inputs; the backward recomputes the states. Autograd through
    the sweeps would keep every step's intermediates (several copies of the full (batch, K*D, N, L) state)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus, groups):
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias)
        ctx.settings = (delta_softplus, groups)
        return _step_forward(u, delta, A, B, C, D, delta_bias, delta_softplus, groups)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        grads = _step_backward(grad_y, *ctx.saved_tensors, *ctx.settings)
        return (*grads, None, None)


@torch.compiler.disable
def _step_scan(u, delta, A, B, C, D, delta_bias, delta_softplus, groups):
    """Run eagerly under torch.compile: tracing would unroll every sweep step (minutes of compile per shape) for
    no gain. Takes A as (groups*Dg, N) and D, delta_bias as (groups*Dg,)."""
    A, D, delta_bias = _grouped_parameters(A, D, delta_bias, groups, u.shape[2])
    return _StepScan.apply(u, delta, A, B, C, D, delta_bias, delta_softplus, groups)


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

    The sequence is cut into chunks of ``T`` (about sqrt(L)) positions. A sweep over the ``T`` in-chunk positions,
    vectorised over all chunks, finds each chunk's end state from a zero start; a loop over the chunks carries
    the state into the next chunk with the whole-chunk decay; a second sweep then runs every chunk from its true
    entry state and contracts with ``C``. Only decays ``exp(dt * A)`` of single steps or of whole chunks are ever
    formed, exactly the products the step-by-step recurrence forms, so strong decay (``dt * A`` of -10 or less
    per step) just underflows to zero as it does there: no ``exp(-cumsum)`` that could overflow, no clamping.
    The backward recomputes the states block by block instead of keeping them (see ``_StepScan``).
    """
    _check_scan_shapes(u, delta, A, B, C, D, delta_bias)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    dtype = _compute_dtype(u, delta, A, B, C, D, delta_bias)
    batch, channels, length = u.shape
    groups, d_state = B.shape[1], B.shape[2]
    chunk = min(chunk_size or _default_chunk_size(length, d_state), length)
    num_chunks = -(-length // chunk)

    def steps(t, features, pad_value=0.0):
        return _to_steps(t.to(dtype).reshape(batch * groups, features, length), chunk, num_chunks, pad_value)

    # The padded tail of the last chunk must have dt = 0 (decay 1, no input) so that nothing there can overflow:
    # softplus(-inf) = 0; without softplus, add the bias first and pad with 0.
    delta_bias = delta_bias.to(dtype) if delta_bias is not None else None
    if delta_softplus:
        delta_steps = steps(delta, channels // groups, -math.inf)
    else:
        delta_steps = steps(delta if delta_bias is None else delta + delta_bias[:, None], channels // groups)
        delta_bias = None
    y = _step_scan(
        steps(u, channels // groups),
        delta_steps,
        A.to(dtype),
        steps(B, d_state),
        steps(C, d_state),
        D.to(dtype) if D is not None else None,
        delta_bias,
        delta_softplus,
        groups,
    )
    return _from_steps(y, length).reshape(batch, channels, length)


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


# ---------------------------------------------------------------------------------------------------------------
# SS2D: the four-route scan of a channels-last feature map, merged back into the map
# ---------------------------------------------------------------------------------------------------------------


def check_ss2d_inputs(x, dt, A, B, C, D, dt_bias) -> None:
    """Shape and dtype checks of the SS2D contract, shared by every implementation (torch, numba, Triton).

    x (batch, H, W, C); dt (batch, H, W, 4, C); A (4, C, N); B, C (batch, H, W, 4, N); D, dt_bias (4, C).
    ``dt`` may instead be its per-route low-rank factors ``{"dt_low_rank": (batch, H, W, 4, R), "dt_weight":
    (4, C, R)}`` (see ``low_rank_dt``).
    """
    dt_parts = dt if isinstance(dt, dict) else {"dt": dt}
    tensors = {"x": x, **dt_parts, "A": A, "B": B, "C": C, "D": D, "dt_bias": dt_bias}
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise TypeError(f"ss2d: {name} must be a floating-point tensor, got {getattr(tensor, 'dtype', tensor)}")
    if x.dim() != 4:
        raise ValueError(f"ss2d: x must be (batch, height, width, channels), got shape {tuple(x.shape)}")
    if A.dim() != 3:
        raise ValueError(f"ss2d: A must be (4, channels, state), got shape {tuple(A.shape)}")
    batch, height, width, channels = x.shape
    state = A.shape[2]
    expected = {
        **({"dt": (batch, height, width, 4, channels)} if "dt" in dt_parts else {}),
        "A": (4, channels, state),
        "B": (batch, height, width, 4, state),
        "C": (batch, height, width, 4, state),
        "D": (4, channels),
        "dt_bias": (4, channels),
    }
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ValueError(f"ss2d: {name} has shape {tuple(tensors[name].shape)}, expected {shape}")
    if "dt" not in dt_parts:
        low_rank, weight = dt_parts["dt_low_rank"], dt_parts["dt_weight"]
        expected_low_rank = (batch, height, width, 4, weight.shape[-1] if weight.dim() else 0)
        if weight.dim() != 3 or tuple(low_rank.shape) != expected_low_rank or tuple(weight.shape[:2]) != (4, channels):
            raise ValueError(
                f"ss2d: dt_low_rank {tuple(low_rank.shape)} and dt_weight {tuple(weight.shape)} do not fit x "
                f"{tuple(x.shape)}: expected dt_low_rank {expected_low_rank} and dt_weight (4, {channels}, rank)"
            )
    devices = {t.device for t in tensors.values()}
    if len(devices) > 1:
        raise ValueError(f"ss2d: all inputs must be on one device, got {sorted(map(str, devices))}")


def low_rank_dt(dt_low_rank: torch.Tensor, dt_weight: torch.Tensor) -> torch.Tensor:
    """dt (batch, H, W, 4, C) from its per-route low-rank factors (batch, H, W, 4, R) and (4, C, R)."""
    return torch.einsum("bhwkr,kdr->bhwkd", dt_low_rank, dt_weight)


def low_rank_dt_grads(grad_dt, dt_low_rank, dt_weight) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of ``low_rank_dt`` with respect to its two factors, given dt's gradient; contiguous."""
    grad_low_rank = torch.einsum("bhwkd,kdr->bhwkr", grad_dt, dt_weight).contiguous()
    grad_weight = torch.einsum("bhwkd,bhwkr->kdr", grad_dt, dt_low_rank).contiguous()
    return grad_low_rank, grad_weight


def ss2d_compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 when any input is float64, else float32 (half-precision inputs are scanned in float32)."""
    return _compute_dtype(*tensors)


def _route_steps(image: torch.Tensor, route: int) -> torch.Tensor:
    """(B, H, W, F) read in route ``route``'s order, directly in step layout with one chunk per image line.

    Row routes (0, 2) cut the sequence at every image row (T = W, chunks = H), column routes (1, 3) at every
    column (T = H, chunks = W); routes 2 and 3 are 0 and 1 backwards, i.e. both axes flipped.
    Returns a (T, B, F, chunks) view.
    """
    steps = image.permute(2, 0, 3, 1) if route % 2 == 0 else image.permute(1, 0, 3, 2)
    return steps.flip(0, 3) if route >= 2 else steps


def _route_image(steps: torch.Tensor, route: int) -> torch.Tensor:
    """Inverse of ``_route_steps``: (T, B, F, chunks) -> (B, H, W, F) view."""
    if route >= 2:
        steps = steps.flip(0, 3)
    return steps.permute(1, 3, 0, 2) if route % 2 == 0 else steps.permute(1, 0, 3, 2)


def _route_sets(height: int, width: int) -> list[tuple[int, ...]]:
    """A square map runs all four routes in one call; otherwise row and column routes have different chunk
    lengths (W vs H) and run as two calls of two routes each."""
    return [(0, 1, 2, 3)] if height == width else [(0, 2), (1, 3)]


def _stacked_steps(image_of_route, routes):
    """Step layouts of several routes stacked as rows (batch-major, route-minor): (T, B * routes, F, chunks)."""
    steps = torch.stack([_route_steps(image_of_route(k), k) for k in routes], dim=2)  # (T, B, routes, F, chunks)
    return steps.reshape(steps.shape[0], -1, *steps.shape[3:])


def _route_parameters(A, D, dt_bias, routes):
    """A (4, C, N) -> (routes, N, C); D, dt_bias (4, C) -> (routes, C): the grouped layout of the step scan."""
    picked = list(routes)
    return A[picked].transpose(1, 2), D[picked], dt_bias[picked]


def _route_step_inputs(routes, x, dt, A, B, C, D, dt_bias):
    """The step scan's inputs (u, delta, A, B, C, D, delta_bias) for a set of routes run together."""
    A_r, D_r, bias_r = _route_parameters(A, D, dt_bias, routes)
    return (
        _stacked_steps(lambda k: x, routes),
        _stacked_steps(lambda k: dt[..., k, :], routes),
        A_r,
        _stacked_steps(lambda k: B[..., k, :], routes),
        _stacked_steps(lambda k: C[..., k, :], routes),
        D_r,
        bias_r,
    )


def ss2d_forward_torch(x, dt, A, B, C, D, dt_bias) -> torch.Tensor:
    """SS2D with the chunked scan: each route is read straight into the scan's step layout (no cross-scan copies)
    and merged by adding its output back in place. Returns (batch, H, W, C) in the compute dtype; no autograd.
    """
    dtype = _compute_dtype(x, dt, A, B, C, D, dt_bias)
    x, dt, A, B, C, D, dt_bias = (t.to(dtype) for t in (x, dt, A, B, C, D, dt_bias))
    batch, height, width, channels = x.shape
    merged = torch.zeros(x.shape, dtype=dtype, device=x.device)
    for routes in _route_sets(height, width):
        y = _step_forward(*_route_step_inputs(routes, x, dt, A, B, C, D, dt_bias), True, len(routes))
        y = y.reshape(y.shape[0], batch, len(routes), channels, y.shape[-1])
        for index, route in enumerate(routes):
            merged.add_(_route_image(y[:, :, index], route))
    return merged


def ss2d_backward_torch(grad_y, x, dt, A, B, C, D, dt_bias):
    """Gradients of ``ss2d_forward_torch`` with respect to (x, dt, A, B, C, D, dt_bias), each in its input's
    dtype; explicit (no autograd), so it can serve as an operator's backward."""
    inputs = (x, dt, A, B, C, D, dt_bias)
    dtype = _compute_dtype(*inputs)
    grad_y, x, dt, A, B, C, D, dt_bias = (t.to(dtype) for t in (grad_y, *inputs))
    batch, height, width, channels = x.shape
    grad_x = torch.zeros_like(x)
    grad_dt, grad_A, grad_B, grad_C = (torch.zeros_like(t) for t in (dt, A, B, C))
    grad_D, grad_bias = torch.zeros_like(D), torch.zeros_like(dt_bias)
    for routes in _route_sets(height, width):
        g_u, g_dt, g_A, g_B, g_C, g_D, g_bias = _step_backward(
            _stacked_steps(lambda k: grad_y, routes),  # the merge is a sum: every route gets the whole grad_y
            *_route_step_inputs(routes, x, dt, A, B, C, D, dt_bias),
            True,
            len(routes),
        )

        def per_route(steps, index, route):
            steps = steps.reshape(steps.shape[0], batch, len(routes), *steps.shape[2:])
            return _route_image(steps[:, :, index], route)

        for index, route in enumerate(routes):
            grad_x.add_(per_route(g_u, index, route))
            grad_dt[..., route, :] = per_route(g_dt, index, route)
            grad_B[..., route, :] = per_route(g_B, index, route)
            grad_C[..., route, :] = per_route(g_C, index, route)
            grad_A[route] = g_A[index].transpose(0, 1)
            grad_D[route], grad_bias[route] = g_D[index], g_bias[index]
    grads = (grad_x, grad_dt, grad_A, grad_B, grad_C, grad_D, grad_bias)
    return tuple(g.to(t.dtype) for g, t in zip(grads, inputs))


def ss2d_reference(x, dt, A, B, C, D, dt_bias) -> torch.Tensor:
    """SS2D by its definition: ``cross_scan`` copies of the map, the step-by-step ``selective_scan_reference``,
    ``cross_merge``. Slow; the specification every implementation is tested against (differentiable by autograd).

    Takes the channels-last contract of ``check_ss2d_inputs``; returns (batch, H, W, C) in the compute dtype.
    """
    check_ss2d_inputs(x, dt, A, B, C, D, dt_bias)
    batch, height, width, channels = x.shape
    length = height * width
    image = x.permute(0, 3, 1, 2)  # (B, C, H, W)
    u = cross_scan(image).reshape(batch, 4 * channels, length)
    delta = route_order(dt.permute(0, 3, 4, 1, 2)).reshape(batch, 4 * channels, length)
    y = selective_scan_reference(
        u,
        delta,
        A.reshape(4 * channels, -1),
        route_order(B.permute(0, 3, 4, 1, 2)),
        route_order(C.permute(0, 3, 4, 1, 2)),
        D.reshape(-1),
        dt_bias.reshape(-1),
        delta_softplus=True,
    )
    merged = cross_merge(y.reshape(batch, 4, channels, length), height, width)
    return merged.reshape(batch, channels, height, width).permute(0, 2, 3, 1)
