"""`szoq delta push / pull`: share fine-tuned deltas through the Hugging Face Hub, like masks."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from szoq_hub.hub import check_repo_id, pull_delta, push_delta
from szoq_hub.registry import parse_ref

from .app import app
from .mask_hub import TOKEN_HELP
from .render import note, print_json, push_summary

delta_app = typer.Typer(help="Share fine-tuned deltas (szoq finetune output folders) through the Hub.", no_args_is_help=True)
app.add_typer(delta_app, name="delta")


@delta_app.command("push")
def push(
    folder: Path = typer.Argument(..., help="Output folder of a finished szoq finetune run."),
    repo: str = typer.Option(..., "--repo", help="Hub repo ORG/NAME (created if missing)."),
    tag: Optional[str] = typer.Option(None, help="Tag for this version (default: v1, or the next vN)."),
    private: bool = typer.Option(False, "--private", help="Create the repo as private."),
    token: Optional[str] = typer.Option(None, "--token", help=TOKEN_HELP, show_default=False),
    create_pr: bool = typer.Option(False, "--create-pr", help="Open a pull request instead of committing to main."),
    message: Optional[str] = typer.Option(None, "--message", "-m", help="Commit title."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Publish a fine-tuned delta to the Hub (one commit + a tag). Example: szoq delta push runs/sst2 --repo my-team/sst2"""
    result = push_delta(folder, repo_id=repo, tag=tag, private=private, token=token, create_pr=create_pr, message=message)
    if as_json:
        print_json(result.to_dict())
        return
    push_summary(result, repo=repo, kind="delta", what=str(folder), use="szoq eval --delta {ref}")


@delta_app.command("pull")
def pull(
    ref: str = typer.Argument(..., help="ORG/NAME[@REV]; REV is a tag, branch or commit sha (default: main)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Also copy the files into this new folder."),
    token: Optional[str] = typer.Option(None, "--token", help=TOKEN_HELP, show_default=False),
    offline: bool = typer.Option(False, "--offline", help="Use only the local Hugging Face cache (also HF_HUB_OFFLINE=1)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Download and verify a fine-tuned delta from the Hub. Example: szoq delta pull my-team/sst2@v1 --out runs/team"""
    repo_id, revision = parse_ref(ref)
    result = pull_delta(check_repo_id(repo_id), revision=revision, token=token, offline=offline, out=out_dir)
    if as_json:
        print_json(result.to_dict())
        return
    print(f"{result.ref}\t{result.path}\t{result.commit}")
    note(f"verified {repo_id}@{result.revision} (commit {result.commit[:7]})" + (" from the local cache" if result.from_cache else "")
         + f"; use it with: szoq eval --delta {result.ref}")
