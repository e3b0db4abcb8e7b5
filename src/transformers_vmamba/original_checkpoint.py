# Copyright 2026 The transformers-vmamba authors. Licensed under the MIT license.
"""Load checkpoints of the original VMamba training code (MzeroMiko/VMamba) into the Transformers model.

Everything here works from the keys and shapes of the saved tensors: the config is inferred, checked against a
released variant when one is named (or recognised by its file name), and every key must map (no missing, unexpected
or mis-shaped keys). Classification checkpoints become `VMambaForImageClassification`; mmsegmentation UperNet
checkpoints (``backbone.`` + a UPerHead ``decode_head.`` and an FCNHead ``auxiliary_head.``) become Transformers'
`UperNetForSemanticSegmentation` with a `VMambaBackbone`; other detection/segmentation checkpoints
(mmdetection/mmsegmentation layout, backbone under ``backbone.``) become `VMambaBackbone`, their heads being
skipped. Pickled checkpoints are untrusted, so they are only ever read with ``torch.load(weights_only=True)``;
classes pickled next to the weights (the yacs config of the released files) are replaced by inert stand-ins instead
of being imported. This module owns every fact about original checkpoints; ``vmamba-convert`` is a shell over it.
"""

from __future__ import annotations

import math
import os
import pickletools
import re
import zipfile
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from transformers import UperNetConfig, UperNetForSemanticSegmentation
from transformers.utils import logging

from .configuration_vmamba import ARCHITECTURE_FIELDS, VARIANTS, VMambaConfig
from .labels import ade20k_labels, imagenet1k_labels, label_fields
from .modeling_vmamba import VMambaBackbone, VMambaForImageClassification
from .released_models import (
    RELEASED_MODELS,
    RELEASED_SEGMENTATION_MODELS,
    ReleasedModel,
    ReleasedSegmentationModel,
    find_release,
)
from .upernet_checkpoint import head_key, infer_upernet_fields, is_upernet_checkpoint, original_head_key


logger = logging.get_logger(__name__)

# Where the original code keeps its weights, in the order they are preferred: the EMA weights are the ones the
# published accuracies were measured with (except Vanilla-VMamba-T; see `ReleasedModel.default_weights_key`), and
# mmengine (detection/segmentation) saves under `state_dict`.
WEIGHTS_KEYS = ("model_ema", "model", "state_dict")


class OriginalCheckpointError(ValueError):
    """An original VMamba checkpoint that cannot be read, recognised or mapped."""


# ---------------------------------------------------------------------------------------------------------------
# Reading the file
# ---------------------------------------------------------------------------------------------------------------


class InertObject:
    """What a pickled function call or object with arguments (a numpy array, ``getattr(...)``, a ``__reduce__``
    payload) becomes: nothing is called, its arguments and state are only kept for inspection."""

    __slots__ = ("args", "state")

    def __init__(self, args: tuple = ()):
        self.args, self.state = args, None

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"InertObject(args={len(self.args)})"


class _InertStandIn:
    """Takes the place of any class or function pickled in a checkpoint; runs nothing.

    Created without arguments (how pickle makes an object before filling it) it is a plain OrderedDict: the
    restricted unpickler fills dict items and ``__dict__`` state only into plain dict types, and an OrderedDict
    accepts both, so e.g. a yacs ``CfgNode`` comes back as an OrderedDict of its fields. Called with arguments it is
    an `InertObject`, which accepts any state (numpy arrays in mmengine's message hub have a tuple state).
    """

    def __new__(cls, *args, **kwargs):
        return InertObject(args) if args else OrderedDict()


_INERT_OBJECT = f"{__name__}.InertObject"  # registered so the unpickler may set an InertObject's state


def _legacy_pickle_globals(path: str) -> set[str]:
    """Classes and functions named in a pre-zip ``torch.save`` file (``_use_new_zipfile_serialization=False``).

    Such a file is four pickles in a row (magic number, protocol, system info, the object) followed by raw storage
    bytes; `pickletools` lists their GLOBAL opcodes without running anything.
    """
    names = set()
    with open(path, "rb") as handle:
        for _ in range(4):
            for opcode, argument, _ in pickletools.genops(handle):
                if opcode.name in ("GLOBAL", "INST"):
                    names.add(argument.replace(" ", "."))
    return names


def _unsafe_globals(path: str) -> list[str]:
    """Pickled globals that ``weights_only`` loading would refuse (they get inert stand-ins)."""
    if zipfile.is_zipfile(path):
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    # the allow-lists get_unsafe_globals_in_checkpoint compares against (it reads zip files only)
    from torch import _weights_only_unpickler as unpickler

    allowed = set(unpickler._get_allowed_globals()) | set(unpickler._get_user_allowed_globals())
    return sorted(_legacy_pickle_globals(path) - allowed)


def load_original_checkpoint(path: str | os.PathLike) -> dict:
    """Read a ``torch.save``d checkpoint safely (``weights_only=True``, tensors mapped to CPU).

    Both the zip format and the legacy format of ``torch.save`` are read. Unknown pickled globals (such as
    ``yacs.config.CfgNode``) are admitted only as inert stand-ins, so loading never imports or executes anything
    from the file. Returns the top-level object (normally a dict such as
    ``{"model": ..., "model_ema": ..., "config": ...}`` or an mmengine ``{"meta": ..., "state_dict": ...}``).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise OriginalCheckpointError(f"no checkpoint file at {path!r}")
    try:
        stand_ins = [(_InertStandIn, name) for name in _unsafe_globals(path)] + [(InertObject, _INERT_OBJECT)]
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:  # noqa: BLE001 - report any unreadable file the same way
        message = " ".join(str(error).split())[:500] or type(error).__name__
        raise OriginalCheckpointError(
            f"cannot read {path!r} as a PyTorch checkpoint (damaged or truncated file?): {message}"
        ) from error


def _is_state_dict(value) -> bool:
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def _why_not_state_dict(value) -> str:
    if not isinstance(value, Mapping):
        return f"is a {type(value).__name__}, not a state dict"
    if not value:
        return "is empty: it holds no weights"
    nested = [key for key, item in value.items() if isinstance(item, Mapping)]
    if len(nested) == len(value):
        return f"holds nested entries {nested[:5]} instead of tensors (a state dict wrapped once more?)"
    for key, item in value.items():
        if not isinstance(key, str):
            return f"is not a state dict: it has a {type(key).__name__} key {key!r}"
        if not isinstance(item, torch.Tensor):
            return f"is not a plain state dict: its entry {key!r} is a {type(item).__name__}, not a tensor"
    return "is not a state dict"


def select_weights(
    checkpoint: Mapping, weights_key: str | None = None, *, prefer: str | None = None
) -> tuple[dict, str | None]:
    """Pick the state dict inside a checkpoint: `weights_key` when given, else the first present of `prefer` and
    `WEIGHTS_KEYS` (``model_ema``, ``model``, ``state_dict``).

    Returns the state dict and the key it came from (None when ``checkpoint`` already is a state dict). An entry
    that is there but is not a state dict (empty, nested, mixed) is an error that says so, not a reason to fall back
    to other weights.
    """
    if _is_state_dict(checkpoint):
        if weights_key is not None:
            raise OriginalCheckpointError(
                f"weights_key={weights_key!r} given, but the checkpoint is a bare state dict without weight keys"
            )
        return dict(checkpoint), None
    if not isinstance(checkpoint, Mapping):
        raise OriginalCheckpointError(f"expected a dict checkpoint, got {type(checkpoint).__name__}")
    if weights_key is not None:
        if weights_key not in checkpoint:
            available = [key for key, value in checkpoint.items() if _is_state_dict(value)]
            raise OriginalCheckpointError(
                f"the checkpoint has no {weights_key!r} weights; available weight keys: {available or 'none'}"
            )
        candidates = [weights_key]
    else:
        order = ([prefer] if prefer else []) + [key for key in WEIGHTS_KEYS if key != prefer]
        candidates = [key for key in order if isinstance(checkpoint.get(key), Mapping)]
    for key in candidates:
        if not _is_state_dict(checkpoint[key]):
            raise OriginalCheckpointError(f"checkpoint[{key!r}] {_why_not_state_dict(checkpoint[key])}")
        return dict(checkpoint[key]), key
    if "_parameters" in checkpoint and "_modules" in checkpoint:
        raise OriginalCheckpointError(
            "the file holds a whole pickled nn.Module, not weights; save model.state_dict() instead"
        )
    raise OriginalCheckpointError(
        f"no weights found: expected one of {', '.join(map(repr, WEIGHTS_KEYS))}; "
        f"top-level keys: {[str(key) for key in checkpoint][:20]}"
    )


# ---------------------------------------------------------------------------------------------------------------
# Key mapping: one table, used in both directions
# ---------------------------------------------------------------------------------------------------------------

# Renames of older releases of the original code (what its VSSM._load_from_state_dict undoes), as key prefixes.
_LEGACY_PREFIXES = (
    (re.compile(r"^patch_embed\.proj\."), "patch_embed.0."),
    (re.compile(r"^patch_embed\.norm\."), "patch_embed.2."),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+)\.ln_1\."), r"\1.norm."),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+)\.self_attention\."), r"\1.op."),
    (re.compile(r"^norm\."), "classifier.norm."),
    (re.compile(r"^head\."), "classifier.head."),
)

# Weights of layers that are linear maps (stored as (out, in, 1, 1) by 1x1-convolution versions of the code).
_LINEAR_WEIGHT = re.compile(r"\.(in_proj|out_proj|fc1|fc2|reduction)\.weight$|^classifier\.head\.weight$")

# What each {field} of the templates below may be.
_FIELDS = {
    "stage": r"\d{1,6}",
    "block": r"\d{1,6}",
    "param": r"weight|bias",
    "mixer": r"in_proj|conv2d|out_norm|out_proj",
    "fc": r"fc1|fc2",
    "merge": r"reduction|norm",
}
_BLOCK, _HF_BLOCK = "layers.{stage}.blocks.{block}.", "encoder.stages.{stage}.layers.{block}."
# (current original key, key inside VMambaModel, the downsample_type the rule belongs to or None for all)
_RENAMES = (
    ("patch_embed.0.{param}", "embeddings.conv1.{param}", None),
    ("patch_embed.2.{param}", "embeddings.norm1.{param}", None),
    ("patch_embed.5.{param}", "embeddings.conv2.{param}", None),
    ("patch_embed.7.{param}", "embeddings.norm2.{param}", None),
    (_BLOCK + "norm.{param}", _HF_BLOCK + "ssm_norm.{param}", None),
    (_BLOCK + "norm2.{param}", _HF_BLOCK + "mlp_norm.{param}", None),
    (_BLOCK + "op.{mixer}.{param}", _HF_BLOCK + "ssm.{mixer}.{param}", None),
    (_BLOCK + "op.x_proj_weight", _HF_BLOCK + "ssm.x_proj_weight", None),
    (_BLOCK + "op.dt_projs_weight", _HF_BLOCK + "ssm.dt_proj_weight", None),
    (_BLOCK + "op.dt_projs_bias", _HF_BLOCK + "ssm.dt_proj_bias", None),
    (_BLOCK + "op.A_logs", _HF_BLOCK + "ssm.A_log", None),
    (_BLOCK + "op.Ds", _HF_BLOCK + "ssm.D", None),
    (_BLOCK + "mlp.{fc}.{param}", _HF_BLOCK + "mlp.{fc}.{param}", None),
    (
        "layers.{stage}.downsample.{merge}.{param}",
        "encoder.stages.{stage}.downsample.{merge}.{param}",
        "patch_merging",
    ),
    ("layers.{stage}.downsample.1.{param}", "encoder.stages.{stage}.downsample.conv.{param}", "conv"),
    ("layers.{stage}.downsample.3.{param}", "encoder.stages.{stage}.downsample.norm.{param}", "conv"),
    ("classifier.norm.{param}", "layernorm.{param}", None),
)


def _template_regex(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)
    return re.compile(
        "".join(re.escape(part) if i % 2 == 0 else f"(?P<{part}>{_FIELDS[part]})" for i, part in enumerate(parts))
    )


_RULES = tuple(
    (_template_regex(original), original, _template_regex(hf), hf, downsample)
    for original, hf, downsample in _RENAMES
)
_HEAD = re.compile(r"classifier\.head\.(?P<param>weight|bias)")
_OUTNORM = re.compile(r"outnorm(?P<stage>\d{1,6})\.(?P<param>weight|bias)")
_HF_HEAD = re.compile(r"classifier\.(?P<param>weight|bias)")
_HF_OUTNORM = re.compile(r"hidden_states_norms\.stage(?P<stage>\d{1,6})\.(?P<param>weight|bias)")


def _trunk_key(key: str) -> str | None:
    """Name inside `VMambaModel` of a normalized original key of the trunk, or None."""
    for original, _, _, hf, _ in _RULES:
        match = original.fullmatch(key)
        if match:
            return hf.format(**match.groupdict())
    return None


def _original_trunk_key(key: str, downsample_type: str | None = None) -> str | None:
    """The inverse of `_trunk_key` (for messages about keys the checkpoint lacks)."""
    for _, original, hf, _, downsample in _RULES:
        match = hf.fullmatch(key)
        if match and downsample in (None, downsample_type):
            return original.format(**match.groupdict())
    return None


def _normalize(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """`normalize_original_state_dict`, also returning each new key's name in the file (for messages)."""
    normalized, names = {}, {}
    for file_key, tensor in state_dict.items():
        key = file_key[len("module.") :] if file_key.startswith("module.") else file_key
        for pattern, replacement in _LEGACY_PREFIXES:
            key = pattern.sub(replacement, key)
        if _LINEAR_WEIGHT.search(key) and tensor.ndim == 4 and tensor.shape[2:] == (1, 1):
            tensor = tensor.reshape(tensor.shape[0], tensor.shape[1])
        if key in normalized:
            raise OriginalCheckpointError(
                f"{names[key]!r} and {file_key!r} map to the same key {key!r} (old and new names mixed?)"
            )
        normalized[key], names[key] = tensor, file_key
    return normalized, names


def normalize_original_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Bring an original state dict to the current original layout: strip a DDP ``module.`` prefix, undo the older
    key names, and store linear weights saved as 1x1 convolutions as (out, in)."""
    return _normalize(state_dict)[0]


def map_original_key(key: str, base_model_prefix: str = "vmamba.") -> str | None:
    """Transformers name of one (normalized) original key, or None if it is not part of the classifier model."""
    match = _HEAD.fullmatch(key)
    if match:
        return f"classifier.{match['param']}"
    trunk = _trunk_key(key)
    return None if trunk is None else base_model_prefix + trunk


def _backbone_key(key: str) -> str | None:
    match = _OUTNORM.fullmatch(key)
    if match:
        return f"hidden_states_norms.stage{int(match['stage']) + 1}.{match['param']}"
    if key.startswith("classifier."):
        return None  # a backbone has no classifier
    return _trunk_key(key)


def _original_backbone_key(key: str, downsample_type: str | None = None) -> str | None:
    match = _HF_OUTNORM.fullmatch(key)
    if match:
        return f"outnorm{int(match['stage']) - 1}.{match['param']}"
    return _original_trunk_key(key, downsample_type)


def _original_classifier_key(key: str, downsample_type: str | None = None) -> str | None:
    match = _HF_HEAD.fullmatch(key)
    if match:
        return f"classifier.head.{match['param']}"
    return _original_trunk_key(key.removeprefix("vmamba."), downsample_type) if key.startswith("vmamba.") else None


def _rename(state_dict, map_key) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """Apply `map_key` to a normalized state dict: (converted, converted key -> original key, unmapped keys)."""
    converted, origin, unknown = {}, {}, []
    for key, tensor in state_dict.items():
        new_key = map_key(key)
        if new_key is None:
            unknown.append(key)
        else:
            converted[new_key], origin[new_key] = tensor, key
    return converted, origin, unknown


def convert_original_state_dict(
    state_dict: Mapping[str, torch.Tensor], base_model_prefix: str = "vmamba."
) -> dict[str, torch.Tensor]:
    """Original state dict -> state dict of `VMambaForImageClassification` (a pure rename; shapes are kept).

    With ``base_model_prefix=""`` the keys are those of a bare `VMambaModel`. Any key that does not map raises
    `OriginalCheckpointError` listing them.
    """
    converted, _, unknown = _rename(
        normalize_original_state_dict(state_dict), lambda key: map_original_key(key, base_model_prefix)
    )
    if unknown:
        raise OriginalCheckpointError(f"{len(unknown)} keys of the checkpoint have no VMamba counterpart: {unknown}")
    return converted


def convert_original_backbone_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original ``Backbone_VSSM`` state dict (without the ``backbone.`` prefix) -> `VMambaBackbone` state dict.

    ``outnorm{i}`` becomes ``hidden_states_norms.stage{i+1}``; every other key maps as in a classifier. Keys that
    do not map raise `OriginalCheckpointError` listing them.
    """
    converted, _, unknown = _rename(normalize_original_state_dict(state_dict), _backbone_key)
    if unknown:
        raise OriginalCheckpointError(
            f"{len(unknown)} keys of the backbone checkpoint have no VMambaBackbone counterpart: {unknown}"
        )
    return converted


# Keys of mmdetection/mmsegmentation models: the backbone lives under this prefix, everything else (decode_head,
# auxiliary_head, neck, rpn_head, roi_head, data_preprocessor, ...) belongs to heads this package does not port.
DETECTION_BACKBONE_PREFIX = "backbone."


def split_detection_state_dict(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]] | None:
    """Split an mmdetection/mmsegmentation state dict into the VMamba backbone and the rest.

    Returns ``(backbone_state_dict, skipped)`` with the ``backbone.`` prefix removed and ``skipped`` mapping each
    other top-level module (e.g. ``decode_head``) to its keys, or None when no key is under ``backbone.`` (an
    ordinary classification state dict).
    """
    if not any(key.startswith(DETECTION_BACKBONE_PREFIX) for key in state_dict):
        return None
    backbone, skipped = {}, {}
    for key, tensor in state_dict.items():
        if key.startswith(DETECTION_BACKBONE_PREFIX):
            backbone[key[len(DETECTION_BACKBONE_PREFIX) :]] = tensor
        else:
            skipped.setdefault(key.split(".", 1)[0], []).append(key)
    return backbone, skipped


def backbone_out_features(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Stages with an output norm (``outnorm{i}`` -> ``stage{i+1}``) in a (normalized) backbone state dict."""
    indices = sorted({int(m["stage"]) for key in state_dict if (m := _OUTNORM.fullmatch(key))})
    return [f"stage{index + 1}" for index in indices]


@dataclass(frozen=True)
class CheckpointKind:
    """What one kind of original checkpoint becomes. Another kind (e.g. a whole segmentor) is one more entry of
    `CHECKPOINT_KINDS` and one more case in `checkpoint_kind`."""

    name: str
    make_model: Callable[[VMambaConfig], torch.nn.Module]
    to_transformers_key: Callable[[str], str | None]  # normalized original key -> model key (None: no counterpart)
    to_original_key: Callable[[str, str | None], str | None]  # model key, downsample_type -> original key
    head_fields: tuple[str, ...]  # config fields read from the head, kept when the trunk is a released variant


def _segmentor_key(key: str) -> str | None:
    """A (normalized) key of a whole mmseg UperNet checkpoint -> `UperNetForSemanticSegmentation` key."""
    if key.startswith(DETECTION_BACKBONE_PREFIX):
        inner = _backbone_key(key[len(DETECTION_BACKBONE_PREFIX) :])
        return None if inner is None else DETECTION_BACKBONE_PREFIX + inner
    return head_key(key)


def _original_segmentor_key(key: str, downsample_type: str | None = None) -> str | None:
    if key.startswith(DETECTION_BACKBONE_PREFIX):
        inner = _original_backbone_key(key[len(DETECTION_BACKBONE_PREFIX) :], downsample_type)
        return None if inner is None else DETECTION_BACKBONE_PREFIX + inner
    return original_head_key(key)


CHECKPOINT_KINDS = {
    "classifier": CheckpointKind(
        "classifier", VMambaForImageClassification, map_original_key, _original_classifier_key, ("num_labels",)
    ),
    "backbone": CheckpointKind("backbone", VMambaBackbone, _backbone_key, _original_backbone_key, ("out_features",)),
    # a whole mmsegmentation UperNet: make_model takes an UperNetConfig whose backbone_config is the VMambaConfig
    "segmentor": CheckpointKind(
        "segmentor", UperNetForSemanticSegmentation, _segmentor_key, _original_segmentor_key, ("out_features",)
    ),
}


def checkpoint_kind(state_dict: Mapping[str, torch.Tensor]) -> CheckpointKind:
    """A (normalized) state dict with output norms ``outnorm{i}`` is a detection/segmentation backbone."""
    return CHECKPOINT_KINDS["backbone" if backbone_out_features(state_dict) else "classifier"]


# ---------------------------------------------------------------------------------------------------------------
# Checks on the tensors, before anything is allocated
# ---------------------------------------------------------------------------------------------------------------


def _is_batch_norm_counter(key: str, tensor: torch.Tensor) -> bool:
    """BatchNorm's ``num_batches_tracked``: the one integer tensor a checkpoint (of a segmentor's heads) may hold."""
    return key.endswith(".num_batches_tracked") and tensor.ndim == 0 and not tensor.is_floating_point()


def _check_stored_values(state_dict: Mapping[str, torch.Tensor], names: Mapping[str, str]) -> None:
    """Every weight must be a dense floating-point tensor (a BatchNorm counter an integer scalar) whose values the
    file really stores.

    A crafted file can hold an expanded (stride-0) view of one value with a huge shape: shape inference would then
    build a model of that size from a few bytes. With this check the model can only be as large as the file.
    """
    needed, storages, shared = 0, {}, None
    for key, tensor in state_dict.items():
        name = names.get(key, key)
        if tensor.layout != torch.strided or tensor.is_meta:
            kind = "meta" if tensor.is_meta else str(tensor.layout).removeprefix("torch.")
            raise OriginalCheckpointError(f"{name} is a {kind} tensor; a checkpoint must store dense weights")
        if not tensor.is_floating_point() and not _is_batch_norm_counter(key, tensor):
            raise OriginalCheckpointError(f"{name} has dtype {tensor.dtype}; weights must be floating point")
        size = tensor.numel() * tensor.element_size()
        storage = tensor.untyped_storage()
        available = storage.nbytes() - tensor.storage_offset() * tensor.element_size()
        if size > available:
            raise OriginalCheckpointError(
                f"{name} has shape {tuple(tensor.shape)} ({tensor.numel():,} values) but the file stores only "
                f"{max(available, 0) // tensor.element_size():,} values for it (an expanded or overlapping view); "
                "a checkpoint must store every weight"
            )
        needed += size
        if storage.data_ptr() in storages and shared is None:
            shared = (storages[storage.data_ptr()][0], name)
        storages.setdefault(storage.data_ptr(), (name, storage.nbytes()))
    stored = sum(nbytes for _, nbytes in storages.values())
    if needed > stored:
        raise OriginalCheckpointError(
            f"the weights need {needed:,} bytes but the file stores only {stored:,}: tensors such as "
            f"{shared[0]} and {shared[1]} are views of the same stored values; a checkpoint must store every weight"
        )


def _non_finite_report(
    state_dict: Mapping[str, torch.Tensor], names: Mapping[str, str], dtype: torch.dtype
) -> str | None:
    """Name the first tensor with NaN or infinite values (as the model will hold them, in `dtype`)."""
    bad = []
    for key, tensor in state_dict.items():
        if not tensor.is_floating_point():
            continue  # a BatchNorm counter (only those pass _check_stored_values)
        narrowed = torch.finfo(tensor.dtype).max > torch.finfo(dtype).max
        count = int((~torch.isfinite(tensor.to(dtype) if narrowed else tensor)).sum())
        if count:
            as_dtype = f" as {str(dtype).removeprefix('torch.')}" if narrowed else ""
            bad.append(f"{names.get(key, key)} has {count:,} of {tensor.numel():,} values NaN or infinite{as_dtype}")
    if not bad:
        return None
    more = f" (and {len(bad) - 1} more tensors with non-finite values)" if len(bad) > 1 else ""
    return f"non-finite weights: {bad[0]}{more}"


# ---------------------------------------------------------------------------------------------------------------
# Config inference, in steps: stages and blocks, sizes by majority, patch embedding, downsampling, head
# ---------------------------------------------------------------------------------------------------------------


def _require(state_dict, key, what):
    if key not in state_dict:
        raise OriginalCheckpointError(
            f"unrecognised VMamba checkpoint layout: missing {key!r} ({what}); first keys: {list(state_dict)[:8]}"
        )
    return state_dict[key]


def _ranges(numbers: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"."""
    spans, start = [], None
    for index, number in enumerate(numbers):
        if start is None:
            start = number
        if index + 1 == len(numbers) or numbers[index + 1] != number + 1:
            spans.append(str(start) if start == number else f"{start}-{number}")
            start = None
    return ", ".join(spans)


def _absent(present: set[int], count: int) -> str | None:
    """The indices below `count` that are not in `present`, as text ("1, 3-5"), or None when none is."""
    missing = count - len(present)
    if missing <= 0:
        return None
    if missing > 20:
        return f"{missing} indices below {count}"
    return _ranges([index for index in range(count) if index not in present])


_STAGE_KEY = re.compile(r"layers\.(\d{1,6})\.(?:blocks\.(\d{1,6})|downsample)\.")


def _stage_depths(state_dict: Mapping[str, torch.Tensor]) -> list[int]:
    """Number of blocks of each stage. Absent blocks or stages (gaps in the indices, or a stage that a downsample
    leads into) are missing keys, reported by name, never read as a shallower model."""
    blocks: dict[int, set[int]] = {}
    downsampled: set[int] = set()
    for key in state_dict:
        match = _STAGE_KEY.match(key)
        if match and match[2] is None:
            downsampled.add(int(match[1]))
        elif match:
            blocks.setdefault(int(match[1]), set()).add(int(match[2]))
    if not blocks:
        raise OriginalCheckpointError(
            "unrecognised VMamba checkpoint layout: no layers.<i>.blocks.<j>.* keys; "
            f"first keys: {list(state_dict)[:8]}"
        )
    problems = []
    num_stages = max(set(blocks) | {stage + 1 for stage in downsampled}) + 1
    absent_stages = _absent(set(blocks), num_stages)
    if absent_stages:
        leads = "".join(
            f"; layers.{stage}.downsample.* leads into it" for stage in sorted(downsampled) if stage + 1 not in blocks
        )
        problems.append(f"missing keys layers.{{{absent_stages}}}.blocks.* (no block at all in that stage{leads})")
    for stage in sorted(blocks):
        absent = _absent(blocks[stage], max(blocks[stage]) + 1)
        if absent:
            sibling = f"layers.{stage}.blocks.{min(blocks[stage])}."
            per_block = sum(key.startswith(sibling) for key in state_dict)
            problems.append(
                f"missing keys layers.{stage}.blocks.{{{absent}}}.* ({per_block} tensors per block; stage {stage} "
                f"has blocks {_ranges(sorted(blocks[stage]))})"
            )
    if problems:
        raise OriginalCheckpointError("the checkpoint lacks whole blocks or stages: " + "; ".join(problems))
    return [len(blocks[stage]) for stage in range(num_stages)]


def _vote(fact: str, votes: list[tuple[object, str]]):
    """The value most tensors agree on. A single damaged tensor is thereby outvoted and later reported by name as
    mis-shaped, instead of silently changing the architecture or failing with a vague "differs between stages"."""
    if not votes:
        raise OriginalCheckpointError(
            f"cannot infer the {fact}: none of the tensors that show it is in the checkpoint"
        )
    counts = Counter(value for value, _ in votes).most_common()
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        witness = {}
        for value, key in votes:
            witness.setdefault(value, key)
        shown = "; ".join(f"{value!r} from {witness[value]} ({count} tensors)" for value, count in counts[:4])
        raise OriginalCheckpointError(f"cannot infer the {fact}: the tensors disagree without a majority: {shown}")
    return counts[0][0]


def _dim_votes(state_dict, witnesses) -> list[tuple[int, str]]:
    """(size, key) for each present (key, dim, divisor) witness whose dimension divides evenly."""
    votes = []
    for key, dim, divisor in witnesses:
        tensor = state_dict.get(key)
        if tensor is not None and -tensor.ndim <= dim < tensor.ndim and tensor.shape[dim] % divisor == 0:
            votes.append((tensor.shape[dim] // divisor, key))
    return votes


# (key inside a block, dimension, divisor) of the tensors that show a block's sizes
_BLOCK_HIDDEN = (
    ("norm.weight", 0, 1), ("norm.bias", 0, 1), ("op.in_proj.weight", 1, 1), ("op.out_proj.weight", 0, 1),
    ("norm2.weight", 0, 1), ("norm2.bias", 0, 1), ("mlp.fc1.weight", 1, 1), ("mlp.fc2.weight", 0, 1),
)  # fmt: skip
_BLOCK_INNER = (
    ("op.x_proj_weight", 2, 1), ("op.dt_projs_weight", 1, 1), ("op.dt_projs_bias", 1, 1), ("op.conv2d.weight", 0, 1),
    ("op.out_norm.weight", 0, 1), ("op.out_proj.weight", 1, 1), ("op.Ds", 0, 4), ("op.A_logs", 0, 4),
)  # fmt: skip
_BLOCK_MLP_HIDDEN = (("mlp.fc1.weight", 0, 1), ("mlp.fc1.bias", 0, 1), ("mlp.fc2.weight", 1, 1))
# a downsample after stage i takes stage i's channels (patch merging: 4x, concatenated) and gives stage i+1's
_DOWNSAMPLE_IN = (("1.weight", 1, 1), ("reduction.weight", 1, 4), ("norm.weight", 0, 4))
_DOWNSAMPLE_OUT = (("1.weight", 0, 1), ("3.weight", 0, 1), ("reduction.weight", 0, 1))


def _block_prefixes(stage: int, depth: int) -> list[str]:
    return [f"layers.{stage}.blocks.{block}." for block in range(depth)]


def _votes_in(state_dict, prefixes: list[str], witnesses) -> list[tuple[int, str]]:
    """`_dim_votes` of the same (key, dim, divisor) witnesses inside each of several blocks."""
    return _dim_votes(state_dict, [(prefix + key, dim, div) for prefix in prefixes for key, dim, div in witnesses])


def _hidden_size_votes(state_dict, stage: int, depths: list[int], two_conv: bool) -> list[tuple[int, str]]:
    """Every tensor that shows the channels of `stage`: its blocks, the downsamples around it, the patch embedding
    (stage 0), the final norm (last stage) and a backbone's output norm."""
    witnesses = [(f"layers.{stage}.downsample.{key}", dim, divisor) for key, dim, divisor in _DOWNSAMPLE_IN]
    if stage > 0:
        witnesses += [(f"layers.{stage - 1}.downsample.{key}", dim, divisor) for key, dim, divisor in _DOWNSAMPLE_OUT]
    elif two_conv:
        witnesses += [("patch_embed.5.weight", 0, 1), ("patch_embed.7.weight", 0, 1)]
    else:
        witnesses += [("patch_embed.0.weight", 0, 1), ("patch_embed.2.weight", 0, 1)]
    if stage == len(depths) - 1:
        witnesses.append(("classifier.norm.weight", 0, 1))
    witnesses.append((f"outnorm{stage}.weight", 0, 1))
    return _votes_in(state_dict, _block_prefixes(stage, depths[stage]), _BLOCK_HIDDEN) + _dim_votes(
        state_dict, witnesses
    )


def _patch_embedding(state_dict) -> dict:
    conv1 = _require(state_dict, "patch_embed.0.weight", "patch embedding convolution")
    if conv1.ndim != 4:
        raise OriginalCheckpointError(
            f"patch_embed.0.weight has shape {tuple(conv1.shape)}; expected a 4-d convolution weight"
        )
    if any(key.startswith(("patch_embed.5.", "patch_embed.7.")) for key in state_dict):
        # two convolutions of kernel stride + 1, stride = patch_size // 2
        kernels = _dim_votes(state_dict, [("patch_embed.0.weight", -1, 1), ("patch_embed.5.weight", -1, 1)])
        patch_size = 2 * (_vote("patch embedding kernel", kernels) - 1)
        return dict(patch_embed_type="two_conv", patch_size=patch_size, num_channels=conv1.shape[1])
    return dict(patch_embed_type="single_conv", patch_size=conv1.shape[-1], num_channels=conv1.shape[1])


def _stage_sizes(state_dict, depths: list[int], two_conv: bool) -> tuple[list[int], list[int], list[int]]:
    """Channels, SS2D inner channels and dt rank of each stage, each by majority of the tensors that show it."""
    hidden, inner, ranks = [], [], []
    for stage, depth in enumerate(depths):
        blocks = _block_prefixes(stage, depth)
        hidden.append(_vote(f"channels of stage {stage}", _hidden_size_votes(state_dict, stage, depths, two_conv)))
        inner.append(_vote(f"SS2D inner channels of stage {stage}", _votes_in(state_dict, blocks, _BLOCK_INNER)))
        ranks.append(_vote(f"dt rank of stage {stage}", _votes_in(state_dict, blocks, [("op.dt_projs_weight", 2, 1)])))
    return hidden, inner, ranks


def _mlp_ratio(state_dict, blocks: list[tuple[int, str]], hidden: list[int]) -> float:
    """MLP width / channels, by majority over all blocks; a block without any MLP tensor votes for 0 (no MLP)."""
    votes = []
    for stage, prefix in blocks:
        sizes = _votes_in(state_dict, [prefix], _BLOCK_MLP_HIDDEN)
        if sizes or any(key.startswith((prefix + "mlp.", prefix + "norm2.")) for key in state_dict):
            votes += [(size / hidden[stage], key) for size, key in sizes]
        else:
            votes.append((0.0, prefix + "mlp.* (absent)"))
    return float(_vote("MLP ratio", votes))


def _mixer_and_mlp(state_dict, depths: list[int], two_conv: bool) -> dict:
    """The SS2D mixer and MLP fields: per-stage sizes, then the one value for all stages VMambaConfig holds."""
    hidden, inner, ranks = _stage_sizes(state_dict, depths, two_conv)
    blocks = [(stage, prefix) for stage, depth in enumerate(depths) for prefix in _block_prefixes(stage, depth)]
    prefixes = [prefix for _, prefix in blocks]
    if all(rank == math.ceil(size / 16) for rank, size in zip(ranks, hidden)):
        dt_rank = "auto"
    else:
        dt_rank = _vote("dt rank (one for all stages)", [(rank, f"stage {s}") for s, rank in enumerate(ranks)])
    ratio = _vote(
        "ssm expansion ratio (inner / hidden channels, one for all stages)",
        [(inner[stage] / hidden[stage], f"stage {stage}") for stage in range(len(depths))],
    )
    in_proj = [
        (size / inner[stage], key)
        for stage, prefix in blocks
        for size, key in _votes_in(state_dict, [prefix], [("op.in_proj.weight", 0, 1)])
    ]
    width = _vote("input projection width (in inner channels)", in_proj)
    if width not in (1, 2):
        raise OriginalCheckpointError(
            f"in_proj has {width:g} times the inner channels as outputs; expected 1 or 2 (gated)"
        )
    return dict(
        hidden_sizes=hidden,
        ssm_expansion_ratio=float(ratio),
        ssm_dt_rank=dt_rank,
        ssm_state_size=_vote("state size", _votes_in(state_dict, prefixes, [("op.A_logs", 1, 1)])),
        ssm_conv_kernel_size=_vote("SS2D kernel", _votes_in(state_dict, prefixes, [("op.conv2d.weight", -1, 1)])),
        ssm_conv_bias=_vote("SS2D conv bias", [(f"{p}op.conv2d.bias" in state_dict, p) for p in prefixes]),
        ssm_gate=width == 2,
        mlp_ratio=_mlp_ratio(state_dict, blocks, hidden),
    )


def _downsampling(state_dict, num_stages: int) -> dict:
    if num_stages == 1:
        return dict(downsample_type="conv")
    votes = []
    for stage in range(num_stages - 1):
        prefix = f"layers.{stage}.downsample."
        if prefix + "reduction.weight" in state_dict:
            votes.append(("patch_merging", prefix + "reduction.weight"))
        if prefix + "1.weight" in state_dict:
            votes.append(("conv", prefix + "1.weight"))
    if not votes:
        raise OriginalCheckpointError("unrecognised downsample layout: no layers.<i>.downsample.{reduction,1} keys")
    downsample_type = _vote("downsample kind", votes)
    if downsample_type == "conv":
        kernels = [(f"layers.{stage}.downsample.1.weight", -1, 1) for stage in range(num_stages - 1)]
        kernel = _vote("downsample kernel", _dim_votes(state_dict, kernels))
        if kernel != 3:
            raise OriginalCheckpointError(
                f"downsample convolution has kernel {kernel}; only the 3x3 stride-2 kind ('v3') is supported"
            )
    return dict(downsample_type=downsample_type)


def _head(state_dict) -> dict:
    out_features = backbone_out_features(state_dict)
    if out_features:
        if any(key.startswith("classifier.") for key in state_dict):
            raise OriginalCheckpointError(
                "the checkpoint has both backbone output norms (outnorm*) and a classifier; expected one or the other"
            )
        return dict(out_features=out_features)
    _require(state_dict, "classifier.head.weight", "classification head (or backbone outnorm* norms)")
    labels = _dim_votes(state_dict, [("classifier.head.weight", 0, 1), ("classifier.head.bias", 0, 1)])
    num_labels = _vote("number of classes", labels)
    if num_labels < 1:
        raise OriginalCheckpointError(f"classifier.head.weight has {num_labels} rows: a classifier needs a class")
    return dict(num_labels=num_labels)


def infer_config_from_state_dict(state_dict: Mapping[str, torch.Tensor], **overrides) -> VMambaConfig:
    """Infer the whole `VMambaConfig` (sizes, depths, scan sizes, gate, MLP, downsample and patch-embed kinds,
    number of classes) from the keys and shapes of an original classification state dict.

    A detection/segmentation backbone state dict (``Backbone_VSSM``, ``backbone.`` prefix removed) has no
    classifier but ``outnorm{i}`` norms instead; its config gets ``out_features`` = the stages with a norm.
    Both memory layouts of the original (its "ln" and "ln2d" builds) have the same tensors and convert alike.
    Each size is what most of the tensors showing it agree on, so a damaged tensor does not change the result: the
    caller's key-by-key check against the model then names it.
    """
    state_dict = normalize_original_state_dict(state_dict)
    kwargs = _patch_embedding(state_dict)
    depths = _stage_depths(state_dict)
    kwargs.update(depths=depths, **_mixer_and_mlp(state_dict, depths, kwargs["patch_embed_type"] == "two_conv"))
    kwargs.update(_downsampling(state_dict, len(depths)))
    kwargs.update(_head(state_dict))
    # Released-model defaults (drop path) when the weights are one of the nine published architectures.
    variant = _matching_variant(kwargs)
    if variant is not None:
        kwargs = {**VARIANTS[variant], **kwargs}
    kwargs.update(overrides)
    try:
        return VMambaConfig(**kwargs)
    except ValueError as error:
        raise OriginalCheckpointError(f"the inferred configuration is invalid: {error}") from error


def _matching_variant(kwargs: dict) -> str | None:
    base = VMambaConfig()
    for name, variant in VARIANTS.items():
        if all(kwargs.get(f, getattr(base, f)) == variant.get(f, getattr(base, f)) for f in ARCHITECTURE_FIELDS):
            return name
    return None


def _describe(config: VMambaConfig | UperNetConfig) -> str:
    if isinstance(config, UperNetConfig):
        aux = (
            f"an auxiliary head of {config.auxiliary_channels} channels" if config.use_auxiliary_head
            else "no auxiliary head"
        )
        return (
            f"an UperNet with decode head channels {config.hidden_size}, {config.num_labels} classes and {aux}, "
            f"on {_describe(config.backbone_config)}"
        )
    return f"a {config.family or 'custom'} model with hidden sizes {config.hidden_sizes} and depths {config.depths}"


def _check_variant(config: VMambaConfig, release: ReleasedModel | ReleasedSegmentationModel) -> None:
    expected = VMambaConfig.from_variant(release.variant)
    mismatches = [
        f"{field}: checkpoint has {getattr(config, field)!r} but {release.name} has {getattr(expected, field)!r}"
        for field in ARCHITECTURE_FIELDS
        if getattr(config, field) != getattr(expected, field)
    ]
    if mismatches:
        raise OriginalCheckpointError(
            f"the checkpoint does not match variant {release.name!r} ({release.title}, a {expected.family} model): "
            f"it is {_describe(config)}. Differences: " + "; ".join(mismatches)
        )


# ---------------------------------------------------------------------------------------------------------------
# Every key and shape against the model, before the model is allocated
# ---------------------------------------------------------------------------------------------------------------


def _listed(items: list[str], limit: int = 10) -> str:
    if len(items) <= limit:
        return repr(items)
    return repr(items[:limit])[:-1] + f", ... ({len(items)} in all)]"


def _check_fits(kind: CheckpointKind, config: VMambaConfig, converted, origin, unknown, file_name) -> None:
    """Compare every converted tensor with the model's parameters (built on the meta device: no memory), so that
    one error names every missing, unexpected and mis-shaped key with the shape expected and found."""
    with torch.device("meta"):
        expected = {key: tuple(value.shape) for key, value in kind.make_model(config).state_dict().items()}
    downsample_type = getattr(getattr(config, "backbone_config", None) or config, "downsample_type", None)
    missing = sorted(set(expected) - set(converted))
    unexpected = [file_name(key) for key in unknown]
    unexpected += [file_name(origin[key]) for key in sorted(set(converted) - set(expected))]
    wrong = [
        f"{file_name(origin[key])}: expected {shape}, found {tuple(converted[key].shape)}"
        for key, shape in expected.items()
        if key in converted and tuple(converted[key].shape) != shape
    ]
    if not (missing or unexpected or wrong):
        return
    problems = []
    if missing:
        in_file = [
            f"{file_name(kind.to_original_key(key, downsample_type) or '?')} {expected[key]}" for key in missing
        ]
        problems.append(
            f"missing keys {_listed(missing)} (in the checkpoint's names, with the shape expected: {_listed(in_file)})"
        )
    if unexpected:
        problems.append(f"unexpected keys {_listed(unexpected)}")
    if wrong:
        more = f"; ... ({len(wrong)} in all)" if len(wrong) > 10 else ""
        problems.append("wrong shapes: " + "; ".join(wrong[:10]) + more)
    raise OriginalCheckpointError(
        f"the checkpoint does not fit the {'UperNet' if kind.name == 'segmentor' else 'VMamba'} model inferred "
        f"from it ({_describe(config)}): " + "; ".join(problems)
    )


# ---------------------------------------------------------------------------------------------------------------
# One call: file -> ready model
# ---------------------------------------------------------------------------------------------------------------


def released_model_for(
    variant: str | None, source: str | None
) -> tuple[ReleasedModel | ReleasedSegmentationModel | None, bool]:
    """The released model whose architecture the weights must have (the named `variant`, else the release that the
    file `source` is, recognised by name or URL), and whether the file is the authors' release itself.

    `variant` is a VMamba variant (see `VARIANTS`) or a released segmentation model (``upernet-<variant>``)."""
    if variant is not None and variant not in VARIANTS and variant not in RELEASED_SEGMENTATION_MODELS:
        known = ", ".join([*VARIANTS, *RELEASED_SEGMENTATION_MODELS])
        raise OriginalCheckpointError(f"unknown VMamba variant {variant!r}; known variants: {known}")
    recognised = find_release(source) if source else None
    if recognised is not None and variant is not None and recognised.name != variant:
        raise OriginalCheckpointError(f"{source} is the released file of {recognised.name}, not of {variant}")
    if variant is None:
        release = recognised
    else:
        release = RELEASED_MODELS.get(variant) or RELEASED_SEGMENTATION_MODELS.get(variant)
    return release, recognised is not None


@dataclass
class ConvertedCheckpoint:
    """A converted model and the facts a caller reports about it (the converter writes them into the model card)."""

    model: VMambaForImageClassification | VMambaBackbone | UperNetForSemanticSegmentation
    kind: str  # a key of CHECKPOINT_KINDS
    weights_key: str | None  # the checkpoint entry converted; None for a bare state dict
    release: ReleasedModel | ReleasedSegmentationModel | None  # the released model the weights were checked against
    official: bool  # the file itself is recognised (by name or URL) as the authors' release
    skipped: dict[str, list[str]] = field(default_factory=dict)  # modules of a detection checkpoint left out


# Keyword arguments of `from_original_checkpoint` that configure the UperNet rather than its VMamba backbone.
UPERNET_OVERRIDES = ("id2label", "label2id", "pool_scales", "auxiliary_loss_weight", "loss_ignore_index")


def _segmentor_config(heads, backbone: VMambaConfig, overrides: dict) -> UperNetConfig:
    """The `UperNetConfig` of a whole mmseg UperNet: head sizes from the shapes, ADE20K class names for a 150-class
    head (every released UperNet is an ADE20K model), mmseg's loss settings (ignore index 255, auxiliary weight 0.4
    as in every released config)."""
    try:
        fields = infer_upernet_fields(
            heads, backbone.hidden_sizes, pool_scales=overrides.get("pool_scales"), error=OriginalCheckpointError
        )
    except OriginalCheckpointError as error:
        raise OriginalCheckpointError(f"the UperNet heads do not fit: {error}") from None
    fields.update(auxiliary_loss_weight=0.4, loss_ignore_index=255)
    if fields["num_labels"] == 150 and "id2label" not in overrides:
        fields.update(label_fields(ade20k_labels()))
    fields.update({key: value for key, value in overrides.items() if key != "pool_scales"})
    if "id2label" in fields and "label2id" not in fields:
        fields["label2id"] = {label: int(index) for index, label in fields["id2label"].items()}
    try:
        return UperNetConfig(backbone_config=backbone, **fields)
    except (ValueError, TypeError) as error:
        raise OriginalCheckpointError(f"the inferred UperNet configuration is invalid: {error}") from error


def convert_original_checkpoint(
    path_or_checkpoint: str | os.PathLike | Mapping,
    variant: str | None = None,
    weights_key: str | None = None,
    *,
    source: str | None = None,
    allow_non_finite: bool = False,
    backbone_only: bool = False,
    **config_overrides,
) -> ConvertedCheckpoint:
    """`from_original_checkpoint`, also returning what was converted (see `ConvertedCheckpoint`).

    `source` is the file's name or URL, for recognising a released file when a loaded checkpoint is passed (a path
    is recognised by its own name). A recognised release is checked like a named `variant`, and its default
    weights are preferred.
    """
    if isinstance(path_or_checkpoint, Mapping):
        checkpoint = path_or_checkpoint
    elif not isinstance(path_or_checkpoint, (str, os.PathLike)):
        kind = type(path_or_checkpoint).__name__
        raise OriginalCheckpointError(f"expected a checkpoint path, a checkpoint dict or a state dict, got {kind}")
    else:
        source = source or os.path.basename(os.fspath(path_or_checkpoint))
        checkpoint = load_original_checkpoint(path_or_checkpoint)
    release, official = released_model_for(variant, source)

    state_dict, used_key = select_weights(
        checkpoint, weights_key, prefer=release.default_weights_key if release else None
    )
    skipped, file_prefix, heads = {}, "", None
    detection = split_detection_state_dict(state_dict)
    if detection is not None:
        (backbone_state_dict, skipped), file_prefix = detection, DETECTION_BACKBONE_PREFIX
        if is_upernet_checkpoint(skipped) and not backbone_only:
            # a whole UperNet: every other tensor must map onto its heads (others are reported as unexpected)
            heads = {key: state_dict[key] for keys in skipped.values() for key in keys}
            skipped = {}
        elif skipped:
            summary = ", ".join(f"{module} ({len(keys)} tensors)" for module, keys in skipped.items())
            reason = (
                "backbone_only=True was given." if backbone_only
                else "Only mmsegmentation UperNet checkpoints (with a UPerHead decode head) convert whole."
            )
            logger.warning(
                f"detection/segmentation checkpoint: converting only the VMamba backbone; skipped {summary}. "
                f"Decode/detection heads and necks are not converted. {reason}"
            )
        state_dict = backbone_state_dict
    if isinstance(release, ReleasedSegmentationModel) and heads is None:
        what = "a VMamba backbone only" if detection is not None else "a classifier"
        raise OriginalCheckpointError(
            f"{release.name} is a released UperNet segmentor, but the checkpoint converts to {what} "
            "(no UPerHead decode_head.* tensors" + (", or backbone_only=True)" if backbone_only else ")")
        )
    state_dict, names = _normalize(state_dict)
    names = {key: file_prefix + name for key, name in names.items()}
    _check_stored_values(state_dict, names)
    upernet_overrides = {k: config_overrides.pop(k) for k in UPERNET_OVERRIDES if k in config_overrides and heads}

    config = infer_config_from_state_dict(state_dict)
    kind = checkpoint_kind(state_dict)
    if heads is not None and kind.name != "backbone":
        raise OriginalCheckpointError(
            "the checkpoint has UperNet heads, but its backbone has no output norms backbone.outnorm<i>.* (expected "
            "the original's segmentation backbone, Backbone_VSSM)"
        )
    if release is not None:
        _check_variant(config, release)
        head = {name: getattr(config, name) for name in kind.head_fields}
        config = VMambaConfig.from_variant(release.variant, **{**head, **config_overrides})
    elif config_overrides:
        config = infer_config_from_state_dict(state_dict, **config_overrides)
    if kind.name == "classifier" and config.num_labels == 1000 and "id2label" not in config_overrides:
        # every 1000-class original classifier is an ImageNet-1k model: name its classes
        for name, value in label_fields(imagenet1k_labels()).items():
            setattr(config, name, value)

    if heads is not None:
        _check_stored_values(heads, {key: key for key in heads})
        kind = CHECKPOINT_KINDS["segmentor"]
        # The UPerHead reads every stage (mmseg in_index 0..3): a stage without its output norm is a missing key.
        config.out_features = [f"stage{index + 1}" for index in range(len(config.depths))]
        config = _segmentor_config(heads, config, upernet_overrides)
        names = {DETECTION_BACKBONE_PREFIX + key: name for key, name in names.items()} | {key: key for key in heads}
        state_dict = {DETECTION_BACKBONE_PREFIX + key: tensor for key, tensor in state_dict.items()} | heads
        file_prefix = ""

    converted, origin, unknown = _rename(state_dict, kind.to_transformers_key)
    _check_fits(kind, config, converted, origin, unknown, lambda key: names.get(key, file_prefix + key))
    problem = _non_finite_report(converted, {k: names[v] for k, v in origin.items()}, torch.get_default_dtype())
    if problem is not None:
        if not allow_non_finite:
            raise OriginalCheckpointError(
                f"{problem}; refusing to convert them (allow_non_finite=True, or vmamba-convert --allow-non-finite, "
                "keeps them)"
            )
        logger.warning(f"{problem}; kept as they are (allow_non_finite=True)")
    model = kind.make_model(config)
    model.load_state_dict(converted, strict=True)
    return ConvertedCheckpoint(
        model=model.eval(),
        kind=kind.name,
        weights_key=used_key,
        release=release,
        official=official,
        skipped=skipped,
    )


def from_original_checkpoint(
    path_or_state_dict: str | os.PathLike | Mapping,
    variant: str | None = None,
    weights_key: str | None = None,
    *,
    allow_non_finite: bool = False,
    backbone_only: bool = False,
    **config_overrides,
) -> VMambaForImageClassification | VMambaBackbone | UperNetForSemanticSegmentation:
    """Build a ready model (eval mode) from an original VMamba checkpoint.

    - A classification checkpoint gives a `VMambaForImageClassification` (a 1000-class one with the ImageNet-1k
      class names as labels).
    - An mmsegmentation UperNet checkpoint (weights under ``state_dict``: ``backbone.*`` with output norms
      ``outnorm{i}``, a UPerHead ``decode_head.*`` and an optional FCNHead ``auxiliary_head.*``, as the original's
      released ADE20K models) gives Transformers' `UperNetForSemanticSegmentation` with a `VMambaBackbone`, every
      head tensor (BatchNorm statistics included) mapped; a 150-class head gets the ADE20K class names.
    - Any other mmdetection/mmsegmentation checkpoint (or a UperNet with ``backbone_only=True``) gives a
      `VMambaBackbone` whose ``out_features`` are the stages with a norm; its other tensors (``decode_head``,
      ``neck``, ``rpn_head``, ``roi_head``, ...) are skipped with a warning naming them.

    Args:
        path_or_state_dict: a ``.pth`` file of the original training code, a loaded checkpoint dict or a state dict.
        variant: name of a released model (see `VARIANTS`, or a released segmentation model such as
            ``upernet-vmamba-tiny-s2l5``) the weights must match; mismatches raise. A file named like a released
            checkpoint is checked against that release without it.
        weights_key: which weights of the checkpoint to use; default ``model_ema`` when present, else ``model``,
            else ``state_dict`` (for a recognised release: the weights its published accuracy was measured with).
        allow_non_finite: convert weights with NaN or infinite values (with a warning) instead of refusing them.
        backbone_only: for a UperNet checkpoint, return only its `VMambaBackbone` (the heads are skipped).
        config_overrides: extra config fields: `VMambaConfig` fields (e.g. ``drop_path_rate``, or ``id2label`` of a
            classifier); for a UperNet, ``id2label``/``label2id``, ``pool_scales`` (needed when the decode head
            does not have mmseg's four pool branches), ``auxiliary_loss_weight`` and ``loss_ignore_index`` go to
            the `UperNetConfig`, everything else to its backbone.
    """
    return convert_original_checkpoint(
        path_or_state_dict,
        variant,
        weights_key,
        allow_non_finite=allow_non_finite,
        backbone_only=backbone_only,
        **config_overrides,
    ).model


__all__ = [
    "CHECKPOINT_KINDS",
    "DETECTION_BACKBONE_PREFIX",
    "UPERNET_OVERRIDES",
    "WEIGHTS_KEYS",
    "CheckpointKind",
    "ConvertedCheckpoint",
    "OriginalCheckpointError",
    "backbone_out_features",
    "checkpoint_kind",
    "convert_original_backbone_state_dict",
    "convert_original_checkpoint",
    "convert_original_state_dict",
    "from_original_checkpoint",
    "infer_config_from_state_dict",
    "load_original_checkpoint",
    "map_original_key",
    "normalize_original_state_dict",
    "released_model_for",
    "select_weights",
    "split_detection_state_dict",
]
