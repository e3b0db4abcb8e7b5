"""`vmamba-convert` run the way a user runs it, on checkpoints made by the original code: the written folder
reproduces the original's logits / feature maps, loads with remote code alone and in a pipeline; downloads, older
key names, the full-size released layouts and the Hub upload.

Fixture checkpoints and expected outputs were produced by the original VMamba code (see
tests/fixtures/original/README.md); the full-size manifests hold the exact key/shape layout of the nine released
models.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from conversion_helpers import (
    BACKBONE_CHECKPOINT,
    CLASSIFICATION_FIXTURES,
    FIXTURES,
    cli_env,
    fixture_config,
    http_server_fixture,  # noqa: F401 - the http_server fixture
    load_inputs,
    manifest_state_dict,
    plain_fixture_state_dict,
    run_cli,
    run_in_process,
    write_checkpoint,
)

import transformers_vmamba.convert as cli
from transformers_vmamba.labels import imagenet1k_labels
from transformers_vmamba.model_card import build_model_card
from transformers_vmamba.released_models import RELEASED_MODELS, get_released_model


def test_download_streams_into_cache_and_reuses_it(http_server, tmp_path):
    root, base, requests = http_server
    payload = (FIXTURES / "v0_vanilla" / "checkpoint.pth").read_bytes()
    (root / "#v0cls").mkdir(exist_ok=True)
    (root / "#v0cls" / "ckpt_epoch_1.pth").write_bytes(payload)
    url = f"{base}/%23v0cls/ckpt_epoch_1.pth"  # quoted like the GitHub release URLs
    first = cli.download_checkpoint(url, tmp_path / "cache")
    assert first.name == "ckpt_epoch_1.pth" and first.read_bytes() == payload
    assert list(first.parent.iterdir()) == [first]  # no .incomplete left
    count = len(requests)
    assert cli.download_checkpoint(url, tmp_path / "cache") == first
    assert len(requests) == count  # served from the cache

    with pytest.raises(cli.ConversionError, match="download of .* failed"):
        cli.download_checkpoint(f"{base}/missing.pth", tmp_path / "cache")
    assert not any(p.name.endswith(".incomplete") for p in (tmp_path / "cache").rglob("*"))


FIXTURE_CASES = [("v0_vanilla", "model")] + [
    (name, key) for name in CLASSIFICATION_FIXTURES[1:] for key in ("model", "model_ema")
]


def test_fixture_cases_list_every_weights_key_of_each_fixture():
    listed = {name: [key for fixture, key in FIXTURE_CASES if fixture == name] for name in CLASSIFICATION_FIXTURES}
    assert listed == {name: fixture_config(name)["checkpoint"]["weights_keys"] for name in CLASSIFICATION_FIXTURES}


@pytest.fixture(scope="module")
def converted_fixtures(tmp_path_factory, http_server):
    """Convert every (fixture, weights key) pair.

    Each fixture's default conversion runs as a separate process exactly as a user types it (two at a time), with
    the weights key left to the converter; one of them fetches its checkpoint over HTTP from the loopback server.
    The non-default keys (--weights-key) go through the same `main` in this process, to keep the file fast."""
    root = tmp_path_factory.mktemp("converted")
    served, base, _ = http_server
    (served / "v2_s2l_ln2d.pth").write_bytes((FIXTURES / "v2_s2l_ln2d" / "checkpoint.pth").read_bytes())
    processes, in_process, outputs = {}, {}, {}
    for name, key in FIXTURE_CASES:
        output = outputs[(name, key)] = root / f"{name}-{key}"
        if key != fixture_config(name)["checkpoint"]["default_weights_key"]:
            in_process[(name, key)] = ["--checkpoint", FIXTURES / name / "checkpoint.pth", "--output", output,
                                       "--weights-key", key]
        elif name == "v2_s2l_ln2d":
            processes[(name, key)] = ["--checkpoint", f"{base}/v2_s2l_ln2d.pth", "--cache-dir", root / "cache",
                                      "--output", output]
        else:
            processes[(name, key)] = ["--checkpoint", FIXTURES / name / "checkpoint.pth", "--output", output]
    results = {}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {case: pool.submit(run_cli, *args) for case, args in processes.items()}
        for case, args in in_process.items():
            results[case] = run_in_process(*args)
        results.update({case: future.result() for case, future in futures.items()})
    return {case: (outputs[case], results[case]) for case in outputs}


@pytest.mark.parametrize("name,key", FIXTURE_CASES)
def test_cli_converts_fixture_and_reproduces_original_logits(converted_fixtures, name, key):
    from safetensors.torch import load_file
    from transformers import AutoModelForImageClassification

    import transformers_vmamba  # noqa: F401  (registers the local classes)

    output, result = converted_fixtures[(name, key)]
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    files = {p.name for p in output.iterdir()}
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md"} <= files
    config = json.loads((output / "config.json").read_text())
    assert config["model_type"] == "vmamba"
    assert {"AutoConfig", "AutoModelForImageClassification"} <= set(config["auto_map"])
    assert {ref.split(".")[0] + ".py" for ref in config["auto_map"].values()} <= files
    assert config["id2label"] == {str(i): f"LABEL_{i}" for i in range(10)}
    assert f"weights `{key}`" in (output / "README.md").read_text()

    model = AutoModelForImageClassification.from_pretrained(output).eval()
    expected = load_file(FIXTURES / name / f"expected_{key}_float32.safetensors")
    for case, pixel_values in load_inputs().items():
        with torch.no_grad():
            logits = model(pixel_values=pixel_values).logits
        torch.testing.assert_close(
            logits, expected[f"{case}/logits"], atol=1e-4, rtol=1e-4, msg=f"{name}/{key}/{case}"
        )


REMOTE_CODE_CHECK = """
import sys
sys.modules["transformers_vmamba"] = None  # as on a machine without the package: import fails
sys.modules["vmamba_kernels"] = None
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification

folder, inputs, expected = sys.argv[1:]
model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
with torch.no_grad():
    logits = model(pixel_values=load_file(inputs)["nonsquare_64x96"]).logits
torch.testing.assert_close(logits, load_file(expected)["nonsquare_64x96/logits"], atol=1e-4, rtol=1e-4)
print("remote code ok:", type(model).__module__)
"""


def test_converted_folder_loads_with_remote_code_alone(converted_fixtures, tmp_path):
    """The flat modelling files in the folder must run on their own (Hub users without the package)."""
    output, result = converted_fixtures[("v2v_s1l_ln2d", "model_ema")]
    assert result.returncode == 0, result.stderr
    env = dict(cli_env(), HF_MODULES_CACHE=str(tmp_path / "modules"))
    env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")
    check = subprocess.run(
        [sys.executable, "-c", REMOTE_CODE_CHECK, str(output), str(FIXTURES / "inputs.safetensors"),
         str(FIXTURES / "v2v_s1l_ln2d" / "expected_model_ema_float32.safetensors")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert check.returncode == 0, check.stderr[-3000:]
    assert "remote code ok: transformers_modules" in check.stdout


def real_image():
    """A real photograph shipped inside scikit-learn (CC-BY, see sklearn/datasets/images/README.txt)."""
    import importlib.util

    from PIL import Image

    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "images" / "china.jpg"
    return Image.open(path).convert("RGB")


def check_pipeline_agrees_with_model(folder: Path, top_k: int = 3) -> list[dict]:
    """The pipeline's top labels and scores must be the model's own softmax top-k on the processed image.

    The saved processor crops 224x224 (checked); the model runs on a 64x64 crop of the same photo to keep CPU time
    small, through the same processor class with only the size changed."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

    import transformers_vmamba  # noqa: F401

    image = real_image()
    saved = AutoImageProcessor.from_pretrained(folder)
    assert saved(images=image, return_tensors="pt")["pixel_values"].shape == (1, 3, 224, 224)
    assert list(saved.image_mean) == [0.485, 0.456, 0.406] and list(saved.image_std) == [0.229, 0.224, 0.225]

    processor = AutoImageProcessor.from_pretrained(folder, size={"shortest_edge": 64})
    classifier = pipeline("image-classification", model=str(folder), image_processor=processor, top_k=top_k)
    predictions = classifier(image)

    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    inputs = processor(images=image, return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 64, 64)
    with torch.no_grad():
        probabilities = model(**inputs).logits.softmax(-1)[0]
    scores, indices = probabilities.topk(top_k)
    assert [p["label"] for p in predictions] == [model.config.id2label[int(i)] for i in indices]
    torch.testing.assert_close(torch.tensor([p["score"] for p in predictions]), scores, atol=1e-5, rtol=1e-4)
    return predictions


@pytest.mark.parametrize("name,key", [("v0_vanilla", "model"), ("v2_s2l_ln2d", "model_ema")])
def test_pipeline_on_a_real_image_matches_the_model(converted_fixtures, name, key):
    output, result = converted_fixtures[(name, key)]
    assert result.returncode == 0, result.stderr
    predictions = check_pipeline_agrees_with_model(output)
    assert all(p["label"].startswith("LABEL_") for p in predictions)


def test_older_key_names_and_1x1_conv_linears_convert_to_the_same_logits(tmp_path):
    """Checkpoints of earlier original code versions (old names, DDP prefix, Linear weights saved as 1x1 convs)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForImageClassification

    renames = [("patch_embed.0.", "patch_embed.proj."), ("patch_embed.2.", "patch_embed.norm."),
               ("classifier.norm.", "norm."), ("classifier.head.", "head.")]
    old = {}
    for key, tensor in plain_fixture_state_dict("v0_vanilla").items():
        for new_name, old_name in renames:
            if key.startswith(new_name):
                key = old_name + key[len(new_name):]
        key = key.replace(".norm.", ".ln_1.") if ".blocks." in key else key
        key = key.replace(".op.", ".self_attention.")
        if key.endswith(("in_proj.weight", "out_proj.weight")):
            tensor = tensor[:, :, None, None]
        old["module." + key] = tensor
    assert "module.layers.0.blocks.0.self_attention.in_proj.weight" in old and "module.head.weight" in old
    checkpoint = write_checkpoint(tmp_path / "old.pth", model=old, epoch=1)
    output = tmp_path / "out"
    result = run_in_process("--checkpoint", checkpoint, "--output", output)
    assert result.returncode == 0, result.stderr
    model = AutoModelForImageClassification.from_pretrained(output).eval()
    expected = load_file(FIXTURES / "v0_vanilla" / "expected_model_float32.safetensors")["odd_72x40/logits"]
    with torch.no_grad():
        logits = model(pixel_values=load_inputs()["odd_72x40"]).logits
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


def test_model_name_alone_fetches_the_release_url(tmp_path, monkeypatch, capsys):
    """`--model NAME` without --checkpoint downloads the registry's URL (download stubbed: no network here); the
    stand-in file is a small fixture, so the size check must then refuse it and leave nothing behind."""
    fetched = []

    def fake_download(url, cache_dir):
        fetched.append((url, cache_dir))
        return FIXTURES / "v2_s2l_ln2d" / "checkpoint.pth"

    monkeypatch.setattr(cli, "download_checkpoint", fake_download)
    output = tmp_path / "out"
    code = cli.main(["--model", "vmamba-tiny-s2l5", "--output", str(output), "--cache-dir", str(tmp_path / "c")])
    assert fetched == [(get_released_model("vmamba-tiny-s2l5").url, tmp_path / "c")]
    assert code == 1 and "does not match variant 'vmamba-tiny-s2l5'" in capsys.readouterr().err
    assert not output.exists()


@pytest.mark.parametrize("name", list(RELEASED_MODELS))
def test_full_size_manifest_maps_without_missing_or_unexpected_keys(name):
    from transformers_vmamba import VMambaConfig, VMambaForImageClassification
    from transformers_vmamba.configuration_vmamba import ARCHITECTURE_FIELDS
    from transformers_vmamba.original_checkpoint import convert_original_state_dict, infer_config_from_state_dict

    released = RELEASED_MODELS[name]
    state_dict = manifest_state_dict(released.builder)
    config = infer_config_from_state_dict(state_dict)
    reference = VMambaConfig.from_variant(name)
    for field in ARCHITECTURE_FIELDS:
        assert getattr(config, field) == getattr(reference, field), field
    assert config.num_labels == 1000

    converted = convert_original_state_dict(state_dict)
    with torch.device("meta"):
        model = VMambaForImageClassification(config)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    actual = {key: tuple(value.shape) for key, value in converted.items()}
    assert sorted(set(expected) - set(actual)) == [], "missing"
    assert sorted(set(actual) - set(expected)) == [], "unexpected"
    assert actual == expected
    assert sum(p.numel() for p in model.parameters()) == released.num_parameters


def test_smallest_full_size_model_converts_end_to_end(tmp_path):
    """Vanilla-VMamba-T at full size through the command-line entry point: 1000 ImageNet labels, card, self-check,
    pipeline. (In-process `main`: the fixture conversions above already cover separate processes.)"""
    generator = torch.Generator().manual_seed(0)
    state_dict = manifest_state_dict(
        "vanilla_vmamba_tiny", fill=lambda shape: torch.randn(shape, generator=generator) * 0.02
    )
    checkpoint = tmp_path / "random_vanilla_tiny.pth"
    torch.save({"model": state_dict, "epoch": 0, "max_accuracy": 0.0}, checkpoint)
    del state_dict
    output = tmp_path / "out" / "vanilla-vmamba-tiny"
    result = run_in_process("--checkpoint", checkpoint, "--model", "vanilla_vmamba_tiny", "--output", output)
    assert result.returncode == 0, result.stderr
    config = json.loads((output / "config.json").read_text())
    labels = imagenet1k_labels()
    assert config["id2label"] == {str(i): label for i, label in enumerate(labels)}
    card = (output / "README.md").read_text()
    assert "Vanilla-VMamba-T" in card and "does not apply" in card and "model-index" not in card
    predictions = check_pipeline_agrees_with_model(output, top_k=5)
    assert all(p["label"] in labels for p in predictions)


@pytest.fixture(scope="module")
def converted_backbone_folder(tmp_path_factory):
    """The fixture's mmsegmentation checkpoint converted by a separate process, as a user runs it."""
    output = tmp_path_factory.mktemp("backbone") / "vmamba-backbone"
    return output, run_cli("--checkpoint", BACKBONE_CHECKPOINT, "--output", output)


def test_cli_converts_backbone_checkpoint_and_reproduces_original_feature_maps(converted_backbone_folder):
    from safetensors.torch import load_file

    from transformers_vmamba import VMambaBackbone

    output, result = converted_backbone_folder
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "feature maps" in result.stdout
    # the library's one warning, as it words it (the converter no longer repeats it in its own words)
    assert ("detection/segmentation checkpoint: converting only the VMamba backbone; skipped decode_head (2 tensors), "
            "auxiliary_head (1 tensors). Decode/detection heads and necks are not converted.") in result.stderr
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md"} <= {
        p.name for p in output.iterdir()
    }
    config = json.loads((output / "config.json").read_text())
    assert config["architectures"] == ["VMambaBackbone"] and "AutoBackbone" in config["auto_map"]
    assert config["out_features"] == ["stage1", "stage2", "stage3", "stage4"]

    model = VMambaBackbone.from_pretrained(output).eval()
    expected = load_file(FIXTURES / "backbone_v2_ln_mmseg" / "expected_state_dict_float32.safetensors")
    for case, pixel_values in load_inputs().items():
        with torch.no_grad():
            feature_maps = model(pixel_values=pixel_values).feature_maps
        assert len(feature_maps) == 4
        for index, feature_map in enumerate(feature_maps):
            torch.testing.assert_close(
                feature_map, expected[f"{case}/out{index}"], atol=1e-4, rtol=1e-4, msg=f"{case}/out{index}"
            )


def test_backbone_model_card(converted_backbone_folder):
    from huggingface_hub import ModelCard

    output, result = converted_backbone_folder
    assert result.returncode == 0, result.stderr
    card = ModelCard.load(output / "README.md")
    assert card.data.pipeline_tag == "image-feature-extraction" and "image-classification" not in card.data.tags
    assert card.data.eval_results is None and card.data.datasets is None
    text = card.text
    assert "Backbone only" in text and "stage1, stage2, stage3, stage4" in text
    assert 'VMambaBackbone.from_pretrained("vmamba-backbone")' in text and "UperNetForSemanticSegmentation" in text
    for absent in ("ImageNet-1k top-1", 'pipeline("image-classification"', "AutoModelForImageClassification"):
        assert absent not in text

    released = get_released_model("vmamba-tiny-s2l5")  # named architecture: still no metric, no classifier snippet
    named = build_model_card(
        model_id="x", num_labels=2, num_parameters=1, source="upernet.pth", weights_key="state dict",
        released=released, official=True, out_features=["stage2", "stage3"],
    )
    assert ModelCard(str(named)).data.eval_results is None
    assert "VMamba-T[s2l5]" in str(named) and "stage2, stage3" in str(named) and "top-1" not in str(named)


class FakeHfApi:
    """Records what would be sent to the Hub."""

    calls: list = []

    def __init__(self, *args, **kwargs):
        pass

    def create_repo(self, repo_id, **kwargs):
        FakeHfApi.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        files = sorted(p.name for p in Path(folder_path).iterdir())
        card = Path(folder_path, "README.md").read_text()
        FakeHfApi.calls.append(("upload_folder", repo_id, dict(kwargs, files=files, card=card)))


def test_push_to_hub_uploads_the_converted_folder(tmp_path, monkeypatch, capsys):
    import huggingface_hub
    from huggingface_hub import ModelCard

    FakeHfApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    output = tmp_path / "vmamba-test"
    code = cli.main(
        ["--checkpoint", str(FIXTURES / "v2_s2l_ln" / "checkpoint.pth"), "--output", str(output), "--push-to-hub",
         "--repo-id", "some-org/vmamba-test"]
    )
    assert code == 0, capsys.readouterr().err
    assert "uploaded to https://huggingface.co/some-org/vmamba-test" in capsys.readouterr().out
    (create, upload) = FakeHfApi.calls
    assert create[:2] == ("create_repo", "some-org/vmamba-test") and create[2]["exist_ok"] is True
    assert upload[:2] == ("upload_folder", "some-org/vmamba-test") and upload[2]["repo_type"] == "model"
    assert upload[2]["files"] == sorted(p.name for p in output.iterdir())
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md"} <= set(upload[2]["files"])
    assert any(name.startswith("modeling_") and name.endswith(".py") for name in upload[2]["files"])
    data = ModelCard(upload[2]["card"]).data
    assert data.library_name == "transformers" and data.license == "mit" and "vmamba" in data.tags
    assert 'model="some-org/vmamba-test"' in upload[2]["card"]

    FakeHfApi.calls = []
    with pytest.raises(cli.ConversionError, match="not a converted model folder"):
        cli.upload_to_hub(tmp_path, "some-org/x", api=FakeHfApi())
    assert FakeHfApi.calls == []
