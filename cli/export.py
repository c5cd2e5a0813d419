"""`szoq export peft`: a fine-tuned delta as a PEFT SHiRA adapter (optionally pushed to the Hub)."""

from __future__ import annotations

from pathlib import Path

import typer

from szoq_hub.refs import resolve_delta_ref
from szoq_hub.finetune import DEFAULT_MASK
from szoq_hub.models import DEFAULT_MODEL
from szoq_hub.peft_export import export_peft

from .root import app
from .render import note, print_json

export_app = typer.Typer(help="Export fine-tuned deltas to other ecosystems.", no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("peft")
def peft_cmd(
    delta: str = typer.Option(..., "--delta", help="Run folder, delta.safetensors or ORG/NAME[@REV] on the Hub."),
    out_dir: Path = typer.Option(..., "--out", help="New folder for the adapter (adapter_config.json, adapter_model.safetensors)."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="The base model the delta was fine-tuned from."),
    mask: str = typer.Option(DEFAULT_MASK, "--mask", help="The mask the delta was fine-tuned with."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Write a PEFT SHiRA adapter equal to `szoq merge` of the delta. Example: szoq export peft --delta runs/sst2 --out sst2-shira"""
    result = export_peft(model=model, mask_ref=mask, delta=resolve_delta_ref(delta), out=out_dir)
    if as_json:
        print_json(result.to_dict())
        return
    print(result.out)
    note(f"SHiRA r={result.r}: {result.layers} layers, {result.nnz:,} fine-tuned weights + {result.padding:,} zero-update padding entries; "
         f"load it with PeftModel.from_pretrained(base, {str(result.out)!r})")
