"""Offline tests of the checkpoint converter (`vmamba-convert`), run the way a user runs it.

Fixture checkpoints and expected logits were produced by the original VMamba code (see
tests/fixtures/original/README.md);
the full-size manifests hold the exact key/shape layout of the nine released models.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch


from conftest import fixtures_dir

import transformers_vmamba.convert as cli
from transformers_vmamba.labels import imagenet1k_labels
from transformers_vmamba.model_card import build_model_card
from transformers_vmamba.released_models import ORIGINAL_COMMIT, RELEASED_MODELS, get_released_model, markdown_table


REPO = Path(__file__).resolve().parents[1]
FIXTURES = fixtures_dir().resolve()


BACKBONE_CHECKPOINT = FIXTURES / "backbone_v2_ln_mmseg" / "checkpoint.pth"
CLASSIFICATION_FIXTURES = ["v0_vanilla", "v0_vanilla_ema", "v2_s2l_ln2d", "v2v_s1l_ln2d", "v2_s2l_ln"]
# (fixture, weights key): v0_vanilla holds only `model` weights, the others `model` and `model_ema`
FIXTURE_CASES = [("v0_vanilla", "model")] + [
    (name, key) for name in CLASSIFICATION_FIXTURES[1:] for key in ("model", "model_ema")
]


def test_fixture_cases_list_every_weights_key_of_each_fixture():
    listed = {name: [key for fixture, key in FIXTURE_CASES if fixture == name] for name in CLASSIFICATION_FIXTURES}
    assert listed == {name: fixture_config(name)["checkpoint"]["weights_keys"] for name in CLASSIFICATION_FIXTURES}


def fixture_config(name: str) -> dict:
    return json.loads((FIXTURES / name / "config.json").read_text())


def cli_env() -> dict:
    """The subprocess must import this checkout's package, not whatever is installed."""
    env = dict(os.environ)
    paths = [str(REPO / "src"), str(REPO / "kernels")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.pop("HF_HUB_OFFLINE", None)  # nothing leaves the machine anyway; the download test needs the loopback
    env["VMAMBA_CACHE"] = str(Path(env.get("TMPDIR", "/tmp")) / "vmamba-test-cache-unused")
    return env


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "transformers_vmamba.convert", *map(str, args)],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_clean_failure(parent: Path, output: Path) -> None:
    assert not output.exists(), f"{output} was left behind"
    leftovers = [p.name for p in parent.iterdir() if p.name.startswith(f".{output.name}.")]
    assert leftovers == [], f"temporary folders left behind: {leftovers}"


# --------------------------------------------------------------------------------------------------------------
# Registry, labels, model card: no model code needed.


def test_registry_agrees_with_full_size_manifests():
    index = json.loads((FIXTURES / "manifests" / "index.json").read_text())
    assert sorted(entry["builder"] for entry in index) == sorted(m.builder for m in RELEASED_MODELS.values())
    for model in RELEASED_MODELS.values():
        manifest = json.loads((FIXTURES / "manifests" / f"{model.builder}.json").read_text())
        assert manifest["num_parameters"] == model.num_parameters
        assert manifest["released_checkpoint_file"] == model.file_name
        assert manifest["yaml"] == model.original_config
        assert model.url.startswith("https://github.com/MzeroMiko/VMamba/releases/download/")
        family = {"v0": "v0", "v05_noz": "v2v" if manifest["constructor_kwargs"]["ssm_ratio"] == 1.0 else "v2"}
        assert family[manifest["constructor_kwargs"]["forward_type"]] == model.family
        # the Vanilla-VMamba-T release is the only one trained without EMA
        assert model.default_weights_key == ("model" if model.name == "vanilla-vmamba-tiny" else "model_ema")
    table = markdown_table()
    assert all(f"`{name}`" in table for name in RELEASED_MODELS)


def test_model_names_resolve_and_unknown_names_list_the_known_ones():
    assert get_released_model("vmamba_tiny_s2l5").name == "vmamba-tiny-s2l5"
    assert get_released_model("VMamba-Base-S1L20").name == "vmamba-base-s1l20"
    with pytest.raises(ValueError) as info:
        get_released_model("vmamba-huge")
    assert "vmamba-huge" in str(info.value) and all(name in str(info.value) for name in RELEASED_MODELS)


def test_imagenet_labels_file():
    data = json.loads((REPO / "src" / "transformers_vmamba" / "data" / "imagenet1k_labels.json").read_text())
    assert imagenet1k_labels() == data["labels"]
    labels, synsets = data["labels"], data["synsets"]
    assert len(labels) == len(synsets) == 1000
    # WordNet gives the bird (134) and the machine (517) the same lemma; every other name is unique
    assert [i for i, label in enumerate(labels) if labels.count(label) > 1] == [134, 517]
    # the ILSVRC-2012 class index is the sorted order of the WordNet ids
    assert synsets == sorted(synsets) and len(set(synsets)) == 1000
    assert labels[0].startswith("tench") and synsets[0] == "n01440764"
    assert "timm" in data["source"]


def test_model_card_metadata_claims_published_metric_only_for_the_measured_weights():
    from huggingface_hub import ModelCard

    released = get_released_model("vmamba-small-s2l15")
    card = build_model_card(
        model_id="org/vmamba-small-s2l15",
        num_labels=1000,
        num_parameters=released.num_parameters,
        source=released.url,
        weights_key="model_ema",
        released=released,
        official=True,
    )
    data = ModelCard(str(card)).data  # round-trip through the YAML header
    assert data.license == "mit" and data.library_name == "transformers"
    assert data.pipeline_tag == "image-classification" and "vmamba" in data.tags
    assert data.datasets == ["imagenet-1k"]
    (result,) = data.eval_results
    assert (result.dataset_type, result.metric_type, result.metric_value) == ("imagenet-1k", "accuracy", 83.6)
    text = str(card)
    for needle in ('pipeline("image-classification"', "AutoModelForImageClassification", "@article{liu2024vmamba",
                   released.url, ORIGINAL_COMMIT):
        assert needle in text

    other_key = build_model_card(
        model_id="x", num_labels=1000, num_parameters=1, source="f.pth", weights_key="model", released=released,
        official=True,
    )
    assert ModelCard(str(other_key)).data.eval_results is None
    assert "no metric is claimed" in str(other_key)
    not_the_release = build_model_card(
        model_id="x", num_labels=1000, num_parameters=1, source="mine.pth", weights_key="model_ema", released=released
    )
    assert ModelCard(str(not_the_release)).data.eval_results is None
    assert "does not apply" in str(not_the_release) and "mine.pth" in str(not_the_release)
    small = build_model_card(model_id="x", num_labels=10, num_parameters=1, source="f.pth", weights_key="model")
    assert ModelCard(str(small)).data.eval_results is None and ModelCard(str(small)).data.datasets is None


# --------------------------------------------------------------------------------------------------------------
# Download: a local HTTP server on the loopback interface stands in for GitHub releases.


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def http_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    requests = []

    class Handler(_QuietHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    server.server_close()


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


def test_convert_all_dry_run_lists_the_plan(tmp_path, capsys):
    from transformers_vmamba import convert_all

    local = tmp_path / "downloads"
    local.mkdir()
    (local / get_released_model("vmamba-tiny-s1l8").file_name).write_bytes(b"")
    assert convert_all.main(
        ["--output-root", str(tmp_path / "out"), "--checkpoint-dir", str(local), "--dry-run", "--push-to-hub",
         "--hub-org", "org"]
    ) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 9
    for line, model in zip(lines, RELEASED_MODELS.values()):
        source = str(local / model.file_name) if model.name == "vmamba-tiny-s1l8" else model.url
        assert line == (
            f"{model.name}: {source} [{model.default_weights_key}] -> {tmp_path / 'out' / model.name}"
            f" -> hub org/{model.name}"
        )
    assert not (tmp_path / "out").exists()
    assert convert_all.main(["--output-root", str(tmp_path), "--models", "vmamba-huge", "--dry-run"]) == 1
    assert "known names" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------
# Fixture checkpoints made by the original code, converted through the command line.


def run_in_process(*args) -> subprocess.CompletedProcess:
    """The same entry point without a new interpreter (saves ~5 s of imports per run)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(arg) for arg in args])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


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


def load_inputs() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(FIXTURES / "inputs.safetensors")


@pytest.mark.parametrize("name,key", FIXTURE_CASES)
def test_cli_converts_fixture_and_reproduces_original_logits(converted_fixtures, name, key):
    import transformers_vmamba  # noqa: F401  (registers the local classes)
    from safetensors.torch import load_file
    from transformers import AutoModelForImageClassification

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
        torch.testing.assert_close(logits, expected[f"{case}/logits"], atol=1e-4, rtol=1e-4, msg=f"{name}/{key}/{case}")


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
    import transformers_vmamba  # noqa: F401
    from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

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


def test_convert_all_converts_each_pushes_and_reports_failures(tmp_path, monkeypatch, capsys):
    from transformers_vmamba import convert_all

    converted, pushed = [], []

    def fake_convert(*, output, checkpoint, model_name, **kwargs):
        if model_name == "vmamba-small-s2l15":
            raise cli.ConversionError("simulated failure")
        output.mkdir(parents=True)
        converted.append((model_name, checkpoint, kwargs["repo_id"]))
        return cli.ConversionResult(output, "model_ema", 1, None, 0.0)

    monkeypatch.setattr(convert_all.converter, "convert", fake_convert)
    monkeypatch.setattr(convert_all.converter, "upload_to_hub", lambda folder, repo_id, **kw: pushed.append(repo_id))
    code = convert_all.main(["--output-root", str(tmp_path), "--models", "vmamba-tiny-s2l5", "vmamba_small_s2l15",
                             "vanilla-vmamba-base", "--push-to-hub", "--hub-org", "org"])
    captured = capsys.readouterr()
    assert code == 1
    assert [name for name, _, _ in converted] == ["vmamba-tiny-s2l5", "vanilla-vmamba-base"]
    assert converted[0][1] == get_released_model("vmamba-tiny-s2l5").url and converted[0][2] == "org/vmamba-tiny-s2l5"
    assert pushed == ["org/vmamba-tiny-s2l5", "org/vanilla-vmamba-base"]
    assert "error: vmamba-small-s2l15: simulated failure" in captured.err
    assert "2 of 3 converted; failed: vmamba-small-s2l15" in captured.out


# --------------------------------------------------------------------------------------------------------------
# Full-size layouts of the nine released models.


def manifest_state_dict(builder: str, fill=None) -> dict[str, torch.Tensor]:
    """Exactly the released keys and shapes. Without `fill` the tensors are left uninitialised (cheap: only the
    layout is checked)."""
    manifest = json.loads((FIXTURES / "manifests" / f"{builder}.json").read_text())
    if fill is None:
        return {key: torch.empty(shape) for key, shape in manifest["state_dict"].items()}
    return {key: fill(shape) for key, shape in manifest["state_dict"].items()}


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


# --------------------------------------------------------------------------------------------------------------
# Detection/segmentation checkpoints: the backbone is converted, the heads are skipped and named.


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
    err_lines = result.stderr.splitlines()
    assert "skipped decode_head (2 tensors)" in err_lines and "skipped auxiliary_head (1 tensors)" in err_lines
    assert any("not converted (out of scope)" in line for line in err_lines)
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


# --------------------------------------------------------------------------------------------------------------
# Bad inputs: one clear line, exit status 1, nothing left behind.


def write_checkpoint(path: Path, **entries) -> Path:
    torch.save(entries, path)
    return path


def plain_fixture_state_dict(name: str = "v0_vanilla", key: str = "model") -> dict:
    return torch.load(FIXTURES / name / "checkpoint.pth", map_location="cpu", weights_only=True)[key]


def bad_input_cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    good = FIXTURES / "v0_vanilla" / "checkpoint.pth"
    data = good.read_bytes()
    (tmp / "truncated.pth").write_bytes(data[: len(data) // 2])
    (tmp / "garbage.pth").write_bytes(b"this is not a checkpoint\n" * 100)
    state_dict = plain_fixture_state_dict()
    missing = dict(state_dict)
    missing.pop("layers.2.blocks.1.op.Ds")
    extra = dict(state_dict, **{"layers.0.blocks.0.op.surprise": torch.zeros(3)})
    backbone = torch.load(BACKBONE_CHECKPOINT, map_location="cpu", weights_only=True)
    backbone_missing = dict(backbone, state_dict={
        key: value for key, value in backbone["state_dict"].items() if key != "backbone.layers.2.blocks.1.op.Ds"
    })
    backbone_extra = dict(backbone, state_dict=dict(
        backbone["state_dict"], **{"backbone.layers.0.blocks.0.op.x_proj_bias": torch.zeros(4, 3)}
    ))
    return {
        "truncated file": (["--checkpoint", tmp / "truncated.pth"], r"truncated|corrupt"),
        "not a checkpoint": (["--checkpoint", tmp / "garbage.pth"], r"truncated|corrupt"),
        "missing file": (["--checkpoint", tmp / "nowhere.pth"], r"not found"),
        "unknown model name": (
            ["--model", "vmamba-huge"],
            r"unknown model name 'vmamba-huge'; known names: vanilla-vmamba-tiny, .*vmamba-base-s1l20",
        ),
        "wrong family": (
            ["--checkpoint", good, "--model", "vmamba-tiny-s2l5"],
            r"--model vmamba-tiny-s2l5 is a v2 model \(VMamba-T\[s2l5\]\), but the checkpoint is a v0 model",
        ),
        "wrong size": (
            ["--checkpoint", FIXTURES / "v2_s2l_ln2d" / "checkpoint.pth", "--model", "vmamba-tiny-s2l5"],
            r"but the checkpoint is a v2 model with hidden sizes \[32, 64, 128, 256\] and depths \[1, 1, 2, 1\].*"
            r"hidden_sizes: checkpoint has \[32, 64, 128, 256\] but vmamba-tiny-s2l5 has \[96, 192, 384, 768\]",
        ),
        "missing keys": (
            ["--checkpoint", write_checkpoint(tmp / "missing.pth", model=missing)],
            r"missing keys .*stages\.2\.layers\.1\.ssm\.D\b",
        ),
        "extra keys": (
            ["--checkpoint", write_checkpoint(tmp / "extra.pth", model=extra)],
            r"(?i)(unexpected|no VMamba counterpart).*surprise",
        ),
        "absent weights key": (["--checkpoint", good, "--weights-key", "model_ema"], r"no 'model_ema' weights"),
        "backbone missing key": (
            ["--checkpoint", write_checkpoint(tmp / "bb_missing.pth", **backbone_missing)],
            r"missing keys \['encoder\.stages\.2\.layers\.1\.ssm\.D'\]",
        ),
        "backbone extra key": (
            ["--checkpoint", write_checkpoint(tmp / "bb_extra.pth", **backbone_extra)],
            r"no VMambaBackbone counterpart.*x_proj_bias",
        ),
        "backbone wrong size": (
            ["--checkpoint", BACKBONE_CHECKPOINT, "--model", "vmamba-tiny-s2l5"],
            r"--model vmamba-tiny-s2l5 is a v2 model \(VMamba-T\[s2l5\]\), but the checkpoint is a v2 model with "
            r"hidden sizes \[16, 32, 64, 128\] and depths \[1, 1, 2, 1\]",
        ),
    }


@pytest.mark.parametrize(
    "case",
    ["truncated file", "not a checkpoint", "missing file", "unknown model name", "wrong family", "wrong size",
     "missing keys", "extra keys", "absent weights key", "backbone missing key", "backbone extra key",
     "backbone wrong size"],
)
def test_bad_input_gives_one_clear_line_and_leaves_nothing(case, tmp_path, capsys):
    import re

    args, pattern = bad_input_cases(tmp_path)[case]
    output = tmp_path / "out" / "model"
    code = cli.main([*map(str, args), "--output", str(output)])
    err = capsys.readouterr().err
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(pattern, lines[0]), lines[0]
    assert not (tmp_path / "out").exists(), "output (or its parent) left behind"


def test_bad_input_from_a_real_process(tmp_path):
    data = (FIXTURES / "v2_s2l_ln2d" / "checkpoint.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) * 3 // 4])
    output = tmp_path / "model"
    result = run_cli("--checkpoint", tmp_path / "cut.pth", "--output", output)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert_clean_failure(tmp_path, output)


def test_existing_output_is_kept_unless_overwrite(tmp_path, capsys):
    output = tmp_path / "model"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    checkpoint = str(FIXTURES / "v0_vanilla" / "checkpoint.pth")
    assert cli.main(["--checkpoint", checkpoint, "--output", str(output)]) == 1
    assert "already exists" in capsys.readouterr().err and (output / "keep.txt").read_text() == "mine"
    assert cli.main(["--checkpoint", checkpoint, "--output", str(output), "--overwrite"]) == 0
    assert not (output / "keep.txt").exists() and (output / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_failure_after_writing_leaves_no_trace_and_keeps_the_old_folder(tmp_path, monkeypatch, capsys):
    def broken_verify(folder, model):
        assert (folder / "model.safetensors").is_file()  # the failure happens with files already written
        raise cli.ConversionError("verification failed: simulated")

    monkeypatch.setattr(cli, "verify_folder", broken_verify)
    checkpoint = str(FIXTURES / "v2_s2l_ln" / "checkpoint.pth")
    fresh = tmp_path / "new" / "deeper" / "model"
    assert cli.main(["--checkpoint", checkpoint, "--output", str(fresh)]) == 1
    assert "error: verification failed: simulated" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # temp folder and the parents it made are gone

    existing = tmp_path / "model"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    assert cli.main(["--checkpoint", checkpoint, "--output", str(existing), "--overwrite"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert sorted(p.name for p in existing.iterdir()) == ["keep.txt"]


def test_usage_errors_exit_2(capsys):
    for argv in (["--output", "x"], ["--model", "vmamba-tiny-s1l8"],
                 ["--model", "vmamba-tiny-s1l8", "--output", "x", "--push-to-hub"]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2
    assert "--push-to-hub needs --repo-id" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------
# Upload path, without the network.


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
