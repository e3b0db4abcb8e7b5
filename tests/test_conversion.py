"""Offline tests of the checkpoint converter (conversion/), run the way a user runs it.

Fixture checkpoints and expected logits were produced by the original VMamba code (see shared/fixtures/README.md);
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


REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("VMAMBA_FIXTURES", REPO / ".." / "shared" / "fixtures")).resolve()
SCRIPT = REPO / "conversion" / "convert_original_checkpoint.py"
sys.path.insert(0, str(REPO / "conversion"))

import convert_original_checkpoint as cli  # noqa: E402
from model_card import build_model_card  # noqa: E402
from released_models import ORIGINAL_COMMIT, RELEASED_MODELS, get_released_model, markdown_table  # noqa: E402


CLASSIFICATION_FIXTURES = ["v0_vanilla", "v0_vanilla_ema", "v2_s2l_ln2d", "v2v_s1l_ln2d", "v2_s2l_ln"]
FIXTURE_CASES = [
    (name, key)
    for name in CLASSIFICATION_FIXTURES
    for key in json.loads((FIXTURES / name / "config.json").read_text())["checkpoint"]["weights_keys"]
]


def fixture_config(name: str) -> dict:
    return json.loads((FIXTURES / name / "config.json").read_text())


def cli_env() -> dict:
    """The subprocess must import this checkout's package, not whatever is installed."""
    env = dict(os.environ)
    paths = [str(REPO / "src"), str(REPO / "kernels")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["HF_HUB_OFFLINE"] = "1"
    env["VMAMBA_CACHE"] = str(Path(env.get("TMPDIR", "/tmp")) / "vmamba-test-cache-unused")
    return env


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
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
    data = json.loads(cli.LABELS_FILE.read_text())
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
        model_id="x", num_labels=1000, num_parameters=1, source="f.pth", weights_key="model", released=released
    )
    assert ModelCard(str(other_key)).data.eval_results is None
    assert "no metric is claimed" in str(other_key)
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
