"""Semantic segmentation: whole mmsegmentation UperNet checkpoints of the original convert to Transformers'
`UperNetForSemanticSegmentation` (parity with the `seg_upernet_v2_ln2d_mmseg` fixture through the library and the
CLI), precise errors for heads that do not fit, the released segmentation registry, ADE20K labels, the evaluation
image processor and `pipeline("image-segmentation")`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conversion_helpers import FIXTURES, load_inputs, manifest_state_dict, run_cli, run_in_process
from safetensors.torch import load_file
from transformers import AutoModelForSemanticSegmentation, UperNetForSemanticSegmentation

from transformers_vmamba import OriginalCheckpointError, from_original_checkpoint, segmentation_image_processor
from transformers_vmamba.labels import ade20k_labels
from transformers_vmamba.original_checkpoint import convert_original_checkpoint, load_original_checkpoint
from transformers_vmamba.released_models import (
    RELEASED_MODELS,
    RELEASED_SEGMENTATION_MODELS,
    find_release,
    get_released_model,
    segmentation_markdown_table,
)


SEG_FIXTURE = "seg_upernet_v2_ln2d_mmseg"
SEG_CHECKPOINT = FIXTURES / SEG_FIXTURE / "checkpoint.pth"
TOLERANCES = {"float64": dict(atol=1e-10, rtol=0.0), "float32": dict(atol=1e-4, rtol=1e-4)}
EXPECTED_NAMES = {f"backbone_out{i}" for i in range(4)} | {"decode_logits", "aux_logits", "seg_logits"}


def segmentor_outputs(model, pixel_values) -> dict[str, torch.Tensor]:
    """The fixture's tensors from the Transformers model: backbone feature maps, decode head logits before
    upsampling, auxiliary head logits (before upsampling) and the model's `logits` at input size."""
    with torch.no_grad():
        feature_maps = model.backbone(pixel_values).feature_maps
        named = {f"backbone_out{i}": feature_map for i, feature_map in enumerate(feature_maps)}
        named["decode_logits"] = model.decode_head(feature_maps)
        named["aux_logits"] = model.auxiliary_head(feature_maps)
        named["seg_logits"] = model(pixel_values=pixel_values).logits
    return named


def check_segmentor_parity(model, dtype_name: str) -> dict[str, tuple[float, float]]:
    """Compare with the original's outputs on every input; return the worst (abs, rel) error per tensor."""
    expected = load_file(FIXTURES / SEG_FIXTURE / f"expected_state_dict_{dtype_name}.safetensors")
    dtype = getattr(torch, dtype_name)
    model = model.to(dtype).eval()
    worst = {}
    for case, pixel_values in load_inputs().items():
        names = {name.split("/", 1)[1] for name in expected if name.startswith(case + "/")}
        assert names == EXPECTED_NAMES, f"{case}: fixture has {sorted(names)}"
        for name, actual in segmentor_outputs(model, pixel_values.to(dtype)).items():
            reference = expected[f"{case}/{name}"].to(dtype)
            assert actual.dtype == dtype and actual.shape == reference.shape, f"{case}/{name}"
            torch.testing.assert_close(actual, reference, **TOLERANCES[dtype_name], msg=f"{case}/{name}")
            error = (actual - reference).abs().max().item()
            relative = error / reference.abs().max().item()
            old = worst.get(name, (0.0, 0.0))
            worst[name] = (max(old[0], error), max(old[1], relative))
    return worst


def seg_state_dict() -> dict[str, torch.Tensor]:
    return dict(load_original_checkpoint(SEG_CHECKPOINT)["state_dict"])


# ---------------------------------------------------------------------------------------------------------------
# Parity with the original (library function)


@pytest.fixture(scope="module")
def converted_segmentor():
    return from_original_checkpoint(SEG_CHECKPOINT)


@pytest.mark.parametrize("dtype_name", ["float64", "float32"])
def test_library_conversion_matches_the_original_segmentor(dtype_name):
    model = from_original_checkpoint(SEG_CHECKPOINT)  # fresh: the test changes its dtype
    assert isinstance(model, UperNetForSemanticSegmentation) and not model.training
    worst = check_segmentor_parity(model, dtype_name)
    assert set(worst) == EXPECTED_NAMES
    print(dtype_name, {name: f"abs {a:.2e} rel {r:.2e}" for name, (a, r) in worst.items()})


def test_config_is_read_from_the_head_shapes(converted_segmentor):
    config = converted_segmentor.config
    assert config.backbone_config.model_type == "vmamba"
    assert config.backbone_config.out_features == ["stage1", "stage2", "stage3", "stage4"]
    assert config.backbone_config.hidden_sizes == [16, 32, 64, 128]
    assert (config.hidden_size, config.num_labels, list(config.pool_scales)) == (24, 5, [1, 2, 3, 6])
    assert config.use_auxiliary_head and config.auxiliary_in_channels == 64 and config.auxiliary_channels == 16
    assert config.auxiliary_num_convs == 1 and not config.auxiliary_concat_input
    assert config.auxiliary_loss_weight == 0.4 and config.loss_ignore_index == 255
    assert config.id2label == {i: f"LABEL_{i}" for i in range(5)}  # only 150-class heads are ADE20K models


def test_every_head_tensor_is_mapped_with_batch_norm_statistics(converted_segmentor):
    original = seg_state_dict()
    converted = converted_segmentor.state_dict()
    assert len(converted) == len(original)  # no missing, no extra tensor
    pairs = {
        "decode_head.conv_seg.weight": "decode_head.classifier.weight",
        "decode_head.psp_modules.3.1.bn.running_var": "decode_head.psp_modules.3.1.batch_norm.running_var",
        "decode_head.fpn_bottleneck.bn.running_mean": "decode_head.fpn_bottleneck.batch_norm.running_mean",
        "decode_head.lateral_convs.2.conv.weight": "decode_head.lateral_convs.2.conv.weight",
        "auxiliary_head.convs.0.bn.num_batches_tracked": "auxiliary_head.convs.0.batch_norm.num_batches_tracked",
        "auxiliary_head.conv_seg.bias": "auxiliary_head.classifier.bias",
        "backbone.outnorm2.weight": "backbone.hidden_states_norms.stage3.weight",
    }
    for original_key, key in pairs.items():
        assert torch.equal(converted[key], original[original_key]), key
    assert converted["decode_head.bottleneck.batch_norm.num_batches_tracked"].item() == 160000


def test_backbone_only_gives_the_same_backbone(converted_segmentor):
    backbone = from_original_checkpoint(SEG_CHECKPOINT, backbone_only=True)
    assert type(backbone).__name__ == "VMambaBackbone"
    for key, tensor in backbone.state_dict().items():
        assert torch.equal(tensor, converted_segmentor.backbone.state_dict()[key]), key


def test_without_auxiliary_head():
    state_dict = {k: v for k, v in seg_state_dict().items() if not k.startswith("auxiliary_head.")}
    model = from_original_checkpoint(state_dict)
    assert not model.config.use_auxiliary_head and model.auxiliary_head is None
    expected = load_file(FIXTURES / SEG_FIXTURE / "expected_state_dict_float32.safetensors")
    pixel_values = load_inputs()["nonsquare_64x96"]
    with torch.no_grad():
        logits = model(pixel_values=pixel_values).logits
    torch.testing.assert_close(logits, expected["nonsquare_64x96/seg_logits"], **TOLERANCES["float32"])


# ---------------------------------------------------------------------------------------------------------------
# Heads that do not fit: the message names the keys and the shapes


def _set(key, make):
    return lambda sd: sd.__setitem__(key, make(sd[key]))


def _drop(prefix):
    return lambda sd: [sd.pop(key) for key in [key for key in sd if key.startswith(prefix)]]


DAMAGED_HEADS = {
    "missing BN statistic": (
        _drop("decode_head.fpn_bottleneck.bn.running_var"),
        r"missing keys \['decode_head\.fpn_bottleneck\.batch_norm\.running_var'\] \(in the checkpoint's names, with "
        r"the shape expected: \['decode_head\.fpn_bottleneck\.bn\.running_var \(24,\)'\]\)",
    ),
    "mis-shaped lateral conv": (
        _set("decode_head.lateral_convs.1.conv.weight", lambda w: torch.zeros(24, 48, 1, 1)),
        r"wrong shapes: decode_head\.lateral_convs\.1\.conv\.weight: expected \(24, 32, 1, 1\), found "
        r"\(24, 48, 1, 1\)",
    ),
    "1x1 auxiliary conv": (
        _set("auxiliary_head.convs.0.conv.weight", lambda w: w[:, :, :1, :1].clone()),
        r"wrong shapes: auxiliary_head\.convs\.0\.conv\.weight: expected \(16, 64, 3, 3\), found \(16, 64, 1, 1\)",
    ),
    "unknown head tensor": (
        lambda sd: sd.update({"decode_head.conv_seg.scale": torch.ones(5)}),
        r"unexpected keys \['decode_head\.conv_seg\.scale'\]",
    ),
    "unknown module": (
        lambda sd: sd.update({"neck.fpn.weight": torch.ones(3)}),
        r"unexpected keys \['neck\.fpn\.weight'\]",
    ),
    "conv with bias": (
        lambda sd: sd.update({"decode_head.bottleneck.conv.bias": torch.zeros(24)}),
        r"unexpected keys \['decode_head\.bottleneck\.conv\.bias'\]",
    ),
    "class counts differ": (
        _set("auxiliary_head.conv_seg.weight", lambda w: torch.zeros(7, 16, 1, 1)),
        r"disagree: auxiliary_head\.conv_seg\.weight \(7, 16, 1, 1\) \(dim 0\); auxiliary_head\.conv_seg\.bias "
        r"\(5,\) \(dim 0\)",
    ),
    "heads disagree on classes": (
        lambda sd: sd.update({"auxiliary_head.conv_seg.weight": torch.zeros(7, 16, 1, 1),
                              "auxiliary_head.conv_seg.bias": torch.zeros(7)}),
        r"the heads disagree on the number of classes: decode_head\.conv_seg\.weight \(5, 24, 1, 1\) but "
        r"auxiliary_head\.conv_seg\.weight \(7, 16, 1, 1\)",
    ),
    "decode channels disagree": (
        _set("decode_head.fpn_bottleneck.conv.weight", lambda w: torch.zeros(20, 96, 3, 3)),
        r"cannot infer the decode head channels: .*decode_head\.fpn_bottleneck\.conv\.weight \(20, 96, 3, 3\)",
    ),
    "auxiliary head on another stage": (
        lambda sd: sd.update({"auxiliary_head.convs.0.conv.weight": torch.zeros(16, 32, 3, 3)}),
        r"the auxiliary head takes 32 channels \(auxiliary_head\.convs\.0\.conv\.weight \(16, 32, 3, 3\)\), but "
        r"Transformers' UperNetFCNHead reads the third backbone feature map \(mmseg in_index 2\), which has 64",
    ),
    "missing pool branch": (
        _drop("decode_head.psp_modules.1."),
        r"missing keys decode_head\.psp_modules\.\[1\]\.1\.\* \(the checkpoint has pool branches \[0, 2, 3\]\)",
    ),
    "three pool branches": (
        _drop("decode_head.psp_modules.3."),
        r"the decode head has 3 pool branches .*pass pool_scales=\[\.\.\.\] with 3 values",
    ),
    "no decode classifier": (
        _drop("decode_head.conv_seg."),
        r"the decode head has no decode_head\.conv_seg\.weight",
    ),
    "NaN running mean": (
        _set("decode_head.bottleneck.bn.running_mean", lambda w: torch.full_like(w, float("nan"))),
        r"non-finite weights: decode_head\.bottleneck\.bn\.running_mean has 24 of 24 values NaN",
    ),
    "integer weight": (
        _set("decode_head.conv_seg.bias", lambda w: w.to(torch.int64)),
        r"decode_head\.conv_seg\.bias has dtype torch\.int64; weights must be floating point",
    ),
    "backbone norm missing": (
        _drop("backbone.outnorm1."),
        r"missing keys \['backbone\.hidden_states_norms\.stage2\.bias', 'backbone\.hidden_states_norms\.stage2\."
        r"weight'\] \(in the checkpoint's names, with the shape expected: \['backbone\.outnorm1\.bias \(32,\)', "
        r"'backbone\.outnorm1\.weight \(32,\)'\]\)",
    ),
}


@pytest.mark.parametrize("case", list(DAMAGED_HEADS))
def test_damaged_segmentor_is_named_precisely(case):
    change, message = DAMAGED_HEADS[case]
    state_dict = seg_state_dict()
    change(state_dict)
    with pytest.raises(OriginalCheckpointError, match=message):
        from_original_checkpoint({"state_dict": state_dict})


def test_pool_scales_can_be_given_for_other_decode_heads():
    state_dict = seg_state_dict()
    _drop("decode_head.psp_modules.3.")(state_dict)
    bottleneck = state_dict["decode_head.bottleneck.conv.weight"]
    state_dict["decode_head.bottleneck.conv.weight"] = bottleneck[:, : 128 + 3 * 24].clone()
    model = from_original_checkpoint(state_dict, pool_scales=[1, 2, 4])
    assert list(model.config.pool_scales) == [1, 2, 4]
    with pytest.raises(OriginalCheckpointError, match=r"pool_scales=\[1, 2\] has 2 values but the decode head has 3"):
        from_original_checkpoint(state_dict, pool_scales=[1, 2])


def test_a_decode_head_that_is_not_a_uperhead_converts_the_backbone_only(caplog):
    state_dict = {k: v for k, v in seg_state_dict().items()
                  if k.startswith("backbone.") or k.startswith("decode_head.conv_seg.")}
    model = from_original_checkpoint(state_dict)
    assert type(model).__name__ == "VMambaBackbone"


def test_released_segmentation_names_are_checked(tmp_path):
    expected = r"does not match variant 'upernet-vmamba-tiny-s2l5'.*hidden_sizes"
    with pytest.raises(OriginalCheckpointError, match=expected):
        from_original_checkpoint(SEG_CHECKPOINT, "upernet-vmamba-tiny-s2l5")
    classifier = FIXTURES / "v2_s2l_ln2d" / "checkpoint.pth"
    with pytest.raises(OriginalCheckpointError, match=r"upernet-vmamba-tiny-s2l5 is a released UperNet segmentor, but "
                                                      r"the checkpoint converts to a classifier"):
        from_original_checkpoint(classifier, "upernet-vmamba-tiny-s2l5")
    with pytest.raises(OriginalCheckpointError, match="converts to a VMamba backbone only"):
        from_original_checkpoint(SEG_CHECKPOINT, "upernet-vmamba-tiny-s2l5", backbone_only=True)


def _released_layout_segmentor(builder: str, num_labels: int = 150) -> dict[str, torch.Tensor]:
    """A full-size mmseg UperNet state dict with the released layout (classifier manifest turned into the
    segmentation backbone, UPerHead 512 channels, FCNHead 256 channels on stage 3), zero weights."""
    trunk = {k: torch.zeros(()).expand(v.shape).clone() for k, v in manifest_state_dict(builder).items()
             if not k.startswith("classifier.")}
    widths = [trunk[f"layers.{i}.blocks.0.norm.weight"].shape[0] for i in range(4)]
    state_dict = {"backbone." + k: v for k, v in trunk.items()}
    for i, width in enumerate(widths):
        state_dict[f"backbone.outnorm{i}.weight"] = torch.ones(width)
        state_dict[f"backbone.outnorm{i}.bias"] = torch.zeros(width)

    def conv_module(prefix, out_channels, in_channels, kernel):
        state_dict[f"{prefix}.conv.weight"] = torch.zeros(out_channels, in_channels, kernel, kernel)
        for name in ("weight", "bias", "running_mean", "running_var"):
            state_dict[f"{prefix}.bn.{name}"] = torch.ones(out_channels)
        state_dict[f"{prefix}.bn.num_batches_tracked"] = torch.tensor(160000)

    for i in range(4):
        conv_module(f"decode_head.psp_modules.{i}.1", 512, widths[3], 1)
    conv_module("decode_head.bottleneck", 512, widths[3] + 4 * 512, 3)
    for i in range(3):
        conv_module(f"decode_head.lateral_convs.{i}", 512, widths[i], 1)
        conv_module(f"decode_head.fpn_convs.{i}", 512, 512, 3)
    conv_module("decode_head.fpn_bottleneck", 512, 4 * 512, 3)
    conv_module("auxiliary_head.convs.0", 256, widths[2], 3)
    state_dict |= {
        "decode_head.conv_seg.weight": torch.zeros(num_labels, 512, 1, 1),
        "decode_head.conv_seg.bias": torch.zeros(num_labels),
        "auxiliary_head.conv_seg.weight": torch.zeros(num_labels, 256, 1, 1),
        "auxiliary_head.conv_seg.bias": torch.zeros(num_labels),
    }
    return state_dict


def test_released_layout_converts_checked_against_its_release():
    """The released VMamba-T[s2l5] UperNet layout at full size: recognised by its file name, checked against the
    release, 150 ADE20K classes named."""
    release = get_released_model("upernet-vmamba-tiny-s2l5")
    checkpoint = {"meta": {}, "state_dict": _released_layout_segmentor("vmamba_tiny_s2l5")}
    result = convert_original_checkpoint(checkpoint, source=release.url)
    assert result.kind == "segmentor" and result.release is release and result.official
    assert result.weights_key == "state_dict"
    config = result.model.config
    assert (config.hidden_size, config.auxiliary_channels, config.auxiliary_in_channels) == (512, 256, 384)
    assert config.backbone_config.depths == [2, 2, 5, 2] and config.backbone_config.drop_path_rate == 0.2
    assert config.num_labels == 150 and config.id2label[0] == "wall" and config.id2label[149] == "flag"
    assert config.label2id["skyscraper"] == 48
    params = sum(p.numel() for p in result.model.parameters())
    assert params / 1e6 == pytest.approx(62, abs=0.5)  # the original's table: 62M


# ---------------------------------------------------------------------------------------------------------------
# Registry of the released segmentation checkpoints


def test_segmentation_registry_is_consistent():
    assert len(RELEASED_SEGMENTATION_MODELS) == 7
    file_names = [m.file_name for m in RELEASED_SEGMENTATION_MODELS.values()]
    assert len(set(file_names)) == len(file_names)
    for model in RELEASED_SEGMENTATION_MODELS.values():
        assert model.name == "upernet-" + model.backbone and model.backbone in RELEASED_MODELS
        assert model.title == RELEASED_MODELS[model.backbone].title  # the original's tables name them alike
        tag = "%23v0seg" if model.family == "v0" else "%23v2seg"
        assert model.url.startswith(f"https://github.com/MzeroMiko/VMamba/releases/download/{tag}/")
        assert model.file_name.endswith(".pth") and "ade20k-512x512" in model.file_name
        folder = "vssm" if model.family == "v0" else "vssm1"
        size = next(size for size in ("tiny", "small", "base") if size in model.backbone)
        config_file = f"upernet_vssm_4xb4-160k_ade20k-512x512_{size}.py"
        assert model.original_config == f"segmentation/configs/{folder}/{config_file}"
        assert 40 < model.miou_ss <= model.miou_ms < 55
        assert model.default_weights_key == "state_dict" and model.num_labels == 150 and model.crop_size == 512
        assert get_released_model(model.name) is model
        assert find_release(model.url) is model and find_release(model.file_name) is model
    table = segmentation_markdown_table()
    assert all(f"`{name}`" in table for name in RELEASED_SEGMENTATION_MODELS)


def test_cli_lists_segmentation_models():
    result = run_in_process("--list-models")
    assert result.returncode == 0
    for model in RELEASED_SEGMENTATION_MODELS.values():
        assert model.name in result.stdout and model.url in result.stdout


# ---------------------------------------------------------------------------------------------------------------
# Through the converter CLI, as a user runs it


@pytest.fixture(scope="module")
def converted_segmentor_folder(tmp_path_factory):
    output = tmp_path_factory.mktemp("segmentor") / "upernet-vmamba"
    return output, run_cli("--checkpoint", SEG_CHECKPOINT, "--output", output)


def test_cli_writes_a_segmentation_folder(converted_segmentor_folder):
    output, result = converted_segmentor_folder
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "logits" in result.stdout
    assert {p.name for p in output.iterdir()} == {"config.json", "model.safetensors", "preprocessor_config.json",
                                                  "README.md"}
    config = json.loads((output / "config.json").read_text())
    assert config["architectures"] == ["UperNetForSemanticSegmentation"] and config["model_type"] == "upernet"
    assert config["backbone_config"]["model_type"] == "vmamba"
    processor = json.loads((output / "preprocessor_config.json").read_text())
    assert processor["size"] == {"shortest_edge": 512, "longest_edge": 2048}
    assert processor["image_processor_type"].startswith("SegformerImageProcessor")


@pytest.mark.parametrize("dtype_name", ["float64", "float32"])
@pytest.mark.parametrize("loader", [UperNetForSemanticSegmentation, AutoModelForSemanticSegmentation])
def test_cli_folder_matches_the_original_segmentor(converted_segmentor_folder, loader, dtype_name):
    output, result = converted_segmentor_folder
    assert result.returncode == 0, result.stderr
    model = loader.from_pretrained(output)
    assert isinstance(model, UperNetForSemanticSegmentation)
    check_segmentor_parity(model, dtype_name)


def test_cli_overwrite_of_a_segmentation_folder_and_backbone_only(converted_segmentor_folder, tmp_path):
    output, result = converted_segmentor_folder
    assert result.returncode == 0, result.stderr
    again = run_in_process("--checkpoint", SEG_CHECKPOINT, "--output", output, "--overwrite")
    assert again.returncode == 0, again.stderr
    backbone = tmp_path / "backbone"
    only = run_in_process("--checkpoint", SEG_CHECKPOINT, "--output", backbone, "--backbone-only")
    assert only.returncode == 0, only.stderr
    assert json.loads((backbone / "config.json").read_text())["architectures"] == ["VMambaBackbone"]


def test_segmentation_model_card(converted_segmentor_folder):
    from huggingface_hub import ModelCard

    output, result = converted_segmentor_folder
    card = ModelCard.load(output / "README.md")
    assert card.data.pipeline_tag == "image-segmentation" and card.data.eval_results is None
    assert 'pipeline("image-segmentation"' in card.text and "import transformers_vmamba" in card.text


def test_released_segmentation_card_claims_the_published_miou():
    from transformers import UperNetConfig

    from transformers_vmamba import VMambaConfig
    from transformers_vmamba.model_card import build_segmentation_model_card

    release = get_released_model("upernet-vmamba-small-s2l15")
    config = UperNetConfig(
        backbone_config=VMambaConfig.from_variant(release.backbone, out_features=["stage1", "stage2", "stage3",
                                                                                  "stage4"]),
        num_labels=150,
    )
    card = build_segmentation_model_card(model_id="org/x", config=config, num_parameters=1, source=release.url,
                                         weights_key="state_dict", released=release, official=True)
    values = [result.metric_value for result in card.data.eval_results]
    assert values == [release.miou_ss, release.miou_ms] == [50.6, 51.2]
    assert release.file_name in card.text and release.original_config in card.text
    other = build_segmentation_model_card(model_id="org/x", config=config, num_parameters=1, source="mine.pth",
                                          weights_key="state_dict", released=release, official=False)
    assert other.data.eval_results is None and "does not apply" in other.text


# ---------------------------------------------------------------------------------------------------------------
# Labels, processor, pipeline


def test_ade20k_labels():
    labels = ade20k_labels()
    assert len(labels) == len(set(labels)) == 150
    assert labels[:4] == ["wall", "building", "sky", "floor"] and labels[-1] == "flag"
    assert labels[12] == "person" and labels[20] == "car"


def _mmcv_keep_ratio_size(height: int, width: int) -> tuple[int, int]:
    """The size mmcv's keep-ratio resize to scale (2048, 512) gives (a fact of the original's test pipeline):
    the largest scale with long side <= 2048 and short side <= 512, sides rounded."""
    scale = min(2048 / max(height, width), 512 / min(height, width))
    return int(height * scale + 0.5), int(width * scale + 0.5)


@pytest.mark.parametrize("backend", ["pil"])
def test_segmentation_processor_resizes_like_the_original(backend):
    processor = segmentation_image_processor(backend)
    for height, width in [(427, 640), (512, 512), (300, 1000), (1000, 150), (2000, 3000), (64, 96), (301, 300)]:
        image = np.zeros((height, width, 3), dtype=np.uint8)
        pixel_values = processor(images=image, return_tensors="pt").pixel_values
        expected = _mmcv_keep_ratio_size(height, width)
        actual = tuple(pixel_values.shape[-2:])
        assert all(abs(a - e) <= 1 for a, e in zip(actual, expected)), (height, width, actual, expected)
        assert min(actual) <= 512 and max(actual) <= 2048
    white = processor(images=np.full((8, 8, 3), 255, dtype=np.uint8), return_tensors="pt").pixel_values
    mean, std = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])  # the original's, 0-255
    torch.testing.assert_close(white[0, :, 0, 0], torch.tensor((255 - mean) / std, dtype=torch.float32),
                               atol=1e-3, rtol=0)


@pytest.fixture(scope="module")
def ade20k_folder(tmp_path_factory):
    """The fixture's segmentor with 150-class heads (its conv_seg rows repeated), converted by the CLI in process."""
    root = tmp_path_factory.mktemp("ade20k")
    checkpoint = load_original_checkpoint(SEG_CHECKPOINT)
    state_dict = dict(checkpoint["state_dict"])
    for head in ("decode_head", "auxiliary_head"):
        for name in ("weight", "bias"):
            key = f"{head}.conv_seg.{name}"
            state_dict[key] = state_dict[key].repeat(30, *([1] * (state_dict[key].ndim - 1)))
            state_dict[key] = state_dict[key] + torch.linspace(0, 1, 150).view(-1, *([1] * (state_dict[key].ndim - 1)))
    torch.save({"meta": {}, "state_dict": state_dict}, root / "upernet_150.pth")
    output = root / "folder"
    result = run_in_process("--checkpoint", root / "upernet_150.pth", "--output", output)
    assert result.returncode == 0, result.stderr
    return output


def test_pipeline_segments_a_real_photo_with_ade20k_names(ade20k_folder):
    from PIL import Image
    from sklearn.datasets import load_sample_image
    from transformers import AutoImageProcessor, pipeline

    image = Image.fromarray(load_sample_image("china.jpg"))  # a real photo shipped with scikit-learn, 640x427
    segmenter = pipeline("image-segmentation", model=str(ade20k_folder))
    segments = segmenter(image)
    assert segments and all(segment["label"] in ade20k_labels() for segment in segments)
    assert all(segment["mask"].size == image.size for segment in segments)
    union = sum(np.asarray(segment["mask"], dtype=bool).astype(int) for segment in segments)
    assert (union == 1).all()  # semantic masks partition the image

    processor = AutoImageProcessor.from_pretrained(ade20k_folder)
    model = AutoModelForSemanticSegmentation.from_pretrained(ade20k_folder).eval()
    inputs = processor(images=image, return_tensors="pt")
    assert tuple(inputs.pixel_values.shape) == (1, 3, 512, 767)
    with torch.no_grad():
        outputs = model(**inputs)
    assert tuple(outputs.logits.shape) == (1, 150, 512, 767)
    maps = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])
    assert tuple(maps[0].shape) == (427, 640) and int(maps[0].max()) < 150
    assert processor.do_reduce_labels  # 150-class ADE20K head: labels are reduced as in the original's dataset



def test_model_name_alone_fetches_and_converts_the_released_segmentor(tmp_path, monkeypatch, capsys):
    """`vmamba-convert --model upernet-vmamba-tiny-s2l5` downloads the registry's URL (download stubbed: no network
    here; the stand-in is a full-size file of the released layout with zero weights) and writes a folder whose card
    carries the original's published mIoU."""
    from huggingface_hub import ModelCard

    import transformers_vmamba.convert as cli

    release = get_released_model("upernet-vmamba-tiny-s2l5")
    stand_in = tmp_path / release.file_name
    torch.save({"meta": {}, "state_dict": _released_layout_segmentor("vmamba_tiny_s2l5")}, stand_in)
    fetched = []

    def fake_download(url, cache_dir):
        fetched.append(url)
        return stand_in

    monkeypatch.setattr(cli, "download_checkpoint", fake_download)
    output = tmp_path / "out"
    code = cli.main(["--model", release.name, "--output", str(output), "--cache-dir", str(tmp_path / "c")])
    assert code == 0, capsys.readouterr().err
    assert fetched == [release.url]
    config = json.loads((output / "config.json").read_text())
    assert config["architectures"] == ["UperNetForSemanticSegmentation"] and config["id2label"]["2"] == "sky"
    assert json.loads((output / "preprocessor_config.json").read_text())["do_reduce_labels"] is True
    card = ModelCard.load(output / "README.md")
    assert [result.metric_value for result in card.data.eval_results] == [48.3, 48.6]
    assert release.url in card.text
