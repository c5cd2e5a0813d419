"""Pictures of runs and masks (PNG, matplotlib as an optional extra: `pip install 'szoq[plots]'`).

- `plot_runs`: loss and dev metric against steps from each run's `metrics.jsonl`, several runs
  overlaid. The loss of one ZO step is the mean of two perturbed losses on one batch, so it is
  noisy: each run is drawn faint as logged and solid as a moving average.
- `plot_mask`: two heatmaps over (layer, projection): the density of the mask in each matrix
  and the share of that matrix's score mass (Σg² for fisher) its selected weights capture
  (recorded by `build_mask` since szoq 0.1; older masks show the density panel only).
Figures are built with `matplotlib.figure.Figure` (no pyplot global state, no GUI backend).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from ..core.errors import ConfigError, DependencyError
from ..core.schema import is_int, is_number
from ..masks.artifact import MaskData
from ..core.files import atomic_file

PLOTS_HINT = "pip install 'szoq[plots]'  (matplotlib)"
METRICS_FILE = "metrics.jsonl"  # what szoq finetune writes (szoq_hub.training.finetune)
_ORDER = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # data flow in a Llama block
_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks)\.(\d+)\.(.+?)(?:\.weight)?$")


def _figure(**kwargs):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise DependencyError("plots need matplotlib, which is not installed", hint=PLOTS_HINT) from None
    return Figure(**kwargs)


def _save(fig, out: Path) -> Path:
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"{out}: plots are written as PNG", hint="name the file FILE.png")
    with atomic_file(out) as tmp:
        fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight")
    return out


def read_metrics(run: Path) -> list[dict]:
    """The rows of a run's `metrics.jsonl`, type-checked (a line cut off by a crash is skipped).

    A run folder may come from the Hub, so every row the plot reads is checked here: a `step`
    row needs an integer `step` and a finite `loss`; an `eval` row an integer `step`; a `final` row a finite `eval_metric` and a string `metric` when it has them. Rows of
    other kinds are left out.

    Raises:
        ConfigError: the folder holds no `metrics.jsonl`, or a row of the wrong shape.
    """
    path = Path(run) / METRICS_FILE
    if not path.is_file():
        raise ConfigError(f"{run} holds no {METRICS_FILE}", hint="pass the --out folder of szoq finetune (or a pulled delta)")
    rows = []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except ValueError:  # a line cut off by a crash
            continue
        except RecursionError:
            row = None
        if not isinstance(row, dict) or not _row_ok(row):
            raise ConfigError(f"{path} line {n} is not a metrics row szoq wrote", hint="the run folder is damaged: plot another run, or fine-tune again")
        if row.get("kind") in ("step", "eval", "final"):
            rows.append(row)
    return rows


def _row_ok(row: dict) -> bool:
    kind = row.get("kind")
    if kind == "step":
        return is_int(row.get("step")) and is_number(row.get("loss"))
    if kind == "eval":
        return is_int(row.get("step"))  # its metric values are filtered where they are drawn
    if kind == "final":
        return (row.get("metric") is None or isinstance(row["metric"], str)) and ("eval_metric" not in row or is_number(row["eval_metric"]))
    return True


def _moving_average(ys: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= window:
            acc -= ys[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_runs(runs: list[Path], out: Path, *, labels: list[str] | None = None) -> Path:
    """Draw loss and dev metric against steps for one or more runs, overlaid.

    Args:
        runs: Run folders (each with `metrics.jsonl`).
        out: The PNG to write (atomically).
        labels: Legend names (default: the folder names).

    Returns:
        `out`.

    Raises:
        ConfigError: no runs, a folder without `metrics.jsonl`, or `out` not a .png.
        DependencyError: matplotlib is missing.
    """
    if not runs:
        raise ConfigError("no run to plot", hint="pass one or more szoq finetune output folders")
    data = [read_metrics(r) for r in runs]
    labels = labels or [Path(r).name or str(r) for r in runs]
    fig = _figure(figsize=(11, 4.2))
    ax_loss, ax_dev = fig.subplots(1, 2)
    metric_names = set()
    for i, (rows, label) in enumerate(zip(data, labels)):
        color = f"C{i % 10}"
        steps = [r for r in rows if r.get("kind") == "step"]
        xs = [r["step"] + 1 for r in steps]  # steps done
        ys = [float(r["loss"]) for r in steps]
        if xs:
            ax_loss.plot(xs, ys, color=color, alpha=0.25, linewidth=0.8)
            window = max(1, len(xs) // 20)
            ax_loss.plot(xs, _moving_average(ys, window), color=color, linewidth=2, label=f"{label} (avg of {window})" if window > 1 else label)
        final = next((r for r in rows if r.get("kind") == "final"), None)
        metric = final.get("metric") if final else None
        evals = [r for r in rows if r.get("kind") == "eval"]
        if metric is None and evals:
            metric = next((k for k in evals[0] if k not in ("kind", "step", "split")), None)
        evals = [r for r in evals if is_number(r.get(metric))]
        if metric is not None and evals:
            metric_names.add(metric)
            ax_dev.plot([r["step"] for r in evals], [r[metric] for r in evals], "o-", color=color, linewidth=2, label=f"{label} dev")
        if final is not None and xs and "eval_metric" in final:
            ax_dev.plot([xs[-1]], [final["eval_metric"]], "*", color=color, markersize=13, label=f"{label} eval {final['eval_metric']:.3f}")
    ax_loss.set(title="training loss (ZO, mean of the two perturbed losses)", xlabel="step", ylabel="loss")
    ax_dev.set(title="dev metric (★: final eval)", xlabel="step", ylabel=" / ".join(sorted(metric_names)) or "metric")
    for ax in (ax_loss, ax_dev):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out)


def mask_grid(mask: MaskData) -> tuple[list[str], list[str], dict[tuple[str, str], dict]]:
    """Arrange a mask's tensors as (layer, projection) cells.

    Returns:
        (layer labels, projection labels, {(layer, projection): {"density", "captured_share"}}).
        Tensors outside numbered layers go to a row named after their module.
    """
    shares = mask.config.stats.get("captured_share_per_tensor") or {}
    placed: list[tuple[str, str, str]] = []  # (layer, module path, tensor)
    for name in mask.config.shapes:
        m = _LAYER.search(name)
        placed.append((m.group(1), m.group(2), name) if m else (name.removesuffix(".weight"), "weight", name))
    short = {path: path.rsplit(".", 1)[-1] for _, path, _ in placed}
    if len(set(short.values())) < len(short):  # two projections share a last name: keep the path
        short = {p: p for p in short}
    layers, projs, cells = [], [], {}
    for layer, path, name in placed:
        col = short[path]
        if layer not in layers:
            layers.append(layer)
        if col not in projs:
            projs.append(col)
        nnz = int(mask.indices[name].numel()) if name in mask.indices else 0
        cells[(layer, col)] = {"density": nnz / math.prod(mask.config.shapes[name]), "captured_share": shares.get(name)}
    layers.sort(key=lambda l: (0, int(l), "") if l.isdigit() else (1, 0, l))
    projs.sort(key=lambda p: (_ORDER.index(p) if p in _ORDER else len(_ORDER), p))
    return layers, projs, cells


def plot_mask(mask: MaskData, out: Path, *, title: str | None = None) -> Path:
    """Heatmaps of a mask's density and captured score share per layer and projection.

    Args:
        mask: The mask.
        out: The PNG to write (atomically).
        title: Figure title (default: base model, scorer, density).

    Returns:
        `out`.

    Raises:
        ConfigError: `out` is not a .png. DependencyError: matplotlib is missing.
    """
    import numpy as np

    layers, projs, cells = mask_grid(mask)
    density = np.full((len(layers), len(projs)), np.nan)
    share = np.full((len(layers), len(projs)), np.nan)
    for (layer, proj), cell in cells.items():
        i, j = layers.index(layer), projs.index(proj)
        density[i, j] = cell["density"]
        if cell["captured_share"] is not None:
            share[i, j] = cell["captured_share"]
    has_share = not np.isnan(share).all()
    height = min(max(3.0, 0.22 * len(layers) + 1.6), 14.0)
    width = (1.2 + 0.55 * len(projs)) * (2 if has_share else 1) + 1.5
    fig = _figure(figsize=(width, height))
    axes = fig.subplots(1, 2 if has_share else 1, squeeze=False)[0]
    from matplotlib.colors import LogNorm

    positive = density[density > 0]
    cmap_density = _cmap("magma")
    if positive.size and positive.max() > 1.5 * positive.min():  # global scope: spans decades
        density_kw = {"norm": LogNorm(vmin=float(positive.min()), vmax=float(positive.max()))}
    else:  # per-matrix: one density up to rounding; a linear scale from 0 shows it as flat
        density_kw = {"vmin": 0.0, "vmax": 1.25 * float(positive.max()) if positive.size else 1.0}
    panels = [(axes[0], np.where(density > 0, density, np.nan), "density (selected / weights; grey: none)", cmap_density, density_kw)]
    if has_share:
        top = float(np.nanmax(share))  # the scale ends at the largest cell: magnitude masks hold ~1%, fisher ~50%
        panels.append((axes[1], share, "captured share of each matrix's score mass", _cmap("viridis"), {"vmin": 0.0, "vmax": top if top > 0 else 1.0}))
    for ax, grid, label, cmap, kw in panels:
        image = ax.imshow(grid, aspect="auto", cmap=cmap, interpolation="nearest", **kw)
        ax.set_xticks(range(len(projs)), projs, rotation=45, ha="right", fontsize=8)
        step = max(1, len(layers) // 16)
        ax.set_yticks(range(0, len(layers), step), layers[::step], fontsize=8)
        ax.set(xlabel="projection", ylabel="layer", title=label)
        ax.title.set_fontsize(10)
        fig.colorbar(image, ax=ax, fraction=0.08, pad=0.03)
    cfg = mask.config
    fig.suptitle(title or f"{cfg.base_model}: {cfg.scorer} mask, density {cfg.density:g} ({cfg.scope}), nnz {mask.nnz:,}"
                 + (f", captured {cfg.stats['captured_share']:.1%}" if isinstance(cfg.stats.get("captured_share"), (int, float)) else ""),
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, out)


def _cmap(name: str):
    import matplotlib

    return matplotlib.colormaps[name].with_extremes(bad="#dddddd")  # grey: nothing selected / nothing recorded
