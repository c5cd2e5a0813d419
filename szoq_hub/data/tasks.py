"""Tasks: seeded MeZO-like sampling and `load_task`, for built-in and custom tasks.

A task turns raw rows into `Example`s: a prompt, the candidate continuations (options) and the
index of the right one. Classification tasks share one option list (the verbalizers); COPA has
per-example options. The built-in templates are in task_templates.py; custom tasks (a task file
or `--train/--template/--labels`, and their checks) in custom_tasks.py; where rows come from
(files, the shared data folder, the Hub) in task_sources.py.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..core.errors import TaskError
from .custom_tasks import CustomTask, check_labels, custom_builder
from .task_sources import load_builtin_rows, read_rows
from .task_templates import BUILTIN, TASKS, Example

log = logging.getLogger(__name__)


@dataclass
class TaskData:
    """The sampled splits of a task.

    Attributes:
        name: Task name (`sst2`, ..., or `custom`).
        metric: `accuracy`: MeZO's metric for every built-in task (CB and MultiRC included) and
            for custom tasks.
        train, dev, eval: Examples; dev is drawn from the train split, eval from validation.
        demos: The pool for in-context demonstrations (the sampled train examples).
    """

    name: str
    metric: str
    train: list[Example]
    dev: list[Example]
    eval: list[Example]
    info: dict = field(default_factory=dict)
    origin: dict = field(default_factory=dict)  # where each split came from, as the user named it (for messages)


@dataclass
class Sampling:
    """How many examples to draw (capped by what exists), and the seed."""

    train_samples: int = 1000
    dev_samples: int = 500
    eval_samples: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        for option, value, low, mezo in (("--train-samples", self.train_samples, 1, 1000), ("--dev-samples", self.dev_samples, 0, 500),
                                         ("--eval-samples", self.eval_samples, 1, 1000)):
            if value < low:  # one option per message: name the one that is wrong
                raise TaskError(f"{option} must be >= {low}, got {value}", hint=f"MeZO uses {option} {mezo}")




# --- sampling --------------------------------------------------------------------------------

def _perm(n: int, seed: int) -> list[int]:
    import torch  # here, not at import: FinetuneConfig (and `szoq --help`) read this module without torch

    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def _split_train_dev(n: int, sampling: Sampling) -> tuple[int, int]:
    """(train, dev) counts from one train split of n rows, capped; dev keeps a share if short."""
    dev = min(sampling.dev_samples, max(n - sampling.train_samples, n // 4))
    train = min(sampling.train_samples, n - dev)
    return train, dev


def _split_by_group(examples: list[Example], n_train: int, n_dev: int, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, dev) of whole groups in seeded order: a group goes to train while it fits, then to dev.

    Splitting by answer row would put answers to the same question on both sides, so dev would
    score questions the model was trained on.
    """
    groups: dict[str | None, list[Example]] = {}
    for e in examples:
        groups.setdefault(e.group, []).append(e)
    keys = list(groups)
    train: list[Example] = []
    dev: list[Example] = []
    for i in _perm(len(keys), seed):
        members = groups[keys[i]]
        if not train or len(train) + len(members) <= n_train:  # the first group always trains (cut if too big)
            train += members[: n_train - len(train)]
        elif len(dev) + len(members) <= n_dev:
            dev += members
    return train, dev


def _build_all(rows: list[dict], build: Callable[[dict], Example], where: str) -> list[Example]:
    out = []
    for i, row in enumerate(rows):
        try:
            out.append(build(row))
        except (KeyError, TypeError, AttributeError, IndexError) as exc:
            raise TaskError(f"{where}: row {i} does not fit the task template ({type(exc).__name__}: {exc})", hint="check the data file's fields") from None
    return out


def load_task(task: str | None = None, *, custom: CustomTask | None = None, data_dir: str | os.PathLike | None = None,
              sampling: Sampling | None = None) -> TaskData:
    """Load and sample a task, MeZO-style: train and dev from the train split, eval from validation.

    Args:
        task: A built-in task name (ignored when `custom` is given).
        custom: A custom task.
        data_dir: Folder in the shared GLUE/SuperGLUE layout (default `SZOQ_DATA_DIR`).
        sampling: Sample counts and seed.

    Returns:
        The sampled `TaskData`.

    Raises:
        TaskError: unknown task, bad template/labels, empty or unreadable files.
        DependencyError: no data folder and no `datasets`.
    """
    sampling = sampling or Sampling()
    dev_all: list[Example] | None = None
    if custom is not None:
        build = custom_builder(custom)

        def rows_of(path: str) -> list[Example]:
            rows = read_rows(Path(path), custom.encoding)
            check_labels(rows, custom, path)
            return _build_all(rows, build, path)

        name, metric = "custom", "accuracy"
        source = custom.train or custom.eval
        train_all = rows_of(custom.train) if custom.train else []
        dev_all = rows_of(custom.dev) if custom.dev else None
        if custom.eval:
            eval_all, eval_from = rows_of(custom.eval), custom.eval
        else:  # hold out eval from the train file
            order = _perm(len(train_all), sampling.seed + 1)
            n_eval = min(sampling.eval_samples, max(1, len(train_all) // 5)) if len(train_all) > 1 else 0
            eval_all, eval_from = [train_all[i] for i in order[:n_eval]], f"held out from {custom.train}"
            train_all = [train_all[i] for i in order[n_eval:]]
            if not train_all:
                raise TaskError(f"{custom.train} has too few rows to hold out an eval set", hint="add rows or pass --eval FILE")
        train_from = custom.train
        dev_from = custom.dev or f"held out from {custom.train}"
    else:
        if task not in BUILTIN:
            raise TaskError(f"unknown task {task!r}", hint=f"choose one of: {', '.join(TASKS)}; or pass --train FILE --template ... --labels ...")
        train_rows, eval_rows, source = load_builtin_rows(task, data_dir)
        spec = BUILTIN[task]
        name, metric = task, spec.metric
        train_all = _build_all(train_rows, spec.build, f"{task} train")
        eval_all = _build_all(eval_rows, spec.build, f"{task} validation")
        train_from, dev_from, eval_from = f"{task} train", f"held out from {task} train", f"{task} validation"
    if dev_all is not None:  # an explicit dev file: train keeps every row it is asked for
        train = [train_all[i] for i in _perm(len(train_all), sampling.seed)[: sampling.train_samples]]
        dev = [dev_all[i] for i in _perm(len(dev_all), sampling.seed + 3)[: sampling.dev_samples]]
    else:
        n_train, n_dev = _split_train_dev(len(train_all), sampling)
        if any(e.group is not None for e in train_all):  # MultiRC: a question's answers stay on one side
            train, dev = _split_by_group(train_all, n_train, n_dev, sampling.seed)
        else:
            order = _perm(len(train_all), sampling.seed)
            train = [train_all[i] for i in order[:n_train]]
            dev = [train_all[i] for i in order[n_train:n_train + n_dev]]
    eval_order = _perm(len(eval_all), sampling.seed + 2)
    evals = [eval_all[i] for i in eval_order[: sampling.eval_samples]]
    info = {"source": source, "train_rows": len(train_all), "eval_rows": len(eval_all), "train": len(train), "dev": len(dev), "eval": len(evals)}
    log.info("task %s: %s", name, info)
    return TaskData(name, metric, train, dev, evals, info, {"train": train_from, "dev": dev_from, "eval": eval_from})


def describe_split(task: TaskData, sampling: Sampling) -> str:
    """One line saying how many examples each split holds and where they come from.

    Also says when the data cannot give the requested train or dev counts (e.g. `--train-samples
    1000` from a file whose rows went partly to dev and eval).
    """
    i, o = task.info, task.origin
    line = f"{task.name}: {i['train']} train ({o['train']}), {i['dev']} dev ({o['dev']}), {i['eval']} eval ({o['eval']})"
    # Eval takes what the eval split has (SST-2 validation holds 872 rows); train and dev are the
    # ones a file can silently short.
    short = [f"--{k}-samples {want} (got {i[k]})" for k, want in (("train", sampling.train_samples), ("dev", sampling.dev_samples))
             if 0 < i[k] < want or (k == "dev" and i[k] < want)]
    if short:
        line += "; fewer than asked: " + ", ".join(short)
    return line


def with_demonstrations(examples: list[Example], pool: list[Example], shots: int, seed: int) -> list[Example]:
    """Prefix each example with `shots` solved demonstrations drawn from `pool` (seeded).

    Args:
        examples: Examples to evaluate.
        pool: Demonstration pool (the train examples).
        shots: K demonstrations per example (0 = unchanged).
        seed: Seed of the draw.

    Returns:
        New examples whose prompts start with the demonstrations, separated by blank lines.
    """
    if shots <= 0:
        return examples
    if len(pool) < shots:
        raise TaskError(f"--icl-shots {shots} needs at least {shots} train examples, have {len(pool)}", hint="lower --icl-shots")
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = []
    for ex in examples:
        picks = torch.randperm(len(pool), generator=gen)[:shots].tolist()
        demos = "\n\n".join(pool[i].prompt + pool[i].options[pool[i].label] for i in picks)
        out.append(Example(demos + "\n\n" + ex.prompt, ex.options, ex.label, ex.group))
    return out


def describe(task: TaskData) -> dict[str, Any]:
    """Small JSON-able summary of a loaded task."""
    return {"task": task.name, "metric": task.metric, **task.info}
