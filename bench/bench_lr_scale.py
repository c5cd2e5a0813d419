"""What sets a sparse ZO run's best lr across models? Candidate statistics against the swept best lrs.

For each model (SmolLM2-135M, Gemma-3-270M, Qwen2.5-Coder-0.5B) with the quality study's C4 fisher mask (32 x 256
windows), on SST-2 training batches (batch 16, bf16, nf4, seed 0), this measures at the starting values:
  - scores: the mask's Σg² per calibration window (the C4 LM loss's diagonal Fisher, summed over the kept weights);
  - |g|: the median projected gradient |(L+ - L-) / (2 eps)| at eps 1e-3 (what `--lr auto` divides by);
  - curvature: the task loss's zᵀHz along the run's own directions z, from the second difference
    (L(v + r z) + L(v - r z) - 2 L(v)) / r² at the smallest r of a ladder whose second difference clears the
    rounding floor (tr H on the trained values, the quantity the ZO step's stability follows);
and sets each against the model's best lr of its SST-2 100-step dev sweep (bench/results/quality/sweep). A statistic
that carries across models keeps lr x statistic the same.

    OMP_NUM_THREADS=1 SZOQ_DATA_DIR=../shared/data python bench/bench_lr_scale.py   # -> bench/results/lr_scale.{json,md}
    ... python bench/bench_lr_scale.py --check gemma-3-270m:1e-5   # also: an lr the sweep did not try, in its protocol

Needs the study's masks and models under $SZOQ_QUALITY_WORK (built by `python bench/quality.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from quality_study import plan, run, settings  # noqa: E402
from szoq_hub.data.scoring import encode, loss_sums, pad_id_of  # noqa: E402
from szoq_hub.data.tasks import load_task  # noqa: E402
from szoq_hub.training.finetune import batch_indices, micro_batch_of, settings_of  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SWEPT = {plan.SMOLLM2: 3e-4, plan.GEMMA: 1e-5, plan.QWEN05: 1e-5}  # the SST-2 SensZOQ sweeps' best (quality.md; Gemma's extended)
LADDER = (1e-2, 3e-2, 1e-1, 3e-1)  # r of the second difference
FLOOR = 2e-2  # a second difference below this (nats) is not trusted over bf16 rounding
PROBES = 4


def measure(model: str) -> dict:
    from szoq_cli.finetune import finetune_config as make

    cell = plan.Cell("sst2", "senszoq-precond", 0, dtype="bf16", model=model)  # a scored variant: the C4 fisher rebuild with its scores
    mask, _ = run.mask_for(cell)
    mask = mask.replace("{work}", str(settings.WORK))
    config = make(dict(model=run.model_ref(model).replace("{work}", str(settings.WORK)), mask=mask, task="sst2", data_dir=str(settings.DATA),
                       dtype="bf16", lr=1e-4, eps=1e-3, out=str(settings.WORK / "runs" / f"lr-scale-{model}"), dev_baseline=False))
    method = config.method_spec
    device = torch.device("cpu") if not torch.cuda.is_available() else torch.device("cuda")
    trainable = method.trainable_cls(config, device, torch.bfloat16, settings_of(config), False)
    task = load_task(config.task, data_dir=config.data_dir, sampling=config.sampling())
    train = encode(trainable.tokenizer, task.train)
    pad_id, micro, perms = pad_id_of(trainable.tokenizer), micro_batch_of(config, device, None), {}

    def closure_at(step: int):
        batch = [train[i] for i in batch_indices(len(train), config.batch_size, step, config.seed, perms)]

        def closure(points):
            with trainable.perturbed(points) as parts:
                return [x / len(batch) for x in loss_sums(trainable.model, batch, pad_id, copies=parts, **micro)]
        return closure

    opt = trainable.opt
    base = opt.config
    grads, curv, used = [], [], []
    for k in range(PROBES):
        step = -(k + 1)
        small = trainable.estimate(closure_at(step), step)
        grads.append(abs(small.grads[0]))
        center = (small.loss_plus[0] + small.loss_minus[0]) / 2  # L(v) + O(eps² zᵀHz)
        for r in LADDER:
            opt.config = replace(base, eps=r)
            big = trainable.estimate(closure_at(step), step)
            second = big.loss_plus[0] + big.loss_minus[0] - 2 * center
            if second > FLOOR or r == LADDER[-1]:
                curv.append(second / r**2)
                used.append(r)
                break
        opt.config = base
    scores, windows = trainable.lr_scores()
    per_window = float(scores.double().sum()) / windows
    return {"model": model, "nnz": trainable.nnz, "swept_lr": SWEPT[model], "scores_per_window": per_window,
            "median_grad": statistics.median(grads), "grads": grads, "curvature": statistics.median(curv), "curvatures": curv, "r": used}


def table(rows: list[dict]) -> str:
    lines = ["| model | swept lr | Σg²/window | lr x Σg²/window | median abs(g) | lr x abs(g) | task zᵀHz | lr x zᵀHz |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['swept_lr']:g} | {r['scores_per_window']:.3g} | {r['swept_lr'] * r['scores_per_window']:.2g} | "
                     f"{r['median_grad']:.3g} | {r['swept_lr'] * r['median_grad']:.2g} | {r['curvature']:.3g} | {r['swept_lr'] * r['curvature']:.2g} |")
    spread = {k: max(r["swept_lr"] * r[k] for r in rows) / min(r["swept_lr"] * r[k] for r in rows)
              for k in ("scores_per_window", "median_grad", "curvature")}
    lines += ["", "Spread of lr x statistic across the models (max / min; 1 = carries exactly): "
              + ", ".join(f"{k} {v:.2g}x" for k, v in spread.items()) + f"; of the swept lr itself: "
              f"{max(r['swept_lr'] for r in rows) / min(r['swept_lr'] for r in rows):.2g}x.", ""]
    return "\n".join(lines)


def check_table(checks: list[dict]) -> str:
    """The extra lrs' 100-step SST-2 dev curves beside the sweep's (same protocol: `quality_study.run.run_sweep`)."""
    if not checks:
        return ""
    lines = ["", "Extra lrs in the sweep's protocol (SensZOQ, SST-2, 100 steps, seed 0, dev n=200), outside the study's plan:", "",
             "| model | lr | dev at 50 | dev at 100 |", "|---|---|---|---|"]
    for c in sorted(checks, key=lambda c: (c["model"], c["lr"])):
        curve = dict(c["dev_curve"])
        lines.append(f"| {c['model']} | {c['lr']:g} | {100 * curve.get(50, float('nan')):.1f} | {100 * curve.get(100, float('nan')):.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join((plan.SMOLLM2, plan.GEMMA, plan.QWEN05)))
    ap.add_argument("--check", default="", help="MODEL:LR,... extra SensZOQ lrs to run in the sweep's protocol (e.g. gemma-3-270m:1e-5)")
    args = ap.parse_args()
    out = RESULTS / "lr_scale.json"
    saved = json.loads(out.read_text()) if out.is_file() else {}
    done = {r["model"]: r for r in saved.get("rows", [])}
    checks = {(c["model"], c["lr"]): c for c in saved.get("checks", [])}
    for item in filter(None, args.check.split(",")):
        model, lr = item.rsplit(":", 1)
        if (model, float(lr)) not in checks:
            rec = run.run_sweep(plan.SweepRun("senszoq", float(lr), model=model))
            checks[(model, float(lr))] = {k: rec[k] for k in ("model", "lr", "dev_curve", "dev_n", "steps", "dtype", "argv", "git_sha")}
            saved["checks"] = list(checks.values())
            out.write_text(json.dumps(saved, indent=1) + "\n")
    for model in args.models.split(","):
        if model not in done:
            done[model] = measure(model)
            out.write_text(json.dumps({"threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0), "probes": PROBES, "ladder": LADDER,
                                       "floor": FLOOR, "rows": list(done.values()), "checks": list(checks.values())}, indent=1) + "\n")
            print(json.dumps(done[model]), flush=True)
    rows = [{**done[m], "swept_lr": SWEPT[m]} for m in (plan.SMOLLM2, plan.GEMMA, plan.QWEN05) if m in done]  # the sweeps' best as of now
    intro = ("Each model's best lr from its SST-2 SensZOQ 100-step dev sweep (3x grid), against three statistics measured at the "
             f"starting values: the C4 fisher mask's Σg² per calibration window (32 x 256), the median abs(g) at eps 1e-3 and the SST-2 "
             f"loss's curvature zᵀHz along the run's own directions (second difference at r from {LADDER}), {PROBES} probes each, batch 16, "
             "bf16, nf4. `--lr scores` (the sparse default) is SCORES_C / the Σg² column, SCORES_C = 2.3e-3.\n\n")
    (RESULTS / "lr_scale.md").write_text("# What sets the best lr across models\n\n" + intro + table(rows) + check_table(list(checks.values())))
    print(table(rows))


if __name__ == "__main__":
    main()
