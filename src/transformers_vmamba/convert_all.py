#!/usr/bin/env python
"""Convert all nine released VMamba classification checkpoints (by name) into one folder tree, optionally pushing
each to the Hub as ORG/<name>.

  vmamba-convert-all --output-root converted --dry-run
  vmamba-convert-all --output-root converted --checkpoint-dir ~/Downloads/vmamba
  vmamba-convert-all --output-root converted --push-to-hub --hub-org my-org
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

from . import convert as converter
from .atomic_folder import sigterm_as_exit
from .released_models import RELEASED_MODELS, get_released_model


def plan(args: argparse.Namespace) -> list[dict]:
    names = [get_released_model(name).name for name in args.models] if args.models else list(RELEASED_MODELS)
    steps = []
    for name in names:
        model = RELEASED_MODELS[name]
        local = args.checkpoint_dir / model.file_name if args.checkpoint_dir else None
        steps.append(
            dict(
                name=name,
                checkpoint=str(local) if local is not None and local.is_file() else model.url,
                output=args.output_root / name,
                weights_key=args.weights_key or model.default_weights_key,
                repo_id=f"{args.hub_org}/{name}" if args.hub_org else None,
            )
        )
    return steps


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-root", type=Path, required=True, help="each model goes to OUTPUT_ROOT/<name>")
    parser.add_argument(
        "--models", nargs="+", metavar="NAME", help=f"subset to convert (default: all of {', '.join(RELEASED_MODELS)})"
    )
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        help="folder with already downloaded release files (used when the file name matches)",
    )
    parser.add_argument("--weights-key", choices=converter.WEIGHTS_KEYS, help="override each model's default weights")
    parser.add_argument("--cache-dir", type=Path, help="download cache (see vmamba-convert --help)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace existing output folders (only ones vmamba-convert wrote)"
    )
    parser.add_argument(
        "--skip-existing", action="store_true", help="leave existing output folders alone (still pushed)"
    )
    parser.add_argument("--push-to-hub", action="store_true", help="upload each folder to HUB_ORG/<name>")
    parser.add_argument("--hub-org", metavar="ORG", help="Hub user or organisation for --push-to-hub")
    parser.add_argument("--private", action="store_true", help="create the Hub repositories as private")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.push_to_hub and not args.hub_org:
        parser.error("--push-to-hub needs --hub-org ORG")
    try:
        steps = plan(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.dry_run:
        for step in steps:
            push = f" -> hub {step['repo_id']}" if args.push_to_hub else ""
            print(f"{step['name']}: {step['checkpoint']} [{step['weights_key']}] -> {step['output']}{push}")
        return 0

    with sigterm_as_exit():  # a SIGTERM cleans up the conversion under way, then exits with 143
        failures = _convert_each(steps, args)
    summary = f"{len(steps) - len(failures)} of {len(steps)} converted"
    print(summary + (f"; failed: {', '.join(failures)}" if failures else ""))
    return 1 if failures else 0


def _convert_each(steps: list[dict], args: argparse.Namespace) -> list[str]:
    """Convert (and push) each step; a failure is reported and the next step runs. Returns the failed names."""
    failures = []
    for step in steps:
        print(f"== {step['name']}", flush=True)
        try:
            if args.skip_existing and step["output"].exists():
                print(f"{step['output']} exists, skipped")
            else:
                result = converter.convert(
                    output=step["output"],
                    checkpoint=step["checkpoint"],
                    model_name=step["name"],
                    weights_key=args.weights_key,  # None: the release's default, falling back if the file lacks it
                    overwrite=args.overwrite,
                    cache_dir=args.cache_dir,
                    repo_id=step["repo_id"],
                )
                print(f"converted {result.weights_key} ({result.num_parameters:,} parameters) -> {result.output_dir}")
            if args.push_to_hub:
                print(f"uploaded to {converter.upload_to_hub(step['output'], step['repo_id'], private=args.private)}")
        except Exception as error:
            failures.append(step["name"])
            print(f"error: {step['name']}: {converter.one_line(error)}", file=sys.stderr)
        gc.collect()
    return failures


if __name__ == "__main__":
    sys.exit(main())
