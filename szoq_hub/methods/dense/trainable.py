"""`DenseTrainable`: every decoder linear weight of the fp32 model, the dense MeZO baseline (runtime.py).

No copy of the best weights fits in memory, so a dev improvement writes the checkpoint and then
the best-dev file; the final file is `dense.safetensors`, after which the checkpoint and best-dev
copies (hundreds of MB each, only needed to resume) are removed.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from ...core.errors import TrainingError
from ...data.models import fingerprint_from, parameter_layout, resolve_model
from ...runtime.zo import StepRecord
from ..trainable import card_task, checkpoint_meta
from .config import DENSE_FILE
from .runtime import DenseModel, DenseZO, dense_metadata, load_dense_model, save_dense

if TYPE_CHECKING:
    from ...training.config import FinetuneConfig
    from ...training.run_folder import RunFolder

DENSE_CHECKPOINT_FORMAT = "szoq.dense-checkpoint"


class DenseTrainable:
    """Every decoder linear weight of the fp32 model: the dense MeZO baseline (see the module doc)."""

    final_file = DENSE_FILE

    def __init__(self, config: FinetuneConfig, device: torch.device, dtype: torch.dtype, settings: dict, writer: bool) -> None:
        self.source = resolve_model(config.model, revision=config.revision)
        self.fingerprint = fingerprint_from(parameter_layout(self.source), self.source.identity)
        self.dense: DenseModel = load_dense_model(self.source, device=device)
        self.model, self.tokenizer = self.dense.model, self.dense.tokenizer
        self.opt = DenseZO(self.dense.weights, config.zo)
        self.settings, self.writer = settings, writer
        self.perturbed = self.dense.perturbed

    @property
    def nnz(self) -> int:
        return self.dense.numel

    def record(self) -> dict:
        return {"nnz": self.nnz, "mask_sha256": None, "mask_ref": None}

    def step(self, closure, step: int) -> StepRecord:
        return self.opt.step(closure, step)

    def estimate(self, closure, step: int) -> StepRecord:
        return self.opt.estimate(closure, step)

    def set_lr(self, lr: float) -> None:
        self.opt.config = replace(self.opt.config, lr=lr)  # the lr enters through the estimate (the record's lr)

    def _save_dense(self, path, **facts) -> None:
        save_dense(path, self.dense, fingerprint=self.fingerprint, base_model=self.source.base_model, **facts)

    def restore(self, run: RunFolder) -> tuple[int, int | None, float] | None:
        if not run.checkpoint.is_file():
            return None
        opt = self.opt
        meta = self.dense.load_weights(run.checkpoint, other=lambda key, t: opt.load_state_tensor(key.removeprefix("opt."), t) if key.startswith("opt.") else None)
        if meta.get("format") != DENSE_CHECKPOINT_FORMAT:
            raise TrainingError(f"{run.checkpoint} is corrupt (not a dense checkpoint)", hint="start a new run in another --out folder")
        return checkpoint_meta(run.checkpoint, meta)

    def resume_best(self, run: RunFolder, start: int, best_step: int | None, best_dev: float) -> None:
        """A best-dev file is written only after the checkpoint that names its step (keep_best).

        Raises:
            TrainingError: the checkpoint names an older best step that the best-dev file does not hold.
        """
        if best_step is None:
            run.best.unlink(missing_ok=True)
            return
        held = dense_metadata(run.best).get("step") if run.best.is_file() else None
        if held == str(best_step):
            return
        if best_step == start:  # the checkpoint's weights are the best ones (it stopped before writing the file)
            self._save_dense(run.best, settings={**self.settings, "step": best_step, "dev": best_dev}, step=str(best_step))
            return
        raise TrainingError(f"{run.best} does not hold the best step {best_step} that the checkpoint names (it holds {held})",
                            hint="the run folder was changed by hand; start a new run in another --out folder")

    def save_checkpoint(self, run: RunFolder, meta: dict[str, str]) -> None:
        """The trained weights (by parameter name) and `opt.J.K` optimizer state, tensor by tensor."""
        from ...data.checkpoint import write_tensors

        write_tensors(run.checkpoint, [*self.dense.tensors(), *((f"opt.{k}", t) for k, t in self.opt.state_tensors())],
                      {"format": DENSE_CHECKPOINT_FORMAT, **meta})

    def keep_best(self, run: RunFolder, step: int, dev: float, meta: dict[str, str]) -> bool:
        # No copy of the weights is kept in memory: the checkpoint naming this step is written
        # first, then the best-dev file, so a best-dev file is never newer than the checkpoint's best.
        # At step 0 (the untouched model) the checkpoint is skipped: it would hold the base weights and
        # a fresh optimizer, what a new start gives; a run stopped before its first checkpoint starts
        # over, and resume_best drops this best-dev file then.
        if self.writer:
            if step > 0:
                self.save_checkpoint(run, meta)
            self._save_dense(run.best, settings={**self.settings, "step": step, "dev": dev}, step=str(step))
        return step > 0

    def use_best(self, run: RunFolder, best_step: int | None, done: int) -> None:
        if best_step is not None and best_step != done:
            self.dense.load_weights(run.best, dense_file=True)

    def write_final(self, run: RunFolder, config: FinetuneConfig, result: dict) -> None:
        run.write_card(title=f"# Dense MeZO weights for {self.source.base_model}",
                       summary="The decoder's linear weights after zeroth-order SPSA over all of them (MeZO; the baseline of SensZOQ), in "
                               "`dense.safetensors` under the model's parameter names. Embeddings, norms and lm_head are the base model's.",
                       rows=[("trained", f"every decoder linear weight ({self.nnz:,} values), fp32")], config=config,
                       result={**result, "base_model": self.source.base_model}, tags=["szoq", "zeroth-order", "mezo"],
                       use=[f"szoq eval --model {config.model} --delta THIS_FOLDER --task {card_task(config)}"])
        self._save_dense(run.file(self.final_file), settings={**self.settings, **result})
        run.remove_resume_files()  # dense.safetensors holds the best-dev weights


