"""torch.compile and torch.export of the whole model: the SS2D operator is one graph node, so there is no graph
break and the exported program runs at other batch and image sizes. (Inductor compile time and speed on the
full-size models are measured by benchmarks/bench_cpu_models.py, not here: they take minutes.)"""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES, tiny_config
from torch.export import Dim, export

from transformers_vmamba import VMambaBackbone, VMambaForImageClassification


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("variant", FAMILIES)
def test_compile_fullgraph_matches_eager_in_values_and_gradients(variant):
    """fullgraph=True fails on any graph break; aot_eager traces forward and backward like Inductor does, without
    spending minutes in the C++ compiler."""
    model = VMambaForImageClassification(tiny_config(variant)).train()
    pixel_values, labels = torch.randn(2, 3, 37, 50), torch.tensor([0, 2])
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    loss = compiled(pixel_values, labels=labels).loss
    compiled_grads = torch.autograd.grad(loss, list(model.parameters()))
    eager_loss = model(pixel_values, labels=labels).loss
    eager_grads = torch.autograd.grad(eager_loss, list(model.parameters()))
    torch.testing.assert_close(loss, eager_loss)
    for (name, _), a, b in zip(model.named_parameters(), compiled_grads, eager_grads):
        torch.testing.assert_close(a, b, msg=name)


def test_compiled_backbone_gives_the_eager_feature_maps():
    config = tiny_config("vmamba-tiny-s2l5", out_features=["stage1", "stage2", "stage3", "stage4"])
    backbone = VMambaBackbone(config).eval()
    pixel_values = torch.randn(1, 3, 45, 30)
    compiled = torch.compile(backbone, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        for a, b in zip(compiled(pixel_values).feature_maps, backbone(pixel_values).feature_maps):
            torch.testing.assert_close(a, b)


# Each family in both tracing modes and both training modes, over the four cases (exports take ~10-30 s each).
EXPORT_CASES = [
    ("vmamba-tiny-s1l8", True, "eval"),
    ("vmamba-tiny-s1l8", False, "train"),
    ("vanilla-vmamba-tiny", False, "eval"),
    ("vmamba-tiny-s2l5", True, "train"),
]


@pytest.mark.parametrize(("variant", "strict", "mode"), EXPORT_CASES)
def test_export_with_dynamic_batch_and_image_size(variant, strict, mode):
    """Parameters keep requires_grad; one exported program serves other batch sizes and non-square image sizes.
    (Sizes are bounded below so that the last stage's map is at least 2x2: export specialises sizes 0 and 1.)"""
    model = VMambaForImageClassification(tiny_config(variant))
    getattr(model, mode)()
    assert all(p.requires_grad for p in model.parameters())
    dims = {0: Dim("batch", min=1, max=32), 2: Dim("height", min=64, max=512), 3: Dim("width", min=64, max=512)}
    program = export(model, (torch.randn(2, 3, 64, 96),), dynamic_shapes={"pixel_values": dims}, strict=strict)
    ops = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert "vmamba.ss2d_scan_low_rank.default" in ops
    exported = program.module()
    for shape in ((3, 3, 72, 80), (1, 3, 130, 66)):
        pixel_values = torch.randn(shape)
        expected = model(pixel_values).logits
        torch.testing.assert_close(exported(pixel_values).logits, expected)


def _cpp_compiler_available() -> bool:
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        return bool(get_cpp_compiler())
    except Exception:  # Inductor raises its own errors when it finds no compiler
        return False


@pytest.mark.skipif(not _cpp_compiler_available(), reason="Inductor's CPU backend needs a C++ compiler")
def test_inductor_keeps_the_maps_channels_innermost():
    """On CPU, Inductor gives every 4-D tensor it stores near a convolution the strides of a channels_last NCHW
    tensor. Stored as (B, H, W, C), our maps would get H innermost and every kernel around them would transpose
    (compiled VMamba-T ran 0.93x eager); the model stores them 3-D (modeling's `layer_norm_flat`). So in the
    generated code, every 4-D buffer whose last size is a channel width has that dimension innermost. (Two stages
    and a 72x88 image, so that no map side equals a channel width; ~40 s of C++ compilation.)"""
    import re

    from torch._inductor.utils import run_and_get_code

    config = tiny_config(hidden_sizes=[8, 16], depths=[1, 1])
    model = VMambaForImageClassification(config).eval()
    pixel_values = torch.randn(1, 3, 72, 88)
    with torch.no_grad(), torch._inductor.config.patch(force_disable_caches=True):
        outputs, codes = run_and_get_code(torch.compile(model, fullgraph=True), pixel_values)
        torch.testing.assert_close(outputs.logits, model(pixel_values).logits)
    widths = {config.hidden_sizes[0] // 2} | {
        size
        for stage, hidden in enumerate(config.hidden_sizes)
        for size in (hidden, config.inner_size(stage), int(hidden * config.mlp_ratio))
    }
    buffers = re.findall(
        r"(?:empty_strided_cpu|reinterpret_tensor)\((?:buf\d+, )?\(\d+, \d+, \d+, (\d+)\), \(\d+, \d+, \d+, (\d+)\)",
        "\n".join(codes),
    )
    maps = [(int(size), int(stride)) for size, stride in buffers if int(size) in widths]
    assert maps, "no (B, H, W, C) buffer found in Inductor's code: the check has nothing to look at"
    assert all(stride == 1 for _, stride in maps), f"channels not innermost: (size, stride) {maps}"
