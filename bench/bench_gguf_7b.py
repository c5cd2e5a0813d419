"""A 7B-shaped Q4_K_M GGUF through `szoq finetune`: peak RSS, wall and seconds per ZO step.

Usage (heavy: ~35 min on 2 shared cores, ~17 more for a first mask; run alone):
    nice -n 10 python bench/bench_gguf_7b.py [--root $SZOQ_SCALE_ROOT] [--steps 10] [--name gguf_7b]

1. write `llama-2-7b.gguf` under --root once (bench/scale_models.py `write_gguf`: Llama-2-7B's
   shape, SmolLM2's vocabulary, Q4_K_M's tensor types, random blocks; skipped when complete);
2. time the first open of the file (`resolve_model` into an empty model cache: hash, parse, config,
   tokenizer, checks), in a child process;
3. build a random-scorer mask at density 1e-3 with `szoq mask build --scorer random` (skipped when
   present: its figures then come from the build's kept `/usr/bin/time` log, --root/mask-build.log);
4. run `szoq finetune --model FILE.gguf --mask MASK` (nf4 base, bf16, SST-2, batch 4) under
   `/usr/bin/time -v` and read its peak RSS ("Maximum resident set size") and wall clock, and the
   seconds of each ZO step from metrics.jsonl.
Every child gets SZOQ_HOME=--root/home (nothing lands in ~) and 2 threads. Results:
bench/results/<name>.json and .md, with --root written as `{scale}` and --data-dir as `{data}`
(`--render` rewrites the .md from the JSON). Target: peak RSS <= 5 GiB (the
7B budget; the random bf16 safetensors checkpoint of the same shape peaked at 4.577 GiB, scale.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

SHAPE = "llama-2-7b"
TARGET_GIB = 5.0
DENSITY = 1e-3
TIME = "/usr/bin/time"


def timed(argv: list[str], log_file: Path, env: dict) -> dict:
    """`argv` under `/usr/bin/time -v`. Returns its peak RSS (bytes) and wall seconds.

    Raises:
        SystemExit: the command failed (the tail of its log is shown).
    """
    cmd = [sys.executable, "-m", "szoq_cli", *argv[1:]] if argv[0] == "szoq" else argv  # this interpreter's szoq, whatever PATH says
    with open(log_file, "w") as err:
        proc = subprocess.run([TIME, "-v", *cmd], stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    text = log_file.read_text()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])} failed (exit {proc.returncode}); see {log_file}:\n{text[-3000:]}")
    return parse_time_log(text)


def parse_time_log(text: str) -> dict:
    """Peak RSS and wall seconds from the report of `/usr/bin/time -v`."""
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    clock = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text).group(1)
    wall = sum(float(part) * 60**i for i, part in enumerate(reversed(clock.split(":"))))
    return {"peak_rss_bytes": rss_kb * 1024, "peak_rss_gib": round(rss_kb / 2**20, 3), "wall_seconds": round(wall, 1)}


def first_open_seconds(path: Path) -> float:
    """Seconds of the first `resolve_model` of a GGUF file (an empty model cache: nothing reused)."""
    with tempfile.TemporaryDirectory(prefix="szoq-open-") as cache:
        env = {**os.environ, "SZOQ_MODEL_CACHE": cache}
        code = "import sys, time; from szoq_hub.data.models import resolve_model; t = time.perf_counter(); resolve_model(sys.argv[1]); print(time.perf_counter() - t)"
        out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env, check=True).stdout
    return round(float(out.split()[-1]), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path(os.environ.get("SZOQ_SCALE_ROOT", "~/.cache/szoq-scale")).expanduser(),
                    help="where the GGUF, the mask and the run live (outside the repository)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--data-dir", default=os.environ.get("SZOQ_DATA_DIR"), help="GLUE folder for SST-2 (default $SZOQ_DATA_DIR)")
    ap.add_argument("--name", default="gguf_7b", help="results name under bench/results/")
    ap.add_argument("--render", action="store_true", help="run nothing: rewrite the .md table from results/<name>.json")
    args = ap.parse_args()
    if args.render:
        render(args.name)
        return

    from common import write_results
    from scale_models import write_gguf

    root = args.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SZOQ_HOME": str(root / "home"), "SZOQ_NO_PROGRESS": "1", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    if args.data_dir:
        env["SZOQ_DATA_DIR"] = args.data_dir
    os.environ.update(env)  # the in-process open below uses the same home
    gguf_path = root / f"{SHAPE}.gguf"
    t0 = time.perf_counter()
    write_gguf(SHAPE, gguf_path, log=lambda s: print(s, file=sys.stderr))
    result: dict = {"shape": SHAPE, "model": f"{{scale}}/{gguf_path.name}", "file_bytes": gguf_path.stat().st_size,
                    "file_gib": round(gguf_path.stat().st_size / 2**30, 2), "write_or_check_seconds": round(time.perf_counter() - t0, 1)}
    result["first_open_seconds"] = first_open_seconds(gguf_path)

    mask = root / f"{SHAPE}-gguf-random-{DENSITY:g}"
    mask_log = root / "mask-build.log"  # kept: a later run reports the build that made the mask
    mask_command = f"szoq mask build {{scale}}/{gguf_path.name} --scorer random --density {DENSITY:g}"
    if not (mask / "mask.safetensors").exists():
        build = timed(["szoq", "mask", "build", str(gguf_path), "--scorer", "random", "--density", str(DENSITY), "--out", str(mask)], mask_log, env)
        result["mask_build"] = {"command": mask_command, **build}
    elif mask_log.exists():
        result["mask_build"] = {"command": mask_command, **parse_time_log(mask_log.read_text()), "run": "earlier"}
    run = root / "run7b"
    if run.exists():
        shutil.rmtree(run)
    argv = ["szoq", "finetune", "--model", str(gguf_path), "--mask", str(mask), "--task", "sst2", "--steps", str(args.steps),
            "--batch-size", "4", "--eval-every", "0", "--dev-samples", "4", "--eval-samples", "4", "--train-samples", "16",
            "--save-every", "1000", "--save-every-minutes", "0", "--device", "cpu", "--dtype", "bf16", "--out", str(run)]
    load = os.getloadavg()[0]
    finetune = timed(argv, root / "finetune.log", env)
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"kind": "step"' in line]
    seconds = [s["seconds"] for s in steps]
    result.update({
        "finetune_argv": [public(a, root, args.data_dir) for a in argv], **finetune,
        "step_seconds": seconds, "seconds_per_step": round(statistics.median(seconds), 1),
        "outside_steps_seconds": round(finetune["wall_seconds"] - sum(seconds), 1),  # open + load + dev/eval scoring + save
        "load_average_1min": [round(load, 1), round(os.getloadavg()[0], 1)],  # before, after: 2 cores
        "target": f"<= {TARGET_GIB:g} GiB", "met": finetune["peak_rss_bytes"] <= TARGET_GIB * 2**30,
    })
    print(json.dumps(result), file=sys.stderr)
    command = " ".join(public(a, root, args.data_dir) for a in ["nice -n 10 python bench/bench_gguf_7b.py", *sys.argv[1:]])
    data = {"command": command, "device": "cpu", "dtype": "bf16", "quant": "nf4", "density": DENSITY, "batch": "4 (SST-2)", "result": result}
    write_results(args.name, data, rows_of(result))


def public(text: str, root: Path, data_dir: str | None) -> str:
    """`text` with this machine's folders replaced by `{scale}` and `{data}`."""
    text = text.replace(str(root), "{scale}")
    return text.replace(str(Path(data_dir).resolve()), "{data}").replace(data_dir, "{data}") if data_dir else text


def rows_of(result: dict) -> list[tuple[str, str, str]]:
    """The readable table of one run (metric | value | target)."""
    steps = result["step_seconds"]
    rows = [
        ("GGUF file (Q4_K_M types, random blocks)", f"{result['file_gib']} GiB ({result['file_bytes']} bytes)", "report"),
        ("first open (hash, metadata, config, tokenizer, checks)", f"{result['first_open_seconds']} s", "report"),
        ("szoq finetune: peak RSS (/usr/bin/time -v)", f"{result['peak_rss_gib']} GiB", result["target"]),
        (f"szoq finetune: wall ({len(steps)} ZO steps)", f"{result['wall_seconds']} s", "report"),
        ("szoq finetune: outside the steps (open, load, score, save)", f"{result['outside_steps_seconds']} s", "report"),
        ("seconds per ZO step (median)", f"{result['seconds_per_step']} (steps: {', '.join(f'{s:.1f}' for s in steps)})", "report"),
        ("load average (1 min) before / after the run, 2 cores", " / ".join(map(str, result["load_average_1min"])), "report"),
    ]
    if "mask_build" in result:
        mb = result["mask_build"]
        rows.append((f"random mask at {DENSITY:g} (szoq mask build)", f"{mb['wall_seconds']} s, peak RSS {mb['peak_rss_gib']} GiB", "report"))
    scale = RESULTS / "scale.json"
    earlier = next((r for r in json.loads(scale.read_text())["results"] if r["shape"] == SHAPE), None) if scale.exists() else None
    if earlier is not None:  # the same shape from random bf16 safetensors, batch 2 x 64 tokens (bench_scale.py)
        rows.append(("for comparison: bf16 safetensors of the same shape, batch 2 x 64 tokens (scale.md)",
                     f"peak RSS {earlier['peak_rss_gib']} GiB, {earlier['seconds_per_step']} s per ZO step", "report"))
    return rows


def render(name: str) -> None:
    """Rewrite `results/<name>.md` from its JSON (the table's layout changed, the run did not)."""
    data = json.loads((RESULTS / f"{name}.json").read_text())
    lines = [f"# {name}", "", "| metric | value | target |", "|---|---|---|", *[f"| {a} | {b} | {c} |" for a, b, c in rows_of(data["result"])], ""]
    (RESULTS / f"{name}.md").write_text("\n".join(lines))

if __name__ == "__main__":
    main()
