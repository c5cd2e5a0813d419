"""`szoq finetune`, `szoq eval`, `szoq merge`: fine-tune sparse values, score them, bake them in."""

from __future__ import annotations

import inspect
import time
import typing
from pathlib import Path
from typing import Optional

import typer

from szoq_hub import config_from_options, default_of, flag, help_of, option_fields  # torch-free: `szoq --help` builds its options from them

from .root import app
from .render import note, out, print_json, progress_bar

_DEVICE = typer.Option("auto", "--device", help="auto (CUDA when available), cpu, cuda or cuda:N.")
_DTYPE = typer.Option("auto", "--dtype", help="Compute dtype: auto (bf16 on CUDA and on CPUs with native bf16, else fp32), bf16, fp16 or fp32. Sparse values stay fp32.")
_DATA = typer.Option(None, "--data-dir", help="GLUE/SuperGLUE folder (default $SZOQ_DATA_DIR; else `datasets` online).")
# The custom-task options of `finetune` and `eval`.
_TRAIN = typer.Option(None, "--train", help="Custom task: train file (jsonl/csv/tsv; eval takes ICL demonstrations from it).")
_EVAL = typer.Option(None, "--eval", help="Custom task: eval file (default: held out from --train; eval needs no --train for zero-shot).")
_ENCODING = typer.Option("utf-8", "--encoding", help="Custom task: text encoding of the data files, e.g. latin-1.")
_TASK = typer.Option(None, "--task", help="Built-in task: sst2, rte, cb, boolq, wic, wsc, copa or multirc (default sst2; not with a custom task).")
_EVAL_SAMPLES = typer.Option(1000, "--eval-samples", help="Eval examples drawn (built-in task: from validation; custom: from --eval, else held out from --train).")
_DELTA_MODEL = typer.Option(None, "--model", help="Model alias, Hub id, local folder or .gguf file (default: the one the delta was trained on, else the built-in).")
_DELTA_MASK = typer.Option(None, "--mask", help="Mask REF (default: the one the delta was trained with, else the built-in).")
_TEMPLATE = typer.Option(None, "--template", help="Custom task: format string over row fields, e.g. '{text} It was'.")
_LABELS = typer.Option(None, "--labels", help="Custom task: label=word pairs, e.g. '0=terrible,1=great'.")
_LABEL_FIELD = typer.Option("label", "--label-field", help="Custom task: the row field holding the label.")
_TASK_FILE = typer.Option(None, "--task-file", help="Custom task as a JSON/YAML file.")


def _finetune_parameters() -> list[inspect.Parameter]:
    """One option per FinetuneConfig / ZOConfig field: flag, default and help come from the field."""
    params = []
    for cls, f in option_fields():
        hint = typing.get_type_hints(cls)[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        default = default_of(cls, f)
        annotation = Optional[args[0]] if args else Optional[hint] if default is None else hint  # Typer reads Optional[X]
        option = typer.Option(default, flag(f.name, cls), help=help_of(cls, f))
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation))
    resume = typer.Option(False, "--resume", help="Insist on continuing the stopped run in --out (error when there is none).")
    as_json = typer.Option(False, "--json", help="Print the result as JSON.")
    return [*params, inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY, default=resume, annotation=bool),
            inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, default=as_json, annotation=bool)]


def finetune_cmd(*, resume: bool = False, as_json: bool = False, **options) -> None:
    """ZO fine-tune the sparse values of a quantized model (--dense: every linear weight, the MeZO baseline; --lora R: LoRA adapters). Example: szoq finetune --task sst2 --steps 300 --out runs/sst2"""
    from szoq_hub import finetune, is_main_process

    config = config_from_options(options)
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
        return
    out.print(str(result.out), markup=False)
    note(f"eval {result.metric} {result.eval_metric:.4f} (best dev {result.best_dev} at step {result.best_step}); {result.seconds:.0f} s")


finetune_cmd.__signature__ = inspect.Signature(_finetune_parameters())  # type: ignore[attr-defined]
finetune_cmd.__annotations__ = {p.name: p.annotation for p in finetune_cmd.__signature__.parameters.values()}
app.command("finetune")(finetune_cmd)


def _resume_note(e: dict, out_dir: Path) -> str:
    redone = f"; {e['redone']} logged steps are redone (set aside in metrics.redone.jsonl)" if e.get("redone") else ""
    if e.get("checkpoint") is None:
        return f"continuing {out_dir}: it has no checkpoint yet (the run stopped before its first checkpoint): starting again from step 0{redone}"
    return f"resuming {out_dir} from its checkpoint at step {e['checkpoint']} of {e['steps']}{redone}"


@app.command("eval")
def eval_cmd(
    model: Optional[str] = _DELTA_MODEL, mask: Optional[str] = _DELTA_MASK, task: Optional[str] = _TASK,
    train: Optional[str] = _TRAIN, eval_file: Optional[str] = _EVAL, template: Optional[str] = _TEMPLATE,
    labels: Optional[str] = _LABELS, label_field: str = _LABEL_FIELD, task_file: Optional[str] = _TASK_FILE,
    encoding: str = _ENCODING,
    delta: Optional[Path] = typer.Option(None, "--delta", help="Run folder, delta.safetensors or ORG/NAME[@REV] on the Hub (default: zero-shot); also a --dense or --lora run's folder."),
    icl_shots: int = typer.Option(0, "--icl-shots", help="In-context demonstrations per example."),
    quant: Optional[str] = typer.Option(None, "--quant", help="Base quantization: nf4, fp4, int8 or none (default nf4; a --dense run's weights: fp32, none)."),
    device: str = _DEVICE, dtype: Optional[str] = _DTYPE,
    eval_samples: int = _EVAL_SAMPLES,
    batch_size: int = typer.Option(32, "--batch-size", help="Evaluation batch size."),
    seed: int = typer.Option(0, "--seed", help="Seed of sampling and demonstrations."),
    data_dir: Optional[str] = _DATA,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Score zero-shot, in-context or fine-tuned. Example: szoq eval --task sst2 --delta runs/sst2"""
    from szoq_hub import EvalConfig, evaluate, resolve_delta_ref

    config = EvalConfig(model=model, mask=mask, task=task, train_file=train, eval_file=eval_file, template=template, labels=labels,
                        label_field=label_field, task_file=task_file, encoding=encoding, delta=str(resolve_delta_ref(str(delta))) if delta else None,
                        icl_shots=icl_shots, quant=quant, device=device, dtype=dtype, eval_samples=eval_samples, batch_size=batch_size, seed=seed,
                        data_dir=data_dir)
    result = evaluate(config)
    if as_json:
        print_json(result.to_dict())
        return
    out.print(f"{result.task}\t{result.mode}\t{result.metric}\t{result.value:.4f}\t{result.n}", markup=False)


@app.command("merge")
def merge_cmd(
    model: Optional[str] = _DELTA_MODEL, mask: Optional[str] = _DELTA_MASK,
    delta: Path = typer.Option(..., "--delta", help="Run folder, delta.safetensors or ORG/NAME[@REV] on the Hub; also a --dense or --lora run's folder."),
    out_dir: Path = typer.Option(..., "--out", help="Folder for the merged transformers model."),
    dtype: str = typer.Option("fp32", "--dtype", help="dtype of the saved weights: fp32, bf16 or fp16."),
    device: str = _DEVICE,
) -> None:
    """Write a plain transformers model with the fine-tuned values applied. Example: szoq merge --delta runs/sst2 --out merged/"""
    from szoq_hub import merge, resolve_delta_ref

    folder = merge(model=model, mask_ref=mask, delta=resolve_delta_ref(str(delta)), out=out_dir, dtype=dtype, device=device)
    out.print(str(folder), markup=False)
