"""Progress events of long jobs deep inside the library (model conversion, evaluation, Hub transfers).

The library never prints. Jobs whose caller cannot pass a callback down (a GGUF conversion
happens inside whatever first resolves the model) report here instead: `emit` hands a
`ProgressEvent` to the one listener the application installed with `set_progress_listener` (the CLI
renders them, cli/render.py), and does nothing without one. Jobs that already take a
`progress=` callback (finetune, mask build) keep it.

Third-party progress bars (transformers' GGUF conversion draws a raw tqdm bar) would mix into
the application's own output; `tqdm_through` routes such a bar through these events instead.
"""

from __future__ import annotations

import importlib
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator


@dataclass(frozen=True)
class ProgressEvent:
    """One progress report of a job.

    Attributes:
        job: What runs: `convert`, `eval`, `push`, `pull`.
        phase: `start`, `step` or `end`.
        done: Units done (steps: after this one).
        total: Units in all, None when unknown.
        detail: What the job works on (a file or repo name); at `end`, also the outcome.
        seconds: Seconds since the job started (`step`, `end`).
    """

    job: str
    phase: str
    done: int = 0
    total: int | None = None
    detail: str = ""
    seconds: float = 0.0


Listener = Callable[[ProgressEvent], None]
_listener: Listener | None = None
_started: dict[str, float] = {}  # job -> perf_counter at its start
_explicit: dict[str, bool] = {}  # job -> started by a `start` event (else by its first step)


def set_progress_listener(listener: Listener | None) -> Listener | None:
    """Install the function that receives every event (None: drop them).

    Returns:
        The listener installed before, to put back.
    """
    global _listener
    previous, _listener = _listener, listener
    return previous


def emit(job: str, phase: str, done: int = 0, total: int | None = None, detail: str = "") -> None:
    """Report progress of `job` to the listener, if any (never raises for a missing one)."""
    now = time.perf_counter()
    if phase == "start":
        _started[job], _explicit[job] = now, True
    elif job not in _started:  # a job may report steps without a start: it ends with its last step
        _started[job], _explicit[job] = now, False
    seconds = now - _started[job]
    if phase == "end" or (phase == "step" and not _explicit[job] and total is not None and done >= total):
        _started.pop(job, None)
    if _listener is not None:
        _listener(ProgressEvent(job, phase, done, total, detail, seconds))


@contextmanager
def job(name: str, detail: str = "") -> Iterator[None]:
    """Emit `start` on entry and `end` on a normal exit (an error is reported by the caller)."""
    emit(name, "start", detail=detail)
    yield
    emit(name, "end", detail=detail)


@contextmanager
def tqdm_through(module_name: str, job_name: str) -> Iterator[None]:
    """Route the `tqdm(iterable, ...)` bars of one module through `emit` while inside.

    The module's global `tqdm` is replaced for the duration by a plain iteration that emits a
    `step` per item (no bar drawn), then restored.

    Args:
        module_name: The module that does `from tqdm... import tqdm`.
        job_name: The job the steps belong to.
    """
    try:
        module = importlib.import_module(module_name)
    except ImportError:  # another transformers version: nothing to route
        yield
        return
    original = getattr(module, "tqdm", None)

    def steps(iterable: Iterable, *args, **kwargs) -> Iterator:
        items = list(iterable)
        for i, item in enumerate(items):
            yield item
            emit(job_name, "step", i + 1, len(items))

    if original is None:
        yield
        return
    module.tqdm = steps
    try:
        yield
    finally:
        module.tqdm = original
