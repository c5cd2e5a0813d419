"""Memory and time probes: the Pareto plot's axes, measured alike for every configuration.

Cells recorded before issue 24 have no peak RSS, and their wall times come from machines under different loads. A probe
reruns a few steps of one cell's argv per configuration (model, method, dtype), one after another in one process, and
records the szoq child's peak RSS and its median seconds per ZO step: memory for every method, and times comparable to
each other (the Pareto plot's time axis is a probe's s/step x the cell's steps).
"""

from __future__ import annotations

import json
import os
import statistics
import time

from . import records, settings, szoq_process
from .plan import cell_of, on_pareto
from .run import fresh, mask_for, metrics
from .settings import SMOLLM2
from .szoq_process import PEAK_RSS_MB, portable
from .verify import pinned


def probe_argv(cell: dict) -> list[str]:
    """A cell's argv (with the dtype and micro-batching it ran under, `pinned`) cut to a probe: PROBE_STEPS steps with one
    dev eval, PROBE_ROWS dev/eval rows (eval batches stay 32)."""
    argv = pinned({**cell, "argv": [portable(a) for a in cell["argv"]]})
    steps, rows = str(settings.PROBE_STEPS), settings.PROBE_ROWS
    short = {"--steps": steps, "--eval-every": steps, "--dev-samples": str(rows),
             "--eval-samples": str(rows if argv[0] == "finetune" else 2 * rows), "--save-every": steps}
    for flag, value in short.items():
        if flag in argv:
            argv[argv.index(flag) + 1] = value
    return argv


def probe(key: str) -> dict:
    """Peak RSS and seconds per step of a few steps of cell `key`'s argv."""
    cell = json.loads((settings.CELLS / f"{key}.json").read_text())
    argv = probe_argv(cell)
    if "--mask" in argv:
        mask_for(cell_of(cell))  # builds the mask if this work folder lacks it
    t0 = time.perf_counter()
    PEAK_RSS_MB.clear()
    s_per_step = None
    if argv[0] == "finetune":
        out = fresh(settings.WORK / "probe" / key)
        szoq_process.szoq([*argv, "--out", str(out)])
        s_per_step = statistics.median(r["seconds"] for r in metrics(out) if r.get("kind") == "step" and r["step"] > 1)
    else:
        szoq_process.szoq(argv)
    return {"key": key, "model": cell.get("model", SMOLLM2), "method": cell["method"], "dtype": cell.get("dtype") or "fp32",
            "peak_rss_mb": PEAK_RSS_MB[-1], "s_per_step": s_per_step, "argv": argv, "git_sha": records.git_sha(),
            "threads": os.environ.get("OMP_NUM_THREADS", "default"), "load": round(os.getloadavg()[0], 2),
            "wall_s": round(time.perf_counter() - t0, 1)}


def probe_keys(cells: list[dict]) -> list[str]:
    """One cell per Pareto configuration (SST-2, the grid's lr and density, 300 steps or an eval), seed 0 first."""
    seen: dict[tuple, str] = {}
    for c in sorted(cells, key=lambda c: c["seed"]):
        if c["task"] == "sst2" and on_pareto(c):
            seen.setdefault((c.get("model", SMOLLM2), c["method"], c.get("dtype") or "fp32"), c["key"])
    return list(seen.values())
