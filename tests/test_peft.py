"""PEFT LoRA on every family: every pointwise layer is a plain nn.Linear on channels-last activations, so the
libraries that swap nn.Linear (PEFT, bitsandbytes, torchao) multiply the right axis."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES, tiny_config

from transformers_vmamba import VMambaForImageClassification


peft = pytest.importorskip("peft")


def lora_targets(config):
    targets = ["in_proj", "out_proj"]
    if config.mlp_ratio > 0:
        targets += ["fc1", "fc2"]
    if config.downsample_type == "patch_merging":
        targets.append("reduction")
    return targets


@pytest.mark.parametrize("variant", FAMILIES)
def test_lora_trains_merges_saves_and_loads(variant, tmp_path):
    config = tiny_config(variant)
    base = VMambaForImageClassification(config)
    frozen = {name: tensor.clone() for name, tensor in base.state_dict().items()}
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=lora_targets(config), modules_to_save=["classifier"])
    model = peft.get_peft_model(base, lora)
    wrapped = [name for name, module in model.named_modules() if isinstance(module, peft.tuners.lora.Linear)]
    expected_count = sum(len(stage.layers) for stage in base.vmamba.encoder.stages) * (4 if config.mlp_ratio else 2)
    if config.downsample_type == "patch_merging":
        expected_count += config.num_stages - 1
    assert len(wrapped) == expected_count

    # Training step: only the adapters and the classifier learn.
    pixel_values, labels = torch.randn(2, 3, 40, 36), torch.tensor([0, 2])
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name or "classifier" in name for name in trainable)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(pixel_values=pixel_values, labels=labels).loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if name in trainable}
    assert all(grad is not None for grad in grads.values())
    # LoRA starts with B = 0, so B (and the classifier) get gradients first, A after the first step
    assert all(grads[name].abs().sum() > 0 for name in grads if "lora_A" not in name)
    optimizer.step()

    # The adapters now change the output; merging gives the same function as a plain model.
    model.eval()
    with torch.no_grad():
        adapted = model(pixel_values=pixel_values).logits
        base_only = model.get_base_model()
        with model.disable_adapter():
            plain = base_only(pixel_values).logits
    assert (adapted - plain).abs().max() > 1e-4
    model.save_pretrained(tmp_path / "adapter")
    merged = model.merge_and_unload()
    assert not any(isinstance(m, peft.tuners.lora.Linear) for m in merged.modules())
    with torch.no_grad():
        torch.testing.assert_close(merged(pixel_values).logits, adapted, atol=1e-5, rtol=1e-5)

    # A fresh base model with the saved adapter reproduces the adapted outputs.
    fresh = VMambaForImageClassification(config)
    fresh.load_state_dict(frozen)
    reloaded = peft.PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=pixel_values).logits, adapted, atol=1e-5, rtol=1e-5)

