# Copyright 2026 The transformers-vmamba authors. Licensed under the MIT license.
"""Shared helpers of the GPU benchmarks: device check, CUDA-event timing, environment record, results file."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import torch


RESULTS_FILE = Path(__file__).resolve().parent / "RESULTS_gpu.md"


def require_cuda(script: str, smoke: bool = False) -> torch.device:
    """Exit with a clear message (status 2) when there is no CUDA device: these numbers only mean something on a GPU.

    ``smoke=True`` (the scripts' ``--smoke`` flag) runs on CPU instead, to check the script itself on tiny shapes;
    its timings mean nothing and are never written to the results file.
    """
    if smoke:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        sys.stderr.write(
            f"{script}: no CUDA device is available (torch {torch.__version__}, "
            f"CUDA build {torch.version.cuda}). This benchmark times GPU kernels and has nothing to measure on CPU; "
            "run it on a machine with an NVIDIA GPU. CPU latency is measured by the CPU benchmark instead.\n"
        )
        raise SystemExit(2)
    return torch.device("cuda")


def cuda_time_ms(fn, *, warmup: int = 10, repeats: int = 30) -> dict:
    """Median (and min/max) milliseconds of ``fn()`` over ``repeats`` runs after ``warmup``, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    if not torch.cuda.is_available():  # --smoke on CPU: wall clock, meaningless but exercises the code
        import time

        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - start))
        return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "repeats": repeats}
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "repeats": repeats}


def copy_bandwidth_gbs(n_bytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth (read + write bytes per second, GB/s): the roofline of a memory-bound kernel."""
    if not torch.cuda.is_available():
        return float("nan")
    src = torch.empty(n_bytes // 4, device="cuda", dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    stats = cuda_time_ms(lambda: dst.copy_(src), warmup=5, repeats=20)
    src = dst = None  # free both before empty_cache
    torch.cuda.empty_cache()
    return 2 * n_bytes / (stats["median_ms"] * 1e-3) / 1e9


def environment() -> dict:
    import triton  # noqa: F401  (the kernels need it; its absence is reported by the caller)

    if not torch.cuda.is_available():
        return {"device": "CPU smoke run (timings meaningless)", "torch": torch.__version__,
                "triton": sys.modules["triton"].__version__}  # fmt: skip
    props = torch.cuda.get_device_properties(0)
    try:
        driver = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        driver = "unknown (nvidia-smi not found)"
    return {
        "device": (
            f"{props.name} ({props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs, "
            f"sm_{props.major}{props.minor})"
        ),
        "driver": driver or "unknown",
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "triton": sys.modules["triton"].__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
    }


def environment_markdown(env: dict) -> str:
    return "\n".join(f"- {key}: {value}" for key, value in env.items())


def write_section(name: str, body: str) -> None:
    """Replace this script's section of RESULTS_gpu.md (between markers), writing the file atomically."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = RESULTS_FILE.read_text() if RESULTS_FILE.exists() else "# GPU benchmark results\n"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    tmp = RESULTS_FILE.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, RESULTS_FILE)


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
