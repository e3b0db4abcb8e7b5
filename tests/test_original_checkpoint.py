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
from transformers_vmamba.original_checkpoint import (
    CHECKPOINT_KINDS,
    InertObject,
    checkpoint_kind,
    convert_original_checkpoint,
    select_weights,
)


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
    assert type(checkpoint["extra"]) is InertObject and checkpoint["extra"].args[0][0] == "touch"
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
    # the weights a release's accuracy was measured with come first (Vanilla-VMamba-T: `model`)
    assert select_weights({"model": sd, "model_ema": ema}, prefer="model")[1] == "model"
    assert select_weights({"model_ema": ema}, prefer="model")[1] == "model_ema"
    assert select_weights({"model": "resnet", "state_dict": sd})[1] == "state_dict"  # not a mapping: not weights


@pytest.mark.parametrize(
    "checkpoint, message",
    [
        ({"model": {}, "epoch": 3}, r"checkpoint\['model'\] is empty: it holds no weights"),
        ({"model": {"model": {"w": torch.zeros(1)}}}, r"checkpoint\['model'\] holds nested entries \['model'\]"),
        ({"model": {"w": torch.zeros(1), "n_averaged": 3}}, r"its entry 'n_averaged' is a int, not a tensor"),
        ({"model": {"w": torch.zeros(1), 3: torch.zeros(1)}}, r"it has a int key 3"),
        ({"_parameters": {}, "_modules": {}, "training": True}, r"a whole pickled nn\.Module, not weights"),
        ([torch.zeros(1)], r"expected a dict checkpoint, got list"),
    ],
)
def test_weight_entries_that_are_not_state_dicts_are_named(checkpoint, message):
    """Not "weights key 'model' not in the checkpoint" for a `model` entry that is there but broken."""
    with pytest.raises(OriginalCheckpointError, match=message):
        select_weights(checkpoint)


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
    expected = r"missing keys \['vmamba\.encoder\.stages\.1\.layers\.0\.ssm\.out_norm\.weight'\]"
    with pytest.raises(OriginalCheckpointError, match=expected):
        from_original_checkpoint(missing)


def test_unrecognised_layout():
    with pytest.raises(OriginalCheckpointError, match="patch_embed.0.weight"):
        infer_config_from_state_dict({"encoder.weight": torch.zeros(2, 2)})
    with pytest.raises(OriginalCheckpointError, match=r"no layers\.<i>\.blocks\.<j>\.\* keys"):
        infer_config_from_state_dict({"patch_embed.0.weight": torch.zeros(8, 3, 4, 4)})
    # one damaged tensor is outvoted by the others that show the same size, then named with both shapes
    state_dict = _v0_state_dict()
    state_dict["layers.0.blocks.0.op.in_proj.weight"] = torch.zeros(100, 32)
    assert infer_config_from_state_dict(state_dict).ssm_gate
    expected = r"wrong shapes: layers\.0\.blocks\.0\.op\.in_proj\.weight: expected \(128, 32\), found \(100, 32\)"
    with pytest.raises(OriginalCheckpointError, match=expected):
        from_original_checkpoint(state_dict)
    # with every block damaged the same way, there is no VMamba model to name
    for key in [key for key in state_dict if key.endswith("op.in_proj.weight")]:
        state_dict[key] = torch.zeros(3 * state_dict[key.replace("in_proj.weight", "out_proj.weight")].shape[1], 1)
    with pytest.raises(OriginalCheckpointError, match=r"in_proj has 3 times the inner channels as outputs"):
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


# ---------------------------------------------------------------------------------------------------------------
# Reading files the original code (or torch) can write: the legacy format, numpy arrays and mmengine objects.


def _v2_state_dict():
    return select_weights(load_original_checkpoint(fixtures_dir() / "v2_s2l_ln" / "checkpoint.pth"))[0]


class PickledConfig(dict):
    """A dict subclass pickled by reference, like yacs' CfgNode."""


def test_legacy_torch_save_format_loads_with_the_same_safety(tmp_path):
    import numpy as np

    path = tmp_path / "legacy.pth"
    state_dict = _v2_state_dict()
    torch.save({"model": state_dict, "config": PickledConfig(lr=0.1), "array": np.arange(3.0)}, path,
               _use_new_zipfile_serialization=False)
    checkpoint = load_original_checkpoint(path)
    assert type(checkpoint["config"]) is OrderedDict and type(checkpoint["array"]) is InertObject
    model = from_original_checkpoint(checkpoint)
    assert torch.equal(model.vmamba.embeddings.conv1.weight, state_dict["patch_embed.0.weight"])
    marker = tmp_path / "pwned"
    torch.save({"model": {"w": torch.zeros(1)}, "extra": _ShellPayload(marker)}, path,
               _use_new_zipfile_serialization=False)
    assert type(load_original_checkpoint(path)["extra"]) is InertObject and not marker.exists()


def test_numpy_arrays_and_mmengine_objects_come_back_inert(tmp_path):
    """mmengine's checkpoint hook pickles its message hub (numpy arrays with tuple states, getattr calls): the whole
    segmentor fixture must load and convert (whole, or its backbone alone)."""
    import numpy as np

    path = tmp_path / "arrays.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "array": np.arange(4.0), "dtype": np.dtype("float32")}, path)
    checkpoint = load_original_checkpoint(path)
    assert type(checkpoint["array"]) is InertObject and checkpoint["array"].state is not None
    segmentor = fixtures_dir() / "seg_upernet_v2_ln2d_mmseg" / "checkpoint.pth"
    checkpoint = load_original_checkpoint(segmentor)
    assert {"meta", "state_dict", "message_hub"} <= set(checkpoint)
    assert type(from_original_checkpoint(segmentor)).__name__ == "UperNetForSemanticSegmentation"
    assert type(from_original_checkpoint(segmentor, backbone_only=True)).__name__ == "VMambaBackbone"


# ---------------------------------------------------------------------------------------------------------------
# Damaged checkpoints: the message names the keys and the shapes; nothing is read as another architecture.


def _without(prefix):
    return lambda sd: [sd.pop(key) for key in [key for key in sd if key.startswith(prefix)]]


def _replace(key, make):
    return lambda sd: sd.__setitem__(key, make(sd[key]))


DAMAGED = {
    "transposed fc1": (
        _replace("layers.0.blocks.0.mlp.fc1.weight", lambda w: w.t().clone()),
        r"wrong shapes: layers\.0\.blocks\.0\.mlp\.fc1\.weight: expected \(64, 16\), found \(16, 64\)",
    ),
    "mis-shaped norm": (
        _replace("layers.1.blocks.0.norm.weight", lambda w: torch.ones(99)),
        r"wrong shapes: layers\.1\.blocks\.0\.norm\.weight: expected \(32,\), found \(99,\)",
    ),
    "removed fc1": (
        _without("layers.0.blocks.0.mlp.fc1.weight"),
        r"missing keys \['vmamba\.encoder\.stages\.0\.layers\.0\.mlp\.fc1\.weight'\] \(in the checkpoint's names, "
        r"with the shape expected: \['layers\.0\.blocks\.0\.mlp\.fc1\.weight \(64, 16\)'\]\)",
    ),
    "extra key": (
        lambda sd: sd.update({"layers.0.blocks.0.op.surprise": torch.zeros(3)}),
        r"unexpected keys \['layers\.0\.blocks\.0\.op\.surprise'\]",
    ),
    "missing last stage": (
        _without("layers.3."),
        r"missing keys layers\.\{3\}\.blocks\.\* \(no block at all in that stage; layers\.2\.downsample\.\* leads",
    ),
    "missing middle stage": (_without("layers.1.blocks."), r"missing keys layers\.\{1\}\.blocks\.\*"),
    "missing first block": (
        _without("layers.2.blocks.0."), r"missing keys layers\.2\.blocks\.\{0\}\.\* \(18 tensors per block"
    ),
    "far block index": (
        lambda sd: sd.update({"layers.0.blocks.999999.norm.weight": torch.ones(16)}),
        r"missing keys layers\.0\.blocks\.\{999998 indices below 1000000\}\.\*",
    ),
    "far stage index": (
        lambda sd: sd.update({"layers.99999.blocks.0.norm.weight": torch.ones(16)}),
        r"missing keys layers\.\{99995 indices below 100000\}\.blocks\.\*",
    ),
    "no classes": (
        lambda sd: sd.update({"classifier.head.weight": torch.zeros(0, 128), "classifier.head.bias": torch.zeros(0)}),
        r"classifier\.head\.weight has 0 rows",
    ),
    "downsample kernel 5 everywhere": (
        lambda sd: [sd.__setitem__(k, torch.zeros(*v.shape[:2], 5, 5)) for k, v in list(sd.items())
                    if k.endswith("downsample.1.weight")],
        r"downsample convolution has kernel 5; only the 3x3 stride-2 kind",
    ),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_damaged_checkpoint_is_named_precisely(case):
    change, message = DAMAGED[case]
    state_dict = _v2_state_dict()
    change(state_dict)
    with pytest.raises(OriginalCheckpointError, match=message):
        from_original_checkpoint(state_dict)


def test_a_file_named_like_a_release_is_checked_against_it(tmp_path):
    """A checkpoint missing its last block converts as a shallower model unless the architecture is known: the
    release's file name is enough to know it."""
    state_dict = _v2_state_dict()
    _without("layers.2.blocks.1.")(state_dict)
    assert from_original_checkpoint(state_dict).config.depths == [1, 1, 1, 1]
    path = tmp_path / "vssm_tiny_0230_ckpt_epoch_262.pth"
    torch.save({"model": state_dict}, path)
    with pytest.raises(OriginalCheckpointError, match=r"does not match variant 'vmamba-tiny-s2l5'.*depths"):
        from_original_checkpoint(path)
    with pytest.raises(OriginalCheckpointError, match=r"is the released file of vmamba-tiny-s2l5, not of vmamba-tiny"):
        from_original_checkpoint(path, variant="vmamba-tiny-s1l8")


# ---------------------------------------------------------------------------------------------------------------
# What a file must really store, and non-finite values.


def test_expanded_views_cannot_inflate_the_model():
    """A stride-0 view is stored as a single value: building the 51 GB head it claims must never be tried."""
    state_dict = _v2_state_dict()
    state_dict["classifier.head.weight"] = torch.zeros(1, 128).expand(100_000_000, 128)
    with pytest.raises(OriginalCheckpointError, match=r"classifier\.head\.weight has shape \(100000000, 128\) "
                       r"\(12,800,000,000 values\) but the file stores only 128 values for it"):
        from_original_checkpoint(state_dict)
    state_dict = _v2_state_dict()
    state_dict["layers.0.blocks.0.norm.weight"] = state_dict["layers.1.blocks.0.norm.weight"][:16]
    with pytest.raises(OriginalCheckpointError, match=r"tensors such as layers\.0\.blocks\.0\.norm\.weight and "
                       r"layers\.1\.blocks\.0\.norm\.weight are views of the same stored values"):
        from_original_checkpoint(state_dict)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda w: w.long(), r"layers\.0\.blocks\.0\.op\.Ds has dtype torch\.int64; weights must be floating point"),
        (lambda w: w.to_sparse(), r"layers\.0\.blocks\.0\.op\.Ds is a sparse_coo tensor"),
        (lambda w: torch.empty(w.shape, device="meta"), r"layers\.0\.blocks\.0\.op\.Ds is a meta tensor"),
    ],
)
def test_values_that_cannot_be_weights(make, message):
    state_dict = _v2_state_dict()
    state_dict["layers.0.blocks.0.op.Ds"] = make(state_dict["layers.0.blocks.0.op.Ds"])
    with pytest.raises(OriginalCheckpointError, match=message):
        from_original_checkpoint(state_dict)


def test_non_finite_weights_are_refused_unless_allowed(caplog):
    state_dict = _v2_state_dict()
    a_logs = state_dict["layers.0.blocks.0.op.A_logs"] = state_dict["layers.0.blocks.0.op.A_logs"].clone()
    a_logs[:2] = float("nan")
    bias = state_dict["layers.1.blocks.0.op.dt_projs_bias"] = state_dict["layers.1.blocks.0.op.dt_projs_bias"].clone()
    bias[0, 0] = float("inf")
    expected = r"non-finite weights: layers\.0\.blocks\.0\.op\.A_logs has 2 of 128 values NaN or infinite \(and 1 more"
    with pytest.raises(OriginalCheckpointError, match=expected + r".*refusing to convert them"):
        from_original_checkpoint(state_dict)
    with caplog.at_level("WARNING", logger="transformers_vmamba.original_checkpoint"):
        model = from_original_checkpoint(state_dict, allow_non_finite=True)
    assert re.search(expected, caplog.text) and "kept as they are" in caplog.text
    assert torch.isnan(model.vmamba.encoder.stages[0].layers[0].ssm.A_log[:2]).all()
    # finite in float64 but not once the model holds them in float32
    state_dict = _v2_state_dict()
    state_dict["layers.0.blocks.0.op.Ds"] = state_dict["layers.0.blocks.0.op.Ds"].double() * 1e300
    with pytest.raises(OriginalCheckpointError, match=r"op\.Ds has 128 of 128 values NaN or infinite as float32"):
        from_original_checkpoint(state_dict)


# ---------------------------------------------------------------------------------------------------------------
# One table of names, in both directions; the kinds of checkpoint.


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_released_key_maps_and_maps_back(variant):
    from transformers_vmamba.original_checkpoint import _original_classifier_key

    manifest = json.loads((fixtures_dir() / "manifests" / f"{variant.replace('-', '_')}.json").read_text())
    config = VMambaConfig.from_variant(variant)
    for key in manifest["state_dict"]:
        hf_key = CHECKPOINT_KINDS["classifier"].to_transformers_key(key)
        assert hf_key is not None and _original_classifier_key(hf_key, config.downsample_type) == key, key


def test_checkpoint_kinds_and_what_was_converted():
    classifier = convert_original_checkpoint(_v2_state_dict())
    assert (classifier.kind, classifier.weights_key, classifier.release, classifier.official) == (
        "classifier", None, None, False
    )
    backbone_file = fixtures_dir() / "backbone_v2_ln_mmseg" / "checkpoint.pth"
    backbone = convert_original_checkpoint(backbone_file)
    assert backbone.kind == "backbone" and backbone.weights_key == "state_dict"
    assert {module: len(keys) for module, keys in backbone.skipped.items()} == {"decode_head": 2, "auxiliary_head": 1}
    assert checkpoint_kind({"outnorm0.weight": torch.zeros(1)}) is CHECKPOINT_KINDS["backbone"]
    with pytest.raises(OriginalCheckpointError, match="expected a checkpoint path, a checkpoint dict or a state dict"):
        from_original_checkpoint([1, 2])
