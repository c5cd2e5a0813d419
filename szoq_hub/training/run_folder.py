"""The run folder of `szoq finetune`: every file name, and the reading and writing of each.

Rank 0 writes; the run is complete once its final file exists, which is written last:
- `finetune_config.json`   every setting (flat, one key per option), the task, the resolved
                           `runtime` (device type, compute dtype, micro-batch); --resume refuses
                           other settings
- `metrics.jsonl`          one line per step (step, seeds, g, losses, lr: a replayable log), per
                           dev evaluation (the first at step 0, the untouched model, unless
                           --no-dev-baseline), and the final evaluation
- `metrics.redone.jsonl`   log lines past the checkpoint, set aside on resume
- `checkpoint.safetensors` the trainable's state + optimizer state + step (atomic temp + rename)
- `best-dev.safetensors`   the best dev state so far (what the paper keeps)
- `README.md`              a model card
- the final file           `delta.safetensors` (sparse), `dense.safetensors` (dense) or
                           `lora.safetensors` (--lora): the
                           trainable names it (`Trainable.final_file`)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO

import torch

from ..core import schema
from ..core.errors import TrainingError
from ..core.files import atomic_file
from ..core.defaults import __version__
from ..masks.card import card_base_model
from ..methods import method_of_settings, methods
from ..methods.trainable import card_task
from .config import FinetuneConfig, settings_of

CONFIG_FILE = "finetune_config.json"
METRICS_FILE = "metrics.jsonl"
REDONE_FILE = "metrics.redone.jsonl"
CHECKPOINT_FILE = "checkpoint.safetensors"
BEST_FILE = "best-dev.safetensors"
CARD_FILE = "README.md"
# Settings that may differ when resuming (they do not change the trajectory; micro_batch_size changes
# float rounding only, so a run that ran out of memory can resume with smaller forwards). device and
# dtype are compared resolved (the `runtime` block), not as typed: `auto` and `cpu` can be the same.
RESUME_FREE = ("out", "data_dir", "eval_batch_size", "micro_batch_size", "device", "dtype", "report_to", "save_every_minutes")
# Options added after runs were recorded without them, whose default is not what those runs did but
# which change nothing a resume from a checkpoint does: such a run continues under either value.
# dev_baseline: the step-0 dev score is taken at a fresh start only (a run without a checkpoint
# starts over, under the value given now).
ADDED_WITHOUT_EFFECT_ON_RESUME = ("dev_baseline",)


class RunFolder:
    """One run's folder: where each file lives, and how it is read and written.

    Args:
        path: The folder (`--out`).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config = self.path / CONFIG_FILE
        self.metrics = self.path / METRICS_FILE
        self.checkpoint = self.path / CHECKPOINT_FILE
        self.best = self.path / BEST_FILE
        self.card = self.path / CARD_FILE

    def file(self, name: str) -> Path:
        """A file of the run named by its trainable (its final file)."""
        return self.path / name

    # --- the settings ------------------------------------------------------------------------

    def check_out(self, config: FinetuneConfig, resume: bool | None) -> bool:
        """Validate the folder for `config`; returns whether to continue the stopped run in it.

        Args:
            config: The run's settings.
            resume: True = there must be a stopped run to continue; False = the folder must be new
                or empty; None = continue a stopped run with the same settings, else start a new one.

        Raises:
            TrainingError: a file, a folder holding something else, a run with other settings, or
                a complete run.
        """
        out = self.path
        if out.exists() and not out.is_dir():
            raise TrainingError(f"--out {out} is a file", hint="choose a folder for --out")
        has_files = out.is_dir() and any(out.iterdir())
        if resume is False or (resume is None and not has_files):
            if has_files:
                raise TrainingError(f"--out {out} already exists and is not empty", hint="choose another --out, or continue the run in it")
            return False
        flag = "--resume: " if resume else ""
        if not self.config.is_file():
            if resume:
                raise TrainingError(f"--resume: {out} holds no {CONFIG_FILE}", hint="resume a folder written by szoq finetune, or drop --resume")
            raise TrainingError(f"--out {out} already exists and holds no szoq finetune run", hint="choose another --out folder")
        saved = dict(self.read_config()["settings"])
        saved.setdefault("method", method_of_settings(saved).name)  # a 0.1.0 run recorded dense / lora only
        now = {k: v for k, v in settings_of(config).items() if k not in RESUME_FREE}
        # An option added after the run started (e.g. --adam-eps) compares as its default (or as given now, see above).
        defaults = settings_of(FinetuneConfig())
        defaults.update({k: now[k] for k in ADDED_WITHOUT_EFFECT_ON_RESUME})
        differ = [f"{k} ({saved.get(k, defaults.get(k))!r} -> {now[k]!r})" for k in sorted(now) if saved.get(k, defaults.get(k)) != now[k]]
        if differ:
            raise TrainingError(f"{flag}--out {out} holds a run with other settings: {', '.join(differ[:3])}",
                                hint=f"rerun with that run's options (see its {CONFIG_FILE}) to continue it, or choose another --out")
        if any(self.file(m.config_cls.final_file).is_file() for m in methods()):
            raise TrainingError(f"{flag}the run in {out} is already complete",
                                hint=f"use it (szoq eval --delta {out}), or choose another --out for a new run")
        return True

    def read_config(self) -> dict:
        """The saved config (types checked).

        Raises:
            TrainingError: not valid JSON, or `settings` / `task` not objects.
        """
        return schema.run_config(self.config, TrainingError, hint="the run folder is damaged; start a new run in another --out")

    def saved_runtime(self) -> dict | None:
        """The `runtime` block a started run recorded (None: no config yet)."""
        return self.read_config().get("runtime") if self.config.is_file() else None

    def check_runtime(self, runtime: dict) -> None:
        """--resume: refuse another device type or compute dtype than the run was started with.

        Raises:
            TrainingError: the saved device type or dtype differs from `runtime`'s.
        """
        saved = self.saved_runtime() or {}
        for key in ("device_type", "dtype"):
            if saved.get(key) != runtime[key]:
                raise TrainingError(
                    f"--resume: {self.path} ran on {saved.get('device_type')} in {saved.get('dtype')}, this resume would run on "
                    f"{runtime['device_type']} in {runtime['dtype']}",
                    hint=f"resume with --device {saved.get('device_type')} --dtype {saved.get('dtype')} (z is drawn by the device's own generator)")

    def check_contents(self, *, fingerprint: str | None = None, data_sha256: str | None = None, model: str | None = None,
                       mask_sha256: str | None = None) -> None:
        """--resume: refuse a model or rows whose contents changed since the run started.

        Compares with the checkpoint's record when it has one (it is what the run continues
        from), else with the config's. Runs started before these were recorded have no rows hash:
        only the fingerprint is compared for them.

        Raises:
            TrainingError: the model fingerprint or the rows sha256 differs, both values shown.
        """
        saved = self._recorded_contents()
        hint = f"restore what the run was trained on, or start a new run in another --out (the run in {self.path} stays as it is)"
        if fingerprint is not None and saved.get("fingerprint") and saved["fingerprint"] != fingerprint:
            raise TrainingError(f"--resume: the model changed since the run in {self.path} started: it trained on fingerprint "
                                f"{saved['fingerprint'][:12]}, {model or 'the model'} now has fingerprint {fingerprint[:12]}", hint=hint)
        if mask_sha256 is not None and saved.get("mask_sha256") and saved["mask_sha256"] != mask_sha256:
            raise TrainingError(f"--resume: the mask changed since the run in {self.path} started: mask sha256 "
                                f"{saved['mask_sha256'][:12]} then, {mask_sha256[:12]} now", hint=hint)
        if data_sha256 is not None and saved.get("data_sha256") and saved["data_sha256"] != data_sha256:
            raise TrainingError(f"--resume: the task's rows changed since the run in {self.path} started: rows sha256 "
                                f"{saved['data_sha256'][:12]} then, {data_sha256[:12]} now", hint=hint)

    def _recorded_contents(self) -> dict[str, str]:
        """{"fingerprint", "data_sha256", "mask_sha256"} as the checkpoint (else the config) records them; strings only."""
        recorded: dict = {}
        if self.config.is_file():
            config = self.read_config()
            recorded = {k: config.get(k) for k in ("fingerprint", "data_sha256", "mask_sha256")}
        if self.checkpoint.is_file():
            meta = schema.read_header(self.checkpoint, error=TrainingError).metadata
            recorded.update({k: meta[k] for k in ("fingerprint", "data_sha256") if meta.get(k)})
        return {k: v for k, v in recorded.items() if isinstance(v, str) and v}

    def write_config(self, record: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.config.write_text(json.dumps(record, indent=2) + "\n")

    # --- the step log ------------------------------------------------------------------------

    def open_metrics(self) -> IO[str]:
        """The step log, opened for appending (the caller closes it)."""
        return open(self.metrics, "a")

    def append_metrics(self, row: dict) -> None:
        with self.open_metrics() as fh:
            fh.write(json.dumps(row) + "\n")

    def truncate_metrics(self, step: int | None) -> int:
        """Set aside log lines past the checkpoint (their steps are redone, bit for bit, on resume).

        The lines are appended to `metrics.redone.jsonl` beside the log rather than lost.

        Args:
            step: The checkpoint's step: steps before it and evaluations up to it (the checkpoint
                holds their best) are kept. None: no checkpoint, every line is set aside (the run
                starts over, its step-0 dev evaluation included).

        Returns:
            How many step lines were set aside.
        """
        path = self.metrics
        if not path.is_file():
            return 0
        keep, drop, redone = [], [], 0
        for line in path.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
                kind = row.get("kind")
                kept = step is not None and ((kind == "step" and row["step"] < step) or (kind == "eval" and row["step"] <= step))
            except (ValueError, TypeError, KeyError, AttributeError):
                kind, kept = None, False  # a line cut by a crash, or not one szoq wrote
            (keep if kept else drop).append(line)
            redone += not kept and kind == "step"
        if drop:
            with open(path.with_name(REDONE_FILE), "a") as fh:
                fh.write("".join(d + "\n" for d in drop))
        with atomic_file(path) as tmp:
            tmp.write_text("".join(k + "\n" for k in keep))
        return redone

    # --- checkpoints -------------------------------------------------------------------------

    def read_checkpoint(self) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
        """The checkpoint's tensors and header (None: no checkpoint yet).

        Raises:
            TrainingError: a corrupt checkpoint (unreadable, or no step).
        """
        from safetensors import SafetensorError, safe_open

        path = self.checkpoint
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as fh:
                tensors, meta = {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise TrainingError(f"{path} is corrupt ({str(exc).splitlines()[0]})", hint="start a new run in another --out folder") from None
        return tensors, meta

    def write_checkpoint(self, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
        """Write the checkpoint at once (atomic temp + rename); tensors are copied to the CPU."""
        from safetensors.torch import save_file

        with atomic_file(self.checkpoint) as tmp:
            save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)

    def remove_resume_files(self) -> None:
        """Drop the checkpoint and best-dev copies once the final file holds the result."""
        self.checkpoint.unlink(missing_ok=True)
        self.best.unlink(missing_ok=True)

    # --- the card ----------------------------------------------------------------------------

    def write_card(self, *, title: str, summary: str, rows: list[tuple[str, object]], config: FinetuneConfig, result: dict,
                   tags: list[str], use: list[str]) -> None:
        """The run's model card: front matter, the facts every run shares plus `rows`, how to use it."""
        from huggingface_hub import ModelCardData

        data = ModelCardData(library_name="szoq", base_model=card_base_model(result.get("base_model")), tags=tags)
        zo = config.zo
        lr = f"{result.get('lr', zo.lr):g}" + (f" (--lr {zo.lr})" if isinstance(zo.lr, str) else "")
        facts = [("base model", f"`{result.get('base_model')}`"), *rows, ("task", card_task(config)),
                 ("optimizer", f"{zo.optimizer}, lr {lr}, eps {zo.eps:g}, batch {config.batch_size}, {config.steps} steps"),
                 ("best dev", f"{result.get('best_dev')} at step {result.get('best_step')}"
                              + (" (the untouched model: no step beat it on dev, so the run kept its starting state)" if result.get("best_step") == 0 else "")), (f"eval {result.get('metric')}", result.get("eval_metric")),
                 ("seed", config.seed), ("szoq version", __version__)]
        lines = ["---", data.to_yaml(), "---", "", title, "", summary, "", "| fact | value |", "|---|---|",
                 *[f"| {k} | {v} |" for k, v in facts], "", "## Use", "", "```", *use, "```", ""]
        self.card.write_text("\n".join(lines))
