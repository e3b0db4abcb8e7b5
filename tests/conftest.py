"""Shared test helpers: where the parity fixtures live, and tiny VMamba configurations."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from transformers_vmamba import VMambaConfig


def fixtures_dir() -> Path:
    """`$VMAMBA_FIXTURES`, else `shared/fixtures` next to the repository (how CI lays them out)."""
    env = os.environ.get("VMAMBA_FIXTURES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures"


@pytest.fixture(scope="session")
def fixtures_path() -> Path:
    path = fixtures_dir()
    if not (path / "inputs.safetensors").is_file():
        pytest.fail(f"parity fixtures not found at {path} (set VMAMBA_FIXTURES)")
    return path


FAMILIES = ("vanilla-vmamba-tiny", "vmamba-tiny-s2l5", "vmamba-tiny-s1l8")


def tiny_config(variant: str = "vmamba-tiny-s1l8", **overrides) -> VMambaConfig:
    """A released family's switches at toy size: 8..64 channels, one block per stage, 3 labels."""
    kwargs = dict(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], num_labels=3, drop_path_rate=0.0)
    kwargs.update(overrides)
    return VMambaConfig.from_variant(variant, **kwargs)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
