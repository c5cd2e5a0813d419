"""Sharing a fine-tuned run through the Hub, whatever its method: `delta push`, `delta pull` and
`--delta ORG/NAME[@REV]`.

A method shares its runs when its `MethodResult.hub` names a transport `Artifact` (the sparse
method's delta, methods/sparse/delta.py); a run of a method without one is refused with a message
naming the method. A Hub ref is pulled as the first shareable method's artifact that the repo holds.
"""

from __future__ import annotations

from pathlib import Path

from ..core.errors import ConfigError, HubError, shorten
from ..core.files import path_exists
from ..hub.refs import no_local_folder
from ..hub.transport import PullResult, PushResult, check_repo_id, is_hub_ref
from ..masks.registry import parse_ref
from .registry import method_of_result, methods


def push_delta(folder: str | Path, *, repo_id: str, tag: str | None = None, private: bool = False, token: str | None = None,
               create_pr: bool = False, message: str | None = None) -> PushResult:
    """Publish a fine-tuned run (a `szoq finetune` output folder) to a Hub repo, like a mask.

    Uploads the run's final file, `finetune_config.json`, `metrics.jsonl` (when present) and a
    card in one commit on top of the head read just before, then tags it. Checkpoints are never
    uploaded. Pushing what a tag (or main) already holds makes no commit.

    Args:
        folder: The run folder (or its final file).
        repo_id: `ORG/NAME` of the Hub repo (created if missing, as a model repo).
        tag: Tag to create; default `v1`, or the next `vN` when the repo has tags already.
        private: Create the repo as private (an existing repo keeps its visibility).
        token: Hub token; default `HF_TOKEN` or the login.
        create_pr: Open a pull request instead of committing to main (no tag is created).
        message: Commit title.

    Returns:
        PushResult with the repo URL, commit sha, tag and status (`ref` is None).

    Raises:
        ConfigError: bad repo id or tag, or a folder that is not a run.
        MaskError: a corrupt or unfinished run, one that records a local path, or one whose method
            is not shared on the Hub.
        HubError: auth, race (parent moved), tag taken by another delta, network.
    """
    check_repo_id(repo_id)
    path = Path(folder).expanduser()
    if not path_exists(path):
        raise ConfigError(f"{shorten(path)} not found", hint="push the --out folder of a finished szoq finetune run")
    result = method_of_result(path).result_cls
    if result.hub is None:
        raise result.not_a_delta(path, "pushing")
    return result.push(path, repo_id=repo_id, tag=tag, private=private, token=token, create_pr=create_pr, message=message)


def pull_delta(repo_id: str, *, revision: str | None = None, token: str | None = None, offline: bool = False,
               out: str | Path | None = None) -> PullResult:
    """Download a fine-tuned run at a revision into the Hugging Face cache and verify it.

    Only the artifact's files are fetched (never checkpoints); the main file must match the
    commit's hash and load before its folder is returned; a corrupt download is removed from the
    cache. Offline (or `HF_HUB_OFFLINE=1`) it reads the cache only.

    Args:
        repo_id: `ORG/NAME`.
        revision: Tag, branch or commit sha (full or short); default main.
        token: Hub token; default `HF_TOKEN` or the login.
        offline: Read only the local Hugging Face cache.
        out: Also copy the files into this folder (new or empty) and return it.

    Returns:
        PullResult whose `path` is a verified run folder (the cache snapshot, or `out`) and whose
        `ref` is `ORG/NAME@<tag or short sha>`.

    Raises:
        ConfigError: bad repo id, or `out` holds other files.
        HubError: repo/revision not found, no access, not a delta repo, hash mismatch, cut-off
            download, offline without a cached copy.
        MaskError: the downloaded file does not verify.
    """
    shared = list(dict.fromkeys(m.result_cls for m in methods() if m.result_cls.hub is not None))  # methods may share one artifact
    error: HubError | None = None
    for result in shared:
        try:
            return result.pull(repo_id, revision=revision, token=token, offline=offline, out=out)
        except HubError as exc:  # not this method's repo: try the next one
            error = error or exc
    raise error if error is not None else HubError("no training method shares its runs on the Hub", hint="push a sparse delta")


def resolve_delta_ref(ref: str | Path, *, token: str | None = None, offline: bool = False) -> Path:
    """Resolve `--delta`: a local run folder / final file, or `ORG/NAME[@REV]` pulled from the Hub.

    Args:
        ref: A path, or a Hub ref (tag, branch or commit sha after `@`; default main).
        token: Hub token; default `HF_TOKEN` or the login.
        offline: Read Hub refs only from the local Hugging Face cache.

    Returns:
        A local path (a pulled run is already verified).

    Raises:
        HubError: a Hub ref that cannot be pulled (also names the missing local folder).
        MaskError: no such local path, or the pulled file does not verify.
    """
    from ..core.errors import MaskError

    path = Path(ref).expanduser()
    if path_exists(path):
        return path
    if not is_hub_ref(str(ref)):  # it looks like a path (see is_hub_ref): never asked of the Hub
        raise MaskError(f"no local folder {shorten(str(ref))}: {shorten(path)} not found",
                        hint=f"check the path (ls {shorten(path.parent)}/); a Hub ref is ORG/NAME[@REV]")
    repo_id, revision = parse_ref(str(ref))
    try:
        return pull_delta(repo_id, revision=revision, token=token, offline=offline).path
    except HubError as exc:
        raise no_local_folder(str(ref), exc) from None
