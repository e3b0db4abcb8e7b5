# Copyright 2026 The transformers-vmamba authors. Licensed under the MIT license.
"""The numba CPU kernels of the SS2D operator (``vmamba_kernels.numba_ss2d``) against the float64 reference
``ss2d_reference``, directly and behind ``torch.ops.vmamba.ss2d_scan``.

The output and all seven gradients are compared, the gradients against autograd through the reference. Errors are
relative to the largest reference magnitude of each tensor. Tolerances per input dtype: float64 1e-12 (algorithm
check: the kernels use libm in float64), float32 2e-5 (the float32 kernels use their own vectorisable exp/log1p,
within 3e-7 of the true values); for bfloat16/float16 inputs 2e-5 on the float32 output (kernel and reference see
the same rounded inputs) and 1e-2 (bf16) / 2e-3 (fp16) on the gradients, returned in the inputs' dtypes.

The first call of each dtype compiles the kernels (tens of seconds on a slow machine), then numba's on-disk cache
serves later runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from transformers_vmamba.selective_scan import low_rank_dt, ss2d_reference
from transformers_vmamba.testing_utils import make_ss2d_inputs


pytest.importorskip("numba")

DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
OUTPUT_TOL = {"float64": 1e-12, "float32": 2e-5, "bfloat16": 2e-5, "float16": 2e-5}
GRAD_TOL = {"float64": 1e-12, "float32": 2e-5, "bfloat16": 1e-2, "float16": 2e-3}
GRAD_NAMES = ("dx", "ddt", "dA", "dB", "dC", "dD", "ddt_bias")

# block: channels per task, groups: route groups (None: the kernel's choice); segment: the backward's segment length
# (None: the kernel's choice, one segment for these sizes), small values force several checkpointed segments.
CASES = {
    "f64-N1-3x5-auto": dict(batch=2, height=3, width=5, channels=7, state=1, dtype="float64"),
    "f64-N1-2x7-two-channel-blocks": dict(batch=2, height=2, width=7, channels=5, state=1, dtype="float64", block=4),
    "f64-N16-4x3-segments": dict(batch=1, height=4, width=3, channels=5, state=16, dtype="float64", block=2,
                                 segment=5),
    "f64-N2-odd-7x9-segments": dict(batch=2, height=7, width=9, channels=3, state=2, dtype="float64", block=2,
                                    segment=4),
    "f64-N1-3x5-two-route-groups": dict(batch=2, height=3, width=5, channels=7, state=1, dtype="float64", groups=2),
    "f64-N16-4x3-four-route-groups-segments": dict(batch=1, height=4, width=3, channels=5, state=16,
                                                   dtype="float64", block=2, groups=4, segment=5),
    "f64-N3-1x6": dict(batch=1, height=1, width=6, channels=2, state=3, dtype="float64"),
    "f64-N2-5x1": dict(batch=1, height=5, width=1, channels=3, state=2, dtype="float64", segment=2),
    "f64-N1-1x1": dict(batch=3, height=1, width=1, channels=2, state=1, dtype="float64"),
    "f64-N1-extreme-decay-6x6": dict(batch=1, height=6, width=6, channels=4, state=1, dtype="float64",
                                     decay="extreme"),
    "f64-N16-extreme-decay-segments": dict(batch=1, height=3, width=4, channels=3, state=16, dtype="float64",
                                           decay="extreme", segment=5),
    "f64-N1-noncontiguous-3x4": dict(batch=2, height=3, width=4, channels=3, state=1, dtype="float64",
                                     noncontiguous=True),
    "f64-batch0": dict(batch=0, height=3, width=2, channels=2, state=1, dtype="float64"),
    "f32-N1-12x10-C40": dict(batch=2, height=12, width=10, channels=40, state=1, dtype="float32"),
    "f32-N16-6x5-segments": dict(batch=1, height=6, width=5, channels=19, state=16, dtype="float32", segment=7),
    "f32-N1-7x5-route-groups": dict(batch=1, height=7, width=5, channels=33, state=1, dtype="float32", groups=2),
    "f32-N1-extreme-decay": dict(batch=1, height=5, width=6, channels=9, state=1, dtype="float32", decay="extreme"),
    "f32-N16-extreme-decay": dict(batch=1, height=4, width=4, channels=9, state=16, dtype="float32",
                                  decay="extreme"),
    "f32-N2-noncontiguous": dict(batch=2, height=3, width=5, channels=6, state=2, dtype="float32",
                                 noncontiguous=True),
    "bf16-N1-3x4": dict(batch=1, height=3, width=4, channels=5, state=1, dtype="bfloat16", params="float32"),
    "bf16-N16-2x2": dict(batch=1, height=2, width=2, channels=2, state=16, dtype="bfloat16", params="float32"),
    "f16-N4-2x3": dict(batch=1, height=2, width=3, channels=3, state=4, dtype="float16"),
}  # fmt: skip
# The same checks with dt given as low-rank factors (``forward_low_rank``/``backward_low_rank``: dt formed inside the
# kernel); rank 1 and larger, the factors a strided slice of a wider projection as in the model.
LOW_RANK_CASES = {
    f"{name}-rank{rank}": dict(CASES[name], rank=rank)
    for name, rank in (
        ("f64-N1-3x5-auto", 3), ("f64-N1-2x7-two-channel-blocks", 1), ("f64-N16-4x3-segments", 2),
        ("f64-N2-odd-7x9-segments", 4), ("f64-N1-noncontiguous-3x4", 2), ("f64-batch0", 2),
        ("f32-N1-12x10-C40", 3), ("f32-N16-6x5-segments", 2), ("bf16-N1-3x4", 2), ("f16-N4-2x3", 1),
        ("f64-N1-3x5-two-route-groups", 5), ("f64-N16-4x3-four-route-groups-segments", 9),
        ("f32-N1-7x5-route-groups", 7),
    )
}  # fmt: skip


def case_inputs(case: dict) -> dict[str, torch.Tensor]:
    dtype = DTYPES[case["dtype"]]
    inputs = make_ss2d_inputs(
        case["batch"], case["height"], case["width"], case["channels"], case["state"],
        decay=case.get("decay", "realistic"), dtype=dtype,
    )  # fmt: skip
    if case.get("params") == "float32":
        inputs.update({key: inputs[key].float() for key in ("A", "D", "dt_bias")})
    if case.get("noncontiguous"):
        inputs = _noncontiguous(inputs)
    if case.get("rank"):
        inputs = _low_rank(inputs, case["rank"])
    return inputs


def _low_rank(inputs: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """dt replaced by factors of rank ``rank`` (dt about N(0, 1)); dt_low_rank a slice of a wider tensor."""
    x, dt = inputs["x"], inputs.pop("dt")
    generator = torch.Generator().manual_seed(2)
    wide = torch.randn(*dt.shape[:4], rank + 3, generator=generator, dtype=torch.float64)
    weight = torch.randn(4, x.shape[3], rank, generator=generator, dtype=torch.float64) / rank**0.5
    low_rank = {"dt_low_rank": wide[..., 1 : rank + 1].to(dt.dtype), "dt_weight": weight.to(dt.dtype)}
    return {"x": x, **low_rank, **{key: t for key, t in inputs.items() if key != "x"}}


def _noncontiguous(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same values behind other strides: a channel slice, channels-first storage, a spatial crop, a zero batch
    stride, transposed parameters."""
    x, dt, A, B, C, D, dt_bias = inputs.values()
    batch, height, width, channels = x.shape
    wide = x.new_zeros(batch, height, width, channels + 3)
    wide[..., 1 : channels + 1] = x
    crop = B.new_zeros(batch, height + 1, width + 2, *B.shape[3:])
    crop[:, 1:, 1 : width + 1] = B
    out = dict(
        x=wide[..., 1 : channels + 1],
        dt=dt.permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2),
        A=A.transpose(1, 2).contiguous().transpose(1, 2),
        B=crop[:, 1:, 1 : width + 1],
        C=C[:1].expand(batch, *C.shape[1:]),
        D=D.t().contiguous().t(),
        dt_bias=dt_bias.t().contiguous().t(),
    )
    assert not any(t.is_contiguous() for key, t in out.items() if key != "A" or A.shape[2] > 1)
    return out


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    if want.numel() == 0:
        return 0.0 if got.shape == want.shape else float("inf")
    scale = want.abs().max().item()
    return (got.double() - want).abs().max().item() / max(scale, 1e-12)


def run_case(case: dict) -> dict:
    """Kernel forward and backward on one case; {"out" or gradient name: relative error vs the reference}."""
    from vmamba_kernels import numba_ss2d

    inputs = case_inputs(case)
    pins = {"block": case.get("block"), "groups": case.get("groups")}
    low_rank = bool(case.get("rank"))
    forward = numba_ss2d.forward_low_rank if low_rank else numba_ss2d.forward
    backward = numba_ss2d.backward_low_rank if low_rank else numba_ss2d.backward
    y = forward(*inputs.values(), **pins)
    leaves = [t.detach().double().requires_grad_() for t in inputs.values()]
    ref = ss2d_reference(leaves[0], low_rank_dt(*leaves[1:3]), *leaves[3:]) if low_rank else ss2d_reference(*leaves)
    expected_dtype = torch.float64 if case["dtype"] == "float64" else torch.float32
    assert y.dtype == expected_dtype and y.shape == ref.shape, (y.dtype, tuple(y.shape), tuple(ref.shape))
    grad_y = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    if case.get("noncontiguous"):
        grad_y = grad_y.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    grads = backward(grad_y.to(y.dtype), *inputs.values(), segment=case.get("segment"), **pins)
    ref_grads = torch.autograd.grad(ref, leaves, grad_y) if ref.numel() else [torch.zeros_like(t) for t in leaves]
    errors = {"out": _relative_error(y, ref.detach())}
    names = ("dx", "ddt_low_rank", "ddt_weight", *GRAD_NAMES[2:]) if low_rank else GRAD_NAMES
    assert len(grads) == len(names) == len(inputs)
    for key, grad, ref_grad, t in zip(names, grads, ref_grads, inputs.values()):
        assert grad.dtype == t.dtype and grad.shape == t.shape, f"{key}: {grad.dtype} {tuple(grad.shape)}"
        assert torch.isfinite(grad).all(), f"{key} has non-finite values"
        errors[key] = _relative_error(grad, ref_grad)
    assert torch.isfinite(y).all()
    return errors


@pytest.fixture(autouse=True)
def _two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(min(2, previous))
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("name", [*CASES, *LOW_RANK_CASES])
def test_kernels_match_the_float64_reference(name):
    case = {**CASES, **LOW_RANK_CASES}[name]
    errors = run_case(case)
    dtype = case["dtype"]
    bad = {}
    for key, error in errors.items():
        tol = OUTPUT_TOL[dtype] if key == "out" else GRAD_TOL[dtype]
        if not error <= tol:
            bad[key] = (error, tol)
    assert not bad, f"{name}: relative errors above tolerance (error, tolerance): {bad}"


def test_block_and_segment_choices_do_not_change_the_result():
    """Every channel blocking and segmentation computes the same sums (float64, up to rounding)."""
    from vmamba_kernels import numba_ss2d

    inputs = list(make_ss2d_inputs(2, 5, 6, 11, 3).values())
    grad_y = torch.randn(2, 5, 6, 11, dtype=torch.float64)
    y0 = numba_ss2d.forward(*inputs)
    grads0 = numba_ss2d.backward(grad_y, *inputs)
    for block, groups, segment in ((1, 1, 1), (3, 2, 7), (11, 4, 30), (16, 1, 29), (5, 4, 3)):
        pins = dict(block=block, groups=groups)
        torch.testing.assert_close(numba_ss2d.forward(*inputs, **pins), y0, rtol=1e-13, atol=1e-13)
        for a, b in zip(numba_ss2d.backward(grad_y, *inputs, segment=segment, **pins), grads0):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_float32_exp_and_softplus_helpers_are_accurate():
    """The kernels' own float32 exp, softplus and sigmoid across the whole range the scan can feed them."""
    import numba
    import numpy as np

    from vmamba_kernels import numba_ss2d

    @numba.njit
    def apply(z, out_exp, out_softplus, out_sigmoid):
        for i in range(z.shape[0]):
            out_exp[i] = numba_ss2d._exp(-abs(z[i]))
            out_softplus[i] = numba_ss2d._softplus(z[i])
            out_sigmoid[i] = numba_ss2d._softplus_grad(z[i])

    z = np.linspace(-120.0, 120.0, 480_001).astype(np.float32)
    outs = [np.empty_like(z) for _ in range(3)]
    apply(z, *outs)
    z64 = torch.from_numpy(z).double()
    expected = (torch.exp(-z64.abs()), torch.nn.functional.softplus(z64), torch.sigmoid(z64))
    for name, got, want in zip(("exp", "softplus", "sigmoid"), outs, expected):
        got = torch.from_numpy(got).double()
        normal = want > 1.2e-38  # below the smallest normal float32 the helpers flush to zero
        relative = ((got - want).abs() / want.clamp_min(1e-300))[normal].max().item()
        assert relative < 5e-7, f"{name}: max relative error {relative:.2e}"
        assert (got[~normal].abs() <= 1.2e-38).all(), name
        assert torch.isfinite(got).all(), name


def test_kernels_ask_llvm_for_512_bit_vectors():
    """The attribute reaches LLVM in a ``prange`` body (the function numba outlines), and on an AVX-512 host the
    loop is compiled with 512-bit registers (LLVM's default tuning for recent Intel cores uses 256)."""
    import llvmlite.binding
    import numba
    import numpy as np

    from vmamba_kernels.numba_ss2d import _prefer_512_bit_vectors

    @numba.njit(parallel=True, fastmath=True)
    def double(a, out):
        for t in numba.prange(a.shape[0]):
            _prefer_512_bit_vectors()
            row, out_row = a[t], out[t]
            for i in range(row.shape[0]):
                out_row[i] = row[i] * 2.0 + 1.0

    a = np.arange(4000, dtype=np.float32).reshape(4, 1000)
    out = np.empty_like(a)
    double(a, out)
    np.testing.assert_array_equal(out, a * 2 + 1)
    assert '"prefer-vector-width"="512"' in "\n".join(double.inspect_llvm().values())
    if "+avx512f" in llvmlite.binding.get_host_cpu_features().flatten():
        assert "zmm" in "\n".join(double.inspect_asm().values())


def test_numba_threads_follow_torch():
    import numba

    from vmamba_kernels import numba_ss2d

    inputs = list(make_ss2d_inputs(1, 2, 3, 4, 1, dtype=torch.float32).values())
    torch.set_num_threads(1)
    numba_ss2d.forward(*inputs)
    assert numba.get_num_threads() == 1
    if numba.config.NUMBA_NUM_THREADS >= 2:
        torch.set_num_threads(2)
        numba_ss2d.forward(*inputs)
        assert numba.get_num_threads() == 2


def test_a_model_forward_keeps_torchs_thread_count():
    """Regression: launching numba's OpenMP pool (first kernel call of a process) reset the process-wide OpenMP
    thread count, so ``torch.set_num_threads(1)`` silently stopped holding after the first VMamba forward."""
    _run_child(
        "import torch\n"
        "from transformers_vmamba import VMambaConfig, VMambaForImageClassification\n"
        "torch.set_num_threads(1)\n"
        "config = VMambaConfig(hidden_sizes=[8, 16], depths=[1, 1], num_labels=3)\n"
        "model = VMambaForImageClassification(config)\n"
        "model(torch.randn(1, 3, 32, 32), labels=torch.tensor([1])).loss.backward()\n"
        "assert torch.get_num_threads() == 1, torch.get_num_threads()\n"
    )


def test_channel_blocks_keep_threads_busy_and_wide():
    """The block choice: as wide as possible (whole images when there are enough of them), split only to give
    every thread work, multiples of 8 channels when split."""
    from vmamba_kernels.numba_ss2d import _block_size

    assert _block_size(1, 96, None, threads=1) == 96
    assert _block_size(1, 96, None, threads=2) == 48  # two tasks for two threads, not three (idle) or six (narrow)
    assert _block_size(1, 768, None, threads=2) == 384
    assert _block_size(8, 192, None, threads=2) == 192  # eight images already give each thread four tasks
    assert _block_size(1, 5, None, threads=2) == 5
    for batch in (1, 2, 3, 8):
        for channels in (3, 17, 96, 100, 192, 384, 768):
            for threads in (1, 2, 3, 4, 16):
                width = _block_size(batch, channels, None, threads=threads)
                assert 1 <= width <= channels and (width == channels or width % 8 == 0), (batch, channels, threads)
    assert _block_size(1, 96, 7) == 7


def test_work_split_gives_lone_images_route_groups():
    """With fewer images than threads, tasks take half the routes at full width rather than half the channels;
    with images enough, whole images; pinned values are kept and bad ones named."""
    from vmamba_kernels.numba_ss2d import _work_split

    assert _work_split(1, 96, None, None, threads=2) == (96, 2)
    assert _work_split(1, 96, None, None, threads=1) == (96, 1)
    assert _work_split(8, 96, None, None, threads=2) == (96, 1)
    assert _work_split(1, 96, 7, None, threads=2) == (7, 1)
    assert _work_split(1, 96, None, 4, threads=2) == (96, 4)
    with pytest.raises(ValueError, match="groups must be one of"):
        _work_split(1, 96, None, 3)


def test_bad_inputs_raise_clear_errors():
    from vmamba_kernels import numba_ss2d

    inputs = make_ss2d_inputs(1, 2, 3, 2, 1, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"ss2d: dt has shape \(1, 2, 3, 2, 2\), expected \(1, 2, 3, 4, 2\)"):
        numba_ss2d.forward(*{**inputs, "dt": inputs["dt"][..., :2, :]}.values())
    with pytest.raises(TypeError, match="must be float16/bfloat16/float32/float64, got torch.float8_e4m3fn"):
        numba_ss2d.forward(*{**inputs, "x": inputs["x"].to(torch.float8_e4m3fn)}.values())
    with pytest.raises(ValueError, match=r"grad_y must be a floating-point \(1, 2, 3, 2\) tensor"):
        numba_ss2d.backward(torch.zeros(1, 2, 3, 3), *inputs.values())
    low_rank = _low_rank(dict(inputs), 3)
    with pytest.raises(ValueError, match=r"dt_low_rank \(1, 2, 3, 4, 3\) and dt_weight \(4, 2, 2\) do not fit"):
        numba_ss2d.forward_low_rank(*{**low_rank, "dt_weight": low_rank["dt_weight"][..., :2]}.values())
    with pytest.raises(ValueError, match=r"expected dt_low_rank \(1, 2, 3, 4, 3\) and dt_weight \(4, 2, rank\)"):
        grad_y = torch.zeros(1, 2, 3, 2)
        numba_ss2d.backward_low_rank(grad_y, *{**low_rank, "dt_weight": low_rank["dt_weight"][:3]}.values())


# ----------------------------------------------------------------------------------------------------------------
# Behind the operator.
# ----------------------------------------------------------------------------------------------------------------


def test_cpu_kernel_is_offered():
    import vmamba_kernels
    from vmamba_kernels import numba_ss2d

    assert vmamba_kernels.ss2d_kernel("cpu") == (numba_ss2d, None)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_operator_runs_the_kernel_on_cpu(dtype, monkeypatch):
    """VMAMBA_SCAN_BACKEND=kernel (an error, not a silent fallback, if the kernel were not used): values and
    gradients through autograd against the reference, a non-square odd map."""
    from transformers_vmamba import ss2d

    monkeypatch.setenv("VMAMBA_SCAN_BACKEND", "kernel")
    assert ss2d.implementation(torch.device("cpu"))[0].__module__ == "vmamba_kernels.numba_ss2d"
    low_rank_pair = ss2d.implementation(torch.device("cpu"), low_rank=True)
    assert [f.__qualname__ for f in low_rank_pair] == ["forward_low_rank", "backward_low_rank"]  # dt formed inside
    inputs = list(make_ss2d_inputs(2, 5, 7, 6, 2, dtype=dtype).values())
    leaves = [t.detach().requires_grad_() for t in inputs]
    ref_leaves = [t.detach().double().requires_grad_() for t in inputs]
    out, ref = ss2d.ss2d_scan(*leaves), ss2d_reference(*ref_leaves)
    grads = torch.autograd.grad(out.square().sum(), leaves)
    ref_grads = torch.autograd.grad(ref.square().sum(), ref_leaves)
    tol = 1e-12 if dtype == torch.float64 else 5e-5
    for name, got, want in zip(("out", *GRAD_NAMES), (out, *grads), (ref, *ref_grads)):
        assert got.dtype == dtype
        assert _relative_error(got, want.detach()) < tol, name


def test_operator_opcheck_and_compile_with_the_kernel(monkeypatch):
    """``opcheck`` of the operator and its backward with the numba kernel inside, and ``torch.compile(fullgraph)``
    treating it as one opaque node whose gradients equal eager."""
    from transformers_vmamba import ss2d

    monkeypatch.setenv("VMAMBA_SCAN_BACKEND", "kernel")
    inputs = list(make_ss2d_inputs(2, 3, 5, 4, 2, dtype=torch.float32).values())
    torch.library.opcheck(torch.ops.vmamba.ss2d_scan.default, [t.detach().requires_grad_() for t in inputs])
    torch.library.opcheck(torch.ops.vmamba.ss2d_scan_backward.default, [torch.randn(2, 3, 5, 4), *inputs])
    leaves = [t.detach().requires_grad_() for t in inputs]
    grads = torch.autograd.grad(ss2d.ss2d_scan(*leaves).square().sum(), leaves)
    torch._dynamo.reset()
    compiled = torch.compile(lambda *t: ss2d.ss2d_scan(*t).square().sum(), backend="aot_eager", fullgraph=True)
    c_leaves = [t.detach().requires_grad_() for t in inputs]
    c_grads = torch.autograd.grad(compiled(*c_leaves), c_leaves)
    for a, b in zip(c_grads, grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------------
# Imports, a missing numba, no writable cache (child processes: they need a fresh interpreter).
# ----------------------------------------------------------------------------------------------------------------


def _child_env() -> dict:
    """This process's environment with the imported packages' source folders first on PYTHONPATH."""
    import transformers_vmamba
    import vmamba_kernels

    paths = [str(Path(m.__file__).resolve().parents[1]) for m in (transformers_vmamba, vmamba_kernels)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [env.get("PYTHONPATH")] if p])
    env.pop("VMAMBA_SCAN_BACKEND", None)
    return env


def _run_child(code: str, env: dict | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env or _child_env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_importing_the_package_does_not_import_numba():
    _run_child(
        "import sys\n"
        "import transformers_vmamba, vmamba_kernels\n"
        "from transformers_vmamba import VMambaConfig, VMambaForImageClassification\n"
        "import transformers_vmamba.ss2d\n"
        "assert 'numba' not in sys.modules, 'numba imported'\n"
        "assert 'vmamba_kernels.numba_ss2d' not in sys.modules\n"
    )


def test_without_numba_the_operator_falls_back_and_says_why():
    output = _run_child(
        "import sys; sys.modules['numba'] = None\n"
        "import torch, vmamba_kernels\n"
        "kernel, reason = vmamba_kernels.ss2d_kernel('cpu')\n"
        "assert kernel is None and 'numba could not be imported' in reason and 'pip install numba' in reason, reason\n"
        "from transformers_vmamba.ss2d import ss2d_scan\n"
        "from transformers_vmamba.testing_utils import make_ss2d_inputs\n"
        "assert ss2d_scan(*make_ss2d_inputs(1, 2, 2, 2, 1).values()).shape == (1, 2, 2, 2)\n"
    )
    assert "using the slower PyTorch scan" in output and "pip install numba" in output


def test_kernels_compile_without_a_writable_cache(tmp_path):
    """No cache location numba can write to (read-only site-packages, no writable home): the kernels are compiled in
    memory instead, with a warning, and still compute the reference's values."""
    output = _run_child(
        "import warnings\n"
        "import numba.core.caching as caching\n"
        "impl = getattr(caching, 'CacheImpl', None) or caching._CacheImpl  # renamed in numba 0.61\n"
        "impl._locator_classes = []\n"
        "import torch\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    from vmamba_kernels import numba_ss2d\n"
        "assert not numba_ss2d.CACHING\n"
        "assert any('compiling without an on-disk cache' in str(w.message) for w in caught), caught\n"
        "from transformers_vmamba.selective_scan import ss2d_reference\n"
        "from transformers_vmamba.testing_utils import make_ss2d_inputs\n"
        "inputs = list(make_ss2d_inputs(1, 3, 2, 3, 1).values())\n"
        "torch.testing.assert_close(numba_ss2d.forward(*inputs), ss2d_reference(*inputs), rtol=1e-12, atol=0)\n"
        "print('ok')\n"
    )
    assert "ok" in output


# ----------------------------------------------------------------------------------------------------------------
# The benchmark script (benchmarks/bench_cpu_ss2d_kernel.py) on tiny shapes, so it does not rot.
# ----------------------------------------------------------------------------------------------------------------


def _load_benchmark():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_cpu_ss2d_kernel.py"
    spec = importlib.util.spec_from_file_location("bench_cpu_ss2d_kernel", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_script_smoke_run(capsys):
    bench = _load_benchmark()
    results = bench.main(["--smoke", "--threads", "1"])
    assert set(results) == {"smoke-N1", "smoke-N16"}
    for result in results.values():
        assert result["max_relative_difference"] < 1e-4
        for mode in ("fwd", "fwd+bwd"):
            assert result[mode]["kernel_ms"] > 0 and result[mode]["speedup"] > 0 and result[mode]["copy_gbs"] > 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[0].startswith("smoke-N1 (1, 6, 5, 16, 1) fwd: numba ")
    cases = bench.stage_cases((1, 8))
    assert cases["v2v-T-s1-b1"] == (1, 56, 56, 96, 1) and cases["v2v-T-s4-b8"] == (8, 7, 7, 768, 1)
    assert cases["v0-T-s1-b1"] == (1, 56, 56, 192, 16)
    with pytest.raises(SystemExit):
        bench.main(["--smoke", "--write"])
