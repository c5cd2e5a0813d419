"""Benchmark (2) of the fine-tuning issue: forward time of szoq's dense-and-sparse model over a
plain bitsandbytes nf4 model, on the real SmolLM2-135M-Instruct and its built-in C4 mask.

Batch: 16 SST-2 dev prompts (`{sentence} It was`), left-padded, `logits_to_keep=1`, fp32
compute, under `torch.inference_mode()`. Variants are timed interleaved (A, B, C, then B, C, A, ...) in one process so that CPU contention from other processes hits all of them alike; only
ratios of medians are quoted.

Variants:
- `bnb_nf4`: plain bnb `Linear4bit` model, bnb's default CPU dispatch (on AVX512-BF16 CPUs this
  repacks the weight and runs a bf16 gemv kernel, activations rounded to bf16).
- `bnb_nf4_unpacked`: the same modules forced through bnb's generic path
  (`dequantize_4bit` + fp32 matmul), i.e. the identical base computation szoq's nf4 layer does.
- `szoq_nf4`: `load_sparse_model(..., quant="nf4")`: the runtime as shipped (fold: the sparse
  values are written into the freshly dequantized buffer before the matmul).
- `colform_on_bnb`: `bnb_nf4` + a hook adding `x[..., cols] @ S` (S [n_cols, out] built from the
  values each call): the sparse column form on top of bnb's default kernel.
- `naive_hook`: `bnb_nf4` + gather / multiply / `index_add_` per layer (the FINDINGS baseline).

Usage:
    python bench/bench_runtime.py [--runs 9] [--mask masks/smollm2-135m-instruct]
Writes bench/results/runtime.json and bench/results/runtime.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from szoq_hub.masks.artifact import load_mask  # noqa: E402
from szoq_hub.data.models import load_model, resolve_model  # noqa: E402
from szoq_hub.runtime.sparse import load_sparse_model  # noqa: E402

RESULTS = REPO / "bench" / "results"
SST2_DEV = REPO.parent / "shared" / "data" / "sst2" / "dev.tsv"


def sst2_prompts(n: int) -> list[str]:
    """The first n SST-2 dev sentences in MeZO's template (synthetic if the data is absent)."""
    if SST2_DEV.exists():
        with open(SST2_DEV, newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
        return [f"{r['sentence'].strip()} It was" for r in rows[:n]]
    return [f"this film number {i} was a long and winding story about people . It was" for i in range(n)]


def bnb_nf4_model(source, *, packed: bool, mask=None, compute_dtype=torch.float32):
    """A plain bnb nf4 model: every decoder linear replaced by `bnb.nn.Linear4bit`.

    With `mask`, the masked entries are zeroed before quantization (the base of a hooked
    dense-and-sparse variant)."""
    import bitsandbytes as bnb

    lm = load_model(source, dtype=compute_dtype).model
    out_emb = lm.get_output_embeddings()
    targets = [(n, m) for n, m in lm.named_modules() if isinstance(m, torch.nn.Linear) and m is not out_emb]
    for name, lin in targets:
        if mask is not None and f"{name}.weight" in mask.indices:
            lin.weight.data.view(-1)[mask.indices[f"{name}.weight"].long()] = 0.0
        q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None, compute_dtype=compute_dtype, quant_type="nf4", device="meta")
        q.weight = bnb.nn.Params4bit(lin.weight.data, requires_grad=False, quant_type="nf4").to("cpu")
        if lin.bias is not None:
            q.bias = torch.nn.Parameter(lin.bias.data, requires_grad=False)
        if not packed:
            q.support_avx512bf16_for_cpu = False  # bnb's generic dequantize + matmul path
        parent, _, leaf = name.rpartition(".")
        setattr(lm.get_submodule(parent), leaf, q)
    return lm.eval()


def add_sparse_hooks(lm, mask, form: str) -> None:
    """Attach the sparse part to a bnb model by forward hooks (values = the original weights)."""
    from safetensors import safe_open

    modules = dict(lm.named_modules())
    files = sorted(Path(resolve_model("smollm2-135m-instruct").path).glob("*.safetensors"))
    weights = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for name in mask.indices:
                if name in fh.keys():
                    weights[name] = fh.get_tensor(name).reshape(-1)[mask.indices[name].long()].clone()
    for name, idx in mask.indices.items():
        mod = modules[name[: -len(".weight")]]
        n_in, n_out = mod.in_features, mod.out_features
        idx = idx.long()
        rows, cols = idx // n_in, idx % n_in
        vals = weights[name]
        if form == "colform":
            ucols, rank = torch.unique(cols, return_inverse=True)
            pos = rank * n_out + rows

            def hook(m, args, out, ucols=ucols, pos=pos, vals=vals, n_out=n_out):
                x = args[0]  # [B, T, in]
                s = x.new_zeros(ucols.numel() * n_out)  # [C * out]
                s[pos] = vals
                out.view(-1, n_out).addmm_(x[..., ucols].reshape(-1, ucols.numel()), s.view(-1, n_out))
                return out
        else:

            def hook(m, args, out, rows=rows, cols=cols, vals=vals):
                x = args[0]  # [B, T, in]
                out.index_add_(-1, rows, x[..., cols] * vals)  # [B, T, out]
                return out

        mod.register_forward_hook(hook)


def profile_sparse_share(lm, batch) -> dict:
    """Share of the szoq forward spent in the sparse scatter and in dequantization."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        lm(**batch, logits_to_keep=1)
    table = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    total = sum(table.values())
    pick = lambda *keys: sum(v for k, v in table.items() if any(s in k for s in keys))  # noqa: E731
    return {
        "total_self_cpu_ms": total / 1e3,
        "scatter_share": pick("index_put", "index_copy", "_index_put_impl") / total,
        "dequantize_share": pick("dequantize_4bit") / total,
        "matmul_share": pick("aten::mm", "aten::addmm", "aten::linear", "aten::matmul") / total,
    }


def main() -> None:
    from szoq_hub.core.memory import use_predictable_malloc

    use_predictable_malloc()  # the allocator policy the `szoq` CLI runs with
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--mask", default=str(REPO / "masks" / "smollm2-135m-instruct"))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--variants", default="bnb_nf4,szoq_nf4,bnb_nf4_unpacked,colform_on_bnb,naive_hook")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    source = resolve_model("smollm2-135m-instruct")
    mask = load_mask(Path(args.mask))
    variants = args.variants.split(",")
    models = {}
    t0 = time.perf_counter()
    sm = load_sparse_model(source, mask, quant="nf4")
    load_s = time.perf_counter() - t0
    tok = sm.tokenizer
    tok.padding_side = "left"
    batch = dict(tok(sst2_prompts(args.batch), return_tensors="pt", padding=True))
    for v in variants:
        if v == "szoq_nf4":
            models[v] = sm.model
        elif v in ("bnb_nf4", "bnb_nf4_unpacked"):
            models[v] = bnb_nf4_model(source, packed=v == "bnb_nf4")
        elif v in ("colform_on_bnb", "naive_hook"):
            models[v] = bnb_nf4_model(source, packed=True, mask=mask)
            add_sparse_hooks(models[v], mask, "colform" if v == "colform_on_bnb" else "naive")
        else:
            raise SystemExit(f"unknown variant {v}")

    times: dict[str, list[float]] = {v: [] for v in variants}
    with torch.inference_mode():
        for v in variants:  # warm-up (bnb repacks 4-bit weights on the first forward)
            models[v](**batch, logits_to_keep=1)
        for r in range(args.runs):
            # Rotate the order each round so no variant always follows the same neighbour
            # (cache state and contention bursts then fall on every variant alike).
            for v in variants[r % len(variants):] + variants[: r % len(variants)]:
                t = time.perf_counter()
                models[v](**batch, logits_to_keep=1)
                times[v].append(time.perf_counter() - t)
        # Agreement of the fast path with the hooked reference on the same values.
        check = {}
        if "colform_on_bnb" in models:
            a = models["szoq_nf4"](**batch, logits_to_keep=1).logits
            b = models["colform_on_bnb"](**batch, logits_to_keep=1).logits
            check["max_abs_logit_diff_szoq_vs_colform_on_bnb"] = float((a - b).abs().max())
    med = {v: statistics.median(ts) for v, ts in times.items()}
    base = med.get("bnb_nf4")
    result = {
        "benchmark": "runtime forward: dense-and-sparse / plain bnb nf4",
        "model": "smollm2-135m-instruct",
        "mask": str(Path(args.mask).relative_to(REPO)) if Path(args.mask).is_relative_to(REPO) else args.mask,
        "nnz": mask.nnz,
        "masked_tensors": len(mask.indices),
        "batch": {"size": args.batch, "tokens": int(batch["input_ids"].shape[1]), "logits_to_keep": 1},
        "runs": args.runs,
        "interleaved": True,
        "median_s": med,
        "all_s": times,
        "ratios": {f"{v}/bnb_nf4": med[v] / base for v in variants if base},
        # Median of per-round ratios: each round times every variant back to back, so a
        # paired ratio cancels slow drifts in CPU contention.
        "paired_ratios": {
            f"{v}/bnb_nf4": statistics.median(a / b for a, b in zip(times[v], times["bnb_nf4"]))
            for v in variants if "bnb_nf4" in times
        },
        "ratio_szoq_vs_bnb_nf4": med["szoq_nf4"] / base if base and "szoq_nf4" in med else None,
        "ratio_szoq_vs_same_kernel": (med["szoq_nf4"] / med["bnb_nf4_unpacked"]) if "bnb_nf4_unpacked" in med else None,
        "paired_ratio_szoq_vs_same_kernel": statistics.median(
            a / b for a, b in zip(times["szoq_nf4"], times["bnb_nf4_unpacked"])
        ) if "bnb_nf4_unpacked" in times else None,
        "target": 1.10,
        "szoq_load_s": load_s,
        "profile_szoq_nf4": profile_sparse_share(sm.model, batch),
        "checks": check,
        "env": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "python": platform.python_version(),
        },
    }
    try:
        import bitsandbytes

        result["env"]["bitsandbytes"] = bitsandbytes.__version__
    except ImportError:
        pass
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "runtime.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Runtime forward: dense-and-sparse vs plain bnb nf4",
        "",
        f"SmolLM2-135M-Instruct, mask `{result['mask']}` (nnz {mask.nnz} over {len(mask.indices)} tensors), "
        f"batch {args.batch} x {result['batch']['tokens']} tokens, `logits_to_keep=1`, fp32 compute, "
        f"{args.runs} interleaved runs, {torch.get_num_threads()} threads. Ratios of medians.",
        "",
        "| variant | median s | median / bnb_nf4 | paired ratio (median) |",
        "|---|---|---|---|",
    ]
    for v in variants:
        if base:
            lines.append(f"| {v} | {med[v]:.3f} | {med[v] / base:.3f} | {result['paired_ratios'][f'{v}/bnb_nf4']:.3f} |")
        else:
            lines.append(f"| {v} | {med[v]:.3f} | - | - |")
    if result["ratio_szoq_vs_same_kernel"]:
        lines += ["", f"szoq_nf4 / bnb_nf4_unpacked (same base kernel; the sparse part's own cost): "
                  f"**{result['ratio_szoq_vs_same_kernel']:.3f}** (paired {result['paired_ratio_szoq_vs_same_kernel']:.3f})"]
    p = result["profile_szoq_nf4"]
    lines += ["", f"Profile of one szoq_nf4 forward: scatter {p['scatter_share']:.1%}, dequantize {p['dequantize_share']:.1%}, "
              f"matmul {p['matmul_share']:.1%} of self CPU time.", "", "Command: `python bench/bench_runtime.py --runs "
              f"{args.runs}" + (f" --threads {args.threads}" if args.threads else "") + "`", ""]
    (RESULTS / "runtime.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
