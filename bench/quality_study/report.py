"""`--report` (and after every cell): quality.json, quality.md, the plots and README's table, from the records alone.

Nothing here runs a model: the summary groups the finished cells by configuration (model, task, method, density, steps,
lr, dtype) with the mean and std over seeds, and the tables add the Σg² transfer rows, the lr sweep and the reruns.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path

from . import settings
from .plan import base_method, is_regime, lora_regime, lr_of, on_pareto, plan, regime, sweep_choice, sweep_plan
from .plots import at_step_budget, pareto_points, plot_long, plot_pareto, plot_size, plot_steps_and_density
from .records import load_cells, read_all, write_json, write_text
from .settings import SMOLLM2

TABLE_PAGES = ("README.md", "docs/study.md")  # pages (from the repository root) that may carry the generated table
BUDGETS_GB = (1, 2, 4, 8, 16)  # the per-budget table's rows (issue 32 asks 1-8 GB; 16 shows what needs more)
METHOD_NAMES = {"senszoq": "SensZOQ", "dense": "dense MeZO", "zo-lora": "ZO-LoRA", "zo-lora-eps0.01-a128": "ZO-LoRA",
                "fo-lora": "first-order LoRA", "icl": "ICL", "random": "random mask", "magnitude": "magnitude mask",
                "task-fisher": "task-fisher mask", "senszoq-precond-eps0.01": "SensZOQ-precond", "senszoq-eps0.01": "SensZOQ (eps 1e-2)"}


def summary(cells: list[dict]) -> list[dict]:
    """One row per configuration: mean and std of the accuracy over its seeds, median peak RSS and wall time."""
    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        method = c["method"] + regime(c.get("eps"), c.get("alpha"))  # ZO-LoRA at its own eps / alpha is a configuration of its own
        groups.setdefault((c.get("model", SMOLLM2), c["task"], method, c["density"], c["steps"], c.get("lr"), c.get("dtype") or "fp32"),
                          []).append(c)
    rows = []
    tasks = settings.ALL_TASKS
    order = lambda kv: (list(settings.MODEL_REFS).index(kv[0][0]), tasks.index(kv[0][1]) if kv[0][1] in tasks else 99,  # noqa: E731
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
    """Regenerate quality.json, quality.md, the PNG plots and the Results table of README (or docs/study.md) from the records."""
    cells = load_cells()
    done = {c["key"] for c in cells}
    pending = [c.key for c in plan() if c.key not in done]
    transfer_rows = read_all(settings.TRANSFER)
    pending += [f"transfer-{t}" for t in settings.TASKS if not (settings.TRANSFER / f"{t}.json").is_file()]
    sweep_rows = read_all(settings.SWEEP)
    pending += [r.key for r in sweep_plan() if not (settings.SWEEP / f"{r.key}.json").is_file()]
    choice = sweep_choice([r for r in sweep_rows if r.get("model", SMOLLM2) == SMOLLM2 and not is_regime(r)])
    model_choice = {m: sweep_choice([r for r in sweep_rows if r.get("model", SMOLLM2) == m]) for m in settings.MODEL_SWEEP_LRS}
    verify_rows, mask_rows = read_all(settings.VERIFY), read_all(settings.MASKS)
    data = {"cells": cells, "summary": summary(cells), "transfer": transfer_rows, "sweep": sweep_rows, "sweep_choice": choice,
            "model_sweep_choice": model_choice, "verify": verify_rows, "masks": mask_rows,
            "pending": pending, "not_planned": settings.NOT_PLANNED,
            "settings": {"model": settings.MODEL, "quant": "nf4", "steps": settings.STEPS, "batch": settings.BATCH, "lr": settings.LR,
                         "eps": settings.EPS, "train": settings.TRAIN, "dev": settings.DEV, "eval": settings.EVAL,
                         "eval_every": settings.EVAL_EVERY, "density": settings.DENSITY, "icl_shots": settings.ICL_SHOTS,
                         "micro_batch": settings.MICRO_BATCH}}
    write_json(settings.RESULTS / "quality.json", data)
    lines = _summary_table(data["summary"]) + _transfer_table(transfer_rows) + _sweep_table(sweep_rows, choice, model_choice)
    lines += _verify_table(verify_rows) + _mask_table(mask_rows) + _floor_table(cells)
    budget = budget_table(pareto_points(data["summary"]), pending)
    lines += ["", "Per memory budget:", "", *budget]
    lines += ["", f"Pending cells ({len(pending)}): " + (", ".join(pending) if pending else "none")]
    lines += ["", "Not planned yet:", "", *(f"- {what}: {why}" for what, why in settings.NOT_PLANNED.items())]
    write_text(settings.RESULTS / "quality.md", "\n".join(lines) + "\n")
    plot_steps_and_density(cells)
    plot_long(cells)
    plot_pareto(data["summary"], cells)
    plot_size(data["summary"])
    _readme_table(lines, cells)
    _budget_table(budget)


def _summary_table(rows: list[dict]) -> list[str]:
    lines = ["| model | task | method | density | steps | lr | dtype | accuracy % (mean ± std) | seeds | n eval | peak RSS MB (median) | wall s (median, runs not resumed) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        dens = "-" if r["density"] is None else f"{r['density']:g}"
        lr = "-" if r["lr"] is None else f"{r['lr']:g}" + ("" if r["lr"] == lr_of(base_method(r["method"]), r["model"]) else " (its regime sweep's)" if on_pareto(r) and r["method"] != base_method(r["method"]) else " (not the sweep's)")
        rss = "-" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f}"
        wall = "-" if r["wall_s"] is None else f"{r['wall_s']:.0f}"
        lines.append(f"| {r['model']} | {r['task']} | {r['method']} | {dens} | {r['steps']} | {lr} | {r['dtype']} | {_fmt(r)} | "
                     f"{len(r['seeds'])} ({','.join(map(str, r['seeds']))}) | {r['n']} | {rss} | {wall} |")
    return lines


def _transfer_table(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    return ["", "| task | Σg² share: C4 mask | task mask | random mask |", "|---|---|---|---|",
            *(f"| {t['task']} | {100 * t['c4_share']:.1f}% | {100 * t['task_share']:.1f}% | {100 * t['random_share']:.2f}% |" for t in rows)]


def _sweep_table(rows: list[dict], choice: dict[str, float], model_choice: dict[str, dict[str, float]]) -> list[str]:
    if not rows:
        return []
    lines = ["", f"lr sweep: {settings.SWEEP_TASK} dev (n={rows[0]['dev_n']}), {settings.SWEEP_STEPS} steps, seed {settings.SWEEP_SEED}, "
             f"eps {settings.EPS:g}; chosen = best dev at the last step", "", "| method | lr | dev % by step | chosen | grid lr |",
             "|---|---|---|---|---|"]
    methods = list(settings.SWEEP_LRS)
    regime_best = lora_regime()
    for r in sorted(rows, key=lambda r: (list(settings.MODEL_REFS).index(r.get("model", SMOLLM2)),
                                         methods.index(r["method"]) if r["method"] in methods else 99, r["lr"])):
        model = r.get("model", SMOLLM2)
        by_step = ", ".join(f"{s}: {100 * v:.1f}" for s, v in r["dev_curve"])
        grid = lr_of(r["method"], model)
        swept = model == SMOLLM2 or r["method"] in settings.MODEL_LR[model]
        grid_lr = f"{grid:g}" if grid is not None and swept else "- (sweep not complete)"
        chosen = (choice if model == SMOLLM2 else model_choice[model]).get(r["method"]) == r["lr"]
        chosen = "yes" if chosen and (not is_regime(r) or model != SMOLLM2) or r["method"] in settings.VARIANTS and settings.LR.get(r["method"]) == r["lr"] else ""
        if model == SMOLLM2 and r["method"] == "zo-lora" and regime_best == (r.get("eps"), r.get("alpha"), r["lr"]):
            chosen = (chosen + ", " if chosen else "") + "regime best"
        lines.append(f"| {settings.MODEL_TAGS[model]}{r['method']}{regime(r.get('eps'), r.get('alpha'))} | {r['lr']:g} | {by_step} | {chosen} | {grid_lr} |")
    return lines


def _verify_table(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    return ["", "Reruns of recorded cells (`python bench/quality.py --verify KEY`: the cell's argv, today's code):", "",
            "| cell | recorded | rerun | same | recorded at | rerun at |", "|---|---|---|---|---|---|",
            *(f"| {v['key']} | {100 * v['recorded']:.1f} | {100 * v['rerun']:.1f} | {'yes' if v['same'] else 'NO'} | "
              f"{v['recorded_git_sha'][:7]} | {v['git_sha'][:7]} |" for v in rows)]


def floor_rows(cells: list[dict]) -> list[dict]:
    """Issue 33's floor check: each `defaults` cell beside its model's bf16 zero-shot on the same task (None until run)."""
    zero = {(c.get("model", SMOLLM2), c["task"]): c["accuracy"] for c in cells if c["method"] == "zero-shot" and c.get("dtype") == "bf16"}
    return [{"model": c.get("model", SMOLLM2), "task": c["task"], "zero_shot": zero.get((c.get("model", SMOLLM2), c["task"])),
             "defaults": c["accuracy"], "best_step": c.get("best_step"), "lr": c.get("lr"), "lr_rule": c.get("lr_rule", "fixed"),
             "dtype": c.get("resolved_dtype")}
            for c in cells if c["method"] == "defaults"]


def _floor_table(cells: list[dict]) -> list[str]:
    rows = floor_rows(cells)
    if not rows:
        return []
    lines = ["", "Floor check (issue 33): `szoq finetune` at its defaults (SensZOQ's mask, 300 steps, the dev baseline on) against the "
             "model's zero-shot, eval n=500; lr from the mask's scores where it has them (`--lr scores`), else the fixed 1e-4:", "",
             "| model | task | zero-shot % | defaults % | best step | lr | lr from | dtype | below zero-shot |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        zero = "-" if r["zero_shot"] is None else f"{100 * r['zero_shot']:.1f}"
        below = "-" if r["zero_shot"] is None else "YES" if r["defaults"] < r["zero_shot"] else "no"
        lines.append(f"| {settings.MODEL_NAMES[r['model']]} | {r['task']} | {zero} | {100 * r['defaults']:.1f} | {r['best_step']} | "
                     f"{r['lr']:g} | {r['lr_rule']} | {r['dtype']} | {below} |")
    return lines


def _mask_table(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    order = lambda r: (list(settings.MODEL_REFS).index(r["model"]), r["mask"])  # noqa: E731
    return ["", "Masks the study built (`bench/results/quality/masks/`): the share of the squared-gradient mass (Σg² over the "
            "calibration windows) that the kept weights carry:", "",
            "| mask | model | scorer | windows | nnz | Σg² share | `--lr scores` |", "|---|---|---|---|---|---|---|",
            *(f"| {r['mask']} | {settings.MODEL_NAMES[r['model']]} | {r['scorer']} | {r['samples'] or '-'} x {r['seq_len'] or '-'} | {r['nnz']:,} | "
              + ("-" if r["captured_share"] is None else f"{100 * r['captured_share']:.1f}%") + " | "
              + ("-" if r.get("lr_scores") is None else f"{r['lr_scores']:g}") + " |" for r in sorted(rows, key=order))]


def budget_points(points: list[dict]) -> list[dict]:
    """The SST-2 points a memory budget chooses among: 300 ZO steps, an eval (zero-shot, ICL) or first-order LoRA in a
    SensZOQ run's time, each with its memory as a whole run measures it (the cells' median peak RSS, 500-row eval
    included; a probe's where the cells recorded none)."""
    out = []
    for p in points:
        if not at_step_budget(p):
            continue
        rss = p["peak_rss_mb"] if p.get("rss_complete") and p.get("peak_rss_mb") else p["rss_mb"]
        if rss:
            out.append({**p, "budget_rss_mb": rss})
    return out


def _point_text(p: dict, bold: bool) -> str:
    acc = _fmt(p)
    seeds = f"{len(p['seeds'])} seeds" if len(p["seeds"]) > 1 else "1 seed"
    return f"{METHOD_NAMES.get(p['method'], p['method'])} " + (f"**{acc}%**" if bold else f"{acc}%") + f" ({seeds}, {p['budget_rss_mb'] / 1000:.2f} GB)"


def budget_table(points: list[dict], pending: list[str]) -> list[str]:
    """Issue 32's verdict table: per memory budget (rows) and model (columns) the best SST-2 method whose whole run fits,
    and the next best method beside it; a model does not fit where not even its smallest run (its zero-shot eval) does."""
    pts = budget_points(points)
    models = [m for m in settings.MODEL_REFS if any(p["model"] == m for p in pts)]
    lines = ["| peak memory | " + " | ".join(settings.MODEL_NAMES[m] for m in models) + " | best that fits |",
             "|---|" + "---|" * (len(models) + 1)]
    for gb in BUDGETS_GB:
        row, best = [], None
        for m in models:
            mine = [p for p in pts if p["model"] == m]
            fits = sorted((p for p in mine if p["budget_rss_mb"] <= 1000 * gb), key=lambda p: -p["mean"])
            if not fits:
                row.append(f"does not fit ({min(p['budget_rss_mb'] for p in mine) / 1000:.2f} GB)")
                continue
            top = fits[0]
            other = next((p for p in fits[1:] if base_method(p["method"]) != base_method(top["method"])), None)
            row.append(_point_text(top, True) + (f"; {_point_text(other, False)}" if other else ""))
            best = top if best is None or top["mean"] > best["mean"] else best
        pick = "-" if best is None else f"{settings.MODEL_NAMES[best['model']]}, {METHOD_NAMES.get(best['method'], best['method'])}"
        lines.append(f"| {gb} GB | " + " | ".join(row) + f" | {pick} |")
    waiting = [k for k in pending if "-sst2-" in k and any(k.startswith(settings.MODEL_TAGS[m]) for m in models if settings.MODEL_TAGS.get(m))]
    lines += ["", f"SST-2, n=500 eval rows, accuracy mean ± std over seeds; 300 ZO steps (first-order LoRA: as long as a SensZOQ "
              f"run); memory: the whole run's peak RSS. Cells still pending for these models: {len(waiting)}"
              + (f" ({', '.join(waiting)})." if waiting else ".")]
    return lines


def _between_markers(name: str, body_of) -> None:
    """Rewrite the text between `<!-- NAME -->` and `<!-- /NAME -->` of each page in TABLE_PAGES that has both markers
    with the lines `body_of(page_path)` returns."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    for page in TABLE_PAGES:
        path = settings.ROOT / page
        text = path.read_text() if path.is_file() else ""
        if start in text and end in text:
            head, rest = text.split(start, 1)
            write_text(path, head + "\n".join([start, *body_of(path), end]) + rest.split(end, 1)[1])


def _budget_table(budget: list[str]) -> None:
    """The per-budget table between the budget-table markers of each page that has them (README, docs/study.md)."""
    _between_markers("budget-table", lambda path: budget)


def _readme_table(lines: list[str], cells: list[dict]) -> None:
    """Put the current table (what exists, n per cell, what is pending) between the quality-table markers of each page
    that has them (README's Results, or the study page docs/study.md), images linked relative to that page."""
    shas = sorted({c["git_sha"][:7] for c in cells})

    def body(path: Path) -> list[str]:
        results = Path(os.path.relpath(settings.RESULTS, path.parent)).as_posix()
        pngs = [f"![{name}]({results}/{name}.png)" for name in ("quality_pareto", "quality_size", "quality_long", "quality_steps", "quality_density")
                if (settings.RESULTS / f"{name}.png").is_file()]
        return [f"Cells finished: {len(cells)} (git {', '.join(shas) or '-'}); accuracy in %, std over seeds where there are 2 or more.",
                "", *lines, "", *pngs]

    _between_markers("quality-table", body)
