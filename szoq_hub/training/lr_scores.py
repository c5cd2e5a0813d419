"""`--lr scores` (a sparse run's default): a step size that carries across models, from the mask's Σg².

Why the mask's scores set the step. A ZO-SGD step moves the values by -lr·g·z with z ~ N(0, I_k) and
g = z·∇L (the two-point estimate), so its expected change of the loss on a quadratic with Hessian H is

    E[ΔL] = -lr·|∇L|² + (lr²/2)·E[g²·zᵀHz] ≈ -lr·|∇L|² + (lr²/2)·|∇L|²·(tr H + 2·λ_max),

and the best step is about lr* ≈ 1 / tr(H) over the k trained values: the sum over all k coordinates,
not the largest eigenvalue, because every step moves every value. The mask's scores are the kept
weights' Σg² of the LM loss over the calibration windows (a diagonal empirical Fisher, a
Gauss-Newton estimate of the Hessian's diagonal for cross-entropy), so Σ scores / windows estimates
tr(H) on the trained values, and

    lr = SCORES_C / (Σ scores / calibration windows),    rounded to 2 significant digits.

Measured (`bench/bench_lr_scale.py`, `bench/results/lr_scale.md`; the SST-2 SensZOQ 100-step dev sweeps' best lr on
a 3x grid; C4 fisher masks of 32 x 256 windows): SmolLM2-135M best 3e-4 at Σ/windows 7.75, Qwen2.5-Coder-0.5B
best 1e-5 at 226: lr x Σ/windows is 2.3e-3 for both, where the best lr itself differs 30x. SCORES_C = 2.3e-3.
It does not carry to Gemma-3-270M: its C4 Σ/windows is 15,159 (2,000x SmolLM2's, while its SST-2 loss's own
curvature along the run's directions is 130x), so the rule picks 1.5e-7 where Gemma's sweep picked 1e-5, 67x
under. There the run barely moves, and the dev baseline (on by default) keeps the start if no step beats it; a
fixed 1e-4 diverges on Gemma. Across all three, lr x the SST-2 loss's curvature spreads 4.3x (2.5x between
SmolLM2 and Qwen), lr x median |g| 16x, lr x Σ/windows 67x (1.0x between SmolLM2 and Qwen).

A mask without scores (the built-in SmolLM2 mask, magnitude and random masks, masks written before
szoq stored scores) gives no estimate: the run takes the method's fixed default (`DEFAULT_LR`, 1e-4,
the lr SmolLM2's built-in mask was chosen with) and says so. The choice is deterministic given the
mask, which a resumed run checks by its sha256, so --resume recomputes the same lr; the run records it
under the settings' `lr_scores`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core.errors import TrainingError
from ..masks.artifact import MaskData
from ..runtime.zo_config import SCORES_C


@dataclass(frozen=True)
class LrFromScores:
    """What `--lr scores` chose, and from what."""

    lr: float
    c: float  # SCORES_C
    score_sum: float | None  # Σ of the kept weights' scores; None: the mask has none
    windows: int | None  # calibration windows the scores were summed over

    @property
    def from_scores(self) -> bool:
        return self.score_sum is not None

    @property
    def per_window(self) -> float | None:
        """Σ scores / windows: the estimate of tr(H) on the trained values."""
        return None if self.score_sum is None or not self.windows else self.score_sum / self.windows

    def record(self) -> dict:
        """The run's settings record it as `lr_scores`."""
        return {"lr": self.lr, "c": self.c, "score_sum": self.score_sum, "windows": self.windows, "per_window": self.per_window}


def lr_from_scores(scores: torch.Tensor | None, windows: int | None, fallback: float, c: float = SCORES_C) -> LrFromScores:
    """lr = c / (Σ scores / windows), to 2 significant digits; `fallback` when there are no scores.

    Args:
        scores: The trained values' Σg² [k] (the mask's stored scores), or None.
        windows: How many calibration windows they were summed over (the mask's `calibration.samples`).
        fallback: The lr when `scores` is None (the method's fixed default).
        c: The target lr x Σ scores / windows.

    Raises:
        TrainingError: scores without a window count, or a sum that is 0 or not finite (no step size follows).
    """
    if scores is None:
        return LrFromScores(fallback, c, None, None)
    total = float(scores.double().sum())
    if not windows or windows < 1:
        raise TrainingError("--lr scores: the mask records no calibration window count, so its Σg² has no scale",
                            hint="give --lr a number, or rebuild the mask with szoq mask build (it records --samples)")
    if not (math.isfinite(total) and total > 0):
        raise TrainingError(f"--lr scores: the mask's scores sum to {total:g}, no step size follows from them",
                            hint="give --lr a number (a mask of all-zero scores ranks nothing: rebuild it on more text)")
    return LrFromScores(float(f"{c / (total / windows):.2g}"), c, total, int(windows))


def lr_of_mask(mask: MaskData) -> LrFromScores | None:
    """What `--lr scores` takes from `mask`'s stored scores (as `szoq mask show` reports it); None when the mask stores
    no scores, records no calibration window count, or its scores sum to 0."""
    scores = mask.flat_scores(list(mask.indices))  # [nnz], None without scores
    if scores is None:
        return None
    try:
        return lr_from_scores(scores, (mask.config.calibration or {}).get("samples"), fallback=math.nan)
    except TrainingError:
        return None
