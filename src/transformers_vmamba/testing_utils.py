# Copyright 2026 The transformers-vmamba authors. Licensed under the MIT license.
"""Random scan inputs in the ranges a VMamba model produces, shared by the tests and the benchmarks of every scan
implementation (torch, numba, Triton), so that each is checked and timed on the same kind of data."""

from __future__ import annotations

import torch


def _draw(generator: torch.Generator):
    def draw(*shape, scale=1.0, shift=0.0, uniform=None):
        if uniform is not None:
            low, high = uniform
            values = torch.rand(*shape, generator=generator, dtype=torch.float64) * (high - low) + low
        else:
            values = torch.randn(*shape, generator=generator, dtype=torch.float64) * scale + shift
        return values

    return draw


def make_ss2d_inputs(
    batch: int,
    height: int,
    width: int,
    channels: int,
    state: int,
    *,
    decay: str = "realistic",
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Inputs of the SS2D operator (``selective_scan.check_ss2d_inputs``): x, dt, A, B, C, D, dt_bias.

    ``decay="realistic"``: A = -exp(A_log) with A_log around log(1..N) (S4D-real init, trained spread), dt bias in
    [-3, -0.5] as trained models have it, so a position's influence fades over tens to hundreds of steps.
    ``decay="extreme"``: dt * A far below -10 per step mixed with slow channels, so exp underflows to zero.
    Drawn in float64, then cast to ``dtype``.
    """
    draw = _draw(torch.Generator().manual_seed(seed))
    if decay == "realistic":
        s4d_real = torch.arange(1, state + 1, dtype=torch.float64).expand(4, channels, state)
        A = -s4d_real * torch.exp(0.3 * draw(4, channels, state))
        dt, dt_bias = draw(batch, height, width, 4, channels), draw(4, channels, uniform=(-3.0, -0.5))
    elif decay == "extreme":
        A = -torch.exp(draw(4, channels, state, scale=3.0, shift=2.0))
        dt, dt_bias = draw(batch, height, width, 4, channels, scale=3.0), draw(4, channels, shift=2.0)
    else:
        raise ValueError(f"decay must be 'realistic' or 'extreme', got {decay!r}")
    tensors = dict(
        x=draw(batch, height, width, channels),
        dt=dt,
        A=A,
        B=draw(batch, height, width, 4, state),
        C=draw(batch, height, width, 4, state),
        D=draw(4, channels, uniform=(0.5, 1.5)),
        dt_bias=dt_bias,
    )
    return {name: t.to(device=device, dtype=dtype) for name, t in tensors.items()}


def make_scan_inputs(
    batch: int,
    groups: int,
    per_group: int,
    state: int,
    length: int,
    *,
    decay: str = "realistic",
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Inputs of the plain selective scan (``selective_scan_reference``): u, delta (batch, groups * per_group, L),
    A (channels, N), B, C (batch, groups, N, L), D, delta_bias (channels,); same ranges as ``make_ss2d_inputs``."""
    ss2d = make_ss2d_inputs(batch, 1, length, groups * per_group, state, decay=decay, dtype=torch.float64, seed=seed)
    draw = _draw(torch.Generator().manual_seed(seed + 1))
    channels = groups * per_group
    tensors = dict(
        u=ss2d["x"].reshape(batch, length, channels).transpose(1, 2),
        delta=ss2d["dt"][..., 0, :].reshape(batch, length, channels).transpose(1, 2),
        A=ss2d["A"][0],
        B=draw(batch, groups, state, length),
        C=draw(batch, groups, state, length),
        D=ss2d["D"][0],
        delta_bias=ss2d["dt_bias"][0],
    )
    return {name: t.contiguous().to(device=device, dtype=dtype) for name, t in tensors.items()}
