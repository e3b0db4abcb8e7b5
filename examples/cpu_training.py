# Copyright 2026 The transformers-vmamba authors. Licensed under the MIT license.
"""CPU defaults shared by the Trainer examples (classification and segmentation).

- Several processes on a machine without an accelerator (``torchrun`` / ``accelerate launch``) train with DDP over
  gloo: Trainer would otherwise run each process alone.
- Small models train with one thread per process: tiny layers gain nothing from more threads, and on small or busy
  machines OpenMP threads stall each other (measured: 25-50x slower steps with the default threads than with one on
  2 busy cores).
- No pinned memory on CPU: it only helps copies to a GPU, and Trainer warns on every CPU run.
- ``--fsdp`` on CPU is an error: accelerate (1.15) shards only on accelerators, and Trainer would silently run DDP.
"""

from __future__ import annotations

import logging
import os

import torch
from transformers import TrainingArguments


SMALL_MODEL_PARAMETERS = 5_000_000
SMALL_MODEL_SLOWDOWN = "25-50x slower steps with the default threads than with one on 2 busy cores"
TORCH_THREADS_HELP = (
    "CPU intra-op threads per process. Default: 1 for models under 5M parameters trained on CPU (tiny layers gain "
    "nothing from more threads, and on busy or small machines OpenMP threads stall each other: measured "
    f"{SMALL_MODEL_SLOWDOWN}), otherwise torch's default."
)


def use_gloo_ddp_without_accelerator() -> None:
    """Call before TrainingArguments is parsed: with several processes and no accelerator, have Trainer (through
    accelerate) set up DDP on CPU over gloo."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available():
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")


def configure_cpu(
    training_args: TrainingArguments, torch_threads: int | None, num_parameters: int, logger: logging.Logger
) -> None:
    """CPU training: pick the thread count (see TORCH_THREADS_HELP) and turn off pinned memory; says so on the
    calling script's logger."""
    if torch_threads is not None and torch_threads < 1:
        raise ValueError(f"--torch_threads must be at least 1, got {torch_threads}")
    if training_args.device.type != "cpu":
        return
    if training_args.fsdp:
        # accelerate runs FSDP only on accelerators; on CPU processes Trainer would quietly train with DDP instead.
        raise ValueError("--fsdp needs GPUs (or other accelerators): on CPU, several processes train with DDP")
    training_args.dataloader_pin_memory = False
    if torch_threads is None and num_parameters < SMALL_MODEL_PARAMETERS:
        torch_threads = 1
        logger.info("CPU training of a small model: 1 thread per process (--torch_threads to change)")
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
