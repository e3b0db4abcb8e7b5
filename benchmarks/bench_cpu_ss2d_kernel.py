#!/usr/bin/env python
# Copyright 2026 The transformers-vmamba authors. Licensed under the MIT license.
"""CPU benchmark of the SS2D operator's numba kernel against its PyTorch path, and its bandwidth.

Both implementations are called directly with the operator's contract (channels-last, ``check_ss2d_inputs``):
``vmamba_kernels.numba_ss2d.forward/backward`` and ``transformers_vmamba.selective_scan.ss2d_forward_torch/
ss2d_backward_torch``, in float32 on inputs from ``testing_utils.make_ss2d_inputs`` (realistic ranges). "fwd" is a
forward; "fwd+bwd" is a forward and the backward the operator runs in training (which recomputes the scan).

Cases: the four stages of VMamba-T (s1l8, d_state 1) at 224x224, batch 1 and 8, and stage 1 of Vanilla-VMamba-T
(v0, d_state 16). Method: after a warm-up (which also compiles the numba kernels), rounds that call the kernel, the
PyTorch path and a copy of the same number of bytes back to back (interleaved, so a busy machine slows all three
alike); medians over the rounds, ratios PyTorch / kernel. Times depend on the machine and its load; the ratios are
the result.

Bandwidth: the bytes the operator must move at least (forward: read x, dt, B, C, write y; backward: read x, dt, B,
C, dy, write dx, ddt, dB, dC) over its time, against the bandwidth of ``torch`` copying a float32 tensor of the same
total traffic (read + write) in the same rounds: the roofline of a memory-bound kernel on this machine and thread
count. The kernels move more than the minimum (each route re-reads x and re-adds into y; the backward recomputes
its states), so the percentage is an efficiency, not a traffic measurement.

    python benchmarks/bench_cpu_ss2d_kernel.py --threads 2            # print the table
    python benchmarks/bench_cpu_ss2d_kernel.py --threads 2 --write    # also RESULTS_cpu_ss2d_kernel_2threads.md, .json
    python benchmarks/bench_cpu_ss2d_kernel.py --quick                # batch 1 only, fewer rounds
    python benchmarks/bench_cpu_ss2d_kernel.py --smoke                # tiny shapes: checks the script (seconds)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch


HERE = Path(__file__).resolve().parent
MODES = ("fwd", "fwd+bwd")


def stage_cases(batches: tuple[int, ...]) -> dict[str, tuple[int, int, int, int, int]]:
    """name: (batch, H, W, channels, d_state): VMamba-T's four stages and Vanilla-VMamba-T's stage 1 at 224x224."""
    from transformers_vmamba import VMambaConfig

    cases = {}
    for batch in batches:
        config = VMambaConfig.from_variant("vmamba-tiny-s1l8")
        for stage in range(4):
            side = 56 >> stage
            shape = (batch, side, side, config.inner_size(stage), config.ssm_state_size)
            cases[f"v2v-T-s{stage + 1}-b{batch}"] = shape
        vanilla = VMambaConfig.from_variant("vanilla-vmamba-tiny")
        cases[f"v0-T-s1-b{batch}"] = (batch, 56, 56, vanilla.inner_size(0), vanilla.ssm_state_size)
    return cases


SMOKE_CASES = {"smoke-N1": (1, 6, 5, 16, 1), "smoke-N16": (2, 4, 4, 8, 16)}


def minimal_bytes(case) -> tuple[int, int]:
    """Bytes (float32) the forward and the forward + backward must move at least (see the module docstring)."""
    batch, height, width, channels, state = case
    positions, element = batch * height * width, 4
    x, dt, bc = positions * channels * element, positions * 4 * channels * element, 2 * positions * 4 * state * element
    forward = x + dt + bc + x  # y has x's size
    backward = (x + dt + bc + x) + (x + dt + bc)  # read inputs and dy; write dx, ddt, dB, dC
    return forward, forward + backward


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def run_case(case, rounds: int, warmup: int) -> dict:
    from transformers_vmamba.selective_scan import ss2d_backward_torch, ss2d_forward_torch
    from transformers_vmamba.testing_utils import make_ss2d_inputs
    from vmamba_kernels import numba_ss2d

    inputs = list(make_ss2d_inputs(*case, dtype=torch.float32).values())
    grad_y = torch.randn(case[:4])
    forward_bytes, total_bytes = minimal_bytes(case)
    result = {"case": list(case)}
    y_kernel, y_torch = numba_ss2d.forward(*inputs), ss2d_forward_torch(*inputs)
    result["max_relative_difference"] = ((y_kernel - y_torch).abs().max() / y_torch.abs().max()).item()
    for mode, nbytes in zip(MODES, (forward_bytes, total_bytes)):
        if mode == "fwd":
            kernel = lambda: numba_ss2d.forward(*inputs)  # noqa: E731
            reference = lambda: ss2d_forward_torch(*inputs)  # noqa: E731
        else:
            kernel = lambda: (numba_ss2d.forward(*inputs), numba_ss2d.backward(grad_y, *inputs))  # noqa: E731
            reference = lambda: (ss2d_forward_torch(*inputs), ss2d_backward_torch(grad_y, *inputs))  # noqa: E731
        source = torch.randn(max(1, nbytes // 8))  # a copy reads and writes: nbytes of traffic
        target = torch.empty_like(source)
        copy = lambda: target.copy_(source)  # noqa: E731
        samples = {"kernel": [], "torch": [], "copy": []}
        for index in range(warmup + rounds):
            for name, fn in (("kernel", kernel), ("torch", reference), ("copy", copy)):
                start = time.perf_counter()
                fn()
                elapsed = time.perf_counter() - start
                if index >= warmup:
                    samples[name].append(elapsed)
        kernel_ms, torch_ms, copy_ms = (_median_ms(samples[name]) for name in ("kernel", "torch", "copy"))
        result[mode] = {
            "kernel_ms": kernel_ms,
            "torch_ms": torch_ms,
            "speedup": torch_ms / kernel_ms,
            "bytes": nbytes,
            "kernel_gbs": nbytes / kernel_ms / 1e6,
            "copy_gbs": nbytes / copy_ms / 1e6,
            "efficiency": copy_ms / kernel_ms,
        }
    return result


def environment(threads: int) -> dict:
    import numba

    from vmamba_kernels import numba_ss2d

    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": platform.processor() or platform.machine(),
        "cpus_visible": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "numba": numba.__version__,
        "numba_threading_layer": _threading_layer(),
        "numba_cache": numba_ss2d.CACHING,
        "python": platform.python_version(),
    }


def _threading_layer() -> str:
    import numba

    try:
        return numba.threading_layer()
    except ValueError:  # no parallel function has run yet
        return "-"


def markdown(results: dict, env: dict, command: str) -> str:
    lines = ["# CPU SS2D kernel: numba against the PyTorch path", ""]
    lines += [f"- Command: `{command}`"] + [f"- {key}: {value}" for key, value in env.items()]
    lines += [
        "",
        "Medians of interleaved rounds (float32); speed-up = PyTorch path / numba kernel. GB/s from the bytes the "
        "operator must move at least; copy = `torch` copying the same traffic in the same rounds; efficiency = "
        "kernel GB/s / copy GB/s. Absolute times depend on the machine and its load; the ratios are the result.",
        "",
        "| case (batch, H, W, C, N) | mode | numba ms | torch ms | speed-up | numba GB/s | copy GB/s | efficiency |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        for mode in MODES:
            r = result[mode]
            lines.append(
                f"| {name} {tuple(result['case'])} | {mode} | {r['kernel_ms']:.2f} | {r['torch_ms']:.2f} | "
                f"{r['speedup']:.2f}x | {r['kernel_gbs']:.1f} | {r['copy_gbs']:.1f} | {r['efficiency']:.0%} |"
            )
    worst = max(result["max_relative_difference"] for result in results.values())
    lines += ["", f"Largest relative difference between the two outputs: {worst:.1e}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch (and numba) threads")
    parser.add_argument("--quick", action="store_true", help="batch 1 only, fewer rounds")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, two rounds: checks the script only")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per case and mode")
    parser.add_argument("--cases", nargs="+", default=None, help="case names to run (default: all)")
    parser.add_argument("--write", action="store_true", help="write RESULTS_cpu_ss2d_kernel_<N>threads.md and .json")
    parser.add_argument("--out_dir", type=Path, default=HERE, help="where --write puts its files")
    args = parser.parse_args(argv)

    if args.smoke and args.write:
        parser.error("--smoke timings mean nothing; --write refuses them")
    torch.set_num_threads(args.threads)
    if args.smoke:
        cases, rounds, warmup = SMOKE_CASES, args.rounds or 2, 1
    else:
        cases = stage_cases((1,) if args.quick else (1, 8))
        rounds, warmup = args.rounds or (5 if args.quick else 15), 2
    if args.cases:
        unknown = sorted(set(args.cases) - set(cases))
        if unknown:
            raise SystemExit(f"unknown case(s) {unknown}; known: {sorted(cases)}")
        cases = {name: cases[name] for name in args.cases}

    results = {}
    for name, case in cases.items():
        results[name] = run_case(case, rounds, warmup)
        for mode in MODES:
            r = results[name][mode]
            print(
                f"{name} {case} {mode}: numba {r['kernel_ms']:.2f} ms, torch {r['torch_ms']:.2f} ms, "
                f"speed-up {r['speedup']:.2f}x, {r['kernel_gbs']:.1f} GB/s ({r['efficiency']:.0%} of copy)",
                flush=True,
            )
    env = environment(args.threads)
    command = "python benchmarks/bench_cpu_ss2d_kernel.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = markdown(results, env, command.strip())
    if args.write:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        stem = f"cpu_ss2d_kernel_{args.threads}threads"  # one file per thread count
        (args.out_dir / f"RESULTS_{stem}.md").write_text(text)
        payload = {"environment": env, "command": command, "results": results}
        (args.out_dir / f"results_{stem}.json").write_text(json.dumps(payload, indent=1))
        print(f"wrote {args.out_dir / f'RESULTS_{stem}.md'}")
    return results


if __name__ == "__main__":
    main()
