#!/usr/bin/env python
"""Convert an original VMamba checkpoint (MzeroMiko/VMamba `.pth`) into a Transformers model folder.

A classification checkpoint gives a folder that loads with `AutoModelForImageClassification.from_pretrained` and
`pipeline(...)`. A detection/segmentation checkpoint (mmdetection/mmsegmentation layout, backbone under
`backbone.`) gives a `VMambaBackbone` folder; its decode/detection heads and necks are not converted. Either folder
carries the flat modelling code for `trust_remote_code`, a preprocessor config and a model card, and can be pushed
to the Hub.
The key mapping itself lives in `transformers_vmamba.from_original_checkpoint`; this script only fetches, checks,
writes atomically and verifies.

Examples:
  vmamba-convert --model vmamba-tiny-s2l5 --output converted/vmamba-tiny-s2l5
  vmamba-convert --checkpoint ckpt_epoch_262.pth --model vmamba-tiny-s2l5 \\
      --output out/tiny --push-to-hub --repo-id my-org/vmamba-tiny-s2l5
  vmamba-convert --checkpoint my_finetune.pth --output out/mine  # config inferred
  vmamba-convert --checkpoint upernet_vssm_tiny.pth --output out/backbone
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from .released_models import RELEASED_MODELS, ReleasedModel, get_released_model


WEIGHTS_KEYS = ("model", "model_ema")
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
    released: ReleasedModel | None
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


def download_checkpoint(url: str, cache_dir: Path) -> Path:
    """Stream `url` into the cache with a progress bar; a finished download is reused, a partial one never is."""
    from huggingface_hub.file_download import http_get

    file_name = urllib.parse.unquote(urllib.parse.urlparse(url).path.rsplit("/", 1)[-1]) or "checkpoint.pth"
    target = cache_dir / hashlib.sha256(url.encode()).hexdigest()[:16] / file_name
    if target.is_file():
        print(f"using cached {target}", file=sys.stderr)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".incomplete")
    try:
        with open(partial, "wb") as handle:
            http_get(url, handle, displayed_filename=file_name)
        os.replace(partial, target)
    except Exception as error:
        partial.unlink(missing_ok=True)
        raise ConversionError(f"download of {url} failed: {type(error).__name__}: {one_line(error)}") from error
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


def released_for_source(source: str) -> ReleasedModel | None:
    """Recognise a released checkpoint by its URL or file name, so its card can cite the published metrics."""
    name = urllib.parse.unquote(source.rsplit("/", 1)[-1])
    for model in RELEASED_MODELS.values():
        if source == model.url or name == model.file_name:
            return model
    return None


def load_checkpoint(path: Path) -> dict:
    """Safe load (weights_only, inert stand-ins for pickled classes) by the package; any failure is one message."""
    from . import load_original_checkpoint

    try:
        checkpoint = load_original_checkpoint(path)
    except Exception as error:
        raise ConversionError(
            f"cannot read {path}: not a readable PyTorch checkpoint (corrupt or truncated file?): {one_line(error)}"
        ) from error
    if not isinstance(checkpoint, dict):
        raise ConversionError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict or state dict")
    return checkpoint


def report_skipped_modules(checkpoint: dict, weights_key: str | None) -> bool:
    """For a detection/segmentation checkpoint, say on stderr what is left out; returns whether it is one."""
    from .original_checkpoint import (
        OriginalCheckpointError,
        select_weights,
        split_detection_state_dict,
    )

    try:
        state_dict = select_weights(checkpoint, weights_key)[0]
    except OriginalCheckpointError:
        return False  # build_model reports it with the package's message
    detection = split_detection_state_dict(state_dict)
    if detection is None:
        return False
    print("detection/segmentation checkpoint: converting only the VMamba backbone ('backbone.*')", file=sys.stderr)
    for module, keys in detection[1].items():
        print(f"skipped {module} ({len(keys)} tensors)", file=sys.stderr)
    print("decode/detection heads and necks are not converted (out of scope)", file=sys.stderr)
    return True


def choose_weights_key(checkpoint: dict, requested: str | None, released: ReleasedModel | None) -> str | None:
    """Prefer the weights the published accuracy was measured with: EMA when present (all releases but
    Vanilla-VMamba-T), else `model`. Returns None for a bare state dict."""
    available = [key for key in WEIGHTS_KEYS if isinstance(checkpoint.get(key), dict)]
    if not available:
        if requested is not None:
            raise ConversionError(
                f"--weights-key {requested} given, but the checkpoint has no 'model'/'model_ema' entry"
            )
        return None
    if requested is not None:
        if requested not in available:
            raise ConversionError(
                f"--weights-key {requested}: the checkpoint has no {requested!r} weights "
                f"(it has: {', '.join(available)})"
            )
        return requested
    if released is not None and released.default_weights_key in available:
        return released.default_weights_key
    return "model_ema" if "model_ema" in available else "model"


def check_output_target(output: Path, overwrite: bool) -> None:
    if output.exists() and not overwrite:
        raise ConversionError(f"output {output} already exists (pass --overwrite to replace it)")
    if output.exists() and not output.is_dir():
        raise ConversionError(f"output {output} exists and is not a folder")


def checkpoint_family(config) -> str:
    """The released family a config belongs to, in the names the registry uses."""
    if config.ssm_gate:
        return "v0"
    return "v2v" if config.ssm_expansion_ratio == 1.0 else "v2"


def build_model(checkpoint: dict, weights_key: str | None, released: ReleasedModel | None):
    """`from_original_checkpoint` does the mapping and every check; a mismatch with the named release gets a short
    summary (family, sizes) in front of the package's field-by-field list."""
    import logging

    from . import from_original_checkpoint, infer_config_from_state_dict
    from .original_checkpoint import (
        OriginalCheckpointError,
        select_weights,
        split_detection_state_dict,
    )

    state_or_checkpoint = checkpoint if weights_key is None else {weights_key: checkpoint[weights_key]}
    package_logger = logging.getLogger("transformers_vmamba.original_checkpoint")
    level = package_logger.level
    package_logger.setLevel(logging.ERROR)  # skipped heads are already reported by report_skipped_modules
    try:
        return from_original_checkpoint(
            state_or_checkpoint, variant=released.name if released else None, weights_key=weights_key
        )
    except OriginalCheckpointError as error:
        if released is None or "does not match variant" not in str(error):
            raise
        state_dict = select_weights(state_or_checkpoint, weights_key)[0]
        detection = split_detection_state_dict(state_dict)
        found = infer_config_from_state_dict(state_dict if detection is None else detection[0])
        raise ConversionError(
            f"--model {released.name} is a {released.family} model ({released.title}), but the checkpoint is a "
            f"{checkpoint_family(found)} model with hidden sizes {found.hidden_sizes} and depths {found.depths}. "
            f"Details: {one_line(error)}"
        ) from error
    finally:
        package_logger.setLevel(level)


def is_backbone(model) -> bool:
    from . import VMambaBackbone

    return isinstance(model, VMambaBackbone)


def model_outputs(model, pixel_values) -> list:
    """What a user of the converted model reads: the logits, or a backbone's feature maps."""
    output = model(pixel_values=pixel_values)
    return list(output.feature_maps) if is_backbone(model) else [output.logits]


def verify_folder(folder: Path, model) -> float:
    """Reload the written folder in a fresh model of the same class: weights must be identical and the outputs
    (logits, or a backbone's feature maps) equal on a fixed input."""
    import torch
    from safetensors.torch import load_file

    missing = [name for name in EXPECTED_FILES if not (folder / name).is_file()]
    auto_map = json.loads((folder / "config.json").read_text()).get("auto_map", {})
    code_files = {ref.split(".")[0] + ".py" for ref in auto_map.values() if isinstance(ref, str)}
    missing += [name for name in sorted(code_files) if not (folder / name).is_file()]
    if not auto_map:
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
    changed = [name for name, tensor in expected.items() if not torch.equal(saved[name], tensor)]
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
        raise ConversionError(f"verification failed: reloaded model gives {len(actuals)} {what}, not {len(references)}")
    max_abs_diff = 0.0
    for reference, actual in zip(references, actuals):
        if not torch.isfinite(reference).all():
            raise ConversionError(f"verification failed: the converted model gives non-finite {what}")
        if reference.shape != actual.shape:
            raise ConversionError(f"verification failed: reloaded model's {what} have other shapes")
        diff = (reference - actual).abs().max().item()
        max_abs_diff = max(max_abs_diff, diff)
        # Weights are bit-identical (checked above); the forward pass may still differ in the last bits because
        # CPU kernels pick code paths by memory alignment, so allow float32 rounding noise and nothing more.
        if diff > VERIFY_TOLERANCE * max(1.0, reference.abs().max().item()):
            raise ConversionError(f"verification failed: reloaded model's {what} differ (max |diff| {diff:.3g})")
    return max_abs_diff


def write_model_folder(
    tmp: Path, model, *, source: str, weights_key: str | None, released, official: bool, model_id: str
) -> None:
    from .model_card import build_model_card
    from . import default_image_processor

    model.save_pretrained(tmp)
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


def make_world_readable(folder: Path) -> None:
    """mkdtemp (and the safetensors writer) create owner-only entries; give the result the usual umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def install_atomically(tmp: Path, output: Path) -> None:
    """Swap the finished temp folder into place; an existing folder (with --overwrite) is replaced only at the end."""
    backup = None
    if output.exists():
        backup = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
        backup.rmdir()
        os.replace(output, backup)
    try:
        os.replace(tmp, output)
    except BaseException:
        if backup is not None:
            os.replace(backup, output)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def convert(
    *,
    output: Path,
    checkpoint: str | None = None,
    model_name: str | None = None,
    weights_key: str | None = None,
    overwrite: bool = False,
    cache_dir: Path | None = None,
    repo_id: str | None = None,
) -> ConversionResult:
    """Convert one checkpoint into `output`; nothing is left behind when anything fails."""
    from transformers.utils import logging as transformers_logging

    released = get_released_model(model_name) if model_name else None
    if checkpoint is None and released is None:
        raise ConversionError("give --checkpoint PATH_OR_URL, --model NAME, or both")
    output = Path(output).expanduser().absolute()
    check_output_target(output, overwrite)

    path, source = resolve_checkpoint(checkpoint, released, cache_dir or default_cache_dir())
    recognised = released_for_source(source)  # the authors' own file, by URL or file name
    if released is not None and recognised is not None and recognised is not released:
        raise ConversionError(f"{source} is the released file of {recognised.name}, not of {released.name}")
    card_release = released or recognised
    raw = load_checkpoint(path)
    key = choose_weights_key(raw, weights_key, card_release)
    report_skipped_modules(raw, key)
    model = build_model(raw, key, card_release)
    del raw

    created = [parent for parent in reversed(output.parents) if not parent.exists()]
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        transformers_logging.disable_progress_bar()  # keep stderr for the download bar and errors
        write_model_folder(
            tmp,
            model,
            source=source,
            weights_key=key,
            released=card_release,
            official=recognised is not None,
            model_id=repo_id or output.name,
        )
        max_abs_diff = verify_folder(tmp, model)
        make_world_readable(tmp)
        check_output_target(output, overwrite)
        install_atomically(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in reversed(created):
            try:
                parent.rmdir()
            except OSError:
                break
        raise
    return ConversionResult(
        output_dir=output,
        weights_key=key or "state dict",
        num_parameters=sum(p.numel() for p in model.parameters()),
        released=card_release,
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
        + "\nKnown model names: " + ", ".join(RELEASED_MODELS)
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
        help="released model name (e.g. vmamba-tiny-s2l5; the original builder name vmamba_tiny_s2l5 works too). "
        "The checkpoint must match it (family and size are checked from the tensor shapes). Without it the config "
        "is inferred from the checkpoint.",
    )
    parser.add_argument("--output", metavar="DIR", help="folder to create (written atomically)")
    parser.add_argument(
        "--weights-key",
        choices=WEIGHTS_KEYS,
        help="which weights of the checkpoint to convert (default: the ones the published accuracy was measured "
        "with: model_ema when present, else model; Vanilla-VMamba-T: model)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it already exists")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where downloads are cached (default: $VMAMBA_CACHE or $HF_HOME/transformers-vmamba/original-checkpoints)",
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
        return 0
    if args.output is None:
        parser.error("--output DIR is required")
    if args.checkpoint is None and args.model is None:
        parser.error("give --checkpoint PATH_OR_URL, --model NAME, or both")
    if args.push_to_hub and not args.repo_id:
        parser.error("--push-to-hub needs --repo-id ORG/NAME")
    try:
        result = convert(
            output=Path(args.output),
            checkpoint=args.checkpoint,
            model_name=args.model,
            weights_key=args.weights_key,
            overwrite=args.overwrite,
            cache_dir=args.cache_dir,
            repo_id=args.repo_id,
        )
        print(
            f"converted {result.weights_key} weights ({result.num_parameters:,} parameters) into {result.output_dir}; "
            f"reloaded folder has identical weights and {result.outputs} within {result.max_abs_diff:.1g}"
        )
        if args.push_to_hub:
            url = upload_to_hub(result.output_dir, args.repo_id, private=args.private)
            print(f"uploaded to {url}")
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


if __name__ == "__main__":
    sys.exit(main())
