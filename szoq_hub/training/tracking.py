"""Experiment tracking: mirror `metrics.jsonl` into TensorBoard, Trackio or Weights & Biases.

`metrics.jsonl` stays the record of a run (it is what `--resume` and replay read); a tracker
only receives a copy, under the same names: per step `loss`, `loss_plus`, `loss_minus`,
`grads` (the projected gradient), `lr`, `seconds` (lists over ZO samples averaged to one
scalar), and per evaluation `<split>/<metric>` (e.g. `dev/accuracy`). The run's settings go in
as the tracker's config. Every backend works offline:
- `tensorboard` writes event files to `<out>/tensorboard/` (needs `tensorboard`).
- `trackio` writes a local SQLite database under `TRACKIO_DIR` (default `$HF_HOME/trackio`);
  it only talks to a Space when `TRACKIO_SPACE_ID` is set.
- `wandb` writes `<out>/wandb/`; `WANDB_MODE=offline` keeps it off the network (sync later
  with `wandb sync`).
Trackers print banners; those go to stderr, never into szoq's stdout.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Protocol

from ..core.errors import ConfigError, DependencyError

REPORT_TO = ("none", "tensorboard", "trackio", "wandb")
PROJECT = "szoq"
_PACKAGE = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb"}


class Tracker(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


def check_report_to(report_to: str) -> None:
    """Raise ConfigError for an unknown tracker, DependencyError when its package is missing."""
    if report_to not in REPORT_TO:
        raise ConfigError(f"unknown --report-to {report_to!r}", hint=f"choose one of: {', '.join(REPORT_TO)}")
    package = _PACKAGE.get(report_to)
    if package and importlib.util.find_spec(package) is None:
        raise DependencyError(f"--report-to {report_to} needs the `{package}` package", hint=f"pip install 'szoq[{report_to}]'")


def scalars(row: dict) -> dict[str, float]:
    """The tracker view of one `metrics.jsonl` row: same names, numbers only.

    Args:
        row: A `metrics.jsonl` line (`kind` step, eval or final).

    Returns:
        name -> float: step rows keep their field names (list fields averaged over ZO
        samples; `seeds` and `step` left out); eval/final rows give `<split>/<metric>`.
    """
    kind = row.get("kind")
    if kind == "step":
        out = {}
        for key, value in row.items():
            if key in ("kind", "step", "seeds"):
                continue
            if isinstance(value, list) and value:
                out[key] = sum(float(v) for v in value) / len(value)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                out[key] = float(value)
        return out
    if kind in ("eval", "final"):
        split = row.get("split", "eval")
        metric = row.get("metric")
        if kind == "final" and metric is not None:
            return {f"{split}/{metric}": float(row["eval_metric"])}
        skip = {"kind", "step", "split"}
        return {f"{split}/{k}": float(v) for k, v in row.items() if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {}


class _TensorBoard:
    def __init__(self, out: Path, config: dict) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"))
        self.writer.add_text("config", "```json\n" + json.dumps(config, indent=2, sort_keys=True, default=str) + "\n```", 0)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class _Trackio:
    def __init__(self, name: str, config: dict) -> None:
        import trackio

        self.trackio = trackio
        with contextlib.redirect_stdout(sys.stderr):  # its banner is not szoq's data
            self.run = trackio.init(project=PROJECT, name=name, config=config, auto_log_cpu=False, auto_log_gpu=False)

    def log(self, metrics: dict[str, float], step: int) -> None:
        with contextlib.redirect_stdout(sys.stderr):
            self.run.log(metrics, step=step)

    def close(self) -> None:
        with contextlib.redirect_stdout(sys.stderr):
            self.trackio.finish()  # also clears its current run: no second finish at exit


class _Wandb:
    def __init__(self, out: Path, name: str, config: dict) -> None:
        import wandb

        with contextlib.redirect_stdout(sys.stderr):
            self.run = wandb.init(project=PROJECT, name=name, config=config, dir=str(out))

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        with contextlib.redirect_stdout(sys.stderr):
            self.run.finish()


def open_tracker(report_to: str, *, out: Path, name: str, config: dict) -> Tracker | None:
    """Start a tracker run (None for `none`).

    Args:
        report_to: One of REPORT_TO.
        out: The run folder (TensorBoard and W&B write below it).
        name: The run name shown by the tracker.
        config: The run's settings (JSON-able).

    Raises:
        ConfigError: unknown tracker. DependencyError: its package is missing.
    """
    check_report_to(report_to)
    if report_to == "tensorboard":
        return _TensorBoard(Path(out), config)
    if report_to == "trackio":
        return _Trackio(name, config)
    if report_to == "wandb":
        return _Wandb(Path(out), name, config)
    return None
