"""Turn a mask reference into a verified artifact folder.

A REF is, in order of lookup: a path to an artifact folder (or its `mask.safetensors`),
`NAME[@VERSION]` in the local registry, a curated mask name from `masks/catalog.json`, or
`ORG/NAME[@REV]` on the Hugging Face Hub (pulled into the registry on demand).
"""

from __future__ import annotations

from pathlib import Path

from .catalog import find_builtin
from .errors import RegistryError
from .mask import MASK_FILE, SensitivityMask, load_mask
from .registry import Registry, parse_ref


def is_hub_ref(ref: str) -> bool:
    """True for `ORG/NAME[@REV]` that is not an existing local path."""
    name, _ = parse_ref(ref)
    return name.count("/") == 1 and not Path(ref).exists() and not name.startswith((".", "/", "~"))


def resolve_mask_ref(ref: str, *, registry: Registry | None = None, offline: bool = False) -> Path:
    """Resolve a REF to an artifact folder on disk.

    Raises:
        RegistryError: nothing by that name anywhere.
        HubError: a Hub ref that cannot be pulled.
    """
    path = Path(ref).expanduser()
    if path.is_dir() and (path / MASK_FILE).exists():
        return path
    if path.is_file() and path.name == MASK_FILE:
        return path.parent
    if path.exists():
        raise RegistryError(f"{path} is not a mask artifact (no {MASK_FILE})", hint="a mask folder holds mask.safetensors, mask_config.json and README.md")
    registry = registry or Registry()
    if is_hub_ref(ref):
        from .hub import pull_mask

        repo_id, revision = parse_ref(ref)
        return pull_mask(repo_id, revision=revision, registry=registry, offline=offline).path
    entry = registry.find(ref)
    if entry is not None:
        return registry.get(ref).path
    name, version = parse_ref(ref)
    builtin = find_builtin(name)
    if builtin is not None and version is None:
        return builtin.path
    return registry.get(ref).path  # raises the not-found error with its hint


def open_mask(ref: str, *, fingerprint: str | None = None, registry: Registry | None = None, offline: bool = False) -> SensitivityMask:
    """Resolve and load a mask, verifying it (and its fingerprint when given)."""
    return load_mask(resolve_mask_ref(ref, registry=registry, offline=offline), fingerprint=fingerprint)
