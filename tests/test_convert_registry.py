"""Released models, labels and model cards: the facts the converter writes, checked without converting
(the registry against the full-size manifests, the card's Hub metadata, vmamba-convert-all's plan)."""

from __future__ import annotations

import json

import pytest
from conversion_helpers import FIXTURES, REPO

import transformers_vmamba.convert as cli
from transformers_vmamba.labels import imagenet1k_labels
from transformers_vmamba.model_card import build_model_card
from transformers_vmamba.released_models import (
    ORIGINAL_COMMIT,
    RELEASED_MODELS,
    find_release,
    get_released_model,
    markdown_table,
)


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


def test_released_files_are_recognised_by_url_or_file_name():
    released = get_released_model("vmamba-small-s1l20")
    assert find_release(released.url) is released
    assert find_release(released.file_name) is released
    assert find_release(f"/downloads/{released.file_name}") is released
    assert find_release("https://example.org/%23v2cls/" + released.file_name) is released  # quoted like GitHub's
    assert find_release("my_finetune.pth") is None


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
