# Copyright 2026 The transformers-vmamba authors. Licensed under the MIT license.
"""VMamba (Visual State Space Model) for Hugging Face Transformers.

Importing this package registers VMamba with the Auto classes (`AutoConfig`, `AutoModel`,
`AutoModelForImageClassification`, `AutoBackbone`, `AutoImageProcessor`), so saved VMamba folders load like any
built-in model and dense-task models (e.g. UperNet) accept a VMamba `backbone_config`; a converted UperNet folder
then loads with `AutoModelForSemanticSegmentation` and `pipeline("image-segmentation")`.
"""

from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    ConvNextImageProcessorPil,
    SegformerImageProcessorPil,
)
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling
from transformers.utils import is_torchvision_available

from .configuration_vmamba import VARIANTS, VMambaConfig
from .modeling_vmamba import VMambaBackbone, VMambaForImageClassification, VMambaModel, VMambaPreTrainedModel
from .onnx_export import export_onnx
from .original_checkpoint import (
    OriginalCheckpointError,
    convert_original_state_dict,
    from_original_checkpoint,
    infer_config_from_state_dict,
    load_original_checkpoint,
)


__version__ = "0.1.0"


def _processor_class(backend: str | None, pil_class: type, torchvision_name: str) -> type:
    """The PIL or torchvision flavour of a Transformers image processor (default: torchvision when installed)."""
    if backend is None:
        backend = "torchvision" if is_torchvision_available() else "pil"
    if backend == "pil":
        return pil_class
    if backend == "torchvision":
        import transformers

        return getattr(transformers, torchvision_name)
    raise ValueError(f"backend must be 'pil' or 'torchvision', got {backend!r}")


def default_image_processor(backend: str | None = None):
    """The original evaluation transform as a Transformers image processor.

    Resize the short side to 256 (= 224 / 0.875) with bicubic interpolation, center-crop 224x224, scale to [0, 1],
    normalise with the ImageNet mean/std. Transformers' ConvNeXt processor does exactly this. `backend` is "pil"
    or "torchvision"; the default is torchvision when installed, else PIL.
    """
    processor_class = _processor_class(backend, ConvNextImageProcessorPil, "ConvNextImageProcessor")
    return processor_class(
        do_resize=True,
        size={"shortest_edge": 224},
        crop_pct=0.875,
        resample=PILImageResampling.BICUBIC,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(IMAGENET_DEFAULT_MEAN),
        image_std=list(IMAGENET_DEFAULT_STD),
    )


def segmentation_image_processor(backend: str | None = None, *, reduce_labels: bool = False):
    """The original's ADE20K evaluation transform (mmsegmentation test pipeline of its UperNet configs) as a
    Transformers image processor, for `UperNetForSemanticSegmentation` and `pipeline("image-segmentation")`.

    The original resizes keeping the aspect ratio to fit scale (2048, 512) (short side 512 unless the long side
    would pass 2048), normalises with the ImageNet mean/std (123.675, 116.28, 103.53 / 58.395, 57.12, 57.375 in 0-255
    units, RGB) and runs on the whole image, no padding or sliding window; logits are resized to the image's size.
    Transformers' Segformer processor with ``size={"shortest_edge": 512, "longest_edge": 2048}`` does the same, and
    its `post_process_semantic_segmentation` resizes logits bilinearly (align_corners False) as mmseg does. Two
    differences remain: the new size is truncated where mmcv rounds (a side may be 1 pixel shorter), and resizing is
    PIL's bilinear filter (antialiased when shrinking) where the original uses OpenCV's (not antialiased).
    `reduce_labels` maps label 0 to 255 (ignored) and k to k-1 in segmentation maps, as the original's ADE20K
    dataset (``reduce_zero_label``). `backend` is "pil" or "torchvision" (default torchvision when installed).
    """
    processor_class = _processor_class(backend, SegformerImageProcessorPil, "SegformerImageProcessor")
    return processor_class(
        do_resize=True,
        size={"shortest_edge": 512, "longest_edge": 2048},
        resample=PILImageResampling.BILINEAR,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(IMAGENET_DEFAULT_MEAN),
        image_std=list(IMAGENET_DEFAULT_STD),
        do_reduce_labels=reduce_labels,
    )


def _register() -> None:
    AutoConfig.register(VMambaConfig.model_type, VMambaConfig, exist_ok=True)
    AutoModel.register(VMambaConfig, VMambaModel, exist_ok=True)
    AutoModelForImageClassification.register(VMambaConfig, VMambaForImageClassification, exist_ok=True)
    AutoBackbone.register(VMambaConfig, VMambaBackbone, exist_ok=True)
    image_processor_classes = {"pil": ConvNextImageProcessorPil}
    if is_torchvision_available():
        from transformers import ConvNextImageProcessor

        image_processor_classes["torchvision"] = ConvNextImageProcessor
    try:
        AutoImageProcessor.register(VMambaConfig, image_processor_classes=image_processor_classes, exist_ok=True)
    except ImportError:
        # transformers < 5.5 (about) makes AutoImageProcessor require torchvision; the saved
        # preprocessor_config.json still names the processor, so only the Auto lookup is unavailable there.
        pass
    # save_pretrained then also writes `auto_map` and the flat modeling files, so a saved folder loads with
    # trust_remote_code=True where this package is not installed.
    VMambaConfig.register_for_auto_class()
    VMambaModel.register_for_auto_class("AutoModel")
    VMambaForImageClassification.register_for_auto_class("AutoModelForImageClassification")
    VMambaBackbone.register_for_auto_class("AutoBackbone")


_register()


__all__ = [
    "VARIANTS",
    "OriginalCheckpointError",
    "VMambaBackbone",
    "VMambaConfig",
    "VMambaForImageClassification",
    "VMambaModel",
    "VMambaPreTrainedModel",
    "convert_original_state_dict",
    "default_image_processor",
    "export_onnx",
    "from_original_checkpoint",
    "infer_config_from_state_dict",
    "load_original_checkpoint",
    "segmentation_image_processor",
]
