#!/usr/bin/env python
"""Convert an original VMamba checkpoint (MzeroMiko/VMamba `.pth`) into a Transformers model folder.

A classification checkpoint gives a folder that loads with `AutoModelForImageClassification.from_pretrained` and
`pipeline(...)`. An mmsegmentation UperNet checkpoint (the original's released ADE20K models) gives an
`UperNetForSemanticSegmentation` folder (VMamba backbone, UPerHead and FCNHead converted) that loads with
`AutoModelForSemanticSegmentation.from_pretrained` and `pipeline("image-segmentation")` once `transformers_vmamba`
is imported. Another detection/segmentation checkpoint (mmdetection/mmsegmentation layout, backbone under
`backbone.`), or a UperNet with --backbone-only, gives a `VMambaBackbone` folder; its heads and necks are not
converted. Classifier and backbone folders carry the flat modelling code for `trust_remote_code`; every folder has a
preprocessor config and a model card, and can be pushed to the Hub.
Everything about the checkpoint (reading it safely, which weights, which release, the key mapping and its checks)
lives in `transformers_vmamba.original_checkpoint`; this script only fetches, writes atomically and verifies.

Examples:
  vmamba-convert --model vmamba-tiny-s2l5 --output converted/vmamba-tiny-s2l5
  vmamba-convert --checkpoint ckpt_epoch_262.pth --model vmamba-tiny-s2l5 \\
      --output out/tiny --push-to-hub --repo-id my-org/vmamba-tiny-s2l5
  vmamba-convert --checkpoint my_finetune.pth --output out/mine  # config inferred
  vmamba-convert --model upernet-vmamba-tiny-s2l5 --output converted/upernet-vmamba-tiny-s2l5
  vmamba-convert --checkpoint my_upernet_iter_160000.pth --output out/segmentor
  vmamba-convert --checkpoint my_upernet_iter_160000.pth --backbone-only --output out/backbone
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from .atomic_folder import check_output_folder, path_lock, sigterm_as_exit, write_folder_atomically
from .released_models import (
    RELEASED_MODELS,
    RELEASED_SEGMENTATION_MODELS,
    ReleasedModel,
    ReleasedSegmentationModel,
    get_released_model,
)


WEIGHTS_KEYS = ("model", "model_ema", "state_dict")  # --weights-key choices; the library picks when not given
EXPECTED_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "README.md")
VERIFY_INPUT_SHAPE = (1, 3, 32, 32)  # every stage still has >= 1 position; keeps base models quick
VERIFY_TOLERANCE = 1e-5


class ConversionError(ValueError):
    """A problem with the user's input, reported as one line without a traceback."""


@dataclass
class ConversionResult:
    output_dir: Path
    weights_key: str
    num_parameters: int
    released: ReleasedModel | ReleasedSegmentationModel | None
    max_abs_diff: float
    outputs: str = "logits"  # what the self-check compared: "logits" or "feature maps"


def default_cache_dir() -> Path:
    """Downloads go next to the other Hugging Face caches (respects HF_HOME) unless VMAMBA_CACHE says otherwise."""
    if os.environ.get("VMAMBA_CACHE"):
        return Path(os.environ["VMAMBA_CACHE"])
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "transformers-vmamba" / "original-checkpoints"


def is_url(text: str) -> bool:
    return urllib.parse.urlparse(text).scheme in ("http", "https")


def cached_path(url: str, cache_dir: Path) -> Path:
    """Where `url` is cached: a folder per URL, the file under its own (sanitised) name."""
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path.rsplit("/", 1)[-1]).replace("\\", "/")).name
    if name in ("", ".", ".."):
        name = "checkpoint.pth"
    return Path(cache_dir) / hashlib.sha256(url.encode()).hexdigest()[:16] / name


def download_checkpoint(url: str, cache_dir: Path) -> Path:
    """Stream `url` into the cache with a progress bar; a finished download is reused, a partial one never is.
    Concurrent downloads of the same URL take turns (a lock), so none reads another's half-written file."""
    from huggingface_hub.file_download import http_get

    target = cached_path(url, cache_dir)
    with path_lock(target):
        if target.is_file():
            print(f"using cached {target}", file=sys.stderr)
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".incomplete")
        try:
            with open(partial, "wb") as handle:
                http_get(url, handle, displayed_filename=target.name)
            os.replace(partial, target)
        except BaseException as error:
            partial.unlink(missing_ok=True)
            if isinstance(error, Exception):
                message = f"download of {url} failed: {type(error).__name__}: {one_line(error)}"
                raise ConversionError(message) from error
            raise
    return target


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def resolve_checkpoint(checkpoint: str | None, released: ReleasedModel | None, cache_dir: Path) -> tuple[Path, str]:
    """Return the local file and how the model card should name its source."""
    if checkpoint is None:
        return download_checkpoint(released.url, cache_dir), released.url
    if is_url(checkpoint):
        return download_checkpoint(checkpoint, cache_dir), checkpoint
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise ConversionError(f"checkpoint file not found: {path}")
    return path, path.name


def read_checkpoint(path: Path, source: str, cache_dir: Path):
    """Safe load by the package. A cached download that cannot be read is deleted and fetched once more (a damaged
    cache would otherwise fail the same way forever)."""
    from .original_checkpoint import OriginalCheckpointError, load_original_checkpoint

    try:
        return load_original_checkpoint(path)
    except OriginalCheckpointError as error:
        if not is_url(source) or path != cached_path(source, cache_dir):
            raise
        print(f"the cached download {path} is unreadable ({one_line(error)}); downloading it again", file=sys.stderr)
        path.unlink(missing_ok=True)
    path = download_checkpoint(source, cache_dir)
    try:
        return load_original_checkpoint(path)
    except OriginalCheckpointError:
        path.unlink(missing_ok=True)  # the server's file itself is damaged: keep nothing of it
        raise


def _code_files(folder: Path, config: dict) -> set[str]:
    """The modelling code `save_pretrained` copied into a folder: the modules in `auto_map` and their relative
    imports."""
    from transformers.dynamic_module_utils import get_relative_import_files

    names = set()
    auto_map = config.get("auto_map")
    for ref in auto_map.values() if isinstance(auto_map, dict) else ():
        module = folder / (ref.split(".")[0] + ".py") if isinstance(ref, str) else None
        if module is not None and module.is_file():
            names.add(module.name)
            try:
                names.update(Path(file).name for file in get_relative_import_files(str(module)))
            except (OSError, ValueError, SyntaxError):
                pass
    return names


def _is_vmamba_config(config: dict) -> bool:
    """A VMamba model's config.json, or a UperNet's whose backbone is VMamba."""
    if config.get("model_type") == "vmamba":
        return True
    backbone = config.get("backbone_config")
    return (
        config.get("model_type") == "upernet"
        and isinstance(backbone, dict)
        and backbone.get("model_type") == "vmamba"
    )


def converted_folder_problem(folder: Path) -> str | None:
    """Why `folder` is not a folder this converter wrote, or None if it is. ``--overwrite`` replaces only such a
    folder: a VMamba config.json and nothing but the files a conversion writes."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return "it has no readable config.json, so it is not a folder written by vmamba-convert"
    if not isinstance(config, dict) or not _is_vmamba_config(config):
        return "its config.json is not a VMamba config, so it is not a folder written by vmamba-convert"
    known = set(EXPECTED_FILES) | _code_files(folder, config)
    foreign = sorted(
        entry.name + ("/" if entry.is_dir(follow_symlinks=False) else "")
        for entry in os.scandir(folder)
        if entry.name not in known or not entry.is_file(follow_symlinks=False)
    )
    if foreign:
        shown = ", ".join(foreign[:5]) + (f", ... ({len(foreign)} in all)" if len(foreign) > 5 else "")
        return f"it holds files vmamba-convert does not write ({shown})"
    return None


def is_backbone(model) -> bool:
    from . import VMambaBackbone

    return isinstance(model, VMambaBackbone)


def is_segmentor(model) -> bool:
    from transformers import UperNetForSemanticSegmentation

    return isinstance(model, UperNetForSemanticSegmentation)


def model_outputs(model, pixel_values) -> list:
    """What a user of the converted model reads: the logits, or a backbone's feature maps."""
    output = model(pixel_values=pixel_values)
    return list(output.feature_maps) if is_backbone(model) else [output.logits]


def _identical(a, b) -> bool:
    """Bit-for-bit equal values, NaN equal to NaN (weights with NaN pass only under --allow-non-finite)."""
    import torch

    try:
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    except AssertionError:
        return False
    return True


def verify_folder(folder: Path, model, *, allow_non_finite: bool = False) -> float:
    """Reload the written folder in a fresh model of the same class: weights must be identical and the outputs
    (logits, or a backbone's feature maps) equal on a fixed input."""
    import torch
    from safetensors.torch import load_file

    missing = [name for name in EXPECTED_FILES if not (folder / name).is_file()]
    auto_map = json.loads((folder / "config.json").read_text()).get("auto_map", {})
    code_files = {ref.split(".")[0] + ".py" for ref in auto_map.values() if isinstance(ref, str)}
    missing += [name for name in sorted(code_files) if not (folder / name).is_file()]
    if not auto_map and not is_segmentor(model):  # Transformers' UperNet carries no remote code of ours
        missing.append("auto_map in config.json")
    if missing:
        raise ConversionError(f"verification failed: the written folder lacks {', '.join(missing)}")

    saved = load_file(folder / "model.safetensors")
    expected = model.state_dict()
    if set(saved) != set(expected):
        raise ConversionError(
            f"verification failed: saved tensors differ from the model's "
            f"(missing {sorted(set(expected) - set(saved))[:3]}, extra {sorted(set(saved) - set(expected))[:3]})"
        )
    changed = [name for name, tensor in expected.items() if not _identical(saved[name], tensor)]
    if changed:
        raise ConversionError(f"verification failed: saved weights differ from the converted ones: {changed[:3]}")

    reloaded = type(model).from_pretrained(folder).eval()
    model.eval()
    what = "feature maps" if is_backbone(model) else "logits"
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(VERIFY_INPUT_SHAPE, generator=generator)
    with torch.no_grad():
        references = model_outputs(model, pixel_values)
        actuals = model_outputs(reloaded, pixel_values)
    if len(references) != len(actuals):
        raise ConversionError(
            f"verification failed: reloaded model gives {len(actuals)} {what}, not {len(references)}"
        )
    max_abs_diff = 0.0
    for reference, actual in zip(references, actuals):
        finite = torch.isfinite(reference)
        if not finite.all() and not allow_non_finite:
            raise ConversionError(f"verification failed: the converted model gives non-finite {what}")
        if reference.shape != actual.shape:
            raise ConversionError(f"verification failed: reloaded model's {what} have other shapes")
        # Weights are bit-identical (checked above); the forward pass may still differ in the last bits because
        # CPU kernels pick code paths by memory alignment, so allow float32 rounding noise and nothing more.
        scale = max(1.0, reference[finite].abs().max().item() if finite.any() else 0.0)
        try:
            torch.testing.assert_close(actual, reference, rtol=0, atol=VERIFY_TOLERANCE * scale, equal_nan=True)
        except AssertionError:
            raise ConversionError(f"verification failed: reloaded model's {what} differ") from None
        if finite.any():
            max_abs_diff = max(max_abs_diff, (reference[finite] - actual[finite]).abs().max().item())
    return max_abs_diff


def write_model_folder(
    tmp: Path, model, *, source: str, weights_key: str | None, released, official: bool, model_id: str
) -> None:
    from . import default_image_processor, segmentation_image_processor
    from .model_card import build_model_card, build_segmentation_model_card

    model.save_pretrained(tmp)
    if is_segmentor(model):
        # label reduction as the original's ADE20K data (reduce_zero_label) for 150-class heads
        segmentation_image_processor(reduce_labels=model.config.num_labels == 150).save_pretrained(tmp)
        card = build_segmentation_model_card(
            model_id=model_id,
            config=model.config,
            num_parameters=sum(p.numel() for p in model.parameters()),
            source=source,
            weights_key=weights_key or "state dict",
            released=released,
            official=official,
        )
        card.save(tmp / "README.md")
        return
    default_image_processor().save_pretrained(tmp)
    card = build_model_card(
        model_id=model_id,
        num_labels=model.config.num_labels,
        out_features=list(model.out_features) if is_backbone(model) else None,
        num_parameters=sum(p.numel() for p in model.parameters()),
        source=source,
        weights_key=weights_key or "state dict",
        released=released,
        official=official,
    )
    card.save(tmp / "README.md")


def convert(
    *,
    output: Path,
    checkpoint: str | None = None,
    model_name: str | None = None,
    weights_key: str | None = None,
    overwrite: bool = False,
    cache_dir: Path | None = None,
    repo_id: str | None = None,
    allow_non_finite: bool = False,
    backbone_only: bool = False,
) -> ConversionResult:
    """Convert one checkpoint into `output`; nothing is left behind when anything fails.

    Everything about the checkpoint (reading, which weights, which release, mapping, checks) is the library's
    `convert_original_checkpoint`; this adds fetching, the folder (written by `write_folder_atomically`) and a
    reload check of what was written.
    """
    from transformers.utils import logging as transformers_logging

    from .original_checkpoint import convert_original_checkpoint, released_model_for

    released = get_released_model(model_name) if model_name else None
    if checkpoint is None and released is None:
        raise ConversionError("give --checkpoint PATH_OR_URL, --model NAME, or both")
    variant = released.name if released else None
    output = check_output_folder(output, overwrite=overwrite, owned_by_us=converted_folder_problem)
    if checkpoint is not None:
        released_model_for(variant, checkpoint)  # a released file named for another model: fail before downloading

    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path, source = resolve_checkpoint(checkpoint, released, cache_dir)
    raw = read_checkpoint(path, source, cache_dir)
    result = convert_original_checkpoint(
        raw, variant, weights_key, source=source, allow_non_finite=allow_non_finite, backbone_only=backbone_only
    )
    del raw
    model = result.model

    def say_waiting(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    with write_folder_atomically(
        output, overwrite=overwrite, owned_by_us=converted_folder_problem, on_wait=say_waiting
    ) as tmp:
        transformers_logging.disable_progress_bar()  # keep stderr for the download bar and errors
        write_model_folder(
            tmp,
            model,
            source=source,
            weights_key=result.weights_key,
            released=result.release,
            official=result.official,
            model_id=repo_id or output.name,
        )
        max_abs_diff = verify_folder(tmp, model, allow_non_finite=allow_non_finite)
    return ConversionResult(
        output_dir=output,
        weights_key=result.weights_key or "state dict",
        num_parameters=sum(p.numel() for p in model.parameters()),
        released=result.release,
        max_abs_diff=max_abs_diff,
        outputs="feature maps" if is_backbone(model) else "logits",
    )


def upload_to_hub(folder: Path, repo_id: str, *, api=None, private: bool = False, commit_message: str | None = None):
    """Create the Hub repository (if needed) and upload the converted folder. `api` defaults to an `HfApi` using
    the token from HF_TOKEN or `hf auth login`; tests pass a fake."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    folder = Path(folder)
    missing = [name for name in EXPECTED_FILES if not (folder / name).is_file()]
    if missing:
        raise ConversionError(f"{folder} is not a converted model folder (lacks {', '.join(missing)})")
    repo_url = api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        repo_type="model",
        folder_path=str(folder),
        commit_message=commit_message or "Add VMamba model converted from the original checkpoint",
    )
    return repo_url


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\nExamples:")[0],
        epilog="Examples:" + __doc__.split("Examples:")[1]
        + "\nKnown model names: " + ", ".join([*RELEASED_MODELS, *RELEASED_SEGMENTATION_MODELS])
        + "\nExit status: 0 on success, 1 on a conversion error, 2 on a usage error.\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint",
        metavar="PATH_OR_URL",
        help="original training checkpoint (.pth) as a local file or an http(s) URL (downloaded with a progress bar "
        "and cached). Leave out to download the released checkpoint named by --model.",
    )
    parser.add_argument(
        "--model",
        metavar="NAME",
        help="released model name (e.g. vmamba-tiny-s2l5; the original builder name vmamba_tiny_s2l5 works too; "
        "upernet-vmamba-tiny-s2l5 etc. for the ADE20K UperNet segmentors). "
        "The checkpoint must match it (family and size are checked from the tensor shapes). Without it the config "
        "is inferred from the checkpoint.",
    )
    parser.add_argument("--output", metavar="DIR", help="folder to create (written atomically)")
    parser.add_argument(
        "--weights-key",
        choices=WEIGHTS_KEYS,
        help="which weights of the checkpoint to convert (default: the ones the published accuracy was measured "
        "with: model_ema when present, else model, else state_dict; Vanilla-VMamba-T: model)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --output if it already exists and is a folder this converter wrote (anything else is refused)",
    )
    parser.add_argument(
        "--allow-non-finite",
        action="store_true",
        help="convert weights with NaN or infinite values (with a warning) instead of refusing them",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where downloads are cached "
        "(default: $VMAMBA_CACHE or $HF_HOME/transformers-vmamba/original-checkpoints)",
    )
    parser.add_argument(
        "--backbone-only",
        action="store_true",
        help="for an mmsegmentation UperNet checkpoint: write only its VMambaBackbone (the heads are skipped)",
    )
    parser.add_argument("--push-to-hub", action="store_true", help="upload the folder to the Hub after converting")
    parser.add_argument(
        "--repo-id",
        metavar="ORG/NAME",
        help="Hub repository for --push-to-hub (token from HF_TOKEN or `hf auth login`); also used in the model card",
    )
    parser.add_argument("--private", action="store_true", help="create the Hub repository as private")
    parser.add_argument("--list-models", action="store_true", help="print the known released models and exit")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_models:
        for model in RELEASED_MODELS.values():
            print(f"{model.name:22s} {model.title:18s} top-1 {model.top1}%  {model.url}")
        for seg in RELEASED_SEGMENTATION_MODELS.values():
            print(f"{seg.name:28s} {seg.title:18s} ADE20K mIoU {seg.miou_ss}/{seg.miou_ms} (SS/MS)  {seg.url}")
        return 0
    if args.output is None:
        parser.error("--output DIR is required")
    if not args.output.strip():
        parser.error("--output must not be empty")
    if args.checkpoint is None and args.model is None:
        parser.error("give --checkpoint PATH_OR_URL, --model NAME, or both")
    if args.push_to_hub and not args.repo_id:
        parser.error("--push-to-hub needs --repo-id ORG/NAME")
    try:
        with sigterm_as_exit():  # a SIGTERM cleans up like Ctrl-C, then exits with 143
            _run(args)
    except Exception as error:
        if args.debug:
            raise
        if isinstance(error, (ValueError, OSError)):
            print(f"error: {one_line(error)}", file=sys.stderr)
        else:
            print(
                f"error: {type(error).__name__}: {one_line(error)} (rerun with --debug for a traceback)",
                file=sys.stderr,
            )
        return 1
    return 0


def _run(args: argparse.Namespace) -> None:
    result = convert(
        output=Path(args.output),
        checkpoint=args.checkpoint,
        model_name=args.model,
        weights_key=args.weights_key,
        overwrite=args.overwrite,
        cache_dir=args.cache_dir,
        repo_id=args.repo_id,
        allow_non_finite=args.allow_non_finite,
        backbone_only=args.backbone_only,
    )
    print(
        f"converted {result.weights_key} weights ({result.num_parameters:,} parameters) into {result.output_dir}; "
        f"reloaded folder has identical weights and {result.outputs} within {result.max_abs_diff:.1g}"
    )
    if args.push_to_hub:
        url = upload_to_hub(result.output_dir, args.repo_id, private=args.private)
        print(f"uploaded to {url}")


if __name__ == "__main__":
    sys.exit(main())
