"""Running `szoq` as a child process, the way a user would, and the paths in its argv.

Every cell, sweep run, verification and probe runs the CLI (`python -m szoq_cli ...`) rather than the library, so its
recorded `argv` is exactly what reruns it. Paths in an argv are recorded as `{work}/...` (the work folder,
`$SZOQ_QUALITY_WORK`) and `{data}/...` (the shared data, `$SZOQ_DATA_DIR`) and expanded only when a child starts.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from . import settings

PEAK_RSS_MB: list[float] = []  # peak RSS of each szoq child this process ran, in order (os.wait4's ru_maxrss)


def child_env() -> dict:
    """The environment of a szoq child: the shared data, and the model cache and SZOQ_HOME inside the work folder."""
    env = dict(os.environ, SZOQ_DATA_DIR=str(settings.DATA))
    env.setdefault("SZOQ_MODEL_CACHE", str(settings.WORK / "models"))
    env.setdefault("SZOQ_HOME", str(settings.WORK / "home"))
    return env


def portable(word: str) -> str:
    """A path in an argv as it reruns anywhere: `{work}/...` or `{data}/...` (other words unchanged).

    An absolute path under this machine's WORK or DATA is made relative to it; one recorded on
    another machine is recognised by its tail (`.../masks/NAME`, `.../calibration/FILE`,
    `.../shared/data/...`), the layout every work and data folder has.
    """
    if not os.path.isabs(word):
        return word
    for base, token in ((settings.WORK, "{work}"), (settings.DATA, "{data}")):
        try:
            return f"{token}/{Path(word).relative_to(base).as_posix()}"
        except ValueError:
            pass
    if m := re.fullmatch(r"/.+?/((?:masks|calibration)/[^/]+)", word):
        return "{work}/" + m.group(1)
    if m := re.fullmatch(r"/.+?/shared/data/(.+)", word):
        return "{data}/" + m.group(1)
    return word


def expand(word: str) -> str:
    """A recorded argv word with `{work}` and `{data}` made this machine's folders."""
    return word.replace("{work}", str(settings.WORK)).replace("{data}", str(settings.DATA))


def szoq(args: list[str]) -> str:
    """Run `szoq ARGS` (recorded words expanded), append its peak RSS to PEAK_RSS_MB and return its stdout.

    Raises:
        RuntimeError: the command failed (its stderr has already gone to ours).
    """
    args = [expand(a) for a in args]
    cmd = [sys.executable, "-m", "szoq_cli", *args]
    print("$ szoq " + " ".join(shlex.quote(a) for a in args), file=sys.stderr, flush=True)
    child = subprocess.Popen(cmd, env=child_env(), stdout=subprocess.PIPE, text=True, cwd=settings.ROOT)
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage (RUSAGE_CHILDREN would be the max over all of them)
    child.returncode = os.waitstatus_to_exitcode(status)
    PEAK_RSS_MB.append(round(usage.ru_maxrss / 1024, 1))  # Linux: KiB
    if child.returncode != 0:
        raise RuntimeError(f"szoq {' '.join(args[:2])} failed with exit code {child.returncode}")
    return out
