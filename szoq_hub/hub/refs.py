"""Turn a mask or delta reference into a verified artifact folder.

A mask REF is, in order of lookup: a path to an artifact folder (or its `mask.safetensors`),
`NAME[@VERSION]` in the local registry, a curated mask name from `masks/catalog.json`, or
`ORG/NAME[@REV]` on the Hugging Face Hub (pulled into the registry on demand). A delta REF is a
run folder, a `delta.safetensors` file, or `ORG/NAME[@REV]` on the Hub.
"""

from __future__ import annotations

from pathlib import Path

from ..masks.catalog import find_builtin
from ..core.errors import HubError, RegistryError
from ..masks.artifact import MASK_FILE, MaskData, load_mask
from ..core.files import path_exists
from ..core.errors import shorten
from ..masks.registry import Registry, mask_name_for_sha256, parse_ref
from .transport import is_hub_ref


def resolve_mask_ref(ref: str, *, registry: Registry | None = None, offline: bool = False) -> Path:
    """Resolve a REF to an artifact folder on disk.

    Raises:
        RegistryError: nothing by that name anywhere.
        HubError: a Hub ref that cannot be pulled.
    """
    path = Path(ref).expanduser()
    if path_exists(path):
        if path.is_dir() and (path / MASK_FILE).exists():
            return path
        if path.is_file() and path.name == MASK_FILE:
            return path.parent
        raise RegistryError(f"{shorten(path)} is not a mask artifact (no {MASK_FILE})", hint="a mask folder holds mask.safetensors, mask_config.json and README.md")
    registry = registry or Registry()
    if is_hub_ref(ref):
        from .masks import pull_mask

        repo_id, revision = parse_ref(ref)
        try:
            return pull_mask(repo_id, revision=revision, registry=registry, offline=offline).path
        except HubError as exc:
            raise no_local_folder(ref, exc) from None
    name, version = parse_ref(ref)
    if "/" in name or name.startswith((".", "~")):  # a path (registry names hold no "/"), and not a Hub ref: see is_hub_ref
        raise RegistryError(f"no local folder {shorten(ref)}", hint=f"check the path (ls {shorten(path.parent)}/); a Hub ref is ORG/NAME[@REV]")
    entry = registry.find(ref)
    if entry is not None:
        return registry.get(ref).path
    builtin = find_builtin(name)
    if builtin is not None and version is None:
        return builtin.path
    return registry.get(ref).path  # raises the not-found error with its hint


def no_local_folder(ref: str, exc: HubError) -> HubError:
    """`runs/sst2` and `masks/x` look like `ORG/NAME` Hub refs too: when the Hub has no such repo
    (or cannot be asked), say first that no such local folder exists, and what the Hub said."""
    if not any(s in exc.message for s in ("not found", "offline", "cannot reach", "not in the local Hugging Face cache")):
        return exc  # the repo exists on the Hub: a genuine Hub error
    return HubError(f"no local folder {ref}, and as a Hub ref: {exc.message}",
                    hint=f"check the path (ls {Path(ref).parent}/); for a Hub ref: {exc.hint}")


def pinned_mask_ref(ref: str, sha256: str, *, registry: Registry | None = None) -> str:
    """A REF that names exactly this mask later and elsewhere (recorded in run folders and deltas).

    A mask pulled from the Hub is named `ORG/NAME@TAG` (or `@COMMIT`), which works on any
    machine; a local registry mask `NAME@vN`; a built-in mask its name; a folder its absolute path.
    """
    registry = registry or Registry()
    entries = [e for e in registry.entries() if e.sha256 == sha256]
    hub = next((e.hub for e in reversed(entries) if e.hub and e.hub.get("repo_id")), None)
    if hub is not None and is_hub_ref(ref):
        return f"{hub['repo_id']}@{hub.get('tag') or hub['commit']}"
    path = Path(ref).expanduser()
    if path_exists(path):
        path = path.resolve()
        return str(path.parent if path.is_file() else path)
    return mask_name_for_sha256(sha256, registry=registry) or ref


def open_mask(ref: str, *, fingerprint: str | None = None, layout: list[tuple[str, tuple[int, ...], str]] | None = None,
              registry: Registry | None = None, offline: bool = False) -> MaskData:
    """Resolve and load a mask, verifying it, its fingerprint and its shapes against `layout` when given."""
    return load_mask(resolve_mask_ref(ref, registry=registry, offline=offline), fingerprint=fingerprint, layout=layout)
