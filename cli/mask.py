"""`szoq mask ...`: build, list, show, verify, rm, diff."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from szoq_hub import MaskBuildConfig  # torch-free: `szoq mask build --help` builds the options from it

from .options import command, config_from, extra
from .render import note, print_json, progress_bar, table
from .root import app

_CALIBRATION_DEFAULT = MaskBuildConfig.__dataclass_fields__["calibration"].default

mask_app = typer.Typer(help="Build, inspect and share sensitivity masks.", no_args_is_help=True)
app.add_typer(mask_app, name="mask")


@mask_app.command("build")
@command(MaskBuildConfig, extras=(
    extra("name", Optional[str], typer.Option(None, "--name", help="Registry name (default: derived from the model and scorer).")),
    extra("version", Optional[str], typer.Option(None, "--version", help="Registry version (default: next vN).")),
    extra("out_dir", Optional[Path], typer.Option(None, "--out", help="Also write the artifact folder here.")),
    extra("as_json", bool, typer.Option(False, "--json", help="Print the result as JSON."))))
def build(*, name: Optional[str] = None, version: Optional[str] = None, out_dir: Optional[Path] = None, as_json: bool = False,
          **options) -> None:
    """Compute a sensitivity mask and register it. Example: szoq mask build smollm2-135m-instruct --calibration c4.jsonl.gz"""
    from szoq_hub import Registry, build_mask

    config = config_from(MaskBuildConfig, options)
    scorer, density = config.scorer, config.density
    if scorer != "fisher" and config.calibration != _CALIBRATION_DEFAULT:
        note(f"--calibration is not read by --scorer {scorer}: ignored (and not recorded)")
    with progress_bar() as bar:
        task = bar.add_task("scoring windows" if scorer == "fisher" else f"{scorer} scores (tensors)", total=None, info="")

        def on_progress(done: int, total: int, tokens: int) -> None:
            elapsed = bar.tasks[task].elapsed or 1e-9
            if done == 1:  # time left counts from the first unit, not from model loading
                bar.update(task, first=1, begun=elapsed)
            bar.update(task, completed=done, total=total, info=f"{tokens / elapsed:,.0f} tok/s" if tokens else "")

        plan: dict = {}
        mask, folder = build_mask(config, out_dir, register=True, name=name, version=version, progress=on_progress, plan_out=plan)
        if folder is None:  # not rank 0
            return
    result = {"ref": mask.ref, "path": str(folder), "sha256": Registry().get(mask.ref).sha256, "nnz": mask.nnz, "captured_share": mask.config.stats.get("captured_share")}
    if plan:
        result["passes"] = plan["passes"]
        result["max_memory"] = plan.get("budget")
        result["max_memory_picked"] = bool(plan.get("budget_picked"))
        result["compact_weights"] = bool(plan.get("compact"))  # GGUF linears dequantized on use outside their passes
    if out_dir is not None:
        result["out"] = str(out_dir)
    if as_json:
        print_json(result)
    else:
        print(f"{mask.ref}\t{folder}")
        if plan.get("budget_picked"):
            note(f"memory bound {plan['budget'] / 1e9:.2f} GB, picked from the {plan['available'] / 1e9:.2f} GB available "
                 "(set it with --max-memory; the mask is the same either way)")
        passes = f" in {plan['passes']} passes" if plan.get("passes", 1) > 1 else ""
        passes += " (decoder linears held as GGUF bytes outside their pass: slower, same mask)" if plan.get("compact") else ""
        note(f"built {mask.nnz:,} weights ({scorer}, density {density:g}){passes}; score mass captured {result['captured_share']}")


@mask_app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List local masks and the built-in ones. Example: szoq mask list --json"""
    from szoq_hub import Registry, builtin_masks

    entries = Registry().entries()
    builtins = builtin_masks()
    if as_json:
        print_json({"registry": [e.to_dict() for e in entries],
                    "builtin": [{"name": b.name, "path": str(b.path), "base_model": b.base_model, "scorer": b.scorer, "density": b.density} for b in builtins]})
        return
    rows = [[e.ref, "local", e.sha256[:12], e.created_at, (e.hub or {}).get("repo_id", "")] for e in entries]
    rows += [[b.name, "built-in", b.sha256[:12], "", ""] for b in builtins]
    table(None, ["ref", "kind", "sha256", "created", "hub"], rows)


@mask_app.command("show")
def show(ref: str = typer.Argument(..., help="NAME[@VERSION], a folder, or ORG/NAME[@REV]."),
         as_json: bool = typer.Option(False, "--json", help="Print JSON."),
         plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw a density / captured-share heatmap to this PNG.")) -> None:
    """Show a mask's metadata, stats and per-layer density. Example: szoq mask show smollm2-135m-instruct --plot mask.png"""
    from szoq_hub import SensitivityMask, layer_order

    mask = SensitivityMask.from_pretrained(ref)
    folder, cfg = mask.path, mask.config
    if plot is not None:
        from szoq_hub import plot_mask

        note(f"wrote {plot_mask(mask, plot)}")
    import math

    from szoq_hub import describe_content_hash
    layers = [{"tensor": n, "shape": s, "nnz": int(mask.indices[n].numel()) if n in mask.indices else 0,
               "density": (int(mask.indices[n].numel()) if n in mask.indices else 0) / math.prod(s),
               "captured_share": cfg.stats.get("captured_share_per_tensor", {}).get(n)}
              for n, s in sorted(cfg.shapes.items(), key=lambda item: layer_order(item[0]))]
    from szoq_hub import lr_of_mask

    chosen = lr_of_mask(mask)  # the lr `--lr scores` takes from this mask, None without scores
    if as_json:
        from dataclasses import asdict
        summary = mask.score_summary()
        scores = None if summary is None else {**summary, "lr_scores": None if chosen is None else chosen.record()}
        print_json({"path": str(folder), "config": asdict(cfg), "nnz": mask.nnz, "scores": scores, "layers": layers})
        return
    summary = mask.score_summary()
    scores = ("none (not stored: a magnitude/random mask, or one built before szoq kept scores)" if summary is None
              else f"Σg² per kept weight: min {summary['min']:.3g}, median {summary['median']:.3g}, max {summary['max']:.3g}"
              + ("" if chosen is None else f"; Σ {chosen.per_window:.3g} per calibration window -> --lr scores takes {chosen.lr:g}"))
    facts = [["base model", cfg.base_model], ["fingerprint", cfg.fingerprint[:16]], ["scorer", cfg.scorer],
             ["density", f"{cfg.density:g} ({cfg.scope})"], ["nnz", f"{mask.nnz:,}"],
             ["captured share", cfg.stats.get("captured_share", "n/a")], ["calibration", cfg.calibration],
             ["created", cfg.created_at], ["content sha256", describe_content_hash(cfg.content_sha256)], ["scores", scores], ["path", folder]]
    table(ref, ["fact", "value"], facts)
    table(None, ["tensor", "shape", "nnz", "density", "captured"],
          [[l["tensor"], "x".join(map(str, l["shape"])), l["nnz"], f"{l['density']:.2e}", "n/a" if l["captured_share"] is None else f"{l['captured_share']:.3f}"] for l in layers])


@mask_app.command("verify")
def verify(ref: str = typer.Argument(..., help="NAME[@VERSION], a folder, or ORG/NAME[@REV]."),
           model: Optional[str] = typer.Option(None, help="Also check the fingerprint against this model.")) -> None:
    """Verify a mask artifact (and its fit to a model). Example: szoq mask verify mymask --model smollm2-135m-instruct"""
    from szoq_hub import SensitivityMask

    mask = SensitivityMask.from_pretrained(ref, model=model)
    print(f"ok\t{ref}\t{mask.nnz} weights" + (f"\tmatches {model}" if model else ""))


@mask_app.command("rm")
def rm(ref: str = typer.Argument(..., help="NAME@VERSION, or NAME for every version.")) -> None:
    """Remove a mask from the local registry. Example: szoq mask rm mymask@v1"""
    from szoq_hub import Registry

    for entry in Registry().remove(ref):
        print(f"removed\t{entry.ref}")


@mask_app.command("diff")
def diff(ref_a: str = typer.Argument(..., help="Mask A."), ref_b: str = typer.Argument(..., help="Mask B."),
         as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Overlap of two masks: shared nnz, Jaccard, recall of A in B, per layer. Example: szoq mask diff a@v1 b"""
    from szoq_hub import SensitivityMask, diff_masks

    result = diff_masks(SensitivityMask.from_pretrained(ref_a), SensitivityMask.from_pretrained(ref_b))
    if as_json:
        print_json(result.to_dict())
        return
    table(None, ["tensor", "nnz A", "nnz B", "shared", "jaccard"], [[x.name, x.nnz_a, x.nnz_b, x.shared, f"{x.jaccard:.3f}"] for x in result.layers])
    print(f"shared {result.shared:,} of A {result.nnz_a:,} / B {result.nnz_b:,}; jaccard {result.jaccard:.4f}; recall of A in B {result.recall:.4f}")
