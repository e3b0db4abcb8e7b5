"""Parity with the original implementation: every fixture made by the original code, loaded through
`from_original_checkpoint`, must reproduce its embeddings, per-stage features, final norm, pooled features and
logits on every input case (tolerances from the fixtures' README)."""

from __future__ import annotations

import pytest
import torch
from conftest import fixtures_dir
from safetensors.torch import load_file

from transformers_vmamba import from_original_checkpoint


CASES = [
    ("v0_vanilla", "model"),
    ("v0_vanilla_ema", "model"),
    ("v0_vanilla_ema", "model_ema"),
    ("v2_s2l_ln2d", "model"),
    ("v2_s2l_ln2d", "model_ema"),
    ("v2v_s1l_ln2d", "model"),
    ("v2v_s1l_ln2d", "model_ema"),
    ("v2_s2l_ln", "model"),
    ("v2_s2l_ln", "model_ema"),
]
TOLERANCES = {"float64": dict(atol=1e-10, rtol=0.0), "float32": dict(atol=1e-4, rtol=1e-4)}


def model_outputs(model, pixel_values):
    """The fixture's named tensors, all (B, C, H, W) or (B, C), from the Transformers model."""
    with torch.no_grad():
        output = model(pixel_values, output_hidden_states=True)
        base = model.vmamba(pixel_values)
    embeddings, *stages = output.hidden_states
    named = {"embeddings": embeddings, "final_norm": base.last_hidden_state, "pooled": base.pooler_output}
    named.update({f"stage{i}": stage for i, stage in enumerate(stages)})
    named["logits"] = output.logits
    return named


def check_against_fixture(model, fixture, weights_key, dtype_name):
    root = fixtures_dir()
    inputs = load_file(root / "inputs.safetensors")
    expected = load_file(root / fixture / f"expected_{weights_key}_{dtype_name}.safetensors")
    dtype = getattr(torch, dtype_name)
    model = model.to(dtype)
    worst = 0.0
    for case, pixel_values in inputs.items():
        outputs = model_outputs(model, pixel_values.to(dtype))
        names = {name.split("/", 1)[1] for name in expected if name.startswith(case + "/")}
        assert names == set(outputs), f"{case}: fixture has {sorted(names)}, model gives {sorted(outputs)}"
        for name, actual in outputs.items():
            reference = expected[f"{case}/{name}"].to(dtype)
            assert actual.shape == reference.shape, f"{case}/{name}"
            torch.testing.assert_close(actual, reference, **TOLERANCES[dtype_name], msg=f"{fixture}:{case}/{name}")
            worst = max(worst, (actual - reference).abs().max().item())
    return worst


@pytest.mark.parametrize("dtype_name", ["float64", "float32"])
@pytest.mark.parametrize(("fixture", "weights_key"), CASES, ids=[f"{f}-{k}" for f, k in CASES])
def test_fixture_parity(fixture, weights_key, dtype_name):
    model = from_original_checkpoint(fixtures_dir() / fixture / "checkpoint.pth", weights_key=weights_key)
    assert not model.training
    check_against_fixture(model, fixture, weights_key, dtype_name)


def test_default_weights_key_is_model_ema():
    root = fixtures_dir() / "v2v_s1l_ln2d"
    default = from_original_checkpoint(root / "checkpoint.pth")
    ema = from_original_checkpoint(root / "checkpoint.pth", weights_key="model_ema")
    plain = from_original_checkpoint(root / "checkpoint.pth", weights_key="model")
    for (name, a), b, c in zip(default.state_dict().items(), ema.state_dict().values(), plain.state_dict().values()):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, c) for a, c in zip(default.state_dict().values(), plain.state_dict().values()))
