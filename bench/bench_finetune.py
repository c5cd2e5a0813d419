"""Fine-tuning benchmark on the real SmolLM2-135M: step time and peak memory of sparse ZO.

Writes bench/results/<--name>.json and .md (default finetune):
(1) ZO step time / one inference forward, same batch and quantized model: the paired step
    (both perturbations in one forward over 2B rows, what `szoq finetune` runs; target <= 1.6)
    and the two-pass step (one forward per perturbation; floor 2.0), timed in one process,
    interleaved (forward, paired, two-pass, rotating), median of --runs; the 1-minute load
    average before and after is recorded.
(3) peak RSS of a fine-tuning run / peak RSS of inference only (same model, quant, batch;
    target <= 1.15): each measured in its own subprocess (ru_maxrss), interleaved.
(4) that fine-tuning peak RSS / peak RSS of a dense full-model ZO run (MeZO over every decoder
    linear weight, in place, seeded per step) on the unquantized fp32 model.
Item (2) (forward vs plain bnb nf4) lives in bench/bench_runtime.py.

Usage: SZOQ_DATA_DIR=../shared/data python bench/bench_finetune.py [--runs 5] [--quant nf4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import peak_rss_bytes  # noqa: E402  (VmHWM: a fork+exec child does not inherit the parent's peak)
RESULTS = HERE / "results"
DATA = Path(os.environ.get("SZOQ_DATA_DIR", HERE.parent.parent / "shared" / "data"))


def _batch(tokenizer, batch_size: int):
    from szoq_hub.data.scoring import encode
    from szoq_hub.data.tasks import Sampling, load_task

    task = load_task("sst2", data_dir=DATA, sampling=Sampling(batch_size, 0, 1, seed=0))
    return encode(tokenizer, task.train)


def _sparse(quant: str, dtype: str | None = None, device: str = "cpu"):
    from szoq_hub.hub.refs import open_mask
    from szoq_hub.runtime.sparse import load_sparse_model

    return load_sparse_model("smollm2-135m-instruct", open_mask("smollm2-135m-instruct"), quant=quant, device=device, compute_dtype=dtype)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def paired_closure(sp, enc, pad):
    """The closure `szoq finetune` uses: all 2q points in one forward."""
    from szoq_hub.data.scoring import loss_sums

    def closure(points):
        with sp.perturbed(points) as parts:
            return [x / len(enc) for x in loss_sums(sp.model, enc, pad, copies=parts)]

    return closure


def worker(kind: str, quant: str, batch_size: int, steps: int) -> dict:
    """One memory measurement in this (fresh) process."""
    from szoq_hub.data.scoring import loss_sum, option_scores
    from szoq_hub.runtime.zo import ZOConfig, make_optimizer, perturbation, step_seeds

    if kind in ("inference", "finetune"):
        sp = _sparse(quant)
        enc = _batch(sp.tokenizer, batch_size)
        pad = sp.tokenizer.pad_token_id
        if kind == "inference":
            for _ in range(2 * steps):  # as many forwards as the ZO run
                option_scores(sp.model, enc, pad)
        else:
            opt = make_optimizer(sp.values, ZOConfig(lr=1e-4, total_steps=steps))
            for s in range(steps):
                opt.step(paired_closure(sp, enc, pad), s)
    else:  # dense MeZO on the fp32 model: perturb every decoder linear weight in place
        from szoq_hub.data.models import load_model, resolve_model, target_parameter_names

        loaded = load_model(resolve_model("smollm2-135m-instruct"), dtype=torch.float32)
        model, tok = loaded.model, loaded.tokenizer
        enc = _batch(tok, batch_size)
        pad = tok.pad_token_id
        params = dict(model.named_parameters())
        names = target_parameter_names(model)

        def perturb(seed: int, scale: float) -> None:
            for i, n in enumerate(names):  # z regenerated per tensor from (seed, i): never stored
                p = params[n].data.view(-1)
                p.add_(perturbation(seed + i, p.numel()), alpha=scale)

        with torch.no_grad():
            for s in range(steps):
                (seed,) = step_seeds(0, s, 1)
                perturb(seed, 1e-3)
                lp = loss_sum(model, enc, pad)
                perturb(seed, -2e-3)
                lm = loss_sum(model, enc, pad)
                perturb(seed, 1e-3)
                perturb(seed, -2e-6 * (lp - lm) / 2e-3)
    return {"kind": kind, "peak_rss_mib": round(peak_rss_bytes() / 2**20, 1)}


def timing(quant: str, batch_size: int, runs: int, dtype: str | None = None, device: str = "cpu") -> dict:
    """(1): median forward, paired ZO step and two-pass ZO step, interleaved in one process."""
    from szoq_hub.data.scoring import loss_sum, option_scores
    from szoq_hub.runtime.zo import ZOConfig, in_place, make_optimizer

    sp = _sparse(quant, dtype, device)
    enc = _batch(sp.tokenizer, batch_size)
    pad = sp.tokenizer.pad_token_id
    # lr 0: every step sees the same values, so the variants time the same work.
    opt = make_optimizer(sp.values, ZOConfig(lr=0.0, total_steps=runs + 1))
    paired = paired_closure(sp, enc, pad)
    two_pass = in_place(sp.values, lambda: loss_sum(sp.model, enc, pad) / len(enc))
    load_before = os.getloadavg()[0]
    option_scores(sp.model, enc, pad)  # warm-up (bnb repacks 4-bit weights on the first call)
    opt.step(paired, 0)
    jobs = {"forward": lambda s: option_scores(sp.model, enc, pad), "paired": lambda s: opt.step(paired, s),
            "two_pass": lambda s: opt.step(two_pass, s)}
    times: dict[str, list[float]] = {k: [] for k in jobs}
    cpu: dict[str, list[float]] = {k: [] for k in jobs}  # process CPU seconds: robust to a busy machine at 1 thread
    order = list(jobs)
    for s in range(runs):
        for k in order[s % 3:] + order[: s % 3]:  # rotate so no variant always follows the same one
            _sync(device)
            t, c = time.perf_counter(), time.process_time()
            jobs[k](s)
            _sync(device)
            times[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
    med = {k: statistics.median(v) for k, v in times.items()}
    cmed = {k: statistics.median(v) for k, v in cpu.items()}
    paired_ratios = [p / f for p, f in zip(times["paired"], times["forward"])]
    return {"forward_s": round(med["forward"], 4), "zo_step_s": round(med["paired"], 4), "ratio": round(med["paired"] / med["forward"], 3),
            "paired_round_ratio_median": round(statistics.median(paired_ratios), 3),
            "two_pass_step_s": round(med["two_pass"], 4), "two_pass_ratio": round(med["two_pass"] / med["forward"], 3),
            "dtype": str(sp.model.get_input_embeddings().weight.dtype).removeprefix("torch."), "device": str(sp.device),
            "cpu_s": {k: round(v, 4) for k, v in cmed.items()}, "cpu_ratio": round(cmed["paired"] / cmed["forward"], 3),
            "two_pass_cpu_ratio": round(cmed["two_pass"] / cmed["forward"], 3), "threads": torch.get_num_threads(),
            "load_avg_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}, "all_s": times, "all_cpu_s": cpu}


def main() -> None:
    from szoq_hub.core.memory import use_predictable_malloc

    use_predictable_malloc()  # the allocator policy the `szoq` CLI runs with
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="ZO steps of each memory run")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--quant", default="nf4")
    parser.add_argument("--dtype", default=None, help="compute dtype of the timing part (default: the device's)")
    parser.add_argument("--device", default="cpu", help="device of the timing part (memory is measured on the CPU only)")
    parser.add_argument("--name", default="finetune", help="results name under bench/results/")
    parser.add_argument("--threads", type=int, default=0, help="torch threads of the timing part (0: torch's default)")
    parser.add_argument("--only", choices=["timing", "memory"], default=None, help="measure one part; the other is kept from the last JSON")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.quant, args.batch_size, args.steps)))
        return

    def measure(kind: str) -> float:
        cmd = [sys.executable, __file__, "--worker", kind, "--quant", args.quant, "--batch-size", str(args.batch_size), "--steps", str(args.steps)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])["peak_rss_mib"]

    started = time.time()
    json_path = RESULTS / f"{args.name}.json"
    previous = json.loads(json_path.read_text()) if args.only and json_path.is_file() else {}
    # Memory first, from a parent that has not loaded the model (cleaner process tree).
    if args.only != "timing":
        mem = {"inference": [], "finetune": [], "dense_zo_fp32": []}
        for kind in ("inference", "finetune", "dense_zo_fp32"):  # one fresh subprocess each
            mem[kind].append(measure(kind))
        peak = {k: min(v) for k, v in mem.items()}
    else:
        peak = previous.get("peak_rss_mib")  # kept from the last full run (None on a new --name)
    if args.threads:
        torch.set_num_threads(args.threads)
    time_result = timing(args.quant, args.batch_size, args.runs, args.dtype, args.device) if args.only != "memory" else previous["zo_step_over_forward"]
    result = {
        "model": "smollm2-135m-instruct", "mask": "smollm2-135m-instruct (built-in, C4 fisher, 0.1%)", "quant": args.quant,
        "batch_size": args.batch_size, "task": "sst2", "runs": args.runs, "memory_steps": args.steps,
        "zo_step_over_forward": {**time_result, "two_pass_floor": 2.0, "target": 1.6},
        "peak_rss_mib": peak,
        "finetune_over_inference_rss": {"ratio": round(peak["finetune"] / peak["inference"], 3), "target": 1.15} if peak else None,
        "finetune_over_dense_zo_fp32_rss": {"ratio": round(peak["finetune"] / peak["dense_zo_fp32"], 3)} if peak else None,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                    "note": "shared CPU: ratios come from one run with interleaved variants"},
        "command": "python bench/bench_finetune.py " + " ".join(sys.argv[1:]),
        "seconds": round(time.time() - started, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    z = result["zo_step_over_forward"]
    md = ["# Fine-tuning benchmark (SmolLM2-135M, built-in mask, SST-2 batch %d, %s)" % (args.batch_size, args.quant), "",
          "| measure | value | target |", "|---|---|---|",
          f"| (1) ZO step (paired) / inference forward | {z['ratio']} ({z['zo_step_s']} s / {z['forward_s']} s) | <= 1.6 |",
          f"| (1) ZO step (two-pass) / inference forward | {z['two_pass_ratio']} ({z['two_pass_step_s']} s / {z['forward_s']} s) | floor 2.0 |"]
    if "cpu_ratio" in z:
        md += [f"| (1) same, process CPU seconds: paired / forward | {z['cpu_ratio']} ({z['cpu_s']['paired']} s / {z['cpu_s']['forward']} s) | <= 1.6 |",
               f"| (1) same, process CPU seconds: two-pass / forward | {z['two_pass_cpu_ratio']} ({z['cpu_s']['two_pass']} s / {z['cpu_s']['forward']} s) | floor 2.0 |"]
    if peak:
        md += [f"| (3) peak RSS fine-tune / inference | {result['finetune_over_inference_rss']['ratio']} ({peak['finetune']} / {peak['inference']} MiB) | <= 1.15 |",
               f"| (4) peak RSS fine-tune / dense fp32 ZO | {result['finetune_over_dense_zo_fp32_rss']['ratio']} ({peak['finetune']} / {peak['dense_zo_fp32']} MiB) | report |"]
    if peak and args.only == "timing":
        md += ["", "Memory rows: kept from the last full run (`--only timing` does not re-measure them)."]
    md += ["", f"Timing on {z.get('device', 'cpu')} ({z.get('dtype', 'float32')} compute; 1-min load average {z.get('load_avg_1min')} on a "
           f"{os.cpu_count()}-core machine); medians of interleaved runs in one invocation. Command: `{result['command']}`", ""]
    (RESULTS / f"{args.name}.md").write_text("\n".join(md))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
