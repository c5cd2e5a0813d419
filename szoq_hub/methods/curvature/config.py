"""`CurvatureConfig`: curvature-aware SensZOQ, the same masked fp32 values on the quantized base as
SensZOQ, stepped along a diagonal preconditioner of their curvature (issue 33).

Only the optimizer differs from SensZOQ. The perturbation is D z instead of z, with
D = c (F / mean F + λ)^(-α/2) and mean(D²) = 1, so the step follows D² times the gradient (a
diagonal Newton step when D² ~ 1 / curvature); F is the mask's stored fisher scores (Σg² per kept
weight), or an online estimate started from them; optionally each value gets its own step size
(zo-rmsprop). The derivations and costs are in runtime/zo_curvature.py. So the method owns no
runtime, trainable or artifact: `SparseTrainable` trains it and its result is a delta
(`SparseResult`) whose settings record `"method": "senszoq-curvature"`, which `eval --delta`,
`merge`, `export peft` and `delta push/pull` take exactly as a SensZOQ delta.

Its four settings are the method's own options, written once here, and `check_run` maps them onto
the run's `ZOConfig` in one place (`zo_settings`): the optimizer options they set (`--precondition`,
`--precond-alpha`, `--precond-lambda`, `--optimizer`) may be left out or repeat the same value; any
other value is refused rather than silently overridden. `--curvature` and `--curvature-beta`
(the online estimator) and the rest of the optimizer's options apply as they do to SensZOQ.

The defaults are provisional, pending the sweep: a probe on SmolLM2-135M SST-2 dev at 100 steps
gave 0.660 for scores-preconditioned α=1, λ=0.1 at lr 1e-3, 0.650 for zo-rmsprop at lr 1e-3, and
0.680 for plain SensZOQ at lr 1e-4: neither variant has beaten SensZOQ yet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, ClassVar

from ...core.errors import ConfigError
from ...runtime.zo_config import ZOConfig
from ..sparse.config import DELTA_FILE
from ..spec import MethodConfig, field_default, field_flag, opt

if TYPE_CHECKING:
    from ...masks.artifact import MaskData
    from ...training.config import FinetuneConfig

CURVATURE_METHOD = "senszoq-curvature"
CURVATURE_LR = 1e-3  # provisional: the probe's lr for both variants (see the module doc)
SOURCES = ("scores", "online")
ADAPTIVE_OPTIMIZER = "zo-rmsprop"  # --curvature-adaptive; off: zo-sgd
# ZOConfig field -> the setting of this method that decides it
OWNED = {"precondition": "curvature_source", "precond_alpha": "curvature_alpha", "precond_lambda": "curvature_lambda",
         "optimizer": "curvature_adaptive"}


def _flag(cls: type, name: str) -> str:
    return field_flag(next(f for f in fields(cls) if f.name == name))


@dataclass
class CurvatureConfig(MethodConfig):
    """Curvature-aware SensZOQ's settings (the mask: `FinetuneConfig.mask`, as for SensZOQ)."""

    curvature_source: str = opt("scores", "senszoq-curvature: where the preconditioner D comes from: scores (fixed, the mask's fisher "
                                          "Σg²; a mask built with --scorer fisher) or online (started from the scores, or ones, and "
                                          "updated every step: --curvature fisher|hessian at --curvature-beta).")
    curvature_alpha: float = opt(1.0, "senszoq-curvature: exponent α of D = c (F / mean F + λ)^(-α/2), in [0, 4] (0: plain SensZOQ, "
                                      "bit for bit).")
    curvature_lambda: float = opt(0.1, "senszoq-curvature: damping λ > 0 of D (bounds D where F is small).")
    curvature_adaptive: bool = opt(False, "senszoq-curvature: per-value adaptive step sizes (zo-rmsprop over the masked values) instead "
                                          "of zo-sgd.")

    final_file: ClassVar[str] = DELTA_FILE
    default_lr: ClassVar[float | str] = CURVATURE_LR
    takes_mask: ClassVar[bool] = True
    summary: ClassVar[str] = ("SensZOQ's masked values with a curvature-preconditioned ZO step, D from the mask's fisher scores "
                              "(--curvature-source, --curvature-alpha, --curvature-lambda, --curvature-adaptive; writes delta.safetensors)")

    def __post_init__(self) -> None:
        if self.curvature_source not in SOURCES:
            raise ConfigError(f"unknown --curvature-source {self.curvature_source!r}", hint=f"choose one of: {', '.join(SOURCES)}")
        if not (isinstance(self.curvature_alpha, (int, float)) and math.isfinite(self.curvature_alpha) and 0.0 <= self.curvature_alpha <= 4.0):
            raise ConfigError(f"--curvature-alpha must be in [0, 4], got {self.curvature_alpha}", hint="e.g. --curvature-alpha 1 (D = (F/mean F + λ)^(-1/2))")
        if not (isinstance(self.curvature_lambda, (int, float)) and math.isfinite(self.curvature_lambda) and self.curvature_lambda > 0):
            raise ConfigError(f"--curvature-lambda must be > 0, got {self.curvature_lambda}", hint="e.g. --curvature-lambda 0.1")
        if not isinstance(self.curvature_adaptive, bool):
            raise ConfigError(f"curvature_adaptive must be True or False, got {self.curvature_adaptive!r}", hint="pass --curvature-adaptive, or leave it out")

    def zo_settings(self) -> dict:
        """The optimizer settings the method's settings stand for (ZOConfig field -> value)."""
        return {"precondition": self.curvature_source, "precond_alpha": float(self.curvature_alpha),
                "precond_lambda": float(self.curvature_lambda), "optimizer": ADAPTIVE_OPTIMIZER if self.curvature_adaptive else "zo-sgd"}

    def check_run(self, run: FinetuneConfig) -> None:
        """Set the run's optimizer from the method's settings (the one place they meet `ZOConfig`).

        Raises:
            ConfigError: an optimizer option the method sets, given another value (`--optimizer
                zo-adam`, `--precond-alpha 0.5`): its own option says it instead.
        """
        wanted = self.zo_settings()
        for name, value in wanted.items():
            given = getattr(run.zo, name)
            if given != value and given != field_default(next(f for f in fields(ZOConfig) if f.name == name)):
                zo_flag, own = _flag(ZOConfig, name), _flag(CurvatureConfig, OWNED[name])
                raise ConfigError(f"{zo_flag} {given} does not apply to a {CURVATURE_METHOD} run: {own} sets it ({value})",
                                  hint=f"drop {zo_flag} and use {own}, or train with --method sparse to set {zo_flag} yourself")
        run.zo = replace(run.zo, **wanted)

    def check_mask(self, run: FinetuneConfig, mask: MaskData) -> None:
        """Refuse `--curvature-source scores` with a mask that stores no scores (magnitude, random, the built-in)."""
        if self.curvature_source == "scores" and mask.scores is None:
            raise ConfigError(f"mask {run.mask} holds no scores, and --curvature-source scores preconditions by them",
                              hint="rebuild it with fisher scores (szoq mask build MODEL --scorer fisher), or use --curvature-source online")
