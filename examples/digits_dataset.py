"""Offline image-classification data: scikit-learn's 8x8 handwritten digits as an image folder.

The 1,797 digits ship inside the scikit-learn wheel, so fine-tuning examples and tests run without network
access. The folder layout (``<root>/{train,test}/<label>/<index>.png``) is what ``datasets``' ``imagefolder``
builder expects, so ``datasets.load_dataset("imagefolder", data_dir=root)`` returns ``train`` and ``test``
splits with ``image`` and ``label`` columns.

Usage::

    python examples/digits_dataset.py /tmp/digits --image_size 32
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from transformers_vmamba.atomic_folder import sigterm_as_exit, write_folder_atomically


# Hidden, so that the imagefolder builder does not treat it as data or metadata.
MARKER_FILE = ".digits_imagefolder.json"
FORMAT_VERSION = 1


def _digit_to_image(pixels_8x8: np.ndarray, image_size: int) -> Image.Image:
    # sklearn stores ink intensity 0..16; draw dark ink on white paper like a scanned digit.
    gray = (255 - np.clip(pixels_8x8, 0, 16) * (255.0 / 16.0)).round().astype(np.uint8)
    image = Image.fromarray(gray, mode="L").resize((image_size, image_size), Image.Resampling.BICUBIC)
    return image.convert("RGB")


def _digits_folder_problem(folder: Path) -> str | None:
    if (folder / MARKER_FILE).is_file() or not any(folder.iterdir()):
        return None
    return "it is not a digits image folder written by this script"


def write_digits_imagefolder(
    root: str | os.PathLike,
    image_size: int = 32,
    test_fraction: float = 0.2,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write the digits as RGB PNGs under ``root`` with a fixed, stratified train/test split.

    Idempotent: a folder already written with the same parameters is reused as is. Atomic
    (`write_folder_atomically`): the images are written to a temporary sibling folder that is renamed into place
    only when complete, so an interrupted run never leaves a half-written dataset behind.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an integer >= 8 (the digits are 8x8), got {image_size!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be strictly between 0 and 1, got {test_fraction!r}")

    root = Path(root).resolve()
    params = {"format_version": FORMAT_VERSION, "image_size": image_size, "test_fraction": test_fraction, "seed": seed}
    marker = root / MARKER_FILE
    if marker.is_file() and not overwrite:
        existing = json.loads(marker.read_text())
        if existing.get("params") == params:
            return root
        raise ValueError(
            f"{root} already holds a digits image folder written with {existing.get('params')}, not {params}; "
            "choose another folder or pass overwrite=True"
        )
    if root.is_dir() and any(root.iterdir()) and not marker.is_file():
        raise ValueError(
            f"{root} exists and is not a digits image folder written by this script; refusing to touch it"
        )

    digits = load_digits()
    indices = np.arange(len(digits.target))
    train_idx, test_idx = train_test_split(
        indices, test_size=test_fraction, random_state=seed, stratify=digits.target
    )

    # Replaced only when it is our own folder (its marker) or empty; the helper also refuses the current directory,
    # home and mount points, serialises concurrent writers and cleans up after a killed run.
    with write_folder_atomically(root, overwrite=root.exists(), owned_by_us=_digits_folder_problem) as staging:
        counts = {}
        for split, split_idx in (("train", train_idx), ("test", test_idx)):
            for index in sorted(split_idx.tolist()):
                label = str(int(digits.target[index]))
                out_dir = staging / split / label
                out_dir.mkdir(parents=True, exist_ok=True)
                _digit_to_image(digits.images[index], image_size).save(out_dir / f"{index:04d}.png")
            counts[split] = len(split_idx)
        (staging / MARKER_FILE).write_text(json.dumps({"params": params, "counts": counts}, indent=2))
    return root


def load_digits_dataset(root: str | os.PathLike, **kwargs):
    """Write (if needed) and load the digits image folder as a ``datasets.DatasetDict`` (train/test)."""
    from datasets import load_dataset

    path = write_digits_imagefolder(root, **kwargs)
    return load_dataset("imagefolder", data_dir=str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="folder to write (created atomically)")
    parser.add_argument("--image_size", type=int, default=32, help="side of the upsampled square RGB images")
    parser.add_argument("--test_fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0, help="seed of the stratified train/test split")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    with sigterm_as_exit():
        path = write_digits_imagefolder(args.root, args.image_size, args.test_fraction, args.seed, args.overwrite)
    counts = json.loads((path / MARKER_FILE).read_text())["counts"]
    print(f"digits image folder at {path}: {counts['train']} train / {counts['test']} test images")


if __name__ == "__main__":
    main()
