"""`ZOConfig`: the ZO optimizer's settings, torch-free (FinetuneConfig and `szoq --help` read it); `runtime.zo` runs them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from ..core.errors import ConfigError

OPTIMIZERS = ("zo-sgd", "zo-momentum", "zo-adam", "zo-rmsprop")
LR_SCHEDULES = ("constant", "linear", "cosine")
PRECONDITIONERS = ("none", "scores", "online")
CURVATURES = ("fisher", "hessian")
# `--lr auto`: the run picks its lr from a short probe of |g| before its first step (training/lr_probe.py).
AUTO_LR = "auto"
AUTO_C = 1e-3  # its target lr x median |g| (the sweeps' best runs: ~1.5e-4..2e-3 across models)
AUTO_PROBES = 8  # K: estimates in the probe
# `--lr scores` (a sparse run's default): lr = SCORES_C / (the mask's Σg² / calibration windows) (training/lr_scores.py).
SCORES_LR = "scores"
SCORES_C = 2.3e-3  # the swept best lr x Σg²/window, the same for SmolLM2 and Qwen2.5 0.5B, not Gemma-3 (bench/results/lr_scale.md)
LR_MODES = (AUTO_LR, SCORES_LR)


@dataclass
class ZOConfig:
    """Settings of a ZO optimizer (validated on creation)."""

    lr: float | Literal["auto", "scores"] = field(default=1e-4, metadata={"help": "learning rate (peak, after warmup); auto: chosen by "
                                                                                "the run's probe (training/lr_probe.py); scores: from the "
                                                                                "mask's Σg² (training/lr_scores.py)"})
    eps: float = field(default=1e-3, metadata={"help": "perturbation scale"})
    optimizer: str = field(default="zo-sgd", metadata={"help": "zo-sgd, zo-momentum, zo-adam or zo-rmsprop (per-value step sizes)"})
    zo_samples: int = field(default=1, metadata={"help": "SPSA estimates averaged per step (q)"})
    lr_schedule: str = field(default="constant", metadata={"help": "constant, linear or cosine"})
    warmup: int = field(default=0, metadata={"help": "linear warmup steps (lr = lr * step / warmup)"})
    weight_decay: float = field(default=0.0, metadata={"help": "decoupled weight decay on the values"})
    total_steps: int = field(default=1, metadata={"help": "steps of the run (for linear/cosine decay)"})
    seed: int = field(default=0, metadata={"help": "run seed; step seeds derive from it"})
    momentum: float = field(default=0.9, metadata={"help": "zo-momentum: momentum factor"})
    beta1: float = field(default=0.9, metadata={"help": "zo-adam: first-moment decay"})
    beta2: float = field(default=0.999, metadata={"help": "zo-adam, zo-rmsprop: second-moment decay"})
    adam_eps: float = field(default=1e-8, metadata={"help": "zo-adam, zo-rmsprop: denominator epsilon"})
    precondition: str = field(default="none", metadata={"help": "diagonal preconditioner D of the perturbation (the step follows D^2 times the "
                                                                "gradient): none; scores (fixed, from the mask's Σg²); online (an estimate "
                                                                "updated every step, started from the scores where the mask has them)"})
    precond_alpha: float = field(default=1.0, metadata={"help": "preconditioner exponent α: D ∝ (F / mean F + λ)^(-α/2); 0 = no preconditioning"})
    precond_lambda: float = field(default=0.1, metadata={"help": "preconditioner damping λ > 0 (bounds D for weights of small F)"})
    curvature: str = field(default="fisher", metadata={"help": "--precondition online: fisher (squared gradient, from the two forwards "
                                                               "already taken) or hessian (second difference, one extra forward per step)"})
    curvature_beta: float = field(default=1e-8, metadata={"help": "--precondition online: EMA rate of the diagonal estimate (one step's "
                                                                  "estimate is very noisy: see runtime/zo_curvature.py)"})

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}", hint=f"choose one of: {', '.join(OPTIMIZERS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"unknown lr schedule {self.lr_schedule!r}", hint=f"choose one of: {', '.join(LR_SCHEDULES)}")
        self.lr = _lr_of(self.lr)
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise ConfigError(f"--eps must be > 0, got {self.eps}", hint="the paper uses --eps 1e-3")
        if self.zo_samples < 1:
            raise ConfigError(f"--zo-samples must be >= 1, got {self.zo_samples}", hint="e.g. --zo-samples 1")
        if self.warmup < 0 or self.total_steps < 1:
            raise ConfigError(f"need --warmup >= 0 and steps >= 1 (got {self.warmup}, {self.total_steps})", hint="e.g. --warmup 0")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"--weight-decay must be >= 0, got {self.weight_decay}", hint="e.g. --weight-decay 0")
        for name in ("momentum", "beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}", hint="e.g. 0.9")
        if self.precondition not in PRECONDITIONERS:
            raise ConfigError(f"unknown preconditioner {self.precondition!r}", hint=f"choose one of: {', '.join(PRECONDITIONERS)}")
        if self.curvature not in CURVATURES:
            raise ConfigError(f"unknown curvature estimate {self.curvature!r}", hint=f"choose one of: {', '.join(CURVATURES)}")
        if not (math.isfinite(self.precond_alpha) and 0.0 <= self.precond_alpha <= 4.0):
            raise ConfigError(f"--precond-alpha must be in [0, 4], got {self.precond_alpha}", hint="e.g. --precond-alpha 1 (D = (F/mean F + λ)^(-1/2))")
        if not (math.isfinite(self.precond_lambda) and self.precond_lambda > 0):
            raise ConfigError(f"--precond-lambda must be > 0, got {self.precond_lambda}", hint="e.g. --precond-lambda 0.1")
        if not 0.0 <= self.curvature_beta < 1.0:
            raise ConfigError(f"--curvature-beta must be in [0, 1), got {self.curvature_beta}", hint="e.g. --curvature-beta 1e-8")


def _lr_of(given: object) -> float | Literal["auto", "scores"]:
    """`--lr` as given (a number, or text as the command line gives it): a float >= 0, "auto" or "scores".

    Raises:
        ConfigError: anything else (one line, with a hint).
    """
    value = given
    if isinstance(given, str):
        if given.strip().lower() in LR_MODES:
            return given.strip().lower()
        try:
            value = float(given)
        except ValueError:
            value = None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"--lr must be a finite number >= 0, auto or scores, got {given!r}",
                          hint="e.g. --lr 1e-4, --lr scores (from the mask's Σg²) or --lr auto (a short probe of the projected gradient |g|)")
    return float(value)
