# Copyright 2026 The transformers-vmamba authors. Licensed under the MIT license.
"""PyTorch VMamba (Visual State Space Model, arXiv:2401.10166).

Every block mixes tokens with SS2D: the feature map is read along four routes (row by row, column by column, and
both reversed), each route runs a selective scan (a Mamba-style input-dependent linear recurrence) and the four
results are merged back into the map. Activations are channels-last, (batch, height, width, channels), inside the
network, so every pointwise layer is a plain `nn.Linear` / `nn.LayerNorm`; outputs are (batch, channels, height,
width) like every Transformers vision model. This file only imports torch, transformers and its sibling modules, so
it ships unchanged as Hub remote code.
"""


import math
import re

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.backbone_utils import BackboneMixin, filter_output_hidden_states
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BackboneOutput,
    BaseModelOutputWithNoAttention,
    BaseModelOutputWithPoolingAndNoAttention,
    ImageClassifierOutputWithNoAttention,
)
from transformers.modeling_utils import PreTrainedModel
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, auto_docstring, logging
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_vmamba import VMambaConfig
from .ss2d import requested_backend, ss2d_scan_low_rank


logger = logging.get_logger(__name__)

NUM_DIRECTIONS = 4


def conv_channels_last(conv: nn.Conv2d, hidden_states: torch.Tensor) -> torch.Tensor:
    """Apply a convolution to a (B, H, W, C) map. The permuted views are NCHW tensors in channels_last memory
    format, which the CPU/GPU convolutions take and return as they are: no copies."""
    return conv(hidden_states.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class VMambaConv2d(nn.Conv2d):
    """`nn.Conv2d` that keeps its weight in channels_last memory format, the layout of the maps it reads. Given a
    plain (OIHW) weight, PyTorch's CPU convolution re-lays the weight out at every call: 20 ms of a 230 ms VMamba-T
    batch-1 forward (1 thread), mostly the last downsample's 10 MB weight. Every assignment of a weight parameter
    (construction, Transformers' loading, `load_state_dict(assign=True)`) goes through `__setattr__`; the parameter
    object is kept (only its strides change), so flags set on it before the assignment stay."""

    def __setattr__(self, name, value):
        if (
            name == "weight"
            and isinstance(value, nn.Parameter)
            and value.dim() == 4
            and not value.is_contiguous(memory_format=torch.channels_last)
        ):
            value.data = value.data.contiguous(memory_format=torch.channels_last)
        super().__setattr__(name, value)


def layer_norm_flat(norm: nn.LayerNorm, hidden_states: torch.Tensor) -> torch.Tensor:
    """LayerNorm of a (B, H, W, C) map computed on its (B, H * W, C) view, returned as a (B, H, W, C) view.

    Why: on CPU, torch.compile (Inductor) gives every 4-D tensor it stores next to a convolution the channels_last
    strides of an NCHW tensor. For our (B, H, W, C) maps that puts H innermost, and every kernel that reads or
    writes them transposes (compiled VMamba-T ran 0.93x eager). Tensors stored as 3-D keep their natural layout;
    the 4-D views cost nothing in eager."""
    height, width = hidden_states.shape[1:3]
    return norm(hidden_states.flatten(1, 2)).unflatten(1, (height, width))


def to_channels_first(hidden_states: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> (B, C, H, W) view, the layout of every output."""
    return hidden_states.permute(0, 3, 1, 2)


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


class VMambaEmbeddings(nn.Module):
    """Patch embedding: the image becomes a (B, H / patch_size, W / patch_size, C) map, ending in a LayerNorm."""

    def __init__(self, config: VMambaConfig):
        super().__init__()
        self.num_channels = config.num_channels
        self.patch_size = config.patch_size
        hidden_size = config.hidden_sizes[0]
        if config.patch_embed_type == "single_conv":
            self.conv1 = VMambaConv2d(config.num_channels, hidden_size, config.patch_size, stride=config.patch_size)
            self.norm1 = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
            self.act = self.conv2 = self.norm2 = None
        else:
            stride = config.patch_size // 2
            half = hidden_size // 2
            self.conv1 = VMambaConv2d(config.num_channels, half, stride + 1, stride=stride, padding=1)
            self.norm1 = nn.LayerNorm(half, eps=config.layer_norm_eps)
            self.act = nn.GELU()
            self.conv2 = VMambaConv2d(half, hidden_size, stride + 1, stride=stride, padding=1)
            self.norm2 = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.ndim != 4:
            raise ValueError(
                f"pixel_values must be (batch, channels, height, width), got shape {tuple(pixel_values.shape)}"
            )
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
        embeddings = self.conv1(pixel_values).permute(0, 2, 3, 1)
        if self.conv2 is None:
            return layer_norm_flat(self.norm1, embeddings)
        # the activation is applied to the stored (3-D) norm output, not to its 4-D view: see layer_norm_flat
        height, width = embeddings.shape[1:3]
        embeddings = self.act(self.norm1(embeddings.flatten(1, 2))).unflatten(1, (height, width))
        return layer_norm_flat(self.norm2, conv_channels_last(self.conv2, embeddings))


class VMambaSS2D(nn.Module):
    """The 2D selective-scan mixer (the original's SS2D) on a (B, H, W, C) map.

    The scan parameters keep the original's shapes, one slice per scan direction k:
    x_proj_weight (4, dt_rank + 2 * state, inner), dt_proj_weight (4, inner, dt_rank), dt_proj_bias (4, inner),
    A_log (4 * inner, state), D (4 * inner). A_log, D and dt_proj_bias are float32 whatever the model's dtype: the
    scan decays exp(dt * A) over thousands of steps.
    """

    def __init__(self, config: VMambaConfig, stage_idx: int):
        super().__init__()
        hidden_size = config.hidden_sizes[stage_idx]
        inner_size = config.inner_size(stage_idx)
        dt_rank = config.dt_rank(stage_idx)
        state_size = config.ssm_state_size
        self.gated = config.ssm_gate
        self.inner_size, self.dt_rank, self.state_size = inner_size, dt_rank, state_size

        self.in_proj = nn.Linear(hidden_size, inner_size * (2 if self.gated else 1), bias=False)
        self.act = ACT2FN[config.ssm_hidden_act]
        kernel_size = config.ssm_conv_kernel_size
        self.conv2d = VMambaConv2d(
            inner_size,
            inner_size,
            kernel_size,
            padding=(kernel_size - 1) // 2,
            groups=inner_size,
            bias=config.ssm_conv_bias,
        )
        self.x_proj_weight = nn.Parameter(torch.empty(NUM_DIRECTIONS, dt_rank + 2 * state_size, inner_size))
        self.dt_proj_weight = nn.Parameter(torch.empty(NUM_DIRECTIONS, inner_size, dt_rank))
        float32 = dict(dtype=torch.float32)
        self.dt_proj_bias = nn.Parameter(torch.empty(NUM_DIRECTIONS, inner_size, **float32))
        self.A_log = nn.Parameter(torch.empty(NUM_DIRECTIONS * inner_size, state_size, **float32))
        self.D = nn.Parameter(torch.empty(NUM_DIRECTIONS * inner_size, **float32))
        self.out_norm = nn.LayerNorm(inner_size, eps=config.layer_norm_eps)
        self.out_proj = nn.Linear(inner_size, hidden_size, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # Everything stored is (B, H * W, C), viewed as (B, H, W, C) where a map is needed: see layer_norm_flat.
        batch, height, width, _ = hidden_states.shape
        hidden_states = self.in_proj(hidden_states.flatten(1, 2))
        if self.gated:
            hidden_states, gate = hidden_states.chunk(2, dim=-1)
        hidden_states = hidden_states.unflatten(1, (height, width))
        features = self.act(conv_channels_last(self.conv2d, hidden_states).flatten(1, 2))
        # The per-direction projections are pointwise, so they are computed once per position and read by the scan
        # in each route's order (identical to projecting the four route copies, as the original does).
        projected = F.linear(features, self.x_proj_weight.flatten(0, 1))
        projected = projected.view(batch, height, width, NUM_DIRECTIONS, self.dt_rank + 2 * self.state_size)
        features = features.unflatten(1, (height, width))
        dt_low_rank, B, C = projected.split([self.dt_rank, self.state_size, self.state_size], dim=-1)
        scan_dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
        A = -torch.exp(self.A_log.to(scan_dtype)).view(NUM_DIRECTIONS, self.inner_size, self.state_size)
        # dt = dt_low_rank @ dt_proj_weight per direction, formed inside the operator (not kept for backward).
        scanned = ss2d_scan_low_rank(
            features,
            dt_low_rank,
            self.dt_proj_weight,
            A,
            B,
            C,
            self.D.to(scan_dtype).view(NUM_DIRECTIONS, self.inner_size),
            self.dt_proj_bias.to(scan_dtype),
        )
        scanned = self.out_norm(scanned.to(features.dtype).flatten(1, 2))
        if self.gated:
            scanned = scanned * self.act(gate)
        return self.out_proj(scanned).unflatten(1, (height, width))


class VMambaMLP(nn.Module):
    def __init__(self, config: VMambaConfig, hidden_size: int):
        super().__init__()
        intermediate_size = int(hidden_size * config.mlp_ratio)
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class VMambaLayer(GradientCheckpointingLayer):
    """One VSS block: x + SS2D(LN(x)), then x + MLP(LN(x)) when the config has an MLP (the original's VSSBlock)."""

    def __init__(self, config: VMambaConfig, stage_idx: int, drop_path: float = 0.0):
        super().__init__()
        hidden_size = config.hidden_sizes[stage_idx]
        self.ssm_norm = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.ssm = VMambaSS2D(config, stage_idx)
        self.drop_path = VMambaDropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        if config.mlp_ratio > 0:
            self.mlp_norm = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
            self.mlp = VMambaMLP(config, hidden_size)
        else:
            self.mlp_norm = self.mlp = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # The residual stream is stored as (B, H * W, C) and only viewed as a map (see layer_norm_flat).
        height, width = hidden_states.shape[1:3]
        hidden_states = hidden_states.flatten(1, 2)
        mixed = self.ssm(self.ssm_norm(hidden_states).unflatten(1, (height, width)))
        hidden_states = hidden_states + self.drop_path(mixed.flatten(1, 2))
        if self.mlp is not None:
            hidden_states = hidden_states + self.drop_path(self.mlp(self.mlp_norm(hidden_states)))
        return hidden_states.unflatten(1, (height, width))


class VMambaPatchMerging(nn.Module):
    """Halve the resolution: each 2x2 neighbourhood concatenated (odd sizes padded with zeros), LayerNorm, linear."""

    def __init__(self, config: VMambaConfig, in_size: int, out_size: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * in_size, eps=config.layer_norm_eps)
        self.reduction = nn.Linear(4 * in_size, out_size, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = hidden_states.shape
        half_height, half_width = (height + 1) // 2, (width + 1) // 2
        hidden_states = F.pad(hidden_states, (0, 0, 0, 2 * half_width - width, 0, 2 * half_height - height))
        # (B, H/2, row parity, W/2, col parity, C) -> the original's order of the four neighbours: (even row, even
        # col), (odd row, even col), (even row, odd col), (odd row, odd col), i.e. column parity major. Written as
        # one reshape (not four strided slices) so that export sees every size as a plain function of H and W.
        merged = hidden_states.view(batch, half_height, 2, half_width, 2, channels).permute(0, 1, 3, 4, 2, 5)
        merged = merged.reshape(batch, half_height * half_width, 4 * channels)  # stored 3-D: see layer_norm_flat
        return self.reduction(self.norm(merged)).unflatten(1, (half_height, half_width))


class VMambaConvDownsample(nn.Module):
    """Halve the resolution with a 3x3 stride-2 convolution, then LayerNorm."""

    def __init__(self, config: VMambaConfig, in_size: int, out_size: int):
        super().__init__()
        self.conv = VMambaConv2d(in_size, out_size, kernel_size=3, stride=2, padding=1)
        self.norm = nn.LayerNorm(out_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return layer_norm_flat(self.norm, conv_channels_last(self.conv, hidden_states))


class VMambaStage(nn.Module):
    """Blocks of one resolution, followed by the downsample into the next stage (none after the last)."""

    def __init__(self, config: VMambaConfig, stage_idx: int, drop_path_rates: list[float]):
        super().__init__()
        self.layers = nn.ModuleList([VMambaLayer(config, stage_idx, drop_path=rate) for rate in drop_path_rates])
        if stage_idx == config.num_stages - 1:
            self.downsample = None
        else:
            in_size, out_size = config.hidden_sizes[stage_idx], config.hidden_sizes[stage_idx + 1]
            patch_merging = config.downsample_type == "patch_merging"
            downsample_class = VMambaPatchMerging if patch_merging else VMambaConvDownsample
            self.downsample = downsample_class(config, in_size, out_size)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the stage output (before downsampling; what `hidden_states` records) and the next stage's input."""
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        next_input = self.downsample(hidden_states) if self.downsample is not None else hidden_states
        return hidden_states, next_input


@auto_docstring
class VMambaPreTrainedModel(PreTrainedModel):
    config: VMambaConfig
    base_model_prefix = "vmamba"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["VMambaLayer"]
    # The scan parameters lose too much in half precision (exp(dt * A) over thousands of steps).
    _keep_in_fp32_modules_strict = ["ssm.A_log", "ssm.D", "ssm.dt_proj_bias"]

    def __init__(self, config: VMambaConfig, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        requested_backend()  # a bad VMAMBA_SCAN_BACKEND is reported when the model is built, not at its first call

    def _init_weights(self, module):
        """The original's initialisation (trunc-normal linears, S4D-real A, Mamba dt init); convolutions keep
        torch's."""
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
            # dt bias: inverse softplus of step sizes drawn log-uniformly in [dt_min, dt_max], computed in float32.
            dt = torch.exp(
                torch.rand(module.dt_proj_bias.shape, device="cpu", dtype=torch.float32)
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


class VMambaEncoder(VMambaPreTrainedModel):
    """The stages, shared by `VMambaModel` and `VMambaBackbone`. Records as `hidden_states` its input (the patch
    embedding) and every stage's output before its downsample, all (B, H, W, C)."""

    main_input_name = "hidden_states"
    _can_record_outputs = {"hidden_states": OutputRecorder(VMambaStage, index=0)}

    def __init__(self, config: VMambaConfig):
        super().__init__(config)
        rates = torch.linspace(0, config.drop_path_rate, sum(config.depths), device="cpu").split(config.depths)
        self.stages = nn.ModuleList(
            [VMambaStage(config, index, stage_rates.tolist()) for index, stage_rates in enumerate(rates)]
        )
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self, hidden_states: torch.Tensor, **kwargs: Unpack[TransformersKwargs]
    ) -> BaseModelOutputWithNoAttention:
        for stage in self.stages:
            _, hidden_states = stage(hidden_states)
        return BaseModelOutputWithNoAttention(last_hidden_state=hidden_states)


@auto_docstring
class VMambaModel(VMambaPreTrainedModel):
    def __init__(self, config: VMambaConfig):
        super().__init__(config)
        self.embeddings = VMambaEmbeddings(config)
        self.encoder = VMambaEncoder(config)
        self.layernorm = nn.LayerNorm(config.num_features, eps=config.layer_norm_eps)
        self.post_init()

    @can_return_tuple
    @auto_docstring
    def forward(
        self, pixel_values: torch.Tensor | None = None, **kwargs: Unpack[TransformersKwargs]
    ) -> BaseModelOutputWithPoolingAndNoAttention:
        r"""
        Returns `last_hidden_state` (batch, channels, height, width) after the final LayerNorm, `pooler_output` its
        spatial mean, and with `output_hidden_states` the patch embedding and each stage's output before its
        downsample, all (batch, channels, height, width).
        """
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        encoder_outputs = self.encoder(self.embeddings(pixel_values), **kwargs)
        last_hidden_state = to_channels_first(layer_norm_flat(self.layernorm, encoder_outputs.last_hidden_state))
        hidden_states = encoder_outputs.hidden_states
        return BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=last_hidden_state,
            pooler_output=last_hidden_state.mean(dim=(-2, -1)),
            hidden_states=tuple(map(to_channels_first, hidden_states)) if hidden_states is not None else None,
        )


@auto_docstring(
    custom_intro="""
    VMamba with a linear classifier on the pooled features (e.g. for ImageNet).
    """
)
class VMambaForImageClassification(VMambaPreTrainedModel):
    accepts_loss_kwargs = False

    def __init__(self, config: VMambaConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vmamba = VMambaModel(config)
        self.classifier = nn.Linear(config.num_features, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    @can_return_tuple
    @auto_docstring
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> ImageClassifierOutputWithNoAttention:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Targets for the loss: class indices (single-label), multi-hot floats (multi-label) or values
            (regression), as selected by `config.problem_type` (inferred from labels and num_labels when unset).
        """
        outputs = self.vmamba(pixel_values, **kwargs)
        logits = self.classifier(outputs.pooler_output)
        loss = None
        if labels is not None:
            loss = self.loss_function(labels=labels, pooled_logits=logits, config=self.config)
        return ImageClassifierOutputWithNoAttention(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


@auto_docstring(
    custom_intro="""
    VMamba backbone for dense heads (UperNet, Mask2Former, DETR, ...): multi-scale feature maps. Stage `stageN` is
    the output of stage N's blocks, taken before its downsample and passed through its own LayerNorm, as the
    original's detection/segmentation backbone (`Backbone_VSSM`, norms `outnorm0..3`) does; `stem`, the patch
    embedding, already ends in a LayerNorm and gets none.
    """
)
class VMambaBackbone(BackboneMixin, VMambaPreTrainedModel):
    has_attentions = False

    def __init__(self, config: VMambaConfig):
        super().__init__(config)
        self.embeddings = VMambaEmbeddings(config)
        self.encoder = VMambaEncoder(config)
        self.num_features = [config.hidden_sizes[0]] + list(config.hidden_sizes)
        self.hidden_states_norms = nn.ModuleDict(
            {
                stage: nn.LayerNorm(channels, eps=config.layer_norm_eps)
                for stage, channels in zip(self.out_features, self.channels)
                if stage != "stem"
            }
        )
        self.post_init()

    def _adjust_missing_and_unexpected_keys(self, loading_info) -> None:
        """A classifier (or VMambaModel) checkpoint is the usual starting point of a backbone: its final norm and
        head are deliberately unused and the stage norms it lacks start as the identity. Say so in one line instead
        of Transformers' missing/unexpected report, in that case only."""
        super()._adjust_missing_and_unexpected_keys(loading_info)
        trunk_only = re.compile(r"^(vmamba\.)?layernorm\.|^classifier\.")
        dropped = {key for key in loading_info.unexpected_keys if trunk_only.search(key)}
        if not dropped:
            return
        new_norms = {key for key in loading_info.missing_keys if key.startswith("hidden_states_norms.")}
        loading_info.unexpected_keys -= dropped
        loading_info.missing_keys -= new_norms
        logger.info(
            "VMambaBackbone from a classifier checkpoint: its final LayerNorm and head are not used; the output norms "
            f"of {sorted({key.split('.')[1] for key in new_norms})} start at weight 1, bias 0."
        )

    @can_return_tuple
    @filter_output_hidden_states
    @auto_docstring
    def forward(self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> BackboneOutput:
        r"""
        Returns `feature_maps`, one (batch, channels, height / stride, width / stride) map per entry of
        `config.out_features` (strides 4, 4, 8, 16, 32 for `stem`, `stage1`..`stage4`), and with
        `output_hidden_states` the un-normalised maps of the patch embedding and of every stage.

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
        kwargs["output_hidden_states"] = True  # the feature maps are taken from them
        hidden_states = self.encoder(self.embeddings(pixel_values), **kwargs).hidden_states
        feature_maps = []
        for stage, hidden_state in zip(self.stage_names, hidden_states):
            if stage in self.out_features:
                if stage in self.hidden_states_norms:
                    hidden_state = layer_norm_flat(self.hidden_states_norms[stage], hidden_state)
                # contiguous, as the original returns them: heads may .view() the maps
                feature_maps.append(to_channels_first(hidden_state).contiguous())
        return BackboneOutput(
            feature_maps=tuple(feature_maps), hidden_states=tuple(map(to_channels_first, hidden_states))
        )


__all__ = [
    "VMambaBackbone",
    "VMambaEncoder",
    "VMambaForImageClassification",
    "VMambaModel",
    "VMambaPreTrainedModel",
]
