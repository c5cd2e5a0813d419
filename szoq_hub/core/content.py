"""Content hashes of artifacts: the sha256 of their tensor bytes, recorded in their header.

A mask or delta records `content_sha256` (the tensors' bytes in sorted name order, as stored)
when it is written, and every load recomputes it, so a flipped bit anywhere in the data section
is refused even when the result would still look valid (sorted in-range indices, finite values).
Artifacts written before this existed carry no hash and still load: there is nothing to check.
Hashing a mask or a delta (a few MB) costs milliseconds.
"""

from __future__ import annotations

import hashlib
from typing import Mapping

import torch

CONTENT_KEY = "content_sha256"


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 of the tensors' raw bytes, concatenated in sorted name order.

    Args:
        tensors: name -> tensor (any device; copied to the CPU one at a time).

    Returns:
        64 hex digits.
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        cpu = tensors[name].detach().contiguous().cpu()
        if cpu.numel():
            h.update(memoryview(cpu.view(-1).view(torch.uint8).numpy()))  # [numel * element_size] bytes
    return h.hexdigest()


def describe_content_hash(recorded: str | None) -> str:
    """How `mask show` names the content hash: its first 12 digits, or why there is none."""
    return recorded[:12] if recorded else "none (written before szoq recorded content hashes: not checked)"
