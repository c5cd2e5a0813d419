"""`szoq finetune`, `szoq eval`, `szoq merge`: fine-tune sparse values, score them, bake them in."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from szoq_hub import EvalConfig, FinetuneConfig, MergeConfig  # torch-free: `szoq --help` builds the options from them

from .options import command, config_from, extra
from .render import note, out, print_json, progress_bar
from .root import app

_JSON = typer.Option(False, "--json", help="Print the result as JSON.")


def finetune_config(options: dict) -> FinetuneConfig:
    """The run's settings from flat options: every method's and the ZO fields beside the rest.

    The method is --method NAME, else the one a selecting option picks (--dense, --lora R), else
    sparse; another method's options are refused, not ignored; --lr left out: the method's own.

    Raises:
        ConfigError: an invalid value (see FinetuneConfig, ZOConfig and the method's config), two
            methods chosen, or another method's options given.
    """
    return config_from(FinetuneConfig, options)


@app.command("finetune")
@command(FinetuneConfig, extras=(
    extra("resume", bool, typer.Option(False, "--resume", help="Insist on continuing the stopped run in --out (error when there is none).")),
    extra("as_json", bool, _JSON)))
def finetune_cmd(*, resume: bool = False, as_json: bool = False, **options) -> None:
    """ZO fine-tune the sparse values of a quantized model (--dense: every linear weight, the MeZO baseline; --lora R: LoRA adapters). Example: szoq finetune --task sst2 --steps 300 --out runs/sst2"""
    from szoq_hub import finetune, is_main_process

    config = finetune_config(options)
    out_dir = Path(config.out)
    with progress_bar() as bar:
        bar_task = bar.add_task("loading", total=config.steps, info="")
        state = {"dev": "-", "t0": time.perf_counter(), "first": 0}

        def on_progress(e: dict) -> None:
            if e["kind"] == "start":
                state.update(first=e["start"], t0=time.perf_counter())
                note(e["split"])
                if e.get("resumed"):
                    note(_resume_note(e, out_dir))
                bar.update(bar_task, description=f"{e['task']} ZO", completed=e["start"], first=e["start"], begun=bar.tasks[bar_task].elapsed or 0.0)
            elif e["kind"] == "lr_scores":
                note(f"lr scores: Σg² {e['per_window']:.3g} per calibration window -> lr {e['lr']:g}" if e["per_window"] is not None
                     else f"lr {e['lr']:g}: the method's default (the mask stores no Σg² scores to set it from)")
            elif e["kind"] == "lr_auto":
                kept = " (kept from the run's probe)" if e["resumed"] else ""
                note(f"lr auto: median |g| {e['median_grad']:.3g} over {e['probes']} probes -> lr {e['lr']:g}{kept}")
            elif e["kind"] == "eval":
                state["dev"] = f"{e['dev']:.3f}"
            elif e["kind"] == "step":
                rate = (e["step"] - state["first"]) / max(time.perf_counter() - state["t0"], 1e-9)
                bar.update(bar_task, completed=e["step"],
                           info=f"loss {e['loss']:.4f} |g| {e['grad']:.3g} lr {e['lr']:.2g} {rate:.2f} step/s dev {state['dev']}")

        result = finetune(config, resume=True if resume else None, progress=on_progress)
    if not is_main_process():
        return
    data = {"out": str(result.out), "steps": result.steps, "metric": result.metric, "best_step": result.best_step,
            "best_dev": result.best_dev, "eval": result.eval_metric, "seconds": round(result.seconds, 1),
            "dtype": result.dtype, "micro_batch_size": result.micro_batch_size, "micro_batch_tokens": result.micro_batch_tokens}
    if as_json:
        print_json(data)
    else:
        out.print(str(result.out), markup=False)
        note(f"eval {result.metric} {result.eval_metric:.4f} (best dev {result.best_dev} at step {result.best_step}); {result.seconds:.0f} s")
    if result.kept_start:
        note("no step beat the untouched model on dev: kept it (the result is the model you started from)")
        note(f"hint: try a smaller --lr, e.g. --lr {result.lr / 10:g}, in a new --out")


def _resume_note(e: dict, out_dir: Path) -> str:
    redone = f"; {e['redone']} logged steps are redone (set aside in metrics.redone.jsonl)" if e.get("redone") else ""
    if e.get("checkpoint") is None:
        return f"continuing {out_dir}: it has no checkpoint yet (the run stopped before its first checkpoint): starting again from step 0{redone}"
    return f"resuming {out_dir} from its checkpoint at step {e['checkpoint']} of {e['steps']}{redone}"


@app.command("eval")
@command(EvalConfig, extras=(extra("as_json", bool, _JSON),))
def eval_cmd(*, as_json: bool = False, **options) -> None:
    """Score zero-shot, in-context or fine-tuned. Example: szoq eval --task sst2 --delta runs/sst2"""
    from szoq_hub import evaluate, resolve_delta_ref

    if options.get("delta"):
        options["delta"] = str(resolve_delta_ref(options["delta"]))
    result = evaluate(config_from(EvalConfig, options))
    if as_json:
        print_json(result.to_dict())
        return
    out.print(f"{result.task}\t{result.mode}\t{result.metric}\t{result.value:.4f}\t{result.n}", markup=False)


@app.command("merge")
@command(MergeConfig)
def merge_cmd(**options) -> None:
    """Write a plain transformers model with the fine-tuned values applied. Example: szoq merge --delta runs/sst2 --out merged/"""
    from szoq_hub import merge, resolve_delta_ref

    options["delta"] = resolve_delta_ref(options["delta"])
    folder = merge(config_from(MergeConfig, options))
    out.print(str(folder), markup=False)
