"""How close a 4-bit scoring base (`--score-quant nf4`) comes to the full-precision mask.

On the real SmolLM2-135M-Instruct with the built-in mask's calibration (C4, 32 x 256 tokens,
seed 0), in one process: Σg² with the fp32 model and Σg² with every decoder linear frozen as
NF4 (weight gradients from input and output gradients). For per-matrix and global scope at
density 1e-3: the Jaccard overlap of the two selections, and the share of the *full-precision*
Σg² that each selection captures. The nf4 option is documented only if its selection keeps
>= 95% of the full-precision mask's captured share.

Usage: python bench/bench_score_quant.py [--windows 32] [--seq-len 256]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, peak_rss_bytes, write_results  # noqa: E402

C4 = Path(os.environ.get("SZOQ_SHARED_DATA", SHARED_DATA)) / "c4" / "c4_validation_2k.jsonl.gz"


def main() -> None:
    from szoq_hub.core.memory import use_predictable_malloc

    use_predictable_malloc()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--density", type=float, default=1e-3)
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from szoq_hub.masks.build import load_scoring_model
    from szoq_hub.data.calibration import load_windows
    from szoq_hub.masks.artifact import captured_share, MaskConfig
    from szoq_hub import SensitivityMask
    from szoq_hub.masks.diff import diff_masks
    from szoq_hub.masks.selection import select
    from szoq_hub.data.models import resolve_model, target_parameter_names
    from szoq_hub.masks.sensitivity import fisher_scores

    source = resolve_model("smollm2-135m-instruct")
    windows, _ = load_windows(str(C4), AutoTokenizer.from_pretrained(source.path), samples=args.windows, seq_len=args.seq_len, seed=0)
    seconds, scores = {}, {}
    targets: list[str] = []  # the full-precision model's target names, scored the same in both runs
    for quant in ("none", "nf4"):
        model = load_scoring_model(source, dtype=torch.float32, quant=quant)
        targets = targets or target_parameter_names(model)
        t0 = time.perf_counter()
        scores[quant] = fisher_scores(model, targets, windows)
        seconds[quant] = time.perf_counter() - t0
        del model
    data = {"model": "smollm2-135m-instruct", "windows": args.windows, "seq_len": args.seq_len, "density": args.density,
            "seconds": seconds, "peak_rss_bytes": peak_rss_bytes(), "scopes": {}}
    rows = []
    shapes = {n: list(s.shape) for n, s in scores["none"].items()}
    for scope in ("per-matrix", "global"):
        fp = select(scores["none"], args.density, scope)
        q = select(scores["nf4"], args.density, scope)
        mk = lambda idx: SensitivityMask(idx, MaskConfig("m", None, "0" * 64, args.density, scope, "fisher", shapes))  # noqa: E731
        jaccard = diff_masks(mk(fp), mk(q)).jaccard
        share_fp = captured_share(scores["none"], fp)
        share_q = captured_share(scores["none"], q)  # the nf4 selection, judged by full-precision Σg²
        kept = share_q / share_fp
        data["scopes"][scope] = {"jaccard": jaccard, "fp_mask_captured_share": share_fp, "nf4_mask_captured_share_of_fp": share_q,
                                 "share_ratio": kept}
        rows += [(f"{scope}: Jaccard(nf4 mask, fp32 mask)", f"{jaccard:.4f}", "measured"),
                 (f"{scope}: fp32 Σg² captured by fp32 mask", f"{share_fp:.4f}", "reference"),
                 (f"{scope}: fp32 Σg² captured by nf4 mask", f"{share_q:.4f}", ""),
                 (f"{scope}: nf4 / fp32 captured share", f"{kept:.3f}", ">= 0.95 to document nf4")]
    rows.append(("fisher seconds fp32 / nf4", f"{seconds['none']:.0f} s / {seconds['nf4']:.0f} s", "measured (2 cores)"))
    data["documented"] = all(s["share_ratio"] >= 0.95 for s in data["scopes"].values())
    data["machine_load"] = os.getloadavg()
    default = (args.windows, args.seq_len) == (32, 256)
    write_results("score_quant" if default else f"score_quant_{args.windows}x{args.seq_len}", data, rows)


if __name__ == "__main__":
    main()
