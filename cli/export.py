"""What leaves szoq as files (the library's `export/`): `szoq export peft`, a fine-tuned delta as a PEFT
SHiRA adapter (optionally pushed to the Hub), and `szoq plot`, runs' curves as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from szoq_hub import PeftExportConfig  # torch-free: `szoq export peft --help` builds the options from it

from .mask_hub import PRIVATE, TOKEN
from .options import command, config_from, extra
from .render import note, print_json, push_summary
from .root import app

export_app = typer.Typer(help="Export fine-tuned deltas to other ecosystems.", no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("peft")
@command(PeftExportConfig, extras=(
    extra("push", Optional[str], typer.Option(None, "--push", help="Also publish the adapter to this Hub repo ORG/NAME (one commit + a tag).")),
    extra("tag", Optional[str], typer.Option(None, "--tag", help="Tag for --push (default: v1, or the next vN).")),
    extra("private", bool, PRIVATE), extra("token", Optional[str], TOKEN),
    extra("as_json", bool, typer.Option(False, "--json", help="Print the result as JSON.")),
))
def peft_cmd(*, push: Optional[str] = None, tag: Optional[str] = None, private: bool = False, token: Optional[str] = None,
             as_json: bool = False, **options) -> None:
    """Write a PEFT SHiRA adapter (a --lora run: a PEFT LoRA adapter) equal to `szoq merge` of the delta. Example: szoq export peft --delta runs/sst2 --out sst2-shira"""
    from szoq_hub import check_repo_id, export_peft, push_peft, resolve_delta_ref

    out_dir = Path(options["out"])
    if push is not None:
        check_repo_id(push)  # a bad repo id fails before the export
    options["delta"] = resolve_delta_ref(options["delta"], token=token)
    result = export_peft(config_from(PeftExportConfig, options))
    pushed = push_peft(out_dir, repo_id=push, tag=tag, private=private, token=token) if push is not None else None
    if as_json:
        print_json(result.to_dict() | ({"push": pushed.to_dict()} if pushed else {}))
        return
    print(result.out)
    if pushed is not None:
        push_summary(pushed, repo=push, kind="peft adapter", what=str(out_dir), use="PeftModel.from_pretrained(base, '{ref}')")
    note(f"{result.summary()}; load it with PeftModel.from_pretrained(base, {str(result.out)!r})")


@app.command("plot")
def plot_cmd(
    runs: list[str] = typer.Argument(..., help="szoq finetune output folders (or deltas on the Hub: ORG/NAME or ORG/NAME@REV)."),
    out_file: Path = typer.Option(Path("szoq-plot.png"), "--out", help="The PNG to write."),
) -> None:
    """Plot loss and dev metric against steps from metrics.jsonl. Example: szoq plot runs/sst2 runs/rte --out runs.png"""
    from szoq_hub import plot_runs, resolve_delta_ref

    folders = [resolve_delta_ref(r) for r in runs]
    path = plot_runs([f.parent if f.suffix == ".safetensors" else f for f in folders], out_file, labels=runs)
    print(path)
    note(f"plotted {len(runs)} run(s)")
