"""`SparseTrainable`: the mask's fp32 values on the quantized runtime (runtime/sparse.py).

A `VectorTrainable` over the sparse value vector [nnz]; its best-dev and final files are deltas
(`delta.py`), its card says which mask and quantization it trained with. Curvature-aware SensZOQ
(methods/curvature/) trains with it too: the run's method checks the mask (`check_mask`) and its
`zo` settings shape the optimizer, so nothing here asks which of the two it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ...hub.refs import pinned_mask_ref
from ..trainable import VectorTrainable, card_task
from .config import DELTA_CARD_TAGS, DELTA_FILE
from .delta import save_delta
from .setup import open_model_and_mask

if TYPE_CHECKING:
    from ...training.config import FinetuneConfig
    from ...training.run_folder import RunFolder


class SparseTrainable(VectorTrainable):
    """The mask's fp32 values on the quantized runtime (SensZOQ)."""

    final_file = DELTA_FILE

    def __init__(self, config: FinetuneConfig, device: torch.device, dtype: torch.dtype, settings: dict, writer: bool) -> None:
        from ...runtime.sparse import load_sparse_model

        self.source, self.fingerprint, self.mask, self.mask_sha = open_model_and_mask(config.model, config.mask, config.revision)
        config.method_config.check_mask(config, self.mask)  # before any weight loads
        self.sparse = load_sparse_model(self.source, self.mask, quant=config.quant, device=device, compute_dtype=dtype)
        self.model, self.tokenizer = self.sparse.model, self.sparse.tokenizer
        self.mask_ref = pinned_mask_ref(config.mask, self.mask_sha)  # names this exact mask later (eval/merge defaults, messages)
        super().__init__(self.sparse.values, config, {**settings, "mask_ref": self.mask_ref}, writer,  # values [nnz] fp32
                         scores=self._scores(config))
        self.perturbed = self.sparse.perturbed

    def _scores(self, config: FinetuneConfig) -> torch.Tensor | None:
        """The mask's scores [nnz] in value order when the preconditioner reads them (else None)."""
        if config.zo.precondition == "none":
            return None
        return self._value_scores()

    def _value_scores(self) -> torch.Tensor | None:
        """The mask's scores [nnz] in the order of the values, or None when it stores none."""
        return self.mask.flat_scores([name for name, _, _ in self.sparse.segments])

    def lr_scores(self) -> tuple[torch.Tensor | None, int | None]:
        """The mask's Σg² [nnz] (in value order) and its calibration windows; (None, None) for a mask without scores."""
        scores = self._value_scores()  # [nnz] or None
        return (None, None) if scores is None else (scores, (self.mask.config.calibration or {}).get("samples"))

    @property
    def nnz(self) -> int:
        return self.mask.nnz

    def record(self) -> dict:
        return {"nnz": self.nnz, "mask_sha256": self.mask_sha, "mask_ref": self.mask_ref}

    def save_values(self, path: Path, values: torch.Tensor, **facts) -> None:
        values = values.detach().to("cpu", copy=True)  # [nnz]
        tensors = {name: values[off : off + n].clone() for name, off, n in self.sparse.segments}  # name -> [nnz_name]
        save_delta(path, tensors, mask_sha256=self.mask_sha, fingerprint=self.fingerprint, base_model=self.source.base_model,
                   settings={**self.settings, **facts})

    def write_final(self, run: RunFolder, config: FinetuneConfig, result: dict) -> None:
        model, mask, task = config.model, config.mask, card_task(config)
        run.write_card(title=f"# Sparse ZO delta for {self.source.base_model}",
                       summary="Fine-tuned sparse values (fp32) over a sensitivity mask, trained with zeroth-order SPSA on a quantized base (SensZOQ).",
                       rows=[("mask", f"`{mask}` (sha256 {self.mask_sha[:12]})"), ("quant", config.quant)], config=config,
                       result={**result, "base_model": self.source.base_model}, tags=DELTA_CARD_TAGS,
                       use=[f"szoq eval --model {model} --mask {mask} --delta THIS_FOLDER --task {task}",
                            f"szoq merge --model {model} --mask {mask} --delta THIS_FOLDER --out merged/"])
        self.save_values(run.file(self.final_file), self.values, **result)
