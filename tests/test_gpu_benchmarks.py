# Copyright 2026 The transformers-vmamba authors. Licensed under the MIT license.
"""The GPU benchmark scripts import and plan their runs without a GPU (``--dry-run``), so they do not rot between
the rare sessions that have one. Their measurements themselves need a GPU (``benchmarks/RESULTS_gpu.md``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(script: str):
    spec = importlib.util.spec_from_file_location(script, BENCHMARKS / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kernel_benchmark_plans_every_vmamba_t_stage(capsys):
    load("bench_kernels").main(["--dry-run", "--dtypes", "bf16", "--sweep"])
    lines = capsys.readouterr().out.splitlines()
    assert "v2v-T-s1 (128, 56, 56, 96, 1) dtypes=['bf16'] modes=['fwd', 'fwd+bwd'] sweep=True" in lines
    assert "v0-T-s4 (128, 7, 7, 1536, 16) dtypes=['bf16'] modes=['fwd', 'fwd+bwd'] sweep=True" in lines
    assert lines[-1].startswith("Triton kernel: ")
    with pytest.raises(SystemExit, match="unknown case"):
        load("bench_kernels").main(["--dry-run", "--cases", "v3-T-s1"])


def test_model_benchmark_plans_vmamba_against_swin_and_convnext(capsys):
    load("bench_model_gpu").main(["--dry-run", "--models", "VMamba-T-s1l8", "Swin-T"])
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "VMamba-T-s1l8 backend=kernel compile=['eager', 'compiled'] dtypes=['fp32', 'bf16'] "
        "modes=['fwd', 'fwd+bwd'] batch=128 size=224",
        "VMamba-T-s1l8 backend=torch compile=['eager', 'compiled'] dtypes=['fp32', 'bf16'] "
        "modes=['fwd', 'fwd+bwd'] batch=128 size=224",
        "Swin-T backend=- compile=['eager', 'compiled'] dtypes=['fp32', 'bf16'] modes=['fwd', 'fwd+bwd'] "
        "batch=128 size=224",
    ]
