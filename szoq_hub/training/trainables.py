"""What the fine-tuning loop trains: the `Trainable` protocol and its three implementations.

The loop (finetune.py) knows batches, seeds, the step log, dev evaluation, best-dev and
checkpoint timing; a trainable knows its values and files:
- `SparseTrainable`: the mask's fp32 values on the quantized runtime (runtime/sparse.py); its
  checkpoint holds the values, the optimizer state and the best-dev values (so resume never
  trusts a best-dev file newer than the checkpoint); its final file is the delta.
- `DenseTrainable`: every decoder linear weight of the fp32 model (the dense MeZO baseline,
  runtime/dense.py); no copy of the best weights fits in memory, so a dev improvement writes
  the checkpoint and then the best-dev file; its final file is `dense.safetensors`, after which
  the checkpoint and best-dev copies (hundreds of MB each, only needed to resume) are removed.
- `LoRATrainable` (--lora R): LoRA adapters on the quantized base, no mask; a sparse trainable
  whose values are the adapter vector and whose files are LoRA adapters (`lora.safetensors`).
`build_trainable` picks one from the settings.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Callable, Protocol

import torch
from torch import nn

from ..core.errors import TrainingError
from ..data.models import ModelSource, fingerprint_from, parameter_layout, resolve_model
from ..hub.refs import pinned_mask_ref
from ..runtime.delta import DELTA_CARD_TAGS, DELTA_FILE, save_delta
from ..runtime.dense import DENSE_FILE, DenseModel, DenseZO, dense_metadata, load_dense_model, save_dense
from ..runtime.lora_file import LORA_FILE, save_lora
from ..runtime.zo import StepRecord, make_optimizer
from .config import FinetuneConfig
from .run_folder import RunFolder, card_task, checkpoint_meta
from .setup import open_model_and_mask

DENSE_CHECKPOINT_FORMAT = "szoq.dense-checkpoint"


class Trainable(Protocol):
    """What the loop trains. `writer` (rank 0) writes files; every rank holds the same state."""

    model: nn.Module  # what the loss forwards run
    tokenizer: Any
    source: ModelSource
    fingerprint: str
    final_file: str  # the run folder's last file: the run is complete once it exists

    @property
    def nnz(self) -> int:
        """How many values train."""

    def record(self) -> dict:
        """Facts the run folder's config records (nnz, mask sha256 and ref, ...)."""

    def perturbed(self, points: Any) -> AbstractContextManager[int]:
        """Within the block, a forward over P copies of a batch sees point p in copy p; yields P."""

    def step(self, closure: Callable[[Any], list[float]], step: int) -> StepRecord:
        """One ZO step: the closure maps the step's 2q points to their losses; then the update."""

    def restore(self, run: RunFolder) -> tuple[int, int | None, float] | None:
        """Load the checkpoint (state, optimizer, best); returns (step, best step, best dev), None without one."""

    def resume_best(self, run: RunFolder, start: int, best_step: int | None, best_dev: float) -> None:
        """(writer) Make the best-dev file agree with the checkpoint resumed from."""

    def save_checkpoint(self, run: RunFolder, meta: dict[str, str]) -> None:
        """(writer) Write the checkpoint with the loop's `meta` (step, best step, best dev)."""

    def keep_best(self, run: RunFolder, step: int, dev: float, meta: dict[str, str]) -> bool:
        """Keep the current state as the best; returns True when that wrote the checkpoint too."""

    def use_best(self, run: RunFolder, best_step: int | None, done: int) -> None:
        """Load the best-dev state (if any) for the final evaluation."""

    def write_final(self, run: RunFolder, config: FinetuneConfig, result: dict) -> None:
        """(writer) Write the card and the final file; `result` holds the metric, scores and task name."""


class SparseTrainable:
    """The mask's fp32 values on the quantized runtime (see the module doc)."""

    final_file = DELTA_FILE

    def __init__(self, config: FinetuneConfig, device: torch.device, dtype: torch.dtype, settings: dict, writer: bool) -> None:
        from ..runtime.sparse import load_sparse_model

        self.source, self.fingerprint, self.mask, self.mask_sha = open_model_and_mask(config.model, config.mask, config.revision)
        self.sparse = load_sparse_model(self.source, self.mask, quant=config.quant, device=device, compute_dtype=dtype)
        self.model, self.tokenizer = self.sparse.model, self.sparse.tokenizer
        self.values = self.sparse.values  # [nnz] fp32 master values
        self.opt = make_optimizer(self.values, config.zo)
        self.mask_ref = pinned_mask_ref(config.mask, self.mask_sha)  # names this exact mask later (eval/merge defaults, messages)
        self.settings, self.writer = {**settings, "mask_ref": self.mask_ref}, writer
        self.best_values: torch.Tensor | None = None  # [nnz], on every rank
        self.perturbed = self.sparse.perturbed

    @property
    def nnz(self) -> int:
        return self.mask.nnz

    def record(self) -> dict:
        return {"nnz": self.nnz, "mask_sha256": self.mask_sha, "mask_ref": self.mask_ref}

    def step(self, closure, step: int) -> StepRecord:
        return self.opt.step(closure, step)

    def _save_delta(self, path, tensors: dict[str, torch.Tensor], **facts) -> None:
        save_delta(path, tensors, mask_sha256=self.mask_sha, fingerprint=self.fingerprint, base_model=self.source.base_model,
                   settings={**self.settings, **facts})

    def restore(self, run: RunFolder) -> tuple[int, int | None, float] | None:
        ckpt = run.read_checkpoint()
        if ckpt is None:
            return None
        tensors, meta = ckpt
        step, best_step, best_dev = checkpoint_meta(run.checkpoint, meta)
        if "values" not in tensors or (best_step is not None and "best" not in tensors):
            raise TrainingError(f"{run.checkpoint} is corrupt (no values)", hint="start a new run in another --out folder")
        self.values.copy_(tensors["values"])
        state = {k.removeprefix("opt."): v for k, v in tensors.items() if k.startswith("opt.")}
        if "t" in state:
            state["t"] = state["t"].reshape(())
        self.opt.load_state_dict(state)
        if best_step is not None:
            self.best_values = tensors["best"].to(self.values.device)  # [nnz]
        return step, best_step, best_dev

    def resume_best(self, run: RunFolder, start: int, best_step: int | None, best_dev: float) -> None:
        # best-dev.safetensors may be newer than the checkpoint (an eval after it improved, then
        # the run stopped): make it the checkpoint's best again, or drop it if there was none.
        if self.best_values is None:
            run.best.unlink(missing_ok=True)
            return
        tensors = {name: self.best_values[off : off + n].clone() for name, off, n in self.sparse.segments}
        self._save_delta(run.best, tensors, step=best_step, dev=best_dev)

    def save_checkpoint(self, run: RunFolder, meta: dict[str, str]) -> None:
        tensors = {"values": self.values}
        if self.best_values is not None:
            tensors["best"] = self.best_values  # [nnz]
        for k, v in self.opt.state_dict().items():
            tensors[f"opt.{k}"] = v.reshape(-1) if v.dim() == 0 else v
        run.write_checkpoint(tensors, meta)

    def keep_best(self, run: RunFolder, step: int, dev: float, meta: dict[str, str]) -> bool:
        self.best_values = self.values.clone()
        if self.writer:
            self._save_delta(run.best, self.sparse.delta_tensors(), step=step, dev=dev)
        return False

    def use_best(self, run: RunFolder, best_step: int | None, done: int) -> None:
        if self.best_values is not None:  # without a dev set: the final values
            self.values.copy_(self.best_values)

    def write_final(self, run: RunFolder, config: FinetuneConfig, result: dict) -> None:
        model, mask, task = config.model, config.mask, card_task(config)
        run.write_card(title=f"# Sparse ZO delta for {self.source.base_model}",
                       summary="Fine-tuned sparse values (fp32) over a sensitivity mask, trained with zeroth-order SPSA on a quantized base (SensZOQ).",
                       rows=[("mask", f"`{mask}` (sha256 {self.mask_sha[:12]})"), ("quant", config.quant)], config=config,
                       result={**result, "base_model": self.source.base_model}, tags=DELTA_CARD_TAGS,
                       use=[f"szoq eval --model {model} --mask {mask} --delta THIS_FOLDER --task {task}",
                            f"szoq merge --model {model} --mask {mask} --delta THIS_FOLDER --out merged/"])
        self._save_delta(run.file(self.final_file), self.sparse.delta_tensors(), **result)


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
        from ..data.checkpoint import write_tensors

        write_tensors(run.checkpoint, [*self.dense.tensors(), *((f"opt.{k}", t) for k, t in self.opt.state_tensors())],
                      {"format": DENSE_CHECKPOINT_FORMAT, **meta})

    def keep_best(self, run: RunFolder, step: int, dev: float, meta: dict[str, str]) -> bool:
        # No copy of the weights is kept in memory: the checkpoint naming this step is written
        # first, then the best-dev file, so a best-dev file is never newer than the checkpoint's best.
        if self.writer:
            self.save_checkpoint(run, meta)
            self._save_dense(run.best, settings={**self.settings, "step": step, "dev": dev}, step=str(step))
        return True

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


LORA_CARD_TAGS = ["szoq", "lora", "zeroth-order"]


class LoRATrainable(SparseTrainable):
    """ZO-LoRA (`finetune --lora R`): adapters on the frozen quantized base, no mask (runtime/lora.py).

    The adapter's one flat fp32 vector plays the part of the sparse values, so the checkpoint
    (values, best values, optimizer state), restore and best-dev logic are the sparse trainable's
    own; only the files differ: best-dev and final files are szoq LoRA adapters (runtime/lora_file.py).
    """

    final_file = LORA_FILE

    def __init__(self, config: FinetuneConfig, device: torch.device, dtype: torch.dtype, settings: dict, writer: bool) -> None:
        from ..runtime.lora import attach_lora
        from ..runtime.sparse import load_sparse_model

        self.source = resolve_model(config.model, revision=config.revision)
        self.fingerprint = fingerprint_from(parameter_layout(self.source), self.source.identity)
        base = load_sparse_model(self.source, None, quant=config.quant, device=device, compute_dtype=dtype)
        self.lora_settings = config.lora_settings()
        self.lora = attach_lora(base.model, base.tokenizer, self.lora_settings, seed=config.seed, device=device, base=base)
        self.model, self.tokenizer = self.lora.model, self.lora.tokenizer
        self.values = self.lora.values  # [n] fp32: every A and B, flat
        self.opt = make_optimizer(self.values, config.zo)
        self.mask, self.mask_sha, self.mask_ref = None, None, None
        self.settings, self.writer = settings, writer
        self.best_values: torch.Tensor | None = None  # [n], on every rank
        self.perturbed = self.lora.perturbed

    @property
    def nnz(self) -> int:
        return self.values.numel()

    def record(self) -> dict:
        s = self.lora_settings
        return {"nnz": self.nnz, "mask_sha256": None, "mask_ref": None,
                "lora": {"rank": s.rank, "alpha": s.alpha, "targets": list(s.targets), "modules": len(self.lora.segments)}}

    def _tensors(self, values: torch.Tensor) -> dict[str, torch.Tensor]:
        """`adapter_tensors()` of a given flat vector [n] (e.g. the kept best values)."""
        vals = values.detach().to("cpu")[None]  # [1, n]
        out = {}
        for seg in self.lora.segments:
            out[f"{seg.module}.lora_A.weight"] = seg.a(vals)[0].clone()  # [r, in]
            out[f"{seg.module}.lora_B.weight"] = seg.b(vals)[0].clone()  # [out, r]
        return out

    def _save(self, path, values: torch.Tensor, **facts) -> None:
        save_lora(path, self._tensors(values), settings=self.lora_settings, fingerprint=self.fingerprint,
                  base_model=self.source.base_model, run_settings={**self.settings, **facts})

    def resume_best(self, run: RunFolder, start: int, best_step: int | None, best_dev: float) -> None:
        # As the sparse run: the best-dev file may be newer than the checkpoint; rewrite it from the checkpoint.
        if self.best_values is None:
            run.best.unlink(missing_ok=True)
            return
        self._save(run.best, self.best_values, step=best_step, dev=best_dev)

    def keep_best(self, run: RunFolder, step: int, dev: float, meta: dict[str, str]) -> bool:
        self.best_values = self.values.clone()
        if self.writer:
            self._save(run.best, self.values, step=step, dev=dev)
        return False

    def write_final(self, run: RunFolder, config: FinetuneConfig, result: dict) -> None:
        s = self.lora_settings
        run.write_card(title=f"# ZO-LoRA adapter for {self.source.base_model}",
                       summary="Low-rank adapters (fp32) on the frozen quantized base, trained with zeroth-order SPSA (ZO-LoRA, the "
                               "equal-memory baseline of SensZOQ). `lora.safetensors` holds `{module}.lora_A.weight` / `lora_B.weight`.",
                       rows=[("adapter", f"rank {s.rank}, alpha {s.alpha:g}, on {', '.join(s.targets)} ({self.nnz:,} values)"),
                             ("quant", config.quant)], config=config,
                       result={**result, "base_model": self.source.base_model}, tags=LORA_CARD_TAGS,
                       use=[f"szoq eval --delta THIS_FOLDER --task {card_task(config)}",
                            "szoq merge --delta THIS_FOLDER --out merged/"])
        self._save(run.file(self.final_file), self.values, **result)


def build_trainable(config: FinetuneConfig, *, device: torch.device, dtype: torch.dtype, settings: dict, writer: bool) -> Trainable:
    """The trainable the settings name (the mask's values; with `dense`, every linear weight; with
    `lora`, LoRA adapters on the quantized base).

    Raises:
        ModelError, RegistryError, FingerprintMismatch, MaskError: the model or mask cannot be opened.
    """
    cls = LoRATrainable if config.lora else DenseTrainable if config.dense else SparseTrainable
    return cls(config, device, dtype, settings, writer)
