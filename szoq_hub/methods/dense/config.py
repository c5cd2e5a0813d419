"""`DenseConfig`: dense MeZO, ZO over every decoder linear weight of the fp32 model (the baseline)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ...core.defaults import DENSE_LR
from ...core.errors import ConfigError
from ..spec import MethodConfig, opt, refuse_unquantized_options

if TYPE_CHECKING:
    from ...training.config import FinetuneConfig

DENSE_FILE = "dense.safetensors"


@dataclass
class DenseConfig(MethodConfig):
    """Dense MeZO's settings: none of its own; `--dense` picks the method."""

    dense: bool = opt(False, "Dense MeZO baseline: ZO over every linear weight of the decoder layers (attention and MLP projections; embeddings, "
                             "norms and lm_head stay frozen) of the fp32 model, unquantized, no mask. Writes dense.safetensors (the trained "
                             "weights) instead of a delta. Memory: the fp32 model + one weight.", selects=True)

    final_file: ClassVar[str] = DENSE_FILE
    default_lr: ClassVar[float | str] = DENSE_LR
    quantized: ClassVar[bool] = False
    data_parallel: ClassVar[bool] = False
    summary: ClassVar[str] = "every decoder linear weight of the fp32 model (dense MeZO; writes dense.safetensors)"

    def check_run(self, run: FinetuneConfig) -> None:
        """Refuse a mask, a quantized base and a half-precision dtype (see `refuse_unquantized_options`),
        and a preconditioner (the dense model perturbs its weights itself, with plain z)."""
        refuse_unquantized_options("--dense", mask=run.mask, quant=run.quant, dtype=run.dtype, drop=", or drop --dense to train the masked weights")
        if run.zo.precondition != "none":
            raise ConfigError(f"--precondition {run.zo.precondition} does not apply to --dense: the dense model perturbs its weights with plain z",
                              hint="drop --precondition, or train a mask's values (--mask)")

    def record(self) -> dict:
        return {"dense": True}  # as 0.1.0 recorded a dense run
