"""`szoq gc`: remove the debris of interrupted writes (and obsolete caches) and say what was freed."""

from __future__ import annotations

import typer

from .render import note, print_json
from .root import app


@app.command("gc")
def gc_cmd(
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be removed."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Remove what interrupted writes left behind and old GGUF fp32 copies (never a complete entry in use). Example: szoq gc --dry-run"""
    from szoq_hub import collect_garbage

    report = collect_garbage(dry_run=dry_run)
    if as_json:
        print_json(report.to_dict())
        return
    for d in report.removed:  # one line each, never cut: KIND<TAB>BYTES<TAB>PATH
        print(f"{d.kind}\t{d.bytes}\t{d.path}")
    verb = "would free" if dry_run else "freed"
    size = f"{report.freed_bytes / 2**20:.1f} MiB" if report.freed_bytes >= 2**20 else f"{report.freed_bytes:,} bytes"
    busy = f"; {report.busy} temp file(s) of running szoq processes left alone" if report.busy else ""
    note(f"{verb} {size} in {len(report.removed)} item(s){busy}")
