"""Compare two masks tensor by tensor: shared weights, Jaccard overlap, recall of A in B.

Split from `artifact.py` (the file format): comparing is a job of its own, used by `szoq mask diff`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch

from ..core.errors import MaskError

if TYPE_CHECKING:
    from .artifact import MaskData


@dataclass
class LayerOverlap:
    """Overlap of two masks on one tensor."""

    name: str
    nnz_a: int
    nnz_b: int
    shared: int

    @property
    def jaccard(self) -> float:
        union = self.nnz_a + self.nnz_b - self.shared
        return self.shared / union if union else 1.0


@dataclass
class MaskDiff:
    """Overlap of mask A with mask B: shared nnz, Jaccard, recall of A in B, per layer."""

    layers: list[LayerOverlap]

    @property
    def shared(self) -> int:
        return sum(x.shared for x in self.layers)

    @property
    def nnz_a(self) -> int:
        return sum(x.nnz_a for x in self.layers)

    @property
    def nnz_b(self) -> int:
        return sum(x.nnz_b for x in self.layers)

    @property
    def jaccard(self) -> float:
        union = self.nnz_a + self.nnz_b - self.shared
        return self.shared / union if union else 1.0

    @property
    def recall(self) -> float:
        """Share of A's weights that B also selects."""
        return self.shared / self.nnz_a if self.nnz_a else 1.0

    def to_dict(self) -> dict:
        return {
            "shared": self.shared, "nnz_a": self.nnz_a, "nnz_b": self.nnz_b,
            "jaccard": self.jaccard, "recall_a_in_b": self.recall,
            "layers": [dict(asdict(x), jaccard=x.jaccard) for x in self.layers],
        }


def layer_order(name: str) -> tuple:
    """Sort key that puts `layers.2` before `layers.10` (numbers compare as numbers)."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name))


def diff_masks(a: MaskData, b: MaskData) -> MaskDiff:
    """Compare two masks tensor by tensor.

    Raises:
        MaskError: when the same tensor name has different shapes in A and B.
    """
    layers = []
    for name in sorted(set(a.config.shapes) | set(b.config.shapes), key=layer_order):
        sa, sb = a.config.shapes.get(name), b.config.shapes.get(name)
        if sa and sb and sa != sb:
            raise MaskError(f"tensor {name!r} has shape {sa} in A and {sb} in B", hint="compare masks of the same base model")
        ia = a.indices.get(name, torch.empty(0, dtype=torch.int32))
        ib = b.indices.get(name, torch.empty(0, dtype=torch.int32))
        shared = int(torch.isin(ia, ib).sum()) if ia.numel() and ib.numel() else 0
        layers.append(LayerOverlap(name, int(ia.numel()), int(ib.numel()), shared))
    return MaskDiff(layers)
