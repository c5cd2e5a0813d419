"""The grid: which cells and lr-sweep runs the study has, in what order, at what lr, under what key.

A cell's key names its record (`bench/results/quality/cells/KEY.json`) and its run folder, so it must not change
for a recorded cell: `cell_of` rebuilds the Cell a record describes, and `records.load_cells` moves a record whose
key has changed (its method's lr moved on) to the key it has today.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from . import settings
from .settings import DENSITY, GEMMA, QWEN05, QWEN15, SMOLLM2, STEPS


def lr_of(method: str, model: str = SMOLLM2) -> float | None:
    """The grid's lr for `method` on `model`: the model's own sweep's choice where it has one, else the sweep of the model it
    borrows from (MODEL_LR_FROM), else SmolLM2's (scaled)."""
    if method in settings.MODEL_LR.get(model, {}):
        return settings.MODEL_LR[model][method]
    if model in settings.MODEL_LR_FROM:
        return lr_of(method, settings.MODEL_LR_FROM[model])
    return None if method not in settings.LR else settings.LR[method] * settings.MODEL_LR_SCALE.get(model, 1.0)


@dataclass(frozen=True)
class Cell:
    """One point of the grid."""

    task: str
    method: str  # zero-shot | icl | senszoq | random | magnitude | task-fisher | dense | zo-lora | a SensZOQ variant (settings.VARIANTS)
    # | defaults (`szoq finetune` with SensZOQ's mask and nothing else set: the floor check)
    seed: int
    density: float | None = DENSITY
    steps: int = STEPS
    lr: float | None = None  # None: LR[method]
    dtype: str | None = None  # None: the CLI's default as the cell was recorded (fp32 on CPU); "bf16": `--dtype bf16`
    model: str = SMOLLM2  # SMOLLM2, GEMMA, QWEN05 or QWEN15
    eps: float | None = None  # None: settings.EPS
    alpha: float | None = None  # ZO-LoRA's --lora-alpha; None: the CLI's default

    @property
    def learning_rate(self) -> float | None:
        return self.lr if self.lr is not None else lr_of(self.method, self.model)

    @property
    def key(self) -> str:
        dens = "" if self.density in (None, DENSITY) else f"-d{self.density:g}"
        lr = "" if self.learning_rate == lr_of(self.method, self.model) else f"-lr{self.learning_rate:g}"
        dt = f"-{self.dtype}" if self.dtype else ""
        steps = f"-{self.steps}steps" if self.trains and self.steps != settings.STEPS else ""
        return f"{settings.MODEL_TAGS[self.model]}{self.task}-{self.method}{regime(self.eps, self.alpha)}{dens}{lr}{steps}{dt}-s{self.seed}"

    @property
    def trains(self) -> bool:
        return self.method not in ("zero-shot", "icl")


def base_method(label: str) -> str:
    """The method of a summary row's label (`zo-lora-eps0.01-a128` -> `zo-lora`)."""
    return re.sub(r"(-eps[0-9.e+-]+?)?(-a[0-9.]+)?$", "", label)


def regime(eps: float | None, alpha: float | None) -> str:
    """The key part of a run's eps and LoRA alpha where they are not the grid's (`-eps0.01-a128`; empty otherwise)."""
    return (f"-eps{eps:g}" if eps not in (None, settings.EPS) else "") + (f"-a{alpha:g}" if alpha not in (None, settings.LORA_ALPHA) else "")


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
    for s in settings.SEEDS:  # bf16 compute against the fp32 cells above: does the CPU's faster dtype keep the accuracy?
        add(Cell("sst2", "senszoq", s, dtype="bf16"))
    # Evidence cells on the new CPU default (bf16 compute, length-grouped forwards of 4): TREC, a second single-sentence task
    add(Cell("trec", "zero-shot", 0, None, 0, dtype="bf16"))
    add(Cell("trec", "senszoq", 0, dtype="bf16"))
    add(Cell("trec", "random", 0, dtype="bf16"))
    add(Cell("trec", "icl", 0, None, 0, dtype="bf16"))
    add(Cell("trec", "senszoq", 0, lr=1e-4, dtype="bf16"))  # the old default lr: does the sweep's 3e-4 hold off SST-2?
    add(Cell("trec", "dense", 0, 1.0))
    # Issue 24: ZO-LoRA at SensZOQ's memory (once its lr sweep is complete), a second real model, a longer horizon
    lora = "zo-lora" in settings.LR
    if lora:
        for s in settings.SEEDS:
            add(Cell("sst2", "zo-lora", s, None, dtype="bf16"))
        add(Cell("trec", "zo-lora", 0, None, dtype="bf16"))
    # Issue 33: in bf16 the two-point estimate at eps 1e-3 is mostly rounding noise (bench/results/estimator.md: SensZOQ's
    # correlation with the exact directional derivative 0.79 at 1e-3, 0.99 at 1e-2; ZO-LoRA's -0.13 and 0.94): SensZOQ at 1e-2
    for s in settings.SEEDS:
        add(Cell("sst2", "senszoq", s, dtype="bf16", eps=1e-2))
    if (best := lora_regime()) is not None:  # issue 33: ZO-LoRA at its own regime sweep's best eps, alpha and lr
        eps, alpha, lr = best
        for s in settings.SEEDS:
            add(Cell("sst2", "zo-lora", s, None, lr=lr, dtype="bf16", eps=eps, alpha=alpha))
        add(Cell("trec", "zo-lora", 0, None, lr=lr, dtype="bf16", eps=eps, alpha=alpha))
    # Issue 33's SensZOQ variants, once each one's sweep is complete, best sweep dev first: 3 SST-2 seeds and a TREC cell of
    # the best, then the others' SST-2 seeds, then the best over 1000 steps (does it hold its peak?)
    variants = swept_variants()
    for i, v in enumerate(variants):
        for s in settings.SEEDS:
            add(Cell("sst2", v, s, dtype="bf16", eps=settings.VARIANT_EPS))
        if i == 0:
            add(Cell("trec", v, 0, dtype="bf16", eps=settings.VARIANT_EPS))
    for s in (0, 1) if variants else ():
        add(Cell("sst2", variants[0], s, steps=settings.LONG_STEPS, dtype="bf16", eps=settings.VARIANT_EPS))
    # Issue 33's floor check: the product's defaults on each model and task, beside that model's bf16 zero-shot
    for model in settings.FLOOR_MODELS:
        for task in settings.FLOOR_TASKS:
            add(Cell(task, "zero-shot", 0, None, 0, dtype="bf16", model=model))
            add(Cell(task, "defaults", 0, dtype="auto", model=model))
    # a Gemma sweep, if the method has one, is done
    ready = lambda m: m not in settings.MODEL_SWEEP_LRS[GEMMA] or m in settings.MODEL_LR[GEMMA]  # noqa: E731
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
    # Issue 32: Qwen2.5-Coder-0.5B (its zero-shot and ICL first; SensZOQ with its own C4 mask once its dev sweep is complete)
    add(Cell("sst2", "zero-shot", 0, None, 0, dtype="bf16", model=QWEN05))
    add(Cell("trec", "zero-shot", 0, None, 0, dtype="bf16", model=QWEN05))
    add(Cell("sst2", "icl", 0, None, 0, dtype="bf16", model=QWEN05))
    if "senszoq" in settings.MODEL_LR.get(QWEN05, {}):
        for s in settings.SEEDS:
            add(Cell("sst2", "senszoq", s, dtype="bf16", model=QWEN05))
        add(Cell("trec", "senszoq", 0, dtype="bf16", model=QWEN05))
        add(Cell("sst2", "random", 0, dtype="bf16", lr=settings.MODEL_LR[QWEN05]["senszoq"], model=QWEN05))  # SensZOQ's lr
    if "random" in settings.MODEL_LR.get(QWEN05, {}) and settings.MODEL_LR[QWEN05]["random"] != settings.MODEL_LR[QWEN05].get("senszoq"):
        add(Cell("sst2", "random", 0, dtype="bf16", model=QWEN05))  # and its own sweep's, where that is another
    qwen, best = settings.MODEL_LR.get(QWEN05, {}), lora_regime()
    for task, seeds in (("sst2", (0, 1)), ("trec", (0,))):  # the competitors at their own Qwen sweep's lr (issue 32)
        for s in seeds:
            if "zo-lora" in qwen and best:
                add(Cell(task, "zo-lora", s, None, dtype="bf16", model=QWEN05, eps=best[0], alpha=best[1]))
            if "dense" in qwen:
                add(Cell(task, "dense", s, 1.0, model=QWEN05))  # fp32, no quantization, as SmolLM2's dense cells
    if "senszoq" in qwen:  # does a task-data mask close the gap to dense at 0.5B? (SST-2's train rows, SensZOQ's lr)
        add(Cell("sst2", "task-fisher", 0, dtype="bf16", lr=qwen["senszoq"], model=QWEN05))
    # Issue 32 at 1.5B (SST-2): each method at its 0.5B sweep's lr (MODEL_LR_FROM), planned once that sweep is complete; dense
    # at equal wall time (QWEN15_EQUAL_TIME_STEPS) before dense at equal steps (300: ~5 h of two-thread steps, resumable)
    add(Cell("sst2", "zero-shot", 0, None, 0, dtype="bf16", model=QWEN15))
    if "senszoq" in qwen:
        add(Cell("sst2", "senszoq", 0, dtype="bf16", model=QWEN15))  # its own C4 fisher mask
        add(Cell("sst2", "defaults", 0, dtype="auto", model=QWEN15))  # the same mask at the product's defaults: `--lr scores`' 4.2e-5
        add(Cell("sst2", "senszoq", 1, dtype="bf16", model=QWEN15))
    if "zo-lora" in qwen and best:
        add(Cell("sst2", "zo-lora", 0, None, dtype="bf16", model=QWEN15, eps=best[0], alpha=best[1]))
    if "dense" in qwen:
        add(Cell("sst2", "dense", 0, 1.0, settings.QWEN15_EQUAL_TIME_STEPS, model=QWEN15))
        add(Cell("sst2", "dense", 0, 1.0, model=QWEN15))
    for s in (0, 1):  # does the 300-step ordering hold at 1000?
        add(Cell("sst2", "senszoq", s, steps=settings.LONG_STEPS, dtype="bf16"))
        if lora:
            add(Cell("sst2", "zo-lora", s, None, settings.LONG_STEPS, dtype="bf16"))
        add(Cell("sst2", "dense", s, 1.0, settings.LONG_STEPS))
    # the product's default lr (1e-4) over the long horizon: the grid's 3e-4 fell to zero-shot level after step 600 on seed 0
    add(Cell("sst2", "senszoq", 0, steps=settings.LONG_STEPS, lr=1e-4, dtype="bf16"))
    if lora:  # and ZO-LoRA's: at its sweep's 1e-3 the loss climbed from 1.2 to ~3 after step 300 (seed 0); 1e-4 was within a point in the sweep
        add(Cell("sst2", "zo-lora", 0, None, settings.LONG_STEPS, lr=1e-4, dtype="bf16"))
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
    for task in settings.PLAN_TASKS:
        for s in (1, 2):
            add(Cell(task, "zero-shot", s, None, 0))
            add(Cell(task, "senszoq", s))
            add(Cell(task, "random", s))
    for task in settings.PLAN_TASKS:
        for s in settings.SEEDS:
            add(Cell(task, "dense", s, 1.0))
    for task in settings.PLAN_TASKS:  # "3 where time allows"
        for s in (1, 2):
            add(Cell(task, "magnitude", s))
            add(Cell(task, "task-fisher", s))
    done = {p.stem for p in settings.CELLS.glob("*.json")}  # RTE/BoolQ cells already run stay in the plan (their records are kept)
    return [c for c in cells if c.task not in ("rte", "boolq") or c.key in done]


def on_pareto(c: dict) -> bool:
    """Whether a cell record or summary row is a configuration a user would pick: the grid's lr and density, 300 steps or an eval."""
    best = lora_regime() if c["method"].startswith("zo-lora") else None  # ZO-LoRA's regime-sweep configuration, once it has one
    label = c["method"] + regime(c.get("eps"), c.get("alpha"))  # a record's method and regime; a summary row's label has both
    variant = label.removesuffix(regime(settings.VARIANT_EPS, None))  # a SensZOQ variant at its sweep's eps and lr
    grid = (variant in settings.VARIANTS and label == variant + regime(settings.VARIANT_EPS, None) and c.get("lr") == lr_of(variant)
            or best is not None and label == "zo-lora" + regime(*best[:2])  # other models: at their own sweep's lr
            and c.get("lr") == (best[2] if c.get("model", SMOLLM2) == SMOLLM2 else lr_of("zo-lora", c["model"]))
            or label == c["method"] and c.get("lr") == lr_of(c["method"], c.get("model", SMOLLM2)))
    return (grid and c["density"] in (None, DENSITY, 1.0)
            and c["steps"] in (0, settings.STEPS) and c["method"] != "task-fisher")  # task-fisher is a reference mask, not a user's choice


def cell_of(c: dict) -> Cell:
    """The Cell a record describes today (its lr kept explicitly, so an lr other than its method's shows in the key)."""
    return Cell(c["task"], c["method"], c["seed"], c["density"], c["steps"], c.get("lr") if c["method"] in settings.LR else None,
                c.get("dtype") if c.get("dtype") != "fp32" else None, c.get("model", SMOLLM2),
                c.get("eps") if c.get("eps") not in (None, settings.EPS) else None,
                c.get("alpha") if c.get("alpha") not in (None, settings.LORA_ALPHA) else None)


def record_key(c: dict) -> str:
    """The key a cell record belongs under today (an lr other than LR[method] shows in it)."""
    return cell_of(c).key


# --- the lr sweep ------------------------------------------------------------------------------

@dataclass(frozen=True)
class SweepRun:
    """One lr of the SST-2 dev sweep."""

    method: str
    lr: float
    model: str = SMOLLM2
    eps: float | None = None  # None: settings.EPS (every sweep but ZO-LoRA's regime sweep)
    alpha: float | None = None  # ZO-LoRA's --lora-alpha; None: the CLI's default

    @property
    def key(self) -> str:
        return f"sweep-{settings.MODEL_TAGS[self.model]}{self.method}{regime(self.eps, self.alpha)}-lr{self.lr:g}"


def sweep_plan() -> list[SweepRun]:
    """Every run of the lr sweep: SmolLM2's ranges, then each other model's own."""
    runs = [*(SweepRun(m, lr) for m, lrs in settings.SWEEP_LRS.items() for lr in lrs), *model_sweep_runs()]
    runs += [SweepRun(v, lr, SMOLLM2, settings.VARIANT_EPS) for v, lrs in settings.VARIANT_SWEEP_LRS.items() for lr in lrs]
    return runs + [r for r in lora_regime_runs() if r not in runs]  # its (1e-3, 16) corner reuses the first ZO-LoRA sweep's records


def model_sweep_runs() -> list[SweepRun]:
    """Each other model's own sweeps; ZO-LoRA's at the eps and alpha of its SmolLM2 regime sweep, so only once that is complete,
    a SensZOQ variant's at VARIANT_EPS."""
    best = lora_regime()
    return [SweepRun(m, lr, model, *(best[:2] if m == "zo-lora" else (settings.VARIANT_EPS, None) if m in settings.VARIANTS else (None, None)))
            for model, lrs_of in settings.MODEL_SWEEP_LRS.items() for m, lrs in lrs_of.items() if m != "zo-lora" or best for lr in lrs]


def variant_sweep(method: str) -> list[dict] | None:
    """The sweep records of a SensZOQ variant (issue 33) once every lr of its range has one, else None."""
    paths = [settings.SWEEP / f"{SweepRun(method, lr, SMOLLM2, settings.VARIANT_EPS).key}.json" for lr in settings.VARIANT_SWEEP_LRS[method]]
    return [json.loads(p.read_text()) for p in paths] if all(p.is_file() for p in paths) else None


def swept_variants() -> list[str]:
    """The SensZOQ variants whose sweep is complete, best first: by the mean eval of their SST-2 cells (300 steps, every
    seed) once each has them all, until then by the sweep's best final dev (ties: in VARIANTS' order)."""
    done = {v: rows for v in settings.VARIANTS if (rows := variant_sweep(v)) is not None}

    def seeds_mean(v: str) -> float | None:
        paths = [settings.CELLS / f"{Cell('sst2', v, s, dtype='bf16', eps=settings.VARIANT_EPS).key}.json" for s in settings.SEEDS]
        return sum(json.loads(p.read_text())["accuracy"] for p in paths) / len(paths) if all(p.is_file() for p in paths) else None

    means = {v: seeds_mean(v) for v in done}
    by_cells = all(m is not None for m in means.values())
    return sorted(done, key=lambda v: -(means[v] if by_cells else max(r["dev_final"] for r in done[v])))


def lora_regime_runs() -> list[SweepRun]:
    """ZO-LoRA's regime sweep (issue 33): eps x alpha x lr on SmolLM2, eps and alpha left None at the grid's values."""
    g = settings.LORA_REGIME
    return [SweepRun("zo-lora", lr, SMOLLM2, None if eps == settings.EPS else eps, None if alpha == settings.LORA_ALPHA else alpha)
            for eps in g["eps"] for alpha in g["alpha"] for lr in g["lr"]]


def lora_regime() -> tuple[float | None, float | None, float] | None:
    """(eps, alpha, lr) of the regime sweep's best final dev once all its runs are recorded (ties: the smaller lr, then the
    smaller eps, then the smaller alpha), else None."""
    rows = []
    for run in lora_regime_runs():
        path = settings.SWEEP / f"{run.key}.json"
        if not path.is_file():
            return None
        rows.append((-json.loads(path.read_text())["dev_final"], run.lr, run.eps or settings.EPS, run.alpha or settings.LORA_ALPHA, run))
    best = min(rows, key=lambda r: r[:4])[4]
    return best.eps, best.alpha, best.lr


def sweep_choice(rows: list[dict]) -> dict[str, float]:
    """Per method: the lr with the best dev accuracy at the last step; ties go to the smaller lr."""
    best: dict[str, dict] = {}
    for r in sorted(rows, key=lambda r: r["lr"]):
        if r["method"] not in best or r["dev_final"] > best[r["method"]]["dev_final"]:
            best[r["method"]] = r
    return {m: r["lr"] for m, r in best.items()}


def is_regime(r: dict) -> bool:
    """Whether a sweep record is off the grid's eps and LoRA alpha (ZO-LoRA's regime sweep)."""
    return r.get("eps") not in (None, settings.EPS) or r.get("alpha") not in (None, settings.LORA_ALPHA)


def swept_lr(method: str, model: str = SMOLLM2) -> float | None:
    """The sweep's lr for `method` on `model` once every lr of its range has a record, else None."""
    if model != SMOLLM2:  # its own runs, by key (ZO-LoRA's carry the regime's eps and alpha)
        paths = [settings.SWEEP / f"{r.key}.json" for r in model_sweep_runs() if r.model == model and r.method == method]
        return sweep_choice([json.loads(p.read_text()) for p in paths])[method] if paths and all(p.is_file() for p in paths) else None
    lrs = settings.SWEEP_LRS[method]
    rows = [json.loads(p.read_text()) for p in settings.SWEEP.glob(f"sweep-{settings.MODEL_TAGS[model]}{method}-lr*.json")]
    rows = [r for r in rows if r["method"] == method and r.get("model", SMOLLM2) == model and not is_regime(r) and r["lr"] in lrs]
    return sweep_choice(rows)[method] if {r["lr"] for r in rows} >= set(lrs) else None


def adopt_swept_lrs() -> None:
    """Take the lrs that complete sweeps chose into the grid: ZO-LoRA's and the SensZOQ variants' on SmolLM2, each other model's own."""
    if (lora_lr := swept_lr("zo-lora")) is not None:
        settings.LR["zo-lora"] = lora_lr
    for model, lrs_of in settings.MODEL_SWEEP_LRS.items():
        for method in lrs_of:
            if (lr := swept_lr(method, model)) is not None:
                settings.MODEL_LR[model][method] = lr
    for v in settings.VARIANTS:
        if (rows := variant_sweep(v)) is not None:
            settings.LR[v] = sweep_choice(rows)[v]


adopt_swept_lrs()  # once, on import: the grid (its keys, its pending cells) depends on them
