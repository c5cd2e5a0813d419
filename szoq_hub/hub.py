"""Share masks and fine-tuned deltas through the Hugging Face Hub: push, pull, info, search.

One Hub model repo holds one artifact, written in ONE commit; versions are tags, pins are commit
shas. A mask repo holds `mask.safetensors`, `mask_config.json` and the model card `README.md`; a
delta repo holds `delta.safetensors`, `finetune_config.json`, `metrics.jsonl` and the card (never
checkpoints). Masks and deltas share one push and one pull implementation, parametrized by an
`Artifact` (its files, its verifier, its card). Everything goes
through the public `huggingface_hub` API (keyword-only, `revision=` and `token=` passed through),
so any Hugging Face tool can read what szoq pushes.

Tokens come from the `token=` argument, `HF_TOKEN` or the Hugging Face login (the client looks
them up); szoq never prints, logs or writes them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from . import __version__
from .delta import DELTA_CARD_TAGS, DELTA_FILE, Delta, load_delta
from .errors import ConfigError, HubError, RegistryError, SzoqError
from .mask import CARD_FILE, CARD_TAGS, CONFIG_FILE, FORMAT, MASK_FILE, card_base_model, file_sha256, load_mask, render_card
from .paths import atomic_dir
from .registry import Registry, RegistryEntry, _version_key, check_name, check_version

log = logging.getLogger(__name__)

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_HEX = re.compile(r"^[0-9a-f]{7,40}$")
SEARCH_TAGS = CARD_TAGS[:2]  # szoq, sensitivity-mask
LOGIN_HINT = "pass --token, set HF_TOKEN, or run: hf auth login"
RUN_CONFIG_FILE = "finetune_config.json"  # the names szoq finetune writes (szoq_hub.finetune)
RUN_METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class Artifact:
    """What differs between the artifacts szoq shares on the Hub (a mask, a fine-tuned delta).

    Attributes:
        kind: "mask" or "delta" (used in messages, commit titles and hints).
        main_file: The file whose bytes identify a version (its Hub hash decides no-op pushes).
        files: Files uploaded and downloaded besides the card, each when present; main_file first.
        verify: Loads and verifies a local folder; raises a SzoqError when it is not valid.
        card: (folder, verified artifact, repo_id, tag) -> the README.md pushed with it.
        search_hint: How to find repos of this kind (hint of "not a ... repo" errors).
    """

    kind: str
    main_file: str
    files: tuple[str, ...]
    verify: Callable[[Path], object]
    card: Callable[[Path, object, str, str | None], str]
    search_hint: str

    @property
    def download_files(self) -> tuple[str, ...]:
        return (*self.files, CARD_FILE)


@dataclass
class PushResult:
    """What `push_mask` / `push_delta` did. status: pushed | tagged | unchanged | pull-request."""

    repo_id: str
    url: str
    commit: str
    tag: str | None
    ref: str | None
    sha256: str
    status: str
    pr_url: str | None = None

    @property
    def noop(self) -> bool:
        return self.status == "unchanged"

    def to_dict(self) -> dict:
        return asdict(self) | {"noop": self.noop}


@dataclass
class PullResult:
    """What `pull_mask` registered locally, or where `pull_delta` put a verified delta."""

    ref: str
    path: Path
    repo_id: str
    revision: str
    commit: str
    tag: str | None
    sha256: str
    from_cache: bool

    def to_dict(self) -> dict:
        return asdict(self) | {"path": str(self.path)}


@dataclass
class MaskInfo:
    """Facts read from the remote safetensors header only (no full download)."""

    repo_id: str
    revision: str
    commit: str
    base_model: str
    density: float
    scope: str
    scorer: str
    fingerprint: str
    calibration: dict | None
    nnz: int
    tensors: int
    file_size: int | None
    bytes_read: int
    metadata: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class MaskListing:
    """One search hit: a Hub repo tagged as a szoq mask."""

    repo_id: str
    base_model: str | None
    density: float | None
    scorer: str | None
    nnz: int | None
    sha: str | None
    last_modified: str | None
    private: bool | None

    def to_dict(self) -> dict:
        return asdict(self)


# -- helpers ---------------------------------------------------------------------------------
def _api():
    from huggingface_hub import HfApi

    return HfApi(library_name="szoq", library_version=__version__)


def endpoint() -> str:
    """The Hub endpoint in use (`HF_ENDPOINT`, read by huggingface_hub at import)."""
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")


def check_repo_id(repo_id: str) -> str:
    """Validate `ORG/NAME`.

    Raises:
        ConfigError: not of the form ORG/NAME.
    """
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id) or ".." in repo_id or repo_id.endswith((".git", ".")):
        raise ConfigError(f"invalid Hub repo id {repo_id!r}", hint="use ORG/NAME, e.g. my-team/smollm2-c4-mask")
    return repo_id


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob, which the Hub reports for regular (non-LFS) files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _content_matches(data: bytes, expected: str) -> bool:
    """True when `data` has the Hub hash `expected` (sha256 for LFS files, git sha1 otherwise)."""
    if len(expected) == 64:
        return hashlib.sha256(data).hexdigest() == expected
    return git_blob_sha1(data) == expected


def _remote_hash(file_info) -> str:
    """The hash the Hub records for a file: the LFS sha256, or the git blob id."""
    lfs = getattr(file_info, "lfs", None)
    if lfs is not None:
        return lfs.sha256 if hasattr(lfs, "sha256") else lfs["sha256"]
    return file_info.blob_id


def as_szoq_error(exc: BaseException, *, repo_id: str | None = None, revision: str | None = None, action: str = "access",
                  kind: str = "mask") -> SzoqError | None:
    """Map a huggingface_hub / HTTP exception to a one-line `HubError` with a hint.

    Args:
        exc: The exception.
        repo_id: The repo concerned, for the message.
        revision: The revision concerned, for the message.
        action: What was being done (push, pull, read), for the message.
        kind: The artifact concerned ("mask" or "delta"), for the message and hint.

    Returns:
        The mapped error, or None when `exc` is not a Hub error.
    """
    import httpx2
    from huggingface_hub import errors as hf

    repo = repo_id or "the repo"
    at = f"{repo}@{revision}" if revision else repo
    if isinstance(exc, SzoqError):
        return exc
    if isinstance(exc, hf.RevisionNotFoundError):
        return HubError(f"revision {revision!r} not found in {repo}", hint=f"use an existing tag, branch (e.g. main) or commit sha of {repo}")
    if isinstance(exc, hf.RepositoryNotFoundError):
        return HubError(f"Hub repo {repo} not found (or it is private and this token cannot see it)", hint=f"check the name; for a private repo {LOGIN_HINT}")
    if isinstance(exc, hf.RemoteEntryNotFoundError):
        art = ARTIFACTS[kind]
        return HubError(f"{at} has no {art.main_file}: it is not a szoq {kind} repo", hint=art.search_hint)
    if isinstance(exc, (hf.LocalEntryNotFoundError, hf.OfflineModeIsEnabled)):
        return HubError(f"{at} is not in the local Hugging Face cache and szoq is offline",
                        hint=f"run once while online: szoq {kind} pull {at}")
    if isinstance(exc, hf.HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        if status == 401:
            return HubError(f"the Hub refused the request to {repo}: no token or an invalid token", hint=LOGIN_HINT)
        if status == 403:
            org = repo.split("/")[0]
            return HubError(f"this token may not {action} {repo} (read-only token, or not a member of {org})", hint=f"use a token with write access to {org}: {LOGIN_HINT}")
        if status == 412:
            return HubError(f"{repo} changed while pushing (another commit landed on main first); nothing was pushed",
                            hint="look at the repo's new state, then run the same push again")
        return HubError(f"the Hub answered {status} for {at}: {_server_message(exc)}", hint="retry; rerun with --debug for details if it persists")
    if isinstance(exc, hf.HFValidationError):
        return HubError(f"invalid Hub repo id or revision ({str(exc).splitlines()[0]})", hint="use ORG/NAME[@REV], e.g. my-team/smollm2-mask@v1")
    if isinstance(exc, (httpx2.RemoteProtocolError, httpx2.ReadError)):
        return HubError(f"the connection to the Hub broke while reading {at}; nothing was registered", hint="run the same command again (the download resumes)")
    if isinstance(exc, httpx2.TransportError):
        return HubError(f"cannot reach the Hub at {endpoint()} ({type(exc).__name__})", hint="check the network or HF_ENDPOINT; use --offline to read a cached copy")
    return None


def _server_message(exc) -> str:
    try:
        return str(exc.response.json().get("error", "")) or exc.response.reason_phrase
    except Exception:
        return exc.response.reason_phrase


@contextmanager
def _hub_errors(repo_id: str, revision: str | None = None, action: str = "access", kind: str = "mask") -> Iterator[None]:
    """Turn Hub exceptions inside the block into HubError naming the repo and revision."""
    try:
        yield
    except SzoqError:
        raise
    except Exception as exc:
        mapped = as_szoq_error(exc, repo_id=repo_id, revision=revision, action=action, kind=kind)
        if mapped is None:
            raise
        raise mapped from None


def hub_card(config, *, repo_id: str, tag: str | None) -> str:
    """The model card pushed to the Hub (`render_card` with the repo id and tag filled in)."""
    return render_card(config, repo_id=repo_id, tag=tag)


# -- the two artifacts -----------------------------------------------------------------------
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
    run = _read_json(folder / RUN_CONFIG_FILE)
    settings = run.get("settings") or delta.settings
    base_model = delta.meta.get("base_model", "")
    task = (run.get("task") or {}).get("name") or settings.get("task") or "TASK"
    szoq_meta = {"kind": "delta", "task": task, "mask_sha256": delta.mask_sha256, "fingerprint": delta.fingerprint,
                 "nnz": int(delta.meta.get("nnz", 0)), "quant": settings.get("quant")}
    data = ModelCardData(library_name="szoq", base_model=card_base_model(base_model), tags=DELTA_CARD_TAGS, szoq=szoq_meta)
    local = folder / CARD_FILE
    body = re.sub(r"\A---\n.*?\n---\n", "", local.read_text(), count=1, flags=re.S) if local.is_file() else \
        f"\n# Sparse ZO delta for {base_model}\n\nFine-tuned sparse values (fp32) over a sensitivity mask (SensZOQ).\n"
    body = body.replace("THIS_FOLDER", ref)
    if f"--delta {ref}" not in body:  # a hand-written card: add the use lines
        body = body.rstrip("\n") + f"\n\n## Use\n\n```\nszoq eval --task {task} --delta {ref}\nszoq merge --delta {ref} --out merged/\n```\n"
    return "\n".join(["---", data.to_yaml(), "---", body if body.startswith("\n") else "\n" + body])


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}


def _verify_delta_folder(folder: Path) -> Delta:
    if not (folder / DELTA_FILE).is_file() and not (folder / "checkpoint.safetensors").is_file():
        raise ConfigError(f"{folder} is not a szoq delta folder (no {DELTA_FILE})", hint="push the --out folder of a finished szoq finetune run")
    return load_delta(folder)  # raises on a corrupt or unfinished delta, with its own hint


MASK = Artifact("mask", MASK_FILE, (MASK_FILE, CONFIG_FILE), load_mask,
                lambda folder, mask, repo_id, tag: hub_card(mask.config, repo_id=repo_id, tag=tag), "find mask repos with: szoq mask search")
DELTA = Artifact("delta", DELTA_FILE, (DELTA_FILE, RUN_CONFIG_FILE, RUN_METRICS_FILE), _verify_delta_folder,
                 lambda folder, delta, repo_id, tag: render_delta_card(folder, delta, repo_id=repo_id, tag=tag),
                 "a delta repo holds delta.safetensors pushed by: szoq delta push RUN_FOLDER --repo ORG/NAME")
ARTIFACTS = {a.kind: a for a in (MASK, DELTA)}


# -- push ------------------------------------------------------------------------------------
def _local_artifact(ref: str, registry: Registry) -> tuple[Path, RegistryEntry | None]:
    path = Path(ref).expanduser()
    if path.exists():
        folder = path.parent if path.name == MASK_FILE else path
        return folder, None
    entry = registry.get(ref)
    return entry.path, entry


def push_mask(ref: str, *, repo_id: str, tag: str | None = None, private: bool = False, token: str | None = None,
              create_pr: bool = False, message: str | None = None, registry: Registry | None = None) -> PushResult:
    """Publish a local mask to a Hub model repo in one commit, then tag it.

    The commit is made on top of the head read just before (`parent_commit`), so a concurrent
    push is refused instead of overwritten. Pushing a mask that the tag (or main) already holds
    makes no commit.

    Args:
        ref: `NAME[@VERSION]` in the local registry, or an artifact folder (then `tag` is required).
        repo_id: `ORG/NAME` of the Hub repo (created if missing, as a model repo).
        tag: Tag to create; default the registry version (e.g. `v2`).
        private: Create the repo as private (an existing repo keeps its visibility).
        token: Hub token; default `HF_TOKEN` or the login.
        create_pr: Open a pull request instead of committing to main (no tag is created).
        message: Commit title.
        registry: Local registry (default `Registry()`).

    Returns:
        PushResult with the repo URL, commit sha, tag and status.

    Raises:
        ConfigError: bad repo id or tag, or a folder without `tag`.
        MaskError: the local artifact does not verify.
        RegistryError: unknown local ref.
        HubError: auth, race (parent moved), tag taken by another mask, network.
    """
    check_repo_id(repo_id)
    registry = registry or Registry()
    folder, entry = _local_artifact(ref, registry)
    tag = tag or (entry.version if entry else None)
    if not tag:
        load_mask(folder)  # a broken folder says so before asking for a tag
        raise ConfigError(f"{ref} is a folder, not a registry entry: no version to use as tag", hint="pass --tag, e.g. --tag v1")
    result = _push(MASK, folder, repo_id=repo_id, tag=tag, private=private, token=token, create_pr=create_pr, message=message,
                   ref=entry.ref if entry else None)
    if entry is not None:
        registry.update_hub(entry.ref, {"repo_id": repo_id, "commit": result.commit, "tag": result.tag, "url": result.url,
                                        "pr_url": result.pr_url})
    return result


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
        MaskError: the local delta is corrupt or the run is unfinished.
        HubError: auth, race (parent moved), tag taken by another delta, network.
    """
    check_repo_id(repo_id)
    path = Path(folder).expanduser()
    if not path.exists():
        raise ConfigError(f"{path} not found", hint="push the --out folder of a finished szoq finetune run")
    return _push(DELTA, path.parent if path.name == DELTA_FILE else path, repo_id=repo_id, tag=tag, private=private, token=token,
                 create_pr=create_pr, message=message, ref=None)


def _push(art: Artifact, folder: Path, *, repo_id: str, tag: str | None, private: bool, token: str | None, create_pr: bool,
          message: str | None, ref: str | None) -> PushResult:
    """The one push of every artifact: verify, create repo, one commit on `parent_commit`, tag.

    `tag=None` picks the tag: the one already holding these bytes (then nothing is pushed), else
    the next `vN` (`v1` in a new repo). An explicit tag that holds other bytes is refused.
    """
    loaded = art.verify(folder)  # never publish an artifact that does not verify
    if tag is not None:
        try:
            check_version(tag)
        except SzoqError as exc:
            raise ConfigError(f"invalid tag {tag!r}", hint=exc.hint) from None
    data = (folder / art.main_file).read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    label = f"szoq {art.kind}"
    api = _api()
    with _hub_errors(repo_id, action="push to", kind=art.kind):
        url = str(api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True, token=token))
        refs = api.list_repo_refs(repo_id, repo_type="model", token=token)
        tags = {t.name: t.target_commit for t in refs.tags}
        head = next(b.target_commit for b in refs.branches if b.name == "main")

        def holds(commit: str) -> bool:
            return _holds(api, art, repo_id, commit, data, token)

        if tag is None:  # the latest tag already holding these bytes, else the next version
            tag = next((t for t in sorted(tags, key=_version_key, reverse=True) if holds(tags[t])), None) or _next_tag(tags)
        if tag in tags:
            if not holds(tags[tag]):
                raise HubError(f"tag {tag} already exists on {repo_id} and holds another {art.kind}", hint="push under a new tag, e.g. --tag " + _next_tag(tags))
            result = PushResult(repo_id, url, tags[tag], tag, ref, sha256, "unchanged")
        elif not create_pr and holds(head):
            api.create_tag(repo_id, tag=tag, revision=head, tag_message=f"{label} {tag}", repo_type="model", token=token)
            result = PushResult(repo_id, url, head, tag, ref, sha256, "tagged")
        else:
            with tempfile.TemporaryDirectory(prefix="szoq-push-") as tmp:
                card = Path(tmp) / CARD_FILE
                card.write_text(art.card(folder, loaded, repo_id, tag))
                info = api.create_commit(
                    repo_id,
                    operations=_operations(art, folder, card),
                    commit_message=message or f"{label} {tag}" + (f" ({ref})" if ref else ""),
                    commit_description=f"sha256 of {art.main_file}: {sha256}",
                    parent_commit=head,
                    revision="main",
                    create_pr=create_pr,
                    repo_type="model",
                    token=token,
                )
            if create_pr:
                result = PushResult(repo_id, url, info.oid, None, ref, sha256, "pull-request", info.pr_url)
            else:
                api.create_tag(repo_id, tag=tag, revision=info.oid, tag_message=f"{label} {tag}", repo_type="model", token=token)
                result = PushResult(repo_id, url, info.oid, tag, ref, sha256, "pushed")
    log.info("push %s %s -> %s@%s (%s)", art.kind, ref or folder, repo_id, result.commit, result.status)
    return result


def _operations(art: Artifact, folder: Path, card: Path) -> list:
    from huggingface_hub import CommitOperationAdd

    ops = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(folder / f)) for f in art.files if (folder / f).is_file()]
    ops.append(CommitOperationAdd(path_in_repo=CARD_FILE, path_or_fileobj=str(card)))
    return ops


def _holds(api, art: Artifact, repo_id: str, commit: str, data: bytes, token: str | None) -> bool:
    """True when the artifact's main file at `commit` is byte-identical to `data` (by its Hub hash)."""
    files = api.get_paths_info(repo_id, [art.main_file], revision=commit, repo_type="model", token=token)
    return bool(files) and _content_matches(data, _remote_hash(files[0]))


def _next_tag(tags: dict[str, str]) -> str:
    nums = [_version_key(t)[1] for t in tags if _version_key(t)[0]]
    return f"v{max(nums, default=0) + 1}"


# -- pull ------------------------------------------------------------------------------------
def default_alias(repo_id: str) -> str:
    """Local registry name for a Hub repo: its NAME part, lowercased and sanitised."""
    name = re.sub(r"[^a-z0-9._-]+", "-", repo_id.split("/")[-1].lower()).strip("-.")
    return name or "mask"


def pull_mask(repo_id: str, *, revision: str | None = None, name: str | None = None, token: str | None = None,
              offline: bool = False, registry: Registry | None = None) -> PullResult:
    """Download a mask's artifact files at a revision, verify them, register them locally.

    Only `mask.safetensors`, `mask_config.json` and `README.md` are fetched (through the
    Hugging Face cache, never a whole snapshot). The entry is `ALIAS@<tag or short sha>` with the
    full commit sha recorded under `hub`. Offline (or `HF_HUB_OFFLINE=1`) it reads the cache.

    Args:
        repo_id: `ORG/NAME`.
        revision: Tag, branch or commit sha (full or short); default main.
        name: Local registry name (default: the repo NAME).
        token: Hub token; default `HF_TOKEN` or the login.
        offline: Read only the local Hugging Face cache.
        registry: Local registry (default `Registry()`).

    Returns:
        PullResult naming the registry entry and the commit.

    Raises:
        ConfigError: bad repo id.
        HubError: repo/revision not found, no access, not a mask repo, hash mismatch, cut-off
            download, offline without a cached copy.
        MaskError: the downloaded artifact does not verify (nothing is registered).
    """
    check_repo_id(repo_id)
    registry = registry or Registry()
    alias = check_name(name or default_alias(repo_id))
    rev = revision or "main"
    # What the registry knows of this repo lets an offline pull expand short shas and name tags.
    known: dict[str, str | None] = {}
    for e in registry.entries():
        if (e.hub or {}).get("repo_id") == repo_id and e.hub.get("commit") and (e.hub.get("tag") or e.hub["commit"] not in known):
            known[e.hub["commit"]] = e.hub.get("tag")
    paths, commit, tag, from_cache = _fetch(MASK, repo_id, rev, token=token, offline=offline, known=known)
    with tempfile.TemporaryDirectory(prefix="szoq-pull-") as tmp:
        for fname, p in paths.items():  # copy out of the cache: registry objects are plain files
            shutil.copyfile(p, Path(tmp) / fname)
        hub = {"repo_id": repo_id, "revision": rev, "commit": commit, "tag": tag, "url": f"{endpoint()}/{repo_id}"}
        try:
            entry = registry.add(Path(tmp), alias, tag or commit[:7], source={"hub": hub}, hub=hub)
        except RegistryError as exc:
            if "already exists with other content" not in exc.message:
                raise
            raise RegistryError(exc.message, hint=f"pull it under another local name: szoq mask pull {repo_id}@{rev} --name NEW-NAME") from None
    return PullResult(entry.ref, entry.path, repo_id, rev, commit, tag, entry.sha256, from_cache)


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
    paths, commit, tag, from_cache = _fetch(DELTA, repo_id, rev, token=token, offline=offline, known=known)
    folder = paths[DELTA_FILE].parent  # the snapshot of `commit`: all its files sit side by side
    load_delta(folder)  # never hand out a delta that does not verify
    if out is not None:
        folder = _copy_out(paths, Path(out).expanduser())
    return PullResult(f"{repo_id}@{tag or commit[:7]}", folder, repo_id, rev, commit, tag, file_sha256(paths[DELTA_FILE]), from_cache)


def _copy_out(paths: dict[str, Path], out: Path) -> Path:
    """Copy pulled files into `out` atomically (a temp folder next to it, then a rename)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} exists and is not empty", hint="choose a new folder for --out")
    with atomic_dir(out) as tmp:
        for fname, p in paths.items():
            shutil.copyfile(p, tmp / fname)
    return out


def _fetch(art: Artifact, repo_id: str, rev: str, *, token: str | None, offline: bool,
           known: dict[str, str | None]) -> tuple[dict[str, Path], str, str | None, bool]:
    """The one pull of every artifact: its files at `rev` through the cache, hash-checked.

    Args:
        art: Which artifact.
        repo_id: `ORG/NAME`.
        rev: Tag, branch or commit sha.
        token: Hub token.
        offline: Read only the cache (also when `HF_HUB_OFFLINE=1`).
        known: Commits of this repo known locally -> their tag (offline: expands short shas).

    Returns:
        (file name -> cached path, commit sha, tag or None, read from the cache).
    """
    from huggingface_hub import constants

    offline = offline or constants.HF_HUB_OFFLINE
    with _hub_errors(repo_id, rev, action="read", kind=art.kind):
        if offline:
            paths, commit, expected, tag = _from_cache(art, repo_id, rev, token, known)
        else:
            paths, commit, expected, tag = _download(art, repo_id, rev, token)
    _check_hash(art, paths[art.main_file], expected, repo_id, commit)
    return paths, commit, tag, offline


def _download(art: Artifact, repo_id: str, rev: str, token: str | None) -> tuple[dict[str, Path], str, str, str | None]:
    from huggingface_hub import hf_hub_download

    api = _api()
    info = api.model_info(repo_id, revision=rev, files_metadata=True, token=token)
    commit = info.sha
    siblings = {s.rfilename: s for s in info.siblings or []}
    if art.main_file not in siblings:
        raise HubError(f"{repo_id}@{rev} holds no {art.main_file}: it is not a szoq {art.kind} repo", hint=art.search_hint)
    # Download by the name the user gave (so the cache learns the tag/branch for offline use),
    # except short shas, which the cache would store as their own ref: pin those by full sha.
    dl_rev = commit if _HEX.match(rev) else rev
    paths = {}
    for fname in art.download_files:
        if fname in siblings:
            paths[fname] = Path(hf_hub_download(repo_id, fname, revision=dl_rev, repo_type="model", token=token))
            if paths[fname].parent.name != commit:
                raise HubError(f"{repo_id}@{rev} moved while pulling (now {paths[fname].parent.name[:7]}, was {commit[:7]})",
                               hint=f"run the pull again, or pin a commit: szoq {art.kind} pull {repo_id}@{commit}")
    refs = api.list_repo_refs(repo_id, repo_type="model", token=token)
    tags = {t.name: t.target_commit for t in refs.tags}
    if rev in tags:
        tag = rev
    else:  # name the result after a tag of this commit when there is one (latest version first)
        at_commit = sorted((t for t, c in tags.items() if c == commit), key=_version_key, reverse=True)
        tag = at_commit[0] if at_commit else None
    return paths, commit, _remote_hash(siblings[art.main_file]), tag


def _from_cache(art: Artifact, repo_id: str, rev: str, token: str | None,
                known: dict[str, str | None]) -> tuple[dict[str, Path], str, str, str | None]:
    from huggingface_hub import errors as hf
    from huggingface_hub import hf_hub_download

    dl_rev, tag = rev, None
    if _HEX.match(rev):
        dl_rev = next((c for c in known if c.startswith(rev)), rev)
    paths = {}
    for fname in art.download_files:
        try:
            paths[fname] = Path(hf_hub_download(repo_id, fname, revision=dl_rev, repo_type="model", token=token, local_files_only=True))
        except hf.LocalEntryNotFoundError:
            if fname == art.main_file:
                raise
    commit = paths[art.main_file].parent.name
    tag = known.get(commit)
    if tag is None and rev != "main" and not _HEX.match(rev):
        tag = rev
    # The cache names each blob after the Hub's hash of it: verify against that.
    return paths, commit, Path(os.path.realpath(paths[art.main_file])).name, tag


def _check_hash(art: Artifact, path: Path, expected: str, repo_id: str, commit: str) -> None:
    data = path.read_bytes()
    if _content_matches(data, expected):
        return
    # Drop the corrupt copy from the cache so that a retry downloads it again.
    blob = Path(os.path.realpath(path))
    for p in (path, blob):
        try:
            p.unlink()
        except OSError:
            pass
    raise HubError(f"{art.main_file} from {repo_id}@{commit[:7]} does not match the commit's hash (got sha256 {hashlib.sha256(data).hexdigest()[:12]})",
                   hint="the download was corrupted and has been removed from the cache: run the pull again")


# -- info and search -------------------------------------------------------------------------
def mask_info(repo_id: str, *, revision: str | None = None, token: str | None = None) -> MaskInfo:
    """Read a Hub mask's facts from its safetensors header with two small Range requests.

    Args:
        repo_id: `ORG/NAME`.
        revision: Tag, branch or commit sha; default main.
        token: Hub token; default `HF_TOKEN` or the login.

    Returns:
        MaskInfo (base model, density, scorer, calibration, nnz, commit).

    Raises:
        HubError: not found, no access, not a szoq mask.
    """
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    check_repo_id(repo_id)
    rev = revision or "main"
    url = hf_hub_url(repo_id, MASK_FILE, revision=rev, repo_type="model")
    headers = build_hf_headers(token=token, library_name="szoq", library_version=__version__)
    with _hub_errors(repo_id, rev, action="read"):
        first = get_session().get(url, headers={**headers, "Range": "bytes=0-7"})
        hf_raise_for_status(first)
        size = int(first.headers.get("Content-Range", "/0").rsplit("/", 1)[-1] or 0) or None
        n = int.from_bytes(first.content[:8], "little")
        if len(first.content) < 8 or n > 100_000_000:
            raise HubError(f"{repo_id}@{rev}: {MASK_FILE} is not a safetensors file", hint="the repo does not hold a valid szoq mask")
        second = get_session().get(url, headers={**headers, "Range": f"bytes=8-{7 + n}"})
        hf_raise_for_status(second)
    try:
        header = json.loads(second.content[:n])
    except ValueError:
        raise HubError(f"{repo_id}@{rev}: the safetensors header of {MASK_FILE} is not valid JSON", hint="the repo does not hold a valid szoq mask") from None
    meta = header.pop("__metadata__", None) or {}
    if meta.get("format") != FORMAT:
        raise HubError(f"{repo_id}@{rev} is not a szoq mask (format={meta.get('format')!r})", hint="find mask repos with: szoq mask search")
    try:
        calibration = json.loads(meta.get("calibration") or "null")
        density = float(meta["density"])
    except (KeyError, ValueError):
        raise HubError(f"{repo_id}@{rev}: the mask header is incomplete", hint="ask the publisher to rebuild and push it") from None
    nnz = sum(math.prod(t.get("shape", [0])) for t in header.values())
    return MaskInfo(repo_id, rev, first.headers.get("X-Repo-Commit", ""), meta.get("base_model", ""), density, meta.get("scope", ""),
                    meta.get("scorer", ""), meta.get("fingerprint", ""), calibration, nnz, len(header), size,
                    len(first.content) + len(second.content), meta)


def search_masks(*, base_model: str | None = None, author: str | None = None, token: str | None = None, limit: int = 100) -> list[MaskListing]:
    """List Hub repos tagged `szoq` and `sensitivity-mask`.

    Args:
        base_model: Only masks for this base model (Hub id; the Hub's `base_model:` tag).
        author: Only repos of this user or organisation.
        token: Hub token (private repos of yours are listed too).
        limit: At most this many results.

    Returns:
        One MaskListing per repo, with density and scorer from the card metadata.

    Raises:
        HubError: network or auth failure.
    """
    filters = list(SEARCH_TAGS) + ([f"base_model:{base_model}"] if base_model else [])
    out = []
    with _hub_errors(author or "the Hub", action="search"):
        for m in _api().list_models(filter=filters, author=author, cardData=True, limit=limit, token=token):
            card = m.card_data.to_dict() if m.card_data is not None else {}
            szoq = card.get("szoq") or {}
            out.append(MaskListing(m.id, card.get("base_model"), szoq.get("density"), szoq.get("scorer"), szoq.get("nnz"), m.sha,
                                   m.last_modified.isoformat() if m.last_modified else None, m.private))
    return out
