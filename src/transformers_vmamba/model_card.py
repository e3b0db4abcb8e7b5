"""Model card (README.md with Hub metadata) for a converted VMamba checkpoint."""

from __future__ import annotations

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .released_models import ORIGINAL_COMMIT, ORIGINAL_REPOSITORY, PAPER_CITATION, PAPER_URL, ReleasedModel


PERFORMANCE_TABLE_URL = f"https://github.com/{ORIGINAL_REPOSITORY}/blob/{ORIGINAL_COMMIT}/assets/performance.md"
TAGS = ["vision", "image-classification", "vmamba", "mamba", "state-space-model", "custom_code"]


def build_model_card(
    *,
    model_id: str,
    num_labels: int,
    num_parameters: int,
    source: str,
    weights_key: str,
    released: ReleasedModel | None = None,
    official: bool = False,
    out_features: list[str] | None = None,
) -> ModelCard:
    """Published metrics go into the card only when these exact weights are the ones the authors measured.

    `released` names the architecture; `official` says the file is the authors' release itself (recognised by its
    URL or file name), and `weights_key` is the entry converted. Other weights get the facts but no metric.
    `out_features` marks a backbone (from a detection/segmentation checkpoint): its card claims no ImageNet metric
    and shows backbone usage instead of the classification pipeline.
    """
    backbone = out_features is not None
    is_imagenet = num_labels == 1000 and not backbone
    measured = not backbone and released is not None and official and weights_key == released.default_weights_key
    eval_results = None
    if measured:
        eval_results = [
            EvalResult(
                task_type="image-classification",
                task_name="Image Classification",
                dataset_type="imagenet-1k",
                dataset_name="ImageNet-1k",
                dataset_split="validation",
                metric_type="accuracy",
                metric_name="Top-1 accuracy (%)",
                metric_value=released.top1,
                source_name="VMamba (original repository)",
                source_url=PERFORMANCE_TABLE_URL,
            )
        ]
    data = ModelCardData(
        license="mit",
        library_name="transformers",
        pipeline_tag="image-feature-extraction" if backbone else "image-classification",
        tags=[("image-feature-extraction" if backbone and tag == "image-classification" else tag) for tag in TAGS]
        + (["backbone"] if backbone else []),
        datasets=["imagenet-1k"] if is_imagenet else None,
        model_name=model_id.rsplit("/", 1)[-1],
        eval_results=eval_results,
    )

    if backbone:
        architecture = f"VMamba {released.family} ({released.title}, `{released.name}`)" if released else "VMamba"
        title = f"{architecture} backbone (converted detection/segmentation checkpoint)"
        facts = [
            "- Backbone only: the decode/detection heads and necks of the source checkpoint are not converted",
            f"- Output features: {', '.join(out_features)} (each with the per-stage output norm of the original)",
            f"- Parameters: {num_parameters:,}",
            f"- Source checkpoint: `{source}`, weights `{weights_key}`",
        ]
    elif released is not None:
        title = f"VMamba: {released.title} (`{released.name}`), ImageNet-1k"
        facts = [
            f"- Architecture: VMamba {released.family} ({released.title}), original config "
            f"`classification/configs/vssm/{released.original_config}`",
            f"- Parameters: {num_parameters / 1e6:.2f}M; FLOPs (224x224, as published): {released.flops}",
            f"- Published ImageNet-1k top-1 (224x224): {released.top1}% "
            f"([original results table]({PERFORMANCE_TABLE_URL}))",
            f"- Source checkpoint: [{released.file_name}]({released.url}), weights `{weights_key}`"
            if official
            else f"- Source checkpoint: `{source}` (not the authors' release file), weights `{weights_key}`",
        ]
        if not official:
            facts.append(
                "- Note: these weights are not the released checkpoint, so its published accuracy does not apply."
            )
        elif not measured:
            facts.append(
                f"- Note: the published accuracy was measured with the `{released.default_weights_key}` weights; "
                f"this conversion holds `{weights_key}`, so no metric is claimed for it."
            )
    else:
        title = "VMamba image classifier (converted checkpoint)"
        facts = [
            f"- Parameters: {num_parameters:,}, {num_labels} classes",
            f"- Source checkpoint: `{source}`, weights `{weights_key}`",
        ]
    facts.append(
        f"- Original code: [{ORIGINAL_REPOSITORY}](https://github.com/{ORIGINAL_REPOSITORY}) "
        f"at commit `{ORIGINAL_COMMIT}`"
    )
    facts.append(f"- Paper: [VMamba: Visual State Space Model]({PAPER_URL})")

    origin = (
        "the original authors' released weights"
        if official
        else "weights from an original-format VMamba checkpoint"
    )
    if backbone:
        origin = "the VMamba backbone of a detection/segmentation checkpoint (backbone only)"
        labels_note = "It returns feature maps for a dense-prediction head; it does not classify images."
    else:
        labels_note = (
            "It predicts the 1000 ImageNet-1k classes."
            if is_imagenet
            else f"Its {num_labels} classes carry generic names (`LABEL_0`, ...)."
        )
    usage = BACKBONE_USAGE if backbone else CLASSIFIER_USAGE
    holds = (
        f"This repository holds {origin}, converted to a Hugging Face Transformers model with\n"
        f"`vmamba-convert` from the transformers-vmamba project. {labels_note}"
    )
    return _card(data, title, holds, facts, usage.format(model_id=model_id))


CLASSIFIER_USAGE = """The modelling code ships with the weights, so `trust_remote_code=True` is enough. With the
`transformers_vmamba` package installed, `import transformers_vmamba` registers the model and the flag
can be dropped.

```python
from transformers import pipeline

classifier = pipeline("image-classification", model="{model_id}", trust_remote_code=True)
print(classifier("https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/cats.png"))
```

```python
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

processor = AutoImageProcessor.from_pretrained("{model_id}")
model = AutoModelForImageClassification.from_pretrained("{model_id}", trust_remote_code=True)

image = Image.open("cat.jpg").convert("RGB")
inputs = processor(images=image, return_tensors="pt")
with torch.no_grad():
    logits = model(**inputs).logits
print(model.config.id2label[logits.argmax(-1).item()])
```

The image processor reproduces the original evaluation transform: resize the short side to 256 (bicubic),
center-crop 224x224, normalise with the ImageNet mean and standard deviation."""

BACKBONE_USAGE = """This is a backbone only: it returns one feature map (batch, channels, height, width) per output
stage, for a detection or segmentation head that you train or load yourself. Load it with the
`transformers_vmamba` package (`AutoBackbone.from_pretrained` of a local folder does not work in
transformers 5.24; the concrete class does).

```python
import torch
from transformers_vmamba import VMambaBackbone

backbone = VMambaBackbone.from_pretrained("{model_id}").eval()
pixel_values = torch.randn(1, 3, 512, 512)  # images normalised with the ImageNet mean and standard deviation
with torch.no_grad():
    feature_maps = backbone(pixel_values).feature_maps
print(backbone.out_features, [tuple(f.shape) for f in feature_maps])
```

For semantic segmentation, Transformers' UperNet takes it through the config (its decode head starts untrained):

```python
from transformers import UperNetConfig, UperNetForSemanticSegmentation

config = UperNetConfig(backbone_config=backbone.config, num_labels=150)
model = UperNetForSemanticSegmentation(config)
model.backbone.load_state_dict(backbone.state_dict())
```"""


SEGMENTATION_TAGS = ["vision", "image-segmentation", "semantic-segmentation", "upernet", "vmamba", "mamba",
                     "state-space-model"]


def build_segmentation_model_card(
    *,
    model_id: str,
    config,
    num_parameters: int,
    source: str,
    weights_key: str,
    released=None,
    official: bool = False,
) -> ModelCard:
    """Card of a converted UperNet segmentor. The published ADE20K mIoU goes into the Hub metadata only when the file
    is the authors' release itself (`official`) and `released` is its segmentation entry."""
    from .released_models import ReleasedSegmentationModel

    segmentation_release = released if isinstance(released, ReleasedSegmentationModel) else None
    measured = (
        segmentation_release is not None and official and weights_key == segmentation_release.default_weights_key
    )
    is_ade20k = config.num_labels == 150
    eval_results = None
    if measured:
        eval_results = [
            EvalResult(
                task_type="image-segmentation",
                task_name="Semantic Segmentation",
                dataset_type="scene_parse_150",
                dataset_name="ADE20K",
                dataset_split="validation",
                metric_type="mean_iou",
                metric_name=f"mIoU (%), {name}",
                metric_value=value,
                source_name="VMamba (original repository)",
                source_url=PERFORMANCE_TABLE_URL,
            )
            for name, value in (("single-scale", segmentation_release.miou_ss),
                                ("multi-scale", segmentation_release.miou_ms))
        ]
    data = ModelCardData(
        license="mit",
        library_name="transformers",
        pipeline_tag="image-segmentation",
        tags=SEGMENTATION_TAGS,
        datasets=["scene_parse_150"] if is_ade20k else None,
        model_name=model_id.rsplit("/", 1)[-1],
        eval_results=eval_results,
    )
    backbone = config.backbone_config
    if segmentation_release is not None:
        title = f"UperNet with VMamba {segmentation_release.title} backbone (`{segmentation_release.name}`), ADE20K"
    else:
        title = "UperNet with a VMamba backbone (converted mmsegmentation checkpoint)"
    aux = (
        f"FCNHead auxiliary head ({config.auxiliary_channels} channels, {config.auxiliary_num_convs} convolution(s), "
        f"loss weight {config.auxiliary_loss_weight})"
        if config.use_auxiliary_head
        else "no auxiliary head"
    )
    facts = [
        f"- Architecture: UperNet (UPerHead with {config.hidden_size} channels, pool scales "
        f"{list(config.pool_scales)}; {aux}) on a VMamba {backbone.family or 'custom'} backbone with hidden sizes "
        f"{backbone.hidden_sizes} and depths {backbone.depths}",
        f"- Parameters: {num_parameters:,}; {config.num_labels} classes"
        + (" (ADE20K SceneParsing class names)" if is_ade20k else " (generic names `LABEL_0`, ...)"),
    ]
    if segmentation_release is not None:
        facts.append(
            f"- Published ADE20K val mIoU of the original ({segmentation_release.crop_size}x"
            f"{segmentation_release.crop_size} crops, 160k iterations): {segmentation_release.miou_ss}% single-scale,"
            f" {segmentation_release.miou_ms}% multi-scale ([original results table]({PERFORMANCE_TABLE_URL}))"
        )
        facts.append(f"- Original config: `{segmentation_release.original_config}`")
    if segmentation_release is not None and official:
        facts.append(f"- Source checkpoint: [{segmentation_release.file_name}]({segmentation_release.url}), "
                     f"weights `{weights_key}`")
    else:
        facts.append(f"- Source checkpoint: `{source}`, weights `{weights_key}`")
        if segmentation_release is not None:
            facts.append(
                "- Note: these weights are not the released checkpoint, so its published mIoU does not apply."
            )
    facts.append(
        f"- Original code: [{ORIGINAL_REPOSITORY}](https://github.com/{ORIGINAL_REPOSITORY}) "
        f"at commit `{ORIGINAL_COMMIT}`; heads: mmsegmentation's UPerHead and FCNHead"
    )
    facts.append(f"- Paper: [VMamba: Visual State Space Model]({PAPER_URL})")
    holds = (
        "This repository holds a whole semantic-segmentation model of the original authors' code (an mmsegmentation\n"
        "UperNet with a VMamba backbone), converted to Transformers' `UperNetForSemanticSegmentation` with\n"
        "`vmamba-convert` from the transformers-vmamba project."
    )
    return _card(data, title, holds, facts, SEGMENTATION_USAGE.format(model_id=model_id))


def _card(data, title: str, holds: str, facts: list[str], usage: str) -> ModelCard:
    """The card text shared by every converted model: metadata, what VMamba is, what this repository holds, the
    facts, usage and citation."""
    text = f"""---
{data.to_yaml()}
---

# {title}

VMamba is a vision backbone built from Visual State-Space (VSS) blocks: its SS2D module runs a selective
scan (Mamba) along four routes over the feature map, which gives a global receptive field in linear time.
{holds}

{chr(10).join(facts)}

## Usage

{usage}

## Citation

```bibtex
{PAPER_CITATION}
```
"""
    return ModelCard(text)


SEGMENTATION_USAGE = """The model is Transformers' own `UperNetForSemanticSegmentation`; its backbone is VMamba, which
the `transformers_vmamba` package registers (`pip install transformers-vmamba`, then `import transformers_vmamba`
before loading). No remote code is involved.

```python
import transformers_vmamba  # registers the VMamba backbone
from transformers import pipeline

segmenter = pipeline("image-segmentation", model="{model_id}")
for segment in segmenter("image.jpg"):
    print(segment["label"], segment["mask"].size)
```

```python
import torch
import transformers_vmamba
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

processor = AutoImageProcessor.from_pretrained("{model_id}")
model = AutoModelForSemanticSegmentation.from_pretrained("{model_id}").eval()
image = Image.open("image.jpg").convert("RGB")
with torch.no_grad():
    outputs = model(**processor(images=image, return_tensors="pt"))
segmentation = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0]
```

The image processor reproduces the original ADE20K evaluation: resize keeping the aspect ratio so that the short
side is 512 (the long side at most 2048), normalise with the ImageNet mean and standard deviation, run on the whole
image; the logits are resized to the image's size."""
