# Copyright 2026 The transformers-vmamba authors. Licensed under the MIT license.
"""Load checkpoints of the original VMamba training code (MzeroMiko/VMamba) into the Transformers model.

Everything here works from the keys and shapes of the saved tensors: the config is inferred, checked against a
released variant when one is named, and every key must map (no missing or unexpected keys). Classification
checkpoints become `VMambaForImageClassification`; detection/segmentation checkpoints (mmdetection/mmsegmentation
layout, backbone under ``backbone.``) become `VMambaBackbone`, their heads being skipped. Pickled checkpoints are
untrusted, so they are only ever read with ``torch.load(weights_only=True)``; classes pickled next to the weights
(the yacs config of the released files) are replaced by inert stand-ins instead of being imported.
"""

from __future__ import annotations

import math
import os
import re
from collections import OrderedDict
from collections.abc import Mapping

import torch
from transformers.utils import logging

from .configuration_vmamba import ARCHITECTURE_FIELDS, VARIANTS, VMambaConfig
from .labels import imagenet1k_labels, label_fields
from .modeling_vmamba import VMambaBackbone, VMambaForImageClassification


logger = logging.get_logger(__name__)


class OriginalCheckpointError(ValueError):
    """An original VMamba checkpoint that cannot be read, recognised or mapped."""


# ---------------------------------------------------------------------------------------------------------------
# Reading the file
# ---------------------------------------------------------------------------------------------------------------


class _InertStandIn:
    """Takes the place of any class or function pickled in a checkpoint; builds a plain OrderedDict, runs nothing.

    The restricted unpickler fills dict items and ``__dict__`` state only into plain dict types, and an OrderedDict
    accepts both, so e.g. a yacs ``CfgNode`` comes back as an OrderedDict of its fields.
    """

    def __new__(cls, *args, **kwargs):
        return OrderedDict()


def load_original_checkpoint(path: str | os.PathLike) -> dict:
    """Read a ``torch.save``d checkpoint safely (``weights_only=True``, tensors mapped to CPU).

    Unknown pickled globals (such as ``yacs.config.CfgNode``) are admitted only as inert stand-ins, so loading never
    imports or executes anything from the file. Returns the top-level object (normally a dict such as
    ``{"model": ..., "model_ema": ..., "config": ...}`` or an mmengine ``{"meta": ..., "state_dict": ...}``).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise OriginalCheckpointError(f"no checkpoint file at {path!r}")
    try:
        unknown_globals = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        stand_ins = [(_InertStandIn, name) for name in unknown_globals]
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(path, weights_only=True, map_location="cpu")
    except OriginalCheckpointError:
        raise
    except Exception as error:  # noqa: BLE001 - report any unreadable file the same way
        raise OriginalCheckpointError(f"cannot read {path!r} as a torch checkpoint: {error}") from error


def _is_state_dict(value) -> bool:
    return isinstance(value, Mapping) and len(value) > 0 and all(isinstance(v, torch.Tensor) for v in value.values())


def select_weights(checkpoint: Mapping, weights_key: str | None = None) -> tuple[dict, str | None]:
    """Pick the state dict inside a checkpoint: ``model_ema`` when present, else ``model``, else ``state_dict``.

    Returns the state dict and the key it came from (None when ``checkpoint`` already is a state dict).
    """
    if _is_state_dict(checkpoint):
        if weights_key is not None:
            raise OriginalCheckpointError(
                f"weights_key={weights_key!r} given, but the checkpoint is a bare state dict without weight keys"
            )
        return dict(checkpoint), None
    if not isinstance(checkpoint, Mapping):
        raise OriginalCheckpointError(f"expected a dict checkpoint, got {type(checkpoint).__name__}")
    available = [key for key, value in checkpoint.items() if _is_state_dict(value)]
    if weights_key is not None:
        if weights_key not in available:
            raise OriginalCheckpointError(
                f"weights key {weights_key!r} not in the checkpoint; available weight keys: {available or 'none'}"
            )
        return dict(checkpoint[weights_key]), weights_key
    for key in ("model_ema", "model", "state_dict"):
        if key in available:
            return dict(checkpoint[key]), key
    raise OriginalCheckpointError(
        f"no weights found: expected one of 'model_ema', 'model', 'state_dict'; top-level keys: {list(checkpoint)}"
    )


# ---------------------------------------------------------------------------------------------------------------
# Key mapping
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

_BLOCK = r"^layers\.(\d+)\.blocks\.(\d+)\."
_HF_BLOCK = r"encoder.stages.\1.layers.\2."
# Current original key (after legacy renames) -> key inside VMambaModel (or, for the head, the classifier).
_KEY_MAP = (
    (r"^patch_embed\.0\.(weight|bias)$", r"embeddings.conv1.\1"),
    (r"^patch_embed\.2\.(weight|bias)$", r"embeddings.norm1.\1"),
    (r"^patch_embed\.5\.(weight|bias)$", r"embeddings.conv2.\1"),
    (r"^patch_embed\.7\.(weight|bias)$", r"embeddings.norm2.\1"),
    (_BLOCK + r"norm\.(weight|bias)$", _HF_BLOCK + r"ssm_norm.\3"),
    (_BLOCK + r"norm2\.(weight|bias)$", _HF_BLOCK + r"mlp_norm.\3"),
    (_BLOCK + r"op\.(in_proj|conv2d|out_norm|out_proj)\.(weight|bias)$", _HF_BLOCK + r"ssm.\3.\4"),
    (_BLOCK + r"op\.x_proj_weight$", _HF_BLOCK + "ssm.x_proj_weight"),
    (_BLOCK + r"op\.dt_projs_weight$", _HF_BLOCK + "ssm.dt_proj_weight"),
    (_BLOCK + r"op\.dt_projs_bias$", _HF_BLOCK + "ssm.dt_proj_bias"),
    (_BLOCK + r"op\.A_logs$", _HF_BLOCK + "ssm.A_log"),
    (_BLOCK + r"op\.Ds$", _HF_BLOCK + "ssm.D"),
    (_BLOCK + r"mlp\.(fc1|fc2)\.(weight|bias)$", _HF_BLOCK + r"mlp.\3.\4"),
    (r"^layers\.(\d+)\.downsample\.(reduction|norm)\.(weight|bias)$", r"encoder.stages.\1.downsample.\2.\3"),
    (r"^layers\.(\d+)\.downsample\.1\.(weight|bias)$", r"encoder.stages.\1.downsample.conv.\2"),
    (r"^layers\.(\d+)\.downsample\.3\.(weight|bias)$", r"encoder.stages.\1.downsample.norm.\2"),
    (r"^classifier\.norm\.(weight|bias)$", r"layernorm.\1"),
)
_KEY_MAP = tuple((re.compile(pattern), replacement) for pattern, replacement in _KEY_MAP)
_HEAD = re.compile(r"^classifier\.head\.(weight|bias)$")


def normalize_original_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Bring an original state dict to the current original layout: strip a DDP ``module.`` prefix, undo the older
    key names, and store linear weights saved as 1x1 convolutions as (out, in)."""
    normalized = {}
    for key, tensor in state_dict.items():
        if key.startswith("module."):
            key = key[len("module.") :]
        for pattern, replacement in _LEGACY_PREFIXES:
            key = pattern.sub(replacement, key)
        if _LINEAR_WEIGHT.search(key) and tensor.ndim == 4 and tensor.shape[2:] == (1, 1):
            tensor = tensor.reshape(tensor.shape[0], tensor.shape[1])
        if key in normalized:
            raise OriginalCheckpointError(f"two tensors map to the same key {key!r} (old and new names mixed?)")
        normalized[key] = tensor
    return normalized


def map_original_key(key: str, base_model_prefix: str = "vmamba.") -> str | None:
    """Transformers name of one (normalized) original key, or None if it is not part of the classifier model."""
    match = _HEAD.match(key)
    if match:
        return f"classifier.{match.group(1)}"
    for pattern, replacement in _KEY_MAP:
        if pattern.match(key):
            return base_model_prefix + pattern.sub(replacement, key)
    return None


def convert_original_state_dict(
    state_dict: Mapping[str, torch.Tensor], base_model_prefix: str = "vmamba."
) -> dict[str, torch.Tensor]:
    """Original state dict -> state dict of `VMambaForImageClassification` (a pure rename; shapes are kept).

    With ``base_model_prefix=""`` the keys are those of a bare `VMambaModel`. Any key that does not map raises
    `OriginalCheckpointError` listing them.
    """
    converted, unknown = {}, []
    for key, tensor in normalize_original_state_dict(state_dict).items():
        new_key = map_original_key(key, base_model_prefix)
        if new_key is None:
            unknown.append(key)
        else:
            converted[new_key] = tensor
    if unknown:
        raise OriginalCheckpointError(f"{len(unknown)} keys of the checkpoint have no VMamba counterpart: {unknown}")
    return converted


# Keys of mmdetection/mmsegmentation models: the backbone lives under this prefix, everything else (decode_head,
# auxiliary_head, neck, rpn_head, roi_head, data_preprocessor, ...) belongs to heads this package does not port.
DETECTION_BACKBONE_PREFIX = "backbone."
_OUTNORM = re.compile(r"^outnorm(\d+)\.(weight|bias)$")


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
    indices = sorted({int(m.group(1)) for key in state_dict if (m := _OUTNORM.match(key))})
    return [f"stage{index + 1}" for index in indices]


def convert_original_backbone_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original ``Backbone_VSSM`` state dict (without the ``backbone.`` prefix) -> `VMambaBackbone` state dict.

    ``outnorm{i}`` becomes ``hidden_states_norms.stage{i+1}``; every other key maps as in a classifier. Keys that
    do not map raise `OriginalCheckpointError` listing them.
    """
    converted, unknown = {}, []
    for key, tensor in normalize_original_state_dict(state_dict).items():
        match = _OUTNORM.match(key)
        if match:
            new_key = f"hidden_states_norms.stage{int(match.group(1)) + 1}.{match.group(2)}"
        elif _HEAD.match(key) or key.startswith("classifier."):
            new_key = None  # a backbone has no classifier
        else:
            new_key = map_original_key(key, base_model_prefix="")
        if new_key is None:
            unknown.append(key)
        else:
            converted[new_key] = tensor
    if unknown:
        raise OriginalCheckpointError(
            f"{len(unknown)} keys of the backbone checkpoint have no VMambaBackbone counterpart: {unknown}"
        )
    return converted


# ---------------------------------------------------------------------------------------------------------------
# Config inference
# ---------------------------------------------------------------------------------------------------------------


def _require(state_dict, key, what):
    if key not in state_dict:
        raise OriginalCheckpointError(
            f"unrecognised VMamba checkpoint layout: missing {key!r} ({what}); first keys: {list(state_dict)[:8]}"
        )
    return state_dict[key]


def _same_for_all_stages(values: list, field: str):
    if len(set(values)) != 1:
        raise OriginalCheckpointError(f"{field} differs between stages ({values}); VMambaConfig needs one value")
    return values[0]


def infer_config_from_state_dict(state_dict: Mapping[str, torch.Tensor], **overrides) -> VMambaConfig:
    """Infer the whole `VMambaConfig` (sizes, depths, scan sizes, gate, MLP, downsample and patch-embed kinds,
    number of classes) from the keys and shapes of an original classification state dict.

    A detection/segmentation backbone state dict (``Backbone_VSSM``, ``backbone.`` prefix removed) has no
    classifier but ``outnorm{i}`` norms instead; its config gets ``out_features`` = the stages with a norm.
    The layout (``channels_first``) cannot be seen in the weights; it defaults to the family's original layout.
    """
    state_dict = normalize_original_state_dict(state_dict)
    conv1 = _require(state_dict, "patch_embed.0.weight", "patch embedding convolution")
    if "patch_embed.5.weight" in state_dict:
        patch_embed_type = "two_conv"
        kernel = state_dict["patch_embed.5.weight"].shape[-1]
        patch_size = 2 * (kernel - 1)  # kernel = stride + 1, stride = patch_size // 2
    else:
        patch_embed_type = "single_conv"
        patch_size = conv1.shape[-1]
    num_channels = conv1.shape[1]

    stage_ids = sorted({int(m.group(1)) for k in state_dict if (m := re.match(r"^layers\.(\d+)\.", k))})
    if not stage_ids or stage_ids != list(range(len(stage_ids))):
        raise OriginalCheckpointError(f"unrecognised VMamba checkpoint layout: stages found {stage_ids}")
    depths, hidden_sizes, inner_sizes, state_sizes, dt_ranks, gates, conv_biases, conv_kernels, mlp_ratios = (
        [] for _ in range(9)
    )
    for stage in stage_ids:
        blocks = sorted(
            {int(m.group(1)) for k in state_dict if (m := re.match(rf"^layers\.{stage}\.blocks\.(\d+)\.", k))}
        )
        if not blocks or blocks != list(range(len(blocks))):
            raise OriginalCheckpointError(f"stage {stage}: blocks found {blocks}, expected 0..n-1")
        depths.append(len(blocks))
        prefix = f"layers.{stage}.blocks.0."
        hidden = _require(state_dict, prefix + "norm.weight", "block norm").shape[0]
        x_proj = _require(state_dict, prefix + "op.x_proj_weight", "scan input projection")
        dt_proj = _require(state_dict, prefix + "op.dt_projs_weight", "dt projection")
        a_logs = _require(state_dict, prefix + "op.A_logs", "A_logs")
        in_proj = _require(state_dict, prefix + "op.in_proj.weight", "input projection")
        conv = _require(state_dict, prefix + "op.conv2d.weight", "depthwise convolution")
        inner, rank, state = x_proj.shape[2], dt_proj.shape[2], a_logs.shape[1]
        if x_proj.shape[:2] != (4, rank + 2 * state) or a_logs.shape[0] != 4 * inner:
            raise OriginalCheckpointError(
                f"stage {stage}: scan parameter shapes do not fit together (x_proj_weight {tuple(x_proj.shape)}, "
                f"dt_projs_weight {tuple(dt_proj.shape)}, A_logs {tuple(a_logs.shape)})"
            )
        if in_proj.shape[0] not in (inner, 2 * inner):
            raise OriginalCheckpointError(
                f"stage {stage}: in_proj has {in_proj.shape[0]} outputs, expected {inner} or {2 * inner} (gated)"
            )
        hidden_sizes.append(hidden)
        inner_sizes.append(inner)
        dt_ranks.append(rank)
        state_sizes.append(state)
        gates.append(in_proj.shape[0] == 2 * inner)
        conv_biases.append(prefix + "op.conv2d.bias" in state_dict)
        conv_kernels.append(conv.shape[-1])
        fc1 = state_dict.get(prefix + "mlp.fc1.weight")
        mlp_ratios.append(fc1.shape[0] / hidden if fc1 is not None else 0.0)

    ratios = [inner / hidden for inner, hidden in zip(inner_sizes, hidden_sizes)]
    ratio = _same_for_all_stages(ratios, "ssm expansion ratio (inner / hidden channels)")
    if any(int(ratio * hidden) != inner for hidden, inner in zip(hidden_sizes, inner_sizes)):
        raise OriginalCheckpointError(f"inner sizes {inner_sizes} are not one ratio of the hidden sizes {hidden_sizes}")
    if all(rank == math.ceil(hidden / 16) for rank, hidden in zip(dt_ranks, hidden_sizes)):
        dt_rank = "auto"
    else:
        dt_rank = _same_for_all_stages(dt_ranks, "dt rank")

    if len(stage_ids) > 1:
        if "layers.0.downsample.reduction.weight" in state_dict:
            downsample_type = "patch_merging"
        elif "layers.0.downsample.1.weight" in state_dict:
            kernel = state_dict["layers.0.downsample.1.weight"].shape[-1]
            if kernel != 3:
                raise OriginalCheckpointError(
                    f"downsample convolution has kernel {kernel}; only the 3x3 stride-2 kind ('v3') is supported"
                )
            downsample_type = "conv"
        else:
            raise OriginalCheckpointError("unrecognised downsample layout: no layers.0.downsample.{reduction,1} keys")
    else:
        downsample_type = "conv"

    out_features = backbone_out_features(state_dict)
    if out_features:
        if any(key.startswith("classifier.") for key in state_dict):
            raise OriginalCheckpointError(
                "the checkpoint has both backbone output norms (outnorm*) and a classifier; expected one or the other"
            )
        head_kwargs = dict(out_features=out_features)
    else:
        head = _require(state_dict, "classifier.head.weight", "classification head (or backbone outnorm* norms)")
        head_kwargs = dict(num_labels=head.shape[0])
    kwargs = dict(
        num_channels=num_channels,
        patch_size=patch_size,
        hidden_sizes=hidden_sizes,
        depths=depths,
        ssm_state_size=_same_for_all_stages(state_sizes, "state size"),
        ssm_expansion_ratio=float(ratio),
        ssm_dt_rank=dt_rank,
        ssm_conv_kernel_size=_same_for_all_stages(conv_kernels, "conv kernel size"),
        ssm_conv_bias=_same_for_all_stages(conv_biases, "conv bias"),
        ssm_gate=_same_for_all_stages(gates, "gate branch"),
        mlp_ratio=float(_same_for_all_stages(mlp_ratios, "MLP ratio")),
        downsample_type=downsample_type,
        patch_embed_type=patch_embed_type,
        **head_kwargs,
    )
    # Released-model defaults (layout, drop path) when the weights are one of the nine published architectures.
    variant = _matching_variant(kwargs)
    if variant is not None:
        kwargs = {**VARIANTS[variant], **kwargs}
    else:
        kwargs.setdefault("channels_first", not kwargs["ssm_gate"])
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


def _architecture_mismatches(config: VMambaConfig, variant: str) -> list[str]:
    expected = VMambaConfig.from_variant(variant)
    return [
        f"{field}: checkpoint has {getattr(config, field)!r} but {variant} has {getattr(expected, field)!r}"
        for field in ARCHITECTURE_FIELDS
        if getattr(config, field) != getattr(expected, field)
    ]


# ---------------------------------------------------------------------------------------------------------------
# One call: file -> ready model
# ---------------------------------------------------------------------------------------------------------------


def from_original_checkpoint(
    path_or_state_dict: str | os.PathLike | Mapping,
    variant: str | None = None,
    weights_key: str | None = None,
    **config_overrides,
) -> VMambaForImageClassification | VMambaBackbone:
    """Build a ready model (eval mode) from an original VMamba checkpoint.

    A classification checkpoint gives a `VMambaForImageClassification` (a 1000-class one with the ImageNet-1k class
    names as labels). A detection/segmentation checkpoint of
    mmdetection/mmsegmentation (weights under ``state_dict``, backbone under ``backbone.`` with output norms
    ``outnorm{i}``) gives a `VMambaBackbone` whose ``out_features`` are the stages with a norm; its other tensors
    (``decode_head``, ``auxiliary_head``, ``neck``, ``rpn_head``, ``roi_head``, ...) are skipped with a warning
    naming them: those heads are not converted.

    Args:
        path_or_state_dict: a ``.pth`` file of the original training code, a loaded checkpoint dict or a state dict.
        variant: name of a released model (see `VARIANTS`) the weights must match; mismatches raise.
        weights_key: which weights of the checkpoint to use; default ``model_ema`` when present, else ``model``,
            else ``state_dict``.
        config_overrides: extra `VMambaConfig` fields (e.g. ``channels_first``, ``scan_backend``, ``id2label``).
    """
    if isinstance(path_or_state_dict, Mapping):
        checkpoint = path_or_state_dict
    else:
        checkpoint = load_original_checkpoint(path_or_state_dict)
    state_dict, _ = select_weights(checkpoint, weights_key)
    detection = split_detection_state_dict(state_dict)
    if detection is not None:
        state_dict, skipped = detection
        if skipped:
            summary = ", ".join(f"{module} ({len(keys)} tensors)" for module, keys in skipped.items())
            logger.warning(
                f"detection/segmentation checkpoint: converting only the VMamba backbone; skipped {summary}. "
                "Decode/detection heads and necks are not converted."
            )
    state_dict = normalize_original_state_dict(state_dict)

    config = infer_config_from_state_dict(state_dict)
    is_backbone = bool(backbone_out_features(state_dict))
    head_fields = dict(out_features=config.out_features) if is_backbone else dict(num_labels=config.num_labels)
    if variant is not None:
        if variant not in VARIANTS:
            raise OriginalCheckpointError(f"unknown VMamba variant {variant!r}; known variants: {', '.join(VARIANTS)}")
        mismatches = _architecture_mismatches(config, variant)
        if mismatches:
            raise OriginalCheckpointError(
                f"the checkpoint does not match variant {variant!r}: " + "; ".join(mismatches)
            )
        config = VMambaConfig.from_variant(variant, **{**head_fields, **config_overrides})
    elif config_overrides:
        config = infer_config_from_state_dict(state_dict, **config_overrides)

    if not is_backbone and config.num_labels == 1000 and "id2label" not in config_overrides:
        # every 1000-class original classifier is an ImageNet-1k model: name its classes
        for field, value in label_fields(imagenet1k_labels()).items():
            setattr(config, field, value)
    if is_backbone:
        model = VMambaBackbone(config)
        converted = convert_original_backbone_state_dict(state_dict)
    else:
        model = VMambaForImageClassification(config)
        converted = convert_original_state_dict(state_dict)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    if missing or unexpected:
        raise OriginalCheckpointError(
            f"checkpoint does not fit the inferred model: missing keys {missing}, unexpected keys {unexpected}"
        )
    wrong_shapes = [
        f"{key}: checkpoint {tuple(converted[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in expected
        if converted[key].shape != expected[key].shape
    ]
    if wrong_shapes:
        raise OriginalCheckpointError(f"tensor shapes do not fit the inferred model: {wrong_shapes}")
    model.load_state_dict(converted, strict=True)
    return model.eval()


__all__ = [
    "DETECTION_BACKBONE_PREFIX",
    "OriginalCheckpointError",
    "backbone_out_features",
    "convert_original_backbone_state_dict",
    "convert_original_state_dict",
    "from_original_checkpoint",
    "infer_config_from_state_dict",
    "load_original_checkpoint",
    "map_original_key",
    "normalize_original_state_dict",
    "select_weights",
    "split_detection_state_dict",
]
