# Copyright 2026 The transformers-vmamba authors. Licensed under the MIT license.
"""GPU benchmark of the SS2D operator's Triton kernel against its PyTorch path on the same GPU, and its bandwidth.

Method: CUDA events around each call, median of ``--repeats`` timed runs after ``--warmup`` runs (the warm-up also
covers Triton's autotuning, which happens on the first call for each state size, channel count and dtypes). Both
implementations are called directly with the operator's contract (channels-last, ``check_ss2d_inputs``):
``vmamba_kernels.triton_ss2d.forward/backward`` and ``transformers_vmamba.selective_scan.ss2d_forward_torch/
ss2d_backward_torch``. "fwd" is a forward; "fwd+bwd" is a forward and the backward the operator runs in training
(which recomputes the scan from the inputs). Inputs come from ``testing_utils.make_ss2d_inputs`` (realistic ranges):
activations in the benchmark dtype, A, D and dt_bias in float32 as the model passes them.

Bandwidth: the bytes a kernel must move at least (forward: read x, dt, B, C, write y; backward: read x, dt, B, C,
dy, write dx, ddt, dB, dC) over its time, against the measured device-to-device copy bandwidth (the roofline of a
memory-bound kernel). The Triton kernels move more than that (each route reads x; y and dx are accumulated with
atomics; the backward re-reads its inputs and writes chunk states), so the percentage is an efficiency, not a
traffic measurement.

    python benchmarks/bench_kernels.py                      # all cases, fp32 and bf16, writes RESULTS_gpu.md
    python benchmarks/bench_kernels.py --sweep              # also time every autotune configuration, pinned
    python benchmarks/bench_kernels.py --cases v2v-T-s1 --dtypes bf16 --no-write
    python benchmarks/bench_kernels.py --smoke              # run this script on tiny shapes (CPU: interpreter)
    python benchmarks/bench_kernels.py --dry-run            # print the plan (no GPU needed)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_common import (  # noqa: E402
    copy_bandwidth_gbs,
    cuda_time_ms,
    environment,
    environment_markdown,
    markdown_table,
    require_cuda,
    write_section,
)


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def stage_cases() -> dict[str, tuple[int, int, int, int, int]]:
    """name: (batch, H, W, channels, d_state) of the SS2D scans of VMamba-T models at 224x224, batch 128 (stage i
    is 56 / 2**i pixels square; channels = the stage's inner size), plus a high-resolution map."""
    from transformers_vmamba import VMambaConfig

    cases = {}
    variants = (("v2v-T", "vmamba-tiny-s1l8"), ("v2-T", "vmamba-tiny-s2l5"), ("v0-T", "vanilla-vmamba-tiny"))
    for short, variant in variants:
        config = VMambaConfig.from_variant(variant)
        for stage in range(4):
            if short == "v2-T" and stage > 0:
                continue  # same scans as v2v-T except the doubled width: stage 1 shows it
            side = 56 >> stage
            cases[f"{short}-s{stage + 1}"] = (128, side, side, config.inner_size(stage), config.ssm_state_size)
    cases["v2v-T-s1-512px"] = (8, 128, 128, 96, 1)
    return cases


def make_inputs(case, dtype, device):
    from transformers_vmamba.testing_utils import make_ss2d_inputs

    batch, height, width, channels, state = case
    inputs = make_ss2d_inputs(batch, height, width, channels, state, dtype=dtype, device=device)
    inputs.update({key: inputs[key].float() for key in ("A", "D", "dt_bias")})
    return list(inputs.values())


def minimal_bytes(case, dtype) -> tuple[int, int]:
    """Bytes the forward and the backward must move at least (see the module docstring)."""
    batch, height, width, channels, state = case
    positions, element = batch * height * width, torch.tensor([], dtype=dtype).element_size()
    x, dt, bc = positions * channels * element, positions * 4 * channels * element, 2 * positions * 4 * state * element
    y = positions * channels * 4  # float32
    forward = x + dt + bc + y
    backward = x + dt + bc + y + x + dt + bc  # inputs and dy read; dx, ddt, dB, dC written in the inputs' dtypes
    return forward, backward


def time_ms(fn, warmup, repeats):
    """Median ms of fn(), or 'OOM' / an error text when it cannot run."""
    try:
        return cuda_time_ms(fn, warmup=warmup, repeats=repeats)["median_ms"]
    except torch.cuda.OutOfMemoryError:
        return "OOM"
    except Exception as err:  # recorded in the table, so one failing case does not lose the rest
        return f"error: {type(err).__name__}: {str(err)[:80]}"
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def fmt(value):
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def ratio(base, other):
    return f"{base / other:.2f}x" if isinstance(base, float) and isinstance(other, float) else "-"


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


def picked_config(kernel) -> str:
    """The configuration autotune chose at the kernel's last launch (pinned/interpreted launches: '-')."""
    config = getattr(kernel, "best_config", None)
    if config is None:
        return "-"
    return f"BLOCK_D={config.kwargs['BLOCK_D']} CHUNK={config.kwargs['CHUNK']} num_warps={config.num_warps}"


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def interpreter_config():
    import triton

    return triton.Config({"BLOCK_D": 4, "CHUNK": 4}, num_warps=1, num_stages=1)


def sweep(case, dtype, device, warmup, repeats):
    """Every configuration of the autotune tables for this state size, pinned: rows (kernel, config, ms)."""
    import triton

    from vmamba_kernels import triton_ss2d

    inputs = make_inputs(case, dtype, device)
    grad_y = torch.randn(case[:4], device=device)
    n_class = triton_ss2d._state_class(triton.next_power_of_2(case[4]))
    rows = []
    for table, backward in ((triton_ss2d.FORWARD_CONFIGS, False), (triton_ss2d.BACKWARD_CONFIGS, True)):
        configs = [interpreter_config()] if interpreting() else table[n_class]
        for config in configs:
            if backward:
                ms = time_ms(lambda: triton_ss2d.backward(grad_y, *inputs, config=config), warmup, repeats)
            else:
                ms = time_ms(lambda: triton_ss2d.forward(*inputs, config=config), warmup, repeats)
            rows.append(["bwd" if backward else "fwd", f"{config.kwargs} w{config.num_warps}", fmt(ms)])
    return rows


def bench_case(name, case, dtype_name, device, copy_bw, args):
    """Rows of the timing, roofline and sweep tables, and the check lines, of one case in one dtype."""
    from transformers_vmamba.selective_scan import ss2d_backward_torch, ss2d_forward_torch
    from vmamba_kernels import triton_ss2d

    dtype = DTYPES[dtype_name]
    inputs = make_inputs(case, dtype, device)
    grad_y = torch.randn(case[:4], device=device)
    checks = []
    try:
        with torch.no_grad():
            difference = relative_difference(triton_ss2d.forward(*inputs), ss2d_forward_torch(*inputs))
        checks.append(f"{name} {dtype_name}: max relative difference Triton vs torch = {difference:.2e}")
    except torch.cuda.OutOfMemoryError:
        checks.append(f"{name} {dtype_name}: not compared (the torch path ran out of memory)")
    implementations = {
        "Triton": (lambda: triton_ss2d.forward(*inputs), lambda: triton_ss2d.backward(grad_y, *inputs)),
        "torch": (lambda: ss2d_forward_torch(*inputs), lambda: ss2d_backward_torch(grad_y, *inputs)),
    }
    times = {}
    for impl, (forward, backward) in implementations.items():
        times[impl, "fwd"] = time_ms(forward, args.warmup, args.repeats)
        times[impl, "bwd"] = time_ms(backward, args.warmup, args.repeats)
        both = (times[impl, "fwd"], times[impl, "bwd"])
        times[impl, "fwd+bwd"] = sum(both) if all(isinstance(t, float) for t in both) else "-"
    rows = []
    for mode in args.modes:
        triton_ms, torch_ms = times["Triton", mode], times["torch", mode]
        rows.append([name, f"{case}", dtype_name, mode, fmt(triton_ms), fmt(torch_ms), ratio(torch_ms, triton_ms)])
        print(rows[-1], flush=True)
    roofline_rows = []
    kernels = {"fwd": triton_ss2d.ss2d_forward_kernel, "bwd": triton_ss2d.ss2d_backward_kernel}
    for (kernel_name, kernel), n_bytes in zip(kernels.items(), minimal_bytes(case, dtype)):
        ms = times["Triton", kernel_name]
        if isinstance(ms, float):
            gbs = n_bytes / (ms * 1e-3) / 1e9
            cells = [f"{ms:.3f}", f"{gbs:.0f}", f"{100 * gbs / copy_bw:.0f}%"]
        else:
            cells = [fmt(ms), "-", "-"]
        roofline_rows.append([name, dtype_name, kernel_name, *cells, picked_config(kernel)])
    sweep_rows = [[name, dtype_name, *row] for row in sweep(case, dtype, device, 2, 5)] if args.sweep else []
    return rows, roofline_rows, sweep_rows, checks


def dry_run(args) -> None:
    """What a run would measure, and whether the Triton kernel can run here; needs no GPU."""
    import vmamba_kernels

    cases = stage_cases()
    unknown = set(args.cases or ()) - set(cases)
    if unknown:
        raise SystemExit(f"unknown case(s) {sorted(unknown)}; known: {', '.join(cases)}")
    for name in args.cases or cases:
        print(f"{name} {cases[name]} dtypes={args.dtypes} modes={args.modes} sweep={args.sweep}")
    kernel, reason = vmamba_kernels.ss2d_kernel("cuda")
    print("Triton kernel:", "available" if kernel is not None else f"unavailable ({reason})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", default=None, help="default: all (see stage_cases)")
    parser.add_argument("--dtypes", nargs="*", default=None, choices=list(DTYPES), help="default: fp32 bf16")
    parser.add_argument("--modes", nargs="*", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--sweep", action="store_true", help="also time every autotune configuration, pinned")
    parser.add_argument("--no-write", action="store_true", help="print only; do not update RESULTS_gpu.md")
    parser.add_argument("--smoke", action="store_true", help="run this script on tiny shapes (CPU: interpreter)")
    parser.add_argument("--dry-run", action="store_true", help="print the planned measurements and exit")
    args = parser.parse_args(argv)
    args.dtypes = args.dtypes or (["bf16"] if args.smoke else ["fp32", "bf16"])

    if args.dry_run:
        return dry_run(args)
    device = require_cuda("bench_kernels.py", smoke=args.smoke)
    if args.smoke and device.type != "cuda":
        # Triton decides interpretation when a kernel is defined, so before anything imports triton.language.
        os.environ["TRITON_INTERPRET"] = "1"
    cases = stage_cases()
    unknown = set(args.cases or ()) - set(cases)
    if unknown:
        raise SystemExit(f"unknown case(s) {sorted(unknown)}; known: {', '.join(cases)}")
    names = args.cases or list(cases)
    if args.smoke:  # one case per state size unless named; tiny maps
        names = args.cases or ["v2v-T-s1", "v0-T-s1"]
        cases = {name: (1, 3, 4, 5, state) for name, (_, _, _, _, state) in cases.items()}
        args.warmup, args.repeats, args.no_write = 0, 1, True

    import vmamba_kernels

    kernel, reason = vmamba_kernels.ss2d_kernel("cuda")
    if kernel is None and not args.smoke:
        raise SystemExit(f"bench_kernels.py: the Triton kernel cannot run: {reason}")
    from vmamba_kernels import triton_ss2d

    # The interpreter (--smoke on CPU) runs anything slowly: the smallest tiles, pinned.
    pin = triton_ss2d.pinned_config(interpreter_config()) if interpreting() else contextlib.nullcontext()

    env = environment()
    copy_bw = copy_bandwidth_gbs()
    print(environment_markdown(env), f"\ncopy bandwidth: {copy_bw:.0f} GB/s", flush=True)

    rows, roofline_rows, sweep_rows, checks = [], [], [], []
    with pin:
        for name in names:
            for dtype_name in args.dtypes:
                found = bench_case(name, cases[name], dtype_name, device, copy_bw, args)
                for collected, new in zip((rows, roofline_rows, sweep_rows, checks), found):
                    collected += new

    body = [
        "## Kernels (`benchmarks/bench_kernels.py`)",
        "",
        environment_markdown(env),
        f"- measured device copy bandwidth (read + write): {copy_bw:.0f} GB/s",
        f"- method: CUDA events, median of {args.repeats} runs after {args.warmup} warm-up runs (autotuning happens "
        "in the warm-up); fwd+bwd = forward time + backward time; inputs from make_ss2d_inputs, A/D/dt_bias float32",
        "",
        "### SS2D operator: Triton kernel vs the PyTorch path (ms; speed-up = torch / Triton)",
        "",
        markdown_table(["case", "(batch, H, W, C, N)", "dtype", "mode", "Triton", "torch", "speed-up"], rows),
        "",
        "### Triton kernels against the copy roofline (minimal bytes / kernel time)",
        "",
        markdown_table(["case", "dtype", "kernel", "ms", "GB/s", "% of copy bandwidth", "autotuned config"],
                       roofline_rows),  # fmt: skip
        "",
        "### Checks",
        "",
        *[f"- {check}" for check in checks],
    ]
    if sweep_rows:
        body += ["", "### Every autotune configuration, pinned (ms)", "",
                 markdown_table(["case", "dtype", "kernel", "config", "ms"], sweep_rows)]  # fmt: skip
    text = "\n".join(body)
    print(text)
    if not args.no_write:
        write_section("kernels", text)


if __name__ == "__main__":
    main()
