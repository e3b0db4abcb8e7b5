"""VMambaConfig: released variants, validation, serialisation, exact parameter counts."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import fixtures_dir

from transformers_vmamba import VARIANTS, VMambaConfig, VMambaForImageClassification


MANIFEST_OF_VARIANT = {name: name.replace("-", "_") for name in VARIANTS}


def test_nine_released_variants():
    assert list(VARIANTS) == [
        "vanilla-vmamba-tiny",
        "vanilla-vmamba-small",
        "vanilla-vmamba-base",
        "vmamba-tiny-s2l5",
        "vmamba-small-s2l15",
        "vmamba-base-s2l15",
        "vmamba-tiny-s1l8",
        "vmamba-small-s1l20",
        "vmamba-base-s1l20",
    ]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_matches_original_builder(variant):
    """Constructor kwargs of the original builder (manifest) map onto the config fields."""
    manifest = json.loads((fixtures_dir() / "manifests" / f"{MANIFEST_OF_VARIANT[variant]}.json").read_text())
    kwargs = manifest["constructor_kwargs"]
    config = VMambaConfig.from_variant(variant)
    dims = kwargs["dims"]
    assert config.hidden_sizes == [dims * 2**i for i in range(4)]
    assert config.depths == kwargs["depths"]
    assert config.ssm_state_size == kwargs["ssm_d_state"]
    assert config.ssm_expansion_ratio == kwargs["ssm_ratio"]
    assert config.ssm_conv_bias == kwargs["ssm_conv_bias"]
    assert config.ssm_conv_kernel_size == kwargs["ssm_conv"]
    assert config.ssm_gate == (kwargs["forward_type"] == "v0")
    assert config.mlp_ratio == kwargs["mlp_ratio"]
    assert config.drop_path_rate == kwargs["drop_path_rate"]
    assert config.downsample_type == {"v1": "patch_merging", "v3": "conv"}[kwargs["downsample_version"]]
    assert config.patch_embed_type == {"v1": "single_conv", "v2": "two_conv"}[kwargs["patchembed_version"]]
    assert kwargs["norm_layer"] == ("ln" if config.family == "v0" else "ln2d")  # a layout the port does not copy
    assert config.patch_size == kwargs["patch_size"] and config.num_channels == kwargs["in_chans"]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_full_size_parameter_count_matches_manifest(variant):
    manifest = json.loads((fixtures_dir() / "manifests" / f"{MANIFEST_OF_VARIANT[variant]}.json").read_text())
    with torch.device("meta"):
        model = VMambaForImageClassification(VMambaConfig.from_variant(variant, num_labels=1000))
    assert sum(p.numel() for p in model.parameters()) == manifest["num_parameters"]
    # every original tensor has a counterpart of the same size (a pure rename)
    assert sorted(p.numel() for p in model.state_dict().values()) == sorted(
        torch.Size(shape).numel() for shape in manifest["state_dict"].values()
    )


def test_family_property():
    assert VMambaConfig.from_variant("vanilla-vmamba-small").family == "v0"
    assert VMambaConfig.from_variant("vmamba-base-s2l15").family == "v2"
    assert VMambaConfig.from_variant("vmamba-tiny-s1l8").family == "v2v"
    assert VMambaConfig(ssm_state_size=4).family is None


def test_unknown_variant_lists_known_ones():
    with pytest.raises(ValueError, match="vmamba-tiny-s1l8") as info:
        VMambaConfig.from_variant("vmamba-huge")
    assert "vmamba-huge" in str(info.value)


def test_from_variant_overrides():
    config = VMambaConfig.from_variant("vmamba-tiny-s2l5", num_labels=10, depths=[1, 1, 1, 1])
    assert config.num_labels == 10 and config.depths == [1, 1, 1, 1]
    # overrides never leak into the shared table
    assert VMambaConfig.from_variant("vmamba-tiny-s2l5").depths == [2, 2, 5, 2]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(depths=[2, 2, 2]), "hidden_sizes"),
        (dict(depths=[2, 0, 2, 2]), "depths"),
        (dict(ssm_state_size=0), "ssm_state_size"),
        (dict(ssm_expansion_ratio=0.0), "ssm_expansion_ratio"),
        (dict(ssm_dt_rank="big"), "ssm_dt_rank"),
        (dict(ssm_dt_rank=0), "ssm_dt_rank"),
        (dict(ssm_conv_kernel_size=2), "ssm_conv_kernel_size"),
        (dict(mlp_ratio=-1.0), "mlp_ratio"),
        (dict(downsample_type="v3"), "downsample_type"),
        (dict(patch_embed_type="v2"), "patch_embed_type"),
        (dict(patch_embed_type="two_conv", patch_size=3), "patch_size"),
        (dict(hidden_act="nonexistent"), "hidden_act"),
        (dict(ssm_hidden_act="swish2"), "ssm_hidden_act"),
        (dict(drop_path_rate=1.5), "drop_path_rate"),
        (dict(num_channels=0), "num_channels"),
    ],
)
def test_invalid_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"VMambaConfig\.{field}"):
        VMambaConfig(**kwargs)


def test_derived_sizes():
    config = VMambaConfig.from_variant("vanilla-vmamba-tiny")
    assert [config.inner_size(i) for i in range(4)] == [192, 384, 768, 1536]
    assert [config.dt_rank(i) for i in range(4)] == [6, 12, 24, 48]
    assert VMambaConfig(ssm_dt_rank=4).dt_rank(3) == 4


def test_save_and_load_round_trip(tmp_path):
    config = VMambaConfig.from_variant("vanilla-vmamba-base", num_labels=7)
    config.save_pretrained(tmp_path)
    loaded = VMambaConfig.from_pretrained(tmp_path)
    for field in ("hidden_sizes", "depths", "ssm_gate", "mlp_ratio", "downsample_type", "patch_embed_type",
                  "num_labels", "drop_path_rate"):
        assert getattr(loaded, field) == getattr(config, field), field
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "vmamba"


def test_backbone_stage_names_and_out_features():
    config = VMambaConfig(out_features=["stage2", "stage4"])
    assert config.stage_names == ["stem", "stage1", "stage2", "stage3", "stage4"]
    assert config.out_indices == [2, 4]
