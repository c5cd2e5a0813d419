"""`szoq delta push / pull`: share fine-tuned deltas through the Hugging Face Hub, like masks."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .root import app
from .mask_hub import CREATE_PR, JSON, MESSAGE, OFFLINE, PRIVATE, REPO, TOKEN
from .render import note, print_json, push_summary

delta_app = typer.Typer(help="Share fine-tuned deltas (szoq finetune output folders) through the Hub.", no_args_is_help=True)
app.add_typer(delta_app, name="delta")


@delta_app.command("push")
def push(
    folder: Path = typer.Argument(..., help="Output folder of a finished szoq finetune run."),
    repo: str = REPO,
    tag: Optional[str] = typer.Option(None, help="Tag for this version (default: v1, or the next vN)."),
    private: bool = PRIVATE,
    token: Optional[str] = TOKEN,
    create_pr: bool = CREATE_PR,
    message: Optional[str] = MESSAGE,
    as_json: bool = JSON,
) -> None:
    """Publish a fine-tuned delta to the Hub (one commit + a tag). Example: szoq delta push runs/sst2 --repo my-team/sst2"""
    from szoq_hub import push_delta

    # push_delta, not Delta.from_pretrained(folder).push_to_hub: loading first would replace the push's
    # own refusals (not a delta folder, a --dense run, a local path) with the loader's messages.
    result = push_delta(folder, repo_id=repo, tag=tag, private=private, token=token, create_pr=create_pr, message=message)
    if as_json:
        print_json(result.to_dict())
        return
    push_summary(result, repo=repo, kind="delta", what=str(folder), use="szoq eval --delta {ref}")


@delta_app.command("pull")
def pull(
    ref: str = typer.Argument(..., help="ORG/NAME[@REV]; REV is a tag, branch or commit sha (default: main)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Also copy the files into this new folder."),
    token: Optional[str] = TOKEN,
    offline: bool = OFFLINE,
    as_json: bool = JSON,
) -> None:
    """Download and verify a fine-tuned delta from the Hub. Example: szoq delta pull my-team/sst2@v1 --out runs/team"""
    from szoq_hub import check_repo_id, parse_ref, pull_delta

    repo_id, revision = parse_ref(ref)
    result = pull_delta(check_repo_id(repo_id), revision=revision, token=token, offline=offline, out=out_dir)
    if as_json:
        print_json(result.to_dict())
        return
    print(f"{result.ref}\t{result.path}\t{result.commit}")
    note(f"verified {repo_id}@{result.revision} (commit {result.commit[:7]})" + (" from the local cache" if result.from_cache else "")
         + f"; use it with: szoq eval --delta {result.ref}")
