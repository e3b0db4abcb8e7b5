#!/usr/bin/env python
"""CPU targets of the layout/operator work: the three VMamba-T designs against Swin-T and ConvNeXt-T.

Everything is a ratio to Swin-T measured in the same process (interleaved rounds, medians), so a busy machine
shifts every model alike:

- eager inference latency at 224x224, batch 1 and 8, for each thread count asked (``--threads 1,2``);
- ``torch.compile`` (Inductor, plain and with freezing; compile time = the first call, from cold caches) at each
  batch size of ``--compile_batches`` (default 1), timed in the same rounds as eager, unless ``--skip_compile``;
- a training step (forward + backward of the cross-entropy, batch 8, train mode) and its peak memory, measured as
  the growth of the resident set in a fresh process per model (torch's CPU allocator keeps no statistics).

Random weights, float32. Writes ``RESULTS_cpu_targets.md`` and ``results_cpu_targets.json`` next to this script
with ``--write`` (``--quick``: a few rounds, for a smoke run; never written over the full results).

    python benchmarks/bench_cpu_targets.py --threads 1,2 --skip_compile --write
    python benchmarks/bench_cpu_targets.py --threads 1,2 --compile_batches 1,8 --skip_train \\
        --name cpu_targets_compiled --write
    python benchmarks/bench_cpu_targets.py --quick --skip_compile
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import copy
import ctypes
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


# Compile times from cold caches: Inductor's on-disk caches would make every rerun look fast. A temporary folder for
# the whole process, set before torch is imported, so that the user's own Inductor cache is never read or written;
# each compile round then gets an empty folder of its own when torch offers one (cold_inductor_caches).
_compiles = "--skip_compile" not in sys.argv and "--memory_probe" not in sys.argv
if _compiles and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    _cache_dir = tempfile.mkdtemp(prefix="bench_inductor_")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _cache_dir
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)

import torch  # noqa: E402
from transformers import AutoModelForImageClassification, ConvNextConfig, SwinConfig  # noqa: E402


sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cpu_models import (  # noqa: E402
    _proc_status_kib,
    load_average,
    machine_info,
    scan_kernel_name,
    write_atomic,
)

from transformers_vmamba import VMambaConfig  # noqa: E402


MODELS = {
    "VMamba-T s1l8": lambda: VMambaConfig.from_variant("vmamba-tiny-s1l8", num_labels=1000),
    "VMamba-T s2l5": lambda: VMambaConfig.from_variant("vmamba-tiny-s2l5", num_labels=1000),
    "Vanilla-VMamba-T": lambda: VMambaConfig.from_variant("vanilla-vmamba-tiny", num_labels=1000),
    "Swin-T": lambda: SwinConfig(num_labels=1000),  # embed 96, depths 2-2-6-2, window 7
    "ConvNeXt-T": lambda: ConvNextConfig(num_labels=1000),  # widths 96-768, depths 3-3-9-3
}
BASELINE = "Swin-T"
HERE = Path(__file__).resolve().parent


def build(name: str, train: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    model = AutoModelForImageClassification.from_config(MODELS[name]())
    return model.train(train)


def interleaved(calls: dict, rounds: int, warmup: int) -> dict[str, float]:
    """Median seconds per call; one call per model per round in rotating order."""
    names = list(calls)
    for name in names:
        for _ in range(warmup):
            calls[name]()
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def inference_calls(models: dict, batch: int) -> dict:
    inputs = torch.randn(batch, 3, 224, 224)

    def call(model):
        def run():
            with torch.inference_mode():
                model(inputs)

        return run

    return {name: call(model) for name, model in models.items()}


def train_calls(models: dict, batch: int) -> dict:
    inputs, labels = torch.randn(batch, 3, 224, 224), torch.randint(0, 1000, (batch,))

    def call(model):
        def run():
            model.zero_grad(set_to_none=True)
            model(inputs, labels=labels).loss.backward()

        return run

    return {name: call(model) for name, model in models.items()}


COMPILE_MODES = {
    # torch.compile as a user calls it (VMamba with fullgraph=True: the scan must not break the graph).
    "compiled": {},
    # Inductor's recommended CPU inference setting: parameters frozen into constants, so weights are prepacked and
    # re-laid-out once rather than at every call.
    "compiled+freezing": {"freezing": True},
}


def cold_inductor_caches():
    """A fresh, empty Inductor cache (torch's own test helper; private, so without it: the process-wide cold cache
    set up at import, which only the first compilation of each shape finds empty)."""
    try:
        from torch._inductor.utils import fresh_cache
    except ImportError:
        return contextlib.nullcontext()
    return fresh_cache()


def compile_models(models: dict, batch: int) -> tuple[dict, dict]:
    """torch.compile each model in each of COMPILE_MODES (a copy per mode) and time its first call (the
    compilation) at this batch size. Keys: (mode, model name)."""
    compiled, seconds = {}, {}
    inputs = torch.randn(batch, 3, 224, 224)
    # All models share transformers' output-handling wrapper frame, so every model and mode counts towards one
    # recompile limit (8 by default): past it Dynamo silently runs the rest eagerly.
    needed = 4 * len(models) * len(COMPILE_MODES)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, needed)
    # Inductor's one-time set-up (worker pool, the C++ prefix header) would otherwise be counted in the first model's
    # compile time: compile something small first, untimed.
    warm_up = torch.compile(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU()))
    with torch.inference_mode():
        warm_up(torch.randn(2, 8))
    for mode, options in COMPILE_MODES.items():
        for name, model in models.items():
            start = time.perf_counter()
            fullgraph = name.startswith(("VMamba", "Vanilla"))
            compiled[mode, name] = torch.compile(copy.deepcopy(model), fullgraph=fullgraph, options=options or None)
            with torch.inference_mode():
                compiled[mode, name](inputs)
            seconds[mode, name] = time.perf_counter() - start
            print(f"  {mode} {name} (batch {batch}) in {seconds[mode, name]:.0f} s", flush=True)
    return compiled, seconds


def train_memory_probe(name: str, batch: int, threads: int) -> dict:
    """Peak extra resident memory (MiB) of one training step; meant for a fresh process. A small step first loads
    what every process loads once (lazy imports, the scan kernels' compiled code, thread pools), which is not the
    step's memory; its gradients are dropped so the measured step allocates them again."""
    torch.set_num_threads(threads)
    model = build(name, train=True)
    model(torch.randn(1, 3, 224, 224), labels=torch.zeros(1, dtype=torch.long)).loss.backward()
    model.zero_grad(set_to_none=True)
    inputs, labels = torch.randn(batch, 3, 224, 224), torch.randint(0, 1000, (batch,))
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give the warm-up's freed memory back, so the step's counts
    except OSError:
        pass
    before = _proc_status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets VmHWM (peak RSS) to the current RSS
    model(inputs, labels=labels).loss.backward()
    return {"model": name, "peak_mib": (_proc_status_kib("VmHWM") - before) / 1024.0}


def peak_train_memory(name: str, batch: int, threads: int) -> float | None:
    command = [sys.executable, __file__, "--memory_probe", name, "--batch", str(batch), "--threads", str(threads)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        print(f"  memory probe {name} failed:\n{result.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mib"]


def ratios(medians: dict) -> dict:
    return {name: value / medians[BASELINE] for name, value in medians.items()}


def markdown(results: dict) -> str:
    names = list(MODELS)
    lines = [
        "# CPU targets: VMamba-T designs vs Swin-T (ratios measured in one process)",
        "",
        f"Machine: {results['machine']['cpu']}, {results['machine']['logical_cpus']} logical CPUs; torch "
        f"{results['machine']['torch']}, transformers {results['machine']['transformers']}; "
        f"{results['machine']['date_utc']} UTC. Scan kernel on CPU: {results['scan_kernel']}. "
        f"Load average before / after: {results['load_before']} / {results['load_after']}.",
        "",
        "Method: random weights, float32, 224x224; every model called once per round in rotating order after "
        "warm-up; medians of the rounds; ratios to Swin-T of the same run. Training step: forward + backward of "
        "the cross-entropy at batch 8 in train mode (no optimizer). Peak memory: resident-set growth of one "
        "training step in a fresh process. Compiled: `torch.compile` (Inductor; VMamba with `fullgraph=True`), "
        "plain and with `options={\"freezing\": True}`, each on its own copy of the model, timed in the same "
        "rounds as eager at the same batch size, compiled afresh for each batch size; \"x eager\" is eager time / "
        "compiled time (above 1: the compiled model is faster).",
        "",
    ]
    for threads, run in results["runs"].items():
        lines += [f"## {threads} thread(s)", ""]
        header = "| model | " + " | ".join(run["columns"]) + " |"
        lines += [header, "| --- |" + " ---: |" * len(run["columns"])]
        for name in names:
            cells = []
            for column in run["columns"]:
                entry = run["table"][column].get(name)
                if entry is None:
                    cells.append("-")
                elif "speedup_vs_eager" in entry:
                    speedup = entry["speedup_vs_eager"]
                    cells.append(f"{entry['ms']:.0f} ms ({entry['ratio']:.2f}x; {speedup:.2f}x eager)")
                else:
                    cells.append(f"{entry['ms']:.0f} ms ({entry['ratio']:.2f}x)")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        for column in run["columns"]:
            if column.startswith("compiled"):
                mode, batch = column.rsplit(" b", 1)
                lines += ["", f"Compile time, {mode} (first call, batch {batch}): " + ", ".join(
                    f"{name} {entry['compile_seconds']:.0f} s" for name, entry in run["table"][column].items())]
        lines.append("")
    if results.get("train_memory_mib"):
        lines += ["## Peak memory of a training step (batch 8)", "", "| model | MiB | ratio to Swin-T |",
                  "| --- | ---: | ---: |"]
        memory = results["train_memory_mib"]
        for name in names:
            if memory.get(name) is not None:
                lines.append(f"| {name} | {memory[name]:.0f} | {memory[name] / memory[BASELINE]:.2f}x |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    parser.add_argument("--quick", action="store_true", help="a few rounds: a smoke run")
    parser.add_argument("--skip_compile", action="store_true")
    parser.add_argument("--compile_batches", default="1", help="comma-separated batch sizes to compile and time")
    parser.add_argument("--skip_train", action="store_true")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset (Swin-T always runs)")
    parser.add_argument("--write", action="store_true", help="write RESULTS_<name>.md and results_<name>.json")
    parser.add_argument("--name", default="cpu_targets", help="results file name (e.g. cpu_targets_compiled)")
    parser.add_argument("--batch", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument("--memory_probe", metavar="MODEL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    threads_list = [int(t) for t in args.threads.split(",")]
    compile_batches = [int(b) for b in args.compile_batches.split(",")]
    if args.memory_probe:
        print(json.dumps(train_memory_probe(args.memory_probe, args.batch, threads_list[0])))
        return
    chosen = [name for name in MODELS if name in args.models.split(",") or name == BASELINE]
    rounds, warmup = (3, 1) if args.quick else (15, 2)
    results = {"machine": machine_info(threads_list[-1]), "scan_kernel": scan_kernel_name(),
               "load_before": load_average(), "runs": {}}
    print(f"scan kernel on CPU: {results['scan_kernel']}", flush=True)
    for threads in threads_list:
        torch.set_num_threads(threads)
        models = {name: build(name) for name in chosen}
        table = {}
        for batch in (1, 8):
            medians = interleaved(inference_calls(models, batch), rounds, warmup)
            table[f"eager b{batch}"] = {n: {"ms": m * 1e3, "ratio": r} for (n, m), r in
                                        zip(medians.items(), ratios(medians).values())}
            print(f"{threads} thread(s), eager batch {batch}: " + ", ".join(
                f"{n} {v['ms']:.0f} ms ({v['ratio']:.2f}x)" for n, v in table[f"eager b{batch}"].items()), flush=True)
        run = {"columns": list(table), "table": table}
        for batch in [] if args.skip_compile else compile_batches:
            # Eager and every compiled form in the same rounds, so the speed-ups over eager are measured together.
            # Each batch size and thread count compiles from empty caches (Inductor's on-disk and in-memory ones).
            with cold_inductor_caches():
                compiled, seconds = compile_models(models, batch)
                calls = inference_calls({("eager", name): model for name, model in models.items()} | compiled, batch)
                medians = interleaved(calls, rounds, warmup)
            eager_medians = {name: medians["eager", name] for name in models}
            table[f"eager b{batch} (compile rounds)"] = {
                name: {"ms": m * 1e3, "ratio": r}
                for (name, m), r in zip(eager_medians.items(), ratios(eager_medians).values())
            }
            run["columns"].append(f"eager b{batch} (compile rounds)")
            for mode in COMPILE_MODES:
                mode_medians = {name: medians[mode, name] for name in models}
                table[f"{mode} b{batch}"] = {
                    name: {"ms": m * 1e3, "ratio": r, "speedup_vs_eager": medians["eager", name] / m,
                           "compile_seconds": seconds[mode, name]}
                    for (name, m), r in zip(mode_medians.items(), ratios(mode_medians).values())
                }
                run["columns"].append(f"{mode} b{batch}")
            del compiled
            torch._dynamo.reset()
        if not args.skip_train:
            train_models = {name: build(name, train=True) for name in chosen}
            medians = interleaved(train_calls(train_models, 8), max(3, rounds // 3), 1)
            table["train step b8"] = {n: {"ms": m * 1e3, "ratio": r} for (n, m), r in
                                      zip(medians.items(), ratios(medians).values())}
            run["columns"].append("train step b8")
            del train_models
        results["runs"][str(threads)] = run
        del models
        gc.collect()
    if not args.skip_train:
        results["train_memory_mib"] = {name: peak_train_memory(name, 8, threads_list[-1]) for name in chosen}
    results["load_after"] = load_average()
    report = markdown(results)
    print(report)
    if args.write and not args.quick:
        write_atomic(HERE / f"RESULTS_{args.name}.md", report + "\n")
        write_atomic(HERE / f"results_{args.name}.json", json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
