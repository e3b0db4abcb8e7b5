# Copyright 2026 The transformers-vmamba authors. Licensed under the MIT license.
"""The heads of an mmsegmentation UperNet checkpoint (UPerHead decode head, FCNHead auxiliary head) as Transformers'
`UperNetHead` / `UperNetFCNHead`: the key mapping (both directions) and the `UperNetConfig` read from the shapes.

mmsegmentation's `ConvModule` holds `conv` and `bn`; Transformers' `UperNetConvModule` holds `conv` and
`batch_norm`; each head's final 1x1 convolution is `conv_seg` there and `classifier` here. Every other name
(`psp_modules.<i>.1`, `bottleneck`, `lateral_convs.<i>`, `fpn_convs.<i>`, `fpn_bottleneck`, `convs.<i>`, `conv_cat`)
is the same on both sides. The backbone keys are left to `original_checkpoint`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch


DECODE_HEAD, AUXILIARY_HEAD = "decode_head", "auxiliary_head"
SEGMENTOR_HEADS = (DECODE_HEAD, AUXILIARY_HEAD)
# Modules only a UPerHead has (a decode head with just `conv_seg` is some other head, or a stub: not converted).
UPERHEAD_MODULES = ("psp_modules", "bottleneck", "lateral_convs", "fpn_convs", "fpn_bottleneck")
# The pool scales of mmsegmentation's UPerHead default and of every released VMamba UperNet config. The weights show
# only how many there are, not their values.
DEFAULT_POOL_SCALES = (1, 2, 3, 6)

_BN = r"weight|bias|running_mean|running_var|num_batches_tracked"
_CONV_MODULE = rf"(?P<part>conv\.weight|conv\.bias|bn\.(?:{_BN}))"
_DECODE_MODULE = r"psp_modules\.\d{1,4}\.1|bottleneck|lateral_convs\.\d{1,4}|fpn_convs\.\d{1,4}|fpn_bottleneck"
_HEAD_KEY = re.compile(
    rf"(?P<head>decode_head|auxiliary_head)\.(?:conv_seg\.(?P<seg>weight|bias)"
    rf"|(?P<module>{_DECODE_MODULE}|convs\.\d{{1,4}}|conv_cat)\.{_CONV_MODULE})"
)
_HF_HEAD_KEY = re.compile(
    rf"(?P<head>decode_head|auxiliary_head)\.(?:classifier\.(?P<seg>weight|bias)"
    rf"|(?P<module>{_DECODE_MODULE}|convs\.\d{{1,4}}|conv_cat)\.(?P<part>conv\.weight|conv\.bias|batch_norm\.(?:{_BN})))"
)


def is_upernet_checkpoint(modules: Mapping[str, list[str]]) -> bool:
    """Whether the non-backbone modules of an mmseg state dict (module -> keys) hold a UPerHead decode head."""
    return any(key.split(".")[1] in UPERHEAD_MODULES for key in modules.get(DECODE_HEAD, ()) if key.count(".") >= 2)


def head_key(key: str) -> str | None:
    """Transformers name of one mmseg head key (``decode_head.*`` / ``auxiliary_head.*``), or None."""
    match = _HEAD_KEY.fullmatch(key)
    if match is None:
        return None
    head = match["head"]
    if match["seg"]:
        return f"{head}.classifier.{match['seg']}"
    module = match["module"]
    if head == DECODE_HEAD and module.startswith(("convs.", "conv_cat")):
        return None
    if head == AUXILIARY_HEAD and not module.startswith(("convs.", "conv_cat")):
        return None
    return f"{head}.{module}.{match['part'].replace('bn.', 'batch_norm.')}"


def original_head_key(key: str) -> str | None:
    """The inverse of `head_key` (for messages about keys the checkpoint lacks)."""
    match = _HF_HEAD_KEY.fullmatch(key)
    if match is None:
        return None
    if match["seg"]:
        return f"{match['head']}.conv_seg.{match['seg']}"
    return f"{match['head']}.{match['module']}.{match['part'].replace('batch_norm.', 'bn.')}"


def _indices(state_dict: Mapping[str, torch.Tensor], prefix: str) -> list[int]:
    pattern = re.compile(re.escape(prefix) + r"(\d{1,4})\.")
    return sorted({int(m[1]) for key in state_dict if (m := pattern.match(key))})


def _shape(state_dict, key) -> tuple[int, ...] | None:
    tensor = state_dict.get(key)
    return None if tensor is None else tuple(tensor.shape)


def _sized(state_dict, what: str, witnesses: list[tuple[str, int]], error) -> int:
    """The size that the present (key, dim) witnesses agree on; disagreement names every witness and its shape."""
    seen = [(key, _shape(state_dict, key), dim) for key, dim in witnesses if key in state_dict]
    seen = [(key, shape, dim) for key, shape, dim in seen if len(shape) > dim]
    if not seen:
        wanted = ", ".join(key for key, _ in witnesses)
        raise error(f"cannot infer the {what}: none of {wanted} is in the checkpoint")
    sizes = {shape[dim] for _, shape, dim in seen}
    if len(sizes) > 1:
        shown = "; ".join(f"{key} {shape} (dim {dim})" for key, shape, dim in seen)
        raise error(f"cannot infer the {what}: the tensors that show it disagree: {shown}")
    return sizes.pop()


def infer_upernet_fields(
    heads: Mapping[str, torch.Tensor],
    backbone_channels: list[int],
    *,
    pool_scales: list[int] | tuple[int, ...] | None = None,
    error=ValueError,
) -> dict:
    """`UperNetConfig` fields read from the shapes of the mmseg head tensors (keys with their ``decode_head.`` /
    ``auxiliary_head.`` prefixes): hidden size, number of classes, number of pool scales, and the auxiliary head's
    input channels, channels, number of convolutions and concat-input switch (``use_auxiliary_head`` False when the
    checkpoint has none).

    Transformers' `UperNetFCNHead` reads the third backbone feature map (mmseg ``in_index=2``), so an auxiliary head
    whose input channels are not that stage's is refused. Mis-shaped or missing tensors beyond what is read here are
    reported by the caller's key-by-key check.
    """
    d, a = DECODE_HEAD + ".", AUXILIARY_HEAD + "."
    if d + "conv_seg.weight" not in heads:
        raise error(
            f"the decode head has no {d}conv_seg.weight (its classifier); decode_head keys: "
            f"{sorted(k for k in heads if k.startswith(d))[:8]}"
        )
    num_labels = _sized(heads, "number of classes", [(d + "conv_seg.weight", 0), (d + "conv_seg.bias", 0)], error)
    hidden_size = _sized(
        heads,
        "decode head channels",
        [(d + "conv_seg.weight", 1), (d + "bottleneck.conv.weight", 0), (d + "fpn_bottleneck.conv.weight", 0)],
        error,
    )
    scales = _indices(heads, d + "psp_modules.")
    if not scales:
        raise error(f"the decode head has no {d}psp_modules.<i>.1.* keys (its pyramid pooling module)")
    if scales != list(range(len(scales))):
        absent = [index for index in range(max(scales) + 1) if index not in scales]
        raise error(f"missing keys {d}psp_modules.{absent}.1.* (the checkpoint has pool branches {scales})")
    if pool_scales is None:
        if len(scales) != len(DEFAULT_POOL_SCALES):
            raise error(
                f"the decode head has {len(scales)} pool branches ({d}psp_modules.0..{len(scales) - 1}); their "
                f"scales are not stored in the weights, and only the {len(DEFAULT_POOL_SCALES)} of mmseg's default "
                f"{list(DEFAULT_POOL_SCALES)} are assumed: pass pool_scales=[...] with {len(scales)} values"
            )
        pool_scales = DEFAULT_POOL_SCALES
    elif len(pool_scales) != len(scales):
        raise error(f"pool_scales={list(pool_scales)} has {len(pool_scales)} values but the decode head has "
                    f"{len(scales)} pool branches ({d}psp_modules.0..{len(scales) - 1})")
    fields = dict(num_labels=num_labels, hidden_size=hidden_size, pool_scales=list(pool_scales))

    if not any(key.startswith(a) for key in heads):
        return dict(fields, use_auxiliary_head=False)
    if a + "conv_seg.weight" not in heads:
        raise error(
            f"the auxiliary head has no {a}conv_seg.weight (its classifier); auxiliary_head keys: "
            f"{sorted(k for k in heads if k.startswith(a))[:8]}"
        )
    aux_labels = _sized(heads, "auxiliary head classes", [(a + "conv_seg.weight", 0), (a + "conv_seg.bias", 0)], error)
    if aux_labels != num_labels:
        raise error(
            f"the heads disagree on the number of classes: {d}conv_seg.weight {_shape(heads, d + 'conv_seg.weight')}"
            f" but {a}conv_seg.weight {_shape(heads, a + 'conv_seg.weight')}"
        )
    convs = _indices(heads, a + "convs.")
    if convs != list(range(len(convs))):
        absent = [index for index in range(max(convs) + 1) if index not in convs]
        raise error(f"missing keys {a}convs.{absent}.* (the checkpoint has convolutions {convs})")
    channels = _sized(
        heads,
        "auxiliary head channels",
        [(a + "conv_seg.weight", 1)] + [(f"{a}convs.{i}.conv.weight", 0) for i in convs],
        error,
    )
    in_channels = _sized(heads, "auxiliary head input channels", [(a + "convs.0.conv.weight", 1)], error) if convs \
        else channels
    if in_channels != backbone_channels[2]:
        source = f"{a}convs.0.conv.weight {_shape(heads, a + 'convs.0.conv.weight')}" if convs \
            else f"{a}conv_seg.weight {_shape(heads, a + 'conv_seg.weight')}"
        raise error(
            f"the auxiliary head takes {in_channels} channels ({source}), but Transformers' UperNetFCNHead reads the "
            f"third backbone feature map (mmseg in_index 2), which has {backbone_channels[2]} channels here "
            f"(backbone channels {backbone_channels})"
        )
    return dict(
        fields,
        use_auxiliary_head=True,
        auxiliary_in_channels=in_channels,
        auxiliary_channels=channels,
        auxiliary_num_convs=len(convs),
        auxiliary_concat_input=any(key.startswith(a + "conv_cat.") for key in heads),
    )


__all__ = [
    "AUXILIARY_HEAD",
    "DECODE_HEAD",
    "DEFAULT_POOL_SCALES",
    "SEGMENTOR_HEADS",
    "UPERHEAD_MODULES",
    "head_key",
    "infer_upernet_fields",
    "is_upernet_checkpoint",
    "original_head_key",
]
