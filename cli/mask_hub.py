"""`szoq mask push / pull / info / search`: share masks through the Hugging Face Hub."""

from __future__ import annotations

from typing import Optional

import typer

from szoq_hub import remember

from .mask import mask_app
from .render import note, print_json, push_summary, table

TOKEN_HELP = "Hub token (default: HF_TOKEN or the `hf auth login` token). Never printed."
# Options shared by every Hub command (masks here, deltas in delta.py).
REPO = typer.Option(..., "--repo", help="Hub repo ORG/NAME (created if missing).")
PRIVATE = typer.Option(False, "--private", help="Create the repo as private.")


def _remember_token(token: Optional[str]) -> Optional[str]:
    """Scrub a --token from all output (errors, logs, echoes of a server), whatever its shape, as soon as it is parsed."""
    if token:
        remember(token)
    return token


TOKEN = typer.Option(None, "--token", help=TOKEN_HELP, show_default=False, callback=_remember_token)
CREATE_PR = typer.Option(False, "--create-pr", help="Open a pull request instead of committing to main.")
MESSAGE = typer.Option(None, "--message", "-m", help="Commit title.")
OFFLINE = typer.Option(False, "--offline", help="Use only the local Hugging Face cache (also HF_HUB_OFFLINE=1).")
JSON = typer.Option(False, "--json", help="Print the result as JSON.")


def _hub_ref(ref: str) -> tuple[str, str | None]:
    from szoq_hub import check_repo_id, parse_ref

    repo_id, revision = parse_ref(ref)
    return check_repo_id(repo_id), revision


@mask_app.command("push")
def push(
    ref: str = typer.Argument(..., help="Local mask: NAME[@VERSION] or an artifact folder."),
    repo: str = REPO,
    tag: Optional[str] = typer.Option(None, help="Tag for this version (default: the registry version, e.g. v2)."),
    private: bool = PRIVATE,
    token: Optional[str] = TOKEN,
    create_pr: bool = CREATE_PR,
    message: Optional[str] = MESSAGE,
    as_json: bool = JSON,
) -> None:
    """Publish a mask to a Hub repo (one commit + a tag). Example: szoq mask push mymask@v2 --repo my-team/smollm2-mask"""
    from szoq_hub import SensitivityMask

    mask = SensitivityMask.from_pretrained(ref)
    result = mask.push_to_hub(repo, tag=tag, private=private, token=token, create_pr=create_pr, message=message)
    if as_json:
        print_json(result.to_dict())
        return
    push_summary(result, repo=repo, kind="mask", what=str(ref), use="szoq finetune --mask {ref}")


@mask_app.command("pull")
def pull(
    ref: str = typer.Argument(..., help="ORG/NAME[@REV]; REV is a tag, branch or commit sha (default: main)."),
    name: Optional[str] = typer.Option(None, "--name", help="Local registry name (default: the repo NAME)."),
    token: Optional[str] = TOKEN,
    offline: bool = OFFLINE,
    as_json: bool = JSON,
) -> None:
    """Download, verify and register a mask from the Hub. Example: szoq mask pull my-team/smollm2-mask@v2 --name team"""
    from szoq_hub import pull_mask

    repo_id, revision = _hub_ref(ref)
    result = pull_mask(repo_id, revision=revision, name=name, token=token, offline=offline)
    if as_json:
        print_json(result.to_dict())
        return
    print(f"{result.ref}\t{result.path}\t{result.commit}")
    note(f"registered {repo_id}@{result.revision} (commit {result.commit[:7]}) as {result.ref}" + (" from the local cache" if result.from_cache else ""))


@mask_app.command("info")
def info(
    ref: str = typer.Argument(..., help="ORG/NAME[@REV] on the Hub."),
    token: Optional[str] = TOKEN,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show a Hub mask's facts from its header only (no download). Example: szoq mask info my-team/smollm2-mask@v1"""
    from szoq_hub import mask_info

    repo_id, revision = _hub_ref(ref)
    result = mask_info(repo_id, revision=revision, token=token)
    if as_json:
        print_json(result.to_dict())
        return
    calib = result.calibration or {}
    facts = [["base model", result.base_model], ["scorer", result.scorer], ["density", f"{result.density:g} ({result.scope})"],
             ["nnz", f"{result.nnz:,} in {result.tensors} tensors"],
             ["calibration", f"{calib.get('source', 'none')}, {calib.get('samples', '-')} x {calib.get('seq_len', '-')} tokens, seed {calib.get('seed', '-')}"],
             ["fingerprint", result.fingerprint[:16]], ["commit", result.commit], ["read", f"{result.bytes_read:,} of {result.file_size or 0:,} bytes"]]
    table(f"{repo_id}@{result.revision}", ["fact", "value"], facts)


@mask_app.command("search")
def search(
    base_model: Optional[str] = typer.Option(None, "--base-model", help="Only masks for this base model (Hub id)."),
    author: Optional[str] = typer.Option(None, "--author", help="Only repos of this user or organisation."),
    limit: int = typer.Option(100, help="At most this many results."),
    token: Optional[str] = TOKEN,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List Hub repos tagged szoq/sensitivity-mask. Example: szoq mask search --base-model HuggingFaceTB/SmolLM2-135M"""
    from szoq_hub import search_masks

    results = search_masks(base_model=base_model, author=author, token=token, limit=limit)
    if as_json:
        print_json([r.to_dict() for r in results])
        return
    table(None, ["repo", "base model", "scorer", "density", "nnz", "updated"],
          [[r.repo_id, r.base_model or "", r.scorer or "", "" if r.density is None else f"{r.density:g}", r.nnz or "", (r.last_modified or "")[:10]] for r in results])
    note(f"{len(results)} mask repo(s)")
