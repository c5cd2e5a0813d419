"""`DenseResult`: a finished dense MeZO run (`dense.safetensors`, the trained weights) for `eval` and `merge`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..result import Merged, MethodResult, Scorable
from ..spec import refuse_unquantized_options
from .config import DENSE_FILE


class DenseResult(MethodResult):
    """The fp32 base model with a dense run's trained linear weights."""

    file = DENSE_FILE
    describes = "trained weights"
    flag = "--dense"

    @classmethod
    def holds(cls, ref: str | Path) -> bool:
        from .runtime import is_dense_file

        return is_dense_file(ref)

    @classmethod
    def check_eval(cls, ref: str | Path, *, mask: str | None, quant: str | None, dtype: str | None) -> None:
        refuse_unquantized_options(str(ref), mask=mask, quant=quant, dtype=dtype)

    @classmethod
    def for_eval(cls, ref: str | Path, *, model: str | None, mask: str | None, quant: str | None, dtype: str | None,
                 revision: str | None, device: Any) -> Scorable:
        from .runtime import load_dense_result

        dense = load_dense_result(ref, model=model, revision=revision, device=device)
        return Scorable(dense.model, dense.tokenizer, "dense", "fp32")

    @classmethod
    def merged(cls, ref: str | Path, *, model: str | None, mask_ref: str | None, revision: str | None, device: Any) -> Merged:
        """The base model with its trained weights in place of the base's."""
        from .runtime import load_dense_result

        refuse_unquantized_options(str(ref), mask=mask_ref)
        dense = load_dense_result(ref, model=model, revision=revision, device=device)
        return Merged(dense.model, dense.tokenizer, dense.source, dense.numel)
