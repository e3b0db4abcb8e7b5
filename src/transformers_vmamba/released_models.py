"""The nine ImageNet-1k classification checkpoints released by the original VMamba authors.

Facts, not code, taken from the original repository (MzeroMiko/VMamba, commit
2ed52ead062a51a64521ed3871d52914bf532876): download URLs, published top-1, rounded params and FLOPs
come from its `assets/performance.md` classification table (the README shows a subset of it);
exact parameter counts come from the full-size key/shape manifests in `tests/fixtures/original/manifests`
(built from the original yaml configs). The authors state that every released classification model
was trained with EMA except Vanilla-VMamba-T, so that one defaults to the `model` weights and the
others to `model_ema`.
"""

from __future__ import annotations

from dataclasses import dataclass


ORIGINAL_REPOSITORY = "MzeroMiko/VMamba"
ORIGINAL_COMMIT = "2ed52ead062a51a64521ed3871d52914bf532876"
PAPER_URL = "https://arxiv.org/abs/2401.10166"
PAPER_CITATION = """@article{liu2024vmamba,
  title={VMamba: Visual State Space Model},
  author={Liu, Yue and Tian, Yunjie and Zhao, Yuzhong and Yu, Hongtian and Xie, Lingxi and Wang, Yaowei and Ye, Qixiang and Liu, Yunfan},
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


class UnknownModelError(ValueError):
    pass


def find_release(source: str) -> ReleasedModel | None:
    """The released checkpoint a URL or file name is (the authors' own file), or None."""
    import urllib.parse

    name = urllib.parse.unquote(str(source).replace("\\", "/").rsplit("/", 1)[-1])
    for model in RELEASED_MODELS.values():
        if source == model.url or name == model.file_name:
            return model
    return None


def get_released_model(name: str) -> ReleasedModel:
    """Look a model up by our name or by the original's builder name (`vmamba_tiny_s2l5`)."""
    key = name.strip().lower().replace("_", "-")
    for model in RELEASED_MODELS.values():
        if key in (model.name, model.builder.replace("_", "-")):
            return model
    raise UnknownModelError(f"unknown model name {name!r}; known names: {', '.join(RELEASED_MODELS)}")


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


if __name__ == "__main__":
    print(markdown_table())
