"""bf16 against fp32 for what is not training: zero-shot eval, a delta's eval, and a merged model's eval.

The bf16 SST-2 cells of bench/quality.py settle training (issue 23: within 2.5 points of fp32). This
checks the other places `--dtype auto` now picks bf16 on this CPU, all through the CLI, SST-2, the
grid's 500 validation rows (seed 0):
- zero-shot: `szoq eval` on the nf4 base, `--dtype fp32` and `--dtype bf16`;
- delta: `szoq eval --delta RUN` (a bf16-trained SensZOQ run of the grid), fp32 and bf16;
- merge: `szoq merge --delta RUN` (fp32 weights, merge's default), then `szoq eval --model MERGED
  --quant none` in fp32 and bf16: the merged model must score what the delta scores.
Pass: every bf16 accuracy within 2.5 points of its fp32 twin (the issue's bar; the n=500 95% interval is
about +-4.2 points at 65%), and the merged model within 2.5 points of the delta.

Writes bench/results/dtype_parity.json and .md.

Usage: OMP_NUM_THREADS=1 SZOQ_DATA_DIR=../shared/data python bench/bench_dtype_parity.py --run RUN_FOLDER
(the default RUN is the quality grid's sst2-senszoq-bf16-s0 run in its work folder).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import environment  # noqa: E402
from quality_study.settings import WORK  # noqa: E402  (the quality grid's work folder)

EVAL = ["--task", "sst2", "--eval-samples", "500", "--seed", "0", "--json"]
BAR = 0.025


def szoq(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "szoq_cli", *args], check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=WORK / "runs" / "sst2-senszoq-bf16-s0", help="a finished sparse run folder")
    args = ap.parse_args()
    acc: dict[str, float] = {}
    for dtype in ("fp32", "bf16"):
        acc[f"zero-shot {dtype}"] = szoq("eval", *EVAL, "--dtype", dtype)["value"]
        acc[f"delta {dtype}"] = szoq("eval", "--delta", str(args.run), *EVAL, "--dtype", dtype)["value"]
    with tempfile.TemporaryDirectory() as tmp:
        merged = Path(tmp) / "merged"
        subprocess.run([sys.executable, "-m", "szoq_cli", "merge", "--delta", str(args.run), "--out", str(merged)], check=True,
                       stdout=subprocess.DEVNULL)
        for dtype in ("fp32", "bf16"):
            acc[f"merged {dtype}"] = szoq("eval", "--model", str(merged), "--quant", "none", *EVAL, "--dtype", dtype)["value"]
    checks = [("zero-shot: bf16 - fp32", acc["zero-shot bf16"] - acc["zero-shot fp32"]),
              ("delta: bf16 - fp32", acc["delta bf16"] - acc["delta fp32"]),
              ("merged: bf16 - fp32", acc["merged bf16"] - acc["merged fp32"]),
              ("merged fp32 - delta fp32", acc["merged fp32"] - acc["delta fp32"]),
              ("merged bf16 - delta bf16", acc["merged bf16"] - acc["delta bf16"])]
    rows = [{"check": name, "points": round(100 * d, 1), "pass": abs(d) <= BAR + 1e-9} for name, d in checks]
    data = {"accuracy": acc, "checks": rows, "n": 500, "run": args.run.name, "bar_points": 100 * BAR,
            "threads": os.environ.get("OMP_NUM_THREADS", "default"), "environment": environment()}
    (HERE / "results" / "dtype_parity.json").write_text(json.dumps(data, indent=1) + "\n")
    lines = [f"# bf16 vs fp32 outside training: SST-2, n=500, run {args.run.name}", "", "| eval | accuracy % |", "|---|---|",
             *(f"| {k} | {100 * v:.1f} |" for k, v in acc.items()), "", f"| check | points | within {100 * BAR:g} |", "|---|---|---|",
             *(f"| {r['check']} | {r['points']:+.1f} | {'yes' if r['pass'] else 'NO'} |" for r in rows), ""]
    (HERE / "results" / "dtype_parity.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
