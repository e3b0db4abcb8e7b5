"""Shared test helpers: where the parity fixtures live, and tiny VMamba configurations."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from transformers_vmamba import VMambaConfig


def fixtures_dir() -> Path:
    """The original implementation's parity fixtures: `tests/fixtures/original` (see its README), or
    `$VMAMBA_FIXTURES`."""
    env = os.environ.get("VMAMBA_FIXTURES")
    return Path(env) if env else Path(__file__).resolve().parent / "fixtures" / "original"


FAMILIES = ("vanilla-vmamba-tiny", "vmamba-tiny-s2l5", "vmamba-tiny-s1l8")


def tiny_config(variant: str = "vmamba-tiny-s1l8", **overrides) -> VMambaConfig:
    """A released family's switches at toy size: 8..64 channels, one block per stage, 3 labels."""
    kwargs = dict(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], num_labels=3, drop_path_rate=0.0)
    kwargs.update(overrides)
    return VMambaConfig.from_variant(variant, **kwargs)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def run_remote_code_child(child_script: str, model_dir, pixel_values: torch.Tensor, tmp_path: Path) -> dict:
    """Run `child_script` (argv: model dir, inputs file, outputs file) in a fresh Python without this repo on the
    path, offline; return the tensors it saved."""
    inputs, outputs = tmp_path / "inputs.safetensors", tmp_path / "out.safetensors"
    save_file({"pixel_values": pixel_values}, inputs)
    script = tmp_path / "child.py"
    script.write_text(child_script)
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, str(script), str(model_dir), str(inputs), str(outputs)],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return load_file(outputs)
