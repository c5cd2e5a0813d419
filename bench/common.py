"""Helpers shared by the benchmarks: results as JSON plus a readable markdown table."""

from __future__ import annotations

import json
import platform
import resource
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def peak_rss_bytes() -> int:
    """Peak resident set size of this process image.

    Reads VmHWM, which starts afresh at exec; ru_maxrss would carry over the parent's peak
    into a child started from a large process.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def environment() -> dict:
    import transformers

    return {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
            "threads": torch.get_num_threads(), "machine": platform.machine(), "when": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def write_results(name: str, data: dict, rows: list[tuple[str, str, str]]) -> Path:
    """Write `results/<name>.json` and `results/<name>.md` (metric | value | target)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {**data, "environment": environment()}
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = [f"# {name}", "", "| metric | value | target |", "|---|---|---|", *[f"| {a} | {b} | {c} |" for a, b, c in rows], ""]
    (RESULTS / f"{name}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return RESULTS / f"{name}.json"
