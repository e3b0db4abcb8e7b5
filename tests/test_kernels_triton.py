# Copyright 2026 The transformers-vmamba authors. Licensed under the MIT license.
"""Triton selective-scan and fused SS2D kernels against a float64 evaluation of the torch reference.

Values and every gradient are compared. Without a GPU the kernels run in Triton's interpreter: Triton decides
interpretation when a kernel is defined, so the interpreter cases run in one child process started with
``TRITON_INTERPRET=1`` (this file's ``__main__``), and each test here checks that child's result for its case.
With a GPU the same cases also run in-process on CUDA; without one those cases skip visibly.

Errors are relative to the largest reference magnitude of each tensor. Tolerances per input dtype:
float64 1e-10 (algorithm check), float32 2e-5, and for float16/bfloat16 inputs 2e-5 on the float32 output
(inputs are rounded identically for kernel and reference; accumulation is float32) and 1e-2 (bf16) / 2e-3 (fp16)
on gradients, which are returned in the input dtype.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


pytest.importorskip("triton")

REPO = Path(__file__).resolve().parents[1]
DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
OUTPUT_TOL = {"float64": 1e-10, "float32": 2e-5, "bfloat16": 2e-5, "float16": 2e-5}
GRAD_TOL = {"float64": 1e-10, "float32": 2e-5, "bfloat16": 1e-2, "float16": 2e-3}

# config = (BLOCK_D, CHUNK, num_warps) forcing several chunks / channel blocks, or None for the default heuristic.
SCAN_CASES = {
    "scan-f64-N1-multichunk": dict(batch=2, groups=2, group_channels=3, d_state=1, length=35, dtype="float64", config=(2, 16, 1)),
    "scan-f64-N16-multichunk": dict(batch=1, groups=4, group_channels=2, d_state=16, length=35, dtype="float64", config=(2, 16, 1)),
    "scan-f32-N5-default": dict(batch=2, groups=4, group_channels=3, d_state=5, length=29, dtype="float32", config=None),
    "scan-f32-N1-long": dict(batch=1, groups=1, group_channels=2, d_state=1, length=601, dtype="float32", config=None),
    "scan-f32-noD-nobias-nosoftplus": dict(batch=1, groups=1, group_channels=4, d_state=2, length=19, dtype="float32", config=(4, 8, 1), plain=True),
    "scan-bf16-N1": dict(batch=2, groups=2, group_channels=4, d_state=1, length=37, dtype="bfloat16", config=(4, 16, 1)),
    "scan-f16-N16": dict(batch=1, groups=2, group_channels=3, d_state=16, length=21, dtype="float16", config=(2, 8, 1)),
}  # fmt: skip
SS2D_CASES = {
    "ss2d-f64-N1-5x7": dict(batch=2, channels=3, d_state=1, height=5, width=7, dtype="float64", config=(2, 16, 1)),
    "ss2d-f64-N16-7x3": dict(batch=1, channels=2, d_state=16, height=7, width=3, dtype="float64", config=(2, 16, 1)),
    "ss2d-f32-N1-6x9-default": dict(batch=2, channels=4, d_state=1, height=6, width=9, dtype="float32", config=None),
    "ss2d-bf16-N16-4x5": dict(batch=1, channels=3, d_state=16, height=4, width=5, dtype="bfloat16", config=(4, 8, 1)),
    "ss2d-f16-N1-3x8": dict(batch=1, channels=3, d_state=1, height=3, width=8, dtype="float16", config=(2, 8, 1)),
    # One-row image, d_state padded 3 -> 4, batch 3, inputs given as non-contiguous views.
    "ss2d-f64-N3-1x5-strided": dict(batch=3, channels=2, d_state=3, height=1, width=5, dtype="float64", config=None,
                                    noncontiguous=True),
}  # fmt: skip
# Long sequences (L = 128 * 128) only on a GPU: the interpreter would take minutes.
CUDA_ONLY_CASES = {
    "scan-f32-N1-L16384": dict(batch=1, groups=2, group_channels=8, d_state=1, length=16384, dtype="float32", config=None),
    "ss2d-bf16-N1-128x128": dict(batch=1, channels=8, d_state=1, height=128, width=128, dtype="bfloat16", config=None),
}  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# Case construction and comparison (used in-process on CUDA and in the interpreter child).
# ----------------------------------------------------------------------------------------------------------------


def _scan_inputs(case, device):
    gen = torch.Generator().manual_seed(0)
    dtype = DTYPES[case["dtype"]]
    b, k, dg, n, length = case["batch"], case["groups"], case["group_channels"], case["d_state"], case["length"]
    ch = k * dg

    def rand(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale + shift).to(device=device, dtype=dtype)

    inputs = {
        "u": rand(b, ch, length),
        "delta": rand(b, ch, length, scale=0.5, shift=-0.5),
        "A": (-torch.rand(ch, n, generator=gen, dtype=torch.float64) * 2 - 0.05).to(device, torch.float32),
        "B": rand(b, k, n, length),
        "C": rand(b, k, n, length),
        "D": rand(ch).float(),
        "delta_bias": rand(ch, scale=0.3).float(),
    }
    if case["dtype"] == "float64":
        inputs["A"], inputs["D"], inputs["delta_bias"] = (inputs[key].double() for key in ("A", "D", "delta_bias"))
    if case.get("plain"):
        inputs["D"] = inputs["delta_bias"] = None
    return inputs


def _ss2d_inputs(case, device):
    gen = torch.Generator().manual_seed(0)
    dtype = DTYPES[case["dtype"]]
    b, d, n, h, w = case["batch"], case["channels"], case["d_state"], case["height"], case["width"]

    def rand(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale + shift).to(device=device, dtype=dtype)

    param_dtype = torch.float64 if case["dtype"] == "float64" else torch.float32
    return {
        "x": rand(b, d, h, w),
        "dts": rand(b, 4, d, h, w, scale=0.5, shift=-0.5),
        "A": (-torch.rand(4 * d, n, generator=gen, dtype=torch.float64) * 2 - 0.05).to(device, param_dtype),
        "Bs": rand(b, 4, n, h, w),
        "Cs": rand(b, 4, n, h, w),
        "D": rand(4 * d).to(param_dtype),
        "delta_bias": rand(4 * d, scale=0.3).to(param_dtype),
    }


def _ss2d_reference(x, dts, A, Bs, Cs, D, delta_bias):
    """The SS2D contract spelled out: cross-scan, reference scan on the route copies, cross-merge."""
    from transformers_vmamba.selective_scan import cross_merge, cross_scan, selective_scan_reference

    b, d, h, w = x.shape

    def in_route_order(t):  # direction k's tensor read in route k's order, (B, 4, C, L)
        return torch.stack([cross_scan(t[:, k])[:, k] for k in range(4)], dim=1)

    u = cross_scan(x).reshape(b, 4 * d, h * w)
    y = selective_scan_reference(
        u, in_route_order(dts).reshape(b, 4 * d, h * w), A, in_route_order(Bs), in_route_order(Cs), D, delta_bias
    )
    return cross_merge(y.view(b, 4, d, h * w), h, w).view(b, d, h, w)


def _relative_error(got, want):
    scale = want.abs().max().item()
    return (got.double() - want).abs().max().item() / max(scale, 1e-12)


def run_case(name: str, device: str) -> dict:
    """Run one case; returns {tensor name: relative error} for the output and every gradient."""
    import vmamba_kernels
    from vmamba_kernels import ops
    from transformers_vmamba.selective_scan import selective_scan_reference

    all_cases = {**SCAN_CASES, **SS2D_CASES, **CUDA_ONLY_CASES}
    case = all_cases[name]
    is_ss2d = name.startswith("ss2d")
    inputs = (_ss2d_inputs if is_ss2d else _scan_inputs)(case, device)
    if case.get("noncontiguous"):  # same values, batch-last memory layout
        inputs = {
            key: (t.transpose(0, -1).contiguous().transpose(0, -1) if t is not None and t.dim() >= 3 else t)
            for key, t in inputs.items()
        }
        assert not inputs["dts"].is_contiguous()
    names = [key for key, t in inputs.items() if t is not None]
    tensors = {key: (t.detach().requires_grad_() if t is not None else None) for key, t in inputs.items()}
    reference_inputs = {
        key: (t.detach().double().requires_grad_() if t is not None else None) for key, t in inputs.items()
    }
    softplus = not case.get("plain", False)

    ops.CONFIG_OVERRIDE = case["config"]
    try:
        if is_ss2d:
            out = vmamba_kernels.ss2d_selective_scan(*tensors.values(), delta_softplus=softplus)
            ref = _ss2d_reference(*reference_inputs.values())
        else:
            out = vmamba_kernels.selective_scan(*tensors.values(), delta_softplus=softplus)
            ref = selective_scan_reference(*reference_inputs.values(), delta_softplus=softplus)
        expected_dtype = torch.float64 if case["dtype"] == "float64" else torch.float32
        assert out.dtype == expected_dtype, f"output dtype {out.dtype}, expected {expected_dtype}"
        assert out.shape == ref.shape, f"output shape {tuple(out.shape)}, expected {tuple(ref.shape)}"
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        grads = torch.autograd.grad(out, [tensors[k] for k in names], grad_out.to(device, out.dtype))
        ref_grads = torch.autograd.grad(ref, [reference_inputs[k] for k in names], grad_out.to(device))
    finally:
        ops.CONFIG_OVERRIDE = None
    errors = {"out": _relative_error(out, ref)}
    for key, grad, ref_grad in zip(names, grads, ref_grads):
        assert grad.dtype == tensors[key].dtype, f"d{key} has dtype {grad.dtype}, input has {tensors[key].dtype}"
        errors[f"d{key}"] = _relative_error(grad, ref_grad)
    return errors


def run_compile_checks() -> dict:
    """opcheck on the registered ops and torch.compile(fullgraph=True) through them (CPU, aot_eager backend)."""
    import vmamba_kernels
    from vmamba_kernels import ops

    results = {}
    case = dict(batch=1, groups=2, group_channels=2, d_state=2, length=9, dtype="float64", config=None)
    scan = _scan_inputs(case, "cpu")
    ss2d = _ss2d_inputs(dict(batch=1, channels=2, d_state=1, height=3, width=2, dtype="float64", config=None), "cpu")
    for op_name, op, args in [
        ("selective_scan_fwd", torch.ops.vmamba.selective_scan_fwd.default, scan),
        ("ss2d_scan_fwd", torch.ops.vmamba.ss2d_scan_fwd.default, ss2d),
    ]:
        values = [t.detach().requires_grad_() for t in args.values()] + [True, True]
        try:
            torch.library.opcheck(op, values)
            results[f"opcheck:{op_name}"] = "ok"
        except Exception as err:  # reported back to the parent test
            results[f"opcheck:{op_name}"] = f"{type(err).__name__}: {err}"
        # The backward op on its own (its autograd is not registered: no double backward).
        bwd_name = op_name.replace("_fwd", "_bwd")
        plain = [t.detach() for t in args.values()]
        out, states = op(*plain, True, True)
        try:
            bwd = getattr(torch.ops.vmamba, bwd_name).default
            torch.library.opcheck(bwd, [torch.randn_like(out), *plain, states, True], test_utils=("test_schema", "test_faketensor"))
            results[f"opcheck:{bwd_name}"] = "ok"
        except Exception as err:
            results[f"opcheck:{bwd_name}"] = f"{type(err).__name__}: {err}"
        # Without autograd the chunk states are not stored, and the output is the same.
        with torch.no_grad():
            out_nograd, states_nograd = op(*plain, True, False)
        same = torch.equal(out, out_nograd) and states_nograd.numel() == 0
        results[f"nograd:{op_name}"] = "ok" if same else "no-grad forward differs or stored states"

    def model(u, delta, A, B, C, D, delta_bias):
        return (vmamba_kernels.selective_scan(u, delta, A, B, C, D, delta_bias) * 2).sum()

    try:
        torch._dynamo.reset()
        leaves = [t.detach().requires_grad_() for t in scan.values()]
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
        loss = compiled(*leaves)
        loss.backward()
        eager_leaves = [t.detach().requires_grad_() for t in scan.values()]
        eager_loss = model(*eager_leaves)
        eager_loss.backward()
        diff = max((a.grad - b.grad).abs().max().item() for a, b in zip(leaves, eager_leaves))
        diff = max(diff, (loss - eager_loss).abs().item())
        results["compile:aot_eager"] = "ok" if diff < 1e-12 else f"compiled differs from eager by {diff}"
    except Exception as err:
        results["compile:aot_eager"] = f"{type(err).__name__}: {err}"
    del ops
    return results


# ----------------------------------------------------------------------------------------------------------------
# Interpreter child process.
# ----------------------------------------------------------------------------------------------------------------


def _child_env() -> dict:
    import transformers_vmamba
    import vmamba_kernels

    paths = [str(Path(m.__file__).resolve().parents[1]) for m in (transformers_vmamba, vmamba_kernels)]
    env = dict(os.environ, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [env.get("PYTHONPATH")] if p])
    return env


@pytest.fixture(scope="module")
def interpreter_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("triton_interpret") / "results.json"
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--interpreter-worker", str(out)],
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0 or not out.exists():
        pytest.fail(f"interpreter worker failed (rc={proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def _assert_case(name: str, errors: dict) -> None:
    if "error" in errors:
        pytest.fail(f"{name} raised: {errors['error']}")
    dtype = ({**SCAN_CASES, **SS2D_CASES, **CUDA_ONLY_CASES})[name]["dtype"]
    bad = {}
    for key, err in errors.items():
        tol = OUTPUT_TOL[dtype] if key == "out" else GRAD_TOL[dtype]
        if not err <= tol:
            bad[key] = (err, tol)
    assert not bad, f"{name}: relative errors above tolerance (error, tolerance): {bad}"


DEVICES = ["interpreter", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(SCAN_CASES) + list(SS2D_CASES))
def test_kernel_matches_float64_reference(name, device, request):
    if device == "interpreter":
        errors = request.getfixturevalue("interpreter_results")["cases"][name]
    else:
        errors = run_case(name, "cuda")
    _assert_case(name, errors)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (too slow for the interpreter)")
@pytest.mark.parametrize("name", list(CUDA_ONLY_CASES))
def test_long_sequences_on_cuda(name):
    _assert_case(name, run_case(name, "cuda"))


COMPILE_CHECKS = [
    "opcheck:selective_scan_fwd", "opcheck:selective_scan_bwd", "nograd:selective_scan_fwd",
    "opcheck:ss2d_scan_fwd", "opcheck:ss2d_scan_bwd", "nograd:ss2d_scan_fwd", "compile:aot_eager",
]  # fmt: skip


@pytest.mark.parametrize("check", COMPILE_CHECKS)
def test_ops_are_compile_friendly(check, interpreter_results):
    assert interpreter_results["compile"][check] == "ok", interpreter_results["compile"][check]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_compile_inductor_on_cuda():
    import vmamba_kernels

    case = dict(batch=2, channels=8, d_state=1, height=9, width=13, dtype="bfloat16")
    inputs = list(_ss2d_inputs(case, "cuda").values())

    def loss_fn(*tensors):
        return vmamba_kernels.ss2d_selective_scan(*tensors).square().sum()

    torch._dynamo.reset()
    compiled = torch.compile(loss_fn, fullgraph=True)
    leaves = [t.detach().requires_grad_() for t in inputs]
    eager_leaves = [t.detach().requires_grad_() for t in inputs]
    loss, eager_loss = compiled(*leaves), loss_fn(*eager_leaves)
    grads = torch.autograd.grad(loss, leaves)
    eager_grads = torch.autograd.grad(eager_loss, eager_leaves)
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=0)
    for grad, eager_grad in zip(grads, eager_grads):  # atomics may add in another order: bf16-level tolerance
        torch.testing.assert_close(grad.float(), eager_grad.float(), rtol=1e-2, atol=1e-2)


def test_kernels_compile_for_hopper_without_a_gpu(tmp_path):
    """The real (non-interpreted) compiler pipeline down to a cubin for sm_90: catches what the interpreter cannot."""
    import triton

    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("this Triton install has no bundled ptxas")
    out = tmp_path / "sm90.json"
    env = _child_env()
    env.pop("TRITON_INTERPRET")
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--sm90-compile-worker", str(out)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0 and out.exists(), proc.stderr[-4000:]
    results = json.loads(out.read_text())
    failed = {key: value for key, value in results.items() if value != "ok"}
    assert len(results) == 8 and not failed, failed


def test_bad_shapes_raise_clear_errors():
    import vmamba_kernels

    if not vmamba_kernels.is_available() and vmamba_kernels.unavailable_reason().startswith("Triton could not"):
        pytest.skip(vmamba_kernels.unavailable_reason())
    inputs = _scan_inputs(dict(batch=1, groups=2, group_channels=2, d_state=1, length=5, dtype="float32"), "cpu")
    inputs["A"] = torch.zeros(4, 3)  # wrong d_state
    with pytest.raises(ValueError, match="A has shape"):
        vmamba_kernels.selective_scan(*inputs.values())
    ss2d = _ss2d_inputs(dict(batch=1, channels=2, d_state=1, height=3, width=4, dtype="float32"), "cpu")
    ss2d["dts"] = ss2d["dts"][:, :, :, :2]
    with pytest.raises(ValueError, match="dts has shape"):
        vmamba_kernels.ss2d_selective_scan(*ss2d.values())


@pytest.mark.skipif(
    torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1", reason="checks the CPU-without-interpreter error"
)
def test_cpu_tensors_without_interpreter_raise():
    import vmamba_kernels

    inputs = _scan_inputs(dict(batch=1, groups=1, group_channels=2, d_state=1, length=5, dtype="float32"), "cpu")
    assert not vmamba_kernels.is_available()
    with pytest.raises(RuntimeError, match="need CUDA tensors"):
        vmamba_kernels.selective_scan(*inputs.values())


def test_import_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, vmamba_kernels\n"
        "assert not vmamba_kernels.is_available()\n"
        "assert 'Triton could not be imported' in vmamba_kernels.unavailable_reason()\n"
        "x = torch.zeros(1, 1, 3)\n"
        "try:\n"
        "    vmamba_kernels.selective_scan(x, x, torch.zeros(1, 1), torch.zeros(1, 1, 1, 3), torch.zeros(1, 1, 1, 3))\n"
        "except RuntimeError as err:\n"
        "    assert 'unavailable' in str(err), err\n"
        "else:\n"
        "    raise SystemExit('no error raised')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=_child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _sm90_compile_worker(out_path: str) -> None:
    """Compile the default launch configs for sm_90 with the ptxas bundled in Triton (no GPU needed)."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from vmamba_kernels import _triton_scan, ops

    assert os.environ.get("TRITON_INTERPRET", "0") != "1"
    results = {}
    for kernel_name in ("selective_scan_fwd_kernel", "selective_scan_bwd_kernel"):
        kernel = getattr(_triton_scan, kernel_name)
        backward = "bwd" in kernel_name
        for d_state, cross in ((1, True), (1, False), (16, True), (4, False)):
            block_d, n_pad, chunk, num_warps = ops.launch_config(3136, d_state, 96, backward)
            signature = {name: ("*fp32" if name.endswith("_ptr") else "i32") for name in kernel.arg_names}
            signature.update({name: "*bf16" for name in ("u_ptr", "delta_ptr", "B_ptr", "C_ptr")})
            meta = dict(HAS_D=True, HAS_BIAS=True, SOFTPLUS=True, CROSS=cross, BLOCK_D=block_d, N_PAD=n_pad,
                        CHUNK=chunk, ACC=tl.float32)  # fmt: skip
            if not backward:
                meta["STORE_STATES"] = True
            signature.update({name: "constexpr" for name in meta})
            constexprs = {(kernel.arg_names.index(name),): value for name, value in meta.items()}
            key = f"{kernel_name} N={d_state} {'cross' if cross else 'plain'} {(block_d, chunk, num_warps)}"
            try:
                compiled = triton.compile(
                    ASTSource(kernel, signature, constexprs=constexprs),
                    target=GPUTarget("cuda", 90, 32),
                    options={"num_warps": num_warps},
                )
                results[key] = "ok" if compiled.asm.get("cubin") else "no cubin produced"
            except Exception as err:
                results[key] = f"{type(err).__name__}: {str(err)[:2000]}"
    Path(out_path).write_text(json.dumps(results, indent=1))


def _interpreter_worker(out_path: str) -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1"
    torch.set_num_threads(1)
    results = {"cases": {}, "compile": {}}
    for name in list(SCAN_CASES) + list(SS2D_CASES):
        try:
            results["cases"][name] = run_case(name, "cpu")
        except Exception as err:
            results["cases"][name] = {"error": f"{type(err).__name__}: {err}"}
    results["compile"] = run_compile_checks()
    tmp = Path(out_path + ".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(out_path)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--interpreter-worker":
    _interpreter_worker(sys.argv[2])
if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--sm90-compile-worker":
    _sm90_compile_worker(sys.argv[2])
