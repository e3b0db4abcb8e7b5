# Copyright 2026 The transformers-vmamba authors. Licensed under the MIT license.
"""Whole-model GPU throughput of VMamba: Triton scan backend vs the torch backend, eager and torch.compile.

Method: random 224x224 images, batch 128 by default; CUDA events around each step, median of ``--repeats`` timed
steps after ``--warmup`` steps. "fwd" is inference (eval mode, ``torch.inference_mode``); "fwd+bwd" is a training
step without the optimizer (train mode, cross-entropy loss on random labels, ``loss.backward()``). bf16 runs under
``torch.autocast`` with float32 weights (the scan accumulates in float32 either way); TF32 matmuls are on unless
``--no-tf32``. Throughput is images per second; peak memory is ``torch.cuda.max_memory_allocated``.

Every measurement is merged into ``benchmarks/results_model_gpu.json`` (keyed by variant, backend, compile, dtype,
mode), and the "model" section of ``RESULTS_gpu.md`` is regenerated from all of them, so the full grid can be run in
pieces that each fit a time limit:

    python benchmarks/bench_model_gpu.py --variants vmamba-tiny-s1l8
    python benchmarks/bench_model_gpu.py --variants vanilla-vmamba-tiny
    python benchmarks/bench_model_gpu.py --compile-modes compiled --dtypes bf16
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


def load_model_api():
    try:
        from transformers_vmamba import VMambaConfig, VMambaForImageClassification
    except ImportError:
        from transformers_vmamba.configuration_vmamba import VMambaConfig
        from transformers_vmamba.modeling_vmamba import VMambaForImageClassification
    return VMambaConfig, VMambaForImageClassification


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
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    step()  # the first step includes compilation when the model is compiled
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


def render(results: dict) -> str:
    rows = []
    by_key = results["rows"]
    for key in sorted(by_key):
        r = by_key[key]
        base_key = "|".join([r["variant"], "torch", "eager", r["dtype"], r["mode"], str(r["batch"]), str(r["image_size"])])
        base = by_key.get(base_key, {})
        speedup = (
            f"{r['images_per_s'] / base['images_per_s']:.2f}x"
            if "images_per_s" in r and "images_per_s" in base
            else "-"
        )
        if "images_per_s" in r:
            cells = [f"{r['images_per_s']:.0f}", f"{r['median_ms']:.1f}", f"{r['peak_gib']:.1f}", f"{r['first_step_s']:.1f}"]
        else:
            cells = [r.get("error", "-"), "-", "-", "-"]
        rows.append([r["variant"], r["image_size"], r["batch"], r["dtype"], r["mode"], r["backend"], r["compile"], *cells, speedup, r["device"]])
    env = results.get("environment", {})
    return "\n".join([
        "## Whole model (`benchmarks/bench_model_gpu.py`)",
        "",
        "Latest run's environment:",
        "",
        environment_markdown(env),
        "",
        "Method: random images, CUDA events, median of the timed steps after warm-up; fwd = eval + inference_mode; "
        "fwd+bwd = train mode, cross-entropy on random labels, backward, no optimizer; bf16 = autocast with fp32 "
        "weights. Speed-up is against the eager torch backend of the same variant, dtype and mode.",
        "",
        markdown_table(
            ["variant", "size", "batch", "dtype", "mode", "scan backend", "compile", "images/s", "ms/step",
             "peak GiB", "first step s", "speed-up vs torch eager", "device"],
            rows,
        ),
    ])  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="*", default=["vmamba-tiny-s1l8", "vanilla-vmamba-tiny"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--modes", nargs="*", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    parser.add_argument("--dtypes", nargs="*", default=["fp32", "bf16"], choices=list(DTYPES))
    parser.add_argument("--backends", nargs="*", default=["triton", "torch"], choices=["triton", "torch"])
    parser.add_argument("--compile-modes", nargs="*", default=["eager"], choices=["eager", "compiled"])
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-tf32", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print only; do not update the results files")
    parser.add_argument("--smoke", action="store_true", help="check this script on a tiny model (CPU: TRITON_INTERPRET=1)")
    args = parser.parse_args()

    device = require_cuda("bench_model_gpu.py", smoke=args.smoke)
    if args.smoke:
        args.image_size, args.batch_size, args.warmup, args.repeats, args.no_write = 32, 2, 0, 1, True
    torch.backends.cuda.matmul.allow_tf32 = not args.no_tf32
    torch.backends.cudnn.allow_tf32 = not args.no_tf32
    if "triton" in args.backends:
        import vmamba_kernels

        if not vmamba_kernels.is_available():
            raise SystemExit(f"bench_model_gpu.py: the Triton backend cannot run: {vmamba_kernels.unavailable_reason()}")
    VMambaConfig, VMambaForImageClassification = load_model_api()

    env = environment()
    results = load_results()
    results["environment"] = env
    for variant in args.variants:
        for backend in args.backends:
            for compile_mode in args.compile_modes:
                overrides = dict(scan_backend=backend)
                if args.smoke:
                    overrides.update(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1])
                config = VMambaConfig.from_variant(variant, **overrides)
                model = VMambaForImageClassification(config).to(device)
                runner = torch.compile(model) if compile_mode == "compiled" else model
                for dtype_name in args.dtypes:
                    for mode in args.modes:
                        key = "|".join([variant, backend, compile_mode, dtype_name, mode, str(args.batch_size), str(args.image_size)])
                        row = dict(variant=variant, backend=backend, compile=compile_mode, dtype=dtype_name, mode=mode,
                                   batch=args.batch_size, image_size=args.image_size, device=env["device"])  # fmt: skip
                        try:
                            row.update(
                                measure(runner, mode, dtype_name, args.batch_size, args.image_size, config.num_labels,
                                        device, args.warmup, args.repeats)
                            )  # fmt: skip
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
