"""`szoq plot RUN [RUN...]`: loss and dev metric against steps, several runs overlaid (PNG)."""

from __future__ import annotations

from pathlib import Path

import typer

from .root import app
from .render import note


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
