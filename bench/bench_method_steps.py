"""Step time and peak memory of SensZOQ's curvature-aware variants against SensZOQ itself (issue 33).

Runs `szoq finetune` (SmolLM2-135M, nf4 base, SST-2 batch 16, the CLI's dtype and micro-batch defaults) on one fisher
mask with scores for every method, --steps steps per run, the methods interleaved over --repeats rounds, and reads the
per-step `seconds` every run writes to metrics.jsonl (the first step of each run is dropped: warm-up). Reported per
method: the median seconds per step over its runs' steps, its ratio to SensZOQ's measured in this one run (target
<= 1.1, <= 1.6 for a variant that takes an extra forward per step), and the run's peak RSS (os.wait4's ru_maxrss of
the child; the largest over its runs) against SensZOQ's (target <= 1.05), with the machine's load average.

Without --mask, a fisher mask is built once (`szoq mask build` on C4, 8 x 128 windows) into the work folder.

Writes bench/results/<--name>.json and .md (default: method_steps).

Usage: SZOQ_DATA_DIR=../shared/data python bench/bench_method_steps.py [--steps 12] [--repeats 2] [--mask FOLDER]
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
from common import SHARED_DATA, write_results  # noqa: E402

DATA = Path(os.environ.get("SZOQ_DATA_DIR", SHARED_DATA))
WORK = Path(os.environ.get("SZOQ_BENCH_WORK", Path.home() / ".cache" / "szoq" / "bench"))
CURVATURE = ["--method", "senszoq-curvature"]
# method -> (extra `szoq finetune` options, step-time target as a ratio to SensZOQ's)
METHODS = {
    "senszoq": ([], 1.0),
    "senszoq-precond": (CURVATURE, 1.1),
    "senszoq-adaptive": ([*CURVATURE, "--curvature-adaptive"], 1.1),
    "senszoq-online-fisher": ([*CURVATURE, "--curvature-source", "online"], 1.1),
    "senszoq-online-hessian": ([*CURVATURE, "--curvature-source", "online", "--curvature", "hessian"], 1.6),  # one extra forward
}
RSS_TARGET = 1.05


def szoq(args: list[str]) -> float:
    """Run `szoq ARGS` to completion; its peak RSS in MiB."""
    proc = subprocess.Popen([sys.executable, "-m", "szoq_cli", *args], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"szoq {' '.join(args[:2])} failed ({proc.returncode})")
    return usage.ru_maxrss / 1024  # Linux: KiB


def fisher_mask() -> Path:
    """A C4 fisher mask of SmolLM2 with its scores (built once into the work folder; registered under its own name: a build
    registered as the model's name would stand in for the built-in mask in every later `--mask smollm2-135m-instruct`)."""
    folder = WORK / "smollm2-c4-fisher-8x128"
    if not (folder / "mask.safetensors").is_file():
        szoq(["mask", "build", "smollm2-135m-instruct", "--calibration", str(DATA / "c4" / "c4_validation_2k.jsonl.gz"),
              "--samples", "8", "--seq-len", "128", "--density", "0.001", "--name", "bench-method-steps", "--out", str(folder)])
    return folder


def run(out: Path, mask: Path, steps: int, extra: list[str]) -> tuple[list[float], float]:
    """One `szoq finetune` run: (seconds of each step after the first, peak RSS MiB)."""
    rss = szoq(["finetune", "--mask", str(mask), *extra, "--task", "sst2", "--steps", str(steps), "--batch-size", "16",
                "--train-samples", "1000", "--dev-samples", "16", "--eval-samples", "16", "--eval-every", "0", "--no-dev-baseline",
                "--out", str(out)])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["seconds"] for r in rows if r.get("kind") == "step"][1:], rss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--mask", type=Path, default=None, help="a fisher mask folder with scores (default: build one)")
    ap.add_argument("--name", default="method_steps")
    args = ap.parse_args()
    mask = args.mask or fisher_mask()
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    rss: dict[str, float] = {m: 0.0 for m in METHODS}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="szoq-bench-methods-") as tmp:
        for r in range(args.repeats):
            for method, (extra, _) in METHODS.items():
                secs, peak = run(Path(tmp) / f"{method}-{r}", mask, args.steps, extra)
                times[method] += secs
                rss[method] = max(rss[method], peak)
                print(f"{method} run {r}: median {statistics.median(secs):.3f} s/step, {peak:.0f} MiB", file=sys.stderr, flush=True)
            load.append(os.getloadavg()[0])
    med = {m: statistics.median(v) for m, v in times.items()}
    rows = []
    for method, (_, target) in METHODS.items():
        if method == "senszoq":
            continue
        rows.append((f"{method} / senszoq: median s per ZO step", f"{med[method] / med['senszoq']:.3f} ({med[method]:.2f} vs {med['senszoq']:.2f} s)",
                     f"<= {target}"))
        rows.append((f"{method} / senszoq: peak RSS", f"{rss[method] / rss['senszoq']:.3f} ({rss[method]:.0f} vs {rss['senszoq']:.0f} MiB)",
                     f"<= {RSS_TARGET}"))
    write_results(args.name, {"steps": args.steps, "repeats": args.repeats, "methods": {m: e for m, (e, _) in METHODS.items()},
                              "median_seconds_per_step": med, "ratio": {m: med[m] / med["senszoq"] for m in METHODS},
                              "peak_rss_mib": rss, "threads": os.environ.get("OMP_NUM_THREADS", "default"), "load_avg_1min": load,
                              "timings": times}, rows)


if __name__ == "__main__":
    main()
