"""Default `szoq finetune` against the old default (`--dtype fp32 --micro-batch-size 16`): seconds per ZO step.

Runs the CLI itself on SST-2 (built-in model and mask, nf4 base, batch 16), --steps steps per run, the two
settings interleaved (--repeats rounds of default, old), and reads the per-step `seconds` that every run
writes to metrics.jsonl. Reported: the median seconds per step of each setting over its runs' steps (the
first step of each run is dropped: warm-up), the ratio default / old measured in this one run, what the
default resolved to (dtype, micro-batch size, from the run's config), and the machine's load average.

Writes bench/results/<--name>.json and .md (default: defaults).

Usage: SZOQ_DATA_DIR=../shared/data python bench/bench_defaults.py [--steps 20] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import write_results  # noqa: E402

OLD = ["--dtype", "fp32", "--micro-batch-size", "16"]


def run(out: Path, steps: int, extra: list[str]) -> tuple[list[float], dict]:
    """One `szoq finetune` run; (seconds of each step after the first, the run's recorded config)."""
    argv = [sys.executable, "-m", "szoq_cli", "finetune", "--task", "sst2", "--steps", str(steps), "--batch-size", "16",
            "--train-samples", "1000", "--dev-samples", "16", "--eval-samples", "16", "--eval-every", "0", "--out", str(out), *extra]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    secs = [r["seconds"] for r in rows if r.get("kind") == "step"][1:]
    return secs, json.loads((out / "finetune_config.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--name", default="defaults")
    args = ap.parse_args()
    times: dict[str, list[float]] = {"default": [], "old": []}
    resolved: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="szoq-bench-defaults-") as tmp:
        for r in range(args.repeats):
            for label, extra in (("default", []), ("old", OLD)):
                secs, cfg = run(Path(tmp) / f"{label}-{r}", args.steps, extra)
                times[label] += secs
                resolved[label] = {"runtime": cfg.get("runtime"), "micro_batch_size": cfg.get("settings", {}).get("micro_batch_size")}
                print(f"{label} run {r}: median {statistics.median(secs):.3f} s/step", file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["default"] / med["old"]
    write_results(args.name, {"steps": args.steps, "repeats": args.repeats, "old": OLD, "median_seconds_per_step": med, "ratio": ratio,
                              "resolved": resolved, "threads": os.environ.get("OMP_NUM_THREADS", "default"), "load_avg": os.getloadavg(),
                              "timings": times},
                  [("default / old (--dtype fp32 --micro-batch-size 16): median s per ZO step", f"{ratio:.2f} ({med['default']:.2f} vs {med['old']:.2f} s)",
                    "<= 0.5")])


if __name__ == "__main__":
    main()
