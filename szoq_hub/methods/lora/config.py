"""ZO-LoRA's settings, torch-free: `LoRASettings` (what an adapter is: rank, alpha, targets; `runtime.py`
attaches it) and `LoRAConfig` (the method's `szoq finetune` options)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from ...core.defaults import LORA_LR
from ...core.errors import ConfigError
from ..spec import MethodConfig, opt

if TYPE_CHECKING:
    from ...training.config import FinetuneConfig

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


LORA_FILE = "lora.safetensors"


@dataclass
class LoRAConfig(MethodConfig):
    """ZO-LoRA's settings: rank (`--lora R`, which picks the method), alpha and the adapted linears."""

    lora: int = opt(0, "ZO-LoRA rank R (0 = off): low-rank adapters on the frozen quantized base (--lora-targets), trained by the same "
                       "ZO estimator, no mask. Writes lora.safetensors instead of a delta. Not with --dense or --mask.", selects=True, example="8")
    lora_alpha: float = opt(16.0, "ZO-LoRA alpha: the update is (alpha / R) B A (with --lora).")
    lora_targets: str = opt("q_proj,v_proj", "ZO-LoRA: comma-separated names of the linears to adapt (with --lora; MeZO's q_proj,v_proj).")

    final_file: ClassVar[str] = LORA_FILE
    default_lr: ClassVar[float | str] = LORA_LR
    title: ClassVar[str] = "LoRA"
    summary: ClassVar[str] = "LoRA adapters on the frozen quantized base (ZO-LoRA; --lora R; writes lora.safetensors)"

    def __post_init__(self) -> None:
        if self.lora < 0:
            raise ConfigError(f"--lora must be >= 0, got {self.lora}", hint="e.g. --lora 8")

    def check_run(self, run: FinetuneConfig) -> None:
        """A LoRA run adapts the quantized base itself: a rank, no mask (so no mask scores to precondition
        by; `--precondition online` needs none); its settings are valid."""
        if self.lora < 1:
            raise ConfigError("a LoRA run needs its rank", hint="pass --lora R, e.g. --lora 8")
        if run.mask is not None:
            raise ConfigError(f"--mask {run.mask} does not apply to --lora: the adapters train on the quantized base, no mask selects weights",
                              hint="drop --mask for a LoRA run, or drop --lora to train the masked weights")
        if run.zo.precondition == "scores":
            raise ConfigError("--precondition scores does not apply to --lora: it preconditions by a mask's scores, and a LoRA run has no mask",
                              hint="drop --precondition, or use --precondition online (it needs no scores)")
        self.settings()  # validates rank, alpha, targets

    def settings(self) -> LoRASettings:
        """The adapter the settings ask for.

        Raises:
            ConfigError: a rank that is not positive, a bad alpha or empty target names.
        """
        targets = tuple(t.strip() for t in self.lora_targets.split(","))
        return LoRASettings(rank=self.lora, alpha=self.lora_alpha, targets=targets)
