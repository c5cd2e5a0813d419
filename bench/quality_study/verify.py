"""`--verify KEY`: rerun a recorded cell's argv with today's code and compare its accuracy with the record."""

from __future__ import annotations

import json
import os
import time

from . import records, settings, szoq_process
from .run import fresh
from .szoq_process import portable


def pinned(cell: dict) -> list[str]:
    """A recorded argv with the settings it ran under made explicit: cells recorded before `--dtype auto` and automatic
    micro-batches became the defaults ran in fp32 (CPU) with the whole batch in one forward, and those recorded before
    the step-0 dev baseline had none; say so, so they rerun alike."""
    argv = list(cell["argv"])
    if "--dense" not in argv and "--dtype" not in argv:
        argv[-1:-1] = ["--dtype", cell.get("dtype") or "fp32"]
    if argv[0] == "finetune" and "--micro-batch-size" not in argv:
        argv[-1:-1] = ["--micro-batch-size", str(settings.BATCH)]
    if argv[0] == "finetune" and not {"--dev-baseline", "--no-dev-baseline"} & set(argv):
        argv[-1:-1] = ["--no-dev-baseline"]
    return argv


def verify(key: str) -> dict:
    """Rerun a finished cell's recorded `argv` (plus a fresh --out for a fine-tuning cell) with today's code; compare."""
    cell = json.loads((settings.CELLS / f"{key}.json").read_text())
    t0, sha = time.perf_counter(), records.git_sha()
    argv = [portable(a) for a in cell["argv"]]  # cells recorded with this or another machine's paths
    ran = pinned({**cell, "argv": argv})  # with the dtype and micro-batching it ran under made explicit
    if argv[0] == "finetune":
        out = fresh(settings.WORK / "verify" / key)
        res = json.loads(szoq_process.szoq([*ran, "--out", str(out)]))
        rerun = res["eval"]
    else:
        rerun = json.loads(szoq_process.szoq(ran))["value"]
    return {"key": key, "recorded": cell["accuracy"], "rerun": rerun, "same": rerun == cell["accuracy"], "n": cell["n"],
            "recorded_git_sha": cell["git_sha"], "git_sha": sha, "threads": os.environ.get("OMP_NUM_THREADS", "default"),
            "wall_s": round(time.perf_counter() - t0, 1), "argv": argv, "ran": ran}
