"""Reading original checkpoints: safe unpickling, weight selection, config inference, key mapping and its errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch
from conftest import fixtures_dir

from transformers_vmamba import (
    VARIANTS,
    OriginalCheckpointError,
    VMambaConfig,
    convert_original_state_dict,
    from_original_checkpoint,
    infer_config_from_state_dict,
    load_original_checkpoint,
)
from transformers_vmamba.configuration_vmamba import ARCHITECTURE_FIELDS
from transformers_vmamba.original_checkpoint import select_weights


FIXTURES = ["v0_vanilla", "v0_vanilla_ema", "v2_s2l_ln2d", "v2v_s1l_ln2d", "v2_s2l_ln"]


def test_released_style_checkpoint_with_pickled_yacs_config_loads_safely():
    checkpoint = load_original_checkpoint(fixtures_dir() / "v2_s2l_ln2d" / "checkpoint.pth")
    assert {"model", "model_ema", "config", "optimizer"} <= set(checkpoint)
    # the CfgNode came back as inert data, and yacs was never imported
    assert type(checkpoint["config"]) is OrderedDict
    assert checkpoint["config"]["MODEL"]["VSSM"]["EMBED_DIM"] == 32
    assert "yacs" not in sys.modules


class _ShellPayload:
    """Pickles as a call to subprocess.run: loading must not run it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (subprocess.run, (["touch", str(self.marker)],))


class _OsPayload(_ShellPayload):
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "extra": _ShellPayload(marker)}, path)
    checkpoint = load_original_checkpoint(path)  # the call became an inert stand-in
    assert not marker.exists()
    assert type(checkpoint["extra"]) is OrderedDict
    assert torch.equal(checkpoint["model"]["w"], torch.zeros(1))
    # globals of modules torch blocks outright (os, sys) are refused, never run
    torch.save({"model": {"w": torch.zeros(1)}, "extra": _OsPayload(marker)}, path)
    with pytest.raises(OriginalCheckpointError, match="cannot read"):
        load_original_checkpoint(path)
    assert not marker.exists()


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(OriginalCheckpointError, match="no checkpoint file"):
        load_original_checkpoint(tmp_path / "absent.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(OriginalCheckpointError, match="cannot read"):
        load_original_checkpoint(bad)


def test_weight_selection():
    sd = {"w": torch.zeros(1)}
    ema = {"w": torch.ones(1)}
    assert select_weights({"model": sd, "model_ema": ema, "epoch": 3})[1] == "model_ema"
    assert select_weights({"model": sd, "model_ema": ema}, "model")[1] == "model"
    assert select_weights({"model": sd})[1] == "model"
    assert select_weights({"meta": {"env": "x"}, "state_dict": sd})[1] == "state_dict"  # mmengine layout
    assert select_weights(sd)[1] is None  # a bare state dict
    with pytest.raises(OriginalCheckpointError, match=r"'model_ema'.*available weight keys: \['model'\]"):
        select_weights({"model": sd, "epoch": 1}, "model_ema")
    with pytest.raises(OriginalCheckpointError, match="no weights found"):
        select_weights({"epoch": 1})


@pytest.mark.parametrize("fixture", FIXTURES)
def test_infer_config_from_fixture(fixture):
    root = fixtures_dir() / fixture
    kwargs = json.loads((root / "config.json").read_text())["constructor_kwargs"]
    state_dict = select_weights(load_original_checkpoint(root / "checkpoint.pth"))[0]
    config = infer_config_from_state_dict(state_dict)
    assert config.hidden_sizes == [kwargs["dims"] * 2**i for i in range(4)]
    assert config.depths == kwargs["depths"]
    assert config.ssm_state_size == kwargs["ssm_d_state"]
    assert config.ssm_expansion_ratio == kwargs["ssm_ratio"]
    assert config.ssm_dt_rank == "auto"
    assert config.ssm_conv_bias == kwargs["ssm_conv_bias"]
    assert config.ssm_gate == (kwargs["forward_type"] == "v0")
    assert config.mlp_ratio == kwargs["mlp_ratio"]
    assert config.downsample_type == {"v1": "patch_merging", "v3": "conv"}[kwargs["downsample_version"]]
    assert config.patch_embed_type == {"v1": "single_conv", "v2": "two_conv"}[kwargs["patchembed_version"]]
    assert config.patch_size == kwargs["patch_size"] and config.num_labels == kwargs["num_classes"]
    assert config.family == ("v0" if kwargs["forward_type"] == "v0" else "v2" if kwargs["ssm_ratio"] == 2 else "v2v")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_infer_config_of_every_released_layout(variant):
    """Shapes of the full-size released checkpoints (manifests) give back exactly the variant's architecture."""
    manifest = json.loads((fixtures_dir() / "manifests" / f"{variant.replace('-', '_')}.json").read_text())
    state_dict = {key: torch.empty(shape, device="meta") for key, shape in manifest["state_dict"].items()}
    config = infer_config_from_state_dict(state_dict)
    expected = VMambaConfig.from_variant(variant, num_labels=1000)
    for field in ARCHITECTURE_FIELDS + ("drop_path_rate", "num_labels"):
        assert getattr(config, field) == getattr(expected, field), field
    # and the mapping covers every key
    assert len(convert_original_state_dict(state_dict)) == len(state_dict)


def _v0_state_dict():
    return select_weights(load_original_checkpoint(fixtures_dir() / "v0_vanilla" / "checkpoint.pth"))[0]


def test_legacy_key_names_and_conv_shaped_linears():
    """Older original releases: patch_embed.proj/norm, ln_1, self_attention, top-level norm/head, 1x1-conv linears."""
    state_dict = _v0_state_dict()
    legacy = {}
    for key, tensor in state_dict.items():
        old = re.sub(r"^(layers\.\d+\.blocks\.\d+)\.norm\.", r"\1.ln_1.", key)
        old = re.sub(r"^(layers\.\d+\.blocks\.\d+)\.op\.", r"\1.self_attention.", old)
        old = re.sub(r"^patch_embed\.0\.", "patch_embed.proj.", old)
        old = re.sub(r"^patch_embed\.2\.", "patch_embed.norm.", old)
        old = re.sub(r"^classifier\.(norm|head)\.", r"\1.", old)
        if old.endswith(("in_proj.weight", "out_proj.weight", "reduction.weight")):
            tensor = tensor[:, :, None, None]
        legacy["module." + old] = tensor
    assert any(".ln_1." in k for k in legacy) and any(".self_attention." in k for k in legacy)
    new_model = from_original_checkpoint(state_dict)
    old_model = from_original_checkpoint(legacy)
    for (name, a), b in zip(new_model.state_dict().items(), old_model.state_dict().values()):
        assert torch.equal(a, b), name


def test_variant_cross_check():
    path = fixtures_dir() / "v0_vanilla" / "checkpoint.pth"
    with pytest.raises(OriginalCheckpointError, match=r"vanilla-vmamba-tiny.*hidden_sizes.*depths"):
        from_original_checkpoint(path, variant="vanilla-vmamba-tiny")
    with pytest.raises(OriginalCheckpointError, match="ssm_gate"):
        from_original_checkpoint(path, variant="vmamba-tiny-s1l8")
    with pytest.raises(OriginalCheckpointError, match="known variants"):
        from_original_checkpoint(path, variant="vmamba-giant")


def test_missing_and_unexpected_keys_are_listed():
    state_dict = _v0_state_dict()
    extra = dict(state_dict, **{"layers.0.blocks.0.op.x_proj_bias": torch.zeros(4, 34)})
    with pytest.raises(OriginalCheckpointError, match=r"x_proj_bias"):
        from_original_checkpoint(extra)
    missing = {k: v for k, v in state_dict.items() if k != "layers.1.blocks.0.op.out_norm.weight"}
    with pytest.raises(OriginalCheckpointError, match=r"missing keys \['vmamba\.encoder\.stages\.1\.layers\.0\.ssm\.out_norm\.weight'\]"):
        from_original_checkpoint(missing)


def test_unrecognised_layout():
    with pytest.raises(OriginalCheckpointError, match="patch_embed.0.weight"):
        infer_config_from_state_dict({"encoder.weight": torch.zeros(2, 2)})
    state_dict = _v0_state_dict()
    state_dict["layers.0.blocks.0.op.in_proj.weight"] = torch.zeros(100, 32)
    with pytest.raises(OriginalCheckpointError, match="in_proj has 100 outputs"):
        infer_config_from_state_dict(state_dict)


def test_mmengine_layout_is_read(tmp_path):
    """{"meta", "state_dict"} files (mmdetection/mmsegmentation) load and expose their state dict."""
    checkpoint = load_original_checkpoint(fixtures_dir() / "backbone_v2_ln_mmseg" / "checkpoint.pth")
    state_dict, key = select_weights(checkpoint)
    assert key == "state_dict" and any(k.startswith("backbone.patch_embed.") for k in state_dict)


def test_imagenet_classifier_gets_named_labels_and_other_heads_keep_generic_ones():
    """A 1000-class original classifier is an ImageNet-1k model: the library names its classes as the CLI does."""
    state_dict = _v0_state_dict()
    model = from_original_checkpoint(state_dict)
    assert model.config.num_labels == 10 and model.config.id2label[3] == "LABEL_3"
    head = state_dict["classifier.head.weight"]
    state_dict["classifier.head.weight"] = head.new_zeros(1000, head.shape[1])
    state_dict["classifier.head.bias"] = head.new_zeros(1000)
    model = from_original_checkpoint(state_dict)
    assert model.config.id2label[0].startswith("tench") and model.config.id2label[281].startswith("tabby")
    assert model.config.label2id[model.config.id2label[999]] == 999
    own = {i: f"class {i}" for i in range(1000)}
    assert from_original_checkpoint(state_dict, id2label=own).config.id2label[281] == "class 281"
