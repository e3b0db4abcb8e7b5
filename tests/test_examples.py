"""End-to-end checks of the examples: digits image folder, shortened demo, fine-tuning CLI with resume, inference CLI.

Everything runs offline on CPU with a tiny VMamba (random init from a variant with small overrides).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
sys.path.insert(0, str(EXAMPLES))

import digits_dataset  # noqa: E402
import run_image_classification  # noqa: E402


TINY_OVERRIDES = {"depths": [1, 1, 1, 1], "hidden_sizes": [16, 24, 32, 48], "drop_path_rate": 0.0}
IMAGE_SIZE = 32


def _subprocess_env() -> dict:
    env = dict(os.environ)
    paths = [str(REPO / "src"), str(REPO / "kernels")]
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("OMP_NUM_THREADS", "1")  # tiny models: threads only contend on a shared CI machine
    return env


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True, env=_subprocess_env()
    )
    return result


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory) -> Path:
    return digits_dataset.write_digits_imagefolder(tmp_path_factory.mktemp("data") / "digits", image_size=IMAGE_SIZE)


@pytest.fixture(scope="module")
def demo_result(tmp_path_factory) -> dict:
    import demo

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as demo.py does: a tiny model gains nothing from contended threads
    try:
        return demo.run_demo(
            tmp_path_factory.mktemp("demo"),
            max_steps=25,
            batch_size=32,
            learning_rate=3e-3,
            config_overrides=TINY_OVERRIDES,
            max_eval_samples=64,
            n_show=6,
            logging_steps=1,
            progress_bar=False,
        )
    finally:
        torch.set_num_threads(threads)


def test_digits_imagefolder_content_split_and_idempotence(digits_dir, tmp_path):
    from datasets import load_dataset
    from sklearn.datasets import load_digits

    digits = load_digits()
    train = sorted(digits_dir.glob("train/*/*.png"))
    test = sorted(digits_dir.glob("test/*/*.png"))
    assert len(train) + len(test) == len(digits.target) == 1797
    assert len(test) == 360
    train_ids = {int(p.stem) for p in train}
    assert train_ids.isdisjoint(int(p.stem) for p in test)
    # stratified: every class in both splits, test share per class close to 20%
    for label in range(10):
        n_test = len(list(digits_dir.glob(f"test/{label}/*.png")))
        n_all = int((digits.target == label).sum())
        assert abs(n_test / n_all - 0.2) < 0.02

    # each file is its digit: label folder matches sklearn, and the picture downsampled back to 8x8 matches the scan
    for path in train[::97] + test[::41]:
        index = int(path.stem)
        assert int(path.parent.name) == digits.target[index]
        image = Image.open(path)
        assert image.mode == "RGB" and image.size == (IMAGE_SIZE, IMAGE_SIZE)
        ink = 255.0 - np.asarray(image.convert("L").resize((8, 8), Image.Resampling.BOX), dtype=np.float64)
        assert np.corrcoef(ink.ravel(), digits.images[index].ravel())[0, 1] > 0.9

    # idempotent: a second call with the same parameters rewrites nothing
    marker = digits_dir / digits_dataset.MARKER_FILE
    mtime = marker.stat().st_mtime_ns
    assert digits_dataset.write_digits_imagefolder(digits_dir, image_size=IMAGE_SIZE) == digits_dir
    assert marker.stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="image_size"):
        digits_dataset.write_digits_imagefolder(digits_dir, image_size=16)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="refusing"):
        digits_dataset.write_digits_imagefolder(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert not list(tmp_path.glob(".foreign.tmp-*"))

    dataset = load_dataset("imagefolder", data_dir=str(digits_dir))
    assert dataset["train"].num_rows == len(train) and dataset["test"].num_rows == len(test)
    assert dataset["train"].features["label"].names == [str(i) for i in range(10)]


def test_train_transform_without_cropping_matches_eval_transform():
    import transformers_vmamba

    processor = run_image_classification.resize_image_processor(
        transformers_vmamba.default_image_processor(), image_size=24, crop_pct=1.0
    )
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(3)]
    train = run_image_classification.TrainTransform(processor, random_flip=False, min_crop_scale=1.0)(images)
    evaluation = run_image_classification.EvalTransform(processor)(images)
    assert train.shape == evaluation.shape == (3, 3, 24, 24)
    torch.testing.assert_close(train, evaluation, atol=1e-5, rtol=0)

    # flip only mirrors; random crops stay at the model's input size
    flipped = run_image_classification.TrainTransform(processor, random_flip=True, min_crop_scale=1.0)
    outputs = [flipped(images[:1])[0] for _ in range(12)]
    mirrored = train[0].flip(-1)
    assert all(torch.allclose(o, train[0], atol=1e-5) or torch.allclose(o, mirrored, atol=1e-5) for o in outputs)
    cropped = run_image_classification.TrainTransform(processor, random_flip=False, min_crop_scale=0.1)(images)
    assert cropped.shape == (3, 3, 24, 24)


def test_cpu_training_defaults(monkeypatch, tmp_path):
    """The CPU defaults both Trainer examples share: DDP over gloo when several processes have no accelerator, one
    thread for small models (an explicit --torch_threads wins), no pinned memory."""
    import logging

    from transformers import TrainingArguments

    import cpu_training

    threads = torch.get_num_threads()
    log = logging.getLogger("test")
    try:
        args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
        torch.set_num_threads(2)
        cpu_training.configure_cpu(args, None, 1_000_000, log)
        assert torch.get_num_threads() == 1 and args.dataloader_pin_memory is False
        torch.set_num_threads(2)
        cpu_training.configure_cpu(args, None, 50_000_000, log)  # a large model keeps torch's default
        assert torch.get_num_threads() == 2
        cpu_training.configure_cpu(args, 3, 1_000_000, log)
        assert torch.get_num_threads() == 3
        with pytest.raises(ValueError, match="at least 1"):
            cpu_training.configure_cpu(args, 0, 1_000_000, log)
        sharded = TrainingArguments(
            output_dir=str(tmp_path), use_cpu=True, report_to="none", fsdp="full_shard auto_wrap",
            fsdp_config={"transformer_layer_cls_to_wrap": ["VMambaLayer"]},
        )
        with pytest.raises(ValueError, match="--fsdp needs GPUs"):  # not a silent fall-back to DDP
            cpu_training.configure_cpu(sharded, None, 1_000_000, log)
    finally:
        torch.set_num_threads(threads)

    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    cpu_training.use_gloo_ddp_without_accelerator()
    assert "ACCELERATE_USE_CPU" not in os.environ
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    cpu_training.use_gloo_ddp_without_accelerator()
    assert os.environ["ACCELERATE_USE_CPU"] == "true"


def test_bad_arguments_raise_clear_errors(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # the typo below is tried on the Hub too
    with pytest.raises(ValueError, match="JSON object"):
        run_image_classification.parse_config_overrides("depths=[1,1,1,1]")
    with pytest.raises(ValueError, match="JSON object"):
        run_image_classification.parse_config_overrides("[1, 2]")
    with pytest.raises(ValueError, match="dataset_name"):
        run_image_classification.DataTrainingArguments()
    typo = run_image_classification.ModelArguments(
        model_name_or_path="vmamba-tiny-s1l8", config_overrides='{"dims": [16, 24, 32, 48]}'
    )
    with pytest.raises(ValueError, match=r"no field\(s\) \['dims'\]"):
        run_image_classification.build_model_and_processor(typo, ["a", "b"])
    unknown = run_image_classification.ModelArguments(model_name_or_path="vmamba-tiny-s1l9-typo")
    with pytest.raises(ValueError, match="known variants"):
        run_image_classification.build_model_and_processor(unknown, ["a", "b"])


def test_short_demo_loss_decreases_and_pipeline_reloads(demo_result):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    losses = demo_result["losses"]
    assert len(losses) == 25 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1, losses
    assert 0.0 <= demo_result["accuracy"] <= 1.0

    # the pipeline's answers are the saved model's own argmax on the saved processor's pixels
    model_dir = demo_result["model_dir"]
    assert (Path(model_dir) / "model.safetensors").is_file()
    model = AutoModelForImageClassification.from_pretrained(model_dir).eval()
    assert model.config.model_type == "vmamba"
    processor = AutoImageProcessor.from_pretrained(model_dir)
    predictions = demo_result["predictions"]
    assert len(predictions) == 6
    images = [Image.open(p["image"]) for p in predictions]
    with torch.no_grad():
        probs = model(**processor(images=images, return_tensors="pt")).logits.softmax(-1)
    for p, row in zip(predictions, probs):
        assert p["label"] == model.config.id2label[int(row.argmax())]
        assert p["score"] == pytest.approx(float(row.max()), abs=1e-4)
        assert p["truth"] in model.config.label2id


def test_inference_script_on_saved_folder(demo_result):
    image = demo_result["predictions"][0]["image"]
    result = _run("inference.py", "--model", demo_result["model_dir"], "--top_k", "3", "--json", image, image)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 2
    top = lines[0]["predictions"]
    assert [p["label"] for p in top][0] == demo_result["predictions"][0]["label"]
    scores = [p["score"] for p in top]
    assert len(top) == 3 and scores == sorted(scores, reverse=True) and sum(scores) <= 1.0 + 1e-6

    import inference

    with pytest.raises(FileNotFoundError, match="neither an existing file nor an http"):
        inference.classify(demo_result["model_dir"], [str(Path(image).with_name("nope.png"))])


def test_inference_script_errors_are_one_line(demo_result, tmp_path):
    image = demo_result["predictions"][0]["image"]
    cases = {
        "neither an existing file nor an http": ["--model", demo_result["model_dir"], str(tmp_path / "nope.png")],
        "does not exist": ["--model", str(tmp_path / "no-model"), image],
    }
    for message, args in cases.items():
        result = _run("inference.py", *args)
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr, result.stderr


def test_finetuning_cli_checkpoints_and_resume(digits_dir, tmp_path):
    out = tmp_path / "run"
    common = [
        "--model_name_or_path", "vmamba-tiny-s1l8",
        "--config_overrides", json.dumps(TINY_OVERRIDES),
        "--image_size", str(IMAGE_SIZE), "--crop_pct", "1.0", "--random_flip", "false",
        "--train_dir", str(digits_dir / "train"), "--validation_dir", str(digits_dir / "test"),
        "--output_dir", str(out), "--do_train", "--do_eval",
        "--max_train_samples", "96", "--max_eval_samples", "32",
        "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "32",
        "--learning_rate", "1e-3", "--save_steps", "2", "--logging_steps", "1",
        "--report_to", "none", "--disable_tqdm", "true",
    ]
    first = _run("run_image_classification.py", *common, "--max_steps", "4", "--seed", "0")
    assert first.returncode == 0, first.stderr[-3000:]
    assert (out / "checkpoint-2").is_dir() and (out / "checkpoint-4").is_dir()
    eval_results = json.loads((out / "eval_results.json").read_text())
    assert 0.0 <= eval_results["eval_accuracy"] <= 1.0
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "vmamba" and len(config["id2label"]) == 10
    assert (out / "preprocessor_config.json").is_file()
    checkpoint_log = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]

    # Resume with a different seed: steps 1-4 must be the checkpoint's own (a fresh run would log other losses).
    second = _run(
        "run_image_classification.py", *common, "--max_steps", "6", "--seed", "1", "--resume_from_checkpoint", "latest"
    )
    assert second.returncode == 0, second.stderr[-3000:]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    losses = {e["step"]: e["loss"] for e in state["log_history"] if "loss" in e}
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    assert all(losses[e["step"]] == e["loss"] for e in checkpoint_log if "loss" in e)

    fresh = _run(
        "run_image_classification.py", *common,
        "--max_steps", "1", "--seed", "1", "--output_dir", str(tmp_path / "fresh"),
    )
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    fresh_log = json.loads((tmp_path / "fresh" / "trainer_state.json").read_text())["log_history"]
    assert fresh_log[0]["loss"] != losses[1]  # the seed matters, so the check above can fail

    with pytest.raises(ValueError, match="is not a folder"):
        run_image_classification.main([*common, "--resume_from_checkpoint", str(tmp_path / "missing")])


def test_two_process_ddp_training_on_cpu(digits_dir, tmp_path):
    """torchrun with 2 CPU processes trains one model with DDP over gloo (not two independent runs) and the saved
    folder classifies through the pipeline."""
    from transformers import pipeline

    out = tmp_path / "ddp"
    result = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            str(EXAMPLES / "run_image_classification.py"),
            "--model_name_or_path", "vmamba-tiny-s1l8", "--config_overrides", json.dumps(TINY_OVERRIDES),
            "--image_size", str(IMAGE_SIZE), "--crop_pct", "1.0", "--random_flip", "false",
            "--train_dir", str(digits_dir / "train"), "--validation_dir", str(digits_dir / "test"),
            "--output_dir", str(out), "--do_train", "--do_eval",
            "--max_train_samples", "128", "--max_eval_samples", "32", "--per_device_train_batch_size", "16",
            "--max_steps", "4", "--logging_steps", "1", "--report_to", "none", "--disable_tqdm", "true",
        ],
        capture_output=True, text=True, env=_subprocess_env(), timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # 128 samples, 16 per process: 4 steps are one epoch with 2 processes, half an epoch with one
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and state["epoch"] == pytest.approx(1.0)
    train_results = json.loads((out / "train_results.json").read_text())
    assert train_results["epoch"] == pytest.approx(1.0)

    classifier = pipeline("image-classification", model=str(out), device="cpu")
    image = next((digits_dir / "test").glob("*/*.png"))
    predictions = classifier(str(image), top_k=10)
    assert sorted(p["label"] for p in predictions) == [str(i) for i in range(10)]
