#!/usr/bin/env python
"""CPU inference benchmark: VMamba-T (s1l8) against Transformers' Swin-T, ConvNeXt-T and DeiT-S (ViT-S/16).

Two measurements, every model in the same process with the same torch thread count, so the figures are
comparable as ratios even on a busy machine:

(a) latency at 224x224, batch 1 and 8 (median of interleaved rounds after warm-up), ratios to Swin-T and
    ConvNeXt-T;
(b) a resolution sweep at batch 1 (224 ... 768): latency, and peak memory of one forward pass measured as the
    growth of the process's resident set (VmHWM - VmRSS before the call, in a fresh subprocess per point,
    because torch's CPU allocator has no statistics and tracemalloc does not see it).

All models are randomly initialised (timings do not depend on the weights) and run in float32 under
``torch.inference_mode()``. Writes ``RESULTS_cpu.md``, ``resolution_sweep_cpu.png`` and ``results_cpu.json``
into ``--out_dir`` (``--quick``: fewer rounds and resolutions, files suffixed ``_quick``).

Usage::

    python benchmarks/bench_cpu_models.py            # full run (~10 min on 2 cores)
    python benchmarks/bench_cpu_models.py --quick    # smoke run (~1-2 min)
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForImageClassification, ConvNextConfig, SwinConfig, ViTConfig

from transformers_vmamba import VMambaConfig


BASELINES = ("Swin-T", "ConvNeXt-T")


def build_config(name: str):
    """Architecture configs at their published sizes (Transformers' defaults are the -T / -B sizes)."""
    if name == "VMamba-T":
        return VMambaConfig.from_variant("vmamba-tiny-s1l8")
    if name == "Swin-T":
        return SwinConfig()  # embed 96, depths 2-2-6-2, window 7
    if name == "ConvNeXt-T":
        return ConvNextConfig()  # widths 96-768, depths 3-3-9-3
    if name == "DeiT-S":
        return ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536)
    if name == "ViT-B/16":
        return ViTConfig()
    raise ValueError(f"unknown model {name!r}; known: VMamba-T, Swin-T, ConvNeXt-T, DeiT-S, ViT-B/16")


def build_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = AutoModelForImageClassification.from_config(build_config(name))
    return model.eval()


def scan_kernel_name() -> str:
    """What runs VMamba's scan on CPU under VMAMBA_SCAN_BACKEND=auto: the compiled kernel, or why there is none."""
    try:
        import vmamba_kernels

        kernel, reason = vmamba_kernels.ss2d_kernel("cpu")
    except ImportError as error:
        return f"none ({error})"
    return kernel.__name__ if kernel is not None else f"none ({reason})"


def forward_kwargs(name: str) -> dict:
    # ViT's learned position embeddings are for 224; interpolate them for the other resolutions.
    return {"interpolate_pos_encoding": True} if name in ("DeiT-S", "ViT-B/16") else {}


def count_params(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def time_interleaved(models: dict, inputs: torch.Tensor, rounds: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per forward for each model; one call per model per round, in rotating order, so that load
    changes on a shared machine hit every model alike."""
    names = list(models)
    times = {name: [] for name in names}
    with torch.inference_mode():
        for name in names:
            for _ in range(warmup):
                models[name](inputs, **forward_kwargs(name))
        for r in range(rounds):
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                start = time.perf_counter()
                models[name](inputs, **forward_kwargs(name))
                times[name].append(time.perf_counter() - start)
    return times


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_probe(name: str, resolution: int, threads: int) -> dict:
    """Peak extra resident memory (MiB) of one batch-1 forward pass. Meant for a fresh process. A 224x224 forward
    (the smallest size every model here accepts) first loads what every process loads once (lazy imports, the scan
    kernels' compiled code, thread pools), which is not the forward's memory."""
    torch.set_num_threads(threads)
    model = build_model(name)
    with torch.inference_mode():
        model(torch.randn(1, 3, 224, 224), **forward_kwargs(name))
    inputs = torch.randn(1, 3, resolution, resolution)
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    before = _proc_status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets VmHWM (peak RSS) to the current RSS
    with torch.inference_mode():
        model(inputs, **forward_kwargs(name))
    peak = _proc_status_kib("VmHWM")
    return {"model": name, "resolution": resolution, "peak_mib": (peak - before) / 1024.0}


def run_memory_probe(name: str, resolution: int, threads: int) -> float | None:
    command = [sys.executable, __file__, "--memory_probe", name, str(resolution), "--threads", str(threads)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        print(f"  memory probe {name} @ {resolution} failed:\n{result.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mib"]


def profile_model(model: torch.nn.Module, inputs: torch.Tensor, rows: int = 15) -> str:
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        model(inputs)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            model(inputs)
    by_op = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    by_shape = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=rows, max_shapes_column_width=70
    )
    return f"By operator:\n{by_op}\nBy operator and input shapes:\n{by_shape}"


def machine_info(threads: int) -> dict:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
    }


def load_average() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def write_atomic(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def plot_sweep(sweep: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, points in sweep["models"].items():
        res = [p["resolution"] for p in points]
        ax_time.plot(res, [p["latency_ms"] for p in points], marker="o", label=name)
        mem = [(p["resolution"], p["peak_mib"]) for p in points if p.get("peak_mib") is not None]
        if mem:
            ax_mem.plot([m[0] for m in mem], [m[1] for m in mem], marker="o", label=name)
    ax_time.set(xlabel="input resolution (px, square)", ylabel="latency, batch 1 (ms)", yscale="log")
    ax_mem.set(xlabel="input resolution (px, square)", ylabel="peak forward memory (MiB)", yscale="log")
    ax_time.set_title("CPU latency vs resolution")
    ax_mem.set_title("CPU peak activation memory vs resolution")
    for ax in (ax_time, ax_mem):
        ax.grid(True, which="both", alpha=0.3)
        ax.set_xticks(sweep["resolutions"])
        ax.legend()
    info = sweep["machine"]
    fig.suptitle(f"{info['cpu']}, torch threads: {info['torch_threads']}, torch {info['torch']}, float32", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def markdown_report(results: dict) -> str:
    info = results["machine"]
    lines = [
        "# CPU benchmark: VMamba-T against Swin-T, ConvNeXt-T and DeiT-S",
        "",
        f"Generated by `benchmarks/bench_cpu_models.py{' --quick' if results['quick'] else ''}` on "
        f"{info['date_utc']} UTC. CPU: {info['cpu']} ({info['logical_cpus']} logical CPUs), "
        f"torch threads: {info['torch_threads']}, torch {info['torch']}, transformers {info['transformers']}, "
        "float32, `torch.inference_mode()`, random weights, classification heads (1000 classes).",
        "",
        "The machine is shared with other jobs (1/5/15-minute load average before the run: "
        f"{results['load_before']}; after: {results['load_after']}). Rounds are interleaved across models so load "
        "changes hit all models alike; compare ratios, not absolute times.",
        "",
        "Attention models (DeiT-S, Swin-T) run with Transformers' default attention implementation on CPU (SDPA), "
        "which does not materialise the attention matrix: their memory grows linearly, their compute does not.",
        "",
        f"VMamba scan backend: {results.get('vmamba_backend', 'auto')}"
        + (f" (CPU kernel: {results['scan_kernel']})." if results.get("scan_kernel") else "."),
        "",
    ]
    if results.get("note"):
        lines += [results["note"], ""]
    latency = results.get("latency")
    if latency:
        lines += [
            "## (a) Latency at 224x224",
            "",
            "Median of "
            + ", ".join(f"{r} (batch {b})" for b, r in latency["rounds"].items())
            + f" interleaved rounds after {latency['warmup']} warm-up call(s) per model.",
            "",
            "| model | params (M) | batch | median (ms) | min (ms) | ms / image | vs Swin-T | vs ConvNeXt-T |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in latency["rows"]:
            lines.append(
                f"| {row['model']} | {row['params_m']:.1f} | {row['batch']} | {row['median_ms']:.1f} | "
                f"{row['min_ms']:.1f} | {row['median_ms'] / row['batch']:.1f} | {row['vs_Swin-T']:.2f}x | "
                f"{row['vs_ConvNeXt-T']:.2f}x |"
            )
        lines += [
            "",
            "Ratios are latency / baseline latency in the same run: below 1.00x is faster than the baseline.",
            "",
        ]
        for batch, verdict in latency["verdicts"].items():
            lines.append(f"- batch {batch}: {verdict}")
        lines.append("")
    sweep = results.get("sweep")
    if sweep:
        names = list(sweep["models"])
        lines += [
            "## (b) Resolution sweep, batch 1",
            "",
            f"Latency: median of {sweep['rounds']} interleaved rounds after warm-up. Peak memory: growth of the "
            "resident set during one forward pass (VmHWM minus VmRSS before the call, fresh process per point; "
            "includes activations and temporary buffers, not the weights).",
            "",
            f"![resolution sweep](resolution_sweep_cpu{results['suffix']}.png)",
            "",
            "| resolution | " + " | ".join(f"{n} ms" for n in names) + " | "
            + " | ".join(f"{n} MiB" for n in names) + " |",
            "|---:|" + "---:|" * (2 * len(names)),
        ]
        for i, res in enumerate(sweep["resolutions"]):
            cells = [f"{sweep['models'][n][i]['latency_ms']:.0f}" for n in names]
            mem = [sweep["models"][n][i].get("peak_mib") for n in names]
            cells += ["n/a" if m is None else f"{m:.0f}" for m in mem]
            lines.append(f"| {res} | " + " | ".join(cells) + " |")
        lines += ["", "Latency relative to VMamba-T at the same resolution (above 1.00x: VMamba-T is faster):", ""]
        others = [n for n in names if n != "VMamba-T"]
        lines += ["| resolution | " + " | ".join(others) + " |", "|---:|" + "---:|" * len(others)]
        for i, res in enumerate(sweep["resolutions"]):
            base = sweep["models"]["VMamba-T"][i]["latency_ms"]
            lines.append(
                f"| {res} | " + " | ".join(f"{sweep['models'][n][i]['latency_ms'] / base:.2f}x" for n in others) + " |"
            )
        lines += ["", "Growth from the smallest to the largest resolution (pixels grow "
                  f"{(sweep['resolutions'][-1] / sweep['resolutions'][0]) ** 2:.1f}x):", ""]
        for n in names:
            pts = sweep["models"][n]
            growth = pts[-1]["latency_ms"] / pts[0]["latency_ms"]
            lines.append(f"- {n}: latency x{growth:.1f}")
        lines.append("")
    if results.get("findings"):  # written by hand into the results JSON after reading the numbers
        lines += ["## Findings", ""] + [f"- {item}" for item in results["findings"]] + [""]
    if results.get("profile"):
        lines += [
            "## Where VMamba-T's CPU time goes (torch profiler, 224x224, batch 1, by self CPU time)",
            "",
            "```",
            results["profile"].rstrip(),
            "```",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few rounds, two resolutions: a smoke run")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all logical CPUs)")
    parser.add_argument("--out_dir", default=str(Path(__file__).resolve().parent))
    parser.add_argument("--note", default=None, help="free text added to the report (e.g. why this thread count)")
    parser.add_argument("--suffix", default=None, help="output file suffix (default: '_quick' with --quick)")
    parser.add_argument("--resolutions", default=None, help="comma-separated sweep resolutions")
    parser.add_argument("--sweep_models", default="VMamba-T,DeiT-S,Swin-T,ConvNeXt-T")
    parser.add_argument("--skip_latency", action="store_true")
    parser.add_argument("--skip_sweep", action="store_true")
    parser.add_argument("--skip_memory", action="store_true", help="sweep latency only")
    parser.add_argument("--profile", action="store_true", help="always profile VMamba-T (default: only if slower)")
    parser.add_argument("--memory_probe", nargs=2, metavar=("MODEL", "RESOLUTION"), help=argparse.SUPPRESS)
    parser.add_argument("--report_only", metavar="JSON", help="rewrite the markdown and plot from a results JSON")
    args = parser.parse_args(argv)

    if args.report_only:
        saved = json.loads(Path(args.report_only).read_text())
        out_dir, suffix = Path(args.report_only).parent, saved.get("suffix", "")
        saved["latency"]["rounds"] = {int(b): r for b, r in saved["latency"]["rounds"].items()}
        if saved.get("sweep"):
            plot_sweep(saved["sweep"], out_dir / f"resolution_sweep_cpu{suffix}.png")
        write_atomic(out_dir / f"RESULTS_cpu{suffix}.md", markdown_report(saved))
        return

    threads = args.threads or os.cpu_count() or 1
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe[0], int(args.memory_probe[1]), threads)))
        return
    torch.set_num_threads(threads)

    out_dir = Path(args.out_dir)
    suffix = args.suffix if args.suffix is not None else ("_quick" if args.quick else "")
    results = {
        "quick": args.quick,
        "suffix": suffix,
        "note": args.note,
        "machine": machine_info(threads),
        "load_before": load_average(),
        "vmamba_backend": os.environ.get("VMAMBA_SCAN_BACKEND", "auto"),
        "scan_kernel": scan_kernel_name(),
    }
    print(f"{results['machine']}  load {results['load_before']}", flush=True)

    vmamba_slower = False
    if not args.skip_latency:
        names = ["VMamba-T", *BASELINES]
        models = {name: build_model(name) for name in names}
        rounds_by_batch = {1: 3, 8: 2} if args.quick else {1: 15, 8: 6}
        warmup = 1 if args.quick else 2
        rows, verdicts = [], {}
        for batch, rounds in rounds_by_batch.items():
            inputs = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
            times = time_interleaved(models, inputs, rounds, warmup)
            medians = {name: statistics.median(t) * 1e3 for name, t in times.items()}
            for name in names:
                rows.append({
                    "model": name,
                    "params_m": count_params(models[name]),
                    "batch": batch,
                    "median_ms": medians[name],
                    "min_ms": min(times[name]) * 1e3,
                    "times_ms": [t * 1e3 for t in times[name]],
                    **{f"vs_{b}": medians[name] / medians[b] for b in BASELINES},
                })
                print(f"batch {batch} {name:11s} median {medians[name]:8.1f} ms", flush=True)
            ratio = medians["VMamba-T"] / medians["Swin-T"]
            vmamba_slower |= ratio > 1.0
            verdicts[batch] = (
                f"VMamba-T takes {ratio:.2f}x Swin-T's time: "
                + ("target met (no slower than Swin-T)." if ratio <= 1.0 else "target NOT met (slower than Swin-T).")
            )
        results["latency"] = {"rounds": rounds_by_batch, "warmup": warmup, "rows": rows, "verdicts": verdicts}
        if args.profile or (vmamba_slower and not args.quick):
            results["profile"] = profile_model(models["VMamba-T"], torch.randn(1, 3, 224, 224))
            print(results["profile"], flush=True)
        del models
        gc.collect()

    if not args.skip_sweep:
        names = [n.strip() for n in args.sweep_models.split(",") if n.strip()]
        if "VMamba-T" not in names:
            raise ValueError("--sweep_models must include VMamba-T (the other models are compared to it)")
        if args.resolutions:
            resolutions = [int(r) for r in args.resolutions.split(",")]
        else:
            resolutions = [224, 384] if args.quick else [224, 320, 384, 512, 640, 768]
        rounds = 2 if args.quick else 3
        models = {name: build_model(name) for name in names}
        sweep = {"resolutions": resolutions, "rounds": rounds, "machine": results["machine"],
                 "models": {name: [] for name in names}}
        for res in resolutions:
            inputs = torch.randn(1, 3, res, res, generator=torch.Generator().manual_seed(0))
            times = time_interleaved(models, inputs, rounds, warmup=1)
            for name in names:
                point = {"resolution": res, "latency_ms": statistics.median(times[name]) * 1e3,
                         "times_ms": [t * 1e3 for t in times[name]]}
                sweep["models"][name].append(point)
                print(f"{res:4d}px {name:11s} median {point['latency_ms']:9.1f} ms", flush=True)
        del models
        gc.collect()
        if not args.skip_memory:
            for res in resolutions:
                for name in names:
                    peak = run_memory_probe(name, res, threads)
                    next(p for p in sweep["models"][name] if p["resolution"] == res)["peak_mib"] = peak
                    print(f"{res:4d}px {name:11s} peak forward memory {peak} MiB", flush=True)
        results["sweep"] = sweep
        plot_sweep(sweep, out_dir / f"resolution_sweep_cpu{suffix}.png")

    results["load_after"] = load_average()
    write_atomic(out_dir / f"results_cpu{suffix}.json", json.dumps(results, indent=2))
    write_atomic(out_dir / f"RESULTS_cpu{suffix}.md", markdown_report(results))
    print(f"wrote {out_dir / f'RESULTS_cpu{suffix}.md'}", flush=True)


if __name__ == "__main__":
    main()
