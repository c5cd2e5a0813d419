"""Share sensitivity masks through the Hugging Face Hub: push, pull, info, search.

A mask is one `Artifact` description for the transport layer (`transport.py`): its files
(`mask.safetensors`, `mask_config.json`), its verifier (`load_mask`) and its card (`render_card`
with the repo id and tag). Pulled masks are registered in the local registry as
`ALIAS@<tag or short sha>`. Fine-tuned deltas are the other description (`methods/sparse/delta.py`).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..core.defaults import __version__
from ..core import schema
from ..core.errors import ConfigError, HubError, MaskError, RegistryError
from ..masks.card import CARD_TAGS, render_card
from ..masks.artifact import CONFIG_FILE, FORMAT, FORMAT_VERSIONS, MASK_FILE, SCORES_FORMAT_VERSION, SCOPES, MaskData, load_mask
from ..core.public import command_words, local_paths
from ..core.files import path_exists
from ..core.home import scratch_dir
from ..core.errors import shorten
from .scrub import remember
from ..masks.registry import Registry, RegistryEntry, check_name, name_from
from .transport import Artifact, PullResult, PushResult, api, check_repo_id, evict, fetch_artifact, hub_errors, push_artifact
from .client import endpoint

SEARCH_TAGS = CARD_TAGS[:2]  # szoq, sensitivity-mask


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
    """One search hit: a Hub repo tagged as a szoq mask (None where its card says nothing usable)."""

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


# -- the mask artifact -----------------------------------------------------------------------
def verify_for_push(folder: Path) -> MaskData:
    """Load a mask for publishing: it must verify and record no local path of this machine.

    Raises:
        MaskError: corrupt, or it records a local path (in base_model or the build command).
    """
    mask = load_mask(folder)
    leaked = local_paths([mask.config.base_model, *command_words(mask.config.command)])
    if leaked:
        raise MaskError(f"the mask records the local path {shorten(leaked[0])} (base model or build command); pushing would publish it",
                        hint="rebuild it with this szoq, which records only folder and file names, then push the new version")
    return mask


MASK = Artifact("mask", MASK_FILE, (MASK_FILE, CONFIG_FILE), verify_for_push,
                lambda folder, mask, repo_id, tag: render_card(mask.config, repo_id=repo_id, tag=tag), "find mask repos with: szoq mask search")


# -- push ------------------------------------------------------------------------------------
def _local_artifact(ref: str, registry: Registry) -> tuple[Path, RegistryEntry | None]:
    path = Path(ref).expanduser()
    if path_exists(path):
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
        MaskError: the local artifact does not verify, or records a local path.
        RegistryError: unknown local ref.
        HubError: auth, race (parent moved), tag taken by another mask, network.
    """
    check_repo_id(repo_id)
    registry = registry or Registry()
    folder, entry = _local_artifact(ref, registry)
    tag = tag or (entry.version if entry else None)
    if not tag:
        load_mask(folder)  # a broken folder says so before asking for a tag
        raise ConfigError(f"{shorten(ref)} is a folder, not a registry entry: no version to use as tag", hint="pass --tag, e.g. --tag v1")
    result = push_artifact(MASK, folder, repo_id=repo_id, tag=tag, private=private, token=token, create_pr=create_pr, message=message,
                           ref=entry.ref if entry else None)
    if entry is not None:
        registry.update_hub(entry.ref, {"repo_id": repo_id, "commit": result.commit, "tag": result.tag, "url": result.url,
                                        "pr_url": result.pr_url})
    return result


# -- pull ------------------------------------------------------------------------------------
def default_alias(repo_id: str) -> str:
    """Local registry name for a Hub repo: its NAME part, lowercased and sanitised."""
    return name_from(repo_id.split("/")[-1])


def _aliases(repo_id: str) -> list[str]:
    """Names to try, in order, for a pull without --name: NAME, then ORG-NAME, ORG-NAME-2, ..."""
    qualified = name_from(repo_id)[:90]
    return [default_alias(repo_id), qualified, *(f"{qualified}-{i}" for i in range(2, 10))]


def pull_mask(repo_id: str, *, revision: str | None = None, name: str | None = None, token: str | None = None,
              offline: bool = False, registry: Registry | None = None) -> PullResult:
    """Download a mask's artifact files at a revision, verify them, register them locally.

    Only `mask.safetensors`, `mask_config.json` and `README.md` are fetched (through the
    Hugging Face cache, never a whole snapshot). The entry is `ALIAS@<tag or short sha>` with the
    full commit sha recorded under `hub`. Without `name`, ALIAS is the repo NAME; when a local
    mask already holds `NAME@<tag>` with other content, the entry becomes `ORG-NAME@<tag>` (and
    so on), so a Hub ref is always usable. Offline (or `HF_HUB_OFFLINE=1`) it reads the cache.

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
        RegistryError: `name@<tag>` already holds another mask.
    """
    check_repo_id(repo_id)
    registry = registry or Registry()
    aliases = [check_name(name)] if name else _aliases(repo_id)
    rev = revision or "main"
    # What the registry knows of this repo lets an offline pull expand short shas and name tags.
    known: dict[str, str | None] = {}
    for e in registry.entries():
        if (e.hub or {}).get("repo_id") == repo_id and e.hub.get("commit") and (e.hub.get("tag") or e.hub["commit"] not in known):
            known[e.hub["commit"]] = e.hub.get("tag")
    got = fetch_artifact(MASK, repo_id, rev, token=token, offline=offline, known=known)
    version = got.tag or got.commit[:7]
    hub = {"repo_id": repo_id, "revision": rev, "commit": got.commit, "tag": got.tag, "url": f"{endpoint()}/{repo_id}"}
    with scratch_dir("szoq-pull") as tmp:
        for fname, p in got.paths.items():  # copy out of the cache: registry objects are plain files
            shutil.copyfile(p, tmp / fname)
        for alias in aliases:
            try:
                entry = registry.add(tmp, alias, version, source={"hub": hub}, hub=hub)
                break
            except MaskError as exc:  # hash-checked files that disagree: none of them may be reused
                evict(got.paths)
                where = f"{repo_id}@{got.commit[:7]}"
                raise MaskError(exc.message.replace(str(tmp), where), hint="its files were removed from the cache; "
                                "if a fresh pull fails the same way, the repo itself is broken: tell its owner") from None
            except RegistryError as exc:
                if "already exists with other content" not in exc.message:
                    raise
                if name:
                    raise RegistryError(exc.message, hint=f"pull it under another local name: szoq mask pull {repo_id}@{rev} --name NEW-NAME") from None
        else:
            raise RegistryError(f"{aliases[0]}@{version} and its fallbacks already hold other masks",
                                hint=f"pull it under a local name of your own: szoq mask pull {repo_id}@{rev} --name NEW-NAME")
    return PullResult(entry.ref, entry.path, repo_id, rev, got.commit, got.tag, entry.sha256, got.from_cache)


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
        HubError: not found, no access, not a szoq mask, or a header that does not verify.
    """
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    check_repo_id(repo_id)
    rev = revision or "main"
    at = f"{repo_id}@{rev}"
    url = hf_hub_url(repo_id, MASK_FILE, revision=rev, repo_type="model")
    headers = build_hf_headers(token=token, library_name="szoq", library_version=__version__)
    remember(token)
    with hub_errors(repo_id, rev, action="read", art=MASK, token=token):
        first = get_session().get(url, headers={**headers, "Range": "bytes=0-7"})
        hf_raise_for_status(first)
        # `bytes 0-7/1234`, or `bytes 0-7/*` when the server does not know the length (RFC 9110)
        total = first.headers.get("Content-Range", "").rpartition("/")[2].strip()
        size = int(total) if total.isdigit() and 0 < len(total) <= 18 else None
        try:
            n = schema.header_length(first.content, f"{at}: {MASK_FILE}", available=None if size is None else size - 8, error=HubError)
        except HubError as exc:
            raise HubError(exc.message, hint="the repo does not hold a valid szoq mask") from None
        second = get_session().get(url, headers={**headers, "Range": f"bytes=8-{7 + n}"})
        hf_raise_for_status(second)
    try:
        header = schema.parse_header(second.content[:n], f"{at}: {MASK_FILE}", error=HubError,
                                     data_size=None if size is None else size - 8 - n)
        fields = schema.mask_fields(header, f"{at}: {MASK_FILE}", scopes=SCOPES, fmt=FORMAT, version=FORMAT_VERSIONS,
                                   scores_version=SCORES_FORMAT_VERSION)
    except MaskError as exc:
        raise HubError(exc.message, hint=exc.hint) from None
    index = {n: t for n, t in header.tensors.items() if not schema.is_scores_name(n)}  # score tensors are no weights
    nnz = sum(t.numel for t in index.values())
    return MaskInfo(repo_id, rev, first.headers.get("X-Repo-Commit", ""), fields["base_model"], fields["density"], fields["scope"],
                    fields["scorer"], fields["fingerprint"], fields["calibration"], nnz, len(index), size,
                    len(first.content) + len(second.content), header.metadata)


def search_masks(*, base_model: str | None = None, author: str | None = None, token: str | None = None, limit: int = 100) -> list[MaskListing]:
    """List Hub repos tagged `szoq` and `sensitivity-mask`.

    A repo whose card metadata is malformed is still listed, with the unusable fields as None:
    one stranger's card never breaks a search.

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
    remember(token)
    with hub_errors(author or "the Hub", action="search", art=MASK, token=token):
        for m in api().list_models(filter=filters, author=author, cardData=True, limit=limit, token=token):
            try:
                card = m.card_data.to_dict() if m.card_data is not None else {}
            except Exception:  # the client's own card parsing: a stranger's card may be anything
                card = {}
            fields = listing_fields(card)
            modified = getattr(m, "last_modified", None)
            out.append(MaskListing(str(m.id), fields["base_model"], fields["density"], fields["scorer"], fields["nnz"],
                                   m.sha if isinstance(m.sha, str) else None, modified.isoformat() if hasattr(modified, "isoformat") else None,
                                   m.private if isinstance(m.private, bool) else None))
    return out


def text_or_none(value: Any, limit: int = 200, *, one_item_list: bool = False) -> str | None:
    """A short string from a stranger's card, else None (`one_item_list`: also `[string]`)."""
    if one_item_list and isinstance(value, list) and len(value) == 1:  # `base_model:` may be a one-item list
        value = value[0]
    return value[:limit] if isinstance(value, str) else None

def listing_fields(card: Any) -> dict[str, Any]:
    """What a Hub listing shows from a repo's card metadata; never raises.

    Args:
        card: The card data as the Hub sent it (any JSON value).

    Returns:
        {"base_model", "density", "scorer", "nnz"}; a missing or mistyped field is None.
    """
    card = card if isinstance(card, dict) else {}
    block = card.get("szoq")
    block = block if isinstance(block, dict) else {}
    density = block.get("density")
    nnz = block.get("nnz")
    return {"base_model": text_or_none(card.get("base_model"), one_item_list=True),
            "density": float(density) if schema.is_number(density) else None,
            "scorer": text_or_none(block.get("scorer"), 32),
            "nnz": nnz if schema.is_int(nnz) and nnz >= 0 else None}
