# Copyright 2026 The transformers-vmamba authors. Licensed under the MIT license.
"""Triton kernels for the selective scan, plain (``(batch, K*D, L)`` layout) and fused SS2D (image layout).

One forward and one backward kernel serve both layouts. A program owns ``BLOCK_D`` channels of one direction
``k`` of one batch element and walks the sequence in chunks of ``CHUNK`` positions. Inside a chunk the
recurrence ``h_t = a_t h_{t-1} + x_t`` is an associative scan over ``(a, x)`` pairs on a
``[BLOCK_D, N_PAD, CHUNK]`` tile; the state at the chunk's end is carried into the next chunk in registers,
so any length works without one giant block. ``N_PAD`` is ``d_state`` padded to a power of two (padded states
have ``A = 0`` and ``B = C = 0``, so they stay zero).

In the fused SS2D mode (``CROSS=True``) direction ``k`` reads the image ``(H, W)`` in its route order by index
arithmetic (row-major, column-major, both reversed) and adds its output into the merged ``(B, D, H, W)`` result
with atomics, so the ``(B, 4, D, L)`` route copies are never written.

When gradients are needed, the forward stores the state entering every chunk (``B x K*D x n_chunks x N_PAD``, i.e. ``N_PAD / CHUNK`` of
the input size). The backward walks the chunks in reverse, recomputes the states inside each chunk from the
stored entry state, and runs a reverse associative scan for the state gradient
``g_t = C_t dy_t + a_{t+1} g_{t+1}``. Reductions over batch, length and the channels of a group (dA, dB, dC,
dD, d delta_bias) are summed in registers per program and then added with atomics.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _first_order_combine(a_left, x_left, a_right, x_right):
    # Composition of h -> a_left h + x_left followed by h -> a_right h + x_right.
    return a_left * a_right, x_left * a_right + x_right


@triton.jit
def _softplus(x):
    # Stable for every x: max(x, 0) + log(1 + exp(-|x|)).
    return tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _sigmoid(x):
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _route_positions(j, route, length, height, width, CROSS: tl.constexpr):
    """Image offset (row-major ``h * W + w``) of route position ``j``; identity for the plain layout."""
    if CROSS:
        j = tl.where(route >= 2, length - 1 - j, j)
        j = tl.where((route % 2) == 1, (j % height) * width + j // height, j)
    return j


@triton.jit
def _load_dt(delta_row, pos, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, ACC: tl.constexpr):
    z = tl.load(delta_row + pos[None, :], mask=mask, other=0.0).to(ACC)
    if HAS_BIAS:
        z = z + bias[:, None]
    dt = z
    if SOFTPLUS:
        dt = _softplus(z)
    return z, dt


@triton.jit
def selective_scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, y_ptr, states_ptr,
    length, height, width, group_channels, d_state, n_chunks,
    su_b, su_k, su_d,
    sdt_b, sdt_k, sdt_d,
    sbc_b, sbc_k, sbc_n,
    sy_b, sy_k, sy_d,
    sst_b, sst_k, sst_d,
    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, CROSS: tl.constexpr,
    BLOCK_D: tl.constexpr, N_PAD: tl.constexpr, CHUNK: tl.constexpr, ACC: tl.constexpr, STORE_STATES: tl.constexpr,
):  # fmt: skip
    pid_d = tl.program_id(0)
    k = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)

    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < group_channels
    offs_n = tl.arange(0, N_PAD)
    mask_n = offs_n < d_state
    mask_dn = mask_d[:, None] & mask_n[None, :]
    channel = k * group_channels + offs_d
    A = tl.load(A_ptr + channel[:, None] * d_state + offs_n[None, :], mask=mask_dn, other=0.0).to(ACC)
    if HAS_D:
        D = tl.load(D_ptr + channel, mask=mask_d, other=0.0).to(ACC)
    bias = tl.zeros([BLOCK_D], dtype=ACC)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + channel, mask=mask_d, other=0.0).to(ACC)

    offs_d64 = offs_d.to(tl.int64)
    u_row = u_ptr + b * su_b + k * su_k + offs_d64[:, None] * su_d
    delta_row = delta_ptr + b * sdt_b + k * sdt_k + offs_d64[:, None] * sdt_d
    y_row = y_ptr + b * sy_b + k * sy_k + offs_d64[:, None] * sy_d
    B_row = B_ptr + b * sbc_b + k * sbc_k + offs_n[:, None] * sbc_n
    C_row = C_ptr + b * sbc_b + k * sbc_k + offs_n[:, None] * sbc_n
    state_ptrs = states_ptr + b * sst_b + k * sst_k + offs_d64[:, None] * sst_d + offs_n[None, :]
    is_last = (tl.arange(0, CHUNK) == CHUNK - 1)[None, None, :]

    carry = tl.zeros([BLOCK_D, N_PAD], dtype=ACC)
    for c in range(0, n_chunks):
        if STORE_STATES:
            tl.store(state_ptrs + c * N_PAD, carry, mask=mask_dn)
        offs_j = c * CHUNK + tl.arange(0, CHUNK)
        mask_j = offs_j < length
        pos = _route_positions(offs_j, k, length, height, width, CROSS)
        mask_dj = mask_d[:, None] & mask_j[None, :]
        mask_nj = mask_n[:, None] & mask_j[None, :]
        u = tl.load(u_row + pos[None, :], mask=mask_dj, other=0.0).to(ACC)
        _, dt = _load_dt(delta_row, pos, mask_dj, bias, HAS_BIAS, SOFTPLUS, ACC)
        Bv = tl.load(B_row + pos[None, :], mask=mask_nj, other=0.0).to(ACC)
        Cv = tl.load(C_row + pos[None, :], mask=mask_nj, other=0.0).to(ACC)

        decay = tl.exp(dt[:, None, :] * A[:, :, None])
        drive = (dt * u)[:, None, :] * Bv[None, :, :]
        cum_decay, cum_drive = tl.associative_scan((decay, drive), axis=2, combine_fn=_first_order_combine)
        h = cum_drive + cum_decay * carry[:, :, None]
        y = tl.sum(h * Cv[None, :, :], axis=1)
        if HAS_D:
            y += D[:, None] * u
        if CROSS:
            tl.atomic_add(y_row + pos[None, :], y, mask=mask_dj, sem="relaxed")
        else:
            tl.store(y_row + pos[None, :], y, mask=mask_dj)
        carry = tl.sum(tl.where(is_last, h, 0.0), axis=2)


@triton.jit
def selective_scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, dy_ptr, states_ptr,
    du_ptr, ddelta_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    length, height, width, group_channels, d_state, n_chunks,
    su_b, su_k, su_d,
    sdt_b, sdt_k, sdt_d,
    sbc_b, sbc_k, sbc_n,
    sy_b, sy_k, sy_d,
    sst_b, sst_k, sst_d,
    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, CROSS: tl.constexpr,
    BLOCK_D: tl.constexpr, N_PAD: tl.constexpr, CHUNK: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    # du has u's strides, ddelta delta's, dB/dC B's, dy y's (all buffers are allocated contiguous like them).
    pid_d = tl.program_id(0)
    k = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)

    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < group_channels
    offs_n = tl.arange(0, N_PAD)
    mask_n = offs_n < d_state
    mask_dn = mask_d[:, None] & mask_n[None, :]
    channel = k * group_channels + offs_d
    A = tl.load(A_ptr + channel[:, None] * d_state + offs_n[None, :], mask=mask_dn, other=0.0).to(ACC)
    if HAS_D:
        D = tl.load(D_ptr + channel, mask=mask_d, other=0.0).to(ACC)
    bias = tl.zeros([BLOCK_D], dtype=ACC)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + channel, mask=mask_d, other=0.0).to(ACC)

    offs_d64 = offs_d.to(tl.int64)
    u_off = b * su_b + k * su_k + offs_d64[:, None] * su_d
    delta_off = b * sdt_b + k * sdt_k + offs_d64[:, None] * sdt_d
    bc_off = b * sbc_b + k * sbc_k + offs_n[:, None] * sbc_n
    dy_row = dy_ptr + b * sy_b + k * sy_k + offs_d64[:, None] * sy_d
    state_ptrs = states_ptr + b * sst_b + k * sst_k + offs_d64[:, None] * sst_d + offs_n[None, :]
    is_first = (tl.arange(0, CHUNK) == 0)[None, None, :]

    grad_carry = tl.zeros([BLOCK_D, N_PAD], dtype=ACC)  # dL/dh at the first position of the later chunk
    dA_acc = tl.zeros([BLOCK_D, N_PAD], dtype=ACC)
    dD_acc = tl.zeros([BLOCK_D], dtype=ACC)
    dbias_acc = tl.zeros([BLOCK_D], dtype=ACC)
    for i in range(0, n_chunks):
        c = n_chunks - 1 - i
        carry = tl.load(state_ptrs + c * N_PAD, mask=mask_dn, other=0.0)
        offs_j = c * CHUNK + tl.arange(0, CHUNK)
        mask_j = offs_j < length
        pos = _route_positions(offs_j, k, length, height, width, CROSS)
        mask_dj = mask_d[:, None] & mask_j[None, :]
        mask_nj = mask_n[:, None] & mask_j[None, :]
        u = tl.load(u_ptr + u_off + pos[None, :], mask=mask_dj, other=0.0).to(ACC)
        z, dt = _load_dt(delta_ptr + delta_off, pos, mask_dj, bias, HAS_BIAS, SOFTPLUS, ACC)
        Bv = tl.load(B_ptr + bc_off + pos[None, :], mask=mask_nj, other=0.0).to(ACC)
        Cv = tl.load(C_ptr + bc_off + pos[None, :], mask=mask_nj, other=0.0).to(ACC)
        dy = tl.load(dy_row + pos[None, :], mask=mask_dj, other=0.0).to(ACC)
        # The decay one step later, a_{t+1}, couples g_t to g_{t+1}.
        offs_next = offs_j + 1
        mask_next = mask_d[:, None] & (offs_next < length)[None, :]
        pos_next = _route_positions(offs_next, k, length, height, width, CROSS)
        _, dt_next = _load_dt(delta_ptr + delta_off, pos_next, mask_next, bias, HAS_BIAS, SOFTPLUS, ACC)

        # Recompute the states of this chunk from the stored entry state.
        decay = tl.exp(dt[:, None, :] * A[:, :, None])
        drive = (dt * u)[:, None, :] * Bv[None, :, :]
        cum_decay, cum_drive = tl.associative_scan((decay, drive), axis=2, combine_fn=_first_order_combine)
        h = cum_drive + cum_decay * carry[:, :, None]

        # Reverse scan: g_t = C_t dy_t + a_{t+1} g_{t+1}.
        decay_next = tl.exp(dt_next[:, None, :] * A[:, :, None])
        emit = Cv[None, :, :] * dy[:, None, :]
        rev_decay, rev_emit = tl.associative_scan(
            (decay_next, emit), axis=2, combine_fn=_first_order_combine, reverse=True
        )
        g = rev_emit + rev_decay * grad_carry[:, :, None]
        grad_carry = tl.sum(tl.where(is_first, g, 0.0), axis=2)

        # a_t h_{t-1} = h_t - x_t avoids a second shifted state tile.
        decayed_prev = h - drive
        dA_acc += tl.sum(g * decayed_prev * dt[:, None, :], axis=2)
        g_B = tl.sum(g * Bv[None, :, :], axis=1)
        ddt = tl.sum(g * decayed_prev * A[:, :, None], axis=1) + g_B * u
        du = g_B * dt
        if HAS_D:
            du += D[:, None] * dy
            dD_acc += tl.sum(dy * u, axis=1)
        if SOFTPLUS:
            ddt = ddt * _sigmoid(z)
        ddt = tl.where(mask_dj, ddt, 0.0)
        dbias_acc += tl.sum(ddt, axis=1)
        tl.store(ddelta_ptr + delta_off + pos[None, :], ddt, mask=mask_dj)
        if CROSS:
            tl.atomic_add(du_ptr + u_off + pos[None, :], du, mask=mask_dj, sem="relaxed")
        else:
            tl.store(du_ptr + u_off + pos[None, :], du, mask=mask_dj)
        dB = tl.sum(g * (dt * u)[:, None, :], axis=0)
        dC = tl.sum(h * dy[:, None, :], axis=0)
        tl.atomic_add(dB_ptr + bc_off + pos[None, :], dB, mask=mask_nj, sem="relaxed")
        tl.atomic_add(dC_ptr + bc_off + pos[None, :], dC, mask=mask_nj, sem="relaxed")

    tl.atomic_add(dA_ptr + channel[:, None] * d_state + offs_n[None, :], dA_acc, mask=mask_dn, sem="relaxed")
    if HAS_D:
        tl.atomic_add(dD_ptr + channel, dD_acc, mask=mask_d, sem="relaxed")
    if HAS_BIAS:
        tl.atomic_add(dbias_ptr + channel, dbias_acc, mask=mask_d, sem="relaxed")
