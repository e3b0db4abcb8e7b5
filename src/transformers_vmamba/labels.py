# Copyright 2026 The transformers-vmamba authors. Licensed under the MIT license.
"""Class names of the datasets the original checkpoints were trained on, shipped as package data."""

from __future__ import annotations

import functools
import json
from importlib import resources


@functools.cache
def _load(name: str) -> dict:
    return json.loads(resources.files(__package__).joinpath("data", name).read_text(encoding="utf-8"))


def imagenet1k_labels() -> list[str]:
    """The 1,000 ImageNet-1k (ILSVRC-2012) class names in class-index order (source recorded in the data file)."""
    return list(_load("imagenet1k_labels.json")["labels"])


def label_fields(labels: list[str]) -> dict:
    """`id2label` / `label2id` config fields for a list of class names."""
    return dict(id2label=dict(enumerate(labels)), label2id={label: index for index, label in enumerate(labels)})


def ade20k_labels() -> list[str]:
    """The 150 ADE20K (SceneParsing) class names in the order of the original UperNet heads' outputs (source
    recorded in the data file)."""
    return list(_load("ade20k_labels.json")["labels"])
