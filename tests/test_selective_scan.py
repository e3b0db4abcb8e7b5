"""Selective scan and 2D cross-scan: the torch paths against a float64 evaluation of the reference.

Tolerances, as max |error| / max |float64 reference| of the compared tensor, values and gradients alike: a path run
in float64 within FLOAT64_REL (pure rounding; about 3e-15 is reached), a path run in float32 (also from bf16/fp16
inputs, upcast exactly) within FLOAT32_REL (about 6e-7 is reached, including strong decay).
"""

import math

import pytest
import torch

from transformers_vmamba.selective_scan import (
    check_ss2d_inputs,
    cross_merge,
    cross_scan,
    route_order,
    selective_scan_chunked,
    selective_scan_reference,
    ss2d_reference,
)
from transformers_vmamba.ss2d import ss2d_scan, ss2d_scan_low_rank
from transformers_vmamba.testing_utils import make_scan_inputs, make_ss2d_inputs


FLOAT64_REL = 1e-12
FLOAT32_REL = 2e-5


def assert_close_scaled(actual, expected, rel, name=""):
    """|actual - expected| <= rel * max|expected|: the error measured against the tensor's own scale."""
    actual, expected = actual.double(), expected.double()
    scale = expected.abs().max().clamp_min(1e-30)
    error = (actual - expected).abs().max()
    assert error <= rel * scale, f"{name}: max abs error {error:.3e} > {rel:.1e} * scale {scale:.3e}"


def values_and_grads(fn, inputs, upstream, **kwargs):
    leaves = {name: t.detach().clone().requires_grad_(True) for name, t in inputs.items()}
    y = fn(**leaves, **kwargs)
    (y * upstream.to(y.dtype)).sum().backward()
    return y.detach(), {name: t.grad for name, t in leaves.items()}


# --- the yardstick itself -------------------------------------------------------------------------------------


def test_reference_matches_hand_computation():
    """Two channels sharing one B/C group, N=2, L=3, written out with Python floats."""
    u = [[0.5, -1.0, 2.0], [1.5, 0.25, -0.5]]
    delta = [[0.1, -0.3, 0.7], [0.2, 0.0, -1.2]]
    A = [[-0.5, -2.0], [-1.0, -0.25]]
    B = [[1.0, -0.5, 0.3], [0.2, 0.8, -1.1]]  # B[n][t]
    C = [[0.7, 0.1, -0.4], [-0.6, 1.3, 0.9]]
    D = [0.3, -0.8]
    bias = [0.05, -0.1]
    expected = []
    for d in range(2):
        state = [0.0, 0.0]
        row = []
        for t in range(3):
            dt = math.log1p(math.exp(delta[d][t] + bias[d]))
            state = [math.exp(dt * A[d][n]) * state[n] + dt * B[n][t] * u[d][t] for n in range(2)]
            row.append(sum(C[n][t] * state[n] for n in range(2)) + D[d] * u[d][t])
        expected.append(row)
    as64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    args = (as64([u]), as64([delta]), as64(A), as64([[B]]), as64([[C]]), as64(D), as64(bias))
    for fn in (selective_scan_reference, selective_scan_chunked):
        torch.testing.assert_close(fn(*args), as64([expected]), rtol=1e-12, atol=1e-12)


def test_reference_matches_closed_form_geometric_sum():
    """Constant dt, A, B = u = C = 1: h_t = dt * (1 - q^(t+1)) / (1 - q) with q = exp(dt * A)."""
    length, dt, a = 40, 0.3, -0.7
    q = math.exp(dt * a)
    expected = torch.tensor([dt * (1 - q ** (t + 1)) / (1 - q) for t in range(length)], dtype=torch.float64)
    ones = torch.ones(1, 1, length, dtype=torch.float64)
    args = (ones, torch.full((1, 1, length), dt, dtype=torch.float64), torch.full((1, 1), a, dtype=torch.float64))
    bc = torch.ones(1, 1, 1, length, dtype=torch.float64)
    for fn in (selective_scan_reference, selective_scan_chunked):
        y = fn(*args, bc, bc, delta_softplus=False, **({"chunk_size": 7} if fn is selective_scan_chunked else {}))
        torch.testing.assert_close(y[0, 0], expected, rtol=1e-12, atol=1e-14)


# --- the chunked scan -------------------------------------------------------------------------------------------

SCAN_CASES = [
    # batch, groups, per_group, d_state, length, chunk_size, decay
    (1, 4, 3, 1, 1, None, "realistic"),
    (2, 4, 3, 1, 2, None, "realistic"),
    (3, 4, 2, 1, 37, None, "realistic"),
    (1, 4, 2, 16, 37, 5, "realistic"),
    (2, 2, 3, 16, 130, None, "realistic"),
    (2, 4, 2, 16, 64, 8, "extreme"),
    (1, 4, 3, 1, 101, 10, "extreme"),
    (2, 1, 4, 4, 23, 23, "realistic"),
    (1, 4, 2, 2, 29, 64, "realistic"),
]


@pytest.mark.parametrize("batch,groups,per_group,d_state,length,chunk_size,decay", SCAN_CASES)
def test_chunked_scan_matches_float64_reference(batch, groups, per_group, d_state, length, chunk_size, decay):
    inputs = make_scan_inputs(batch, groups, per_group, d_state, length, decay=decay)
    generator = torch.Generator().manual_seed(1)
    upstream = torch.randn(batch, groups * per_group, length, dtype=torch.float64, generator=generator)
    y_ref, grads_ref = values_and_grads(selective_scan_reference, inputs, upstream)
    assert torch.isfinite(y_ref).all()

    y64, grads64 = values_and_grads(selective_scan_chunked, inputs, upstream, chunk_size=chunk_size)
    assert y64.dtype == torch.float64
    assert_close_scaled(y64, y_ref, FLOAT64_REL, "y float64")
    for name, grad in grads_ref.items():
        assert_close_scaled(grads64[name], grad, FLOAT64_REL, f"grad {name} float64")

    inputs32 = {name: t.float() for name, t in inputs.items()}
    y32, grads32 = values_and_grads(selective_scan_chunked, inputs32, upstream, chunk_size=chunk_size)
    assert y32.dtype == torch.float32
    assert_close_scaled(y32, y_ref, FLOAT32_REL, "y float32")
    for name, grad in grads_ref.items():
        assert grads32[name].dtype == torch.float32
        assert_close_scaled(grads32[name], grad, FLOAT32_REL, f"grad {name} float32")


@pytest.mark.parametrize("block_elements", [1, 700, 3000])
def test_chunked_scan_blocking_does_not_change_results(monkeypatch, block_elements):
    """Small block budgets: one channel per block, part of a row per block, several rows per block."""
    import transformers_vmamba.selective_scan as module

    monkeypatch.setattr(module, "_BLOCK_ELEMENTS", block_elements)
    inputs = make_scan_inputs(2, 4, 5, 3, 33, seed=7)
    upstream = torch.randn(2, 20, 33, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    y_ref, grads_ref = values_and_grads(selective_scan_reference, inputs, upstream)
    y, grads = values_and_grads(selective_scan_chunked, inputs, upstream, chunk_size=4)
    assert_close_scaled(y, y_ref, FLOAT64_REL, "y")
    for name, grad in grads_ref.items():
        assert_close_scaled(grads[name], grad, FLOAT64_REL, f"grad {name}")


def test_chunked_scan_optional_arguments():
    inputs = make_scan_inputs(2, 4, 2, 4, 19, seed=3)
    del inputs["D"], inputs["delta_bias"]
    for softplus in (True, False):
        if not softplus:
            inputs["delta"] = inputs["delta"].abs()
        expected = selective_scan_reference(**inputs, delta_softplus=softplus)
        y = selective_scan_chunked(**inputs, delta_softplus=softplus, chunk_size=4)
        assert_close_scaled(y, expected, FLOAT64_REL)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_chunked_scan_half_precision_inputs_compute_in_float32(dtype):
    inputs = {name: t.to(dtype) for name, t in make_scan_inputs(2, 4, 2, 16, 45, seed=5).items()}
    expected = selective_scan_reference(**{name: t.double() for name, t in inputs.items()})
    y = selective_scan_chunked(**inputs)
    assert y.dtype == torch.float32
    assert_close_scaled(y, expected, FLOAT32_REL)


def test_chunked_scan_rejects_bad_shapes():
    inputs = make_scan_inputs(1, 4, 2, 4, 10)
    with pytest.raises(ValueError, match="A has shape"):
        selective_scan_chunked(**{**inputs, "A": inputs["A"][:, :3]})
    with pytest.raises(ValueError, match="delta has shape"):
        selective_scan_chunked(**{**inputs, "delta": inputs["delta"][..., :9]})
    with pytest.raises(ValueError, match="chunk_size"):
        selective_scan_chunked(**inputs, chunk_size=0)


# --- cross-scan layout ------------------------------------------------------------------------------------------


def test_cross_scan_route_order_by_hand():
    """2 x 3 map numbered row-major: route 1 must read it column by column (the transposed map)."""
    x = torch.arange(6.0).reshape(1, 1, 2, 3)
    expected = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 3, 1, 4, 2, 5], [5, 4, 3, 2, 1, 0], [5, 2, 4, 1, 3, 0]])
    torch.testing.assert_close(cross_scan(x)[0, :, 0], expected.float())
    images = torch.stack([x + 10 * k for k in range(4)], dim=1)  # direction k holds x + 10k
    torch.testing.assert_close(route_order(images)[0, :, 0], expected.float() + 10 * torch.arange(4.0)[:, None])


@pytest.mark.parametrize("height,width", [(1, 1), (5, 7), (9, 5), (18, 10)])
def test_cross_merge_is_adjoint_of_cross_scan(height, width):
    generator = torch.Generator().manual_seed(height * width)
    x = torch.randn(2, 3, height, width, dtype=torch.float64, generator=generator)
    y = torch.randn(2, 4, 3, height * width, dtype=torch.float64, generator=generator)
    lhs = (cross_scan(x) * y).sum()
    rhs = (x.flatten(2) * cross_merge(y, height, width)).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)


def route_positions(height, width):
    """Independent index maps: the image position (row-major index) visited at step i of each route."""
    length = height * width
    route0 = [i for i in range(length)]
    route1 = [(i % height) * width + i // height for i in range(length)]
    return torch.tensor([route0, route1, route0[::-1], route1[::-1]])


def ss2d_by_definition(x, dt, A, B, C, D, dt_bias):
    """Gather each route of the channels-last map by explicit index maps, scan with the reference, scatter-add
    back: an implementation that shares no layout code with the ones under test."""
    batch, height, width, channels = x.shape
    positions = route_positions(height, width)

    def gather(t, k):  # (batch, H, W, F) -> (batch, F, L) in route k's order
        return t.reshape(batch, height * width, -1)[:, positions[k]].transpose(1, 2)

    u = torch.cat([gather(x, k) for k in range(4)], dim=1)
    delta = torch.cat([gather(dt[..., k, :], k) for k in range(4)], dim=1)
    Bk = torch.stack([gather(B[..., k, :], k) for k in range(4)], dim=1)
    Ck = torch.stack([gather(C[..., k, :], k) for k in range(4)], dim=1)
    y = selective_scan_reference(u, delta, A.reshape(4 * channels, -1), Bk, Ck, D.reshape(-1), dt_bias.reshape(-1))
    y = y.reshape(batch, 4, channels, -1)
    out = torch.zeros(batch, channels, height * width, dtype=y.dtype)
    for k in range(4):
        out = out.index_add(2, positions[k], y[:, k])
    return out.transpose(1, 2).reshape(batch, height, width, channels)


def ss2d_torch_path(**inputs):
    """The operator with its PyTorch implementation (forward and explicit backward)."""
    return ss2d_scan(**inputs)


SS2D_CASES = [
    # batch, height, width, channels, state, decay
    (1, 1, 1, 3, 1, "realistic"),
    (2, 5, 7, 3, 1, "realistic"),
    (1, 9, 5, 2, 16, "realistic"),
    (2, 18, 10, 2, 1, "extreme"),
    (1, 7, 7, 2, 4, "extreme"),
    (2, 6, 6, 3, 16, "realistic"),
    (1, 1, 6, 2, 3, "realistic"),
    (1, 5, 1, 2, 1, "realistic"),
]


@pytest.mark.parametrize("batch,height,width,channels,state,decay", SS2D_CASES)
def test_ss2d_matches_definition(batch, height, width, channels, state, decay, monkeypatch):
    """The specification (``ss2d_reference``) and the operator's PyTorch path, values and all seven gradients, in
    float64 and float32, against an independent gather/scatter formulation."""
    monkeypatch.setenv("VMAMBA_SCAN_BACKEND", "torch")
    inputs = make_ss2d_inputs(batch, height, width, channels, state, decay=decay)
    generator = torch.Generator().manual_seed(2)
    upstream = torch.randn(batch, height, width, channels, dtype=torch.float64, generator=generator)
    y_ref, grads_ref = values_and_grads(ss2d_by_definition, inputs, upstream)
    for fn in (ss2d_reference, ss2d_torch_path):
        y64, grads64 = values_and_grads(fn, inputs, upstream)
        assert y64.shape == (batch, height, width, channels) and y64.dtype == torch.float64
        assert_close_scaled(y64, y_ref, FLOAT64_REL, f"{fn.__name__} y")
        for name, grad in grads_ref.items():
            assert grads64[name].dtype == torch.float64
            assert_close_scaled(grads64[name], grad, FLOAT64_REL, f"{fn.__name__} grad {name}")
    inputs32 = {name: t.float() for name, t in inputs.items()}
    y32, grads32 = values_and_grads(ss2d_torch_path, inputs32, upstream)
    assert y32.dtype == torch.float32
    assert_close_scaled(y32, y_ref, FLOAT32_REL, "float32 y")
    for name, grad in grads_ref.items():
        assert grads32[name].dtype == torch.float32
        assert_close_scaled(grads32[name], grad, FLOAT32_REL, f"float32 grad {name}")


def test_ss2d_batch_of_zero(monkeypatch):
    monkeypatch.setenv("VMAMBA_SCAN_BACKEND", "torch")
    inputs = make_ss2d_inputs(0, 3, 5, 2, 1)
    y, grads = values_and_grads(ss2d_torch_path, inputs, torch.zeros(0, 3, 5, 2))
    assert y.shape == (0, 3, 5, 2)
    assert all(grads[name].shape == t.shape for name, t in inputs.items())
    assert all(torch.count_nonzero(grads[name]) == 0 for name in ("A", "D", "dt_bias"))


def test_ss2d_comparison_catches_a_port_that_mixes_up_height_and_width(monkeypatch):
    """Mutation check: reading the column routes as a (W, H) reshape instead of the transpose must fail the
    comparison, in the reference's cross_scan and in the PyTorch path's route layout alike."""
    import transformers_vmamba.selective_scan as module

    monkeypatch.setenv("VMAMBA_SCAN_BACKEND", "torch")
    inputs = make_ss2d_inputs(1, 5, 7, 2, 1)
    expected = ss2d_by_definition(**inputs)
    for fn in (ss2d_reference, ss2d_torch_path):
        assert_close_scaled(fn(**inputs), expected, FLOAT64_REL)

    def wrong_cross_scan(x):
        batch, channels, height, width = x.shape
        routes = torch.stack([x.flatten(2), x.reshape(batch, channels, width, height).transpose(2, 3).flatten(2)], 1)
        return torch.cat([routes, routes.flip(-1)], dim=1)

    correct_route_steps = module._route_steps

    def wrong_route_steps(image, route):
        if route % 2 == 1:
            batch, height, width, features = image.shape
            image = image.reshape(batch, width, height, features).transpose(1, 2)
        return correct_route_steps(image, route)

    monkeypatch.setattr(module, "cross_scan", wrong_cross_scan)
    monkeypatch.setattr(module, "_route_steps", wrong_route_steps)
    for fn in (ss2d_reference, ss2d_torch_path):
        with pytest.raises(AssertionError):
            assert_close_scaled(fn(**inputs), expected, FLOAT32_REL)


def test_ss2d_rejects_bad_inputs():
    inputs = make_ss2d_inputs(1, 4, 5, 2, 1)
    with pytest.raises(ValueError, match=r"dt has shape \(1, 5, 4, 4, 2\), expected \(1, 4, 5, 4, 2\)"):
        check_ss2d_inputs(**{**inputs, "dt": inputs["dt"].transpose(1, 2)})
    with pytest.raises(ValueError, match=r"A has shape \(2, 2, 1\), expected \(4, 2, 1\)"):
        ss2d_scan(**{**inputs, "A": inputs["A"][:2]})
    with pytest.raises(ValueError, match="C has shape"):
        ss2d_reference(**{**inputs, "C": inputs["C"][:, :, :3]})
    with pytest.raises(ValueError, match=r"x must be \(batch, height, width, channels\)"):
        ss2d_scan(**{**inputs, "x": inputs["x"][0]})
    with pytest.raises(TypeError, match="D must be a floating-point tensor"):
        ss2d_scan(**{**inputs, "D": inputs["D"].long()})
    with pytest.raises(ValueError, match="route_order"):
        route_order(inputs["B"].permute(0, 3, 4, 1, 2)[:, :3])


def test_half_precision_gradients_come_back_in_input_dtype():
    inputs = {name: t.to(torch.bfloat16) for name, t in make_scan_inputs(1, 4, 2, 4, 21, seed=9).items()}
    upstream = torch.randn(1, 8, 21, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
    _, grads_ref = values_and_grads(selective_scan_reference, {n: t.double() for n, t in inputs.items()}, upstream)
    _, grads = values_and_grads(selective_scan_chunked, inputs, upstream)
    for name, grad in grads_ref.items():
        assert grads[name].dtype == torch.bfloat16
        assert_close_scaled(grads[name], grad, 1e-2, f"grad {name}")  # bf16 keeps 8 bits of mantissa


def test_ss2d_operator_registration_passes_opcheck(monkeypatch):
    """Schema, fake (meta) implementation and autograd registration of vmamba::ss2d_scan and its backward."""
    monkeypatch.setenv("VMAMBA_SCAN_BACKEND", "torch")
    inputs = make_ss2d_inputs(2, 3, 5, 2, 2, dtype=torch.float32)
    args = [t.requires_grad_() for t in inputs.values()]
    torch.library.opcheck(torch.ops.vmamba.ss2d_scan.default, args)
    grad_y = torch.randn(2, 3, 5, 2)
    torch.library.opcheck(torch.ops.vmamba.ss2d_scan_backward.default, [grad_y, *[t.detach() for t in args]])


def low_rank_inputs(batch, height, width, channels, state, rank, seed=0, **kwargs):
    """SS2D inputs with dt replaced by per-route low-rank factors; dt_low_rank is a strided slice of a wider
    projection, as in the model."""
    inputs = make_ss2d_inputs(batch, height, width, channels, state, seed=seed, **kwargs)
    generator = torch.Generator().manual_seed(seed + 1)
    projection = torch.randn(batch, height, width, 4, rank + 3, dtype=torch.float64, generator=generator)
    dt_weight = torch.randn(4, channels, rank, dtype=torch.float64, generator=generator) / math.sqrt(rank)
    inputs.pop("dt")
    dtype = inputs["x"].dtype
    return {"dt_low_rank": projection[..., 1 : rank + 1].to(dtype), "dt_weight": dt_weight.to(dtype), **inputs}


def ss2d_low_rank_by_definition(dt_low_rank, dt_weight, **inputs):
    return ss2d_by_definition(dt=torch.einsum("bhwkr,kdr->bhwkd", dt_low_rank, dt_weight), **inputs)


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("batch,height,width,channels,state,rank", [(2, 5, 7, 6, 1, 2), (1, 4, 3, 5, 16, 3)])
def test_low_rank_operator_matches_definition(batch, height, width, channels, state, rank, backend, monkeypatch):
    """``ss2d_scan_low_rank`` (what the model calls; dt formed inside, recomputed in backward): values and all
    eight gradients against the independent formulation with dt formed outside, float64 and float32, on the
    PyTorch path and on the kernel the machine has."""
    monkeypatch.setenv("VMAMBA_SCAN_BACKEND", backend)
    inputs = low_rank_inputs(batch, height, width, channels, state, rank)
    assert not inputs["dt_low_rank"].is_contiguous()
    upstream = torch.randn(batch, height, width, channels, dtype=torch.float64)
    y_ref, grads_ref = values_and_grads(ss2d_low_rank_by_definition, inputs, upstream)
    for dtype, rel in ((torch.float64, FLOAT64_REL), (torch.float32, FLOAT32_REL)):
        y, grads = values_and_grads(ss2d_scan_low_rank, {n: t.to(dtype) for n, t in inputs.items()}, upstream)
        assert y.dtype == dtype
        assert_close_scaled(y, y_ref, rel, f"{dtype} y")
        for name, grad in grads_ref.items():
            assert grads[name].dtype == dtype and grads[name].shape == inputs[name].shape
            assert_close_scaled(grads[name], grad, rel, f"{dtype} grad {name}")
    empty = low_rank_inputs(0, 3, 2, 4, 1, 2)
    y, grads = values_and_grads(ss2d_scan_low_rank, empty, torch.zeros(0, 3, 2, 4))
    assert y.shape == (0, 3, 2, 4) and float(grads["dt_weight"].abs().sum()) == 0.0


def test_low_rank_operator_keeps_no_dt_for_backward():
    """Autograd keeps the operator's inputs, never the (batch, H, W, 4, C) dt it forms."""
    inputs = {n: t.requires_grad_() for n, t in low_rank_inputs(1, 6, 5, 8, 1, 2).items()}
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        ss2d_scan_low_rank(**inputs).sum().backward()
    assert saved and (1, 6, 5, 4, 8) not in saved
    assert all(inputs[n].grad is not None for n in inputs)


def test_low_rank_operator_rejects_bad_inputs_and_passes_opcheck(monkeypatch):
    monkeypatch.setenv("VMAMBA_SCAN_BACKEND", "torch")
    inputs = low_rank_inputs(2, 3, 5, 4, 2, 3, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"dt_low_rank \(2, 3, 5, 4, 2\) and dt_weight \(4, 4, 3\) do not fit"):
        ss2d_scan_low_rank(**{**inputs, "dt_low_rank": inputs["dt_low_rank"][..., :2]})
    with pytest.raises(ValueError, match=r"expected dt_low_rank \(2, 3, 5, 4, 3\) and dt_weight \(4, 4, rank\)"):
        ss2d_scan_low_rank(**{**inputs, "dt_weight": inputs["dt_weight"][:, :3]})
    with pytest.raises(TypeError, match="dt_weight must be a floating-point tensor"):
        ss2d_scan_low_rank(**{**inputs, "dt_weight": inputs["dt_weight"].long()})
    with pytest.raises(ValueError, match="all inputs must be on one device"):
        ss2d_scan_low_rank(**{**inputs, "dt_weight": inputs["dt_weight"].to("meta")})
    order = ("x", "dt_low_rank", "dt_weight", "A", "B", "C", "D", "dt_bias")
    args = [inputs[name].detach().requires_grad_() for name in order]
    torch.library.opcheck(torch.ops.vmamba.ss2d_scan_low_rank.default, args)
    backward_args = [torch.randn(2, 3, 5, 4), *[t.detach() for t in args]]
    torch.library.opcheck(torch.ops.vmamba.ss2d_scan_low_rank_backward.default, backward_args)


def test_ss2d_operator_is_one_graph_node_under_torch_compile(monkeypatch):
    """fullgraph=True: the operator is not a graph break; values and gradients equal eager."""
    monkeypatch.setenv("VMAMBA_SCAN_BACKEND", "torch")
    inputs = make_ss2d_inputs(1, 5, 3, 2, 4, dtype=torch.float32)
    upstream = torch.randn(1, 5, 3, 2, generator=torch.Generator().manual_seed(4))
    expected, grads_expected = values_and_grads(ss2d_torch_path, inputs, upstream)
    torch._dynamo.reset()
    compiled = torch.compile(ss2d_torch_path, backend="aot_eager", fullgraph=True)
    y, grads = values_and_grads(compiled, inputs, upstream)
    torch.testing.assert_close(y, expected)
    for name, grad in grads_expected.items():
        torch.testing.assert_close(grads[name], grad)


@pytest.mark.parametrize("delta_softplus", [True, False])
def test_chunked_scan_padding_cannot_overflow(delta_softplus):
    """Growing modes (A > 0, allowed by the contract) with a large bias: the padded tail of the last chunk must not
    turn into inf * 0 = nan in values or gradients."""
    inputs = make_scan_inputs(1, 2, 2, 2, 10, seed=11)
    inputs["A"] = torch.full_like(inputs["A"], 0.5)
    # delta + delta_bias is small where the sequence is, but delta_bias alone (what a zero-padded delta would
    # give) means dt = 2000 and exp(dt * A) = inf.
    inputs["delta"] = 0.5 * inputs["delta"].abs() - 2000.0
    inputs["delta_bias"] = torch.full_like(inputs["delta_bias"], 2000.0)
    upstream = torch.randn(1, 4, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(12))
    y_ref, grads_ref = values_and_grads(selective_scan_reference, inputs, upstream, delta_softplus=delta_softplus)
    assert torch.isfinite(y_ref).all()
    y, grads = values_and_grads(selective_scan_chunked, inputs, upstream, chunk_size=4, delta_softplus=delta_softplus)
    assert_close_scaled(y, y_ref, FLOAT64_REL, "y")
    for name, grad in grads_ref.items():
        assert_close_scaled(grads[name], grad, FLOAT64_REL, f"grad {name}")
