# Copyright 2026 The transformers-vmamba authors. Licensed under the MIT license.
"""Whole-model GPU throughput: VMamba-T (s1l8, s2l5) and Vanilla-VMamba-T against Swin-T and ConvNeXt-T.

Method: random 224x224 images, batch 128 by default, random weights; CUDA events around each step, median of
``--repeats`` timed steps after ``--warmup`` steps. "fwd" is inference (eval mode, ``torch.inference_mode``);
"fwd+bwd" is a training step without the optimizer (train mode, cross-entropy on random labels, ``backward``).
"fp32" runs float32 weights and activations with TF32 matmuls/convolutions (unless ``--no-tf32``); "bf16" runs
under ``torch.autocast`` with float32 weights (the SS2D scan computes in float32 either way). "compiled" is
``torch.compile(model)`` (Inductor; the SS2D operator stays one node). VMamba runs with each scan backend of
``VMAMBA_SCAN_BACKEND``: "kernel" (the Triton kernel) and "torch" (the PyTorch scan). Throughput is images per
second, peak memory ``torch.cuda.max_memory_allocated``; "first step" includes compilation and autotuning.

Every measurement is merged into ``benchmarks/results_model_gpu.json`` (keyed by model, backend, compile mode,
dtype, mode, batch, size), and the "model" section of ``RESULTS_gpu.md`` is regenerated from all of them, so the grid
can be run in pieces that each fit a time limit:

    python benchmarks/bench_model_gpu.py --models VMamba-T-s1l8 Swin-T ConvNeXt-T
    python benchmarks/bench_model_gpu.py --models Vanilla-VMamba-T --compile-modes compiled --dtypes bf16
    python benchmarks/bench_model_gpu.py --smoke          # run this script on CPU (batch 1, eager)
    python benchmarks/bench_model_gpu.py --dry-run        # print the plan (no GPU needed)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_common import (  # noqa: E402
    cuda_time_ms,
    environment,
    environment_markdown,
    markdown_table,
    require_cuda,
    write_section,
)


RESULTS_JSON = Path(__file__).resolve().parent / "results_model_gpu.json"
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
VMAMBA_VARIANTS = {
    "VMamba-T-s1l8": "vmamba-tiny-s1l8",
    "VMamba-T-s2l5": "vmamba-tiny-s2l5",
    "Vanilla-VMamba-T": "vanilla-vmamba-tiny",
}
BASELINES = ("Swin-T", "ConvNeXt-T")
MODELS = (*VMAMBA_VARIANTS, *BASELINES)
SCAN_BACKENDS = ("kernel", "torch")


def build_model(name: str, num_labels: int = 1000) -> torch.nn.Module:
    """Random-weight ImageNet-1k classifiers: VMamba from its variant table, the baselines from Transformers'
    default configurations (SwinConfig() is Swin-T, ConvNextConfig() ConvNeXt-T)."""
    from transformers import ConvNextConfig, ConvNextForImageClassification, SwinConfig, SwinForImageClassification

    from transformers_vmamba import VMambaConfig, VMambaForImageClassification

    if name in VMAMBA_VARIANTS:
        return VMambaForImageClassification(VMambaConfig.from_variant(VMAMBA_VARIANTS[name], num_labels=num_labels))
    if name == "Swin-T":
        return SwinForImageClassification(SwinConfig(num_labels=num_labels))
    if name == "ConvNeXt-T":
        return ConvNextForImageClassification(ConvNextConfig(num_labels=num_labels))
    raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")


@contextlib.contextmanager
def scan_backend(backend: str | None):
    """VMAMBA_SCAN_BACKEND for the block (read by the SS2D operator on every call); None leaves it alone."""
    if backend is None:
        yield
        return
    previous = os.environ.get("VMAMBA_SCAN_BACKEND")
    os.environ["VMAMBA_SCAN_BACKEND"] = backend
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("VMAMBA_SCAN_BACKEND")
        else:
            os.environ["VMAMBA_SCAN_BACKEND"] = previous


def measure(model, mode, dtype_name, batch, image_size, num_labels, device, warmup, repeats):
    autocast_dtype = DTYPES[dtype_name]
    autocast = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    )
    pixel_values = torch.randn(batch, 3, image_size, image_size, device=device)
    labels = torch.randint(0, num_labels, (batch,), device=device)
    if mode == "fwd":
        model.eval()

        def step():
            with torch.inference_mode(), autocast:
                model(pixel_values=pixel_values)

    else:
        model.train()

        def step():
            with autocast:
                loss = model(pixel_values=pixel_values, labels=labels).loss
            loss.backward()
            model.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    step()  # the first step includes compilation and autotuning
    if device.type == "cuda":
        torch.cuda.synchronize()
    first_step_s = time.perf_counter() - start
    stats = cuda_time_ms(step, warmup=warmup, repeats=repeats)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return {
        "median_ms": stats["median_ms"],
        "images_per_s": batch / (stats["median_ms"] * 1e-3),
        "peak_gib": peak,
        "first_step_s": first_step_s,
    }


def load_results() -> dict:
    if RESULTS_JSON.exists():
        return json.loads(RESULTS_JSON.read_text())
    return {"rows": {}, "environment": {}}


def save_results(results: dict) -> None:
    tmp = RESULTS_JSON.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True))
    os.replace(tmp, RESULTS_JSON)


def row_key(model, backend, compile_mode, dtype, mode, batch, image_size) -> str:
    return "|".join([model, backend, compile_mode, dtype, mode, str(batch), str(image_size)])


def render(results: dict) -> str:
    """The "model" section: every stored row, with its throughput relative to Swin-T in the same setting."""
    by_key = results["rows"]
    rows = []
    for key in sorted(by_key):
        r = by_key[key]
        swin = by_key.get(row_key("Swin-T", "-", r["compile"], r["dtype"], r["mode"], r["batch"], r["image_size"]), {})
        relative = (
            f"{swin['images_per_s'] / r['images_per_s']:.2f}x"
            if "images_per_s" in r and "images_per_s" in swin
            else "-"
        )
        if "images_per_s" in r:
            cells = [f"{r['images_per_s']:.0f}", f"{r['median_ms']:.1f}", f"{r['peak_gib']:.1f}",
                     f"{r['first_step_s']:.1f}"]  # fmt: skip
        else:
            cells = [r.get("error", "-"), "-", "-", "-"]
        rows.append([r["model"], r["image_size"], r["batch"], r["dtype"], r["mode"], r["backend"], r["compile"],
                     *cells, relative, r["device"]])  # fmt: skip
    return "\n".join([
        "## Whole model (`benchmarks/bench_model_gpu.py`)",
        "",
        "Latest run's environment:",
        "",
        environment_markdown(results.get("environment", {})),
        "",
        "Method: random weights and images, CUDA events, median of the timed steps after warm-up; fwd = eval + "
        "inference_mode; fwd+bwd = train mode, cross-entropy on random labels, backward, no optimizer; fp32 = TF32 "
        "matmuls; bf16 = autocast with fp32 weights. \"time vs Swin-T\" is Swin-T's throughput over this row's in the "
        "same dtype, mode and compile mode (below 1 = faster than Swin-T).",
        "",
        markdown_table(
            ["model", "size", "batch", "dtype", "mode", "scan backend", "compile", "images/s", "ms/step",
             "peak GiB", "first step s", "time vs Swin-T", "device"],
            rows,
        ),
    ])  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--modes", nargs="*", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    parser.add_argument("--dtypes", nargs="*", default=["fp32", "bf16"], choices=list(DTYPES))
    parser.add_argument("--backends", nargs="*", default=list(SCAN_BACKENDS), choices=list(SCAN_BACKENDS),
                        help="VMAMBA_SCAN_BACKEND values to run VMamba with")  # fmt: skip
    parser.add_argument("--compile-modes", nargs="*", default=["eager", "compiled"], choices=["eager", "compiled"])
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-tf32", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print only; do not update the results files")
    parser.add_argument(
        "--smoke", action="store_true", help="run this script: batch 1, one step, eager (CPU: torch scan only)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the planned measurements and exit")
    args = parser.parse_args(argv)
    if args.dry_run:
        for name in args.models:
            for backend in args.backends if name in VMAMBA_VARIANTS else ["-"]:
                print(f"{name} backend={backend} compile={args.compile_modes} dtypes={args.dtypes} "
                      f"modes={args.modes} batch={args.batch_size} size={args.image_size}")  # fmt: skip
        return

    device = require_cuda("bench_model_gpu.py", smoke=args.smoke)
    if args.smoke:
        # 224 px still: Transformers' Swin breaks below its window size x 32 (it shrinks its windows in place).
        args.batch_size, args.warmup, args.repeats, args.no_write = 1, 0, 1, True
        args.compile_modes = ["eager"]
        if device.type != "cuda":
            args.backends = ["torch"]  # the Triton kernel needs CUDA tensors
    torch.backends.cuda.matmul.allow_tf32 = not args.no_tf32
    torch.backends.cudnn.allow_tf32 = not args.no_tf32
    if "kernel" in args.backends and any(m in VMAMBA_VARIANTS for m in args.models):
        import vmamba_kernels

        kernel, reason = vmamba_kernels.ss2d_kernel(device.type)
        if kernel is None:
            raise SystemExit(f"bench_model_gpu.py: the kernel backend cannot run: {reason}")

    env = environment()
    results = load_results()
    results["environment"] = env
    for name in args.models:
        backends = args.backends if name in VMAMBA_VARIANTS else [None]
        for backend in backends:
            for compile_mode in args.compile_modes:
                model = build_model(name).to(device)
                runner = torch.compile(model) if compile_mode == "compiled" else model
                for dtype_name in args.dtypes:
                    for mode in args.modes:
                        key = row_key(name, backend or "-", compile_mode, dtype_name, mode, args.batch_size,
                                      args.image_size)  # fmt: skip
                        row = dict(model=name, backend=backend or "-", compile=compile_mode, dtype=dtype_name,
                                   mode=mode, batch=args.batch_size, image_size=args.image_size,
                                   device=env["device"])  # fmt: skip
                        try:
                            with scan_backend(backend):
                                row.update(measure(runner, mode, dtype_name, args.batch_size, args.image_size,
                                                   model.config.num_labels, device, args.warmup,
                                                   args.repeats))  # fmt: skip
                        except torch.cuda.OutOfMemoryError:
                            row["error"] = "OOM"
                        except Exception as err:  # recorded, so one failing configuration does not lose the rest
                            row["error"] = f"{type(err).__name__}: {str(err)[:120]}"
                        finally:
                            if device.type == "cuda":
                                torch.cuda.empty_cache()
                        results["rows"][key] = row
                        print(json.dumps(row), flush=True)
                        if not args.no_write:
                            save_results(results)
                del model, runner
                if compile_mode == "compiled":
                    torch._dynamo.reset()
    text = render(results)
    print(text)
    if not args.no_write:
        write_section("model", text)


if __name__ == "__main__":
    main()
