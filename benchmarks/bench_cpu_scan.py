"""CPU latency of the selective scan: the step-by-step reference loop against the chunked scan.

Shapes are VMamba's per-stage scans at 224x224, batch 1 (four directions folded into the channels: K*D).
A second table times the whole SS2D core (``ss2d_selective_scan_torch``): cross-scan copies + reference loop,
cross-scan copies + chunked scan, and the fused path that reads the routes straight into the chunked layout.
All paths run on the same inputs in the same process; results are medians after a warm-up, reported as
ratios to the reference. Usage::

    python benchmarks/bench_cpu_scan.py --threads 1 2 --output benchmarks/RESULTS_cpu_scan.md
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from transformers_vmamba.selective_scan import (  # noqa: E402
    selective_scan_chunked,
    selective_scan_reference,
    ss2d_selective_scan_torch,
)


# name, batch, K, D (channels per direction), d_state N, L
CASES = [
    ("v0-T stage 1", 1, 4, 192, 16, 56 * 56),
    ("v0-T stage 2", 1, 4, 384, 16, 28 * 28),
    ("v0-T stage 3", 1, 4, 768, 16, 14 * 14),
    ("v0-T stage 4", 1, 4, 1536, 16, 7 * 7),
    ("v2 tiny (s2l5) stage 1", 1, 4, 192, 1, 56 * 56),
    ("v2v tiny (s1l8) stage 1", 1, 4, 96, 1, 56 * 56),
    ("v2v tiny (s1l8) stage 2", 1, 4, 192, 1, 28 * 28),
    ("v2v tiny (s1l8) stage 3", 1, 4, 384, 1, 14 * 14),
    ("v2v tiny (s1l8) stage 4", 1, 4, 768, 1, 7 * 7),
    ("v0-T stage 1, batch 8", 8, 4, 192, 16, 56 * 56),
]

# name, batch, D (channels), d_state N, H, W
SS2D_CASES = [
    ("v2v tiny (s1l8) stage 1", 1, 96, 1, 56, 56),
    ("v2v tiny (s1l8) stage 2", 1, 192, 1, 28, 28),
    ("v2v tiny (s1l8) stage 3", 1, 384, 1, 14, 14),
    ("v2v tiny (s1l8) stage 4", 1, 768, 1, 7, 7),
    ("v0-T stage 1", 1, 192, 16, 56, 56),
    ("v2v tiny stage 1, 512x384 input", 1, 96, 1, 128, 96),
]


def chunked_via_cross_scan(*args, **kwargs):
    """The chunked scan under another name, so ss2d_selective_scan_torch takes its cross_scan path."""
    return selective_scan_chunked(*args, **kwargs)


def make_ss2d_inputs(batch, channels, d_state, height, width, seed=0):
    scan = make_inputs(batch, 4, channels, d_state, height * width, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    return dict(
        x=torch.randn(batch, channels, height, width, generator=generator),
        dts=scan["delta"].reshape(batch, 4, channels, height, width),
        A=scan["A"],
        Bs=scan["B"].reshape(batch, 4, d_state, height, width),
        Cs=scan["C"].reshape(batch, 4, d_state, height, width),
        D=scan["D"],
        delta_bias=scan["delta_bias"],
    )


def make_inputs(batch, groups, per_group, d_state, length, seed=0):
    """Inputs in the ranges VMamba produces: A = -exp(A_log) with A_log = log(1..N), dt = softplus(small)."""
    generator = torch.Generator().manual_seed(seed)
    channels = groups * per_group
    return dict(
        u=torch.randn(batch, channels, length, generator=generator),
        delta=torch.randn(batch, channels, length, generator=generator),
        A=-torch.arange(1, d_state + 1, dtype=torch.float32).repeat(channels, 1),
        B=torch.randn(batch, groups, d_state, length, generator=generator),
        C=torch.randn(batch, groups, d_state, length, generator=generator),
        D=torch.ones(channels),
        delta_bias=torch.rand(channels, generator=generator) * 4 - 5,
    )


def time_call(fn, inputs, backward, repeats):
    """Median wall time in ms after one warm-up call."""
    times = []
    for index in range(repeats + 1):
        if backward:
            leaves = {name: t.clone().requires_grad_(True) for name, t in inputs.items()}
            start = time.perf_counter()
            fn(**leaves).sum().backward()
        else:
            start = time.perf_counter()
            with torch.no_grad():
                fn(**inputs)
        if index:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1], help="one run per thread count")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of the chunked scan")
    parser.add_argument("--reference-repeats", type=int, default=2, help="timed calls of the (slow) reference")
    parser.add_argument("--skip-reference-backward-above", type=int, default=5 * 10**7,
                        help="skip the reference fwd+bwd when batch*K*D*N*L exceeds this (it is very slow)")
    parser.add_argument("--output", type=Path, help="write a markdown table here")
    args = parser.parse_args()
    runs = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"--- {threads} thread(s)", flush=True)
        runs.append((threads, run_cases(args), run_ss2d_cases(args), os.getloadavg()))
    if args.output:
        write_markdown(args, runs)


def run_cases(args):
    rows = []
    for name, batch, groups, per_group, d_state, length in CASES:
        inputs = make_inputs(batch, groups, per_group, d_state, length)
        with torch.no_grad():
            expected = selective_scan_reference(**{n: t.double() for n, t in inputs.items()})
            error = (selective_scan_chunked(**inputs).double() - expected).abs().max() / expected.abs().max()
        size = batch * groups * per_group * d_state * length
        ref_repeats = args.reference_repeats
        times = {
            "ref_fwd": time_call(selective_scan_reference, inputs, False, ref_repeats),
            "fast_fwd": time_call(selective_scan_chunked, inputs, False, args.repeats),
            "ref_bwd": (time_call(selective_scan_reference, inputs, True, ref_repeats)
                        if size <= args.skip_reference_backward_above else float("nan")),
            "fast_bwd": time_call(selective_scan_chunked, inputs, True, args.repeats),
        }
        rows.append((name, f"{batch}x{groups}*{per_group}", d_state, length, times, float(error)))
        print(f"{name:26s} ref fwd {times['ref_fwd']:9.1f} ms  chunked fwd {times['fast_fwd']:8.1f} ms "
              f"(x{times['ref_fwd'] / times['fast_fwd']:.1f})  ref fwd+bwd {times['ref_bwd']:9.1f} ms  "
              f"chunked fwd+bwd {times['fast_bwd']:8.1f} ms (x{times['ref_bwd'] / times['fast_bwd']:.1f})  "
              f"rel err {error:.1e}", flush=True)
    return rows


def run_ss2d_cases(args):
    rows = []
    for name, batch, channels, d_state, height, width in SS2D_CASES:
        inputs = make_ss2d_inputs(batch, channels, d_state, height, width)
        paths = {
            "reference": lambda **kw: ss2d_selective_scan_torch(**kw, scan_fn=selective_scan_reference),
            "cross_scan + chunked": lambda **kw: ss2d_selective_scan_torch(**kw, scan_fn=chunked_via_cross_scan),
            "fused": ss2d_selective_scan_torch,
        }
        with torch.no_grad():
            expected = paths["reference"](**{n: t.double() for n, t in inputs.items()})
            error = (paths["fused"](**inputs).double() - expected).abs().max() / expected.abs().max()
        times = {}
        for path, fn in paths.items():
            repeats = args.reference_repeats if path == "reference" else args.repeats
            times[path] = (time_call(fn, inputs, False, repeats), time_call(fn, inputs, True, repeats))
        rows.append((name, f"{batch}x{channels}", d_state, f"{height}x{width}", times, float(error)))
        print(f"ss2d {name:32s} " + "  ".join(f"{p}: {f:.1f} / {b:.1f} ms" for p, (f, b) in times.items())
              + f"  rel err {error:.1e}", flush=True)
    return rows


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_markdown(args, runs):
    threads_flag = " ".join(str(t) for t in args.threads)
    lines = [
        "# CPU selective scan: reference loop vs chunked scan",
        "",
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Machine: {cpu_name()}, {os.cpu_count()} CPUs visible, {platform.system()} {platform.release()}",
        f"- torch {torch.__version__}, float32 inputs",
        f"- Command: `python benchmarks/bench_cpu_scan.py --threads {threads_flag} --repeats {args.repeats} "
        f"--reference-repeats {args.reference_repeats}`",
        "- Median wall time after one warm-up call. Speed-up = reference loop / chunked scan, measured in the same",
        "  run: the CPUs may be shared with other jobs, so compare ratios within a run rather than absolute times.",
        "  Reference fwd+bwd is skipped above --skip-reference-backward-above elements.",
        "  Rel. error: max |chunked (float32) - reference (float64)| / max |reference|.",
    ]
    for threads, rows, ss2d_rows, load in runs:
        lines += [
            "",
            f"## {threads} thread{'s' if threads > 1 else ''} (`torch.set_num_threads({threads})`; "
            f"load average after the run: {', '.join(f'{v:.1f}' for v in load)})",
            "",
            "Selective scan alone (`selective_scan_reference` vs `selective_scan_chunked`):",
            "",
            "| scan | batch x K*D | N | L | ref fwd ms | chunked fwd ms | fwd speed-up | ref fwd+bwd ms | "
            "chunked fwd+bwd ms | fwd+bwd speed-up | rel. error |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, channels, d_state, length, t, error in rows:
            ref_bwd = "skipped" if math.isnan(t["ref_bwd"]) else f"{t['ref_bwd']:.1f}"
            bwd_ratio = "-" if math.isnan(t["ref_bwd"]) else f"{t['ref_bwd'] / t['fast_bwd']:.1f}x"
            lines.append(
                f"| {name} | {channels} | {d_state} | {length} | {t['ref_fwd']:.1f} | {t['fast_fwd']:.1f} | "
                f"{t['ref_fwd'] / t['fast_fwd']:.1f}x | {ref_bwd} | {t['fast_bwd']:.1f} | {bwd_ratio} | {error:.1e} |"
            )
        lines += [
            "",
            "Whole SS2D core (`ss2d_selective_scan_torch`), fwd / fwd+bwd ms; speed-up of the fused path over the",
            "reference (cross_scan copies + reference loop) and over cross_scan copies + chunked scan:",
            "",
            "| SS2D | batch x D | N | H x W | reference | cross_scan + chunked | fused | fused vs reference | "
            "fused vs cross_scan + chunked | rel. error (fused) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, channels, d_state, size, t, error in ss2d_rows:
            ref, copies, fused = t["reference"], t["cross_scan + chunked"], t["fused"]
            lines.append(
                f"| {name} | {channels} | {d_state} | {size} | {ref[0]:.1f} / {ref[1]:.1f} | "
                f"{copies[0]:.1f} / {copies[1]:.1f} | {fused[0]:.1f} / {fused[1]:.1f} | "
                f"{ref[0] / fused[0]:.1f}x / {ref[1] / fused[1]:.1f}x | "
                f"{copies[0] / fused[0]:.2f}x / {copies[1] / fused[1]:.2f}x | {error:.1e} |"
            )
    text = "\n".join(lines) + "\n"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=args.output.parent, delete=False, suffix=".tmp") as handle:
        handle.write(text)
    os.replace(handle.name, args.output)


if __name__ == "__main__":
    main()
