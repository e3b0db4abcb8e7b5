# Copyright 2026 The transformers-vmamba authors. Licensed under the MIT license.
"""VMamba model configuration."""

from __future__ import annotations

import copy
import math

from huggingface_hub.dataclasses import strict
from transformers.activations import ACT2FN
from transformers.backbone_utils import BackboneConfigMixin
from transformers.configuration_utils import PreTrainedConfig


DOWNSAMPLE_TYPES = ("patch_merging", "conv")
PATCH_EMBED_TYPES = ("single_conv", "two_conv")

# The three families of released VMamba classifiers, in the original code's terms:
# v0 = forward_type "v0", PatchMerging2D ("v1"), single-conv patch embed ("v1");
# v2 = forward_type "v05_noz", strided-conv downsample ("v3"), two-conv patch embed ("v2");
# v2v = v2 with ssm_ratio 1.0. (The original builds v2 models channels-first, "ln2d", and v0 channels-last, "ln": a
# memory-layout choice of its code with identical weights and results; this port is channels-last throughout.)
_V0 = dict(
    ssm_state_size=16,
    ssm_expansion_ratio=2.0,
    ssm_conv_bias=True,
    ssm_gate=True,
    mlp_ratio=0.0,
    downsample_type="patch_merging",
    patch_embed_type="single_conv",
)
_V2 = dict(
    ssm_state_size=1,
    ssm_expansion_ratio=2.0,
    ssm_conv_bias=False,
    ssm_gate=False,
    mlp_ratio=4.0,
    downsample_type="conv",
    patch_embed_type="two_conv",
)
_V2V = dict(_V2, ssm_expansion_ratio=1.0)


def _sizes(embed_dim: int) -> list[int]:
    return [embed_dim * 2**i for i in range(4)]


# Keyword arguments of the nine released ImageNet-1k classifiers, taken from the original builder functions
# (`vanilla_vmamba_tiny`, ..., `vmamba_base_s1l20` in MzeroMiko/VMamba classification/models/vmamba.py).
VARIANTS: dict[str, dict] = {
    "vanilla-vmamba-tiny": dict(_V0, hidden_sizes=_sizes(96), depths=[2, 2, 9, 2], drop_path_rate=0.2),
    "vanilla-vmamba-small": dict(_V0, hidden_sizes=_sizes(96), depths=[2, 2, 27, 2], drop_path_rate=0.3),
    "vanilla-vmamba-base": dict(_V0, hidden_sizes=_sizes(128), depths=[2, 2, 27, 2], drop_path_rate=0.5),
    "vmamba-tiny-s2l5": dict(_V2, hidden_sizes=_sizes(96), depths=[2, 2, 5, 2], drop_path_rate=0.2),
    "vmamba-small-s2l15": dict(_V2, hidden_sizes=_sizes(96), depths=[2, 2, 15, 2], drop_path_rate=0.3),
    "vmamba-base-s2l15": dict(_V2, hidden_sizes=_sizes(128), depths=[2, 2, 15, 2], drop_path_rate=0.6),
    "vmamba-tiny-s1l8": dict(_V2V, hidden_sizes=_sizes(96), depths=[2, 2, 8, 2], drop_path_rate=0.2),
    "vmamba-small-s1l20": dict(_V2V, hidden_sizes=_sizes(96), depths=[2, 2, 20, 2], drop_path_rate=0.3),
    "vmamba-base-s1l20": dict(_V2V, hidden_sizes=_sizes(128), depths=[2, 2, 20, 2], drop_path_rate=0.5),
}

# Fields that decide the parameter layout (and so what a checkpoint must match).
ARCHITECTURE_FIELDS = (
    "num_channels",
    "patch_size",
    "hidden_sizes",
    "depths",
    "ssm_state_size",
    "ssm_expansion_ratio",
    "ssm_dt_rank",
    "ssm_conv_kernel_size",
    "ssm_conv_bias",
    "ssm_gate",
    "mlp_ratio",
    "downsample_type",
    "patch_embed_type",
)


@strict
class VMambaConfig(BackboneConfigMixin, PreTrainedConfig):
    r"""
    Configuration of a VMamba (Visual State Space Model, arXiv:2401.10166) model. The defaults build VMamba-T
    (`vmamba-tiny-s1l8`); use [`VMambaConfig.from_variant`] for the other released models.

    Naming: the `ssm_*` fields are [`MambaConfig`]'s `state_size`, `expand`, `time_step_rank`, `conv_kernel`,
    `use_conv_bias` and `time_step_min` / `time_step_max` / `time_step_floor` / `time_step_scale`. They keep an `ssm_`
    prefix because a VMamba block also has an MLP with its own ratio (`mlp_ratio`), and the expansion is a float
    ratio (0.5 to 2 in the releases) where Mamba's `expand` is an integer. There is no layout field: every model runs
    channels-last inside, and outputs are `(batch, channels, height, width)` like Transformers' other vision models.

    num_channels (`int`, *optional*, defaults to 3):
        Number of input image channels.
    patch_size (`int`, *optional*, defaults to 4):
        Total stride of the patch embedding: the first feature map is the image downsampled by this factor.
    hidden_sizes (`list[int]`, *optional*, defaults to `[96, 192, 384, 768]`):
        Channels of each stage (the original's `dims`).
    depths (`list[int]`, *optional*, defaults to `[2, 2, 8, 2]`):
        Number of VSS blocks in each stage.
    ssm_state_size (`int`, *optional*, defaults to 1):
        Dimension N of the state of every scanned channel (the original's `ssm_d_state`).
    ssm_expansion_ratio (`float`, *optional*, defaults to 1.0):
        Channels inside the SS2D mixer relative to the block's channels (the original's `ssm_ratio`).
    ssm_dt_rank (`int` or `"auto"`, *optional*, defaults to `"auto"`):
        Rank of the low-rank step-size (dt) projection; `"auto"` means `ceil(hidden_size / 16)` per stage.
    ssm_conv_kernel_size (`int`, *optional*, defaults to 3):
        Kernel of the depthwise convolution before the scan (the original's `ssm_conv`).
    ssm_conv_bias (`bool`, *optional*, defaults to `False`):
        Whether that depthwise convolution has a bias (v0 models: yes).
    ssm_gate (`bool`, *optional*, defaults to `False`):
        Whether the mixer multiplies its output by a SiLU gate branch of the input projection (v0's z-branch;
        v2 models were trained without it, forward_type "v05_noz").
    ssm_hidden_act (`str`, *optional*, defaults to `"silu"`):
        Activation after the depthwise convolution and on the gate branch.
    mlp_ratio (`float`, *optional*, defaults to 4.0):
        Hidden size of the MLP after each mixer relative to the block's channels; 0 means no MLP (v0 models).
    hidden_act (`str`, *optional*, defaults to `"gelu"`):
        Activation of the MLP.
    downsample_type (`str`, *optional*, defaults to `"conv"`):
        How each stage but the last halves the resolution: `"conv"` (3x3 stride-2 convolution then LayerNorm; the
        original's "v3") or `"patch_merging"` (2x2 neighbourhood concatenation, LayerNorm, linear; "v1").
    patch_embed_type (`str`, *optional*, defaults to `"two_conv"`):
        `"two_conv"` (two 3x3 stride-2 convolutions with LayerNorm and GELU between; the original's "v2") or
        `"single_conv"` (one patch_size x patch_size convolution then LayerNorm; "v1").
    layer_norm_eps (`float`, *optional*, defaults to 1e-5):
        Epsilon of every LayerNorm.
    drop_path_rate (`float`, *optional*, defaults to 0.2):
        Largest stochastic-depth rate, reached linearly at the last block (training only).
    initializer_range (`float`, *optional*, defaults to 0.02):
        Standard deviation of the truncated normal used for linear weights.
    ssm_dt_min (`float`, *optional*, defaults to 0.001):
        Lower end of the step sizes the dt bias is initialised to produce.
    ssm_dt_max (`float`, *optional*, defaults to 0.1):
        Upper end of those step sizes.
    ssm_dt_init_floor (`float`, *optional*, defaults to 1e-4):
        Smallest initial step size.
    ssm_dt_scale (`float`, *optional*, defaults to 1.0):
        Scale of the uniform initialisation of the dt projection weight (`dt_rank**-0.5 * ssm_dt_scale`).
    out_features (`list[str]`, *optional*):
        Backbone use: stages to output, from `"stem"`, `"stage1"`, ... `"stage4"`.
    out_indices (`list[int]`, *optional*):
        Backbone use: indices of the stages to output (alternative to `out_features`).

    Example:
    ```python
    >>> from transformers_vmamba import VMambaConfig, VMambaForImageClassification

    >>> config = VMambaConfig.from_variant("vmamba-tiny-s1l8")
    >>> model = VMambaForImageClassification(config)
    ```"""

    model_type = "vmamba"

    num_channels: int = 3
    patch_size: int = 4
    hidden_sizes: list[int] | tuple[int, ...] = (96, 192, 384, 768)
    depths: list[int] | tuple[int, ...] = (2, 2, 8, 2)
    ssm_state_size: int = 1
    ssm_expansion_ratio: float | int = 1.0
    ssm_dt_rank: int | str = "auto"
    ssm_conv_kernel_size: int = 3
    ssm_conv_bias: bool = False
    ssm_gate: bool = False
    ssm_hidden_act: str = "silu"
    mlp_ratio: float | int = 4.0
    hidden_act: str = "gelu"
    downsample_type: str = "conv"
    patch_embed_type: str = "two_conv"
    layer_norm_eps: float = 1e-5
    drop_path_rate: float | int = 0.2
    initializer_range: float = 0.02
    ssm_dt_min: float = 0.001
    ssm_dt_max: float = 0.1
    ssm_dt_init_floor: float = 1e-4
    ssm_dt_scale: float = 1.0
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs):
        # Fields of configs saved by version 0.1: the memory layout (now always channels-last) and the scan backend
        # (now chosen per device by the SS2D operator; VMAMBA_SCAN_BACKEND overrides). Neither changes the model.
        for retired in ("channels_first", "scan_backend"):
            kwargs.pop(retired, None)
        self.hidden_sizes = [int(size) for size in self.hidden_sizes]
        self.depths = [int(depth) for depth in self.depths]
        self._check_values()
        self.stage_names = ["stem"] + [f"stage{idx}" for idx in range(1, len(self.depths) + 1)]
        self.set_output_features_output_indices(
            out_indices=kwargs.pop("out_indices", None), out_features=kwargs.pop("out_features", None)
        )
        super().__post_init__(**kwargs)

    def _check_values(self):
        """Reject configurations that cannot build a network, naming the offending field."""

        def fail(field, message):
            raise ValueError(f"VMambaConfig.{field}: {message}")

        if self.num_channels < 1:
            fail("num_channels", f"must be >= 1, got {self.num_channels}")
        if len(self.depths) == 0:
            fail("depths", "needs at least one stage")
        if len(self.hidden_sizes) != len(self.depths):
            fail(
                "hidden_sizes",
                f"has {len(self.hidden_sizes)} entries but depths has {len(self.depths)}; give one size per stage",
            )
        if any(depth < 1 for depth in self.depths):
            fail("depths", f"every stage needs at least one block, got {self.depths}")
        if any(size < 1 for size in self.hidden_sizes):
            fail("hidden_sizes", f"sizes must be >= 1, got {self.hidden_sizes}")
        if self.ssm_state_size < 1:
            fail("ssm_state_size", f"must be >= 1, got {self.ssm_state_size}")
        if not self.ssm_expansion_ratio > 0:
            fail("ssm_expansion_ratio", f"must be > 0, got {self.ssm_expansion_ratio}")
        for size in self.hidden_sizes:
            if int(self.ssm_expansion_ratio * size) < 1:
                fail("ssm_expansion_ratio", f"gives no inner channels for hidden size {size}")
        if isinstance(self.ssm_dt_rank, str):
            if self.ssm_dt_rank != "auto":
                fail("ssm_dt_rank", f"must be a positive int or 'auto', got {self.ssm_dt_rank!r}")
        elif self.ssm_dt_rank < 1:
            fail("ssm_dt_rank", f"must be a positive int or 'auto', got {self.ssm_dt_rank}")
        if self.ssm_conv_kernel_size < 1 or self.ssm_conv_kernel_size % 2 == 0:
            fail("ssm_conv_kernel_size", f"must be odd and >= 1 (same-size padding), got {self.ssm_conv_kernel_size}")
        if self.mlp_ratio < 0:
            fail("mlp_ratio", f"must be >= 0 (0 disables the MLP), got {self.mlp_ratio}")
        if self.downsample_type not in DOWNSAMPLE_TYPES:
            fail("downsample_type", f"must be one of {DOWNSAMPLE_TYPES}, got {self.downsample_type!r}")
        if self.patch_embed_type not in PATCH_EMBED_TYPES:
            fail("patch_embed_type", f"must be one of {PATCH_EMBED_TYPES}, got {self.patch_embed_type!r}")
        if self.patch_size < 1:
            fail("patch_size", f"must be >= 1, got {self.patch_size}")
        if self.patch_embed_type == "two_conv" and (self.patch_size < 2 or self.patch_size % 2):
            fail(
                "patch_size",
                f"must be even for patch_embed_type 'two_conv' (two stride-patch_size/2 convolutions), "
                f"got {self.patch_size}",
            )
        for field in ("hidden_act", "ssm_hidden_act"):
            if getattr(self, field) not in ACT2FN:
                fail(
                    field,
                    f"unknown activation {getattr(self, field)!r}; use a name of transformers' ACT2FN, "
                    "e.g. 'gelu', 'silu'",
                )
        if not self.layer_norm_eps > 0:
            fail("layer_norm_eps", f"must be > 0, got {self.layer_norm_eps}")
        if not 0 <= self.drop_path_rate < 1:
            fail("drop_path_rate", f"must be in [0, 1), got {self.drop_path_rate}")
        if not 0 < self.ssm_dt_min <= self.ssm_dt_max:
            fail("ssm_dt_min", f"need 0 < ssm_dt_min <= ssm_dt_max, got {self.ssm_dt_min} and {self.ssm_dt_max}")

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    @property
    def num_features(self) -> int:
        """Channels of the final feature map (input of the classifier)."""
        return self.hidden_sizes[-1]

    def inner_size(self, stage: int) -> int:
        """Channels inside the SS2D mixer of `stage` (the original's d_inner)."""
        return int(self.ssm_expansion_ratio * self.hidden_sizes[stage])

    def dt_rank(self, stage: int) -> int:
        """Rank of the dt projection of `stage`, resolving "auto" like the original (ceil(dim / 16))."""
        if self.ssm_dt_rank == "auto":
            return math.ceil(self.hidden_sizes[stage] / 16)
        return int(self.ssm_dt_rank)

    @property
    def family(self) -> str | None:
        """"v0", "v2" or "v2v" when the layout is one of the released families, else None (a custom model)."""
        for name, switches in (("v0", _V0), ("v2", _V2), ("v2v", _V2V)):
            if all(getattr(self, key) == value for key, value in switches.items()):
                return name
        return None

    @classmethod
    def from_variant(cls, name: str, **overrides) -> VMambaConfig:
        """Build the configuration of a released model by name (see `VARIANTS`), e.g. "vmamba-tiny-s1l8"."""
        if name not in VARIANTS:
            raise ValueError(f"unknown VMamba variant {name!r}; known variants: {', '.join(VARIANTS)}")
        kwargs = copy.deepcopy(VARIANTS[name])
        kwargs.update(overrides)
        return cls(**kwargs)


__all__ = ["VMambaConfig", "VARIANTS"]
