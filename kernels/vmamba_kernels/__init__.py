# Copyright 2026 The transformers-vmamba authors. Licensed under the MIT license.
"""Compiled kernels of VMamba's SS2D operator, one per device type, behind ``ss2d_kernel(device_type)``.

The operator itself (``torch.ops.vmamba.ss2d_scan``, its fake, backward and autograd) lives in
``transformers_vmamba.ss2d``, which asks ``ss2d_kernel`` on every call what can run on the inputs' device and falls
back to its PyTorch scan otherwise. A kernel is an object with ``forward(x, dt, A, B, C, D, dt_bias) -> y`` and
``backward(grad_y, x, dt, A, B, C, D, dt_bias) -> 7 gradients`` following
``transformers_vmamba.selective_scan.check_ss2d_inputs`` (channels-last); optionally also ``forward_low_rank`` and
``backward_low_rank`` taking dt as (dt_low_rank, dt_weight) (8 gradients), which the model's operator then uses so
that dt is formed inside the kernel (without them the operator forms dt and calls ``forward``/``backward``).

- ``cpu``: the numba kernels of ``numba_ss2d`` (needs numba, a core dependency; compiled at the first call, then
  cached on disk).
- ``cuda``: the Triton kernels of ``triton_ss2d`` (needs Triton and a CUDA device).

Importing this package imports neither numba nor Triton: a kernel module is imported on first use, and
``ss2d_kernel`` says why none can run rather than raising.
"""

from __future__ import annotations


__all__ = ["ss2d_kernel"]

_cache: dict[str, tuple[object | None, str | None]] = {}


def _triton_kernel():
    """The Triton module when Triton imports and a CUDA device is present, else (None, reason)."""
    try:
        from . import triton_ss2d
    except Exception as err:  # ImportError without triton; other errors for broken installs
        return None, f"Triton could not be imported ({type(err).__name__}: {err}); pip install triton"
    import torch

    if not torch.cuda.is_available():
        return None, "Triton is installed but no CUDA device is available"
    return triton_ss2d, None


def _numba_kernel():
    """The numba module when numba imports, else (None, reason)."""
    try:
        from . import numba_ss2d
    except Exception as err:  # ImportError without numba; other errors for broken installs (e.g. numpy mismatch)
        return None, f"numba could not be imported ({type(err).__name__}: {err}); pip install numba"
    return numba_ss2d, None


def ss2d_kernel(device_type: str):
    """``(kernel, None)`` for the compiled SS2D kernel that runs on ``device_type`` tensors, or ``(None, reason)``.

    Decided once per device type and process (the operator asks on every call).
    """
    if device_type not in _cache:
        if device_type == "cuda":
            _cache[device_type] = _triton_kernel()
        elif device_type == "cpu":
            _cache[device_type] = _numba_kernel()
        else:
            _cache[device_type] = (None, f"no compiled SS2D kernel for {device_type} devices in this version")
    return _cache[device_type]
