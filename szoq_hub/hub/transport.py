"""Move artifacts through the Hugging Face Hub: one push and one pull for every kind.

This layer knows only "an artifact": a few files (one of which identifies a version), a model
card and a verifier. Masks (`masks.py`) and fine-tuned deltas (`deltas.py`) are two small
`Artifact` descriptions of it. One Hub model repo holds one artifact, written in ONE commit;
versions are tags, pins are commit shas. Everything goes through the public `huggingface_hub`
API (keyword-only, `revision=` and `token=` passed through), so any Hugging Face tool can read
what szoq pushes.

Tokens come from the `token=` argument, `HF_TOKEN` or the Hugging Face login (the client looks
them up); szoq never prints, logs or writes them, and scrubs them from what a server echoes
(`errors.py`, `scrub.py`). Every fetched file is checked against the Hub's hash of it, and
a download with one bad file is evicted whole from the cache, so that a retry fetches it all.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from ..core import progress
from ..core.errors import ConfigError, HubError, SzoqError
from .scrub import remember
from .client import api
from .errors import hub_errors
from ..core.errors import shorten
from ..core.files import atomic_dir, path_exists
from ..masks.registry import check_version, parse_ref, version_key

log = logging.getLogger(__name__)

CARD_FILE = "README.md"
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}\Z")
HEX = re.compile(r"^[0-9a-f]{7,40}\Z")
CARD_MAX_BYTES = 1_000_000  # a szoq card is a few KB; a stranger's 30 MB "card" is refused


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
        publish: (file name, bytes) -> the bytes to upload, for files other than main_file
            (e.g. local paths reduced to names); None uploads them as they are.
    """

    kind: str
    main_file: str
    files: tuple[str, ...]
    verify: Callable[[Path], object]
    card: Callable[[Path, object, str, str | None], str]
    search_hint: str
    publish: Callable[[str, bytes], bytes] | None = None

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
class Fetched:
    """An artifact's files at one commit, hash-checked, in the Hugging Face cache."""

    paths: dict[str, Path]
    commit: str
    tag: str | None
    from_cache: bool


# -- helpers ---------------------------------------------------------------------------------
def check_repo_id(repo_id: str) -> str:
    """Validate `ORG/NAME`.

    Raises:
        ConfigError: not of the form ORG/NAME.
    """
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id) or ".." in repo_id or repo_id.endswith((".git", ".")):
        raise ConfigError(f"invalid Hub repo id {shorten(repo_id)!r}", hint="use ORG/NAME, e.g. my-team/smollm2-c4-mask")
    return repo_id


def is_hub_ref(ref: str) -> bool:
    """True for `ORG/NAME[@REV]` that does not look like a local path.

    A ref that starts with `./`, `../`, `/` or `~`, or whose first part is an existing local
    folder (`runs/sst2` when `runs/` exists), is a path: it never goes to the Hub, so a typo
    in a run folder's name is reported at once instead of after a network round trip.
    """
    name, _ = parse_ref(ref)
    if name.count("/") != 1 or name.startswith((".", "/", "~")) or path_exists(ref):
        return False
    return not path_exists(name.split("/")[0])


def content_matches(data: bytes, expected: str) -> bool:
    """True when `data` has the Hub hash `expected` (sha256 for LFS files, git sha1 otherwise)."""
    if len(expected) == 64:
        return hashlib.sha256(data).hexdigest() == expected
    from huggingface_hub.utils.sha import git_hash  # the git object id of a blob, which the Hub reports for regular files

    return git_hash(data) == expected


def _remote_hash(file_info) -> str:
    """The hash the Hub records for a file: the LFS sha256, or the git blob id."""
    lfs = getattr(file_info, "lfs", None)
    if lfs is not None:
        return lfs.sha256 if hasattr(lfs, "sha256") else lfs["sha256"]
    return file_info.blob_id


def next_tag(tags: dict[str, str]) -> str:
    """The next `vN` after the repo's version tags (`v1` when there are none)."""
    nums = [version_key(t)[1] for t in tags if version_key(t)[0]]
    return f"v{max(nums, default=0) + 1}"


# -- push ------------------------------------------------------------------------------------
def push_artifact(art: Artifact, folder: Path, *, repo_id: str, tag: str | None, private: bool, token: str | None, create_pr: bool,
                  message: str | None, ref: str | None) -> PushResult:
    """The one push of every artifact: verify, create repo, one commit on `parent_commit`, tag.

    `tag=None` picks the tag: the one already holding these bytes (then nothing is pushed), else
    the next `vN` (`v1` in a new repo). An explicit tag that holds other bytes is refused.

    Args:
        art: Which artifact.
        folder: The local artifact folder.
        repo_id: `ORG/NAME` (created if missing, as a model repo).
        tag: Tag to create, or None to pick one.
        private: Create the repo as private (an existing repo keeps its visibility).
        token: Hub token; default `HF_TOKEN` or the login.
        create_pr: Open a pull request instead of committing to main (no tag is created).
        message: Commit title.
        ref: The local name of what is pushed (for the commit title), or None.

    Returns:
        PushResult with the repo URL, commit sha, tag and status.

    Raises:
        ConfigError: bad repo id or tag.
        HubError: auth, race (parent moved), tag taken by another artifact, network.
        SzoqError: the local artifact does not verify (from `art.verify`).
    """
    check_repo_id(repo_id)
    loaded = art.verify(folder)  # never publish an artifact that does not verify
    if tag is not None:
        try:
            check_version(tag)
        except SzoqError as exc:
            raise ConfigError(f"invalid tag {shorten(tag)!r}", hint=exc.hint) from None
    data = (folder / art.main_file).read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    label = f"szoq {art.kind}"
    client = api()
    remember(token)
    with hub_errors(repo_id, action="push to", art=art, token=token):
        url = str(client.create_repo(repo_id, repo_type="model", private=private, exist_ok=True, token=token))
        refs = client.list_repo_refs(repo_id, repo_type="model", token=token)
        tags = {t.name: t.target_commit for t in refs.tags}
        head = next(b.target_commit for b in refs.branches if b.name == "main")

        def holds(commit: str) -> bool:
            return _holds(client, art, repo_id, commit, data, token)

        if tag is None:  # the latest tag already holding these bytes, else the next version
            tag = next((t for t in sorted(tags, key=version_key, reverse=True) if holds(tags[t])), None) or next_tag(tags)
        if tag in tags:
            if not holds(tags[tag]):
                raise HubError(f"tag {tag} already exists on {repo_id} and holds another {art.kind}", hint="push under a new tag, e.g. --tag " + next_tag(tags))
            result = PushResult(repo_id, url, tags[tag], tag, ref, sha256, "unchanged")
        elif not create_pr and holds(head):
            client.create_tag(repo_id, tag=tag, revision=head, tag_message=f"{label} {tag}", repo_type="model", token=token)
            result = PushResult(repo_id, url, head, tag, ref, sha256, "tagged")
        else:
            with tempfile.TemporaryDirectory(prefix="szoq-push-") as tmp, progress.job("push", repo_id):  # a card only: works with a read-only SZOQ_HOME
                card = Path(tmp) / CARD_FILE
                card.write_text(art.card(folder, loaded, repo_id, tag))
                info = client.create_commit(
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
                client.create_tag(repo_id, tag=tag, revision=info.oid, tag_message=f"{label} {tag}", repo_type="model", token=token)
                result = PushResult(repo_id, url, info.oid, tag, ref, sha256, "pushed")
    log.info("push %s %s -> %s@%s (%s)", art.kind, ref or folder, repo_id, result.commit, result.status)
    return result


def _operations(art: Artifact, folder: Path, card: Path) -> list:
    from huggingface_hub import CommitOperationAdd

    ops = []
    for f in art.files:
        if not (folder / f).is_file():
            continue
        if art.publish is None or f == art.main_file:  # the main file goes byte for byte: its hash names the version
            ops.append(CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(folder / f)))
        else:
            ops.append(CommitOperationAdd(path_in_repo=f, path_or_fileobj=art.publish(f, (folder / f).read_bytes())))
    ops.append(CommitOperationAdd(path_in_repo=CARD_FILE, path_or_fileobj=str(card)))
    return ops


def _holds(client, art: Artifact, repo_id: str, commit: str, data: bytes, token: str | None) -> bool:
    """True when the artifact's main file at `commit` is byte-identical to `data` (by its Hub hash)."""
    files = client.get_paths_info(repo_id, [art.main_file], revision=commit, repo_type="model", token=token)
    return bool(files) and content_matches(data, _remote_hash(files[0]))


# -- pull ------------------------------------------------------------------------------------
def fetch_artifact(art: Artifact, repo_id: str, rev: str, *, token: str | None, offline: bool, known: dict[str, str | None]) -> Fetched:
    """The one pull of every artifact: its files at `rev` through the cache, hash-checked.

    Args:
        art: Which artifact.
        repo_id: `ORG/NAME`.
        rev: Tag, branch or commit sha.
        token: Hub token.
        offline: Read only the cache (also when `HF_HUB_OFFLINE=1`).
        known: Commits of this repo known locally -> their tag (offline: expands short shas).

    Returns:
        The fetched files (in the cache), the commit sha, its tag or None, and whether read offline.

    Raises:
        HubError: not found, no access, not this kind of repo, hash mismatch, cut-off download,
            offline without a cached copy.
    """
    from huggingface_hub import constants

    offline = offline or constants.HF_HUB_OFFLINE
    remember(token)
    with hub_errors(repo_id, rev, action="read", art=art, token=token):
        if offline:
            paths, commit, expected, tag = _from_cache(art, repo_id, rev, token, known)
        else:
            with progress.job("pull", f"{repo_id}@{rev}"):  # start/end lines from the CLI
                paths, commit, expected, tag = _download(art, repo_id, rev, token)
    check_download(art, paths, expected, repo_id, commit)
    return Fetched(paths, commit, tag, offline)


def _download(art: Artifact, repo_id: str, rev: str, token: str | None) -> tuple[dict[str, Path], str, dict[str, str], str | None]:
    from huggingface_hub import hf_hub_download

    client = api()
    info = client.model_info(repo_id, revision=rev, files_metadata=True, token=token)
    commit = info.sha
    siblings = {s.rfilename: s for s in info.siblings or []}
    if art.main_file not in siblings:
        raise HubError(f"{repo_id}@{rev} holds no {art.main_file}: it is not a szoq {art.kind} repo", hint=art.search_hint)
    # Download by the name the user gave (so the cache learns the tag/branch for offline use),
    # except short shas, which the cache would store as their own ref: pin those by full sha.
    dl_rev = commit if HEX.match(rev) else rev
    paths = {}
    card = siblings.get(CARD_FILE)
    if card is not None and isinstance(card.size, int) and card.size > CARD_MAX_BYTES:  # refused before it is fetched
        raise HubError(f"{repo_id}@{rev}: its {CARD_FILE} is {card.size / 1e6:.1f} MB; a szoq card is at most {CARD_MAX_BYTES // 1_000_000} MB",
                       hint="the repo is not a szoq artifact as szoq pushes it: ask its owner, or push a fresh one")
    for fname in art.download_files:
        if fname in siblings:
            paths[fname] = Path(hf_hub_download(repo_id, fname, revision=dl_rev, repo_type="model", token=token))
            if paths[fname].parent.name != commit:
                raise HubError(f"{repo_id}@{rev} moved while pulling (now {paths[fname].parent.name[:7]}, was {commit[:7]})",
                               hint=f"run the pull again, or pin a commit: szoq {art.kind} pull {repo_id}@{commit}")
    refs = client.list_repo_refs(repo_id, repo_type="model", token=token)
    tags = {t.name: t.target_commit for t in refs.tags}
    if rev in tags:
        tag = rev
    else:  # name the result after a tag of this commit when there is one (latest version first)
        at_commit = sorted((t for t, c in tags.items() if c == commit), key=version_key, reverse=True)
        tag = at_commit[0] if at_commit else None
    return paths, commit, {f: _remote_hash(siblings[f]) for f in paths}, tag


def _from_cache(art: Artifact, repo_id: str, rev: str, token: str | None,
                known: dict[str, str | None]) -> tuple[dict[str, Path], str, dict[str, str], str | None]:
    from huggingface_hub import errors as hf
    from huggingface_hub import hf_hub_download

    dl_rev, tag = rev, None
    if HEX.match(rev):
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
    if tag is None and rev != "main" and not HEX.match(rev):
        tag = rev
    # The cache names each blob after the Hub's hash of it: verify against that.
    return paths, commit, {f: Path(os.path.realpath(p)).name for f, p in paths.items()}, tag


def check_download(art: Artifact, paths: dict[str, Path], expected: dict[str, str], repo_id: str, commit: str) -> None:
    """Every fetched file must have the Hub's hash of it, and the card must be short UTF-8 text.

    When one does not, the whole download is evicted from the Hugging Face cache (its files
    belong together: a retry must fetch all of them again, not reuse the ones that looked fine).

    Raises:
        HubError: naming the file; the hint says the cache copy is gone and to pull again.
    """
    for fname, path in paths.items():
        data = path.read_bytes()
        problem = None
        if not content_matches(data, expected[fname]):
            problem = f"does not match the commit's hash (got sha256 {hashlib.sha256(data).hexdigest()[:12]})"
        elif fname == CARD_FILE:
            problem = card_problem(data)
        if problem is not None:
            evict(paths)
            raise HubError(f"{fname} from {repo_id}@{commit[:7]} {problem}",
                           hint="the download was corrupted and has been removed from the cache: run the pull again")


def card_problem(data: bytes) -> str | None:
    """Why a model card cannot be a szoq card (too large, not UTF-8 text), or None."""
    if len(data) > CARD_MAX_BYTES:
        return f"is {len(data) / 1e6:.1f} MB; a szoq card is at most {CARD_MAX_BYTES // 1_000_000} MB"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "is not UTF-8 text"
    return None


def evict(paths: dict[str, Path]) -> None:
    """Drop fetched files (their snapshot links and cached blobs) from the Hugging Face cache."""
    for path in paths.values():
        blob = Path(os.path.realpath(path))
        for p in (path, blob):
            try:
                p.unlink()
            except OSError:
                pass


def copy_out(paths: dict[str, Path], out: Path) -> Path:
    """Copy fetched files into `out` (new or empty) atomically (a temp folder, then a rename).

    Raises:
        ConfigError: `out` holds other files.
    """
    import shutil

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} exists and is not empty", hint="choose a new folder for --out")
    with atomic_dir(out) as tmp:
        for fname, p in paths.items():
            shutil.copyfile(p, tmp / fname)
    return out
