"""First-order reference for the quality study: QLoRA-style LoRA on the nf4 base, backprop + AdamW.

What most users would pick instead of ZO: PEFT LoRA (r=8, alpha 16 on q_proj and v_proj, as
`szoq finetune --lora 8`) over transformers' bitsandbytes nf4 model (compute dtype bf16, as szoq's
CPU default), trained by plain torch autograd and AdamW on the same SST-2 sample as the quality
cells (1000 train rows drawn with the cell's seed, batch 16, the same objective: cross-entropy over
the options' mean log-probabilities, `szoq_hub.data.scoring`), for at most --budget-s seconds of
training (the wall time of a SensZOQ cell's 300 ZO steps) or --max-steps steps, whichever comes first.
Then accuracy on the same 500 SST-2 validation rows the cells score.

`--budget-of KEY` sets that budget in this run instead: a probe of the recorded cell KEY (a few of its ZO steps, the
study's `--probe`) runs first, under the same machine load as the training that follows, and the budget is the cell's
steps x the probe's median seconds per step. On a machine other jobs share, the two methods then get equal time as
measured side by side, not a quiet machine's seconds spent on a loaded one.

A benchmark row, not a szoq command. Records peak RSS of this process, training seconds, steps done,
seconds per step and the accuracy; `bench/quality.py --report` puts it on the Pareto plot.

Writes bench/results/fo_lora.json and .md (one row per seed; a finished seed is not rerun).

A GGUF model (the study's Gemma and Qwen models) cannot take transformers' quantization_config (it refuses one beside
`gguf_file=`), so its weights stream into bf16 through szoq's loader and every linear but the output layer becomes a
bitsandbytes nf4 `Linear4bit`, the layer transformers' quantizer would have made (`nf4_linears`).

Usage: OMP_NUM_THREADS=1 SZOQ_DATA_DIR=../shared/data python bench/bench_fo_lora.py [--model qwen2.5-coder-0.5b] [--seeds 0] [--budget-s 400]
(--model: a study model, bench/quality_study/settings.py MODEL_REFS). Needs `pip install -e '.[peft]'`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
from common import environment  # noqa: E402

TRAIN, DEV, EVAL, BATCH = 1000, 200, 500, 16  # the quality grid's (bench/quality.py)


def nf4_linears(model) -> int:
    """Swap every `nn.Linear` of `model` but its output layer for a bitsandbytes nf4 `Linear4bit` (bf16 compute, frozen),
    quantized where the weight lies; returns how many were swapped."""
    import bitsandbytes as bnb
    import torch

    out_layer = model.get_output_embeddings()
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not torch.nn.Linear or child is out_layer:
                continue
            q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None, compute_dtype=torch.bfloat16,
                                  quant_type="nf4", device="meta")
            q.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type="nf4")
            if child.bias is not None:
                q.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
            setattr(parent, name, q.to(child.weight.device))  # .to() quantizes the weight
            swapped += 1
    return swapped


def run(seed: int, lr: float, budget_s: float, max_steps: int, data_dir: Path, model_ref: str | None = None,
        sampling: tuple[int, int, int] = (TRAIN, DEV, EVAL), model_name: str | None = None) -> dict:
    import bitsandbytes as bnb
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from szoq_hub.core.defaults import DEFAULT_MODEL
    from szoq_hub.data.models import load_model, resolve_model
    from szoq_hub.data.scoring import encode, option_scores, pad_id_of, predict, metric_value
    from szoq_hub.data.tasks import Sampling, load_task

    torch.manual_seed(seed)
    t_load = time.perf_counter()
    model_ref = model_ref or DEFAULT_MODEL
    source = resolve_model(model_ref)
    tokenizer = AutoTokenizer.from_pretrained(source.path)
    if source.gguf is not None:  # streamed in bf16, then nf4 linears (see the module doc)
        base = load_model(source, dtype=torch.bfloat16).model
        nf4_linears(base)
    else:
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
        base = AutoModelForCausalLM.from_pretrained(source.path, quantization_config=quant, device_map="cpu", dtype=torch.bfloat16)
    quantized = sum(isinstance(m, bnb.nn.Linear4bit) for m in base.modules())
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                                            task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    task = load_task("sst2", data_dir=data_dir, sampling=Sampling(*sampling, seed))
    train, evals = encode(tokenizer, task.train), encode(tokenizer, task.eval)
    pad = pad_id_of(tokenizer)
    load_s = time.perf_counter() - t_load
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    scores_of = option_scores.__wrapped__  # the same scores as the ZO loss, with autograd on
    gen = torch.Generator().manual_seed(seed)
    order: list[int] = []
    step_s: list[float] = []
    losses: list[float] = []
    model.train()
    t0 = time.perf_counter()
    while len(step_s) < max_steps and time.perf_counter() - t0 < budget_s:
        t = time.perf_counter()
        if len(order) < BATCH:
            order += torch.randperm(len(train), generator=gen).tolist()
        batch = [train[i] for i in order[:BATCH]]
        del order[:BATCH]
        scores = scores_of(model, batch, pad)  # [B, O] fp32
        loss = F.cross_entropy(scores, torch.tensor([e.label for e in batch]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step_s.append(time.perf_counter() - t)
    train_s = time.perf_counter() - t0
    model.eval()
    preds = predict(model, evals, pad)
    acc = metric_value("accuracy", preds, [e.label for e in task.eval])
    return {"method": "fo-lora", "model": model_name or model_ref, "task": "sst2", "nf4_linears": quantized, "seed": seed, "lr": lr, "optimizer": "AdamW",
            "lora": {"r": 8, "alpha": 16, "targets": ["q_proj", "v_proj"]}, "quant": "nf4", "dtype": "bf16", "batch": BATCH,
            "trainable": trainable, "steps": len(step_s), "budget_s": budget_s, "train_s": round(train_s, 1),
            "s_per_step": round(statistics.median(step_s), 3), "load_s": round(load_s, 1), "accuracy": acc, "n": len(task.eval),
            "loss_first10": round(statistics.mean(losses[:10]), 4), "loss_last10": round(statistics.mean(losses[-10:]), 4),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "threads": os.environ.get("OMP_NUM_THREADS", "default"), "load": round(os.getloadavg()[0], 2)}


def budget_probe(key: str) -> dict:
    """The training budget of an equal-time comparison with the recorded cell `key`: a probe of a few of its ZO steps,
    run now (under this moment's machine load), times the cell's steps."""
    from quality_study import probes, settings

    cell = json.loads((settings.CELLS / f"{key}.json").read_text())
    p = probes.probe(key)
    return {"key": key, "cell_steps": cell["steps"], "probe_s_per_step": round(p["s_per_step"], 3), "load": p["load"],
            "budget_s": round(cell["steps"] * p["s_per_step"], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="a study model (settings.MODEL_REFS), e.g. qwen2.5-coder-0.5b")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds")
    ap.add_argument("--lr", type=float, default=2e-4, help="AdamW lr (QLoRA's; not swept)")
    ap.add_argument("--budget-s", type=float, default=400.0, help="training wall seconds (a 300-step bf16 SensZOQ cell's training)")
    ap.add_argument("--budget-of", default=None, metavar="KEY",
                    help="a recorded quality cell: the budget is its steps x a probe's s/step of it, measured first in this run")
    ap.add_argument("--max-steps", type=int, default=300)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # bitsandbytes' optional Hub kernels: never fetched
    data_dir = Path(os.environ.get("SZOQ_DATA_DIR", HERE.parent.parent / "shared" / "data"))
    path = RESULTS / "fo_lora.json"
    rows = json.loads(path.read_text())["rows"] if path.is_file() else []
    from quality_study import run as study_run, szoq_process

    ref = szoq_process.expand(study_run.model_ref(args.model))  # a GGUF assembled from its packages on first use
    for seed in (int(s) for s in args.seeds.split(",")):
        same = lambda r: r["model"] == args.model and r["seed"] == seed and r["lr"] == args.lr  # noqa: E731
        if any(same(r) and (r.get("budget_of", {}).get("key") == args.budget_of if args.budget_of else r["budget_s"] == args.budget_s)
               for r in rows):
            continue
        budget_s, budget_of = args.budget_s, None
        if args.budget_of:
            budget_of = budget_probe(args.budget_of)
            budget_s = budget_of["budget_s"]
        row = run(seed, args.lr, budget_s, args.max_steps, data_dir, model_ref=ref, model_name=args.model)
        rows.append({**row, **({"budget_of": budget_of} if budget_of else {})})
        print(json.dumps(rows[-1]), flush=True)
    header = ["model", "seed", "lr", "budget_s", "steps", "train_s", "s_per_step", "accuracy", "n", "peak_rss_mb", "trainable",
              "threads", "load"]
    path.write_text(json.dumps({"rows": rows, "environment": environment()}, indent=1) + "\n")
    lines = ["# fo-lora: PEFT LoRA r=8 (q_proj, v_proj) on the nf4 base, autograd + AdamW, SST-2, a training wall-time budget", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(str(r.get(h, "-")) for h in header) + " |" for r in rows), ""]
    (RESULTS / "fo_lora.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
