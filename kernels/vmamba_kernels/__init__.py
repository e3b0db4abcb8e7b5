# Copyright 2026 The transformers-vmamba authors. Licensed under the MIT license.
"""Triton kernels for VMamba's selective scan and fused 2D cross-scan (SS2D).

Importing this package never needs Triton: the kernels are loaded on first use, ``is_available()`` says whether
they can run, and the ops raise a ``RuntimeError`` naming the problem when they cannot.

- ``selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True)``: u, delta (batch, K*D, L),
  A (K*D, N), B, C (batch, K, N, L), D, delta_bias (K*D,). Returns float32 y of u's shape (float64 for float64
  inputs). Differentiable in every input.
- ``ss2d_selective_scan(x, dts, A, Bs, Cs, D, delta_bias, delta_softplus=True)``: the whole SS2D core in image
  layout (x (B, D, H, W), dts (B, 4, D, H, W), Bs/Cs (B, 4, N, H, W)), returning the merged (B, D, H, W) output
  without materialising the four route copies.

Both are registered as ``torch.ops.vmamba.*`` custom ops with fake implementations and autograd, so
``torch.compile`` keeps them in the graph without a break.
"""

from __future__ import annotations

import os


__all__ = ["is_available", "selective_scan", "ss2d_kernel", "ss2d_selective_scan", "unavailable_reason"]

_ops = None
_import_error: BaseException | None = None


def _load_ops():
    global _ops, _import_error
    if _ops is None and _import_error is None:
        try:
            from . import ops as _loaded
        except Exception as err:  # ImportError without triton; other errors for broken installs
            _import_error = err
        else:
            _ops = _loaded
    return _ops


def unavailable_reason() -> str | None:
    """Why the kernels cannot run here, or None when they can."""
    if _load_ops() is None:
        return f"Triton could not be imported ({type(_import_error).__name__}: {_import_error}); pip install triton"
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return None
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device is available (set TRITON_INTERPRET=1 to run the kernels in Triton's interpreter)"
    return None


def is_available() -> bool:
    """True when Triton imports and can run here (a CUDA device, or ``TRITON_INTERPRET=1``)."""
    return unavailable_reason() is None


def _require_ops():
    ops = _load_ops()
    if ops is None:
        raise RuntimeError(f"vmamba_kernels is unavailable: {unavailable_reason()}")
    return ops


def selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True):
    """Triton selective scan with autograd; same contract as ``transformers_vmamba.selective_scan_reference``."""
    return _require_ops().selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus)


def ss2d_selective_scan(x, dts, A, Bs, Cs, D=None, delta_bias=None, delta_softplus=True):
    """Fused SS2D core (cross-scan, scan, cross-merge) with autograd; same contract as ``ss2d_selective_scan_torch``."""
    return _require_ops().ss2d_selective_scan(x, dts, A, Bs, Cs, D, delta_bias, delta_softplus)


def ss2d_kernel(device_type: str):
    """The compiled SS2D kernel for a device type, as ``(kernel, None)`` where ``kernel.forward`` and
    ``kernel.backward`` follow the contract of ``transformers_vmamba.selective_scan.check_ss2d_inputs``, or
    ``(None, reason)`` when none can run there. Called by the ``vmamba::ss2d_scan`` operator on every call."""
    return None, f"no compiled SS2D kernel for {device_type} devices in this version"
