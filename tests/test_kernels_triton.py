# Copyright 2026 The transformers-vmamba authors. Licensed under the MIT license.
"""The Triton SS2D kernels (``vmamba_kernels.triton_ss2d``) against the float64 reference ``ss2d_reference``.

The output and all seven gradients are compared, the gradients against autograd through the reference. Without a
GPU the kernels run in Triton's interpreter, which Triton decides when a kernel is defined: the interpreter cases run
in one child process started with ``TRITON_INTERPRET=1`` (this file's ``__main__``), and a second child compiles
every autotune configuration for sm_90 with the ptxas bundled in Triton (no GPU needed: this catches compile errors
and register spills the interpreter cannot). Both children start together, so they overlap on a multi-core machine.
With a GPU the same cases also run on CUDA, with autotuning where no configuration is pinned, plus long sequences,
every autotune configuration and Inductor; without one those tests skip visibly.

Errors are relative to the largest reference magnitude of each tensor. Tolerances per input dtype: float64 1e-10
(algorithm check), float32 2e-5; for bfloat16/float16 inputs 2e-5 on the float32 output (kernel and reference see
the same rounded inputs; the kernel accumulates in float32) and 1e-2 (bf16) / 2e-3 (fp16) on the gradients, which
are returned in the inputs' dtypes.
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

DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
OUTPUT_TOL = {"float64": 1e-10, "float32": 2e-5, "bfloat16": 2e-5, "float16": 2e-5}
GRAD_TOL = {"float64": 1e-10, "float32": 2e-5, "bfloat16": 1e-2, "float16": 2e-3}
GRAD_NAMES = ("dx", "ddt", "dA", "dB", "dC", "dD", "ddt_bias")

# config = (BLOCK_D, CHUNK, num_warps), pinned; None: autotuning on CUDA, ``default_config`` in the interpreter.
# Interpreter cost grows with programs (4 routes x channel blocks x batch) times chunks, so the shapes are tiny.
# params="float32": A, D, dt_bias in float32 next to half-precision activations, as the model calls the operator.
CASES = {
    "f64-N1-2x7-two-channel-blocks": dict(batch=2, height=2, width=7, channels=5, state=1, dtype="float64",
                                          config=(4, 8, 1)),
    "f64-N16-4x3-three-chunks": dict(batch=1, height=4, width=3, channels=3, state=16, dtype="float64",
                                     config=(2, 4, 1)),
    "f64-N3-padded-1x6": dict(batch=1, height=1, width=6, channels=2, state=3, dtype="float64", config=(2, 4, 1)),
    "f64-N2-5x1": dict(batch=1, height=5, width=1, channels=3, state=2, dtype="float64", config=(4, 2, 1)),
    "f64-N1-extreme-decay-3x3": dict(batch=1, height=3, width=3, channels=4, state=1, dtype="float64",
                                     config=(4, 4, 1), decay="extreme"),
    "f64-N1-noncontiguous-3x3": dict(batch=2, height=3, width=3, channels=3, state=1, dtype="float64",
                                     config=(4, 8, 1), noncontiguous=True),
    "f64-batch0": dict(batch=0, height=3, width=2, channels=2, state=1, dtype="float64", config=None),
    "f32-N1-3x5-default-config": dict(batch=1, height=3, width=5, channels=6, state=1, dtype="float32",
                                      config=None),
    "f32-N16-3x2": dict(batch=1, height=3, width=2, channels=3, state=16, dtype="float32", config=(4, 4, 1)),
    "bf16-N1-3x4": dict(batch=1, height=3, width=4, channels=5, state=1, dtype="bfloat16", config=(4, 8, 1),
                        params="float32"),
    "bf16-N16-2x2": dict(batch=1, height=2, width=2, channels=2, state=16, dtype="bfloat16", config=(2, 4, 1),
                         params="float32"),
    "f16-N4-2x3": dict(batch=1, height=2, width=3, channels=3, state=4, dtype="float16", config=(4, 4, 1)),
}  # fmt: skip
# Long routes and realistic channel counts: minutes in the interpreter, milliseconds on a GPU.
CUDA_ONLY_CASES = {
    "bf16-N1-128x128": dict(batch=1, height=128, width=128, channels=8, state=1, dtype="bfloat16", config=None,
                            params="float32"),
    "f32-N16-64x48": dict(batch=2, height=64, width=48, channels=24, state=16, dtype="float32", config=None),
    "f32-N1-56x56-C96": dict(batch=2, height=56, width=56, channels=96, state=1, dtype="float32", config=None),
    "f64-N1-40x40-pinned": dict(batch=1, height=40, width=40, channels=40, state=1, dtype="float64",
                                config=(32, 8, 1)),
}  # fmt: skip
ALL_CASES = {**CASES, **CUDA_ONLY_CASES}


# ----------------------------------------------------------------------------------------------------------------
# Cases (run in the interpreter child, and in-process on CUDA).
# ----------------------------------------------------------------------------------------------------------------


def case_inputs(case: dict, device) -> dict[str, torch.Tensor]:
    from transformers_vmamba.testing_utils import make_ss2d_inputs

    dtype = DTYPES[case["dtype"]]
    inputs = make_ss2d_inputs(
        case["batch"], case["height"], case["width"], case["channels"], case["state"],
        decay=case.get("decay", "realistic"), dtype=dtype, device=device,
    )  # fmt: skip
    if case.get("params") == "float32":
        inputs.update({key: inputs[key].float() for key in ("A", "D", "dt_bias")})
    if case.get("noncontiguous"):
        inputs = _noncontiguous(inputs)
    return inputs


def _noncontiguous(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same values behind other strides: a channel slice, channels-first storage, a spatial crop (whose
    positions cannot be flattened into one stride), a zero batch stride, transposed parameters."""
    x, dt, A, B, C, D, dt_bias = inputs.values()
    batch, height, width, channels = x.shape
    wide = x.new_zeros(batch, height, width, channels + 3)
    wide[..., 1 : channels + 1] = x
    dt_storage = dt.permute(0, 3, 4, 1, 2).contiguous()  # (batch, 4, C, H, W)
    crop = B.new_zeros(batch, height + 1, width + 2, *B.shape[3:])
    crop[:, 1:, 1 : width + 1] = B
    out = dict(
        x=wide[..., 1 : channels + 1],
        dt=dt_storage.permute(0, 3, 4, 1, 2),
        A=A.transpose(1, 2).contiguous().transpose(1, 2),
        B=crop[:, 1:, 1 : width + 1],
        C=C[:1].expand(batch, *C.shape[1:]),
        D=D.t().contiguous().t(),
        dt_bias=dt_bias.t().contiguous().t(),
    )
    assert not any(t.is_contiguous() for key, t in out.items() if key != "A")  # A is contiguous again when N = 1
    return out


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    if want.numel() == 0:
        return 0.0 if got.shape == want.shape else float("inf")
    scale = want.abs().max().item()
    return (got.double() - want).abs().max().item() / max(scale, 1e-12)


def run_case(case: dict, device: str, config=None) -> dict:
    """Kernel forward and backward on one case; {"out" or gradient name: relative error vs the reference}.

    ``config`` (a triton.Config) overrides the case's own.
    """
    import triton

    from transformers_vmamba.selective_scan import ss2d_reference
    from vmamba_kernels import triton_ss2d

    inputs = case_inputs(case, device)
    if config is None and case["config"] is not None:
        block_d, chunk, num_warps = case["config"]
        config = triton.Config({"BLOCK_D": block_d, "CHUNK": chunk}, num_warps=num_warps, num_stages=1)
    y = triton_ss2d.forward(*inputs.values(), config=config)
    leaves = [t.detach().double().requires_grad_() for t in inputs.values()]
    ref = ss2d_reference(*leaves)
    expected_dtype = torch.float64 if case["dtype"] == "float64" else torch.float32
    assert y.dtype == expected_dtype and y.shape == ref.shape, (y.dtype, tuple(y.shape), tuple(ref.shape))
    grad_y = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(device)
    if case.get("noncontiguous"):
        grad_y = grad_y.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    grads = triton_ss2d.backward(grad_y.to(y.dtype), *inputs.values(), config=config)
    ref_grads = torch.autograd.grad(ref, leaves, grad_y) if ref.numel() else [torch.zeros_like(t) for t in leaves]
    errors = {"out": _relative_error(y, ref.detach())}
    for key, grad, ref_grad, t in zip(GRAD_NAMES, grads, ref_grads, inputs.values()):
        assert grad.dtype == t.dtype and grad.shape == t.shape, f"{key}: {grad.dtype} {tuple(grad.shape)}"
        errors[key] = _relative_error(grad, ref_grad)
    return errors


def run_operator_checks() -> dict:
    """The Triton kernel behind ``torch.ops.vmamba.ss2d_scan`` (as ``ss2d_kernel`` would return it on CUDA), tiny
    shapes: values and gradients through autograd, ``opcheck``, and ``torch.compile(fullgraph=True)``."""
    import triton

    import vmamba_kernels
    from transformers_vmamba import ss2d
    from transformers_vmamba.selective_scan import ss2d_reference
    from vmamba_kernels import triton_ss2d

    vmamba_kernels.ss2d_kernel = lambda device_type: (triton_ss2d, None)
    os.environ["VMAMBA_SCAN_BACKEND"] = "kernel"  # an error, not a silent fallback, if the kernel is not used
    case = dict(batch=1, height=2, width=3, channels=2, state=2, dtype="float64")
    inputs = list(case_inputs(case, "cpu").values())
    results = {}
    with triton_ss2d.pinned_config(triton.Config({"BLOCK_D": 2, "CHUNK": 4}, num_warps=1, num_stages=1)):
        leaves = [t.detach().requires_grad_() for t in inputs]
        ref_leaves = [t.detach().requires_grad_() for t in inputs]
        out, ref = ss2d.ss2d_scan(*leaves), ss2d_reference(*ref_leaves)
        grads = torch.autograd.grad(out.square().sum(), leaves)
        ref_grads = torch.autograd.grad(ref.square().sum(), ref_leaves)
        error = max(_relative_error(a, b) for a, b in zip((out, *grads), (ref, *ref_grads)))
        results["autograd"] = "ok" if error < 1e-10 else f"relative error {error:.2e} against the reference"
        try:
            torch.library.opcheck(torch.ops.vmamba.ss2d_scan.default, [t.detach().requires_grad_() for t in inputs])
            results["opcheck"] = "ok"
        except Exception as err:  # reported to the parent test
            results["opcheck"] = f"{type(err).__name__}: {err}"
        try:
            torch._dynamo.reset()
            compiled = torch.compile(lambda *t: ss2d.ss2d_scan(*t).square().sum(), backend="aot_eager", fullgraph=True)
            c_leaves = [t.detach().requires_grad_() for t in inputs]
            c_grads = torch.autograd.grad(compiled(*c_leaves), c_leaves)
            diff = max((a - b).abs().max().item() for a, b in zip(c_grads, grads))
            results["compile"] = "ok" if diff < 1e-12 else f"compiled gradients differ from eager by {diff}"
        except Exception as err:
            results["compile"] = f"{type(err).__name__}: {err}"
    return results


# ----------------------------------------------------------------------------------------------------------------
# Child processes: the interpreter cases and the offline sm_90 compilation.
# ----------------------------------------------------------------------------------------------------------------


def _child_env(interpret: bool) -> dict:
    """This process's environment with the imported packages' source folders first on PYTHONPATH (so a child sees
    the same checkout as the parent, e.g. a worktree shadowing an editable install)."""
    import transformers_vmamba
    import vmamba_kernels

    paths = [str(Path(m.__file__).resolve().parents[1]) for m in (transformers_vmamba, vmamba_kernels)]
    env = dict(os.environ, TRITON_DEFAULT_FP_FUSION="1")
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [env.get("PYTHONPATH")] if p])
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    else:
        env.pop("TRITON_INTERPRET", None)
    return env


_CHILDREN = {"interpreter": ("--interpreter-worker", True), "sm90": ("--sm90-compile-worker", False)}


@pytest.fixture(scope="module")
def children(request, tmp_path_factory):
    """Start, at once, each child that a selected test of this module needs; {kind: (process, output path)}."""
    wanted = {
        kind
        for item in request.session.items
        if item.module is request.module
        for kind in _CHILDREN
        if f"{kind}_results" in getattr(item, "fixturenames", ())
    }
    started = {}
    folder = tmp_path_factory.mktemp("triton_children")
    for kind in sorted(wanted):
        flag, interpret = _CHILDREN[kind]
        out = folder / f"{kind}.json"
        log = open(folder / f"{kind}.log", "w")
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), flag, str(out)],
            env=_child_env(interpret), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        started[kind] = (process, out, log)
    yield started
    for process, _, log in started.values():
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()


def _child_results(children, kind: str) -> dict:
    process, out, log = children[kind]
    try:
        process.wait(timeout=1200)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"{kind} worker timed out")
    text = Path(log.name).read_text()
    if process.returncode != 0 or not out.exists():
        pytest.fail(f"{kind} worker failed (rc={process.returncode}):\n{text[-6000:]}")
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def interpreter_results(children):
    return _child_results(children, "interpreter")


@pytest.fixture(scope="module")
def sm90_results(children):
    return _child_results(children, "sm90")


def _interpreter_worker(out_path: str) -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1"
    torch.set_num_threads(1)
    results = {"cases": {}, "operator": {}}
    for name in CASES:
        try:
            results["cases"][name] = run_case(CASES[name], "cpu")
        except Exception as err:  # reported per case by the parent
            results["cases"][name] = {"error": f"{type(err).__name__}: {err}"}
    results["operator"] = run_operator_checks()
    tmp = Path(out_path + ".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(out_path)


# ----------------------------------------------------------------------------------------------------------------
# Offline compilation for sm_90 of every autotune configuration.
# ----------------------------------------------------------------------------------------------------------------


def _sm90_launch_args(backward: bool, state: int):
    """Arguments of a VMamba-T stage-1 launch (56x56, 96 channels, bf16 activations, float32 parameters), on CPU:
    only their dtypes, and the values Triton specialises on (1, multiples of 16), matter here."""
    batch, height, width, channels = 2, 56, 56, 96
    x = torch.empty(batch, height * width, channels, dtype=torch.bfloat16)
    dt = torch.empty(batch, height * width, 4, channels, dtype=torch.bfloat16)
    B = torch.empty(batch, height * width, 4, state, dtype=torch.bfloat16)
    A, D = torch.empty(4, channels, state), torch.empty(4, channels)
    y = torch.empty(batch, height * width, channels)
    strides = (*x.stride(), *dt.stride(), *B.stride(), *B.stride())
    if not backward:
        return (x, dt, A, B, B, D, D, y, height, width, channels, state, *strides)
    states = torch.empty(8)
    return (x, dt, A, B, B, D, D, y, y, dt, A, B, B, D, D, states, height, width, channels, state, 195,
            *strides, *y.stride())  # fmt: skip


def _compile_sm90(kernel, args, meta: dict, config):
    """``triton.compile`` for sm_90 with the signature and specialisations a real launch with ``args`` would get."""
    import triton
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend, GPUTarget
    from triton.compiler import ASTSource, make_backend

    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    fn = kernel.fn
    values = dict(zip(fn.arg_names, args), **meta, **config.kwargs)
    signature, constexprs, attrs = {}, {}, {}
    for index, param in enumerate(fn.params):
        value = values[param.name]
        if param.is_constexpr:
            kind, attr = "constexpr", None
        else:
            kind, attr = native_specialize_impl(BaseBackend, value, False, True, True)
        signature[param.name] = kind
        if kind == "constexpr":
            constexprs[(index,)] = value
        elif attr:
            attrs[(index,)] = backend.parse_attr(attr)
    options = dict(num_warps=config.num_warps, num_stages=config.num_stages, enable_fp_fusion=True)
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options)


def _resource_usage(cubin: bytes, tool: Path) -> dict:
    """Registers, stack and local memory per thread from ``cuobjdump --dump-resource-usage``."""
    import re
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kernel.cubin"
        path.write_bytes(cubin)
        text = subprocess.run([str(tool), "--dump-resource-usage", str(path)], capture_output=True, text=True).stdout
    match = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", text)
    if not match:
        raise RuntimeError(f"unexpected cuobjdump output: {text[-500:]}")
    return dict(zip(("registers", "stack", "shared", "local"), map(int, match.groups())))


def _sm90_compile_worker(out_path: str) -> None:
    import triton
    import triton.language as tl

    from vmamba_kernels import triton_ss2d

    assert os.environ.get("TRITON_INTERPRET", "0") != "1"
    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    results = {}
    for backward, table in ((False, triton_ss2d.FORWARD_CONFIGS), (True, triton_ss2d.BACKWARD_CONFIGS)):
        kernel = triton_ss2d.ss2d_backward_kernel if backward else triton_ss2d.ss2d_forward_kernel
        for state, configs in table.items():
            for config in configs:
                key = f"{'backward' if backward else 'forward'} N={state} {config.kwargs} num_warps={config.num_warps}"
                try:
                    meta = dict(N_PAD=triton.next_power_of_2(state), ACC=tl.float32)
                    compiled = _compile_sm90(kernel, _sm90_launch_args(backward, state), meta, config)
                    results[key] = _resource_usage(compiled.asm["cubin"], tools / "cuobjdump")
                except Exception as err:  # reported per configuration by the parent
                    results[key] = {"error": f"{type(err).__name__}: {str(err)[-3000:]}"}
    Path(out_path).write_text(json.dumps(results, indent=1))


# ----------------------------------------------------------------------------------------------------------------
# Tests.
# ----------------------------------------------------------------------------------------------------------------


def _assert_case(name: str, case: dict, errors: dict) -> None:
    if "error" in errors:
        pytest.fail(f"{name} raised: {errors['error']}")
    dtype = case["dtype"]
    bad = {}
    for key, error in errors.items():
        tol = OUTPUT_TOL[dtype] if key == "out" else GRAD_TOL[dtype]
        if not error <= tol:
            bad[key] = (error, tol)
    assert not bad, f"{name}: relative errors above tolerance (error, tolerance): {bad}"


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("name", list(CASES))
def test_interpreted_kernels_match_the_float64_reference(name, interpreter_results):
    _assert_case(name, CASES[name], interpreter_results["cases"][name])


@pytest.mark.parametrize("check", ["autograd", "opcheck", "compile"])
def test_interpreted_kernels_behind_the_operator(check, interpreter_results):
    assert interpreter_results["operator"][check] == "ok", interpreter_results["operator"][check]


@needs_cuda
@pytest.mark.parametrize("name", list(ALL_CASES))
def test_cuda_kernels_match_the_float64_reference(name):
    _assert_case(name, ALL_CASES[name], run_case(ALL_CASES[name], "cuda"))


@needs_cuda
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
def test_every_autotune_config_on_cuda(backward):
    """Each configuration autotune may pick, pinned, on a shape with several chunks and channel blocks."""
    from vmamba_kernels import triton_ss2d

    table = triton_ss2d.BACKWARD_CONFIGS if backward else triton_ss2d.FORWARD_CONFIGS
    for state, configs in table.items():
        case = dict(batch=2, height=9, width=13, channels=40, state=state, dtype="float32", config=None)
        for config in configs:
            errors = run_case(case, "cuda", config=config)
            _assert_case(f"N={state} {config}", case, errors if backward else {"out": errors["out"]})


@needs_cuda
def test_inductor_compiles_the_operator_with_the_triton_kernel(monkeypatch):
    """torch.compile (Inductor, fullgraph) of the whole operator, forward and backward, against eager."""
    from transformers_vmamba.ss2d import ss2d_scan

    monkeypatch.setenv("VMAMBA_SCAN_BACKEND", "kernel")
    case = dict(batch=2, height=9, width=13, channels=16, state=1, dtype="bfloat16", params="float32")
    inputs = list(case_inputs(case, "cuda").values())

    def loss_fn(*tensors):
        return ss2d_scan(*tensors).square().sum()

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


@needs_cuda
def test_cuda_kernel_is_offered_on_a_gpu():
    import vmamba_kernels
    from vmamba_kernels import triton_ss2d

    assert vmamba_kernels.ss2d_kernel("cuda") == (triton_ss2d, None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without a GPU")
def test_no_cuda_kernel_without_a_gpu():
    import vmamba_kernels

    kernel, reason = vmamba_kernels.ss2d_kernel("cuda")
    assert kernel is None and "no CUDA device is available" in reason


def test_every_autotune_config_compiles_for_hopper_without_spills(sm90_results):
    """The real compiler pipeline down to an sm_90 cubin for every configuration autotune may pick."""
    from vmamba_kernels import triton_ss2d

    expected = sum(len(c) for t in (triton_ss2d.FORWARD_CONFIGS, triton_ss2d.BACKWARD_CONFIGS) for c in t.values())
    assert len(sm90_results) == expected, sorted(sm90_results)
    failed = {key: value for key, value in sm90_results.items() if "error" in value}
    assert not failed, failed
    spilling = {key: value for key, value in sm90_results.items() if value["stack"] or value["local"]}
    assert not spilling, f"register spills (stack/local bytes per thread): {spilling}"


@pytest.fixture
def triton_ss2d_module():
    from vmamba_kernels import triton_ss2d

    return triton_ss2d


def test_bad_inputs_raise_clear_errors(triton_ss2d_module, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    inputs = case_inputs(dict(batch=1, height=2, width=3, channels=2, state=1, dtype="float32"), "cpu")
    with pytest.raises(ValueError, match=r"ss2d: dt has shape \(1, 2, 3, 2, 2\), expected \(1, 2, 3, 4, 2\)"):
        triton_ss2d_module.forward(*{**inputs, "dt": inputs["dt"][..., :2, :]}.values())
    with pytest.raises(TypeError, match="must be float16/bfloat16/float32/float64, got torch.float8_e4m3fn"):
        triton_ss2d_module.forward(*{**inputs, "x": inputs["x"].to(torch.float8_e4m3fn)}.values())
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="the Triton kernels need CUDA tensors, got cpu"):
            triton_ss2d_module.forward(*inputs.values())
        with pytest.raises(RuntimeError, match="need CUDA tensors"):
            triton_ss2d_module.backward(torch.zeros(1, 2, 3, 2), *inputs.values())


def test_import_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, vmamba_kernels\n"
        "kernel, reason = vmamba_kernels.ss2d_kernel('cuda')\n"
        "assert kernel is None and 'Triton could not be imported' in reason, reason\n"
        "from transformers_vmamba.ss2d import ss2d_scan\n"
        "from transformers_vmamba.testing_utils import make_ss2d_inputs\n"
        "assert ss2d_scan(*make_ss2d_inputs(1, 2, 2, 2, 1).values()).shape == (1, 2, 2, 2)\n"
    )
    env = _child_env(False)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--interpreter-worker":
    _interpreter_worker(sys.argv[2])
if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--sm90-compile-worker":
    _sm90_compile_worker(sys.argv[2])
