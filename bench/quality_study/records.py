"""The study's records on disk: one JSON file per cell, sweep run, probe, verification or transfer row.

Writes are atomic (a per-process tmp file, then rename): two grid processes may write at once.
"""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
from pathlib import Path

from . import settings
from .plan import record_key
from .settings import SMOLLM2


def write_text(path: Path, text: str) -> None:
    """Write `path` atomically (a per-process tmp file, then rename)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=1) + "\n")


def read_all(folder: Path) -> list[dict]:
    """Every record in `folder`, in file-name order."""
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def matches(key: str, patterns: str) -> bool:
    """Whether `key` matches one of the comma-separated fnmatch `patterns`."""
    return any(fnmatch.fnmatch(key, pat) for pat in patterns.split(","))


def git_sha() -> str:
    """The commit the code runs at (recorded with every cell)."""
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=settings.ROOT, capture_output=True, text=True).stdout.strip()


def trains_another_lr(run: Path, lr: float | None) -> bool:
    """Whether the run folder `run` records an lr other than `lr`: the folder of a cell's new configuration, which a lane
    may be training under the old record's key while another process re-keys that record."""
    cfg = run / "finetune_config.json"
    return cfg.is_file() and json.loads(cfg.read_text()).get("settings", {}).get("lr") not in (None, lr)


def load_cells() -> list[dict]:
    """The finished cells; a cell whose lr is no longer its method's LR moves (with its run folder, unless that folder
    already holds a run at another lr) to its `-lr` key."""
    cells = []
    for p in sorted(settings.CELLS.glob("*.json")):
        c = json.loads(p.read_text())
        if c.get("model", SMOLLM2) not in settings.MODEL_REFS:  # written by newer code (a lane started before a settings change)
            print(f"quality: {p.name} is a cell of {c['model']}, a model this code's settings do not know; left out", file=sys.stderr)
            continue
        key = record_key(c)
        if key != c["key"]:
            run, new_run = settings.WORK / "runs" / c["key"], settings.WORK / "runs" / key
            if run.is_dir() and not new_run.exists() and not trains_another_lr(run, c.get("lr")):
                run.rename(new_run)
            c["key"] = key
            write_json(settings.CELLS / f"{key}.json", c)
            p.unlink(missing_ok=True)
        cells.append(c)
    return cells
