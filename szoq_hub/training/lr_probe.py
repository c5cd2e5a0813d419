"""`--lr auto`: a step size that carries across models, from a short probe of the projected gradient.

The best lr of a ZO run differs ~30x between models (SST-2 SensZOQ 100-step dev sweeps: SmolLM2-135M
3e-4, Gemma-3-270M 3e-5, Qwen2.5-Coder-0.5B 1e-5..3e-5), and so does the typical two-point
projected gradient |g| = |(L+ - L-) / (2 eps)| (median over steps: SmolLM2 3.3, Qwen 0.5B 15.5,
Gemma ~20x SmolLM2's). Their product lr x median |g| spans only ~1.5e-4..2e-3, centred near
SmolLM2's 3e-4 x 3.3 = 1e-3. So `--lr auto` takes lr = AUTO_C / median |g|, AUTO_C = 1e-3.

The median comes from K (`AUTO_PROBES`) estimates before the first step: the run's own estimator
(`Trainable.estimate`, the optimizer's two-point estimate: same eps, q, preconditioner) at the
starting values, on the training batches of steps 0..K-1, with no update. Probe k takes step
index -(k + 1), so its seeds come from the run's seed like every step's, yet are never a
training step's seeds: steps 0.. of the run are those of a run given the chosen lr. The lr is
rounded to 2 significant digits, so the value printed and recorded is the one used (`--lr 6.5e-05`
repeats the run step for step). The run records the choice (`LrProbe.record()`, under the
settings' `lr_auto`); --resume reads it back and never probes again.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field, replace
from typing import Callable

from ..core.errors import TrainingError
from ..runtime.zo import StepRecord
from ..runtime.zo_config import AUTO_C, AUTO_PROBES


@dataclass(frozen=True)
class LrProbe:
    """What `--lr auto` chose, and from what."""

    lr: float
    median_grad: float  # median |g| over the probe's estimates
    probes: int  # K
    c: float  # AUTO_C
    grads: list[float] = field(default_factory=list)  # the probe's |g|, in order

    def record(self) -> dict:
        """The run's settings record it as `lr_auto`."""
        return {"lr": self.lr, "median_grad": self.median_grad, "probes": self.probes, "c": self.c, "grads": list(self.grads)}

    @classmethod
    def from_record(cls, data: dict) -> "LrProbe":
        return cls(float(data["lr"]), float(data["median_grad"]), int(data["probes"]), float(data["c"]), [float(g) for g in data.get("grads", [])])


def probe_step(k: int) -> int:
    """The step index of probe k (0-based): negative, so its seeds are no training step's."""
    return -(k + 1)


def lr_from_grads(grads: list[float], c: float = AUTO_C) -> LrProbe:
    """lr = c / median |g|, to 2 significant digits.

    Args:
        grads: The probe's projected gradients (signed or not).
        c: The target lr x median |g|.

    Raises:
        TrainingError: a median |g| of 0 or not finite (no step size follows from it).
    """
    mags = [abs(g) for g in grads]
    median = statistics.median(mags)
    if not (math.isfinite(median) and median > 0):
        raise TrainingError(f"--lr auto: the probe's median |g| is {median:g}, no step size follows from it",
                            hint="give --lr a number, or a larger --eps (a loss that does not move at this eps gives |g| 0)")
    return LrProbe(float(f"{c / median:.2g}"), median, len(mags), c, mags)


def probe_lr(estimate: Callable[[int], StepRecord], probes: int = AUTO_PROBES, c: float = AUTO_C) -> LrProbe:
    """Run the probe: `estimate(step)` for the K probe steps, then lr = c / median |g|.

    Args:
        estimate: The run's two-point estimate at a (negative) step index, on that probe's batch; no update.
        probes: K.
        c: The target lr x median |g|.

    Returns:
        The choice (its `probes` is K; with q samples a step, the median is over K q estimates).

    Raises:
        TrainingError: a non-finite loss in the probe, or a median |g| of 0.
    """
    grads = [g for k in range(probes) for g in estimate(probe_step(k)).grads]
    return replace(lr_from_grads(grads, c), probes=probes)
