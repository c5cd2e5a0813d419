"""Rank and world size under torch.distributed (torchrun), in one place.

Mask building (FSDP / sharded scoring), the Fisher scorer and fine-tuning all ask the same
questions: is a process group up, which rank am I, am I the one that writes files. Outside
torchrun every answer is the single-process one: rank 0 of 1.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size) under an initialized torch.distributed group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """True outside torch.distributed, or on rank 0 (the rank that writes files)."""
    return world()[0] == 0


def init_distributed(device: torch.device | None = None) -> None:
    """Start the process group when torchrun launched several processes (WORLD_SIZE > 1).

    Args:
        device: The compute device; CUDA uses NCCL, everything else Gloo.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device is not None and device.type == "cuda" else "gloo")
