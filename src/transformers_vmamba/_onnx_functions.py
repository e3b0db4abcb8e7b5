# Copyright 2026 The transformers-vmamba authors. Licensed under the MIT license.
"""The loops of the SS2D ONNX translation, as onnxscript (script mode: the ONNX ``Scan`` bodies are nested graphs).

Imported only by ``onnx_export`` when exporting (onnxscript is an optional dependency). Each function takes, for a
pair of routes laid out (steps, batch, lines, 2, channels[, state]) by ``onnx_export._group_layout``:

- ``decay`` = exp(delta A) and ``increment`` = delta B x per step, (steps, B, lines, 2, C[, N]);
- ``C_step``, the C of each step broadcastable against them ((steps, B, lines, 2, 1, N), or (..., 2, 1) for
  d_state 1, where the state axis is dropped);
- ``line_decay``, each line's whole decay exp(A sum(delta)), (B, lines, 2, C[, N]);

and returns y = sum_n C h, (steps, B, lines, 2, C). Three scans: every line from a zero state (its end state),
the line-to-line carry of the state (the state entering every line), every line again from its entry state.
"""

from typing import TypeVar, Union

from onnxscript import DOUBLE, FLOAT, graph, script
from onnxscript import opset18 as op


TFloat = TypeVar("TFloat", bound=Union[FLOAT, DOUBLE])  # noqa: UP007 (onnxscript reads typing.Union)


@script()
def lines_scan_product(decay: TFloat, increment: TFloat, C_step: TFloat, line_decay: TFloat) -> TFloat:
    @graph()
    def sweep_from_zero(h, a, b):
        h_out = op.Add(op.Mul(a, h), b)
        return h_out

    @graph()
    def carry(e, line_a, line_end):
        e_entering = op.Identity(e)
        e_out = op.Add(op.Mul(line_a, e), line_end)
        return e_out, e_entering

    @graph()
    def sweep_with_output(h, a, b, c):
        h_out = op.Add(op.Mul(a, h), b)
        y = op.Mul(h_out, c)
        return h_out, y

    zero = op.CastLike(op.ConstantOfShape(op.Shape(decay, start=1)), decay)
    line_end = op.Scan(zero, decay, increment, body=sweep_from_zero, num_scan_inputs=2)
    per_line = op.Concat(op.Shape(line_decay, start=0, end=1), op.Shape(line_decay, start=2), axis=0)
    e_zero = op.CastLike(op.ConstantOfShape(per_line), decay)
    e_last, entering = op.Scan(
        e_zero, line_decay, line_end, body=carry, num_scan_inputs=2, scan_input_axes=[1, 1], scan_output_axes=[1]
    )
    h_last, y = op.Scan(entering, decay, increment, C_step, body=sweep_with_output, num_scan_inputs=3)
    return y

@script()
def lines_scan_contract(decay: TFloat, increment: TFloat, C_step: TFloat, line_decay: TFloat) -> TFloat:
    @graph()
    def sweep_from_zero(h, a, b):
        h_out = op.Add(op.Mul(a, h), b)
        return h_out

    @graph()
    def carry(e, line_a, line_end):
        e_entering = op.Identity(e)
        e_out = op.Add(op.Mul(line_a, e), line_end)
        return e_out, e_entering

    @graph()
    def sweep_with_output(h, a, b, c):
        h_out = op.Add(op.Mul(a, h), b)
        y = op.ReduceSum(op.Mul(h_out, c), op.Constant(value_ints=[-1]), keepdims=0)
        return h_out, y

    zero = op.CastLike(op.ConstantOfShape(op.Shape(decay, start=1)), decay)
    line_end = op.Scan(zero, decay, increment, body=sweep_from_zero, num_scan_inputs=2)
    per_line = op.Concat(op.Shape(line_decay, start=0, end=1), op.Shape(line_decay, start=2), axis=0)
    e_zero = op.CastLike(op.ConstantOfShape(per_line), decay)
    e_last, entering = op.Scan(
        e_zero, line_decay, line_end, body=carry, num_scan_inputs=2, scan_input_axes=[1, 1], scan_output_axes=[1]
    )
    h_last, y = op.Scan(entering, decay, increment, C_step, body=sweep_with_output, num_scan_inputs=3)
    return y
