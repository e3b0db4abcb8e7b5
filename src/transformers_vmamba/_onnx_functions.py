# Copyright 2026 The transformers-vmamba authors. Licensed under the MIT license.
"""The line scans of the SS2D ONNX translation, in onnxscript script mode (the ONNX ``Scan`` bodies are nested
graphs). Imported only by ``onnx_export`` when exporting: onnxscript is an optional dependency.

Each function takes a pair of routes laid out by ``onnx_export._group_layout`` as (steps, B, lines, 2, C[, N]):

- ``log_decay`` = delta A and ``increment`` = delta B x at every step (the state axis N is absent for d_state 1);
- ``C_step``, the C of every step, broadcastable against them: (steps, B, lines, 2, 1, N), or (..., 2, 1);

and returns y_t = sum_n C_t h_t of every step, (steps, B, lines, 2, C), for the recurrence
h_t = exp(log_decay_t) h_{t-1} + increment_t running through the lines one after the other (h = 0 before the
first line). In three parts:

1. each line's end state from a zero start, in closed form: sum_t exp(sum_{s > t} log_decay_s) increment_t (an
   exclusive reverse cumulative sum; every exponent is a sum of non-positive terms, so nothing can overflow);
2. an ONNX ``Scan`` over the lines carries the state from line to line with the whole-line decay exp(sum
   log_decay): the state entering every line;
3. an ONNX ``Scan`` over the steps runs all lines at once from their entry states and contracts with C.

So a block costs (steps + lines) loop iterations per route pair, 2 (H + W) in all, instead of 4 H W.
"""

from typing import TypeVar, Union

from onnxscript import DOUBLE, FLOAT, graph, script
from onnxscript import opset18 as op


TFloat = TypeVar("TFloat", bound=Union[FLOAT, DOUBLE])  # noqa: UP007 (onnxscript reads typing.Union)


@script()
def lines_scan_product(log_decay: TFloat, increment: TFloat, C_step: TFloat) -> TFloat:
    """d_state 1: the C contraction is a product (tensors have no state axis)."""

    @graph()
    def carry(e, line_a, line_end):
        e_entering = op.Identity(e)
        e_out = op.Add(op.Mul(line_a, e), line_end)
        return e_out, e_entering

    @graph()
    def sweep(h, a, b, c):
        h_out = op.Add(op.Mul(a, h), b)
        y = op.Mul(h_out, c)
        return h_out, y

    steps_axis = op.Constant(value_ints=[0])
    after = op.CumSum(log_decay, op.Constant(value_int=0), exclusive=1, reverse=1)
    line_end = op.ReduceSum(op.Mul(op.Exp(after), increment), steps_axis, keepdims=0)  # (B, lines, 2, C)
    line_decay = op.Exp(op.ReduceSum(log_decay, steps_axis, keepdims=0))
    per_line = op.Concat(op.Shape(line_end, start=0, end=1), op.Shape(line_end, start=2), axis=0)
    e_zero = op.CastLike(op.ConstantOfShape(per_line), log_decay)
    e_last, entering = op.Scan(
        e_zero, line_decay, line_end, body=carry, num_scan_inputs=2, scan_input_axes=[1, 1], scan_output_axes=[1]
    )
    h_last, y = op.Scan(entering, op.Exp(log_decay), increment, C_step, body=sweep, num_scan_inputs=3)
    return y


@script()
def lines_scan_contract(log_decay: TFloat, increment: TFloat, C_step: TFloat) -> TFloat:
    """d_state > 1: tensors carry a trailing state axis, summed out against C in the scan body."""

    @graph()
    def carry(e, line_a, line_end):
        e_entering = op.Identity(e)
        e_out = op.Add(op.Mul(line_a, e), line_end)
        return e_out, e_entering

    @graph()
    def sweep(h, a, b, c):
        h_out = op.Add(op.Mul(a, h), b)
        y = op.ReduceSum(op.Mul(h_out, c), op.Constant(value_ints=[-1]), keepdims=0)
        return h_out, y

    steps_axis = op.Constant(value_ints=[0])
    after = op.CumSum(log_decay, op.Constant(value_int=0), exclusive=1, reverse=1)
    line_end = op.ReduceSum(op.Mul(op.Exp(after), increment), steps_axis, keepdims=0)  # (B, lines, 2, C, N)
    line_decay = op.Exp(op.ReduceSum(log_decay, steps_axis, keepdims=0))
    per_line = op.Concat(op.Shape(line_end, start=0, end=1), op.Shape(line_end, start=2), axis=0)
    e_zero = op.CastLike(op.ConstantOfShape(per_line), log_decay)
    e_last, entering = op.Scan(
        e_zero, line_decay, line_end, body=carry, num_scan_inputs=2, scan_input_axes=[1, 1], scan_output_axes=[1]
    )
    h_last, y = op.Scan(entering, op.Exp(log_decay), increment, C_step, body=sweep, num_scan_inputs=3)
    return y
