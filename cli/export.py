"""`szoq export peft`: a fine-tuned delta as a PEFT SHiRA adapter (optionally pushed to the Hub)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .root import app
from .mask_hub import PRIVATE, TOKEN
from .render import note, print_json, push_summary

export_app = typer.Typer(help="Export fine-tuned deltas to other ecosystems.", no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("peft")
def peft_cmd(
    delta: str = typer.Option(..., "--delta", help="Run folder, delta.safetensors, or ORG/NAME or ORG/NAME@REV on the Hub."),
    out_dir: Path = typer.Option(..., "--out", help="New folder for the adapter (adapter_config.json, adapter_model.safetensors)."),
    model: Optional[str] = typer.Option(None, "--model", help="The base model the delta was fine-tuned from (default: the one the delta records, else the built-in)."),
    mask: Optional[str] = typer.Option(None, "--mask", help="The mask the delta was fine-tuned with (default: the one the delta records, else the built-in; not for a --lora run)."),
    push: Optional[str] = typer.Option(None, "--push", help="Also publish the adapter to this Hub repo ORG/NAME (one commit + a tag)."),
    tag: Optional[str] = typer.Option(None, help="Tag for --push (default: v1, or the next vN)."),
    private: bool = PRIVATE,
    token: Optional[str] = TOKEN,
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Write a PEFT SHiRA adapter (a --lora run: a PEFT LoRA adapter) equal to `szoq merge` of the delta. Example: szoq export peft --delta runs/sst2 --out sst2-shira"""
    from szoq_hub import check_repo_id, export_peft, push_peft, resolve_delta_ref

    if push is not None:
        check_repo_id(push)  # a bad repo id fails before the export
    result = export_peft(model=model, mask_ref=mask, delta=resolve_delta_ref(delta, token=token), out=out_dir)
    pushed = push_peft(out_dir, repo_id=push, tag=tag, private=private, token=token) if push is not None else None
    if as_json:
        print_json(result.to_dict() | ({"push": pushed.to_dict()} if pushed else {}))
        return
    print(result.out)
    if pushed is not None:
        push_summary(pushed, repo=push, kind="peft adapter", what=str(out_dir), use="PeftModel.from_pretrained(base, '{ref}')")
    note(f"{result.summary()}; load it with PeftModel.from_pretrained(base, {str(result.out)!r})")
