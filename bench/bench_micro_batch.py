"""Micro-batching benchmark on the real SmolLM2-135M: the paired ZO loss of one batch, forwarded
whole or in length-grouped micro-batches (`szoq finetune --micro-batch-size`).

For each task, --batches batches of --batch-size train examples (drawn as `szoq finetune` draws
them), the paired loss (both perturbations in one forward, nf4 base, the built-in mask) is timed
for every micro-batch size, interleaved (all sizes for batch 1, then batch 2, ...), --runs rounds;
reported per size: median seconds per step over batches and rounds, its ratio to the whole-batch
forward (measured in the same run), padded tokens per real token, and the largest relative
difference of the loss from the whole-batch loss (float rounding only).

Writes bench/results/<--name>.json and .md (default micro_batch).

Usage: SZOQ_DATA_DIR=../shared/data python bench/bench_micro_batch.py [--tasks sst2,rte,boolq] [--threads 1]
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
from common import write_results  # noqa: E402

DATA = Path(os.environ.get("SZOQ_DATA_DIR", HERE.parent.parent / "shared" / "data"))


def _padded(batch, size: int | None) -> tuple[int, int]:
    """(padded tokens, real tokens) of the prompts when forwarded in micro-batches of `size`."""
    from szoq_hub.data.scoring import micro_batches

    parts = micro_batches(batch, size)
    return sum(len(p) * max(len(e.prompt) for e in p) for p in parts), sum(len(e.prompt) for e in batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="sst2,rte,boolq")
    ap.add_argument("--sizes", default="16,8,4,2,1", help="micro-batch sizes; the first must be the batch size (the reference)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--name", default="micro_batch")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    if sizes[0] != args.batch_size:
        ap.error("--sizes must start with --batch-size (the whole-batch reference)")

    from szoq_hub.core.defaults import DEFAULT_MASK
    from szoq_hub.training.finetune import batch_indices
    from szoq_hub.methods.sparse.setup import open_model_and_mask
    from szoq_hub.runtime.sparse import load_sparse_model
    from szoq_hub.data.scoring import encode, loss_sums, pad_id_of
    from szoq_hub.data.tasks import Sampling, load_task

    source, _, mask, _ = open_model_and_mask(DEFAULT_MASK, DEFAULT_MASK)
    sparse = load_sparse_model(source, mask, quant="nf4")
    tok = sparse.tokenizer
    pad = pad_id_of(tok)
    gen = torch.Generator().manual_seed(0)
    points = sparse.values[None] + 1e-3 * torch.randn(2, sparse.values.numel(), generator=gen)  # [2, nnz]: theta +- eps z

    rows, table = [], []
    for name in args.tasks.split(","):
        task = load_task(name, data_dir=DATA, sampling=Sampling(1000, 0, 1, seed=0))
        train = encode(tok, task.train)
        perms: dict[int, list[int]] = {}
        batches = [[train[i] for i in batch_indices(len(train), args.batch_size, step, 0, perms)] for step in range(args.batches)]
        times: dict[int, list[float]] = {s: [] for s in sizes}
        losses: dict[int, list[list[float]]] = {s: [] for s in sizes}
        for _ in range(args.runs):
            for batch in batches:
                for s in sizes:
                    t0 = time.perf_counter()
                    with sparse.perturbed(points) as parts:
                        got = loss_sums(sparse.model, batch, pad, copies=parts, micro_batch_size=s)
                    times[s].append(time.perf_counter() - t0)
                    losses[s].append(got)
        ref = statistics.median(times[sizes[0]])
        for s in sizes:
            med = statistics.median(times[s])
            padded = [_padded(b, s) for b in batches]
            diff = max(abs(a - b) / abs(b) for got, want in zip(losses[s], losses[sizes[0]]) for a, b in zip(got, want))
            row = {"task": name, "micro_batch_size": s, "seconds_per_step": round(med, 3), "ratio_to_whole": round(med / ref, 3),
                   "padded_per_real_token": round(sum(p for p, _ in padded) / sum(r for _, r in padded), 3),
                   "max_rel_loss_diff": diff, "timings": [round(t, 4) for t in times[s]]}
            rows.append(row)
            table.append((f"{name} micro-batch {s}: time per paired step / whole batch",
                          f"{row['ratio_to_whole']:.2f} (pad/real {row['padded_per_real_token']:.2f}, loss rel diff {diff:.1e})", "< 1 is faster"))
            print(row, file=sys.stderr, flush=True)
    write_results(args.name, {"batch_size": args.batch_size, "batches": args.batches, "runs": args.runs, "quant": "nf4",
                              "load_avg": os.getloadavg(), "rows": rows}, table)


if __name__ == "__main__":
    main()
