#!/usr/bin/env python
"""Classify images with a VMamba (or any Transformers image classifier) folder or Hub id.

Usage::

    python examples/inference.py --model ./vmamba-digits cat.png https://example.com/dog.jpg --top_k 3
    python examples/inference.py --model ./vmamba-tiny-s1l8 --device cuda images/*.jpg

Prints, per image, the top-k labels with their scores; ``--json`` prints one JSON object per line instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from transformers import pipeline


try:  # registers VMamba locally; without the package, folders with remote code need --trust_remote_code
    import transformers_vmamba  # noqa: F401
except ImportError:
    pass


def classify(
    model: str, images: list[str], top_k: int = 5, device: str | None = None, trust_remote_code: bool = False
):
    """Returns, per image, a list of {"label", "score"} dicts, best first."""
    if model.startswith("~"):
        model = os.path.expanduser(model)
    looks_like_path = os.path.isabs(model) or model.startswith(("./", "../", "~")) or model.count("/") > 1
    if looks_like_path and not os.path.isdir(model):
        raise FileNotFoundError(f"Model folder {model!r} does not exist (nor is it a Hub id such as 'org/name')")
    for image in images:
        if not image.startswith(("http://", "https://")) and not os.path.isfile(image):
            raise FileNotFoundError(f"Image {image!r} is neither an existing file nor an http(s) URL")
    classifier = pipeline(
        "image-classification", model=model, device=device, trust_remote_code=trust_remote_code
    )
    results = classifier(images, top_k=top_k)
    if images and isinstance(results[0], dict):  # a single image with top_k=1 comes back un-nested
        results = [results]
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Top-k image classification with a pipeline")
    parser.add_argument("images", nargs="+", help="image file paths or http(s) URLs")
    parser.add_argument("--model", required=True, help="model folder (save_pretrained output) or Hub id")
    parser.add_argument("--top_k", type=int, default=5, help="number of labels to print per image")
    parser.add_argument("--device", default=None, help="'cpu', 'cuda', 'cuda:1', ... (default: the pipeline's)")
    parser.add_argument("--trust_remote_code", action="store_true", help="allow model code shipped with the folder")
    parser.add_argument("--json", action="store_true", help="print one JSON line per image")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error(f"--top_k must be at least 1, got {args.top_k}")

    try:
        results = classify(args.model, args.images, args.top_k, args.device, args.trust_remote_code)
    except (OSError, ValueError) as error:  # missing image, unknown model folder or Hub id, unreadable image
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    for image, predictions in zip(args.images, results):
        if args.json:
            print(json.dumps({"image": image, "predictions": predictions}))
            continue
        print(image)
        for prediction in predictions:
            print(f"  {prediction['score']:.4f}  {prediction['label']}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
