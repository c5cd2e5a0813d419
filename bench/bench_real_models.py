"""Real models a user would pick (issue 30): Qwen2.5-Coder 0.5B and 1.5B Q4_K_M GGUF files, end to end.

For each size, each step runs as its own `szoq` (or worker) process under `/usr/bin/time -v`, one
after the other, and records wall seconds and peak RSS (`Maximum resident set size`):
- open: the nf4 runtime (bf16) built from the GGUF from a fresh SZOQ_HOME (metadata read once),
- eval: `szoq eval --task sst2 --eval-samples N` zero-shot, from a fresh SZOQ_HOME (the old path
  converted the file to fp32 safetensors first: 9.09 GB at 1.5B),
- mask build: fisher on C4 windows (bf16), once with no memory flag (the bound is picked from the
  available memory) and once with `--max-memory` (default 4GB); the two masks' Jaccard,
- finetune: sparse (the fisher mask), --dense and --lora 8, a few steps each (seconds per step from
  the run's metrics),
- timing: one forward of an SST-2 batch and one paired ZO step on the nf4 runtime, in one process
  (median of --runs): ZO step / forward.
The machine is shared: the 1-minute load average is recorded around every step; compare ratios
only within one run. Writes bench/results/real_models.json and .md.

Usage: SZOQ_DATA_DIR=../shared/data python bench/bench_real_models.py [--sizes 0.5b,1.5b] [--steps 3]
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
sys.path.insert(0, str(HERE))
import real_models  # noqa: E402
from common import RESULTS, SHARED_DATA, environment  # noqa: E402

SIZES = {"0.5b": real_models.QWEN_05B, "1.5b": real_models.QWEN_15B}
DATA = Path(os.environ.get("SZOQ_DATA_DIR", SHARED_DATA))
C4 = DATA / "c4" / "c4_validation_2k.jsonl.gz"


def timed(argv: list[str], env: dict, log: Path) -> dict:
    """Run argv under /usr/bin/time -v; wall seconds, peak RSS, exit code, load average around it."""
    load = os.getloadavg()[0]
    start = time.monotonic()
    with open(log, "w") as fh:
        proc = subprocess.run(["/usr/bin/time", "-v", *argv], env=env, stdout=subprocess.PIPE, stderr=fh, text=True)
    wall = time.monotonic() - start
    text = log.read_text()
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    return {"argv": " ".join(argv[argv.index("szoq"):] if "szoq" in argv else ["python", "bench/bench_real_models.py", *argv[2:]]), "rc": proc.returncode, "wall_s": round(wall, 1),
            "peak_rss_gb": round(int(m.group(1)) * 1024 / 1e9, 3) if m else None, "load_1min": [round(load, 2), round(os.getloadavg()[0], 2)],
            "stdout": proc.stdout[-2000:]}


def step_seconds(run: Path) -> float | None:
    """Median seconds per ZO step from a run's metrics (`kind: step` rows carry `seconds`)."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    secs = [r["seconds"] for r in rows if r.get("kind") == "step" and "seconds" in r]
    return round(statistics.median(secs), 2) if secs else None


def worker(kind: str, model: str, runs: int, batch: int, mask: str | None) -> None:
    """In-process parts (printed as one JSON line): `open` (the nf4 runtime, no mask) or `timing`
    (the nf4 runtime over `mask`: median forward vs paired ZO step, interleaved, as bench_finetune.py)."""
    import torch

    from szoq_hub.runtime.sparse import load_sparse_model

    t0 = time.perf_counter()
    if kind == "open":
        load_sparse_model(model, None, quant="nf4", device="cpu", compute_dtype="bf16")
        print(json.dumps({"open_s": round(time.perf_counter() - t0, 1)}))
        return
    from bench_finetune import paired_closure
    from szoq_hub.data.scoring import encode, option_scores
    from szoq_hub.data.tasks import Sampling, load_task
    from szoq_hub.hub.refs import open_mask
    from szoq_hub.runtime.zo import ZOConfig, make_optimizer

    sp = load_sparse_model(model, open_mask(mask), quant="nf4", device="cpu", compute_dtype="bf16")
    task = load_task("sst2", data_dir=DATA, sampling=Sampling(batch, 0, 1, seed=0))
    enc = encode(sp.tokenizer, task.train)
    pad = sp.tokenizer.pad_token_id
    opt = make_optimizer(sp.values, ZOConfig(lr=0.0, total_steps=runs + 1))  # lr 0: every step times the same work
    paired = paired_closure(sp, enc, pad)
    option_scores(sp.model, enc, pad)  # warm-up
    fwd, step = [], []
    for s in range(runs):
        t = time.perf_counter()
        option_scores(sp.model, enc, pad)
        fwd.append(time.perf_counter() - t)
        t = time.perf_counter()
        opt.step(paired, s)
        step.append(time.perf_counter() - t)
    f, z = statistics.median(fwd), statistics.median(step)
    print(json.dumps({"forward_s": round(f, 2), "zo_step_s": round(z, 2), "ratio": round(z / f, 3), "runs": runs, "batch": batch,
                      "threads": torch.get_num_threads(), "all_forward_s": fwd, "all_step_s": step}))


def measure(size: str, args, work: Path, res: dict) -> None:
    model = str(real_models.gguf_path(SIZES[size]))
    res.update(model=SIZES[size], file=Path(model).name)
    base_env = {**os.environ, "SZOQ_DATA_DIR": str(DATA)}

    def fresh_env(tag: str) -> dict:
        home = work / f"home-{size}-{tag}"
        if not (tag == "shared" and args.reuse_home):
            shutil.rmtree(home, ignore_errors=True)
        return {**base_env, "SZOQ_HOME": str(home), "SZOQ_MODEL_CACHE": str(home / "models")}

    home_env = fresh_env("shared")  # mask build and fine-tunes share one home (the mask is registered there)

    def run(name: str, argv: list[str], env: dict) -> dict:
        r = timed(argv, env, work / f"{size}-{name}.log")
        res[name] = r
        print(size, name, {k: v for k, v in r.items() if k != "stdout"}, flush=True)
        save(args.out, results)
        return r

    py = sys.executable
    szoq = ["szoq"]  # from the active environment's PATH
    if "open" in args.only:
        r = run("open", [py, __file__, "--worker", "open", "--model", model, "--mask", ""], fresh_env("open"))
        r.update(json.loads(r["stdout"].strip().splitlines()[-1]) if r["rc"] == 0 else {})
    if "eval" in args.only:
        r = run("eval", [*szoq, "eval", "--task", "sst2", "--model", model, "--eval-samples", str(args.eval_samples), "--json"], fresh_env("eval"))
        if r["rc"] == 0:
            r["result"] = json.loads(r["stdout"])
    if "mask" in args.only:
        common = [*szoq, "mask", "build", model, "--calibration", str(C4), "--samples", str(args.samples), "--seq-len", str(args.seq_len),
                  "--dtype", "bf16", "--json"]
        a = run("mask_auto", [*common, "--name", f"auto-{args.samples}x{args.seq_len}"], home_env)
        b = run("mask_bounded", [*common, "--name", f"bounded-{args.samples}x{args.seq_len}", "--max-memory", args.max_memory], home_env)
        if a["rc"] == 0 and b["rc"] == 0:
            res["mask_jaccard"] = jaccard(json.loads(a["stdout"])["path"], json.loads(b["stdout"])["path"])
            res["mask_scores_identical"] = same_scores(json.loads(a["stdout"])["path"], json.loads(b["stdout"])["path"])
            for r in (a, b):
                r["result"] = json.loads(r["stdout"])
    if "finetune" in args.only:
        train = ["--task", "sst2", "--steps", str(args.steps), "--batch-size", "16", "--eval-every", "0", "--dev-samples", "16",
                 "--eval-samples", "16", "--train-samples", "64", "--save-every", "1000", "--save-every-minutes", "0"]
        for method, flags in {"sparse": ["--mask", args.mask_name or f"auto-{args.samples}x{args.seq_len}"], "dense": ["--dense"], "lora": ["--lora", "8"]}.items():
            out = work / f"run-{size}-{method}"
            shutil.rmtree(out, ignore_errors=True)
            r = run(f"finetune_{method}", [*szoq, "finetune", "--model", model, *flags, *train, "--out", str(out)], home_env)
            r["step_s"] = step_seconds(out)
    if "timing" in args.only:
        r = run("timing", [py, __file__, "--worker", "timing", "--model", model, "--runs", str(args.runs), "--mask", args.mask_name or f"auto-{args.samples}x{args.seq_len}"], home_env)
        r.update(json.loads(r["stdout"].strip().splitlines()[-1]) if r["rc"] == 0 else {})


def jaccard(a: str, b: str) -> float:
    from szoq_hub.masks.artifact import load_mask

    ma, mb = load_mask(Path(a)), load_mask(Path(b))
    inter = union = 0
    for name in ma.indices:
        x, y = set(ma.indices[name].tolist()), set(mb.indices.get(name, []).tolist() if name in mb.indices else [])
        inter += len(x & y)
        union += len(x | y)
    return round(inter / union, 6) if union else 1.0


def same_scores(a: str, b: str) -> bool:
    """The two masks keep the same Σg² of their selected weights, bit for bit."""
    import torch

    from szoq_hub.masks.artifact import load_mask

    sa, sb = load_mask(Path(a)).scores, load_mask(Path(b)).scores
    return sa is not None and sb is not None and list(sa) == list(sb) and all(torch.equal(sa[n], sb[n]) for n in sa)


results: dict = {}


def scrub(text: str) -> str:
    """This machine's paths out of what is committed: {models}, {data}, {work}."""
    for path, word in ((real_models.models_dir(), "{models}"), (DATA, "{data}"), (WORK, "{work}")):
        if path is not None:
            text = text.replace(str(path), word)
    return text


WORK: Path | None = None


def save(name: str, data: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(scrub(json.dumps({**data, "environment": environment()}, indent=2)) + "\n")
    rows = []
    for size, res in data.get("sizes", {}).items():
        for key, r in res.items():
            if not isinstance(r, dict) or "wall_s" not in r:
                continue
            extra = []
            if r.get("step_s") is not None:
                extra.append(f"{r['step_s']} s/step")
            if key == "eval" and "result" in r:
                extra.append(f"{100 * r['result']['value']:.1f}% (n={r['result']['n']})")
            if key.startswith("mask") and "result" in r:
                extra.append(f"{r['result']['nnz']:,} weights, {r['result'].get('passes', 1)} pass(es), bound {r['result'].get('max_memory')}"
                             + (", decoder linears compact (GGUF bytes) outside their pass" if r["result"].get("compact_weights") else ""))
            if key == "timing" and "ratio" in r:
                extra.append(f"forward {r['forward_s']} s, ZO step {r['zo_step_s']} s: ZO step / forward {r['ratio']} (batch {r['batch']}, median of {r['runs']})")
            rows.append(f"| {size} | {key} | {r['peak_rss_gb']} | {r['wall_s']} | {'; '.join(extra)} | {r['load_1min'][0]}-{r['load_1min'][1]} | {r['rc']} |")
        if "mask_jaccard" in res:
            rows.append(f"| {size} | mask Jaccard (auto vs bounded) | | | {res['mask_jaccard']} | | |")
        if "mask_scores_identical" in res:
            rows.append(f"| {size} | kept Σg² bit for bit (auto vs bounded) | | | {res['mask_scores_identical']} | | |")
    md = ["# real models (Qwen2.5-Coder GGUF, nf4 runtime, CPU)", "", "Shared machine (load average in the table); compare only within one run.", "",
          "| size | step | peak RSS GB | wall s | result | load 1 min | rc |", "|---|---|---|---|---|---|---|", *rows, ""]
    (RESULTS / f"{name}.md").write_text(scrub("\n".join(md)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0.5b,1.5b")
    parser.add_argument("--only", default="open,eval,mask,finetune,timing")
    parser.add_argument("--eval-samples", type=int, default=200)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--max-memory", default="4GB")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default="real_models")
    parser.add_argument("--mask-name", default=None, help="mask of the sparse fine-tune and timing (default: this run's mask_auto)")
    parser.add_argument("--reuse-home", action="store_true", help="keep the shared SZOQ_HOME of an earlier run (its model cache and masks)")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temp dir); runs and masks go there, never into the repo")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--mask", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.model, args.runs, 16, args.mask)
        return
    args.only = set(args.only.split(","))
    global WORK
    work = WORK = Path(args.work or tempfile.mkdtemp(prefix="szoq-real-"))
    work.mkdir(parents=True, exist_ok=True)
    prev = RESULTS / f"{args.out}.json"
    if prev.is_file():  # keep the other sizes' and steps' figures
        results.update({k: v for k, v in json.loads(prev.read_text()).items() if k != "environment"})
    results.setdefault("sizes", {})
    for size in args.sizes.split(","):
        measure(size, args, work, results["sizes"].setdefault(size, {}))
        save(args.out, results)


if __name__ == "__main__":
    main()
