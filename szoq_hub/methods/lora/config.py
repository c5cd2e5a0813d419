"""`LoRASettings`: what a ZO-LoRA adapter is (rank, alpha, targets), torch-free; `runtime.lora` attaches it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ...core.errors import ConfigError

LORA_TARGETS = ("q_proj", "v_proj")  # MeZO's LoRA default


@dataclass(frozen=True)
class LoRASettings:
    """What the adapter is: rank, scale and which linears it wraps.

    Attributes:
        rank: r, the inner dimension of A [r, in] and B [out, r].
        alpha: The scale numerator: the update is (alpha / r) B A.
        targets: Module-name suffixes to wrap (`q_proj` matches `model.layers.3.self_attn.q_proj`).
    """

    rank: int = field(default=8, metadata={"help": "LoRA rank r"})
    alpha: float = field(default=16.0, metadata={"help": "LoRA alpha: the update is (alpha / r) B A"})
    targets: tuple[str, ...] = field(default=LORA_TARGETS, metadata={"help": "module-name suffixes to adapt"})

    def __post_init__(self) -> None:
        if int(self.rank) != self.rank or self.rank < 1:
            raise ConfigError(f"LoRA rank must be a positive integer, got {self.rank!r}", hint="pass --lora 8 (MeZO's rank)")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0):
            raise ConfigError(f"LoRA alpha must be a positive number, got {self.alpha!r}", hint="pass --lora-alpha 16 (MeZO's)")
        if not self.targets or any(not t or not isinstance(t, str) for t in self.targets):
            raise ConfigError(f"LoRA targets must be non-empty module names, got {list(self.targets)!r}", hint="for example q_proj,v_proj")

    @property
    def scaling(self) -> float:
        return float(self.alpha) / int(self.rank)
