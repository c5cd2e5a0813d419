"""Output helpers: data goes to stdout, everything else (progress, notes, errors) to stderr."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
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


@contextmanager
def progress_bar() -> Iterator[Progress]:
    """A rich progress bar on stderr (hidden when SZOQ_NO_PROGRESS is set).

    On an error the bar is cleared, so that the `error:` line is not preceded by a stale one.
    """
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
