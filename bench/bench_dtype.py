"""Compute dtype on the CPU: bf16 against fp32 for sparse ZO on the real SmolLM2-135M (nf4).

Decides the CPU default of `--dtype` (szoq_hub/core/devices.py): the faster dtype at equal accuracy.
In one process, interleaved (fp32 and bf16 alternate, order rotating), median of --runs:
- speed: one inference forward and one paired ZO step (both perturbations in one pass), SST-2
  train batch of --batch-size;
- accuracy of the step: the projected gradients g = (L+ - L-) / (2 eps) of the same steps (same
  seeds, same values: lr 0) in bf16 and in fp32: correlation, sign agreement, median relative
  error. ZO learns from g alone, so this is the accuracy that matters for training;
- accuracy of the model: zero-shot SST-2 dev accuracy on --eval-rows rows in both dtypes.

Usage: SZOQ_DATA_DIR=../shared/data python bench/bench_dtype.py [--runs 5] [--eval-rows 200]
Writes bench/results/dtype.json and dtype.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_finetune import DATA, _batch, _sparse, paired_closure  # noqa: E402
from common import write_results  # noqa: E402


def main() -> None:
    from szoq_hub.core.memory import use_predictable_malloc

    use_predictable_malloc()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--eval-rows", type=int, default=200)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from szoq_hub.data.scoring import encode, metric_value, option_scores, predict
    from szoq_hub.data.tasks import Sampling, load_task
    from szoq_hub.runtime.zo import ZOConfig, make_optimizer

    load_before = os.getloadavg()[0]
    started = time.time()
    models = {d: _sparse("nf4", d) for d in ("fp32", "bf16")}
    tok = models["fp32"].tokenizer
    pad = tok.pad_token_id
    enc = _batch(tok, args.batch_size)
    opts = {d: make_optimizer(sp.values, ZOConfig(lr=0.0, total_steps=args.runs + 1)) for d, sp in models.items()}
    closures = {d: paired_closure(sp, enc, pad) for d, sp in models.items()}
    for d, sp in models.items():  # warm-up
        option_scores(sp.model, enc, pad)
    jobs = [(kind, d) for kind in ("forward", "step") for d in ("fp32", "bf16")]
    times: dict[str, list[float]] = {f"{k}_{d}": [] for k, d in jobs}
    cpu: dict[str, list[float]] = {f"{k}_{d}": [] for k, d in jobs}  # process CPU seconds
    grads: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for s in range(args.runs):
        for kind, d in jobs[s % len(jobs):] + jobs[: s % len(jobs)]:
            t, c = time.perf_counter(), time.process_time()
            if kind == "forward":
                option_scores(models[d].model, enc, pad)
            else:
                grads[d].append(opts[d].step(closures[d], s).grads[0])
            times[f"{kind}_{d}"].append(time.perf_counter() - t)
            cpu[f"{kind}_{d}"].append(time.process_time() - c)
    med = {k: statistics.median(v) for k, v in times.items()}
    cmed = {k: statistics.median(v) for k, v in cpu.items()}
    g32, g16 = torch.tensor(grads["fp32"], dtype=torch.float64), torch.tensor(grads["bf16"], dtype=torch.float64)
    corr = float(torch.corrcoef(torch.stack([g32, g16]))[0, 1]) if len(g32) > 1 else float("nan")
    sign = float((torch.sign(g32) == torch.sign(g16)).double().mean())
    rel = float(((g16 - g32).abs() / g32.abs().clamp(min=1e-12)).median())

    task = load_task("sst2", data_dir=DATA, sampling=Sampling(16, 0, args.eval_rows, seed=0))
    dev = encode(tok, task.eval)
    acc = {}
    for d, sp in models.items():
        t = time.perf_counter()
        acc[d] = metric_value("accuracy", predict(sp.model, dev, pad, 32), [e.label for e in dev])
        acc[f"{d}_seconds"] = round(time.perf_counter() - t, 1)
    speed_fwd = med["forward_fp32"] / med["forward_bf16"]
    speed_step = med["step_fp32"] / med["step_bf16"]
    cpu_fwd, cpu_step = cmed["forward_fp32"] / cmed["forward_bf16"], cmed["step_fp32"] / cmed["step_bf16"]
    faster = "bf16" if min(speed_step, cpu_step) > 1.05 else "fp32"  # bf16 only if clearly faster by both clocks
    data = {
        "model": "smollm2-135m-instruct", "quant": "nf4", "batch_size": args.batch_size, "runs": args.runs,
        "median_s": {k: round(v, 4) for k, v in med.items()}, "all_s": times, "median_cpu_s": {k: round(v, 4) for k, v in cmed.items()},
        "all_cpu_s": cpu, "threads": torch.get_num_threads(),
        "fp32_over_bf16_time": {"forward": round(speed_fwd, 3), "paired_step": round(speed_step, 3)},
        "fp32_over_bf16_cpu_time": {"forward": round(cpu_fwd, 3), "paired_step": round(cpu_step, 3)},
        "projected_grad": {"fp32": grads["fp32"], "bf16": grads["bf16"], "correlation": round(corr, 4), "sign_agreement": sign,
                           "median_relative_error": round(rel, 4)},
        "zero_shot_dev_accuracy": acc, "eval_rows": len(dev),
        "faster_dtype": faster, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "load_avg_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "seconds": round(time.time() - started, 1),
        "command": "python bench/bench_dtype.py " + " ".join(sys.argv[1:]),
    }
    rows = [
        ("forward fp32 / bf16 (time)", f"{speed_fwd:.3f} ({med['forward_fp32']:.3f} s / {med['forward_bf16']:.3f} s)", "> 1 means bf16 faster"),
        ("paired ZO step fp32 / bf16 (time)", f"{speed_step:.3f} ({med['step_fp32']:.3f} s / {med['step_bf16']:.3f} s)", "> 1 means bf16 faster"),
        ("forward fp32 / bf16 (process CPU s)", f"{cpu_fwd:.3f} ({cmed['forward_fp32']:.3f} s / {cmed['forward_bf16']:.3f} s)", "> 1 means bf16 faster"),
        ("paired ZO step fp32 / bf16 (process CPU s)", f"{cpu_step:.3f} ({cmed['step_fp32']:.3f} s / {cmed['step_bf16']:.3f} s)", "> 1 means bf16 faster"),
        ("projected g: corr(bf16, fp32)", f"{corr:.4f} over {len(g32)} steps", "report"),
        ("projected g: sign agreement", f"{sign:.3f}", "report"),
        ("projected g: median |g16 - g32| / |g32|", f"{rel:.4f}", "report"),
        (f"zero-shot SST-2 dev accuracy ({len(dev)} rows)", f"fp32 {acc['fp32']:.4f}, bf16 {acc['bf16']:.4f}", "equal"),
        ("CPU default chosen", faster, "faster at equal accuracy"),
        ("1-min load average (before, after)", f"{data['load_avg_1min']['before']}, {data['load_avg_1min']['after']}", "2 cores"),
    ]
    write_results("dtype", data, rows)


if __name__ == "__main__":
    main()
