"""Quality study: does the C4 sensitivity mask (SensZOQ) beat the alternatives on real tasks?

The command line of `python bench/quality.py` (its --help shows this docstring's first line): run pending cells in
plan order (default), or only regenerate the report, or run the lr sweep, reruns, Σg² transfer rows or probes.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from . import records, run, settings
from .plan import plan, sweep_plan
from .probes import probe, probe_keys
from .report import report
from .transfer import transfer
from .verify import verify


def run_pending(items: list, folder: Path, patterns: str, execute: Callable[..., dict], line: Callable[[dict], str], most: int = 0) -> None:
    """Run each item (a Cell or SweepRun) whose key matches and has no record in `folder` yet; record, report."""
    if folder == settings.CELLS:
        records.load_cells()  # a cell recorded at an lr its method no longer uses moves to its `-lr` key first: its plain key is pending
    ran = 0
    for item in items:
        path = folder / f"{item.key}.json"
        if path.is_file() or not records.matches(item.key, patterns):
            continue
        record = execute(item)
        records.write_json(path, record)
        print(line(record), flush=True)
        report()
        ran += 1
        if most and ran >= most:
            break
    if not ran:
        print(f"nothing pending matches {patterns!r} (finished records are in {folder})", flush=True)


def record_each(what: str, folder: Path, keys: list[str], measure: Callable[[str], dict], line: Callable[[dict], str]) -> None:
    """Measure and record each key (into `folder/KEY.json`), print `WHAT KEY: line`, then regenerate the report."""
    folder.mkdir(parents=True, exist_ok=True)
    for key in keys:
        row = measure(key)
        records.write_json(folder / f"{key}.json", row)
        print(f"{what} {key}: {line(row)}", flush=True)
    report()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", action="store_true", help="only regenerate quality.json/md/plots")
    ap.add_argument("--only", default="*", help="fnmatch patterns over cell keys, comma-separated (cells still run in plan order)")
    ap.add_argument("--max-cells", type=int, default=0, help="stop after this many cells (0 = all)")
    ap.add_argument("--sweep", default="", help="run the lr-sweep runs whose keys match these comma-separated patterns ('*' = all)")
    ap.add_argument("--verify", default="", help="rerun these finished cells (comma-separated keys) from their argv and compare")
    ap.add_argument("--transfer", action="store_true", help="compute the missing Σg² transfer rows (one per task)")
    ap.add_argument("--probe", default="", help="memory/time probes of the Pareto configurations whose cell keys match ('*' = all)")
    args = ap.parse_args()
    settings.CELLS.mkdir(parents=True, exist_ok=True)
    if args.probe:
        keys = [k for k in probe_keys(records.load_cells()) if records.matches(k, args.probe) and not (settings.PROBE / f"{k}.json").is_file()]
        record_each("probe", settings.PROBE, keys, probe, lambda r: f"{r['peak_rss_mb']} MB, {r['s_per_step']} s/step")
    elif args.report:
        report()
    elif args.verify:
        record_each("verify", settings.VERIFY, args.verify.split(","), verify, lambda r: f"recorded {r['recorded']:.4f}, rerun {r['rerun']:.4f}")
    elif args.sweep:
        settings.SWEEP.mkdir(parents=True, exist_ok=True)
        run_pending(sweep_plan(), settings.SWEEP, args.sweep, run.run_sweep,
                    lambda r: f"{r['key']}: dev {r['dev_final']:.4f} (n={r['dev_n']}, {r['wall_s']:.0f} s)")
    elif args.transfer:
        tasks = [t for t in settings.TASKS if not (settings.TRANSFER / f"{t}.json").is_file()]
        record_each("transfer", settings.TRANSFER, tasks, transfer, lambda r: f"C4 mask {r['c4_share']:.3f}, task mask {r['task_share']:.3f}")
    else:
        run_pending(plan(), settings.CELLS, args.only, run.run_cell,
                    lambda r: f"{r['key']}: {r['accuracy']:.4f} (n={r['n']}, {r['wall_s']:.0f} s)", args.max_cells)
        report()
