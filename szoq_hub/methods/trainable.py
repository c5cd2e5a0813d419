"""What the fine-tuning loop trains: the `Trainable` protocol, and `VectorTrainable`, the shared
state of a method whose trained values are one flat fp32 vector under a ZO optimizer.

The loop (training/finetune.py) knows batches, seeds, the step log, dev evaluation, best-dev and
checkpoint timing; a trainable knows its values and files. Each method's folder holds its own
(`sparse/trainable.py`, `dense/trainable.py`, `lora/trainable.py`).

`VectorTrainable` keeps the values [n], the optimizer and the best-dev copy; its checkpoint holds
the values, the optimizer state and the best-dev values, so resume never trusts a best-dev file
newer than the checkpoint. A subclass opens its model, hands its vector to `__init__`, and says
how values become its files (`save_values`) and what its card says (`write_final`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

import torch
from torch import nn

from ..core.errors import TrainingError
from ..data.models import ModelSource
from ..runtime.zo import StepRecord, make_optimizer

if TYPE_CHECKING:
    from ..training.config import FinetuneConfig
    from ..training.run_folder import RunFolder


class Trainable(Protocol):
    """What the loop trains. `writer` (rank 0) writes files; every rank holds the same state.

    A method's class is built as `cls(config, device, dtype, settings, writer)`: the run's
    `FinetuneConfig`, the resolved device and compute dtype, the settings the run records, and
    whether this process writes files.
    """

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

    def estimate(self, closure: Callable[[Any], list[float]], step: int) -> StepRecord:
        """The step's two-point estimate without the update (the `--lr auto` probe takes negative steps)."""

    def set_lr(self, lr: float) -> None:
        """The base lr of the schedule from now on (`--lr auto`: the probe's choice, or the one a resumed run recorded)."""

    def lr_scores(self) -> tuple[torch.Tensor | None, int | None]:
        """For `--lr scores`: the trained values' Σg² [n] and the calibration windows they sum over; (None, None) without."""

    def restore(self, run: RunFolder) -> tuple[int, int | None, float] | None:
        """Load the checkpoint (state, optimizer, best); returns (step, best step, best dev), None without one."""

    def resume_best(self, run: RunFolder, start: int, best_step: int | None, best_dev: float) -> None:
        """(writer) Make the best-dev file agree with the checkpoint resumed from."""

    def save_checkpoint(self, run: RunFolder, meta: dict[str, str]) -> None:
        """(writer) Write the checkpoint with the loop's `meta` (step, best step, best dev)."""

    def keep_best(self, run: RunFolder, step: int, dev: float, meta: dict[str, str]) -> bool:
        """Keep the current state as the best; returns True when that wrote the checkpoint too.

        `step` 0 is the untouched model (the loop's dev baseline, before any step): what is kept
        then must give back exactly the starting state.
        """

    def use_best(self, run: RunFolder, best_step: int | None, done: int) -> None:
        """Load the best-dev state (if any) for the final evaluation; `best_step` 0: the starting state."""

    def write_final(self, run: RunFolder, config: FinetuneConfig, result: dict) -> None:
        """(writer) Write the card and the final file; `result` holds the metric, scores and task name."""


class VectorTrainable:
    """A trainable whose state is one flat fp32 vector [n] under a ZO optimizer (`runtime/zo.py`).

    Args:
        values: The trained vector [n], fp32; the model's forwards read it (in place updates).
        config: The run's settings (its `zo` builds the optimizer).
        settings: What the run records (written into the best-dev and final files).
        writer: Whether this process writes files.
        scores: Per-value curvature scores [n] in the order of `values`, for the optimizer's
            preconditioner (`ZOSGD`); None when the method has none (or the run does not use them).
    """

    final_file: str

    def __init__(self, values: torch.Tensor, config: FinetuneConfig, settings: dict, writer: bool,
                 scores: torch.Tensor | None = None) -> None:
        self.values = values  # [n] fp32 master values
        self.opt = make_optimizer(self.values, config.zo, scores=scores)
        self.settings, self.writer = settings, writer
        self.best_values: torch.Tensor | None = None  # [n], on every rank

    @property
    def nnz(self) -> int:
        return self.values.numel()

    def save_values(self, path: Path, values: torch.Tensor, **facts: Any) -> None:
        """Write `values` [n] as the method's file at `path` (best-dev or final), with `facts` in its settings."""
        raise NotImplementedError

    def step(self, closure, step: int) -> StepRecord:
        return self.opt.step(closure, step)

    def estimate(self, closure, step: int) -> StepRecord:
        return self.opt.estimate(closure, step)

    def set_lr(self, lr: float) -> None:
        self.opt.config = replace(self.opt.config, lr=lr)

    def lr_scores(self) -> tuple[torch.Tensor | None, int | None]:
        return None, None  # a method with scores (the sparse one) overrides this

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
            self.best_values = tensors["best"].to(self.values.device)  # [n]
        return step, best_step, best_dev

    def resume_best(self, run: RunFolder, start: int, best_step: int | None, best_dev: float) -> None:
        # best-dev.safetensors may be newer than the checkpoint (an eval after it improved, then
        # the run stopped): make it the checkpoint's best again, or drop it if there was none.
        if self.best_values is None:
            run.best.unlink(missing_ok=True)
            return
        self.save_values(run.best, self.best_values, step=best_step, dev=best_dev)

    def save_checkpoint(self, run: RunFolder, meta: dict[str, str]) -> None:
        tensors = {"values": self.values}
        if self.best_values is not None:
            tensors["best"] = self.best_values  # [n]
        for k, v in self.opt.state_dict().items():
            tensors[f"opt.{k}"] = v.reshape(-1) if v.dim() == 0 else v
        run.write_checkpoint(tensors, meta)

    def keep_best(self, run: RunFolder, step: int, dev: float, meta: dict[str, str]) -> bool:
        self.best_values = self.values.clone()
        if self.writer:
            self.save_values(run.best, self.values, step=step, dev=dev)
        return False

    def use_best(self, run: RunFolder, best_step: int | None, done: int) -> None:
        if self.best_values is not None:  # without a dev set: the final values
            self.values.copy_(self.best_values)


def card_task(config: FinetuneConfig) -> str:
    """The task as a card names it (`custom` for data files)."""
    return config.task if not (config.train_file or config.task_file) else "custom"


def checkpoint_meta(path: Path, meta: dict[str, str]) -> tuple[int, int | None, float]:
    """(step, best step, best dev) from the header of the checkpoint at `path`.

    Raises:
        TrainingError: no step, or a best step / best dev that is not a number.
    """
    try:
        ok = meta.get("step", "").isdigit() and (meta.get("best_step") or "0").isdigit()
        best_dev = float(meta.get("best_dev", "-inf"))
    except ValueError:
        ok = False
    if not ok:
        raise TrainingError(f"{path} is corrupt (no step)", hint="start a new run in another --out folder")
    return int(meta["step"]), (int(meta["best_step"]) if meta.get("best_step") else None), best_dev
