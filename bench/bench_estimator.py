"""Does the two-point ZO estimate see the gradient? SensZOQ's sparse values and ZO-LoRA's adapters (issue 33).

The known gradient: the exact gradient g of the SST-2 training loss (16 real rows, the study's batch) with
respect to the trainable vector v, by autograd through the fp32 runtime (nf4 base). For K seeded directions
z ~ N(0, I), the exact directional derivative is d = z . g; the ZO estimate at eps is

    g_zo = (L(v + eps z) - L(v - eps z)) / (2 eps)

from two forwards in the compute dtype under test (fp32 or bf16, the CPU default). Reported per (method,
point, dtype, eps): the correlation of g_zo with d over the K directions and the regression slope
sum(g_zo d) / sum(d^2) (1.0 = the estimate follows the gradient; the noise is what the correlation
misses). ZO-LoRA is checked at its init (B = 0, where the gradient with respect to A is exactly zero, so
only B's part carries signal; the table also gives |g_A| / |g|) and after B has moved (B ~ N(0, 1e-3^2)).

Usage: SZOQ_DATA_DIR=../shared/data python bench/bench_estimator.py [--k 16] [--alphas 16,128]
Writes bench/results/estimator.json and estimator.md. One thread; the machine is shared (ratios only).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import RESULTS, environment  # noqa: E402

MODEL = "smollm2-135m-instruct"
EPS = (1e-3, 1e-2, 1e-1)


def loss_fn(model, batch, pad_id: int, grad: bool) -> torch.Tensor:
    """Mean cross-entropy over the option scores of `batch` (the fine-tuning loss), with or without autograd."""
    from szoq_hub.data.scoring import option_scores

    scores = (option_scores.__wrapped__ if grad else option_scores)(model, batch, pad_id)  # [b, O]
    labels = torch.tensor([e.label for e in batch])  # [b]
    return F.cross_entropy(scores.double(), labels, reduction="mean")


def build(method: str, dtype: str, alpha: float):
    """(model, values, tokenizer, LoRA segments or None): the nf4 runtime over SmolLM2's built-in mask (sparse) or with
    LoRA r=8 (no mask)."""
    from szoq_hub.hub.refs import open_mask
    from szoq_hub.methods.lora.config import LoRASettings
    from szoq_hub.methods.lora.runtime import attach_lora
    from szoq_hub.runtime.sparse import load_sparse_model

    if method == "sparse":
        sp = load_sparse_model(MODEL, open_mask(MODEL), quant="nf4", device="cpu", compute_dtype=dtype)
        return sp.model, sp.values, sp.tokenizer, None
    sp = load_sparse_model(MODEL, None, quant="nf4", device="cpu", compute_dtype=dtype)
    lm = attach_lora(sp.model, sp.tokenizer, LoRASettings(rank=8, alpha=alpha), seed=0)
    return lm.model, lm.values, lm.tokenizer, lm.segments


def check(method: str, alpha: float, k: int, batch_of, point: str) -> list[dict]:
    """Rows of the table for one method, adapter scale and starting point."""
    rows = []
    grads = {}
    models = {d: build(method, d, alpha) for d in ("fp32", "bf16")}
    for d, (model, values, tok, segments) in models.items():  # the same starting point in both runtimes
        if point == "moved" and method == "lora":
            is_b = _b_entries(values, segments)
            values[is_b] = torch.randn(int(is_b.sum()), generator=torch.Generator().manual_seed(1)) * 1e-3
    model, values, tok, segments = models["fp32"]
    batch = batch_of(tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    v0 = values.detach().clone()
    values.requires_grad_(True)
    loss = loss_fn(model, batch, pad, grad=True)
    (g,) = torch.autograd.grad(loss, values)  # [n] fp32
    values.requires_grad_(False)
    grads["g"] = g.double()
    share_a = None
    if method == "lora":
        is_b = _b_entries(values, segments)
        share_a = float(g[~is_b].norm() / g.norm())
    for d, (model, values, tok, _) in models.items():
        for eps in EPS:
            est, exact = [], []
            for i in range(k):
                z = torch.randn(values.numel(), generator=torch.Generator().manual_seed(100 + i), dtype=torch.float32)  # [n]
                with torch.no_grad():
                    values.copy_(v0 + eps * z)
                    lp = float(loss_fn(model, batch, pad, grad=False))
                    values.copy_(v0 - eps * z)
                    lm = float(loss_fn(model, batch, pad, grad=False))
                    values.copy_(v0)
                est.append((lp - lm) / (2 * eps))
                exact.append(float(z.double() @ grads["g"]))
            e, x = torch.tensor(est, dtype=torch.float64), torch.tensor(exact, dtype=torch.float64)
            corr = float(torch.corrcoef(torch.stack([e, x]))[0, 1]) if e.std() > 0 else float("nan")
            slope = float((e * x).sum() / (x * x).sum())
            rows.append({"method": method, "alpha": alpha if method == "lora" else None, "point": point, "dtype": d, "eps": eps, "k": k,
                         "corr": round(corr, 4), "slope": round(slope, 4), "grad_norm": round(float(g.norm()), 6),
                         "a_share_of_grad": None if share_a is None else round(share_a, 6),
                         "est_rms": round(float(e.square().mean().sqrt()), 6), "exact_rms": round(float(x.square().mean().sqrt()), 6)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def _b_entries(values: torch.Tensor, segments) -> torch.Tensor:
    """[n] bool: the B entries of the flat LoRA vector (the LoRA segments' own layout)."""
    is_b = torch.zeros(values.numel(), dtype=torch.bool)
    for seg in segments:
        start = seg.offset + seg.rank * seg.in_features  # B follows A [r, in]
        is_b[start : start + seg.out_features * seg.rank] = True
    return is_b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=16, help="directions per cell")
    ap.add_argument("--alphas", default="16,128", help="LoRA alphas (r = 8)")
    ap.add_argument("--out", default="estimator")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from bench_finetune import _batch

    started, load = time.time(), os.getloadavg()[0]
    batch_of = lambda tok: _batch(tok, 16)  # noqa: E731
    rows = check("sparse", 0.0, args.k, batch_of, "init")
    for alpha in (float(a) for a in args.alphas.split(",")):
        rows += check("lora", alpha, args.k, batch_of, "init")
        rows += check("lora", alpha, args.k, batch_of, "moved")
    data = {"rows": rows, "k": args.k, "model": MODEL, "batch": 16, "threads": 1, "seconds": round(time.time() - started, 1),
            "load_avg_1min": [round(load, 2), round(os.getloadavg()[0], 2)], "command": "python bench/bench_estimator.py " + " ".join(sys.argv[1:]),
            "environment": environment()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = [f"# {args.out}", "", f"Two-point ZO estimate vs the exact directional derivative z . grad (autograd, fp32 runtime), {args.k} "
             "directions per row, SmolLM2-135M nf4, 16 SST-2 train rows. corr: correlation over the directions; slope: "
             "sum(g_zo d) / sum(d^2) (1 = unbiased).", "",
             "| method | alpha | point | dtype | eps | corr | slope | grad norm | A's share of the gradient |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = "SensZOQ (built-in mask)" if r["method"] == "sparse" else "ZO-LoRA r=8"
        alpha = "" if r["alpha"] is None else f"{r['alpha']:g}"
        share = "" if r["a_share_of_grad"] is None else f"{r['a_share_of_grad']:.3g}"
        lines.append(f"| {name} | {alpha} | {r['point']} | {r['dtype']} | {r['eps']:g} | {r['corr']:.3f} | {r['slope']:.3f} | {r['grad_norm']:.3g} | {share} |")
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
