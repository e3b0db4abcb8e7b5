#!/usr/bin/env python
# Copyright 2026 The transformers-vmamba authors. Licensed under the MIT license.
"""Whole-model CPU check of the SS2D backends: VMamba-T (s1l8) forward at 224x224 with ``VMAMBA_SCAN_BACKEND=torch``
against ``kernel`` (the numba kernel), interleaved in one process, and where the time of the kernel run goes.

Rounds alternate the two backends (the operator reads the variable on every call), medians per backend; then one
``torch.profiler`` pass per backend groups the self CPU time by operator (the SS2D operator is one node:
``vmamba::ss2d_scan``). Randomly initialised weights, float32, ``torch.inference_mode()``. Indicative on a busy
machine: compare ratios, not times.

    python benchmarks/profile_cpu_vmamba_scan.py --threads 1 2 --batch 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def _forward(model, pixels, backend):
    os.environ["VMAMBA_SCAN_BACKEND"] = backend
    with torch.inference_mode():
        model(pixel_values=pixels)


def time_backends(model, pixels, rounds: int, warmup: int) -> dict[str, float]:
    samples = {"torch": [], "kernel": []}
    for index in range(warmup + rounds):
        for backend in samples:
            start = time.perf_counter()
            _forward(model, pixels, backend)
            if index >= warmup:
                samples[backend].append(time.perf_counter() - start)
    return {backend: statistics.median(values) * 1e3 for backend, values in samples.items()}


def profile_split(model, pixels, backend: str, top: int) -> list[tuple[str, float]]:
    """(operator, share of self CPU time) of one forward, largest first."""
    from torch.profiler import ProfilerActivity, profile

    _forward(model, pixels, backend)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _forward(model, pixels, backend)
    events = prof.key_averages()
    total = sum(event.self_cpu_time_total for event in events)
    ranked = sorted(events, key=lambda event: event.self_cpu_time_total, reverse=True)[:top]
    return [(event.key, event.self_cpu_time_total / total) for event in ranked]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--variant", default="vmamba-tiny-s1l8")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args(argv)

    from transformers_vmamba import VMambaConfig, VMambaForImageClassification

    model = VMambaForImageClassification(VMambaConfig.from_variant(args.variant)).eval()
    pixels = torch.randn(args.batch, 3, args.size, args.size)
    previous = os.environ.get("VMAMBA_SCAN_BACKEND")
    try:
        for threads in args.threads:
            torch.set_num_threads(threads)
            medians = time_backends(model, pixels, args.rounds, warmup=2)
            print(
                f"{args.variant} batch {args.batch} {args.size}px, {threads} thread(s): torch scan "
                f"{medians['torch']:.1f} ms, numba kernel {medians['kernel']:.1f} ms, "
                f"ratio {medians['torch'] / medians['kernel']:.2f}x",
                flush=True,
            )
            for backend in ("torch", "kernel"):
                split = profile_split(model, pixels, backend, args.top)
                print(f"  self CPU time by operator, {backend} backend, {threads} thread(s):")
                for name, share in split:
                    print(f"    {share:6.1%}  {name}")
    finally:
        if previous is None:
            os.environ.pop("VMAMBA_SCAN_BACKEND", None)
        else:
            os.environ["VMAMBA_SCAN_BACKEND"] = previous


if __name__ == "__main__":
    main()
