# Copyright 2026 The transformers-vmamba authors. Licensed under the MIT license.
"""VMamba's SS2D scan as one PyTorch operator, ``torch.ops.vmamba.ss2d_scan``, with a kernel per device.

One operator (with a registered fake and a backward operator) keeps the whole scan a single node for
``torch.compile`` (no graph break), ``torch.export`` and ONNX export, whatever runs inside. The model calls its
low-rank form, ``torch.ops.vmamba.ss2d_scan_low_rank``, which also forms dt from its per-route factors (so that
training does not keep dt). Inside, the fastest available implementation runs, chosen per call the way
Transformers' Mamba picks its kernels:

- a compiled kernel from the ``vmamba_kernels`` package when it can run on the inputs' device (numba on CPU,
  Triton on CUDA);
- otherwise the pure-PyTorch chunked scan of ``selective_scan.py`` (with a warning, once: it is several times slower).

``VMAMBA_SCAN_BACKEND`` overrides the choice: ``auto`` (default), ``kernel`` (a compiled kernel or an error) or
``torch`` (always the PyTorch path). The operator's contract is ``selective_scan.check_ss2d_inputs``; its output is
float32 (float64 when an input is float64) whatever the inputs' precision.
"""

from __future__ import annotations

import os

import torch

from .selective_scan import (
    check_ss2d_inputs,
    low_rank_dt,
    low_rank_dt_grads,
    ss2d_backward_torch,
    ss2d_compute_dtype,
    ss2d_forward_torch,
)


try:  # compiled kernels ship with the package, not with Hub remote code
    import vmamba_kernels
except ImportError:
    vmamba_kernels = None


BACKEND_ENV_VAR = "VMAMBA_SCAN_BACKEND"
BACKENDS = ("auto", "kernel", "torch")
_warned_fallback: set[str] = set()


def requested_backend() -> str:
    """The backend asked for by ``VMAMBA_SCAN_BACKEND`` (default "auto"); a bad value is an error naming it."""
    value = os.environ.get(BACKEND_ENV_VAR, "").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV_VAR} must be one of {', '.join(BACKENDS)}; got {value!r}")
    return value


def _kernel_for(device_type: str):
    """(kernel, None) for a compiled kernel that runs on this device type, else (None, reason)."""
    if vmamba_kernels is None:
        return None, "the vmamba_kernels package is not installed (pip install transformers-vmamba)"
    return vmamba_kernels.ss2d_kernel(device_type)


def implementation(device: torch.device, low_rank: bool = False):
    """The (forward, backward) pair that runs the operator on ``device``, honouring ``VMAMBA_SCAN_BACKEND``; with
    ``low_rank``, the pair of ``ss2d_scan_low_rank`` (the kernel's own when it forms dt itself)."""
    backend = requested_backend()
    if backend != "torch":
        kernel, reason = _kernel_for(device.type)
        if kernel is not None:
            if not low_rank:
                return kernel.forward, kernel.backward
            if hasattr(kernel, "forward_low_rank"):
                return kernel.forward_low_rank, kernel.backward_low_rank
            return _forming_dt(kernel.forward, kernel.backward)
        if backend == "kernel":
            raise RuntimeError(f"{BACKEND_ENV_VAR}=kernel but no compiled SS2D kernel runs on {device.type}: {reason}")
        if device.type not in _warned_fallback:
            _warned_fallback.add(device.type)
            from transformers.utils import logging

            logging.get_logger(__name__).warning(
                f"VMamba: no compiled SS2D kernel for {device.type} ({reason}); using the slower PyTorch scan."
            )
    if low_rank:
        return _forming_dt(ss2d_forward_torch, ss2d_backward_torch)
    return ss2d_forward_torch, ss2d_backward_torch


def _forming_dt(forward, backward):
    """The low-rank pair of an implementation that takes dt whole: dt is formed before it (again in backward)."""

    def forward_low_rank(x, dt_low_rank, dt_weight, A, B, C, D, dt_bias):
        return forward(x, low_rank_dt(dt_low_rank, dt_weight), A, B, C, D, dt_bias)

    def backward_low_rank(grad_y, x, dt_low_rank, dt_weight, A, B, C, D, dt_bias):
        dt = low_rank_dt(dt_low_rank, dt_weight)
        dx, ddt, dA, dB, dC, dD, dbias = backward(grad_y, x, dt, A, B, C, D, dt_bias)
        return dx, *low_rank_dt_grads(ddt, dt_low_rank, dt_weight), dA, dB, dC, dD, dbias

    return forward_low_rank, backward_low_rank


def _registered(name: str) -> bool:
    """Whether ``vmamba::<name>`` is registered already (the package and a Hub remote-code copy of this file may
    both be imported; the first registration serves both, they share the contract)."""
    return hasattr(torch.ops.vmamba, name)


def _autograd_from_saved_inputs(op, backward_op) -> None:
    """Autograd for an operator whose backward operator takes grad_y and the operator's own inputs: they are saved
    as they are, nothing else."""

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def backward(ctx, grad_y):
        return backward_op(grad_y, *ctx.saved_tensors)

    op.register_autograd(backward, setup_context=setup_context)


def _define_operator():
    """Register ``vmamba::ss2d_scan`` and its backward once per process (see ``_registered``)."""
    if _registered("ss2d_scan"):
        return

    @torch.library.custom_op("vmamba::ss2d_scan", mutates_args=())
    def ss2d_scan_op(
        x: torch.Tensor,
        dt: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: torch.Tensor,
        dt_bias: torch.Tensor,
    ) -> torch.Tensor:
        forward, _ = implementation(x.device)
        return forward(x, dt, A, B, C, D, dt_bias)

    @ss2d_scan_op.register_fake
    def _(x, dt, A, B, C, D, dt_bias):
        return x.new_empty(x.shape, dtype=ss2d_compute_dtype(x, dt, A, B, C, D, dt_bias))

    @torch.library.custom_op("vmamba::ss2d_scan_backward", mutates_args=())
    def ss2d_scan_backward_op(
        grad_y: torch.Tensor,
        x: torch.Tensor,
        dt: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: torch.Tensor,
        dt_bias: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        _, backward = implementation(x.device)
        return tuple(backward(grad_y, x, dt, A, B, C, D, dt_bias))

    @ss2d_scan_backward_op.register_fake
    def _(grad_y, x, dt, A, B, C, D, dt_bias):
        return tuple(torch.empty_like(t) for t in (x, dt, A, B, C, D, dt_bias))

    _autograd_from_saved_inputs(ss2d_scan_op, torch.ops.vmamba.ss2d_scan_backward)


_define_operator()


def _define_low_rank_operator():
    """Register ``vmamba::ss2d_scan_low_rank`` and its backward once per process (see ``_registered``).

    The model's dt, (batch, H, W, 4, C), is a rank-R projection per route (by default R = the stage's width / 16,
    rounded up): formed inside the operator and again in its backward, it is never kept for backward (for
    Vanilla-VMamba-T it was 29% of the activations a block keeps). The CPU kernel forms it at each position as it
    scans, so it never goes through memory at all; other implementations get it from one matmul."""
    if _registered("ss2d_scan_low_rank"):
        return

    @torch.library.custom_op("vmamba::ss2d_scan_low_rank", mutates_args=())
    def ss2d_scan_low_rank_op(
        x: torch.Tensor,
        dt_low_rank: torch.Tensor,
        dt_weight: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: torch.Tensor,
        dt_bias: torch.Tensor,
    ) -> torch.Tensor:
        forward, _ = implementation(x.device, low_rank=True)
        return forward(x, dt_low_rank, dt_weight, A, B, C, D, dt_bias)

    @ss2d_scan_low_rank_op.register_fake
    def _(x, dt_low_rank, dt_weight, A, B, C, D, dt_bias):
        return x.new_empty(x.shape, dtype=ss2d_compute_dtype(x, dt_low_rank, dt_weight, A, B, C, D, dt_bias))

    @torch.library.custom_op("vmamba::ss2d_scan_low_rank_backward", mutates_args=())
    def ss2d_scan_low_rank_backward_op(
        grad_y: torch.Tensor,
        x: torch.Tensor,
        dt_low_rank: torch.Tensor,
        dt_weight: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: torch.Tensor,
        dt_bias: torch.Tensor,
    ) -> tuple[
        torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor
    ]:
        _, backward = implementation(x.device, low_rank=True)
        return tuple(backward(grad_y, x, dt_low_rank, dt_weight, A, B, C, D, dt_bias))

    @ss2d_scan_low_rank_backward_op.register_fake
    def _(grad_y, x, dt_low_rank, dt_weight, A, B, C, D, dt_bias):
        inputs = (x, dt_low_rank, dt_weight, A, B, C, D, dt_bias)
        return tuple(torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in inputs)

    _autograd_from_saved_inputs(ss2d_scan_low_rank_op, torch.ops.vmamba.ss2d_scan_low_rank_backward)


_define_low_rank_operator()


def ss2d_scan(x, dt, A, B, C, D, dt_bias) -> torch.Tensor:
    """The SS2D scan of a channels-last map: checks the inputs, then runs ``torch.ops.vmamba.ss2d_scan``.

    x (batch, H, W, C); dt (batch, H, W, 4, C) before bias and softplus; A (4, C, N), negative; B, C
    (batch, H, W, 4, N); D, dt_bias (4, C). Returns (batch, H, W, C), the four routes' outputs summed, in float32
    (float64 for float64 inputs). Differentiable in every input.
    """
    check_ss2d_inputs(x, dt, A, B, C, D, dt_bias)
    return torch.ops.vmamba.ss2d_scan(x, dt, A, B, C, D, dt_bias)


def ss2d_scan_low_rank(x, dt_low_rank, dt_weight, A, B, C, D, dt_bias) -> torch.Tensor:
    """``ss2d_scan`` with dt given as per-route low-rank factors, dt = ``low_rank_dt(dt_low_rank, dt_weight)``:
    dt_low_rank (batch, H, W, 4, R), dt_weight (4, C, R). What the model calls: dt is formed inside the operator
    (``torch.ops.vmamba.ss2d_scan_low_rank``) and recomputed in its backward instead of being kept for it."""
    check_ss2d_inputs(x, {"dt_low_rank": dt_low_rank, "dt_weight": dt_weight}, A, B, C, D, dt_bias)
    return torch.ops.vmamba.ss2d_scan_low_rank(x, dt_low_rank, dt_weight, A, B, C, D, dt_bias)


__all__ = [
    "BACKENDS",
    "BACKEND_ENV_VAR",
    "implementation",
    "low_rank_dt",
    "requested_backend",
    "ss2d_scan",
    "ss2d_scan_low_rank",
]
