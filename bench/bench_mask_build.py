"""Benchmark `szoq mask build` (fisher scorer) on the real SmolLM2-135M-Instruct.

Measures, in one run:
- throughput: tokens/s of the fisher scorer against a plain forward+backward loop over the same
  windows (target >= 0.8x); the two are interleaved round by round so machine noise hits both;
- memory: peak RSS of a full build (model + accumulators + selection) in a fresh process,
  minus the peak RSS of a process that only imports the libraries, against the fp32 weight
  bytes (target <= 2.3x plus activations); a plain forward+backward process is the reference
  for what activations and gradients cost.

Usage: python bench/bench_mask_build.py [--windows 4] [--seq-len 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, peak_rss_bytes, write_results  # noqa: E402

C4 = SHARED_DATA / "c4" / "c4_validation_2k.jsonl.gz"


def _setup(windows: int, seq_len: int):
    from szoq_hub.data.calibration import load_windows
    from szoq_hub.data.models import load_model, resolve_model, target_parameter_names

    loaded = load_model(resolve_model("smollm2-135m-instruct"))
    ids, _ = load_windows(str(C4), loaded.tokenizer, samples=windows, seq_len=seq_len, seed=0)
    return loaded.model, target_parameter_names(loaded.model), ids


def plain_loop(model, ids) -> None:
    """The reference: a plain training-style loop (all gradients, zeroed each window)."""
    for p in model.parameters():
        p.requires_grad_(True)
    for i in range(ids.shape[0]):
        out = model(input_ids=ids[i : i + 1], labels=ids[i : i + 1], use_cache=False)
        out.loss.backward()
        model.zero_grad(set_to_none=True)


def child(mode: str, windows: int, seq_len: int) -> None:
    """Run one memory measurement in this (fresh) process and print JSON."""
    result = {"mode": mode}
    if mode == "imports":
        import torch  # noqa: F401
        import transformers  # noqa: F401

        from szoq_hub.masks import build  # noqa: F401
    else:
        from szoq_hub.masks.selection import select
        from szoq_hub.masks.sensitivity import fisher_scores

        model, targets, ids = _setup(windows, seq_len)
        result["weight_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
        if mode == "build":
            scores = fisher_scores(model, targets, ids)
            select(scores, 1e-3, "per-matrix")
        else:
            plain_loop(model, ids)
    result["peak_rss"] = peak_rss_bytes()
    print(json.dumps(result))


def run_child(mode: str, windows: int, seq_len: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--windows", str(windows), "--seq-len", str(seq_len)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from szoq_hub.core.memory import use_predictable_malloc

    use_predictable_malloc()  # the allocator policy the `szoq` CLI runs with
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", default=None)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.windows, args.seq_len)
        return

    from szoq_hub.masks.sensitivity import fisher_scores

    model, targets, ids = _setup(args.windows, args.seq_len)
    tokens = ids.numel()
    plain_loop(model, ids[:1])  # warm-up both paths once
    fisher_scores(model, targets, ids[:1])
    t_plain, t_fisher = [], []
    for _ in range(args.rounds):  # interleaved: A, B, A, B, ...
        t0 = time.perf_counter()
        plain_loop(model, ids)
        t_plain.append(time.perf_counter() - t0)
        for p in model.parameters():
            p.grad = None
        t0 = time.perf_counter()
        fisher_scores(model, targets, ids)
        t_fisher.append(time.perf_counter() - t0)
    plain_tps = tokens / statistics.median(t_plain)
    fisher_tps = tokens / statistics.median(t_fisher)
    del model

    imports = run_child("imports", args.windows, args.seq_len)
    build = run_child("build", args.windows, args.seq_len)
    plain = run_child("plain", args.windows, args.seq_len)
    weight_bytes = build["weight_bytes"]
    build_ratio = (build["peak_rss"] - imports["peak_rss"]) / weight_bytes
    plain_ratio = (plain["peak_rss"] - imports["peak_rss"]) / weight_bytes
    # The plain loop holds weights + a full set of gradients (2x weight bytes) + activations:
    # what it holds beyond 2x is the activation cost of one window, the "plus activations"
    # of the target.
    activation_ratio = max(plain_ratio - 2.0, 0.0)
    build_less_act = build_ratio - activation_ratio
    data = {
        "model": "smollm2-135m-instruct", "windows": args.windows, "seq_len": args.seq_len, "rounds": args.rounds,
        "tokens_per_s": {"fisher_build": fisher_tps, "plain_fwd_bwd": plain_tps},
        "throughput_ratio": fisher_tps / plain_tps,
        "seconds": {"fisher_build": t_fisher, "plain_fwd_bwd": t_plain},
        "peak_rss_bytes": {"imports_only": imports["peak_rss"], "build": build["peak_rss"], "plain_fwd_bwd": plain["peak_rss"]},
        "fp32_weight_bytes": weight_bytes,
        "build_rss_over_weights": build_ratio,
        "plain_rss_over_weights": plain_ratio,
        "activations_over_weights": activation_ratio,
        "build_rss_less_activations_over_weights": build_less_act,
        "targets": {"throughput_ratio_min": 0.8, "build_rss_over_weights_max": "2.3 + activations"},
    }
    rows = [
        ("fisher build tokens/s / plain fwd+bwd tokens/s", f"{data['throughput_ratio']:.2f}x", ">= 0.8x"),
        ("build peak RSS (less imports) / fp32 weight bytes", f"{build_ratio:.2f}x", "<= 2.3x + activations"),
        ("activations of one window (plain peak - 2x weights) / fp32 weight bytes", f"{activation_ratio:.2f}x", "measured"),
        ("build peak RSS less imports and activations / fp32 weight bytes", f"{build_less_act:.2f}x", "<= 2.3x"),
        ("plain fwd+bwd peak RSS (less imports) / fp32 weight bytes", f"{plain_ratio:.2f}x", "reference"),
    ]
    write_results("mask_build", data, rows)


if __name__ == "__main__":
    main()
