# Copyright 2026 The transformers-vmamba authors. Licensed under the MIT license.
"""ONNX export: an ONNX translation of the SS2D operator and ``export_onnx`` for whole models.

``torch.onnx.export(..., dynamo=True)`` turns every SS2D node (``torch.ops.vmamba.ss2d_scan_low_rank``, which
the model calls, and ``torch.ops.vmamba.ss2d_scan``) into standard ONNX operators through ``ss2d_scan_onnx``
(pass ``custom_translation_table=onnx_translation_table()``; ``export_onnx`` does that for you). No custom
ONNX operator is needed, so any ONNX runtime runs the result.

How the scan is written in ONNX. The per-pixel terms (delta = softplus(dt + bias), the log-decay delta A and the
input delta B x) are formed once on the channels-last map for all four routes. The routes are then scanned as two
pairs: the row routes (0, and 2 = route 0 reversed) and the column routes (1 and 3). Reversing a route is flipping
both image axes, so each pair becomes one tensor laid out as (steps, batch, lines, 2 routes, channels[, state]):
for the row routes a line is an image row and the steps are its pixels; for the column routes a line is an image
column. The recurrence then runs line by line without a loop over every pixel (see ``_onnx_functions``): each
line's end state from a zero start in closed form, an ONNX ``Scan`` over the lines that carries the state from one
line into the next, and an ONNX ``Scan`` over the steps that runs all lines at once from their entry states and
contracts with C. A block costs 2 (H + W) loop iterations instead of 4 H W; every decay is the exponential of a sum
of non-positive terms, so nothing can overflow. The two pairs' outputs are put back into the map (inverse transpose
and flip) and summed with the skip term x * sum(D).

Runs anywhere ONNX runs (opset 18 operators: Scan, CumSum, Exp, Log, ...); checked with onnxruntime's CPU provider.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch


_INSTALL_HINT = "pip install 'transformers-vmamba[onnx]'  (onnx, onnxscript; onnxruntime to run the result)"
_INT64_MIN = -(2**63)


def _require_onnxscript():
    """Import onnxscript and its IR, with an actionable error when they are missing."""
    try:
        import onnxscript
        from onnxscript import ir
    except ImportError as error:
        raise ImportError(f"ONNX export of VMamba needs onnxscript and onnx: {_INSTALL_HINT}") from error
    return onnxscript, ir


# ---------------------------------------------------------------------------------------------------------------
# The translation of torch.ops.vmamba.ss2d_scan
# ---------------------------------------------------------------------------------------------------------------


def _ints(op, values: Sequence[int]):
    return op.Constant(value_ints=list(values))


def _flip_hw(op, value):
    """Reverse axes 1 and 2 (height and width of a (B, H, W, ...) tensor): Slice with step -1."""
    starts, ends = _ints(op, [-1, -1]), _ints(op, [_INT64_MIN, _INT64_MIN])
    return op.Slice(value, starts, ends, _ints(op, [1, 2]), _ints(op, [-1, -1]))


def _line_scans():
    """{d_state is 1: the onnxscript function that runs a route pair's scans}; see ``_onnx_functions``."""
    _require_onnxscript()
    from . import _onnx_functions

    return {True: _onnx_functions.lines_scan_product, False: _onnx_functions.lines_scan_contract}


def _group_layout(op, value, routes, columns: bool, rank: int):
    """A per-route map (B, H, W, 4, ...) -> (steps, B, lines, 2, ...) for the route pair ``routes`` = (k, k + 2):
    the second route is the first reversed, i.e. read from the map flipped in H and W. Row routes step along W and
    their lines are the rows; column routes step along H and their lines are the columns."""
    first = op.Gather(value, _ints(op, [routes[0]]), axis=3)
    second = _flip_hw(op, op.Gather(value, _ints(op, [routes[1]]), axis=3))
    pair = op.Concat(first, second, axis=3)  # (B, H, W, 2, ...)
    rest = list(range(5, rank))  # the trailing axes after (B, H, W, route, channel)
    return op.Transpose(pair, perm=([1, 0, 2, 3, 4] if columns else [2, 0, 1, 3, 4]) + rest)


def _group_unlayout(op, value, columns: bool):
    """Inverse of ``_group_layout`` for an output (steps, B, lines, 2, C): the two routes' maps summed,
    (B, H, W, C)."""
    pair = op.Transpose(value, perm=[1, 0, 2, 3, 4] if columns else [1, 2, 0, 3, 4])  # (B, H, W, 2, C)
    first = op.Squeeze(op.Gather(pair, _ints(op, [0]), axis=3), _ints(op, [3]))
    second = op.Squeeze(op.Gather(pair, _ints(op, [1]), axis=3), _ints(op, [3]))
    return op.Add(first, _flip_hw(op, second))


def _softplus(op, value):
    """softplus(z) = max(z, 0) + log(1 + exp(-|z|)): overflow-free, and several times faster in onnxruntime than
    its ``Softplus`` kernel (which was the largest single cost of the exported model); absolute error < 1e-7."""
    return op.Add(op.Relu(value), op.Log(op.Add(op.Exp(op.Neg(op.Abs(value))), op.CastLike(1.0, value))))


def ss2d_scan_onnx(x, dt, A, B, C, D, dt_bias):
    """ONNX translation of ``torch.ops.vmamba.ss2d_scan`` (a trace-only onnxscript function for
    ``torch.onnx.export(..., custom_translation_table=...)``): same contract as the operator, standard ONNX ops
    only (opset 18+), dynamic batch and map size.

    Per-pixel quantities are formed on the map for all four routes at once (delta, the log-decay delta A and the
    input delta B x; the skip term is x times the sum of the four routes' D); each route pair is then laid out by
    lines and scanned (``_onnx_functions``), and put back.
    """
    _, ir = _require_onnxscript()
    from onnxscript import opset18 as op

    inputs = (x, dt, A, B, C, D, dt_bias)
    elem_type = ir.DataType.DOUBLE if any(v.dtype == ir.DataType.DOUBLE for v in inputs) else ir.DataType.FLOAT
    x, dt, A, B, C, D, dt_bias = (v if v.dtype == elem_type else op.Cast(v, to=elem_type) for v in inputs)
    d_state = A.shape[2] if A.shape is not None else None
    if not isinstance(d_state, int):
        raise ValueError("ss2d_scan ONNX translation: the state size (A.shape[2]) must be static")

    delta = _softplus(op, op.Add(dt, dt_bias))  # (B, H, W, 4, C)
    delta_x = op.Mul(delta, op.Unsqueeze(x, _ints(op, [3])))
    if d_state == 1:  # no state axis: A (4, C); B and C (B, H, W, 4, 1) broadcast over the channels
        log_decay = op.Mul(delta, op.Squeeze(A, _ints(op, [2])))  # (B, H, W, 4, C)
        increment = op.Mul(delta_x, B)
        C_map = C
    else:
        log_decay = op.Mul(op.Unsqueeze(delta, _ints(op, [5])), A)  # (B, H, W, 4, C, N)
        increment = op.Mul(op.Unsqueeze(delta_x, _ints(op, [5])), op.Unsqueeze(B, _ints(op, [4])))
        C_map = op.Unsqueeze(C, _ints(op, [4]))  # (B, H, W, 4, 1, N)
    lines_scan = _line_scans()[d_state == 1]
    y = op.Mul(x, op.ReduceSum(D, _ints(op, [0]), keepdims=0))
    for routes, columns in (((0, 2), False), ((1, 3), True)):
        rank = 5 if d_state == 1 else 6
        laid_out = (_group_layout(op, t, routes, columns, rank) for t in (log_decay, increment, C_map))
        y = op.Add(y, _group_unlayout(op, lines_scan(*laid_out), columns))
    return y


def ss2d_scan_low_rank_onnx(x, dt_low_rank, dt_weight, A, B, C, D, dt_bias):
    """ONNX translation of ``torch.ops.vmamba.ss2d_scan_low_rank`` (the operator the model calls): dt from its
    low-rank factors with one ``Einsum``, then ``ss2d_scan_onnx``."""
    _require_onnxscript()
    from onnxscript import opset18 as op

    dt = op.Einsum(dt_low_rank, dt_weight, equation="bhwkr,kdr->bhwkd")
    return ss2d_scan_onnx(x, dt, A, B, C, D, dt_bias)


def onnx_translation_table() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)`` of any model using the SS2D ops."""
    _require_onnxscript()
    return {
        torch.ops.vmamba.ss2d_scan.default: ss2d_scan_onnx,
        torch.ops.vmamba.ss2d_scan_low_rank.default: ss2d_scan_low_rank_onnx,
    }


# ---------------------------------------------------------------------------------------------------------------
# Whole models
# ---------------------------------------------------------------------------------------------------------------


def _output_names(outputs) -> list[str]:
    """ONNX output names in torch.export's flattening order of a ModelOutput: its non-None fields, tuples of
    tensors as name_0, name_1, ..."""
    names = []
    for key, value in outputs.items():
        if isinstance(value, torch.Tensor):
            names.append(key)
        elif isinstance(value, (tuple, list)):
            names += [f"{key}_{index}" for index in range(len(value))]
    return names


def export_onnx(
    model: torch.nn.Module,
    path: str | os.PathLike,
    image_size: int | tuple[int, int] = 224,
    batch_size: int = 1,
    dynamic: bool = True,
    opset_version: int | None = None,
    min_image_size: int = 64,
    max_image_size: int = 4096,
    check: bool = True,
) -> Path:
    """Export a VMamba model (``VMambaForImageClassification``, ``VMambaModel`` or ``VMambaBackbone``) to one ONNX
    file with ``torch.onnx.export(..., dynamo=True)`` and the SS2D translation; returns the file's path.

    The model is traced in eval mode at ``batch_size`` (at least 2 when dynamic) x ``image_size`` (an int or
    (height, width)) in its parameters' dtype. With ``dynamic`` (default) the batch size and the image height and
    width are dynamic (images from ``min_image_size`` to ``max_image_size`` pixels a side: below 64 the last stage's
    map would be 1 pixel, which torch.export specialises), else the file serves only the traced shape. The input is
    ``pixel_values`` (batch, channels, height, width); the outputs are the model output's fields (``logits`` for
    classification; ``last_hidden_state`` and ``pooler_output``; or ``feature_maps_0``, ...). ``check`` runs
    ``onnx.checker`` on the result. The scan is written with standard ONNX operators (``Scan`` loops, no custom
    operator), so any ONNX runtime runs the file; onnxruntime's CPU provider is what is tested. The result matches
    torch to about 1e-6 in float32.
    Needs ``onnx`` and ``onnxscript`` (``pip install 'transformers-vmamba[onnx]'``).
    """
    _require_onnxscript()
    try:
        import onnx
    except ImportError as error:  # onnxscript depends on onnx, but say what to install all the same
        raise ImportError(f"ONNX export of VMamba needs onnx: {_INSTALL_HINT}") from error
    from torch.export import Dim

    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if dynamic and not (min_image_size <= min(height, width) and max(height, width) <= max_image_size):
        raise ValueError(f"image_size {image_size} is outside [min_image_size, max_image_size] = "
                         f"[{min_image_size}, {max_image_size}]")
    if min_image_size < 64 and dynamic:
        raise ValueError("min_image_size must be at least 64 for a dynamic export (the last stage's map must be "
                         "at least 2x2)")
    parameter = next(model.parameters())
    num_channels = getattr(getattr(model, "config", None), "num_channels", 3)
    if dynamic:  # torch.export specialises a dimension whose example size is 0 or 1
        batch_size = max(batch_size, 2)
    example = torch.randn(batch_size, num_channels, height, width, dtype=parameter.dtype, device=parameter.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output_names = _output_names(model(example))
        dynamic_shapes = None
        if dynamic:
            dims = {
                0: Dim("batch", min=1, max=4096),
                2: Dim("height", min=min_image_size, max=max_image_size),
                3: Dim("width", min=min_image_size, max=max_image_size),
            }
            dynamic_shapes = {"pixel_values": dims}
        with warnings.catch_warnings():
            # Each Dim is named once; the exporter still notes that it reuses the name for every axis it governs.
            warnings.filterwarnings("ignore", message=".*will not be used, since it shares the same shape constraints")
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                custom_translation_table=onnx_translation_table(),
                dynamic_shapes=dynamic_shapes,
                input_names=["pixel_values"],
                output_names=output_names,
                opset_version=opset_version,
                verbose=False,
            )
    finally:
        model.train(was_training)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # One self-contained file up to ONNX's 2 GB protobuf limit; weights beside it (path.data) above that.
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    program.save(path, external_data=size > 1.8 * 2**30)
    if check:
        onnx.checker.check_model(str(path), full_check=True)
    return path


__all__ = ["export_onnx", "onnx_translation_table", "ss2d_scan_low_rank_onnx", "ss2d_scan_onnx"]
