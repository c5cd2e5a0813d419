"""Output helpers: data goes to stdout, everything else (progress, notes, errors) to stderr."""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(data: object) -> None:
    """Write JSON to stdout (no colour, no wrapping: for scripts)."""
    print(json.dumps(data, indent=2, default=str))


def note(message: str) -> None:
    """A human note on stderr."""
    err.print(message, markup=False)


def table(title: str | None, columns: list[str], rows: list[list[object]]) -> None:
    """Print a table to stdout."""
    t = Table(title=Text(title) if title else None, show_edge=False, header_style="bold")
    for c in columns:
        t.add_column(c)
    for r in rows:  # plain Text: values from artifacts are data, never rich markup
        t.add_row(*[Text(str(x)) for x in r])
    out.print(t)


class AverageRateEta(ProgressColumn):
    """Time left at the average rate since the work began.

    rich's TimeRemainingColumn estimates from the updates of the last 30 s only, so it shows
    `-:--:--` whenever updates are more than 15 s apart (long ZO steps on a busy machine, or
    the minute of a dev evaluation). This column divides the time since the work began (task
    field `begun`, in seconds of the task's elapsed time) by the units done since then (counted
    from the task field `first`), which is steady from the first update on.
    """

    def render(self, task: Task) -> Text:
        if task.total is None:
            return Text("")
        if task.finished:
            return Text("eta 0:00:00")
        done = task.completed - task.fields.get("first", 0)
        spent = (task.elapsed or 0.0) - task.fields.get("begun", 0.0)
        if done <= 0 or spent <= 0:
            return Text("eta -:--:--")
        return Text(f"eta {timedelta(seconds=round((task.total - task.completed) * spent / done))}")


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


class LineThrottle:
    """When a plain progress line is due: the first unit, every `every` units, every 30 s, the last."""

    SECONDS = 30.0

    def __init__(self, total: int | None) -> None:
        self.every = max(1, (total or 0) // 10) if total else None
        self.last_done: int | None = None
        self.last_time = 0.0

    def due(self, done: int, total: int | None, now: float) -> bool:
        first = self.last_done is None
        steps = self.every is not None and self.last_done is not None and done - self.last_done >= self.every
        if first or steps or now - self.last_time >= self.SECONDS or (total is not None and done >= total):
            if done == self.last_done:
                return False
            self.last_done, self.last_time = done, now
            return True
        return False


@dataclass
class _LineTask:
    description: str
    total: int | None
    fields: dict
    start: float = field(default_factory=time.perf_counter)
    completed: int = 0
    throttle: LineThrottle | None = None

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


class LineProgress:
    """Plain progress lines for a stderr that is not a terminal (a log file, CI, nohup, a notebook).

    The same calls as the parts of rich's `Progress` szoq uses (`add_task`, `update`, `tasks`,
    `task_ids`, `remove_task`), so a command draws a bar on a terminal and writes lines
    elsewhere with one code path. A line is whole (never a truncated redraw): `DESC step k/N INFO
    S s/step eta H:MM:SS`, written at the first unit, every tenth of the total, every 30 s and at
    the end. The rate counts from the task fields `first` (units) and `begun` (seconds), as
    `AverageRateEta` does, so model loading is not counted as a step.
    """

    def __init__(self, console: Console, *, quiet: bool = False) -> None:
        self.console, self.quiet = console, quiet
        self.tasks: dict[int, _LineTask] = {}

    @property
    def task_ids(self) -> list[int]:
        return list(self.tasks)

    def add_task(self, description: str, total: int | None = None, **fields) -> int:
        task_id = len(self.tasks)
        self.tasks[task_id] = _LineTask(description, total, dict(fields))
        return task_id

    def remove_task(self, task_id: int) -> None:
        self.tasks.pop(task_id, None)

    def update(self, task_id: int, *, description: str | None = None, completed: int | None = None, total: int | None = None, **fields) -> None:
        task = self.tasks[task_id]
        task.description = description if description is not None else task.description
        task.total = total if total is not None else task.total
        task.fields.update(fields)
        if completed is None or completed == task.completed and task.throttle is not None:
            return
        task.completed = completed
        if completed <= task.fields.get("first", 0):  # a resumed run's start, not a step done
            return
        task.throttle = task.throttle or LineThrottle(task.total)
        if task.throttle.due(completed, task.total, time.perf_counter()) and not self.quiet:
            self.console.print(self._line(task), markup=False, highlight=False, crop=False, overflow="ignore")

    @staticmethod
    def _line(task: _LineTask) -> str:
        done = task.completed - task.fields.get("first", 0)
        per_unit = (task.elapsed - task.fields.get("begun", 0.0)) / max(done, 1)
        of = f"/{task.total}" if task.total is not None else ""
        eta = f" eta {_clock((task.total - task.completed) * per_unit)}" if task.total is not None else ""
        info = f" {task.fields['info']}" if task.fields.get("info") else ""
        return f"{task.description} step {task.completed}{of}{info} {per_unit:.2f} s/step{eta}"


@contextmanager
def progress_bar() -> Iterator[Progress | LineProgress]:
    """Progress on stderr: a rich bar on a terminal, else plain lines (none when SZOQ_NO_PROGRESS is set).

    On an error the bar is cleared, so that the `error:` line is not preceded by a stale one.
    """
    if not err.is_terminal:
        yield LineProgress(err, quiet=bool(os.environ.get("SZOQ_NO_PROGRESS")))
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn(), AverageRateEta()]
    with Progress(*columns, console=err, disable=bool(os.environ.get("SZOQ_NO_PROGRESS")), transient=False) as bar:
        try:
            yield bar
        except Exception:
            for task_id in list(bar.task_ids):
                bar.remove_task(task_id)
            raise


def push_summary(result, *, repo: str, kind: str, what: str, use: str) -> None:
    """Render a Hub push result: the data line on stdout, what happened on stderr.

    Args:
        result: A `szoq_hub.hub.masks.PushResult`.
        repo: The repo id pushed to.
        kind: `mask` or `delta`.
        what: What was pushed, as the user named it.
        use: The command that uses the pushed artifact, with `{ref}` for `ORG/NAME@TAG`.
    """
    print(f"{result.url}\t{result.commit}\t{result.tag or result.pr_url}")
    if result.status == "unchanged":
        note(f"unchanged: {repo}@{result.tag} already holds this {kind} (commit {result.commit[:7]}); nothing pushed")
    elif result.status == "tagged":
        note(f"main of {repo} already holds this {kind}: tagged commit {result.commit[:7]} as {result.tag}")
    elif result.status == "pull-request":
        note(f"opened a pull request on {repo}: {result.pr_url} (no tag until it is merged)")
    else:
        note(f"pushed {what} to {repo}@{result.tag} (commit {result.commit[:7]}); use it with: " + use.format(ref=f"{repo}@{result.tag}"))


_JOB_WORDS = {"convert": ("converting", "converted", "tensor"), "eval": ("evaluating", "evaluated", "example"),
              "push": ("pushing to", "pushed to", "file"), "pull": ("pulling", "pulled", "file")}
_job_lines: dict[str, tuple[LineThrottle, int, float]] = {}  # job -> (throttle, units and seconds at its first step)


def library_progress(event) -> None:
    """Render a `szoq_hub.core.progress.ProgressEvent` (installed once by the root command).

    Start and end are notes; steps are plain lines (first, every tenth, every 30 s, last) when
    stderr is not a terminal. On a terminal steps are left out: a command's rich bar may be
    live, and these jobs (a one-time conversion, a dev evaluation) are short beside it.
    """
    if os.environ.get("SZOQ_NO_PROGRESS"):
        return
    doing, done_word, unit = _JOB_WORDS.get(event.job, (event.job, f"{event.job} done", "step"))
    if event.phase == "start":
        _job_lines.pop(event.job, None)
        note(f"{doing} {event.detail}".rstrip() + " ...")
    elif event.phase == "end":
        _job_lines.pop(event.job, None)
        note(f"{done_word} {event.detail}".rstrip() + f" in {event.seconds:.0f} s")
    elif not err.is_terminal:
        # the rate counts from the first step: what a job does before it (loading) is not a step
        throttle, first_done, first_seconds = _job_lines.setdefault(event.job, (LineThrottle(event.total), event.done, event.seconds))
        if throttle.due(event.done, event.total, time.monotonic()):
            of = f"/{event.total}" if event.total is not None else ""
            eta = ""
            if event.total is not None and event.done > first_done:
                eta = f" eta {_clock((event.total - event.done) * (event.seconds - first_seconds) / (event.done - first_done))}"
            note(f"{event.job} {event.done}{of} {unit}s, {_clock(event.seconds)} elapsed{eta}")
        if event.total is not None and event.done >= event.total:
            _job_lines.pop(event.job, None)
