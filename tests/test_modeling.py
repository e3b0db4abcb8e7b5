"""VMambaModel / VMambaForImageClassification behaviour on tiny configurations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import FAMILIES, tiny_config

from transformers_vmamba import VMambaConfig, VMambaForImageClassification, VMambaModel
from transformers_vmamba.modeling_vmamba import VMambaSS2D
from transformers_vmamba.selective_scan import cross_merge, cross_scan, selective_scan_reference


def _expected_map_sizes(config, height, width):
    """Feature-map sizes per stage from the convolution arithmetic of each embed/downsample kind."""
    if config.patch_embed_type == "single_conv":
        h, w = height // config.patch_size, width // config.patch_size
    else:
        h, w = height, width
        for _ in range(2):
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1  # k3 s2 p1
    sizes = [(h, w)]
    for _ in range(config.num_stages - 1):
        h, w = math.ceil(h / 2), math.ceil(w / 2)  # both downsample kinds round up on odd sizes
        sizes.append((h, w))
    return sizes


@pytest.mark.parametrize("variant", FAMILIES)
def test_non_square_odd_input_shapes_and_gradients(variant):
    config = tiny_config(variant)
    model = VMambaForImageClassification(config)
    pixel_values = torch.randn(2, 3, 37, 51)
    output = model(pixel_values, labels=torch.tensor([0, 2]), output_hidden_states=True)
    sizes = _expected_map_sizes(config, 37, 51)
    assert output.logits.shape == (2, 3)
    assert len(output.hidden_states) == config.num_stages + 1
    assert output.hidden_states[0].shape == (2, config.hidden_sizes[0], *sizes[0])
    for stage, hidden in enumerate(output.hidden_states[1:]):
        assert hidden.shape == (2, config.hidden_sizes[stage], *sizes[stage])
    output.loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def original_mixer(mixer: VMambaSS2D, hidden_states: torch.Tensor) -> torch.Tensor:
    """The original's SS2D written out in image layout: project each of the four route copies, scan each with the
    step-by-step reference, merge, norm, gate (v0), project out."""
    features = F.linear(hidden_states, mixer.in_proj.weight)
    if mixer.gated:
        features, gate = features.chunk(2, dim=-1)
    features = mixer.act(mixer.conv2d(features.permute(0, 3, 1, 2)))  # (B, D, H, W)
    batch, _, height, width = features.shape
    routes = cross_scan(features)  # (B, 4, D, L)
    projected = torch.einsum("bkdl,kcd->bkcl", routes, mixer.x_proj_weight)
    dt_low, Bs, Cs = projected.split([mixer.dt_rank, mixer.state_size, mixer.state_size], dim=2)
    dts = torch.einsum("bkrl,kdr->bkdl", dt_low, mixer.dt_proj_weight)
    ys = selective_scan_reference(
        routes.reshape(batch, -1, height * width),
        dts.reshape(batch, -1, height * width),
        -torch.exp(mixer.A_log),
        Bs,
        Cs,
        mixer.D,
        mixer.dt_proj_bias.reshape(-1),
    )
    merged = cross_merge(ys.view(batch, 4, -1, height * width), height, width).view(features.shape)
    scanned = mixer.out_norm(merged.permute(0, 2, 3, 1))
    if mixer.gated:
        scanned = scanned * mixer.act(gate)
    return F.linear(scanned, mixer.out_proj.weight)


@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("variant", FAMILIES)
def test_mixer_equals_the_original_formulation(variant, backend, monkeypatch):
    """Pointwise projections computed once per position and read in route order inside the SS2D operator == the
    original's projections of the four route copies, values and gradients, on a non-square odd map."""
    monkeypatch.setenv("VMAMBA_SCAN_BACKEND", backend)
    config = tiny_config(variant, hidden_sizes=[8, 16, 32, 64], ssm_state_size=3)
    mixer = VMambaSS2D(config, 0).double()
    with torch.no_grad():
        for p in mixer.parameters():
            p.uniform_(-0.5, 0.5)
        mixer.A_log.uniform_(-1, 1.5)
    hidden_states = torch.randn(2, 5, 7, 8, dtype=torch.float64, requires_grad=True)
    actual = mixer(hidden_states)
    expected = original_mixer(mixer, hidden_states)
    torch.testing.assert_close(actual, expected, atol=1e-12, rtol=0)
    upstream = torch.randn_like(actual)
    inputs = [hidden_states, *mixer.parameters()]
    for a, b in zip(torch.autograd.grad(actual, inputs, upstream), torch.autograd.grad(expected, inputs, upstream)):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=0)


def test_scan_keeps_float32_under_half_precision_inputs(tmp_path):
    from transformers_vmamba.ss2d import ss2d_scan

    shapes = ((1, 3, 4, 2), (1, 3, 4, 4, 2), (1, 3, 4, 4, 1), (1, 3, 4, 4, 1))
    x, dt, B, C = (torch.randn(shape).to(torch.bfloat16) for shape in shapes)
    A, D, bias = -torch.ones(4, 2, 1), torch.ones(4, 2), torch.zeros(4, 2)
    assert ss2d_scan(x, dt, A, B, C, D, bias).dtype == torch.float32
    VMambaForImageClassification(tiny_config()).save_pretrained(tmp_path)
    model = VMambaForImageClassification.from_pretrained(tmp_path, dtype=torch.bfloat16)
    mixer = model.vmamba.encoder.stages[0].layers[0].ssm
    assert mixer.A_log.dtype == mixer.D.dtype == mixer.dt_proj_bias.dtype == torch.float32
    assert mixer.in_proj.weight.dtype == torch.bfloat16
    assert model(torch.randn(1, 3, 32, 32, dtype=torch.bfloat16)).logits.dtype == torch.bfloat16


@pytest.mark.parametrize("how", ["from_config", "default_dtype"])
def test_half_precision_builds_keep_scan_parameters_in_float32(how):
    """The scan parameters are created in float32 whatever the dtype a model is built in, so their
    initialisation (dt bias from tiny step sizes, log A) is not rounded to float16."""
    from transformers import AutoModelForImageClassification

    config = tiny_config("vanilla-vmamba-tiny", ssm_state_size=16)
    if how == "from_config":
        model = AutoModelForImageClassification.from_config(config, dtype=torch.float16)
    else:
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float16)
        try:
            model = VMambaForImageClassification(config)
        finally:
            torch.set_default_dtype(previous)
    mixer = model.vmamba.encoder.stages[0].layers[0].ssm
    assert mixer.in_proj.weight.dtype == torch.float16
    assert mixer.A_log.dtype == mixer.D.dtype == mixer.dt_proj_bias.dtype == torch.float32
    step = F.softplus(mixer.dt_proj_bias)
    assert step.min() >= config.ssm_dt_min * 0.999 and step.max() <= config.ssm_dt_max * 1.001
    torch.testing.assert_close(mixer.A_log[0], torch.log(torch.arange(1, 17.0)))


@pytest.mark.parametrize("variant", FAMILIES)
def test_batch_of_zero_images(variant):
    model = VMambaForImageClassification(tiny_config(variant)).eval()
    output = model(torch.randn(0, 3, 32, 24), output_hidden_states=True)
    assert output.logits.shape == (0, 3)
    assert [tuple(h.shape[:2]) for h in output.hidden_states] == [(0, 8), (0, 8), (0, 16), (0, 32), (0, 64)]
    model.train()
    loss = model(torch.randn(0, 3, 32, 24, requires_grad=True)).logits.sum()
    loss.backward()  # empty gradients, no error


def test_scan_backend_is_checked_when_the_model_is_built(monkeypatch):
    monkeypatch.setenv("VMAMBA_SCAN_BACKEND", "gpu")
    with pytest.raises(ValueError, match="VMAMBA_SCAN_BACKEND must be one of auto, kernel, torch; got 'gpu'"):
        VMambaForImageClassification(tiny_config())


def test_kernel_backend_without_a_kernel_says_why(monkeypatch):
    import transformers_vmamba.ss2d as ss2d

    model = VMambaForImageClassification(tiny_config()).eval()
    monkeypatch.setattr(ss2d, "vmamba_kernels", None)
    monkeypatch.setenv("VMAMBA_SCAN_BACKEND", "kernel")
    with pytest.raises(RuntimeError, match="no compiled SS2D kernel runs on cpu: the vmamba_kernels package is not"):
        model(torch.randn(1, 3, 16, 16))
    monkeypatch.setenv("VMAMBA_SCAN_BACKEND", "auto")  # falls back to the PyTorch scan instead
    assert model(torch.randn(1, 3, 16, 16)).logits.shape == (1, 3)


def test_configs_saved_by_version_0_1_still_load(tmp_path):
    """0.1 configs carry `channels_first` (a memory layout, now always channels-last) and `scan_backend`."""
    import json

    config = tiny_config("vmamba-tiny-s2l5")
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved.update(channels_first=True, scan_backend="auto")
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = VMambaConfig.from_pretrained(tmp_path)
    assert loaded.hidden_sizes == config.hidden_sizes and loaded.family == "v2"
    assert not hasattr(loaded, "channels_first") and not hasattr(loaded, "scan_backend")
    assert "channels_first" not in loaded.to_dict()


def test_return_dict_false_and_config_default():
    model = VMambaForImageClassification(tiny_config()).eval()
    pixel_values = torch.randn(1, 3, 32, 32)
    as_tuple = model(pixel_values, return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], model(pixel_values).logits)
    with_hidden = model(pixel_values, labels=torch.tensor([1]), output_hidden_states=True, return_dict=False)
    assert len(with_hidden) == 3 and with_hidden[0].ndim == 0 and len(with_hidden[2]) == 5
    model.config.output_hidden_states = True
    assert len(model(pixel_values).hidden_states) == 5


def test_base_model_outputs():
    model = VMambaModel(tiny_config()).eval()
    output = model(torch.randn(2, 3, 40, 24), output_hidden_states=True)
    assert output.last_hidden_state.shape == (2, 64, 2, 1)
    torch.testing.assert_close(output.pooler_output, output.last_hidden_state.mean((-2, -1)))
    # last_hidden_state is the final LayerNorm applied to the last stage's output
    last_stage = output.hidden_states[-1].permute(0, 2, 3, 1)
    normed = F.layer_norm(last_stage, (64,), model.layernorm.weight, model.layernorm.bias, 1e-5).permute(0, 3, 1, 2)
    torch.testing.assert_close(output.last_hidden_state, normed)


def test_losses_for_the_three_problem_types():
    pixel_values = torch.randn(3, 3, 32, 32)
    model = VMambaForImageClassification(tiny_config()).eval()
    labels = torch.tensor([0, 2, 1])
    output = model(pixel_values, labels=labels)
    assert model.config.problem_type == "single_label_classification"
    torch.testing.assert_close(output.loss, F.cross_entropy(output.logits, labels))

    model = VMambaForImageClassification(tiny_config(problem_type="multi_label_classification")).eval()
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    output = model(pixel_values, labels=targets)
    torch.testing.assert_close(output.loss, F.binary_cross_entropy_with_logits(output.logits, targets))

    model = VMambaForImageClassification(tiny_config(num_labels=1)).eval()
    values = torch.randn(3)
    output = model(pixel_values, labels=values)
    assert model.config.problem_type == "regression"
    torch.testing.assert_close(output.loss, F.mse_loss(output.logits.squeeze(), values))


def test_gradient_checkpointing_gives_the_same_gradients():
    config = tiny_config("vanilla-vmamba-tiny")
    pixel_values, labels = torch.randn(2, 3, 32, 24), torch.tensor([0, 1])
    reference = VMambaForImageClassification(config).train()
    checkpointed = VMambaForImageClassification(config).train()
    checkpointed.load_state_dict(reference.state_dict())
    # renamed activation_checkpointing_enable in newer transformers; the old name still works everywhere
    enable = getattr(checkpointed, "activation_checkpointing_enable", None)
    if enable is not None:
        enable()
    else:
        checkpointed.gradient_checkpointing_enable()
    assert all(layer.gradient_checkpointing for stage in checkpointed.vmamba.encoder.stages for layer in stage.layers)
    reference(pixel_values, labels=labels).loss.backward()
    checkpointed(pixel_values, labels=labels).loss.backward()
    for (name, a), b in zip(reference.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_drop_path_only_in_training():
    model = VMambaForImageClassification(tiny_config(drop_path_rate=0.5, depths=[2, 2, 2, 2]))
    rates = [layer.drop_path.drop_prob for stage in model.vmamba.encoder.stages for layer in stage.layers[1:]]
    assert rates == sorted(rates) and rates[-1] == pytest.approx(0.5)  # linear schedule up to the rate
    pixel_values = torch.randn(4, 3, 32, 32)
    model.eval()
    assert torch.equal(model(pixel_values).logits, model(pixel_values).logits)
    model.train()
    assert not torch.allclose(model(pixel_values).logits, model(pixel_values).logits)


def test_wrong_channel_count_and_too_small_image():
    model = VMambaForImageClassification(tiny_config())
    with pytest.raises(ValueError, match="1 channels but the model expects 3"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"3x40 pixels is too small.*at least 4x4"):
        model(torch.randn(1, 3, 3, 40))
    with pytest.raises(ValueError, match=r"\(batch, channels, height, width\)"):
        model(torch.randn(3, 32, 32))
    # the smallest allowed image works for both embedding kinds
    for variant in ("vanilla-vmamba-tiny", "vmamba-tiny-s2l5"):
        assert VMambaForImageClassification(tiny_config(variant))(torch.randn(1, 3, 4, 4)).logits.shape == (1, 3)


def test_initialisation_follows_the_original():
    config = tiny_config("vanilla-vmamba-tiny", hidden_sizes=[32, 64, 128, 256], ssm_state_size=16)
    model = VMambaForImageClassification(config)
    mixer = model.vmamba.encoder.stages[1].layers[0].ssm
    torch.testing.assert_close(mixer.A_log, torch.log(torch.arange(1, 17.0)).expand(4 * 128, 16))
    assert torch.equal(mixer.D, torch.ones(4 * 128))
    step = F.softplus(mixer.dt_proj_bias)
    assert step.min() >= config.ssm_dt_min * 0.999 and step.max() <= config.ssm_dt_max * 1.001
    assert step.std() > 0  # sampled, not constant
    bound = mixer.dt_rank**-0.5
    assert mixer.dt_proj_weight.abs().max() <= bound and mixer.dt_proj_weight.abs().max() > 0.5 * bound
    assert mixer.x_proj_weight.abs().max() <= 128**-0.5
    weight = model.vmamba.encoder.stages[2].layers[0].ssm.in_proj.weight
    # trunc_normal_(std=0.02) with the default absolute bounds +-2, as in the original (timm's helper)
    assert abs(weight.std().item() - 0.02) < 0.001 and abs(weight.mean().item()) < 0.001
    assert torch.equal(model.classifier.bias, torch.zeros(3))
    norm = model.vmamba.encoder.stages[0].layers[0].ssm_norm
    assert torch.equal(norm.weight, torch.ones(32)) and torch.equal(norm.bias, torch.zeros(32))


def _weights_not_channels_last(model) -> list[str]:
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Conv2d)
        and not module.weight.is_contiguous(memory_format=torch.channels_last)
    ]


@pytest.mark.parametrize("variant", FAMILIES)
def test_convolution_weights_stay_channels_last(variant, tmp_path):
    """The convolutions read channels-last maps; a plain-layout weight would be re-laid out at every call (see
    VMambaConv2d). Each way a weight is set keeps the layout, and the saved file holds ordinary contiguous tensors."""
    from safetensors.torch import load_file

    config = tiny_config(variant)
    model = VMambaForImageClassification(config).eval()
    convolutions = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convolutions) >= 2 and not _weights_not_channels_last(model)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    assert all(t.is_contiguous() for t in saved.values())
    loaded = VMambaForImageClassification.from_pretrained(tmp_path).eval()
    assert not _weights_not_channels_last(loaded)
    plain = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    assigned = VMambaForImageClassification(config).eval()
    assigned.load_state_dict(plain, assign=True)
    assert not _weights_not_channels_last(assigned)
    assert not _weights_not_channels_last(model.to(torch.float64))
    pixels = torch.randn(2, 3, 40, 24, dtype=torch.float64)
    with torch.no_grad():
        expected = model(pixels).logits
        torch.testing.assert_close(loaded.double()(pixels).logits, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(assigned.double()(pixels).logits, expected, rtol=1e-12, atol=1e-12)
