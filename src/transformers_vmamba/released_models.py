"""The nine ImageNet-1k classification checkpoints and the seven ADE20K UperNet segmentation checkpoints released by
the original VMamba authors.

Facts, not code, taken from the original repository (MzeroMiko/VMamba, commit
2ed52ead062a51a64521ed3871d52914bf532876): download URLs, published top-1, rounded params and FLOPs
come from its `assets/performance.md` classification table (the README shows a subset of it);
exact parameter counts come from the full-size key/shape manifests in `tests/fixtures/original/manifests`
(built from the original yaml configs). The authors state that every released classification model
was trained with EMA except Vanilla-VMamba-T, so that one defaults to the `model` weights and the
others to `model_ema`.

The segmentation entries (`RELEASED_SEGMENTATION_MODELS`) are the original's "Semantic Segmentation on ADE20K" table
of `assets/performance.md` (the README shows three of its rows): checkpoint URLs, the published mIoU single-scale
(SS) and multi-scale (MS, the original's `--tta`), rounded params and FLOPs, and the mmsegmentation config each was
trained with (`segmentation/configs/vssm/` for Vanilla-VMamba, `segmentation/configs/vssm1/` for VMamba v2; both
VMamba-T rows link the same vssm1 tiny config, whose commented-out lines are the s2l5 backbone). Each is an
mmsegmentation UperNet (UPerHead, 512 channels, pool scales 1/2/3/6; FCNHead auxiliary head on stage 3, 256
channels, loss weight 0.4), 150 classes, 512x512 crops, 160k iterations; the file is an mmengine checkpoint whose
weights are under `state_dict`.
"""

from __future__ import annotations

from dataclasses import dataclass


ORIGINAL_REPOSITORY = "MzeroMiko/VMamba"
ORIGINAL_COMMIT = "2ed52ead062a51a64521ed3871d52914bf532876"
PAPER_URL = "https://arxiv.org/abs/2401.10166"
PAPER_CITATION = """@article{liu2024vmamba,
  title={VMamba: Visual State Space Model},
  author={Liu, Yue and Tian, Yunjie and Zhao, Yuzhong and Yu, Hongtian and Xie, Lingxi and Wang, Yaowei and
          Ye, Qixiang and Liu, Yunfan},
  journal={arXiv preprint arXiv:2401.10166},
  year={2024}
}"""
_RELEASES = "https://github.com/MzeroMiko/VMamba/releases/download"


@dataclass(frozen=True)
class ReleasedModel:
    name: str  # our variant name, as accepted by `VMambaConfig.from_variant`
    builder: str  # the original's builder function / manifest name
    title: str  # the name the original's tables use
    url: str
    original_config: str  # yaml under classification/configs/vssm/ in the original repository
    top1: float  # published ImageNet-1k top-1 (%), 224x224
    num_parameters: int  # exact, 1000-class head included
    params_published: str  # as the original's table rounds it
    flops: str  # as published (with head, FLOPs counted the original's current way)
    default_weights_key: str  # the weights the published accuracy was measured with

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def variant(self) -> str:
        """The `VMambaConfig` variant of the architecture (the model's own name)."""
        return self.name

    @property
    def family(self) -> str:
        """"v0", "v2" or "v2v", as `VMambaConfig.family` says of the architecture (the one owner of that fact)."""
        from .configuration_vmamba import VMambaConfig

        return VMambaConfig.from_variant(self.name).family


RELEASED_MODELS: dict[str, ReleasedModel] = {
    model.name: model
    for model in [
        ReleasedModel(
            "vanilla-vmamba-tiny", "vanilla_vmamba_tiny", "Vanilla-VMamba-T",
            f"{_RELEASES}/%23v0cls/vssmtiny_dp01_ckpt_epoch_292.pth", "vmambav0_tiny_224.yaml",
            82.2, 22_893_448, "23M", "5.6G", "model",
        ),
        ReleasedModel(
            "vanilla-vmamba-small", "vanilla_vmamba_small", "Vanilla-VMamba-S",
            f"{_RELEASES}/%23v0cls/vssmsmall_dp03_ckpt_epoch_238.pth", "vmambav0_small_224.yaml",
            83.5, 44_417_416, "44M", "11.2G", "model_ema",
        ),
        ReleasedModel(
            "vanilla-vmamba-base", "vanilla_vmamba_base", "Vanilla-VMamba-B",
            f"{_RELEASES}/%23v0cls/vssmbase_dp06_ckpt_epoch_241.pth", "vmambav0_base_224.yaml",
            83.7, 76_254_056, "76M", "18.0G", "model_ema",
        ),
        ReleasedModel(
            "vmamba-tiny-s2l5", "vmamba_tiny_s2l5", "VMamba-T[s2l5]",
            f"{_RELEASES}/%23v2cls/vssm_tiny_0230_ckpt_epoch_262.pth", "vmambav2_tiny_224.yaml",
            82.5, 30_705_832, "31M", "4.9G", "model_ema",
        ),
        ReleasedModel(
            "vmamba-small-s2l15", "vmamba_small_s2l15", "VMamba-S[s2l15]",
            f"{_RELEASES}/%23v2cls/vssm_small_0229_ckpt_epoch_222.pth", "vmambav2_small_224.yaml",
            83.6, 50_147_752, "50M", "8.7G", "model_ema",
        ),
        ReleasedModel(
            "vmamba-base-s2l15", "vmamba_base_s2l15", "VMamba-B[s2l15]",
            f"{_RELEASES}/%23v2cls/vssm_base_0229_ckpt_epoch_237.pth", "vmambav2_base_224.yaml",
            83.9, 88_557_800, "89M", "15.4G", "model_ema",
        ),
        ReleasedModel(
            "vmamba-tiny-s1l8", "vmamba_tiny_s1l8", "VMamba-T[s1l8]",
            f"{_RELEASES}/%23v2cls/vssm1_tiny_0230s_ckpt_epoch_264.pth", "vmambav2v_tiny_224.yaml",
            82.6, 30_249_064, "30M", "4.9G", "model_ema",
        ),
        ReleasedModel(
            "vmamba-small-s1l20", "vmamba_small_s1l20", "VMamba-S[s1l20]",
            f"{_RELEASES}/%23v2cls/vssm1_small_0229s_ckpt_epoch_240.pth", "vmambav2v_small_224.yaml",
            83.3, 49_012_840, "49M", "8.6G", "model_ema",
        ),
        ReleasedModel(
            "vmamba-base-s1l20", "vmamba_base_s1l20", "VMamba-B[s1l20]",
            f"{_RELEASES}/%23v2cls/vssm1_base_0229s_ckpt_epoch_225.pth", "vmambav2v_base_224.yaml",
            83.8, 86_614_504, "87M", "15.2G", "model_ema",
        ),
    ]
}


@dataclass(frozen=True)
class ReleasedSegmentationModel:
    """A released ADE20K UperNet checkpoint: its backbone is the classification variant `backbone`."""

    name: str  # our name: "upernet-" + the backbone variant
    backbone: str  # the VMamba variant of the backbone (a key of `VARIANTS` and of `RELEASED_MODELS`)
    title: str  # the Backbone column of the original's table
    url: str
    original_config: str  # under segmentation/configs/ in the original repository
    miou_ss: float  # published ADE20K val mIoU (%), single-scale
    miou_ms: float  # published ADE20K val mIoU (%), multi-scale (the original's --tta)
    params_published: str  # as the original's table rounds it (whole segmentor)
    flops: str  # as published (512x2048 input, FLOPs counted the original's current way)
    crop_size: int = 512
    num_labels: int = 150
    default_weights_key: str = "state_dict"  # mmengine saves the segmentor's weights there

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def variant(self) -> str:
        """The `VMambaConfig` variant the backbone's weights must match."""
        return self.backbone

    @property
    def family(self) -> str:
        from .configuration_vmamba import VMambaConfig

        return VMambaConfig.from_variant(self.backbone).family


_SEG_CONFIGS = "segmentation/configs"
RELEASED_SEGMENTATION_MODELS: dict[str, ReleasedSegmentationModel] = {
    model.name: model
    for model in [
        ReleasedSegmentationModel(
            "upernet-vanilla-vmamba-tiny", "vanilla-vmamba-tiny", "Vanilla-VMamba-T",
            f"{_RELEASES}/%23v0seg/vssmtiny_upernet_4xb4-160k_ade20k-512x512_iter_160000.pth",
            f"{_SEG_CONFIGS}/vssm/upernet_vssm_4xb4-160k_ade20k-512x512_tiny.py", 47.3, 48.3, "55M", "964G",
        ),
        ReleasedSegmentationModel(
            "upernet-vanilla-vmamba-small", "vanilla-vmamba-small", "Vanilla-VMamba-S",
            f"{_RELEASES}/%23v0seg/vssmsmall_upernet_4xb4-160k_ade20k-512x512_iter_160000.pth",
            f"{_SEG_CONFIGS}/vssm/upernet_vssm_4xb4-160k_ade20k-512x512_small.py", 49.5, 50.5, "76M", "1081G",
        ),
        ReleasedSegmentationModel(
            "upernet-vanilla-vmamba-base", "vanilla-vmamba-base", "Vanilla-VMamba-B",
            f"{_RELEASES}/%23v0seg/vssmbase_upernet_4xb4-160k_ade20k-512x512_iter_128000.pth",
            f"{_SEG_CONFIGS}/vssm/upernet_vssm_4xb4-160k_ade20k-512x512_base.py", 50.0, 51.3, "110M", "1226G",
        ),
        ReleasedSegmentationModel(
            "upernet-vmamba-tiny-s2l5", "vmamba-tiny-s2l5", "VMamba-T[s2l5]",
            f"{_RELEASES}/%23v2seg/upernet_vssm_4xb4-160k_ade20k-512x512_tiny_iter_160000.pth",
            f"{_SEG_CONFIGS}/vssm1/upernet_vssm_4xb4-160k_ade20k-512x512_tiny.py", 48.3, 48.6, "62M", "948G",
        ),
        ReleasedSegmentationModel(
            "upernet-vmamba-small-s2l15", "vmamba-small-s2l15", "VMamba-S[s2l15]",
            f"{_RELEASES}/%23v2seg/upernet_vssm_4xb4-160k_ade20k-512x512_small_iter_144000.pth",
            f"{_SEG_CONFIGS}/vssm1/upernet_vssm_4xb4-160k_ade20k-512x512_small.py", 50.6, 51.2, "82M", "1028G",
        ),
        ReleasedSegmentationModel(
            "upernet-vmamba-base-s2l15", "vmamba-base-s2l15", "VMamba-B[s2l15]",
            f"{_RELEASES}/%23v2seg/upernet_vssm_4xb4-160k_ade20k-512x512_base_iter_160000.pth",
            f"{_SEG_CONFIGS}/vssm1/upernet_vssm_4xb4-160k_ade20k-512x512_base.py", 51.0, 51.6, "122M", "1170G",
        ),
        ReleasedSegmentationModel(
            "upernet-vmamba-tiny-s1l8", "vmamba-tiny-s1l8", "VMamba-T[s1l8]",
            f"{_RELEASES}/%23v2seg/upernet_vssm_4xb4-160k_ade20k-512x512_tiny_s_iter_160000.pth",
            f"{_SEG_CONFIGS}/vssm1/upernet_vssm_4xb4-160k_ade20k-512x512_tiny.py", 47.9, 48.8, "62M", "949G",
        ),
    ]
}

AnyRelease = ReleasedModel | ReleasedSegmentationModel


class UnknownModelError(ValueError):
    pass


def find_release(source: str) -> AnyRelease | None:
    """The released checkpoint (classifier or segmentor) a URL or file name is (the authors' own file), or None."""
    import urllib.parse

    name = urllib.parse.unquote(str(source).replace("\\", "/").rsplit("/", 1)[-1])
    for model in [*RELEASED_MODELS.values(), *RELEASED_SEGMENTATION_MODELS.values()]:
        if source == model.url or name == model.file_name:
            return model
    return None


def get_released_model(name: str) -> AnyRelease:
    """Look a model up by our name or by the original's builder name (`vmamba_tiny_s2l5`); segmentation models by
    their name (`upernet-vmamba-tiny-s2l5`)."""
    key = name.strip().lower().replace("_", "-")
    for model in RELEASED_MODELS.values():
        if key in (model.name, model.builder.replace("_", "-")):
            return model
    if key in RELEASED_SEGMENTATION_MODELS:
        return RELEASED_SEGMENTATION_MODELS[key]
    known = ", ".join([*RELEASED_MODELS, *RELEASED_SEGMENTATION_MODELS])
    raise UnknownModelError(f"unknown model name {name!r}; known names: {known}")


def markdown_table() -> str:
    """The README table of released models (one row per checkpoint)."""
    rows = [
        "| name | original | family | top-1 (%) | params | FLOPs | default weights | checkpoint |",
        "| --- | --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for m in RELEASED_MODELS.values():
        rows.append(
            f"| `{m.name}` | {m.title} | {m.family} | {m.top1} | {m.num_parameters / 1e6:.2f}M | {m.flops} "
            f"| `{m.default_weights_key}` | [{m.file_name}]({m.url}) |"
        )
    return "\n".join(rows)


def segmentation_markdown_table() -> str:
    """The README table of released ADE20K UperNet checkpoints, with the original's published mIoU."""
    rows = [
        "| name | original backbone | family | mIoU SS (%) | mIoU MS (%) | params | FLOPs | original config "
        "| checkpoint |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for m in RELEASED_SEGMENTATION_MODELS.values():
        config = m.original_config.removeprefix(_SEG_CONFIGS + "/")
        rows.append(
            f"| `{m.name}` | {m.title} | {m.family} | {m.miou_ss} | {m.miou_ms} | {m.params_published} | {m.flops} "
            f"| `{config}` | [{m.file_name}]({m.url}) |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
    print()
    print(segmentation_markdown_table())
