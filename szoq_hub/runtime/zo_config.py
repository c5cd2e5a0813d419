"""`ZOConfig`: the ZO optimizer's settings, torch-free (FinetuneConfig and `szoq --help` read it); `runtime.zo` runs them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..core.errors import ConfigError

OPTIMIZERS = ("zo-sgd", "zo-momentum", "zo-adam")
LR_SCHEDULES = ("constant", "linear", "cosine")


@dataclass
class ZOConfig:
    """Settings of a ZO optimizer (validated on creation)."""

    lr: float = field(default=1e-4, metadata={"help": "learning rate (peak, after warmup)"})
    eps: float = field(default=1e-3, metadata={"help": "perturbation scale"})
    optimizer: str = field(default="zo-sgd", metadata={"help": "zo-sgd, zo-momentum or zo-adam"})
    zo_samples: int = field(default=1, metadata={"help": "SPSA estimates averaged per step (q)"})
    lr_schedule: str = field(default="constant", metadata={"help": "constant, linear or cosine"})
    warmup: int = field(default=0, metadata={"help": "linear warmup steps (lr = lr * step / warmup)"})
    weight_decay: float = field(default=0.0, metadata={"help": "decoupled weight decay on the values"})
    total_steps: int = field(default=1, metadata={"help": "steps of the run (for linear/cosine decay)"})
    seed: int = field(default=0, metadata={"help": "run seed; step seeds derive from it"})
    momentum: float = field(default=0.9, metadata={"help": "zo-momentum: momentum factor"})
    beta1: float = field(default=0.9, metadata={"help": "zo-adam: first-moment decay"})
    beta2: float = field(default=0.999, metadata={"help": "zo-adam: second-moment decay"})
    adam_eps: float = field(default=1e-8, metadata={"help": "zo-adam: denominator epsilon"})

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}", hint=f"choose one of: {', '.join(OPTIMIZERS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"unknown lr schedule {self.lr_schedule!r}", hint=f"choose one of: {', '.join(LR_SCHEDULES)}")
        if not (math.isfinite(self.lr) and self.lr >= 0):
            raise ConfigError(f"--lr must be a finite number >= 0, got {self.lr}", hint="e.g. --lr 1e-4")
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
