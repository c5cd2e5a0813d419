"""Share fine-tuned deltas through the Hugging Face Hub, like masks.

A delta is one `Artifact` description for the transport layer (`transport.py`): a delta repo
holds `delta.safetensors`, `finetune_config.json`, `metrics.jsonl` and the card (never
checkpoints). Pulled deltas stay in the Hugging Face cache (verified), or are copied to `--out`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..core import schema
from ..runtime.delta import DELTA_CARD_TAGS, DELTA_FILE, Delta, load_delta
from ..core.errors import ConfigError, MaskError
from ..masks.card import card_base_model
from ..core.files import file_sha256, path_exists
from ..core.public import local_paths, public, public_text
from ..core.errors import shorten
from .transport import CARD_FILE, Artifact, PullResult, PushResult, check_repo_id, copy_out, evict, fetch_artifact, push_artifact

RUN_CONFIG_FILE = "finetune_config.json"  # the names szoq finetune writes (szoq_hub.training.finetune)
RUN_METRICS_FILE = "metrics.jsonl"


def render_delta_card(folder: Path, delta: Delta, *, repo_id: str, tag: str | None) -> str:
    """The model card pushed with a delta: the run's own card, with Hub metadata and use lines.

    The body of the `README.md` that `szoq finetune` wrote is kept (its `THIS_FOLDER`
    placeholders become `ORG/NAME@TAG`); the front matter is rebuilt so that it always carries
    `library_name: szoq`, `base_model:` (when it is a Hub id) and the delta tags.

    Args:
        folder: The run folder.
        delta: The verified delta in it.
        repo_id: `ORG/NAME` it is pushed to.
        tag: The tag it gets (None for a pull request).

    Returns:
        The card text.
    """
    from huggingface_hub import ModelCardData

    ref = f"{repo_id}@{tag}" if tag else repo_id
    run = _run_config(folder)
    settings = run["settings"] or delta.settings
    base_model = delta.meta.get("base_model", "")
    task = schema.text_or_none(run["task"].get("name")) or schema.text_or_none(settings.get("task")) or "TASK"
    quant = schema.text_or_none(settings.get("quant"))
    szoq_meta = {"kind": "delta", "task": task, "mask_sha256": delta.mask_sha256, "fingerprint": delta.fingerprint,
                 "nnz": int(delta.meta.get("nnz", 0)), "quant": quant}
    data = ModelCardData(library_name="szoq", base_model=card_base_model(base_model), tags=DELTA_CARD_TAGS, szoq=szoq_meta)
    local = folder / CARD_FILE
    body = re.sub(r"\A---\n.*?\n---\n", "", local.read_text(errors="replace"), count=1, flags=re.S) if local.is_file() else \
        f"\n# Sparse ZO delta for {base_model}\n\nFine-tuned sparse values (fp32) over a sensitivity mask (SensZOQ).\n"
    body = public_text(body.replace("THIS_FOLDER", ref), local_paths(run))
    if f"--delta {ref}" not in body:  # a hand-written card: add the use lines
        body = body.rstrip("\n") + f"\n\n## Use\n\n```\nszoq eval --task {task} --delta {ref}\nszoq merge --delta {ref} --out merged/\n```\n"
    return "\n".join(["---", data.to_yaml(), "---", body if body.startswith("\n") else "\n" + body])


def _publish(fname: str, data: bytes) -> bytes:
    """finetune_config.json goes out with local paths reduced to names; other files as they are."""
    if fname != RUN_CONFIG_FILE:
        return data
    try:
        config = json.loads(data)
    except (ValueError, RecursionError):
        return data  # verified before the push: not reached
    return (json.dumps(public(config), indent=2) + "\n").encode()


def _run_config(folder: Path) -> dict:
    """The run's finetune_config.json (type-checked), or empty settings when there is none."""
    path = folder / RUN_CONFIG_FILE
    if not path.is_file():
        return {"settings": {}, "task": {}}
    return schema.run_config(path, hint="the run folder is damaged: restore finetune_config.json or fine-tune again")


def _verify_delta_folder(folder: Path) -> Delta:
    if (folder / "dense.safetensors").is_file():  # a `finetune --dense` run: load_delta says what it is
        load_delta(folder)
    if not (folder / DELTA_FILE).is_file() and not (folder / "checkpoint.safetensors").is_file():
        raise ConfigError(f"{shorten(folder)} is not a szoq delta folder (no {DELTA_FILE})", hint="push the --out folder of a finished szoq finetune run")
    delta = load_delta(folder)  # raises on a corrupt or unfinished delta, with its own hint
    leaked = local_paths({"base_model": delta.meta.get("base_model", ""), "settings": delta.settings})
    if leaked:  # in delta.safetensors itself, whose bytes are pushed as they are
        raise MaskError(f"the delta records the local path {shorten(leaked[-1])}; pushing would publish it",
                        hint="fine-tune again with this szoq, which records only file and folder names in the delta, then push")
    _run_config(folder)  # a damaged config is refused before it is published
    return delta


DELTA = Artifact("delta", DELTA_FILE, (DELTA_FILE, RUN_CONFIG_FILE, RUN_METRICS_FILE), _verify_delta_folder,
                 lambda folder, delta, repo_id, tag: render_delta_card(folder, delta, repo_id=repo_id, tag=tag),
                 "a delta repo holds delta.safetensors pushed by: szoq delta push RUN_FOLDER --repo ORG/NAME", _publish)


def push_delta(folder: str | Path, *, repo_id: str, tag: str | None = None, private: bool = False, token: str | None = None,
               create_pr: bool = False, message: str | None = None) -> PushResult:
    """Publish a fine-tuned delta (a `szoq finetune` output folder) to a Hub repo, like a mask.

    Uploads `delta.safetensors`, `finetune_config.json`, `metrics.jsonl` (when present) and a
    card in one commit on top of the head read just before, then tags it. Checkpoints are never
    uploaded. Pushing a delta that a tag (or main) already holds makes no commit.

    Args:
        folder: The run folder (or its `delta.safetensors`).
        repo_id: `ORG/NAME` of the Hub repo (created if missing, as a model repo).
        tag: Tag to create; default `v1`, or the next `vN` when the repo has tags already.
        private: Create the repo as private (an existing repo keeps its visibility).
        token: Hub token; default `HF_TOKEN` or the login.
        create_pr: Open a pull request instead of committing to main (no tag is created).
        message: Commit title.

    Returns:
        PushResult with the repo URL, commit sha, tag and status (`ref` is None).

    Raises:
        ConfigError: bad repo id or tag, or a folder that is not a delta.
        MaskError: the local delta is corrupt, the run is unfinished, or it records a local path.
        HubError: auth, race (parent moved), tag taken by another delta, network.
    """
    check_repo_id(repo_id)
    path = Path(folder).expanduser()
    if not path_exists(path):
        raise ConfigError(f"{shorten(path)} not found", hint="push the --out folder of a finished szoq finetune run")
    return push_artifact(DELTA, path.parent if path.name == DELTA_FILE else path, repo_id=repo_id, tag=tag, private=private, token=token,
                         create_pr=create_pr, message=message, ref=None)


def pull_delta(repo_id: str, *, revision: str | None = None, token: str | None = None, offline: bool = False,
               out: str | Path | None = None) -> PullResult:
    """Download a fine-tuned delta at a revision into the Hugging Face cache and verify it.

    Only `delta.safetensors`, `finetune_config.json`, `metrics.jsonl` and `README.md` are
    fetched. The delta file must match the commit's hash and load as a szoq delta before its
    folder is returned; a corrupt download is removed from the cache. Offline (or
    `HF_HUB_OFFLINE=1`) it reads the cache only.

    Args:
        repo_id: `ORG/NAME`.
        revision: Tag, branch or commit sha (full or short); default main.
        token: Hub token; default `HF_TOKEN` or the login.
        offline: Read only the local Hugging Face cache.
        out: Also copy the files into this folder (new or empty) and return it.

    Returns:
        PullResult whose `path` is a verified delta folder (the cache snapshot, or `out`) and
        whose `ref` is `ORG/NAME@<tag or short sha>`.

    Raises:
        ConfigError: bad repo id, or `out` holds other files.
        HubError: repo/revision not found, no access, not a delta repo, hash mismatch, cut-off
            download, offline without a cached copy.
        MaskError: the downloaded file is not a valid szoq delta.
    """
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    check_repo_id(repo_id)
    rev = revision or "main"
    snapshots = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model") / "snapshots"
    known = {p.name: None for p in snapshots.iterdir()} if snapshots.is_dir() else {}
    got = fetch_artifact(DELTA, repo_id, rev, token=token, offline=offline, known=known)
    folder = got.paths[DELTA_FILE].parent  # the snapshot of `commit`: all its files sit side by side
    try:
        load_delta(folder)  # never hand out a delta that does not verify
    except MaskError:
        evict(got.paths)  # nor keep it in the cache, where a retry would find it again
        raise
    if out is not None:
        folder = copy_out(got.paths, Path(out).expanduser())
    return PullResult(f"{repo_id}@{got.tag or got.commit[:7]}", folder, repo_id, rev, got.commit, got.tag,
                      file_sha256(got.paths[DELTA_FILE]), got.from_cache)
