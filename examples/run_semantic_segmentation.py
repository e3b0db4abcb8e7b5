#!/usr/bin/env python
"""Fine-tune a VMamba UperNet (Transformers' `UperNetForSemanticSegmentation` with a VMamba backbone) for semantic
segmentation with `Trainer`.

Modelled on Transformers' ``examples/pytorch/semantic-segmentation/run_semantic_segmentation.py`` (HfArgumentParser
with TrainingArguments, a dataset with image and label-map columns, mean IoU), without torchvision: the training
augmentation (random rescale, crop, flip) is written with PIL. The loss is the decode head's cross-entropy plus the
auxiliary head's weighted 0.4, as in the original's UperNet configs (`UperNetConfig.auxiliary_loss_weight`); label
255 is ignored.

Data: ``--dataset_name`` (any `datasets` dataset with an image column and a label-map column, e.g.
``scene_parse_150`` with ``--label_column_name annotation --reduce_labels``), or, by default, an offline set made
from scikit-learn's 8x8 handwritten digits: **derived masks of real images**. Each scanned digit is upscaled
(bicubic) and placed at a random position on a white canvas; its ink pixels (upscaled ink intensity above half of
the maximum, 8 of 16) are labelled with the digit's class (1..10 for digits 0..9) and every other pixel is background
(0). The masks are therefore computed from the images by thresholding, not drawn by people; the class of each mask
is the dataset's human label of the digit.

Models: ``--model_name_or_path`` is
  * a converted UperNet folder (e.g. ``vmamba-convert --model upernet-vmamba-tiny-s2l5``): fine-tuned, its class
    heads re-initialised when the number of classes differs;
  * a VMamba classifier or backbone folder (e.g. a converted ImageNet checkpoint): its trunk becomes the backbone
    of a new UperNet (the original's recipe: ImageNet-pretrained backbone, new heads);
  * a VMamba variant name (e.g. ``vmamba-tiny-s1l8``): random initialisation, ``--config_overrides`` JSON for the
    backbone (e.g. a smaller model for the digits).

Examples::

    # offline digits masks, tiny random-init model
    python examples/run_semantic_segmentation.py --model_name_or_path vmamba-tiny-s1l8 \\
        --config_overrides '{"depths": [1, 1, 2, 1], "hidden_sizes": [32, 48, 64, 96]}' \\
        --decode_head_channels 64 --auxiliary_channels 32 --image_size 64 \\
        --output_dir out/seg-digits --do_train --do_eval --num_train_epochs 10 --learning_rate 2e-3

    # a converted ADE20K UperNet on ADE20K (needs the dataset)
    python examples/run_semantic_segmentation.py --model_name_or_path converted/upernet-vmamba-tiny-s2l5 \\
        --dataset_name scene_parse_150 --label_column_name annotation --reduce_labels \\
        --output_dir out/ade --do_train --do_eval --per_device_train_batch_size 4 --learning_rate 6e-5

Metrics: ``mean_iou`` (classes' IoU averaged over the classes present in the labels or the predictions, as mmseg's
mIoU), ``overall_accuracy``, and ``baseline_mean_iou`` / ``baseline_overall_accuracy`` of the trivial prediction
"everything is background" (class 0) for comparison.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForSemanticSegmentation,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
    UperNetConfig,
    UperNetForSemanticSegmentation,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

import transformers_vmamba  # registers VMamba with the Auto classes

from cpu_training import TORCH_THREADS_HELP, configure_cpu, use_gloo_ddp_without_accelerator  # beside this script


logger = logging.getLogger(__name__)

IGNORE_INDEX = 255
DIGIT_LABELS = ["background"] + [f"digit {digit}" for digit in range(10)]


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="vmamba-tiny-s1l8",
        metadata={
            "help": "A converted UperNet folder, a VMamba classifier/backbone folder, or a VMamba variant name."
        },
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "JSON object of backbone (VMambaConfig) fields for a variant name, e.g. smaller depths."},
    )
    decode_head_channels: int = field(default=512, metadata={"help": "UPerHead channels of a new UperNet."})
    auxiliary_channels: int = field(default=256, metadata={"help": "FCNHead channels of a new UperNet."})
    auxiliary_loss_weight: float = field(
        default=0.4, metadata={"help": "Weight of the auxiliary loss (original: 0.4)."}
    )
    image_size: int | None = field(
        default=None,
        metadata={"help": "Train crop side and evaluation size (square). Default: the original's ADE20K evaluation "
                  "(keep ratio, short side 512) and 512 crops."},
    )
    ignore_mismatched_sizes: bool = field(
        default=True, metadata={"help": "Re-initialise the class heads when the number of classes differs."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where to cache Hub downloads."})
    token: str | None = field(default=None, metadata={"help": "Hub token."})
    torch_threads: int | None = field(default=None, metadata={"help": TORCH_THREADS_HELP})


@dataclass
class DataTrainingArguments:
    dataset_name: str | None = field(
        default=None, metadata={"help": "`datasets` name or path; default: the offline digits masks."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration."})
    image_column_name: str = field(default="image", metadata={"help": "Column of the images."})
    label_column_name: str = field(default="label", metadata={"help": "Column of the label maps."})
    class_names: str | None = field(
        default=None, metadata={"help": "JSON list of class names (default: the model's, or the digits classes)."}
    )
    reduce_labels: bool = field(
        default=False, metadata={"help": "Label 0 -> 255 (ignored), k -> k-1 (ADE20K's raw annotations)."}
    )
    train_val_split: float = field(default=0.15, metadata={"help": "Held-out fraction when there is no eval split."})
    digits_samples: int | None = field(default=None, metadata={"help": "Use only this many digits (debugging)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the evaluation set."})
    random_flip: bool = field(default=False, metadata={"help": "Random horizontal flips (off for digits)."})
    min_scale: float = field(default=0.5, metadata={"help": "Smallest random rescale factor in training."})
    max_scale: float = field(default=2.0, metadata={"help": "Largest random rescale factor in training."})


# ---------------------------------------------------------------------------------------------------------------
# Offline data: masks derived from scikit-learn's digits


def digits_segmentation_dataset(image_size: int = 64, seed: int = 0, limit: int | None = None):
    """scikit-learn's 1,797 scanned digits as (image, label map) pairs, split 80/20 (stratified).

    Each 8x8 digit (ink 0..16) is upscaled bicubically to 3/4 of `image_size` and pasted at a random position on a
    white `image_size` square; pixels whose upscaled ink exceeds 8 are labelled ``digit + 1``, all others 0.
    """
    from datasets import Dataset, DatasetDict, Features
    from datasets import Image as ImageFeature
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if image_size < 8:
        raise ValueError(f"image_size must be >= 8 for the digits, got {image_size}")
    digits = load_digits()
    indices = np.arange(len(digits.target))
    if limit is not None:
        indices = indices[:limit]
    rng = np.random.default_rng(seed)
    side = max(8, image_size * 3 // 4)
    images, masks = [], []
    for index in indices:
        ink = Image.fromarray((digits.images[index] * (255 / 16)).astype(np.float32), mode="F")
        ink = np.asarray(ink.resize((side, side), Image.Resampling.BICUBIC)) * (16 / 255)
        top, left = rng.integers(0, image_size - side + 1, size=2)
        canvas = np.zeros((image_size, image_size), dtype=np.float32)
        canvas[top : top + side, left : left + side] = np.clip(ink, 0, 16)
        gray = (255 - canvas * (255 / 16)).round().astype(np.uint8)
        mask = np.where(canvas > 8, digits.target[index] + 1, 0).astype(np.uint8)
        images.append(Image.fromarray(gray, mode="L").convert("RGB"))
        masks.append(Image.fromarray(mask, mode="L"))
    train, test = train_test_split(
        np.arange(len(indices)), test_size=0.2, random_state=seed, stratify=digits.target[indices]
    )
    features = Features({"image": ImageFeature(), "label": ImageFeature()})

    def split(rows):
        return Dataset.from_dict({"image": [images[i] for i in rows], "label": [masks[i] for i in rows]}, features)

    return DatasetDict(train=split(train), validation=split(test))


# ---------------------------------------------------------------------------------------------------------------
# Transforms


class TrainTransform:
    """Random rescale (keep ratio), pad (image 0, label 255) and random crop to a square, optional flip; then the
    processor's rescale/normalisation. A lighter version of the original's training pipeline (RandomResize 0.5-2.0,
    RandomCrop, RandomFlip; no photometric distortion)."""

    def __init__(self, image_processor, crop_size: int, scale=(0.5, 2.0), random_flip: bool = False, reduce=False):
        self.image_processor, self.crop_size, self.scale = image_processor, crop_size, scale
        self.random_flip, self.reduce = random_flip, reduce

    def __call__(self, image: Image.Image, label: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = image.convert("RGB"), np.asarray(label, dtype=np.int64)
        if label.ndim == 3:
            label = label[..., 0]
        label = reduce_labels(label) if self.reduce else label
        factor = random.uniform(*self.scale) * self.crop_size / min(image.size)
        size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
        image = image.resize(size, Image.Resampling.BILINEAR)
        label = np.asarray(Image.fromarray(label.astype(np.int32), mode="I").resize(size, Image.Resampling.NEAREST))
        height, width = max(size[1], self.crop_size), max(size[0], self.crop_size)
        padded = np.zeros((height, width, 3), dtype=np.uint8)
        padded[: size[1], : size[0]] = np.asarray(image)
        padded_label = np.full((height, width), IGNORE_INDEX, dtype=np.int64)
        padded_label[: size[1], : size[0]] = label
        top, left = random.randint(0, height - self.crop_size), random.randint(0, width - self.crop_size)
        crop = padded[top : top + self.crop_size, left : left + self.crop_size]
        crop_label = padded_label[top : top + self.crop_size, left : left + self.crop_size]
        if self.random_flip and random.random() < 0.5:
            crop, crop_label = crop[:, ::-1], crop_label[:, ::-1]
        pixel_values = self.image_processor(images=np.ascontiguousarray(crop), do_resize=False, return_tensors="pt")
        return pixel_values["pixel_values"][0], torch.from_numpy(np.ascontiguousarray(crop_label))


class EvalTransform:
    """The processor's evaluation transform; the label map resized to the same size (nearest)."""

    def __init__(self, image_processor, reduce=False):
        self.image_processor, self.reduce = image_processor, reduce

    def __call__(self, image: Image.Image, label: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        pixel_values = self.image_processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]
        label = np.asarray(label, dtype=np.int64)
        if label.ndim == 3:
            label = label[..., 0]
        label = reduce_labels(label) if self.reduce else label
        height, width = pixel_values.shape[-2:]
        if label.shape != (height, width):
            label = np.asarray(
                Image.fromarray(label.astype(np.int32), mode="I").resize((width, height), Image.Resampling.NEAREST)
            )
        return pixel_values, torch.from_numpy(label.astype(np.int64))


def reduce_labels(label: np.ndarray) -> np.ndarray:
    label = label.astype(np.int64) - 1
    label[label < 0] = IGNORE_INDEX
    label[label == IGNORE_INDEX - 1] = IGNORE_INDEX
    return label


def make_batch_transform(transform, image_column: str, label_column: str):
    def apply(batch):
        pairs = [transform(image, label) for image, label in zip(batch[image_column], batch[label_column])]
        return {"pixel_values": [p for p, _ in pairs], "labels": [label for _, label in pairs]}

    return apply


def collate_fn(examples):
    return {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        "labels": torch.stack([example["labels"] for example in examples]),
    }


# ---------------------------------------------------------------------------------------------------------------
# Metrics


def mean_iou(predictions: np.ndarray, labels: np.ndarray, num_labels: int) -> dict[str, float]:
    """mmseg-style mIoU: per-class intersection / union over the whole set, averaged over the classes with a
    non-empty union; pixels labelled 255 are ignored."""
    valid = labels != IGNORE_INDEX
    predictions, labels = predictions[valid].astype(np.int64), labels[valid].astype(np.int64)
    intersection = np.bincount(labels[predictions == labels], minlength=num_labels)[:num_labels]
    area_prediction = np.bincount(predictions, minlength=num_labels)[:num_labels]
    area_label = np.bincount(labels, minlength=num_labels)[:num_labels]
    union = area_prediction + area_label - intersection
    present = union > 0
    iou = intersection[present] / union[present]
    return {
        "mean_iou": float(iou.mean()) if present.any() else 0.0,
        "overall_accuracy": float(intersection.sum() / max(1, valid.sum())),
    }


def make_compute_metrics(num_labels: int):
    def compute_metrics(eval_prediction) -> dict[str, float]:
        predictions = np.asarray(eval_prediction.predictions)
        labels = np.asarray(eval_prediction.label_ids)
        metrics = mean_iou(predictions, labels, num_labels)
        baseline = mean_iou(np.zeros_like(labels), labels, num_labels)
        metrics.update({f"baseline_{key}": value for key, value in baseline.items()})
        return metrics

    return compute_metrics


def predictions_from_logits(logits, labels):
    """Keep only the argmax (Trainer would otherwise gather all logits of the evaluation set)."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=1)


# ---------------------------------------------------------------------------------------------------------------
# Model


def parse_json(text: str | None, what: str, kind: type):
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{what} must be JSON: {error}") from None
    if not isinstance(value, kind):
        raise ValueError(f"{what} must be a JSON {kind.__name__}, got {type(value).__name__}")
    return value


def new_upernet(backbone_config, model_args: ModelArguments, label_names: list[str]) -> UperNetForSemanticSegmentation:
    stages = [f"stage{index + 1}" for index in range(len(backbone_config.depths))]
    backbone_config.out_features = stages
    config = UperNetConfig(
        backbone_config=backbone_config,
        hidden_size=model_args.decode_head_channels,
        auxiliary_in_channels=backbone_config.hidden_sizes[min(2, len(stages) - 1)],
        auxiliary_channels=model_args.auxiliary_channels,
        auxiliary_loss_weight=model_args.auxiliary_loss_weight,
        loss_ignore_index=IGNORE_INDEX,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: index for index, name in enumerate(label_names)},
    )
    return UperNetForSemanticSegmentation(config)


def build_model(model_args: ModelArguments, label_names: list[str] | None):
    """(model, label names) from a UperNet folder, a VMamba folder, or a variant name."""
    name = model_args.model_name_or_path
    overrides = parse_json(model_args.config_overrides, "--config_overrides", dict) or {}
    if not os.path.isdir(name) and name in transformers_vmamba.VARIANTS:
        label_names = label_names or DIGIT_LABELS
        backbone_config = transformers_vmamba.VMambaConfig.from_variant(name, **overrides)
        logger.info("New UperNet on a randomly initialised %s backbone", name)
        return new_upernet(backbone_config, model_args, label_names), label_names
    hub = {"cache_dir": model_args.cache_dir, "token": model_args.token}
    config = AutoConfig.from_pretrained(name, **hub)
    if config.model_type == "vmamba":
        if overrides:
            raise ValueError("--config_overrides applies to variant names only")
        label_names = label_names or DIGIT_LABELS
        backbone = transformers_vmamba.VMambaBackbone.from_pretrained(
            name, out_features=[f"stage{i + 1}" for i in range(len(config.depths))], **hub
        )
        model = new_upernet(backbone.config, model_args, label_names)
        missing, unexpected = model.backbone.load_state_dict(backbone.state_dict(), strict=False)
        logger.info("New UperNet on the pretrained backbone of %s (new: %s)", name, missing)
        return model, label_names
    if label_names is None:
        label_names = [config.id2label[index] for index in range(config.num_labels)]
    model = AutoModelForSemanticSegmentation.from_pretrained(
        name,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={label: index for index, label in enumerate(label_names)},
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
        **hub,
    )
    model.config.auxiliary_loss_weight = model_args.auxiliary_loss_weight
    return model, label_names


def build_image_processor(model_args: ModelArguments, reduce: bool):
    processor = None
    if os.path.isdir(model_args.model_name_or_path):
        try:
            processor = AutoImageProcessor.from_pretrained(model_args.model_name_or_path)
        except (OSError, ValueError):
            processor = None
        if processor is not None and not hasattr(processor, "post_process_semantic_segmentation"):
            processor = None  # a classifier's processor (center crop): use the segmentation one
    if processor is None:
        processor = transformers_vmamba.segmentation_image_processor(reduce_labels=reduce)
    if model_args.image_size is not None:
        settings = processor.to_dict()
        settings["size"] = {"height": model_args.image_size, "width": model_args.image_size}
        processor = type(processor).from_dict(settings)
    return processor


# ---------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    use_gloo_ddp_without_accelerator()  # before TrainingArguments is parsed
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    if argv is None and len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        model_args, data_args, training_args = parser.parse_json_file(json_file=os.path.abspath(sys.argv[1]))
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    training_args.remove_unused_columns = False  # the transforms need the image and label columns
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    if not 0 < data_args.min_scale <= data_args.max_scale:
        raise ValueError("--min_scale and --max_scale must satisfy 0 < min_scale <= max_scale")
    parse_json(model_args.config_overrides, "--config_overrides", dict)  # fail before loading any data
    set_seed(training_args.seed)

    label_names = parse_json(data_args.class_names, "--class_names", list)
    if data_args.dataset_name is None:
        dataset = digits_segmentation_dataset(
            model_args.image_size or 64, training_args.seed, data_args.digits_samples
        )
        label_names = label_names or DIGIT_LABELS
    else:
        from datasets import load_dataset

        dataset = load_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir=model_args.cache_dir)
        if "validation" not in dataset and "test" in dataset:
            dataset["validation"] = dataset.pop("test")
        if "validation" not in dataset:
            split = dataset["train"].train_test_split(data_args.train_val_split, seed=training_args.seed)
            dataset["train"], dataset["validation"] = split["train"], split["test"]
    model, label_names = build_model(model_args, label_names)
    image_processor = build_image_processor(model_args, data_args.reduce_labels)
    logger.info("Model: %s, %.2fM parameters, %d classes", type(model).__name__, model.num_parameters() / 1e6,
                len(label_names))
    configure_cpu(training_args, model_args.torch_threads, model.num_parameters(), logger)

    image_col, label_col = data_args.image_column_name, data_args.label_column_name
    crop_size = model_args.image_size or 512
    train_dataset = eval_dataset = None
    if training_args.do_train:
        train_dataset = dataset["train"].shuffle(seed=training_args.seed)
        if data_args.max_train_samples is not None:
            train_dataset = train_dataset.select(range(min(data_args.max_train_samples, len(train_dataset))))
        transform = TrainTransform(image_processor, crop_size, (data_args.min_scale, data_args.max_scale),
                                   data_args.random_flip, data_args.reduce_labels)
        train_dataset.set_transform(make_batch_transform(transform, image_col, label_col))
    if training_args.do_eval or training_args.eval_strategy != "no":
        eval_dataset = dataset["validation"]
        if data_args.max_eval_samples is not None:
            eval_dataset = eval_dataset.select(range(min(data_args.max_eval_samples, len(eval_dataset))))
        eval_dataset.set_transform(
            make_batch_transform(EvalTransform(image_processor, data_args.reduce_labels), image_col, label_col)
        )

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=image_processor,
        data_collator=collate_fn,
        compute_metrics=make_compute_metrics(len(label_names)),
        preprocess_logits_for_metrics=predictions_from_logits,
    )
    metrics = {}
    if training_args.do_train:
        resume = training_args.resume_from_checkpoint
        if resume is not None and resume.lower() in {"latest", "true"}:
            resume = get_last_checkpoint(training_args.output_dir)
        train_result = trainer.train(resume_from_checkpoint=resume)
        trainer.save_model()  # model + image processor: loads with pipeline("image-segmentation")
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()
        metrics.update(train_result.metrics)
    if training_args.do_eval:
        eval_metrics = trainer.evaluate()
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
    if training_args.push_to_hub:
        trainer.push_to_hub(finetuned_from=model_args.model_name_or_path, tasks="image-segmentation")
    return metrics


if __name__ == "__main__":
    main()
