"""ONNX export: the SS2D operator's ONNX translation against the step-by-step reference, and whole models exported
with `export_onnx` (torch.onnx.export, dynamo=True) run by onnxruntime on real photos against torch eager.

Exports take seconds each, so the models are two-stage toy configurations of every family and each exported file
serves several batch and image sizes (one dynamic file)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from conftest import FAMILIES, tiny_config


onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

from torch.export import Dim  # noqa: E402

from transformers_vmamba import (  # noqa: E402
    VMambaBackbone,
    VMambaForImageClassification,
    default_image_processor,
    export_onnx,
)
from transformers_vmamba.onnx_export import onnx_translation_table  # noqa: E402
from transformers_vmamba.selective_scan import ss2d_reference  # noqa: E402


TOLERANCE = 1e-4


def two_stage_config(variant, **overrides):
    return tiny_config(variant, hidden_sizes=[8, 16], depths=[1, 1], **overrides)


@pytest.fixture(scope="module")
def photos():
    """The two real photos shipped with scikit-learn, preprocessed (2, 3, 224, 224); and a non-square batch of one,
    (1, 3, 160, 112), resized from the first."""
    datasets = pytest.importorskip("sklearn.datasets")
    images = [datasets.load_sample_image("china.jpg"), datasets.load_sample_image("flower.jpg")]
    pixel_values = default_image_processor("pil")(images, return_tensors="pt")["pixel_values"]
    non_square = torch.nn.functional.interpolate(pixel_values[:1], size=(160, 112), mode="bicubic", antialias=True)
    return pixel_values, non_square


def session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def max_abs(onnx_output, torch_output):
    return float(np.abs(onnx_output - torch_output.detach().numpy()).max())


# ---------------------------------------------------------------------------------------------------------------
# The operator alone
# ---------------------------------------------------------------------------------------------------------------


class ScanOnly(torch.nn.Module):
    def forward(self, x, dt, A, B, C, D, dt_bias):
        return torch.ops.vmamba.ss2d_scan(x, dt, A, B, C, D, dt_bias)


def scan_inputs(batch, height, width, channels, d_state, generator):
    def normal(*shape):
        return torch.randn(*shape, generator=generator)

    A = -(torch.rand(4, channels, d_state, generator=generator) * 2 + 0.05)
    return (
        normal(batch, height, width, channels),
        normal(batch, height, width, 4, channels),
        A,
        normal(batch, height, width, 4, d_state),
        normal(batch, height, width, 4, d_state),
        normal(4, channels),
        normal(4, channels) - 1,
    )


@pytest.mark.parametrize(("d_state", "dtype"), [(1, torch.float32), (16, torch.float32), (16, torch.float64)])
def test_op_translation_matches_the_reference(tmp_path, d_state, dtype):
    """One file with dynamic batch and map size: H != W both ways, odd sizes, square, batch 1 and 3. float64
    inputs are scanned in float64, as by the operator."""
    generator = torch.Generator().manual_seed(d_state)
    batch, height, width = Dim("batch"), Dim("height", min=2), Dim("width", min=2)
    mapped = {0: batch, 1: height, 2: width}
    dynamic_shapes = (mapped, mapped, None, mapped, mapped, None, None)
    example = tuple(t.to(dtype) for t in scan_inputs(2, 5, 7, 6, d_state, generator))
    program = torch.onnx.export(
        ScanOnly(), example, dynamo=True, custom_translation_table=onnx_translation_table(),
        dynamic_shapes=dynamic_shapes, verbose=False,
    )
    path = tmp_path / "scan.onnx"
    program.save(path)
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    op_types = {node.op_type for node in model.graph.node} | {n.op_type for f in model.functions for n in f.node}
    assert "Scan" in op_types
    assert all(node.domain in ("", "ai.onnx") for node in model.graph.node)  # standard ONNX only

    run = session(path)
    names = [argument.name for argument in run.get_inputs()]
    for shape in ((2, 5, 7), (1, 9, 4), (3, 6, 6), (1, 3, 11)):
        inputs = tuple(t.to(dtype) for t in scan_inputs(*shape, 6, d_state, generator))
        got = run.run(None, dict(zip(names, (t.numpy() for t in inputs))))[0]
        expected = ss2d_reference(*(t.double() for t in inputs))
        assert got.shape == tuple(expected.shape)
        assert got.dtype == (np.float64 if dtype == torch.float64 else np.float32)
        assert max_abs(got, expected) < (1e-10 if dtype == torch.float64 else TOLERANCE), shape


# ---------------------------------------------------------------------------------------------------------------
# Whole models
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", FAMILIES)
def test_exported_classifier_matches_torch_on_real_photos(tmp_path, photos, variant):
    """One dynamic file: the two photos at 224x224 (batch 2), one of them at 160x112 (batch 1, H != W)."""
    model = VMambaForImageClassification(two_stage_config(variant)).eval()
    path = export_onnx(model, tmp_path / "model.onnx", image_size=(64, 96))
    run = session(path)
    assert [output.name for output in run.get_outputs()] == ["logits"]
    square, non_square = photos
    for pixel_values in (square, non_square):
        with torch.no_grad():
            expected = model(pixel_values).logits
        (logits,) = run.run(None, {"pixel_values": pixel_values.numpy()})
        assert logits.shape == tuple(expected.shape)
        assert max_abs(logits, expected) < TOLERANCE


def test_exported_backbone_feature_maps_match_torch(tmp_path, photos):
    """Hidden states: every stage's feature map; a fixed-size (not dynamic) export of the v0 family."""
    config = two_stage_config("vanilla-vmamba-tiny", out_features=["stage1", "stage2"])
    backbone = VMambaBackbone(config).eval()
    pixel_values = photos[0][:1]
    path = export_onnx(backbone, tmp_path / "backbone.onnx", image_size=224, dynamic=False)
    run = session(path)
    assert [output.name for output in run.get_outputs()] == ["feature_maps_0", "feature_maps_1"]
    with torch.no_grad():
        expected = backbone(pixel_values).feature_maps
    got = run.run(None, {"pixel_values": pixel_values.numpy()})
    for onnx_map, torch_map in zip(got, expected, strict=True):
        assert onnx_map.shape == tuple(torch_map.shape)
        assert max_abs(onnx_map, torch_map) < TOLERANCE


def test_export_is_dynamic_only_where_torch_export_allows(tmp_path):
    model = VMambaForImageClassification(two_stage_config("vmamba-tiny-s1l8"))
    with pytest.raises(ValueError, match="min_image_size"):
        export_onnx(model, tmp_path / "m.onnx", image_size=64, min_image_size=32)
    with pytest.raises(ValueError, match="outside"):
        export_onnx(model, tmp_path / "m.onnx", image_size=32)


def test_missing_onnxscript_gives_an_actionable_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # makes `import onnxscript` raise ImportError
    model = VMambaForImageClassification(two_stage_config("vmamba-tiny-s1l8"))
    with pytest.raises(ImportError, match=r"transformers-vmamba\[onnx\]"):
        export_onnx(model, tmp_path / "m.onnx")
    with pytest.raises(ImportError, match="onnxscript"):
        onnx_translation_table()
    assert model.training  # untouched
