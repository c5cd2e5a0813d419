"""Benchmark memory-bounded fisher mask builds on randomly initialised real-size checkpoints.

Each build runs as `szoq mask build` in a fresh process; its peak RSS comes from the kernel's
rusage of that process (os.wait4), its time from the wall clock. Scenarios:

- llama-1.1b (4 windows x 128 tokens): `--max-memory 3.5GB` against the unbounded build;
  target: the bounded build peaks below 3.5 GB RSS and writes the same mask.safetensors.
- llama-2-7b (2 windows x 64 tokens): bf16 scoring under `--max-memory`, and the same with
  `--score-quant nf4`; target: both complete on the 24 GiB machine (peak RSS and time).

Resumable: each finished run is written to results/ at once and skipped on the next start.

Usage (checkpoints from bench/scale_models.py; niced, one heavy job at a time):
    python bench/bench_mask_build_scale.py llama-1.1b $SZOQ_SCALE_ROOT/llama-1.1b
    python bench/bench_mask_build_scale.py llama-2-7b $SZOQ_SCALE_ROOT/llama-2-7b [--max-memory 19GB]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, SHARED_DATA, write_results  # noqa: E402

C4 = Path(os.environ.get("SZOQ_SHARED_DATA", SHARED_DATA)) / "c4" / "c4_validation_2k.jsonl.gz"
SCENARIOS = {
    "llama-1.1b": {"windows": 4, "seq_len": 128, "max_memory": "3.5GB",
                   "runs": {"bounded": ["--max-memory", "{max_memory}"], "unbounded": []}},
    # bf16 weights alone are 13.7 GB here (vocab 49152): 18 GB leaves ~3 GB of accumulators per
    # pass; the 4-bit base (~4.5 GB resident) fits its accumulators in far fewer passes at 16 GB.
    "llama-2-7b": {"windows": 2, "seq_len": 64, "max_memory": "per run",
                   "runs": {"bf16-bounded": ["--max-memory", "18GB"],
                            "nf4-bounded": ["--max-memory", "16GB", "--score-quant", "nf4"]}},
}


SCALE_ROOT = Path(os.environ.get("SZOQ_SCALE_ROOT", "~/.cache/szoq-scale")).expanduser()  # big checkpoints and masks, outside the repo


def run_build(folder: Path, out: Path, windows: int, seq_len: int, extra: list[str], log: Path) -> dict:
    """One `szoq mask build` in a fresh process: wall time, peak RSS, its JSON result."""
    env = {**os.environ, "SZOQ_HOME": tempfile.mkdtemp(prefix="szoq-bench-home-"), "SOURCE_DATE_EPOCH": "1767225600"}
    cmd = [sys.executable, "-m", "szoq_cli", "mask", "build", str(folder), "--calibration", str(C4), "--samples", str(windows),
           "--seq-len", str(seq_len), "--device", "cpu", "--out", str(out), "--json", *extra]
    t0 = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: its peak RSS
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"build failed ({proc.returncode}); see {log}")
    result = json.loads(stdout)
    # recorded results name no folder of this machine: the temp home and the work folder become variables
    result["path"] = result["path"].replace(env["SZOQ_HOME"], "$SZOQ_HOME")
    if "out" in result and Path(result["out"]).is_relative_to(SCALE_ROOT):
        result["out"] = "$SZOQ_SCALE_ROOT/" + Path(result["out"]).relative_to(SCALE_ROOT).as_posix()
    return {"args": extra, "seconds": seconds, "peak_rss_bytes": usage.ru_maxrss * 1024, "result": result}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shape", choices=sorted(SCENARIOS))
    ap.add_argument("folder", type=Path)
    ap.add_argument("--max-memory", default=None, help="override the 1.1B scenario's bound")
    ap.add_argument("--work", type=Path, default=SCALE_ROOT / "masks", help="where the built masks go (outside the repo)")
    ap.add_argument("--only", default=None, help="run just this scenario run")
    args = ap.parse_args()
    sc = SCENARIOS[args.shape]
    max_memory = args.max_memory or sc["max_memory"]
    name = f"mask_build_{args.shape.replace('-', '_').replace('.', '_')}"
    path = RESULTS / f"{name}.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    if data.get("max_memory") != max_memory or data.get("windows") != sc["windows"]:
        data = {"shape": args.shape, "windows": sc["windows"], "seq_len": sc["seq_len"], "max_memory": max_memory, "runs": {}}
    args.work.mkdir(parents=True, exist_ok=True)
    for run, template in sc["runs"].items():
        if run in data["runs"] or (args.only and run != args.only):
            continue
        extra = [a.format(max_memory=max_memory) for a in template]
        out = args.work / f"{args.shape}-{run}"
        if out.exists():
            import shutil

            shutil.rmtree(out)
        print(f"{run}: szoq mask build {' '.join(extra)}", flush=True)
        done = run_build(args.folder, out, sc["windows"], sc["seq_len"], extra, args.work / f"{args.shape}-{run}.log")
        done.update(out=str(out), load_average=os.getloadavg())
        if path.exists():  # another invocation (--only) may have finished a run meanwhile
            fresh = json.loads(path.read_text())
            if fresh.get("max_memory") == max_memory and fresh.get("windows") == sc["windows"]:
                data["runs"] = {**fresh["runs"], **data["runs"]}
        data["runs"][run] = done
        _write(name, data)
    if data["runs"]:
        _write(name, data)


def _local(recorded: str) -> Path:
    """A recorded folder on this machine (`$SZOQ_SCALE_ROOT/...` expanded)."""
    return Path(recorded.replace("$SZOQ_SCALE_ROOT", str(SCALE_ROOT)))


def _write(name: str, data: dict) -> None:
    from szoq_hub.core.files import file_sha256
    from szoq_hub.masks.artifact import load_mask
    from szoq_hub.masks.diff import diff_masks

    runs = data["runs"]
    for r in runs.values():
        r["mask_sha256"] = file_sha256(_local(r["out"]) / "mask.safetensors")
    names = [n for n in SCENARIOS[data["shape"]]["runs"] if n in runs]
    if len(names) == 2:
        a, b = (load_mask(_local(runs[n]["out"])) for n in names)
        diff = diff_masks(a, b)
        import torch

        same = list(a.indices) == list(b.indices) and all(torch.equal(a.indices[n], b.indices[n]) for n in a.indices)
        # The header records the build recipe, which names --max-memory: compare the selection.
        data["compare"] = {"runs": names, "same_indices": same, "same_stats": a.config.stats == b.config.stats,
                           "header_fields_differing": sorted(k for k, v in a.config.header().items() if b.config.header().get(k) != v),
                           "jaccard": diff.jaccard, "captured_share": [runs[n]["result"]["captured_share"] for n in names]}
    def bound_of(r: dict) -> str | None:
        return r["args"][r["args"].index("--max-memory") + 1] if "--max-memory" in r["args"] else None

    rows = [(f"{n}: peak RSS", f"{r['peak_rss_bytes'] / 1e9:.2f} GB", f"< {bound_of(r)}" if bound_of(r) else "reference") for n, r in runs.items()]
    rows += [(f"{n}: passes", str(r["result"].get("passes", 1)), "") for n, r in runs.items()]
    rows += [(f"{n}: wall time", f"{r['seconds'] / 60:.1f} min", "completes") for n, r in runs.items()]
    rows += [(f"{n}: captured Σg² share", f"{r['result']['captured_share']}", "") for n, r in runs.items()]
    if "compare" in data:
        c = data["compare"]
        rows.append((f"{c['runs'][0]} vs {c['runs'][1]}: same indices and stats", str(c["same_indices"] and c["same_stats"]), "True" if data["shape"] == "llama-1.1b" else "measured"))
        rows.append((f"{c['runs'][0]} vs {c['runs'][1]}: header fields that differ", ", ".join(c["header_fields_differing"]) or "none", "the recipe only"))
        rows.append((f"{c['runs'][0]} vs {c['runs'][1]}: Jaccard", f"{c['jaccard']:.4f}", ""))
    data["targets"] = {"peak_rss_below": 3.5e9} if data["shape"] == "llama-1.1b" else {"completes_on": "24 GiB"}
    write_results(name, data, rows)


if __name__ == "__main__":
    main()
