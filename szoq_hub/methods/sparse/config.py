"""`SparseConfig`: SensZOQ, the fp32 values of a sensitivity mask's weights on the quantized base.

The method's only setting is the mask, which `FinetuneConfig.mask` holds (`eval` and `merge`
take a mask too, with or without a run), so the dataclass has no fields of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ...core.defaults import DEFAULT_LR
from ...core.errors import MaskError
from ...runtime.zo_config import SCORES_LR
from ..spec import MethodConfig

if TYPE_CHECKING:
    from ...masks.artifact import MaskData
    from ...training.config import FinetuneConfig

DELTA_FILE = "delta.safetensors"
DELTA_CARD_TAGS = ["szoq", "sparse-delta", "zeroth-order"]


@dataclass
class SparseConfig(MethodConfig):
    """SensZOQ's settings (the mask: `FinetuneConfig.mask`)."""

    final_file: ClassVar[str] = DELTA_FILE
    default_lr: ClassVar[float | str] = SCORES_LR  # from the mask's Σg² (training/lr_scores.py); DEFAULT_LR without scores
    fixed_lr: ClassVar[float | None] = DEFAULT_LR
    takes_mask: ClassVar[bool] = True
    summary: ClassVar[str] = "the fp32 values of a sensitivity mask's weights on the quantized base (SensZOQ; writes delta.safetensors)"

    def check_mask(self, run: FinetuneConfig, mask: MaskData) -> None:
        """Refuse `--precondition scores` with a mask that stores no scores (magnitude, random, the built-in)."""
        if run.zo.precondition == "scores" and mask.scores is None:
            raise MaskError(f"mask {run.mask} holds no scores, and --precondition scores preconditions by them",
                            hint="build a fisher mask, which stores them: szoq mask build MODEL (or use --precondition online)")
