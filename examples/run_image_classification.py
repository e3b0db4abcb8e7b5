#!/usr/bin/env python
"""Fine-tune VMamba (or any image classifier of Transformers) on an image-classification dataset with `Trainer`.

Modelled on Transformers' ``examples/pytorch/image-classification/run_image_classification.py``, without
torchvision: the training augmentation (random resized crop + horizontal flip) is written with PIL, and the
evaluation transform is the model's image processor.

Examples::

    # converted checkpoint folder (or a Hub id) on an image folder (<dir>/<label>/<image>)
    python examples/run_image_classification.py --model_name_or_path ./vmamba-tiny-s1l8 \\
        --train_dir ./data/train --validation_dir ./data/val --output_dir ./out --do_train --do_eval

    # random init from a variant name, shrunk for a small dataset, on the offline digits
    python examples/digits_dataset.py /tmp/digits
    python examples/run_image_classification.py --model_name_or_path vmamba-tiny-s1l8 \\
        --config_overrides '{"depths": [1, 1, 2, 1], "hidden_sizes": [32, 48, 64, 96]}' \\
        --image_size 32 --crop_pct 1.0 --random_flip false \\
        --train_dir /tmp/digits/train --validation_dir /tmp/digits/test --output_dir ./out \\
        --do_train --do_eval --num_train_epochs 3 --learning_rate 2e-3

Also runs under ``accelerate launch`` (Trainer handles distribution) and with ``--bf16`` / ``--fp16`` where the
hardware supports them. ``--resume_from_checkpoint latest`` continues from the newest checkpoint in
``--output_dir``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
import transformers
from datasets import ClassLabel, DatasetDict, load_dataset
from PIL import Image
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

import transformers_vmamba  # registers VMamba with the Auto classes

from cpu_training import TORCH_THREADS_HELP, configure_cpu, use_gloo_ddp_without_accelerator  # beside this script


logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    """Which model to fine-tune and how to build it."""

    model_name_or_path: str = field(
        default="vmamba-tiny-s1l8",
        metadata={
            "help": "A model folder (e.g. a converted original checkpoint) or Hub id to fine-tune, or a VMamba "
            "variant name (e.g. 'vmamba-tiny-s1l8', 'vanilla-vmamba-tiny') to train from random initialisation."
        },
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "JSON object of config fields to override, e.g. '{\"depths\": [1, 1, 2, 1]}' for a small model. "
            "Applies to variant names and to folders (architecture changes on a pretrained folder need "
            "--ignore_mismatched_sizes)."
        },
    )
    image_processor_name: str | None = field(
        default=None, metadata={"help": "Folder or Hub id of the image processor, if not the model's."}
    )
    image_size: int | None = field(
        default=None,
        metadata={"help": "Input resolution (evaluation crop and training crop side). Default: the processor's."},
    )
    crop_pct: float | None = field(
        default=None,
        metadata={"help": "Evaluation center-crop fraction (0.875 = resize short side to size/0.875, then crop)."},
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where to cache Hub downloads."})
    model_revision: str = field(default="main", metadata={"help": "Hub branch, tag or commit."})
    token: str | None = field(default=None, metadata={"help": "Hub token (defaults to the stored login)."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow model code from the Hub folder (only for folders you trust)."}
    )
    ignore_mismatched_sizes: bool = field(
        default=True,
        metadata={"help": "Re-initialise the classifier head when the checkpoint's number of classes differs."},
    )
    torch_threads: int | None = field(default=None, metadata={"help": TORCH_THREADS_HELP})


@dataclass
class DataTrainingArguments:
    """Which data to train and evaluate on."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "A dataset name or path for `datasets.load_dataset` with image and label columns."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration."})
    train_dir: str | None = field(default=None, metadata={"help": "Image folder for training (<dir>/<label>/*)."})
    validation_dir: str | None = field(default=None, metadata={"help": "Image folder for evaluation."})
    train_val_split: float = field(
        default=0.15, metadata={"help": "Fraction of train held out for evaluation when there is no eval split."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate training set (debugging)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate evaluation set (debugging)."})
    image_column_name: str = field(default="image", metadata={"help": "Column holding the images."})
    label_column_name: str = field(default="label", metadata={"help": "Column holding the labels."})
    random_flip: bool = field(
        default=True, metadata={"help": "Random horizontal flips in training (turn off for digits and text)."}
    )
    min_crop_scale: float = field(
        default=0.08, metadata={"help": "Smallest area fraction of the random resized crop (1.0: no cropping)."}
    )

    def __post_init__(self):
        if self.dataset_name is None and self.train_dir is None and self.validation_dir is None:
            raise ValueError("Give --dataset_name, or --train_dir / --validation_dir image folders.")
        if not 0.0 < self.min_crop_scale <= 1.0:
            raise ValueError(f"--min_crop_scale must be in (0, 1], got {self.min_crop_scale}")
        if not 0.0 <= self.train_val_split < 1.0:
            raise ValueError(f"--train_val_split must be in [0, 1), got {self.train_val_split}")


def _size_field(size, key):
    if size is None:
        return None
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def input_resolution(image_processor) -> tuple[int, int]:
    """(height, width) of the tensors the processor's evaluation transform produces."""
    if getattr(image_processor, "do_center_crop", False) and getattr(image_processor, "crop_size", None):
        crop = image_processor.crop_size
        return _size_field(crop, "height"), _size_field(crop, "width")
    size = image_processor.size
    side = _size_field(size, "shortest_edge")
    if side:
        return side, side
    height, width = _size_field(size, "height"), _size_field(size, "width")
    if height and width:
        return height, width
    raise ValueError(f"Cannot tell the input resolution from the image processor's size {size!r}")


def resize_image_processor(image_processor, image_size: int | None, crop_pct: float | None):
    """A copy of the processor that evaluates at ``image_size`` (and ``crop_pct`` where it has one)."""
    if image_size is None and crop_pct is None:
        return image_processor
    settings = image_processor.to_dict()
    if image_size is not None:
        if image_size < 1:
            raise ValueError(f"--image_size must be positive, got {image_size}")
        if _size_field(image_processor.size, "shortest_edge"):
            settings["size"] = {"shortest_edge": image_size}
        else:
            settings["size"] = {"height": image_size, "width": image_size}
        if getattr(image_processor, "crop_size", None) is not None:
            settings["crop_size"] = {"height": image_size, "width": image_size}
    if crop_pct is not None:
        if not 0.0 < crop_pct <= 1.0:
            raise ValueError(f"--crop_pct must be in (0, 1], got {crop_pct}")
        if "crop_pct" not in settings:
            raise ValueError(f"{type(image_processor).__name__} has no crop_pct setting; drop --crop_pct")
        settings["crop_pct"] = crop_pct
    return type(image_processor).from_dict(settings)


class TrainTransform:
    """Random resized crop + optional horizontal flip (PIL), then the processor's rescale and normalisation."""

    def __init__(self, image_processor, random_flip: bool = True, min_crop_scale: float = 0.08):
        self.image_processor = image_processor
        self.height, self.width = input_resolution(image_processor)
        self.random_flip = random_flip
        self.scale = (min_crop_scale, 1.0)
        self.log_ratio = (math.log(3 / 4), math.log(4 / 3))
        resample = getattr(image_processor, "resample", None)
        self.resample = Image.Resampling(int(resample)) if resample is not None else Image.Resampling.BICUBIC

    def _crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        # Same sampling rule as the usual RandomResizedCrop: area fraction and log-uniform aspect ratio.
        area = width * height
        for _ in range(10):
            target_area = area * random.uniform(*self.scale)
            ratio = math.exp(random.uniform(*self.log_ratio))
            w = int(round(math.sqrt(target_area * ratio)))
            h = int(round(math.sqrt(target_area / ratio)))
            if 0 < w <= width and 0 < h <= height:
                left, top = random.randint(0, width - w), random.randint(0, height - h)
                return left, top, left + w, top + h
        side = min(width, height)  # fallback: central square
        left, top = (width - side) // 2, (height - side) // 2
        return left, top, left + side, top + side

    def augment(self, image: Image.Image) -> Image.Image:
        image = image.convert("RGB")
        crop = image.crop(self._crop_box(*image.size)).resize((self.width, self.height), self.resample)
        if self.random_flip and random.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return crop

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        crops = [self.augment(image) for image in images]
        return self.image_processor(
            images=crops, do_resize=False, do_center_crop=False, return_tensors="pt"
        )["pixel_values"]


class EvalTransform:
    """The processor's own evaluation transform (resize, center crop, rescale, normalise)."""

    def __init__(self, image_processor):
        self.image_processor = image_processor

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        images = [image.convert("RGB") for image in images]
        return self.image_processor(images=images, return_tensors="pt")["pixel_values"]


def make_batch_transform(image_transform, image_column: str, label_column: str):
    def transform(batch):
        return {"pixel_values": list(image_transform(batch[image_column])), "labels": batch[label_column]}

    return transform


def collate_fn(examples):
    return {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        "labels": torch.tensor([example["labels"] for example in examples]),
    }


def compute_metrics(eval_prediction) -> dict[str, float]:
    """Top-1 accuracy. Written with numpy because `evaluate.load("accuracy")` fetches its script from the Hub."""
    logits = eval_prediction.predictions
    if isinstance(logits, tuple):
        logits = logits[0]
    predictions = np.asarray(logits).argmax(axis=-1)
    references = np.asarray(eval_prediction.label_ids)
    return {"accuracy": float((predictions == references).mean())}


def parse_config_overrides(text: str | None) -> dict:
    if not text:
        return {}
    try:
        overrides = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"--config_overrides must be a JSON object, e.g. '{{\"depths\": [1, 1, 2, 1]}}': {error}")
    if not isinstance(overrides, dict):
        raise ValueError(f"--config_overrides must be a JSON object, got {type(overrides).__name__}")
    return overrides


def check_override_keys(config, overrides: dict) -> None:
    """Configs accept unknown keyword arguments silently; a typo in an override must not train the wrong model."""
    unknown = sorted(key for key in overrides if not hasattr(config, key))
    if unknown:
        raise ValueError(f"--config_overrides: {type(config).__name__} has no field(s) {unknown}")


def load_data(data_args: DataTrainingArguments, cache_dir: str | None, token: str | None) -> DatasetDict:
    if data_args.dataset_name is not None:
        dataset = load_dataset(
            data_args.dataset_name, data_args.dataset_config_name, cache_dir=cache_dir, token=token
        )
    else:
        data_files = {}
        if data_args.train_dir is not None:
            data_files["train"] = os.path.join(data_args.train_dir, "**")
        if data_args.validation_dir is not None:
            data_files["validation"] = os.path.join(data_args.validation_dir, "**")
        dataset = load_dataset("imagefolder", data_files=data_files, cache_dir=cache_dir)

    for split in dataset.values():
        for column in (data_args.image_column_name, data_args.label_column_name):
            if column not in split.column_names:
                raise ValueError(
                    f"Column {column!r} not found in the dataset (columns: {split.column_names}); "
                    "set --image_column_name / --label_column_name"
                )
    if "validation" not in dataset and "test" in dataset:
        dataset["validation"] = dataset.pop("test")
    if "validation" not in dataset and "train" in dataset and data_args.train_val_split > 0:
        split = dataset["train"].train_test_split(data_args.train_val_split, seed=0)
        dataset["train"], dataset["validation"] = split["train"], split["test"]
    label_feature = next(iter(dataset.values())).features[data_args.label_column_name]
    if not isinstance(label_feature, ClassLabel):
        dataset = dataset.class_encode_column(data_args.label_column_name)
    return dataset


def build_model_and_processor(model_args: ModelArguments, label_names: list[str]):
    """Random init from a VMamba variant name, or fine-tuning from a model folder / Hub id."""
    label2id = {name: i for i, name in enumerate(label_names)}
    id2label = {i: name for i, name in enumerate(label_names)}
    overrides = parse_config_overrides(model_args.config_overrides)
    name = model_args.model_name_or_path

    variant_error = None
    if not os.path.isdir(name):
        try:
            check_override_keys(transformers_vmamba.VMambaConfig.from_variant(name), overrides)
        except ValueError as error:
            if "--config_overrides" in str(error):
                raise
            variant_error = error  # not a variant: try it as a Hub id below
        else:
            config = transformers_vmamba.VMambaConfig.from_variant(
                name, num_labels=len(label_names), label2id=label2id, id2label=id2label, **overrides
            )
            logger.info("Training %s from random initialisation", name)
            model = AutoModelForImageClassification.from_config(config)
            if model_args.image_processor_name:
                image_processor = AutoImageProcessor.from_pretrained(
                    model_args.image_processor_name, cache_dir=model_args.cache_dir, token=model_args.token
                )
            else:
                image_processor = transformers_vmamba.default_image_processor()
            return model, image_processor

    hub_kwargs = {
        "cache_dir": model_args.cache_dir,
        "revision": model_args.model_revision,
        "token": model_args.token,
        "trust_remote_code": model_args.trust_remote_code,
    }
    try:
        config = AutoConfig.from_pretrained(
            name, num_labels=len(label_names), label2id=label2id, id2label=id2label, **hub_kwargs
        )
    except (OSError, ValueError) as error:  # ValueError: not even a valid repo id
        hint = f" It is not a VMamba variant either: {variant_error}" if variant_error else ""
        raise ValueError(f"--model_name_or_path {name!r} is not a loadable model folder or Hub id ({error}).{hint}")
    check_override_keys(config, overrides)
    for key, value in overrides.items():
        setattr(config, key, value)
    model = AutoModelForImageClassification.from_pretrained(
        name, config=config, ignore_mismatched_sizes=model_args.ignore_mismatched_sizes, **hub_kwargs
    )
    try:
        image_processor = AutoImageProcessor.from_pretrained(model_args.image_processor_name or name, **hub_kwargs)
    except OSError:
        if config.model_type != "vmamba":
            raise
        logger.warning("%s has no preprocessor_config.json: using VMamba's default evaluation transform", name)
        image_processor = transformers_vmamba.default_image_processor()
    return model, image_processor


def main(argv: list[str] | None = None):
    use_gloo_ddp_without_accelerator()  # before TrainingArguments is parsed
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    if argv is None and len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        model_args, data_args, training_args = parser.parse_json_file(json_file=os.path.abspath(sys.argv[1]))
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    # The image column is turned into pixel_values on the fly, so Trainer must not drop it beforehand.
    training_args.remove_unused_columns = False

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    logger.info("Training parameters %s", training_args)

    resume = training_args.resume_from_checkpoint
    if resume is not None and resume.lower() in {"latest", "true"}:
        resume = get_last_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
        if resume is None:
            raise ValueError(f"--resume_from_checkpoint latest: no checkpoint-* folder in {training_args.output_dir}")
    elif resume is not None and not os.path.isdir(resume):
        raise ValueError(f"--resume_from_checkpoint {resume!r} is not a folder (or 'latest')")
    elif training_args.do_train and os.path.isdir(training_args.output_dir or ""):
        if get_last_checkpoint(training_args.output_dir) is not None:
            logger.warning(
                "%s already holds checkpoints; training starts afresh (pass --resume_from_checkpoint latest to "
                "continue)",
                training_args.output_dir,
            )

    set_seed(training_args.seed)

    dataset = load_data(data_args, model_args.cache_dir, model_args.token)
    label_names = next(iter(dataset.values())).features[data_args.label_column_name].names
    model, image_processor = build_model_and_processor(model_args, label_names)
    image_processor = resize_image_processor(image_processor, model_args.image_size, model_args.crop_pct)
    logger.info("Model: %s, %.2fM parameters", type(model).__name__, model.num_parameters() / 1e6)
    configure_cpu(training_args, model_args.torch_threads, model.num_parameters(), logger)

    image_col, label_col = data_args.image_column_name, data_args.label_column_name
    train_dataset = eval_dataset = None
    if training_args.do_train:
        if "train" not in dataset:
            raise ValueError("--do_train needs a train split (--train_dir or a dataset with 'train')")
        train_dataset = dataset["train"].shuffle(seed=training_args.seed)
        if data_args.max_train_samples is not None:
            train_dataset = train_dataset.select(range(min(data_args.max_train_samples, len(train_dataset))))
        train_transform = TrainTransform(image_processor, data_args.random_flip, data_args.min_crop_scale)
        train_dataset.set_transform(make_batch_transform(train_transform, image_col, label_col))
    if training_args.do_eval or training_args.eval_strategy != "no":
        if "validation" not in dataset:
            raise ValueError("Evaluation needs a validation split (--validation_dir or --train_val_split > 0)")
        eval_dataset = dataset["validation"]
        if data_args.max_eval_samples is not None:
            # Image folders list their files class by class: shuffle first so that a subset holds every class.
            eval_dataset = eval_dataset.shuffle(seed=training_args.seed)
            eval_dataset = eval_dataset.select(range(min(data_args.max_eval_samples, len(eval_dataset))))
        eval_dataset.set_transform(make_batch_transform(EvalTransform(image_processor), image_col, label_col))

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=image_processor,
        data_collator=collate_fn,
        compute_metrics=compute_metrics,
    )

    metrics = {}
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=resume)
        trainer.save_model()  # model + image processor, loadable with pipeline("image-classification")
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()
        metrics.update({f"train_{k}" if not k.startswith("train") else k: v for k, v in train_result.metrics.items()})
    if training_args.do_eval:
        eval_metrics = trainer.evaluate()
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)

    card_kwargs = {
        "finetuned_from": model_args.model_name_or_path,
        "tasks": "image-classification",
        "tags": ["image-classification", "vmamba"],
    }
    if data_args.dataset_name is not None:
        card_kwargs["dataset"] = data_args.dataset_name
    if training_args.push_to_hub:
        trainer.push_to_hub(**card_kwargs)
    elif training_args.do_train:
        trainer.create_model_card(**card_kwargs)
    return metrics


if __name__ == "__main__":
    main()
