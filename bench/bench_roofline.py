"""How far one forward of the nf4 sparse runtime is from what this CPU's matmul can do (issue 23 item 4).

For SmolLM2-135M (the real model and its built-in mask) and the Llama 1.1B and 7B *shapes*
(bench/scale_models.py), nf4 base, compute in bf16 and in fp32, one forward of the decoder
(embedding, every decoder layer, final norm; lm_head is left out: ZO scores only a few positions)
on an SST-2 batch as the quality grid feeds it (16 real train prompts padded to the longest, and
a length-grouped micro-batch of 4):

- achieved FLOP/s = the decoder's matmul FLOPs (2 * rows * out * in per linear; QK^T and AV of
  attention, 2 * 2 * B * heads * T^2 * head_dim per layer, counted on the padded rows the forward
  computes) / the forward's time;
- roofline FLOP/s = the same FLOPs / the time `torch.matmul` takes for exactly those matmuls
  (same shapes, same dtype, dense weights already in the compute dtype, same process, same
  thread count); fraction = roofline time / forward time;
- a breakdown of the forward: dequantize (bitsandbytes nf4 -> compute dtype, every linear, every
  forward), sparse correction (`_add_sparse`, and in fp32 the fold's nnz-sized scatter, timed on
  its own), linear matmuls (the rest of the linears' time), attention (the sdpa call), the rest
  (norms, rotary, SiLU, residual adds, embedding, casts).

The 1.1B and 7B shapes are built in memory from their configs with random weights (no
checkpoint is written): `--layers-1b` / `--layers-7b` decoder layers (default 2 and 1) and a
1024-token embedding (the embedding is a lookup: no FLOPs). Every decoder layer of a shape has
the same cost, so the fraction holds for the whole stack; whole-model seconds scale by layer
count. Their masks: 1e-3 of each matrix (as SmolLM2's built-in mask) on 2% of its input
columns, drawn at random (SmolLM2's sensitivity mask touches 1-27 of 576/1536 columns per
layer: the column form's cost is ~C/in of the matmul).

One thread (`torch.set_num_threads(1)`): the machine is shared; the repeats of every (shape,
dtype, batch) and of its roofline are interleaved and the medians reported; ratios come from one
run. The 1-minute load average before and after is recorded.

Usage: SZOQ_DATA_DIR=../shared/data python bench/bench_roofline.py [--runs 5] [--shapes smollm2-135m,llama-1.1b,llama-2-7b]
       (also qwen2.5-0.5b, qwen2.5-1.5b: --layers-other of their decoder layers, q/k/v biases included; --out roofline_qwen)
Writes bench/results/roofline.json and roofline.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from common import RESULTS, environment  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
PARTS = ("dequantize", "sparse", "matmul", "attention", "rest")
TIMED_ATTENTION = "szoq_timed_sdpa"


class Clock:
    """Seconds per breakdown part, summed over the forwards it is on for."""

    def __init__(self) -> None:
        self.on = False
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, part: str, fn):
        def timed(*args, **kwargs):
            if not self.on:
                return fn(*args, **kwargs)
            t = time.perf_counter()
            result = fn(*args, **kwargs)
            self.seconds[part] += time.perf_counter() - t
            return result

        return timed


CLOCK = Clock()


def _install_timed_attention() -> None:
    """sdpa under its own name, timed (transformers' public attention registries)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(TIMED_ATTENTION, CLOCK.wrap("attention", sdpa_attention_forward))
    AttentionMaskInterface.register(TIMED_ATTENTION, sdpa_mask)


def _time_linears(decoder: torch.nn.Module) -> list:
    from szoq_hub.runtime.sparse import SparseQuantLinear

    layers = [m for m in decoder.modules() if isinstance(m, SparseQuantLinear)]
    for m in layers:  # instance attributes shadow the methods: the runtime code itself is unchanged
        m._base_weight = CLOCK.wrap("dequantize", m._base_weight)
        m._add_sparse = CLOCK.wrap("sparse", m._add_sparse)
        m.forward = CLOCK.wrap("linear", m.forward)
    return layers


def real_smollm2():
    """The real SmolLM2-135M-Instruct decoder (nf4) over its built-in mask."""
    from szoq_hub.hub.refs import open_mask
    from szoq_hub.runtime.sparse import load_sparse_model

    sp = load_sparse_model("smollm2-135m-instruct", open_mask("smollm2-135m-instruct"), quant="nf4", device="cpu", compute_dtype="fp32")
    return sp.model.model, sp.tokenizer, len(sp.model.model.layers)


def synthetic(shape: str, layers: int, seed: int = 0):
    """`layers` decoder layers of a scale shape, random weights, nf4 over a column-concentrated mask."""
    from scale_models import make_config
    from transformers import AutoModel

    from szoq_hub.runtime.sparse import SparseQuantLinear, SparseValues

    config = make_config(shape)
    full_layers = config.num_hidden_layers
    config.num_hidden_layers, config.vocab_size = layers, 1024
    torch.manual_seed(seed)  # a benchmark process of its own: the global RNG is ours
    decoder = AutoModel.from_config(config, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(seed)
    linears = [(n, m) for n, m in decoder.named_modules() if isinstance(m, torch.nn.Linear)]
    picks = []
    for _, m in linears:
        out_f, in_f = m.weight.shape
        nnz = max(1, round(1e-3 * out_f * in_f))
        cols = torch.randperm(in_f, generator=gen)[: max(1, round(0.02 * in_f))]  # [C]
        flat = torch.randperm(out_f * cols.numel(), generator=gen)[:nnz]  # positions in [out, C]
        picks.append(torch.sort((flat // cols.numel()) * in_f + cols[flat % cols.numel()]).values)  # [nnz] flat, sorted
    store = SparseValues(sum(p.numel() for p in picks), torch.device("cpu"))
    offset = 0
    for (name, m), idx in zip(linears, picks):
        with torch.no_grad():
            store.values[offset : offset + idx.numel()] = m.weight.reshape(-1)[idx]
        layer = SparseQuantLinear(m.weight.detach().clone(), None if m.bias is None else m.bias.detach().clone(), idx, store, offset, "nf4", torch.float32)
        parent, _, leaf = name.rpartition(".")
        setattr(decoder.get_submodule(parent), leaf, layer)
        offset += idx.numel()
    decoder.szoq_sparse = store
    return decoder, full_layers


def sst2_lengths(tokenizer) -> list[int]:
    """Token lengths of 16 real SST-2 train rows (prompt + the first option token)."""
    from bench_finetune import _batch

    return [len(e.prompt) + 1 for e in _batch(tokenizer, 16)]


def batch(lengths: list[int], vocab: int, gen: torch.Generator) -> dict:
    """Right-padded ids and attention mask for rows of these lengths: [B, T]."""
    t = max(lengths)
    ids = torch.randint(3, vocab, (len(lengths), t), generator=gen)  # [B, T]
    mask = (torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]).long()  # [B, T]
    return {"input_ids": ids, "attention_mask": mask}


def matmul_list(decoder, rows: int, b: int, t: int) -> tuple[Counter, list[tuple[int, int, int, int]], int]:
    """The forward's matmuls: linear (out, in) -> count, attention (B, heads, T, d) per layer, FLOPs."""
    from szoq_hub.runtime.sparse import SparseQuantLinear

    lin = Counter((m.out_features, m.in_features) for m in decoder.modules() if isinstance(m, SparseQuantLinear))
    cfg = decoder.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    attn = [(b, cfg.num_attention_heads, t, head_dim)] * cfg.num_hidden_layers
    flops = sum(2 * rows * o * i * n for (o, i), n in lin.items()) + sum(2 * 2 * bb * h * tt * tt * d for bb, h, tt, d in attn)
    return lin, attn, flops


def roofline_seconds(lin: Counter, attn: list, rows: int, dtype: torch.dtype, gen: torch.Generator) -> float:
    """Time of exactly these matmuls with torch.matmul (dense operands in `dtype`)."""
    def median_of(fn, n: int) -> float:
        fn()  # warm (allocator, kernel choice)
        times = []
        for _ in range(min(n, 3)):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times) * n

    total = 0.0
    for (o, i), n in lin.items():
        x, w = torch.randn(rows, i, generator=gen).to(dtype), torch.randn(o, i, generator=gen).to(dtype)  # [N, in], [out, in]
        total += median_of(lambda: torch.matmul(x, w.t()), n)  # [N, out]
    for (b, h, tt, d), n in Counter(attn).items():
        q, k, v = (torch.randn(b, h, tt, d, generator=gen).to(dtype) for _ in range(3))  # [B, H, T, d]
        total += median_of(lambda: torch.matmul(torch.matmul(q, k.transpose(-1, -2)), v), n)  # [B, H, T, T] then [B, H, T, d]
    return total


def fold_seconds(layers: list) -> float:
    """The fp32 fold's scatter (values into the fresh dequantized buffer), all linears once."""
    total = 0.0
    for m in layers:
        if not m.nnz:
            continue
        w = m._base_weight()
        t = time.perf_counter()
        w.view(-1).index_put_((m.flat_idx,), m.values)
        total += time.perf_counter() - t
    return total


def timed_forward(decoder, groups: list[dict], layers: list, dtype: torch.dtype) -> dict[str, float]:
    """One forward per group (the whole batch, or its micro-batches), timed with its breakdown."""
    CLOCK.seconds.clear()
    CLOCK.on = True
    t = time.perf_counter()
    with torch.no_grad():
        for inputs in groups:
            decoder(**inputs)
    total = time.perf_counter() - t
    CLOCK.on = False
    s = dict(CLOCK.seconds)
    fold = len(groups) * fold_seconds(layers) if dtype == torch.float32 else 0.0  # fp32 folds the values into the buffer
    parts = {"dequantize": s.get("dequantize", 0.0), "sparse": s.get("sparse", 0.0) + fold, "attention": s.get("attention", 0.0)}
    parts["matmul"] = s.get("linear", 0.0) - s.get("dequantize", 0.0) - s.get("sparse", 0.0) - fold
    parts["rest"] = total - s.get("linear", 0.0) - parts["attention"]
    return {"forward": total, **parts}


def sparse_anatomy(decoder, inputs: dict, runs: int) -> dict:
    """Where the bf16 column-form correction's time goes, and a cheaper form with the same numbers.

    Captures every masked linear's (x, base output) on one bf16 forward, then times, per step,
    what `_add_sparse` does: the upcast of the whole base output to fp32, building S, gathering
    x's columns, the baddbmm, the downcast. The alternative computes only the correction in fp32
    (`bmm`) and adds it into the bf16 output in place (TensorIterator adds in fp32 and rounds
    once, as today); `identical` says whether its result equals today's bit for bit.
    """
    from szoq_hub.runtime.sparse import SparseQuantLinear

    captured = []

    def grab(module, args, output):
        captured.append((module, args[0].detach().clone(), None))

    linears = [m for m in decoder.modules() if isinstance(m, SparseQuantLinear) and m.nnz and m.sparse_form == "column"]
    hooks = [m.register_forward_hook(grab) for m in linears]
    decoder.to(torch.bfloat16)
    with torch.no_grad():
        decoder(**inputs)
    for h in hooks:
        h.remove()
    steps = {k: [] for k in ("upcast", "build_s", "gather", "baddbmm", "downcast", "today_total", "alternative_total")}
    identical = True
    for _ in range(runs):
        tot = defaultdict(float)
        for m, x, _ in captured:
            x = x.to(m.compute_dtype)  # [..., in]
            out = torch.nn.functional.linear(x, m._base_weight())  # [..., out] bf16, as the forward has it
            n_out, c = m.out_features, m.cols.numel()
            t0 = time.perf_counter()
            acc = out.reshape(1, -1, n_out).to(torch.float32)  # [1, M, out]
            t1 = time.perf_counter()
            s = m.values.new_zeros(1, c * n_out)  # [1, C * out]
            s[:, m.s_pos] = m.values.reshape(1, -1)
            t2 = time.perf_counter()
            xg = x[..., m.cols].reshape(1, -1, c).to(torch.float32)  # [1, M, C]
            t3 = time.perf_counter()
            acc.baddbmm_(xg, s.view(1, c, n_out))
            t4 = time.perf_counter()
            today = acc.to(torch.bfloat16).view(out.shape)
            t5 = time.perf_counter()
            alt = out.clone()
            t6 = time.perf_counter()
            s2 = m.values.new_zeros(1, c * n_out)
            s2[:, m.s_pos] = m.values.reshape(1, -1)
            xg2 = x[..., m.cols].reshape(1, -1, c).to(torch.float32)
            alt.view(1, -1, n_out).add_(torch.bmm(xg2, s2.view(1, c, n_out)))  # fp32 sum, rounded once into bf16
            t7 = time.perf_counter()
            identical &= bool(torch.equal(alt, today))
            for k, dt in (("upcast", t1 - t0), ("build_s", t2 - t1), ("gather", t3 - t2), ("baddbmm", t4 - t3), ("downcast", t5 - t4),
                          ("today_total", t5 - t0), ("alternative_total", t7 - t6)):
                tot[k] += dt
        for k in steps:
            steps[k].append(tot[k])
    return {"layers": len(captured), "median_s": {k: round(statistics.median(v), 4) for k, v in steps.items()},
            "alternative_bit_identical": identical}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--shapes", default="smollm2-135m,llama-1.1b,llama-2-7b")
    ap.add_argument("--layers-1b", type=int, default=2)
    ap.add_argument("--layers-7b", type=int, default=1)
    ap.add_argument("--layers-other", type=int, default=2, help="decoder layers built for any other shape (the Qwen2.5 ones)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="roofline", help="results name (bench/results/NAME.json, .md)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from szoq_hub.core.devices import import_bitsandbytes

    import_bitsandbytes()  # the synthetic shapes build SparseQuantLinear directly: no Hub kernel lookup either
    load_before = os.getloadavg()[0]
    started = time.time()
    _install_timed_attention()

    models: dict[str, dict] = {}
    tokenizer = None
    for shape in args.shapes.split(","):
        if shape == "smollm2-135m":
            decoder, tokenizer, full = real_smollm2()
        else:
            decoder, full = synthetic(shape, {"llama-1.1b": args.layers_1b, "llama-2-7b": args.layers_7b}.get(shape, args.layers_other))
        decoder.config._attn_implementation = TIMED_ATTENTION
        models[shape] = {"decoder": decoder, "layers": _time_linears(decoder), "full_layers": full,
                         "built_layers": decoder.config.num_hidden_layers}
    if tokenizer is None:
        from transformers import AutoTokenizer

        from szoq_hub.data.models import resolve_model

        tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct").path)
    lengths = sorted(sst2_lengths(tokenizer))
    # The whole batch in one forward (today's default), and as 4 length-grouped micro-batches of 4
    # (the quality grid's bf16 cells, --micro-batch-size 4): one forward each, padded to its own longest.
    batches = {"16": [lengths], "4x4": [lengths[i : i + 4] for i in range(0, 16, 4)]}
    gen = torch.Generator().manual_seed(0)
    jobs = [(s, d, b) for s in models for d in DTYPES for b in batches]
    samples: dict[tuple, list[dict]] = defaultdict(list)
    inputs = {(s, b): [batch(g, models[s]["decoder"].config.vocab_size, gen) for g in batches[b]] for s in models for b in batches}
    for s, d, b in jobs:  # warm-up: one forward of each
        models[s]["decoder"].to(DTYPES[d])
        timed_forward(models[s]["decoder"], inputs[(s, b)], models[s]["layers"], DTYPES[d])
    for r in range(args.runs):
        for s, d, b in jobs[r % len(jobs):] + jobs[: r % len(jobs)]:  # interleaved, order rotating
            m = models[s]
            m["decoder"].to(DTYPES[d])
            sample = timed_forward(m["decoder"], inputs[(s, b)], m["layers"], DTYPES[d])
            sample["roofline"] = sample["flops"] = 0.0
            for group in inputs[(s, b)]:
                ids = group["input_ids"]  # [B, T]
                lin, attn, flops = matmul_list(m["decoder"], ids.numel(), *ids.shape)
                sample["roofline"] += roofline_seconds(lin, attn, ids.numel(), DTYPES[d], gen)
                sample["flops"] += flops
            samples[(s, d, b)].append(sample)
        print(f"run {r + 1}/{args.runs} done ({time.time() - started:.0f} s)", file=sys.stderr)

    cells = []
    for (s, d, b), runs in samples.items():
        med = {k: statistics.median(x[k] for x in runs) for k in runs[0]}
        fraction = statistics.median(x["roofline"] / x["forward"] for x in runs)
        cells.append({
            "shape": s, "dtype": d, "batch": b, "padded_lengths": [int(g["input_ids"].shape[1]) for g in inputs[(s, b)]],
            "padded_tokens": sum(g["input_ids"].numel() for g in inputs[(s, b)]), "real_tokens": sum(map(sum, batches[b])),
            "layers_built": models[s]["built_layers"], "layers_full": models[s]["full_layers"],
            "gflop": round(med["flops"] / 1e9, 2), "forward_s": round(med["forward"], 4), "roofline_s": round(med["roofline"], 4),
            "achieved_gflops": round(med["flops"] / med["forward"] / 1e9, 2), "roofline_gflops": round(med["flops"] / med["roofline"] / 1e9, 2),
            "fraction_of_roofline": round(fraction, 3),
            "breakdown_share": {p: round(statistics.median(x[p] / x["forward"] for x in runs), 3) for p in PARTS},
            "breakdown_s": {p: round(med[p], 4) for p in PARTS},
            "whole_model_forward_s": round(med["forward"] * models[s]["full_layers"] / models[s]["built_layers"], 2),
            "all_forward_s": [round(x["forward"], 4) for x in runs], "all_roofline_s": [round(x["roofline"], 4) for x in runs],
        })
    anatomy = sparse_anatomy(models["smollm2-135m"]["decoder"], inputs[("smollm2-135m", "16")][0], args.runs) if "smollm2-135m" in models else None
    data = {"runs": args.runs, "sparse_correction_bf16_smollm2": anatomy, "threads": torch.get_num_threads(), "quant": "nf4", "cells": cells,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "load_avg_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
            "seconds": round(time.time() - started, 1), "command": "python bench/bench_roofline.py " + " ".join(sys.argv[1:]),
            "environment": environment()}
    write(args.out, data)


def write(name: str, data: dict) -> None:
    import json

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    head = "| shape | dtype | forwards: rows x T | GFLOP | forward s | matmul roofline s | achieved GFLOP/s | roofline GFLOP/s | fraction | " \
           + " | ".join(PARTS) + " |"
    lines = [f"# {name}", "", f"One forward of the decoder (nf4 base, sparse values), {data['threads']} thread, median of {data['runs']} "
             f"interleaved runs; 1-min load average {data['load_avg_1min']['before']} before, {data['load_avg_1min']['after']} after "
             f"(a shared 2-core machine: absolute times are loaded ones; fractions compare timings of the same run). "
             "Breakdown: share of the forward's time. Goal: fraction >= 0.70 at bf16.", "",
             head, "|" + "---|" * (9 + len(PARTS))]
    for c in data["cells"]:
        rows = " + ".join(f"{4 if c['batch'] == '4x4' else 16} x {t}" for t in c["padded_lengths"])
        share = " | ".join(f"{c['breakdown_share'][p]:.0%}" for p in PARTS)
        built = "" if c["layers_built"] == c["layers_full"] else f" ({c['layers_built']} of {c['layers_full']} layers)"
        lines.append(f"| {c['shape']}{built} | {c['dtype']} | {rows} | {c['gflop']} | {c['forward_s']} | "
                     f"{c['roofline_s']} | {c['achieved_gflops']} | {c['roofline_gflops']} | {c['fraction_of_roofline']:.2f} | {share} |")
    anatomy = data.get("sparse_correction_bf16_smollm2")
    if anatomy:
        m = anatomy["median_s"]
        lines += ["", f"The bf16 sparse correction of SmolLM2 (16 x T, {anatomy['layers']} column-form linears, seconds per forward): "
                  + ", ".join(f"{k} {v}" for k, v in m.items())
                  + f"; the alternative (fp32 correction added in place) is bit-identical to today's: {anatomy['alternative_bit_identical']}."]
    lines += ["", f"Command: `{data['command']}`", ""]
    (RESULTS / f"{name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
