"""The study's PNG plots (matplotlib from the `bench` extra; without it they are skipped with a note on stderr).

- quality_steps.png / quality_density.png: SST-2 dev curves of the fp32 cells at the grid's lr, and eval accuracy by density.
- quality_long.png: the 1000-step cells over the same methods' 300-step cells.
- quality_pareto.png (+ quality_pareto.json): SST-2 accuracy against peak memory and against training time.
- quality_size.png: SST-2 accuracy against model size, a line per method at the 300-step budget.
"""

from __future__ import annotations

import json
import statistics
import sys

from . import settings
from .plan import base_method, lr_of, on_pareto
from .records import read_all, write_json
from .settings import DENSITY, GEMMA, SMOLLM2

COLORS = {"zero-shot": "0.65", "icl": "0.25", "senszoq": "C0", "random": "C1", "magnitude": "C2", "task-fisher": "C3", "dense": "C4",
          "zo-lora": "C5", "fo-lora": "C6", "senszoq-precond": "olive", "senszoq-adaptive": "C8", "senszoq-cosine": "C9"}


def _pyplot():
    """matplotlib.pyplot on the Agg backend, or None without the `bench` extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save_with_legend_outside(plt, fig, ax, name: str, legend_size: float) -> None:
    """Small title, a grid, the legend right of the axes (the lines overlap), then write results/NAME and close."""
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(settings.RESULTS / name, dpi=110)
    plt.close(fig)


def plot_steps_and_density(cells: list[dict]) -> None:
    """accuracy vs steps (SST-2 dev curves) and accuracy vs density (SST-2 senszoq)."""
    plt = _pyplot()
    if plt is None:
        print("plots skipped: pip install -e '.[bench]' (matplotlib)", file=sys.stderr)
        return
    sst2 = [c for c in cells if c["task"] == "sst2" and c.get("lr") == settings.LR.get(c["method"])  # the grid's own lr, fp32 compute
            and c.get("dtype", "fp32") == "fp32" and c.get("model", SMOLLM2) == SMOLLM2 and c["steps"] in (0, settings.STEPS)]
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
    fig.savefig(settings.RESULTS / "quality_steps.png", dpi=110)
    plt.close(fig)
    dens = sorted((c["density"], c["accuracy"]) for c in sst2 if c["method"] == "senszoq")
    if dens:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.semilogx([d for d, _ in dens], [100 * a for _, a in dens], "o", color="C0", label="senszoq (C4 fisher)")
        for c in sst2:
            if c["method"] in ("random", "magnitude", "task-fisher", "dense"):
                ax.semilogx([c["density"]], [100 * c["accuracy"]], "x", color=colors[c["method"]], label=c["method"])
        ax.set(xlabel="mask density", ylabel="SST-2 eval accuracy %", title=f"{settings.STEPS} ZO steps")
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles))
        ax.legend(uniq.values(), uniq.keys(), fontsize=7)
        fig.tight_layout()
        fig.savefig(settings.RESULTS / "quality_density.png", dpi=110)
        plt.close(fig)


def plot_long(cells: list[dict]) -> None:
    """bench/results/quality_long.png: SST-2 dev curves of the long-horizon cells, over the same methods' 300-step cells."""
    plt = _pyplot()
    if plt is None:  # `plot_steps_and_density` has said so
        return
    steps, long_steps = settings.STEPS, settings.LONG_STEPS
    smollm2_sst2 = [c for c in cells if c["task"] == "sst2" and c.get("model", SMOLLM2) == SMOLLM2]
    long = [c for c in smollm2_sst2 if c["steps"] == long_steps and c["dev_curve"]]
    if not long:
        return
    kinds = {(c["method"], c.get("dtype", "fp32"), c["lr"]) for c in long}
    short = [c for c in smollm2_sst2 if c["steps"] == steps and c["dev_curve"]
             and (c["method"], c.get("dtype", "fp32"), c["lr"]) in kinds and (c["method"] != "senszoq" or c["density"] == DENSITY)]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    for c in sorted(short + long, key=lambda c: (c["method"], c["steps"], c["seed"])):
        xs, ys = zip(*c["dev_curve"])
        is_long = c["steps"] == long_steps
        grid_lr = c["lr"] == lr_of(c["method"], SMOLLM2)
        label = (f"{c['method']} {c.get('dtype', 'fp32')} lr {c['lr']:g} s{c['seed']}, {c['steps']} steps "
                 f"(eval {100 * c['accuracy']:.1f}% at step {c.get('best_step', '?')})")
        ax.plot(xs, [100 * y for y in ys], color=COLORS.get(c["method"], "k"), ls=("-", "--", ":")[c["seed"] % 3] if grid_lr else "-.",
                lw=1.8 if is_long else 0.8, alpha=1.0 if is_long else 0.45, marker=("o" if grid_lr else "^") if is_long else None, ms=3,
                label=label)
    zero = [100 * c["accuracy"] for c in smollm2_sst2 if c["method"] == "zero-shot"]
    if zero:
        ax.axhline(sum(zero) / len(zero), color="0.5", ls="--", lw=0.8, label="zero-shot (eval)")
    ax.axvline(steps, color="0.6", lw=0.8)
    ax.set(xlabel="ZO steps", ylabel=f"SST-2 dev accuracy % (n={long[0].get('dev_n', '?')})",
           title=f"SmolLM2-135M, SST-2: {long_steps} steps thick, {steps} thin; dash-dot: not the grid's lr")
    _save_with_legend_outside(plt, fig, ax, "quality_long.png", 6.5)


def pareto_points(summary: list[dict]) -> list[dict]:
    """SST-2 points of the Pareto plot: one per (model, method, dtype, steps) at the grid's lr, with memory and time.

    Memory: the probe's peak RSS where there is a probe (every point measured alike: 12 steps, 32 dev and eval rows), else
    the cells' own (a whole run: it peaks higher, in the 500-row eval). Time: the probe's median s/step x steps (probes ran
    one after another, so their times compare); zero-shot and ICL have no training time.
    """
    probes = {(r["model"], r["method"], r["dtype"]): r for r in read_all(settings.PROBE)}
    points = []
    for r in summary:
        long_at_grid_lr = r["steps"] == settings.LONG_STEPS and r["lr"] == lr_of(r["method"], r["model"])
        if r["task"] != "sst2" or not on_pareto(r) and not long_at_grid_lr:
            continue
        pr = probes.get((r["model"], r["method"], r["dtype"]))
        cells_rss = r["peak_rss_mb"] if r.get("rss_complete") else None
        rss = (pr and pr["peak_rss_mb"]) or cells_rss
        train_s = pr["s_per_step"] * r["steps"] if pr and pr["s_per_step"] and r["steps"] else None
        points.append({**r, "rss_mb": rss, "rss_source": "probe" if pr else "cells" if cells_rss else None, "train_s": train_s})
    fo = settings.RESULTS / "fo_lora.json"
    by_model: dict[str, list[dict]] = {}
    for x in json.loads(fo.read_text())["rows"] if fo.is_file() else []:  # bench_fo_lora.py's first-order reference, per model
        by_model.setdefault(x.get("model", SMOLLM2), []).append(x)
    for model, rows in by_model.items():
        accs = [x["accuracy"] for x in rows]
        points.append({"model": model, "task": "sst2", "method": "fo-lora", "dtype": "bf16", "steps": round(statistics.mean(x["steps"] for x in rows)),
                       "mean": statistics.mean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else None, "n": rows[0]["n"],
                       "seeds": [x["seed"] for x in rows], "rss_mb": max(x["peak_rss_mb"] for x in rows), "rss_source": "bench_fo_lora",
                       "train_s": statistics.mean(x["train_s"] for x in rows)})
    return points


def plot_pareto(summary: list[dict], cells: list[dict]) -> None:
    """bench/results/quality_pareto.png: SST-2 accuracy against peak memory and against training time, per model."""
    plt = _pyplot()
    if plt is None:  # `plot_steps_and_density` has said so
        return
    points = pareto_points(summary)
    if not points:
        return
    write_json(settings.RESULTS / "quality_pareto.json", {"points": points})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    markers = {SMOLLM2: "o", GEMMA: "s", settings.QWEN05: "D", settings.QWEN15: "^"}
    for pt in points:
        label = f"{pt['method']} ({settings.MODEL_NAMES[pt['model']]}, {pt['dtype']}"
        label += f", {pt['steps']} steps)" if pt["steps"] not in (0, settings.STEPS) else ")"
        style = dict(color=COLORS.get(base_method(pt["method"]), "k"), marker=markers.get(pt["model"], "v"), ms=8, capsize=3,
                     mfc="none" if pt["dtype"] == "fp32" else None, ls="none")
        yerr = 100 * pt["std"] if pt["std"] else None
        if pt["rss_mb"] and pt["steps"] in (0, settings.STEPS) or pt["method"] == "fo-lora":
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
    fig.suptitle("SST-2: where each method sits (filled: bf16 compute, hollow: fp32; circles SmolLM2-135M, squares Gemma-3-270M, diamonds Qwen2.5-Coder-0.5B, triangles 1.5B)",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.74, 1))
    fig.savefig(settings.RESULTS / "quality_pareto.png", dpi=110)
    plt.close(fig)


def at_step_budget(pt: dict) -> bool:
    """Whether a Pareto point is at the grid's budget: 300 ZO steps, no training (zero-shot, ICL), or first-order LoRA
    (its steps are whatever fits a 300-step SensZOQ run's time)."""
    return pt["steps"] in (0, settings.STEPS) or pt["method"] == "fo-lora"


def size_lines(summary: list[dict]) -> dict[str, list[dict]]:
    """Per method, its Pareto points at the 300-step budget (or no training; first-order LoRA: a 300-step SensZOQ run's
    time) by model size, one per model: the bf16 row where a model has both (the CPU default)."""
    by_method: dict[str, dict[str, dict]] = {}
    for pt in pareto_points(summary):
        if at_step_budget(pt):
            models = by_method.setdefault(pt["method"], {})
            if pt["model"] not in models or pt["dtype"] == "bf16":
                models[pt["model"]] = pt
    return {m: sorted(models.values(), key=lambda p: settings.MODEL_PARAMS[p["model"]]) for m, models in by_method.items()}


def plot_size(summary: list[dict]) -> None:
    """bench/results/quality_size.png: SST-2 accuracy against model size, a line per method over the models it has a point
    on, at the 300-step budget (each method at its grid lr, as on the Pareto plot; a model's bf16 row where it has one)."""
    plt = _pyplot()
    lines = size_lines(summary)
    if plt is None or len({p["model"] for pts in lines.values() for p in pts}) < 2:  # no matplotlib: `plot_steps_and_density` has said so
        return
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for method, pts in sorted(lines.items()):
        variant = method != base_method(method)  # a method at other settings (ZO-LoRA's own regime, eps 1e-2): dashed, square
        ax.errorbar([settings.MODEL_PARAMS[p["model"]] / 1e6 for p in pts], [100 * p["mean"] for p in pts],
                    yerr=[100 * (p["std"] or 0) for p in pts], color=COLORS.get(base_method(method), "k"), marker="s" if variant else "o",
                    ls="--" if variant else "-", ms=5, capsize=3, label=f"{method} (seeds: {', '.join(str(len(p['seeds'])) for p in pts)})")
    sizes = sorted({settings.MODEL_PARAMS[p["model"]] for pts in lines.values() for p in pts})
    names = {settings.MODEL_PARAMS[m]: settings.MODEL_NAMES[m] for m in settings.MODEL_PARAMS}
    ax.set_xscale("log")
    ax.set_xticks([s / 1e6 for s in sizes], [names[s] for s in sizes], fontsize=7)
    ax.minorticks_off()
    ax.set(xlabel="model", ylabel="SST-2 accuracy % (n=500; mean ± std over seeds)",
           title=f"SST-2 by model size at {settings.STEPS} ZO steps (first-order LoRA: the same time)")
    _save_with_legend_outside(plt, fig, ax, "quality_size.png", 7)
