"""Transformers integration: Auto classes, save/load, pipeline, remote code, Trainer, image processor."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from conftest import run_remote_code_child, tiny_config
from PIL import Image
from safetensors.torch import load_file, save_file

import transformers_vmamba
from transformers_vmamba import VMambaConfig, VMambaForImageClassification, VMambaModel, default_image_processor


@pytest.fixture(scope="module")
def sample_image() -> Image.Image:
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image("china.jpg"))


@pytest.fixture()
def saved_model(tmp_path):
    torch.manual_seed(0)
    config = tiny_config("vmamba-tiny-s2l5", id2label={0: "cat", 1: "dog", 2: "bird"})
    model = VMambaForImageClassification(config).eval()
    model.save_pretrained(tmp_path)
    default_image_processor().save_pretrained(tmp_path)
    return model, tmp_path


def test_save_load_round_trip_is_exact(saved_model):
    model, path = saved_model
    assert (path / "model.safetensors").is_file() and not (path / "pytorch_model.bin").exists()
    loaded = VMambaForImageClassification.from_pretrained(path).eval()
    pixel_values = torch.randn(2, 3, 45, 33)
    with torch.no_grad():
        assert torch.equal(model(pixel_values).logits, loaded(pixel_values).logits)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_auto_classes_resolve(saved_model):
    from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

    model, path = saved_model
    assert type(AutoConfig.from_pretrained(path)) is VMambaConfig
    assert type(AutoModelForImageClassification.from_pretrained(path)) is VMambaForImageClassification
    base = AutoModel.from_pretrained(path).eval()
    assert type(base) is VMambaModel
    pixel_values = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(base(pixel_values).pooler_output, model.vmamba(pixel_values).pooler_output)
    # a new model built from just a config also resolves
    assert type(AutoModel.from_config(tiny_config())) is VMambaModel


def test_auto_image_processor_resolves(saved_model):
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(saved_model[1])
    assert "ConvNextImageProcessor" in type(processor).__name__
    assert processor.size == {"shortest_edge": 224} and processor.crop_pct == 0.875


def test_saved_folder_carries_remote_code(saved_model):
    _, path = saved_model
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "vmamba"
    assert config["auto_map"]["AutoConfig"] == "configuration_vmamba.VMambaConfig"
    assert config["auto_map"]["AutoModelForImageClassification"] == "modeling_vmamba.VMambaForImageClassification"
    assert config["auto_map"]["AutoModel"] == "modeling_vmamba.VMambaModel"
    assert config["auto_map"]["AutoBackbone"] == "modeling_vmamba.VMambaBackbone"
    for name in ("configuration_vmamba.py", "modeling_vmamba.py", "selective_scan.py"):
        assert (path / name).is_file(), name


def test_pipeline_on_a_real_image(saved_model, sample_image):
    from transformers import pipeline

    model, path = saved_model
    classifier = pipeline("image-classification", model=str(path), device="cpu")
    predictions = classifier(sample_image, top_k=3)
    assert sorted(p["label"] for p in predictions) == ["bird", "cat", "dog"]
    # the pipeline's scores are the model's softmax on the processed image
    pixel_values = default_image_processor()(sample_image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        probs = model(pixel_values).logits.softmax(-1)[0]
    label2id = {label: index for index, label in model.config.id2label.items()}
    for p in predictions:
        assert p["score"] == pytest.approx(probs[label2id[p["label"]]].item(), abs=1e-5)


def test_image_feature_extraction_pipeline_pooled_and_unpooled(saved_model, sample_image):
    from transformers import pipeline

    model, path = saved_model
    extractor = pipeline("image-feature-extraction", model=str(path), device="cpu")
    assert type(extractor.model) is VMambaModel  # the task's Auto class, from the classifier's folder
    pixel_values = default_image_processor()(sample_image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model.vmamba(pixel_values)
    pooled = torch.tensor(extractor(sample_image, pool=True))
    unpooled = torch.tensor(extractor(sample_image))
    torch.testing.assert_close(pooled, expected.pooler_output, atol=1e-5, rtol=1e-5)
    # unpooled: the last stage's map, (batch, channels, height, width) as documented
    assert unpooled.shape == expected.last_hidden_state.shape == (1, model.config.hidden_sizes[-1], 7, 7)
    torch.testing.assert_close(unpooled, expected.last_hidden_state, atol=1e-5, rtol=1e-5)


def test_image_processor_is_the_original_eval_transform(sample_image):
    """Short side to 256 (bicubic), center crop 224, ImageNet mean/std, computed independently with PIL."""
    processor = default_image_processor()
    pixel_values = processor(sample_image, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, 224, 224)
    width, height = sample_image.size
    new_h, new_w = (256, int(256 * width / height)) if height <= width else (int(256 * height / width), 256)
    resized = np.asarray(sample_image.resize((new_w, new_h), Image.BICUBIC), dtype=np.float32) / 255.0
    top, left = (new_h - 224) // 2, (new_w - 224) // 2
    crop = resized[top : top + 224, left : left + 224]
    expected = (crop - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    expected = torch.from_numpy(expected.transpose(2, 0, 1)).float()[None]
    torch.testing.assert_close(pixel_values, expected, atol=1e-5, rtol=0)


REMOTE_CODE_CHILD = textwrap.dedent(
    """
    import sys
    sys.modules["transformers_vmamba"] = None  # the package is not installed here
    sys.modules["vmamba_kernels"] = None
    import torch
    from safetensors.torch import load_file, save_file
    import transformers.models.auto.auto_factory as auto_factory
    from transformers import AutoBackbone, AutoConfig, AutoModel, AutoModelForImageClassification

    path, inputs, out = sys.argv[1:4]
    pixel_values = load_file(inputs)["pixel_values"]
    config = AutoConfig.from_pretrained(path, trust_remote_code=True)
    model = AutoModelForImageClassification.from_pretrained(path, trust_remote_code=True).eval()
    base = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
    # AutoBackbone.from_pretrained asks the Hub whether the name is a repository (transformers 5.24 does so even
    # for a local folder); answer as the Hub would for a published folder, offline.
    auto_factory.hf_api = lambda: type("Hub", (), {"repo_exists": staticmethod(lambda name: True)})()
    backbone = AutoBackbone.from_pretrained(path, trust_remote_code=True, out_features=["stage2", "stage4"]).eval()
    for loaded, name in ((model, "VMambaForImageClassification"), (base, "VMambaModel"), (backbone, "VMambaBackbone")):
        assert type(loaded).__name__ == name, type(loaded)
        assert type(loaded).__module__.startswith("transformers_modules"), type(loaded).__module__
    with torch.no_grad():
        outputs = {
            "logits": model(pixel_values).logits,
            "pooled": base(pixel_values).pooler_output,
            "stage2": backbone(pixel_values, output_hidden_states=True).hidden_states[2].contiguous(),
        }
    save_file(outputs, out)
    """
)


def test_trust_remote_code_without_the_package(saved_model, tmp_path):
    model, path = saved_model
    pixel_values = torch.randn(2, 3, 37, 50)
    got = run_remote_code_child(REMOTE_CODE_CHILD, path, pixel_values, tmp_path)
    with torch.no_grad():
        expected = model(pixel_values, output_hidden_states=True)
        pooled = model.vmamba(pixel_values).pooler_output
    torch.testing.assert_close(got["logits"], expected.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(got["pooled"], pooled, atol=1e-6, rtol=0)
    # the backbone takes the classifier's trunk: same stage features
    torch.testing.assert_close(got["stage2"], expected.hidden_states[2], atol=1e-6, rtol=0)


def test_from_pretrained_initialises_missing_weights_on_meta(saved_model, tmp_path):
    """Weights missing from a checkpoint are initialised by _init_weights after meta-device construction."""
    model, path = saved_model
    state = load_file(path / "model.safetensors")
    dropped = [k for k in state if k.endswith((".A_log", ".D", ".dt_proj_bias"))]
    kept = {k: v for k, v in state.items() if k not in dropped}
    save_file(kept, path / "model.safetensors", metadata={"format": "pt"})
    loaded = VMambaForImageClassification.from_pretrained(path)
    for stage in loaded.vmamba.encoder.stages:
        mixer = stage.layers[0].ssm
        expected = torch.log(torch.arange(1, mixer.state_size + 1.0)).expand_as(mixer.A_log)
        torch.testing.assert_close(mixer.A_log.data, expected)
        assert torch.equal(mixer.D.data, torch.ones_like(mixer.D))
        step = torch.nn.functional.softplus(mixer.dt_proj_bias.data)
        assert step.min() >= 0.000999 and step.max() <= 0.1001
    kept = loaded.state_dict()
    for key, value in state.items():
        if key not in dropped:
            assert torch.equal(kept[key], value), key


def test_half_precision_loading_keeps_scan_parameters_in_float32(saved_model):
    _, path = saved_model
    model = VMambaForImageClassification.from_pretrained(path, dtype=torch.bfloat16)
    mixer = model.vmamba.encoder.stages[0].layers[0].ssm
    assert mixer.in_proj.weight.dtype == torch.bfloat16
    assert mixer.A_log.dtype == mixer.D.dtype == mixer.dt_proj_bias.dtype == torch.float32
    logits = model(torch.randn(1, 3, 32, 32, dtype=torch.bfloat16)).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


def test_one_trainer_step_updates_the_weights(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = VMambaForImageClassification(tiny_config())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = [{"pixel_values": torch.randn(3, 32, 32), "labels": i % 3} for i in range(4)]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        max_steps=1,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        logging_strategy="no",
    )
    result = Trainer(model=model, args=args, train_dataset=data).train()
    assert np.isfinite(result.training_loss)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(".ssm.A_log" in k for k in changed) and "classifier.weight" in changed




def test_public_api():
    assert set(transformers_vmamba.__all__) >= {
        "VMambaConfig",
        "VMambaModel",
        "VMambaForImageClassification",
        "VMambaPreTrainedModel",
        "VARIANTS",
        "from_original_checkpoint",
        "load_original_checkpoint",
        "infer_config_from_state_dict",
        "convert_original_state_dict",
        "OriginalCheckpointError",
        "default_image_processor",
    }
    assert issubclass(transformers_vmamba.OriginalCheckpointError, ValueError)
