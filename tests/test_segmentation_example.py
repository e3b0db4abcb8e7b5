"""The semantic-segmentation fine-tuning example on tiny sizes: the offline digits masks, the mIoU metric, and a short
`Trainer` run whose loss falls, whose metrics are written and whose saved folder runs in
`pipeline("image-segmentation")`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))

import run_semantic_segmentation as example  # noqa: E402


TINY = ["--config_overrides", json.dumps({"depths": [1, 1, 1, 1], "hidden_sizes": [16, 24, 32, 48],
                                          "drop_path_rate": 0.0}),
        "--decode_head_channels", "16", "--auxiliary_channels", "8"]


def test_digits_masks_are_the_thresholded_ink_labelled_with_the_digit():
    from sklearn.datasets import load_digits

    dataset = example.digits_segmentation_dataset(image_size=32, seed=0, limit=60)
    assert len(dataset["train"]) + len(dataset["validation"]) == 60
    targets = set(load_digits().target[:60].tolist())
    for row in dataset["train"].select(range(10)):
        image = np.asarray(row["image"].convert("L"), dtype=np.int64)
        mask = np.asarray(row["label"], dtype=np.int64)
        assert image.shape == mask.shape == (32, 32)
        classes = set(np.unique(mask).tolist())
        assert 0 in classes and len(classes) == 2 and (max(classes) - 1) in targets
        # ink above half intensity <=> gray below 255/2: the mask is exactly the dark pixels
        np.testing.assert_array_equal(mask > 0, image < 127.5)


def test_mean_iou_counts_like_mmseg():
    labels = np.array([[0, 0, 1, 1], [2, 2, 255, 255]])
    perfect = np.where(labels == 255, 0, labels)
    assert example.mean_iou(perfect, labels, 3) == {"mean_iou": 1.0, "overall_accuracy": 1.0}
    background = example.mean_iou(np.zeros_like(labels), labels, 3)
    assert background["mean_iou"] == pytest.approx((2 / 6 + 0 + 0) / 3) and background["overall_accuracy"] == 2 / 6
    # a class neither labelled nor predicted does not count
    assert example.mean_iou(perfect, labels, 5)["mean_iou"] == 1.0


def test_finetuning_runs_loss_falls_and_metrics_are_written(tmp_path):
    from transformers import pipeline

    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the script's CPU default for a model this small is one thread (cpu_training.py)
    try:
        metrics = example.main([
            "--model_name_or_path", "vmamba-tiny-s1l8", *TINY, "--image_size", "32", "--digits_samples", "160",
            "--min_scale", "0.75", "--max_scale", "1.25",
            "--output_dir", str(tmp_path / "out"), "--do_train", "--do_eval", "--max_steps", "24",
            "--learning_rate", "1e-2", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
            "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--use_cpu",
            "--disable_tqdm", "true", "--seed", "0",
        ])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    output = tmp_path / "out"
    state = json.loads((output / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == 24 and all(np.isfinite(losses))
    assert np.mean(losses[-6:]) < 0.8 * np.mean(losses[:6]), losses
    results = json.loads((output / "all_results.json").read_text())
    for key in ("eval_mean_iou", "eval_overall_accuracy", "eval_baseline_mean_iou", "eval_loss", "train_loss"):
        assert key in results and np.isfinite(results[key]), key
    assert metrics["eval_mean_iou"] == results["eval_mean_iou"]
    config = json.loads((output / "config.json").read_text())
    assert config["auxiliary_loss_weight"] == 0.4 and config["backbone_config"]["model_type"] == "vmamba"
    assert config["id2label"]["0"] == "background" and config["id2label"]["10"] == "digit 9"

    image = example.digits_segmentation_dataset(image_size=32, limit=60)["validation"][0]["image"]
    segments = pipeline("image-segmentation", model=str(output))(image)
    assert segments and all(segment["label"] in example.DIGIT_LABELS for segment in segments)
    assert all(segment["mask"].size == image.size for segment in segments)


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="--config_overrides must be JSON"):
        example.main(["--config_overrides", "{nope", "--output_dir", str(tmp_path), "--digits_samples", "20",
                      "--image_size", "16", "--use_cpu", "--report_to", "none"])
    with pytest.raises(ValueError, match="min_scale"):
        example.main(["--min_scale", "2", "--max_scale", "1", "--output_dir", str(tmp_path), "--use_cpu",
                      "--report_to", "none"])
