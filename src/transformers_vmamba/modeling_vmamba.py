# Copyright 2026 The transformers-vmamba authors. Licensed under the MIT license.
"""PyTorch VMamba (Visual State Space Model, arXiv:2401.10166).

Every block mixes tokens with SS2D: the feature map is read along four routes (row by row, column by column, and
both reversed), each route runs a selective scan (a Mamba-style input-dependent linear recurrence) and the four
results are merged back into the map. This file only imports torch, transformers and its two sibling modules, so it
ships unchanged as Hub remote code.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BackboneOutput,
    BaseModelOutputWithPoolingAndNoAttention,
    ImageClassifierOutputWithNoAttention,
)
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import logging
from transformers.utils.generic import can_return_tuple

from .configuration_vmamba import SCAN_BACKENDS, VMambaConfig
from .selective_scan import selective_scan_reference, ss2d_selective_scan_torch


try:  # optional Triton kernels (a separate package, absent for Hub remote-code users)
    import vmamba_kernels
except ImportError:
    vmamba_kernels = None


logger = logging.get_logger(__name__)

NUM_DIRECTIONS = 4


# ---------------------------------------------------------------------------------------------------------------
# SS2D core: scan backend dispatch
# ---------------------------------------------------------------------------------------------------------------


def resolve_scan_backend(requested: str, device: torch.device) -> str:
    """Pick the scan implementation for one call: "auto" honours VMAMBA_SCAN_BACKEND, then prefers Triton on CUDA."""
    if requested == "auto":
        requested = os.environ.get("VMAMBA_SCAN_BACKEND", "").strip().lower() or "auto"
        if requested not in SCAN_BACKENDS:
            raise ValueError(f"VMAMBA_SCAN_BACKEND must be one of {SCAN_BACKENDS}, got {requested!r}")
    if requested == "auto":
        if device.type == "cuda" and _triton_available():
            return "triton"
        return "torch"
    if requested == "triton" and not _triton_available():
        raise RuntimeError(
            "scan_backend='triton' needs the vmamba_kernels package with a working Triton (a CUDA device, or "
            "TRITON_INTERPRET=1); use scan_backend='auto' or 'torch' instead"
        )
    return requested


def _triton_available() -> bool:
    return vmamba_kernels is not None and hasattr(vmamba_kernels, "is_available") and vmamba_kernels.is_available()


def ss2d_selective_scan(x, dts, A, Bs, Cs, D, delta_bias, backend: str = "auto"):
    """Run the SS2D core (contract of `ss2d_selective_scan_torch`) with the backend chosen for this call."""
    backend = resolve_scan_backend(backend, x.device)
    if backend == "triton":
        return vmamba_kernels.ss2d_selective_scan(x, dts, A, Bs, Cs, D, delta_bias, delta_softplus=True)
    if backend == "reference":
        return ss2d_selective_scan_torch(
            x, dts, A, Bs, Cs, D, delta_bias, delta_softplus=True, scan_fn=selective_scan_reference
        )
    return ss2d_selective_scan_torch(x, dts, A, Bs, Cs, D, delta_bias, delta_softplus=True)


# ---------------------------------------------------------------------------------------------------------------
# Layout-aware building blocks
# ---------------------------------------------------------------------------------------------------------------


def to_image_layout(hidden_states: torch.Tensor, channels_first: bool) -> torch.Tensor:
    """Model layout -> (B, C, H, W)."""
    return hidden_states if channels_first else hidden_states.permute(0, 3, 1, 2)


def to_model_layout(hidden_states: torch.Tensor, channels_first: bool) -> torch.Tensor:
    """(B, C, H, W) -> model layout."""
    return hidden_states if channels_first else hidden_states.permute(0, 2, 3, 1)


class VMambaLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels, for activations in either layout."""

    def __init__(self, normalized_shape, *, eps=1e-5, channels_first=False):
        super().__init__(normalized_shape, eps=eps)
        self.channels_first = channels_first

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.channels_first:
            hidden_states = hidden_states.permute(0, 2, 3, 1)
            hidden_states = super().forward(hidden_states)
            return hidden_states.permute(0, 3, 1, 2)
        return super().forward(hidden_states)


class VMambaLinear(nn.Linear):
    """Pointwise linear map over the channels; a 1x1 convolution in channels-first layout. Weight is (out, in)."""

    def __init__(self, in_features, out_features, bias=True, *, channels_first=False):
        super().__init__(in_features, out_features, bias=bias)
        self.channels_first = channels_first

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.channels_first:
            return F.conv2d(hidden_states, self.weight[:, :, None, None], self.bias)
        return super().forward(hidden_states)


class VMambaDropPath(nn.Module):
    """Stochastic depth per sample on the residual branch; identity outside training."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return hidden_states
        keep_prob = 1 - self.drop_prob
        shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
        random_tensor = torch.rand(shape, dtype=hidden_states.dtype, device=hidden_states.device)
        random_tensor = torch.floor(random_tensor + keep_prob)
        return hidden_states.div(keep_prob) * random_tensor

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


# ---------------------------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------------------------


class VMambaEmbeddings(nn.Module):
    """Patch embedding: the image becomes a feature map patch_size times smaller, followed by LayerNorm."""

    def __init__(self, config: VMambaConfig):
        super().__init__()
        self.num_channels = config.num_channels
        self.patch_size = config.patch_size
        self.channels_first = config.channels_first
        hidden_size = config.hidden_sizes[0]
        if config.patch_embed_type == "single_conv":
            self.conv1 = nn.Conv2d(config.num_channels, hidden_size, config.patch_size, stride=config.patch_size)
            self.norm1 = VMambaLayerNorm(hidden_size, eps=config.layer_norm_eps, channels_first=config.channels_first)
            self.act = self.conv2 = self.norm2 = None
        else:
            stride = config.patch_size // 2
            half = hidden_size // 2
            self.conv1 = nn.Conv2d(config.num_channels, half, stride + 1, stride=stride, padding=1)
            self.norm1 = VMambaLayerNorm(half, eps=config.layer_norm_eps, channels_first=config.channels_first)
            self.act = nn.GELU()
            self.conv2 = nn.Conv2d(half, hidden_size, stride + 1, stride=stride, padding=1)
            self.norm2 = VMambaLayerNorm(hidden_size, eps=config.layer_norm_eps, channels_first=config.channels_first)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.ndim != 4:
            raise ValueError(f"pixel_values must be (batch, channels, height, width), got shape {tuple(pixel_values.shape)}")
        num_channels, height, width = pixel_values.shape[1:]
        if num_channels != self.num_channels:
            raise ValueError(
                f"pixel_values has {num_channels} channels but the model expects {self.num_channels} "
                "(config.num_channels)"
            )
        if height < self.patch_size or width < self.patch_size:
            raise ValueError(
                f"image of {height}x{width} pixels is too small for this VMamba: it needs at least "
                f"{self.patch_size}x{self.patch_size} (one patch, config.patch_size)"
            )
        embeddings = to_model_layout(self.conv1(pixel_values), self.channels_first)
        embeddings = self.norm1(embeddings)
        if self.conv2 is not None:
            embeddings = self.act(to_image_layout(embeddings, self.channels_first))
            embeddings = to_model_layout(self.conv2(embeddings), self.channels_first)
            embeddings = self.norm2(embeddings)
        return embeddings


class VMambaSS2D(nn.Module):
    """The 2D selective-scan mixer (the original's SS2D).

    The scan parameters keep the original's shapes, one slice per scan direction k:
    x_proj_weight (4, dt_rank + 2 * state, inner), dt_proj_weight (4, inner, dt_rank), dt_proj_bias (4, inner),
    A_log (4 * inner, state), D (4 * inner).
    """

    def __init__(self, config: VMambaConfig, stage_idx: int):
        super().__init__()
        hidden_size = config.hidden_sizes[stage_idx]
        inner_size = config.inner_size(stage_idx)
        dt_rank = config.dt_rank(stage_idx)
        state_size = config.ssm_state_size
        channels_first = config.channels_first
        self.channels_first = channels_first
        self.gated = config.ssm_gate
        self.scan_backend = config.scan_backend
        self.inner_size, self.dt_rank, self.state_size = inner_size, dt_rank, state_size

        self.in_proj = VMambaLinear(
            hidden_size, inner_size * (2 if self.gated else 1), bias=False, channels_first=channels_first
        )
        self.act = ACT2FN[config.ssm_hidden_act]
        kernel_size = config.ssm_conv_kernel_size
        self.conv2d = nn.Conv2d(
            inner_size,
            inner_size,
            kernel_size,
            padding=(kernel_size - 1) // 2,
            groups=inner_size,
            bias=config.ssm_conv_bias,
        )
        self.x_proj_weight = nn.Parameter(torch.empty(NUM_DIRECTIONS, dt_rank + 2 * state_size, inner_size))
        self.dt_proj_weight = nn.Parameter(torch.empty(NUM_DIRECTIONS, inner_size, dt_rank))
        self.dt_proj_bias = nn.Parameter(torch.empty(NUM_DIRECTIONS, inner_size))
        self.A_log = nn.Parameter(torch.empty(NUM_DIRECTIONS * inner_size, state_size))
        self.D = nn.Parameter(torch.empty(NUM_DIRECTIONS * inner_size))
        self.out_norm = VMambaLayerNorm(inner_size, eps=config.layer_norm_eps, channels_first=channels_first)
        self.out_proj = VMambaLinear(inner_size, hidden_size, bias=False, channels_first=channels_first)

    def selective_scan_2d(self, features: torch.Tensor) -> torch.Tensor:
        """(B, inner, H, W) -> (B, inner, H, W) in float32 (float64 for a float64 model)."""
        # The per-direction projections are pointwise, so they are computed once per pixel in image layout; the
        # scan reads them in each route's order (identical to projecting the four route copies, as the original).
        projected = torch.einsum("bdhw,kcd->bkchw", features, self.x_proj_weight)
        dt_low_rank, Bs, Cs = projected.split([self.dt_rank, self.state_size, self.state_size], dim=2)
        dts = torch.einsum("bkrhw,kdr->bkdhw", dt_low_rank, self.dt_proj_weight)
        compute_dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
        A = -torch.exp(self.A_log.to(compute_dtype))
        return ss2d_selective_scan(
            features,
            dts,
            A,
            Bs.contiguous(),
            Cs.contiguous(),
            self.D.to(compute_dtype),
            self.dt_proj_bias.reshape(-1).to(compute_dtype),
            backend=self.scan_backend,
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.in_proj(hidden_states)
        if self.gated:
            hidden_states, gate = hidden_states.chunk(2, dim=1 if self.channels_first else -1)
            gate = self.act(gate)
        features = to_image_layout(hidden_states, self.channels_first)
        features = self.act(self.conv2d(features))
        scanned = self.selective_scan_2d(features).to(features.dtype)
        scanned = self.out_norm(to_model_layout(scanned, self.channels_first))
        if self.gated:
            scanned = scanned * gate
        return self.out_proj(scanned)


class VMambaMLP(nn.Module):
    def __init__(self, config: VMambaConfig, hidden_size: int):
        super().__init__()
        intermediate_size = int(hidden_size * config.mlp_ratio)
        self.fc1 = VMambaLinear(hidden_size, intermediate_size, channels_first=config.channels_first)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = VMambaLinear(intermediate_size, hidden_size, channels_first=config.channels_first)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class VMambaLayer(GradientCheckpointingLayer):
    """One VSS block: x + SS2D(LN(x)), then x + MLP(LN(x)) when the config has an MLP (the original's VSSBlock)."""

    def __init__(self, config: VMambaConfig, stage_idx: int, drop_path: float = 0.0):
        super().__init__()
        hidden_size = config.hidden_sizes[stage_idx]
        norm_kwargs = dict(eps=config.layer_norm_eps, channels_first=config.channels_first)
        self.ssm_norm = VMambaLayerNorm(hidden_size, **norm_kwargs)
        self.ssm = VMambaSS2D(config, stage_idx)
        self.drop_path = VMambaDropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        if config.mlp_ratio > 0:
            self.mlp_norm = VMambaLayerNorm(hidden_size, **norm_kwargs)
            self.mlp = VMambaMLP(config, hidden_size)
        else:
            self.mlp_norm = self.mlp = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.drop_path(self.ssm(self.ssm_norm(hidden_states)))
        if self.mlp is not None:
            hidden_states = hidden_states + self.drop_path(self.mlp(self.mlp_norm(hidden_states)))
        return hidden_states


class VMambaPatchMerging(nn.Module):
    """Halve the resolution by concatenating each 2x2 neighbourhood (odd sizes padded with zeros), LayerNorm, linear."""

    def __init__(self, config: VMambaConfig, in_size: int, out_size: int):
        super().__init__()
        self.channels_first = config.channels_first
        self.norm = VMambaLayerNorm(4 * in_size, eps=config.layer_norm_eps, channels_first=config.channels_first)
        self.reduction = VMambaLinear(4 * in_size, out_size, bias=False, channels_first=config.channels_first)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        features = to_image_layout(hidden_states, self.channels_first)
        height, width = features.shape[-2:]
        features = F.pad(features, (0, width % 2, 0, height % 2))
        # Order of the original: (even row, even col), (odd row, even col), (even row, odd col), (odd row, odd col).
        merged = torch.cat(
            [features[..., 0::2, 0::2], features[..., 1::2, 0::2], features[..., 0::2, 1::2], features[..., 1::2, 1::2]],
            dim=1,
        )
        return self.reduction(self.norm(to_model_layout(merged, self.channels_first)))


class VMambaConvDownsample(nn.Module):
    """Halve the resolution with a 3x3 stride-2 convolution, then LayerNorm."""

    def __init__(self, config: VMambaConfig, in_size: int, out_size: int):
        super().__init__()
        self.channels_first = config.channels_first
        self.conv = nn.Conv2d(in_size, out_size, kernel_size=3, stride=2, padding=1)
        self.norm = VMambaLayerNorm(out_size, eps=config.layer_norm_eps, channels_first=config.channels_first)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        features = self.conv(to_image_layout(hidden_states, self.channels_first))
        return self.norm(to_model_layout(features, self.channels_first))


class VMambaStage(nn.Module):
    """Blocks of one resolution, followed by the downsample into the next stage (none after the last)."""

    def __init__(self, config: VMambaConfig, stage_idx: int, drop_path_rates: list[float]):
        super().__init__()
        self.layers = nn.ModuleList(
            [VMambaLayer(config, stage_idx, drop_path=rate) for rate in drop_path_rates]
        )
        if stage_idx == config.num_stages - 1:
            self.downsample = None
        else:
            in_size, out_size = config.hidden_sizes[stage_idx], config.hidden_sizes[stage_idx + 1]
            downsample_class = VMambaPatchMerging if config.downsample_type == "patch_merging" else VMambaConvDownsample
            self.downsample = downsample_class(config, in_size, out_size)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the stage output (before downsampling) and the input of the next stage."""
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        next_input = self.downsample(hidden_states) if self.downsample is not None else hidden_states
        return hidden_states, next_input


class VMambaPreTrainedModel(PreTrainedModel):
    config_class = VMambaConfig
    config: VMambaConfig
    base_model_prefix = "vmamba"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["VMambaLayer"]
    # The scan parameters lose too much in half precision (exp(dt * A) over thousands of steps).
    _keep_in_fp32_modules_strict = ["ssm.A_log", "ssm.D", "ssm.dt_proj_bias"]

    def _init_weights(self, module):
        """The original's initialisation (trunc-normal linears, S4D-real A, Mamba dt init); convolutions keep torch's."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            # torch's default Conv2d initialisation, as in the original (it never re-initialises convolutions)
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in = module.weight.shape[1] * module.weight[0, 0].numel()
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, VMambaSS2D):
            config = self.config
            # x_proj was built from nn.Linear layers in the original and kept their default uniform init.
            bound = 1 / math.sqrt(module.inner_size)
            init.uniform_(module.x_proj_weight, -bound, bound)
            dt_std = module.dt_rank**-0.5 * config.ssm_dt_scale
            init.uniform_(module.dt_proj_weight, -dt_std, dt_std)
            # dt bias: inverse softplus of step sizes drawn log-uniformly in [dt_min, dt_max].
            dt = torch.exp(
                torch.rand(module.dt_proj_bias.shape, device="cpu")
                * (math.log(config.ssm_dt_max) - math.log(config.ssm_dt_min))
                + math.log(config.ssm_dt_min)
            ).clamp(min=config.ssm_dt_init_floor)
            init.copy_(module.dt_proj_bias, dt + torch.log(-torch.expm1(-dt)))
            # S4D-real: A = -(1, 2, ..., N) for every channel, stored as log.
            a_log = torch.log(torch.arange(1, module.state_size + 1, dtype=torch.float32, device="cpu"))
            init.copy_(module.A_log, a_log.expand(module.A_log.shape[0], -1))
            init.ones_(module.D)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Also names every VMamba class in the config's `auto_map` (Transformers writes only the saved model's
        own), so a saved folder loads with trust_remote_code through AutoModel, AutoModelForImageClassification
        and AutoBackbone alike."""
        if self._auto_class is not None:  # registered for remote code (importing transformers_vmamba does it)
            module = self.__class__.__module__.rsplit(".", 1)[-1]
            classes = {
                "AutoModel": VMambaModel,
                "AutoModelForImageClassification": VMambaForImageClassification,
                "AutoBackbone": VMambaBackbone,
            }
            auto_map = {auto: f"{module}.{cls.__name__}" for auto, cls in classes.items()}
            self.config.auto_map = {**auto_map, **(getattr(self.config, "auto_map", None) or {})}
        return super().save_pretrained(save_directory, *args, **kwargs)


class VMambaModel(VMambaPreTrainedModel):
    """VMamba feature extractor: patch embedding, four stages of VSS blocks, final LayerNorm, global average pool."""

    def __init__(self, config: VMambaConfig):
        super().__init__(config)
        self.channels_first = config.channels_first
        self.embeddings = VMambaEmbeddings(config)
        rates = torch.linspace(0, config.drop_path_rate, sum(config.depths), device="cpu").tolist()
        offsets = [sum(config.depths[:i]) for i in range(config.num_stages + 1)]
        self.stages = nn.ModuleList(
            [VMambaStage(config, i, rates[offsets[i] : offsets[i + 1]]) for i in range(config.num_stages)]
        )
        self.layernorm = VMambaLayerNorm(
            config.num_features, eps=config.layer_norm_eps, channels_first=config.channels_first
        )
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPoolingAndNoAttention:
        r"""
        Returns `last_hidden_state` (batch, channels, height, width) after the final LayerNorm, `pooler_output`
        (batch, channels) its spatial mean, and with `output_hidden_states` a tuple of (batch, channels, height,
        width) maps: the patch embedding, then each stage's output before its downsample.
        """
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states

        hidden_states = self.embeddings(pixel_values)
        all_hidden_states = (to_image_layout(hidden_states, self.channels_first),) if output_hidden_states else None
        for stage in self.stages:
            stage_output, hidden_states = stage(hidden_states)
            if output_hidden_states:
                all_hidden_states += (to_image_layout(stage_output, self.channels_first),)

        last_hidden_state = to_image_layout(self.layernorm(hidden_states), self.channels_first)
        pooled_output = last_hidden_state.mean(dim=(-2, -1))
        return BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=last_hidden_state,
            pooler_output=pooled_output,
            hidden_states=all_hidden_states,
        )


class VMambaForImageClassification(VMambaPreTrainedModel):
    """VMamba with a linear classifier on the pooled features (e.g. ImageNet)."""

    accepts_loss_kwargs = False

    def __init__(self, config: VMambaConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vmamba = VMambaModel(config)
        self.classifier = nn.Linear(config.num_features, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutputWithNoAttention:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Targets for the loss: class indices (single-label), multi-hot floats (multi-label) or values
            (regression), as selected by `config.problem_type` (inferred from labels and num_labels when unset).
        """
        outputs = self.vmamba(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.classifier(outputs.pooler_output)
        loss = None
        if labels is not None:
            loss = self.loss_function(labels=labels, pooled_logits=logits, config=self.config)
        return ImageClassifierOutputWithNoAttention(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


class VMambaBackbone(BackboneMixin, VMambaPreTrainedModel):
    """VMamba as a backbone for dense heads (UperNet, Mask2Former, DETR, ...): multi-scale feature maps.

    Stage `stageN` is the output of stage N's blocks, taken before its downsample and passed through its own
    LayerNorm, as the original's detection/segmentation backbone (`Backbone_VSSM`, norms `outnorm0..3`) does.
    `stem` is the patch embedding, which already ends in a LayerNorm, so it gets no extra norm (the original has
    none either). Stages not in `config.out_features` get no norm and no parameters.
    """

    has_attentions = False

    def __init__(self, config: VMambaConfig):
        super().__init__(config)
        self.channels_first = config.channels_first
        self.embeddings = VMambaEmbeddings(config)
        rates = torch.linspace(0, config.drop_path_rate, sum(config.depths), device="cpu").tolist()
        offsets = [sum(config.depths[:i]) for i in range(config.num_stages + 1)]
        self.stages = nn.ModuleList(
            [VMambaStage(config, i, rates[offsets[i] : offsets[i + 1]]) for i in range(config.num_stages)]
        )
        self.num_features = [config.hidden_sizes[0]] + list(config.hidden_sizes)
        self.hidden_states_norms = nn.ModuleDict(
            {
                stage: VMambaLayerNorm(channels, eps=config.layer_norm_eps, channels_first=config.channels_first)
                for stage, channels in zip(self.out_features, self.channels)
                if stage != "stem"
            }
        )
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> BackboneOutput:
        r"""
        Returns `feature_maps`, one (batch, channels, height / stride, width / stride) map per entry of
        `config.out_features` (strides 4, 4, 8, 16, 32 for `stem`, `stage1`..`stage4`), and with
        `output_hidden_states` the un-normalised (batch, channels, height, width) maps of the patch embedding and of
        every stage (before its downsample).

        Example:
        ```python
        >>> import torch
        >>> from transformers_vmamba import VMambaBackbone, VMambaConfig

        >>> stages = ["stage1", "stage2", "stage3", "stage4"]
        >>> config = VMambaConfig.from_variant("vmamba-tiny-s1l8", out_features=stages)
        >>> backbone = VMambaBackbone(config)
        >>> [tuple(m.shape) for m in backbone(torch.randn(1, 3, 224, 224)).feature_maps]
        [(1, 96, 56, 56), (1, 192, 28, 28), (1, 384, 14, 14), (1, 768, 7, 7)]
        ```"""
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states

        hidden_states = self.embeddings(pixel_values)
        stage_outputs = [hidden_states]
        for stage in self.stages:
            stage_output, hidden_states = stage(hidden_states)
            stage_outputs.append(stage_output)

        feature_maps = ()
        for name, stage_output in zip(self.stage_names, stage_outputs):
            if name in self.out_features:
                if name in self.hidden_states_norms:
                    stage_output = self.hidden_states_norms[name](stage_output)
                # contiguous, as the original returns them: heads may .view() the maps
                feature_maps += (to_image_layout(stage_output, self.channels_first).contiguous(),)

        all_hidden_states = None
        if output_hidden_states:
            all_hidden_states = tuple(to_image_layout(output, self.channels_first) for output in stage_outputs)
        return BackboneOutput(feature_maps=feature_maps, hidden_states=all_hidden_states)


__all__ = [
    "VMambaBackbone",
    "VMambaForImageClassification",
    "VMambaModel",
    "VMambaPreTrainedModel",
    "ss2d_selective_scan",
    "resolve_scan_backend",
]
