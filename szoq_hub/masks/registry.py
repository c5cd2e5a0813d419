"""The local mask registry under `$SZOQ_HOME/registry`.

Artifacts are stored content-addressed by the sha256 of `mask.safetensors`
(`objects/<sha256>/`), and named `NAME@VERSION` in `index.json`. Every write goes to a temp
file renamed into place under a file lock, so two concurrent writers never lose an entry and a
crash mid-write leaves the previous index readable. The index carries a schema version and is
upgraded through numbered migrations.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from filelock import FileLock

from .catalog import builtin_masks
from ..core.errors import RegistryError
from .artifact import CARD_FILE, CONFIG_FILE, MASK_FILE, MaskData, config_json, load_mask
from ..core.files import atomic_dir, atomic_file, file_sha256
from ..core.home import ensure_writable_dir, szoq_home
from ..core.errors import shorten

SCHEMA_VERSION = 2
# fullmatch, never `$`: `$` also matches before a final newline, so `evil\n` would pass.
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,95}")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_INDEX_HINT = "restore it from a backup or move it away to start a new registry"


def _migrate_0_to_1(index: dict) -> dict:
    # v0 (never released) had no schema_version field and no masks table.
    index.setdefault("masks", {})
    return index


def _migrate_1_to_2(index: dict) -> dict:
    # v2 adds the hub record to every entry.
    for versions in index["masks"].values():
        for entry in versions:
            entry.setdefault("hub", None)
    return index


MIGRATIONS: dict[int, Callable[[dict], dict]] = {0: _migrate_0_to_1, 1: _migrate_1_to_2}


@dataclass
class RegistryEntry:
    """One named version of a mask."""

    name: str
    version: str
    sha256: str
    created_at: str
    path: Path
    source: dict = field(default_factory=dict)
    hub: dict | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict:
        return {"ref": self.ref, "name": self.name, "version": self.version, "sha256": self.sha256,
                "created_at": self.created_at, "path": str(self.path), "source": self.source, "hub": self.hub}


def name_from(text: str) -> str:
    """A registry name made from free text (a model or repo name): lowercased, other characters `-`."""
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-.") or "mask"


def check_name(name: str) -> str:
    """Validate a registry name (lowercase letters, digits, `.`, `_`, `-`)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise RegistryError(f"invalid mask name {shorten(name)!r}", hint="use lowercase letters, digits, '.', '_' or '-', e.g. smollm2-c4")
    return name


def check_version(version: str) -> str:
    """Validate a version label such as `v3` or `2026-01`."""
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise RegistryError(f"invalid version {shorten(version)!r}", hint="use letters, digits, '.', '_' or '-', e.g. v2")
    return version


def parse_ref(ref: str) -> tuple[str, str | None]:
    """Split `NAME[@VERSION]`."""
    name, _, version = ref.partition("@")
    return name, (version or None)


def version_key(v: str) -> tuple[int, int, str]:
    """Sort key of version labels: `vN` by N, after any other label."""
    m = re.fullmatch(r"v(\d+)", v)
    return (1, int(m.group(1)), "") if m else (0, 0, v)


class Registry:
    """Named, versioned, content-addressed mask store.

    Args:
        home: State directory; default `$SZOQ_HOME`.
    """

    def __init__(self, home: Path | None = None) -> None:
        self.root = (home or szoq_home()) / "registry"
        self.objects = self.root / "objects"
        self.index_path = self.root / "index.json"

    # -- index I/O ---------------------------------------------------------------------------
    def _lock(self) -> FileLock:
        ensure_writable_dir(self.root, "SZOQ_HOME registry folder")
        return FileLock(str(self.root / ".lock"), timeout=120)

    def _read(self) -> dict:
        try:
            index = json.loads(self.index_path.read_text())
        except FileNotFoundError:
            return {"schema_version": SCHEMA_VERSION, "masks": {}}
        except (OSError, ValueError, RecursionError) as exc:
            raise RegistryError(f"registry index {self.index_path} is unreadable ({str(exc)[:80]})", hint=_INDEX_HINT) from None
        if not isinstance(index, dict):
            raise self._damaged("it is not a JSON object")
        version = index.get("schema_version", 0)
        if not (isinstance(version, int) and not isinstance(version, bool) and version >= 0):
            raise self._damaged("schema_version is not a version number")
        if version > SCHEMA_VERSION:
            raise RegistryError(f"registry schema v{version} is newer than this szoq (v{SCHEMA_VERSION})", hint="upgrade szoq: pip install -U szoq")
        if not isinstance(index.setdefault("masks", {}), dict):
            raise self._damaged("masks is not an object")
        for name, versions in index["masks"].items():  # checked before a migration touches them
            if not isinstance(versions, list) or not all(isinstance(v, dict) for v in versions):
                raise self._damaged(f"the versions of {shorten(name)!r} are not a list of objects")
        while version < SCHEMA_VERSION:
            index = MIGRATIONS[version](index)
            version += 1
        index["schema_version"] = SCHEMA_VERSION
        for name, versions in index["masks"].items():
            for raw in versions:
                self._check_raw(name, raw)
        return index

    def _damaged(self, why: str) -> RegistryError:
        return RegistryError(f"registry index {self.index_path} is damaged ({why})", hint=_INDEX_HINT)

    def _check_raw(self, name: str, raw: dict) -> None:
        """One index entry: every field the registry reads, of its type (a hand edit fails here)."""
        ok = (isinstance(raw.get("version"), str) and isinstance(raw.get("sha256"), str) and _SHA256.fullmatch(raw["sha256"]) is not None
              and isinstance(raw.get("created_at"), str) and isinstance(raw.get("source") or {}, dict)
              and isinstance(raw.get("hub"), (dict, type(None))))
        if not ok:
            raise self._damaged(f"an entry of {shorten(name)!r} lacks version, sha256 or created_at, or has a field of the wrong type")

    def _write(self, index: dict) -> None:
        with atomic_file(self.index_path) as tmp:
            tmp.write_text(json.dumps(index, indent=2, sort_keys=True))

    def _entry(self, name: str, raw: dict) -> RegistryEntry:
        return RegistryEntry(name, raw["version"], raw["sha256"], raw["created_at"], self.objects / raw["sha256"], raw.get("source") or {}, raw.get("hub"))

    # -- public API --------------------------------------------------------------------------
    def add(self, folder: Path, name: str, version: str | None = None, *, source: dict | None = None, hub: dict | None = None,
            before_commit: Callable[[RegistryEntry], None] | None = None) -> RegistryEntry:
        """Store an artifact folder under `NAME@VERSION` (next `vN` when version is None).

        Adding identical content under an existing version is a no-op returning that entry.
        Registration is all or nothing: the artifact is verified, its object stored, then
        `before_commit` runs (e.g. writing a copy to `--out`), and only then does the index name
        it; when anything before that raises, the registry is as it was (a newly stored object is
        removed again).

        Args:
            folder: The artifact folder.
            name: Registry name.
            version: Version label, or None for the next `vN`.
            source: Where it came from (recorded).
            hub: Its Hub record, when pulled.
            before_commit: Called with the entry-to-be after the object is stored, before the
                index is written; an exception aborts the registration.

        Raises:
            MaskError: the artifact does not verify.
            RegistryError: bad name, version taken by other content, or home not writable.
        """
        check_name(name)
        if version is not None:
            check_version(version)
        mask = load_mask(folder)  # refuse corrupt artifacts before they enter the store
        sha = file_sha256(Path(folder) / MASK_FILE)
        with self._lock():
            index = self._read()
            versions = index["masks"].setdefault(name, [])
            if version is None:
                same = [v for v in versions if v["sha256"] == sha]
                if same and same[-1] is versions[-1]:  # re-adding the latest content: no new version
                    return self._existing(name, same[-1], Path(folder), mask, before_commit)
                nums = [version_key(v["version"])[1] for v in versions if version_key(v["version"])[0]]
                version = f"v{max(nums, default=0) + 1}"
            for v in versions:
                if v["version"] == version:
                    if v["sha256"] == sha:
                        return self._existing(name, v, Path(folder), mask, before_commit)
                    raise RegistryError(f"{name}@{version} already exists with other content", hint="omit --version to get the next one, or choose another")
            used = any(v["sha256"] == sha for vs in index["masks"].values() for v in vs)
            self._store_object(Path(folder), sha, mask)
            raw = {"version": version, "sha256": sha, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "source": source or {}, "hub": hub}
            try:
                if before_commit is not None:
                    before_commit(self._entry(name, raw))
                versions.append(raw)
                self._write(index)
            except BaseException:
                if not used:  # an object no entry names would only be garbage
                    shutil.rmtree(self.objects / sha, ignore_errors=True)
                raise
            return self._entry(name, raw)

    def _existing(self, name: str, raw: dict, folder: Path, mask: MaskData,
                  before_commit: Callable[[RegistryEntry], None] | None) -> RegistryEntry:
        """An entry that already holds this content: repair its object if damaged, run the hook."""
        self._store_object(folder, raw["sha256"], mask)
        entry = self._entry(name, raw)
        if before_commit is not None:
            before_commit(entry)
        return entry

    def _store_object(self, folder: Path, sha: str, mask: MaskData) -> None:
        target = self.objects / sha
        if (target / MASK_FILE).exists() and file_sha256(target / MASK_FILE) == sha:
            return
        if target.exists():  # a damaged object (edited or truncated by hand): store it afresh
            shutil.rmtree(target)
        with atomic_dir(target) as tmp:
            shutil.copy2(folder / MASK_FILE, tmp / MASK_FILE)
            if (folder / CARD_FILE).is_file():
                shutil.copy2(folder / CARD_FILE, tmp / CARD_FILE)
            # The config is written from the verified header, not copied: an object's files
            # are a function of its mask.safetensors, whichever copy of the artifact came first.
            (tmp / CONFIG_FILE).write_text(config_json(mask.config))
            if file_sha256(tmp / MASK_FILE) != sha:
                raise RegistryError(f"{folder / MASK_FILE} changed while it was being stored", hint="retry")

    def entries(self) -> list[RegistryEntry]:
        """All entries, by name then creation order."""
        index = self._read()
        return [self._entry(name, raw) for name in sorted(index["masks"]) for raw in index["masks"][name]]

    def find(self, ref: str) -> RegistryEntry | None:
        """Look up `NAME[@VERSION]` (NAME alone = latest); None when absent."""
        name, version = parse_ref(ref)
        versions = self._read()["masks"].get(name) or []
        if not versions:
            return None
        if version is None:
            return self._entry(name, versions[-1])
        for raw in versions:
            if raw["version"] == version:
                return self._entry(name, raw)
        return None

    def get(self, ref: str) -> RegistryEntry:
        """Like `find` but raises RegistryError with a hint when absent."""
        entry = self.find(ref)
        if entry is None:
            name, _ = parse_ref(ref)
            known = self._read()["masks"].get(name)
            hint = f"versions of {name}: {', '.join(v['version'] for v in known)}" if known else "list local masks with: szoq mask list"
            raise RegistryError(f"no mask {shorten(ref)!r} in the local registry", hint=hint)
        if not (entry.path / MASK_FILE).exists():
            raise RegistryError(f"the files of {entry.ref} are missing from {entry.path}", hint=f"remove it with szoq mask rm {entry.ref} and pull or build it again")
        # Re-hashed on every use: an object edited on disk (still a valid mask) must not be used
        # or published under a name that promised other bytes. A mask is a few MB: cheap.
        if file_sha256(entry.path / MASK_FILE) != entry.sha256:
            raise RegistryError(f"the files of {entry.ref} in {entry.path} were changed after it was registered (sha256 differs)",
                                hint=f"remove it with szoq mask rm {entry.ref} and pull or build it again")
        return entry

    def update_hub(self, ref: str, hub: dict) -> RegistryEntry:
        """Record where an entry lives on the Hub (repo, commit sha, tag)."""
        name, version = parse_ref(ref)
        with self._lock():
            index = self._read()
            for raw in index["masks"].get(name, []):
                if raw["version"] == version:
                    raw["hub"] = hub
                    self._write(index)
                    return self._entry(name, raw)
        raise RegistryError(f"no mask {shorten(ref)!r} in the local registry", hint="list local masks with: szoq mask list")

    def remove(self, ref: str) -> list[RegistryEntry]:
        """Remove `NAME@VERSION` (or every version of NAME); drop objects no longer named.

        Raises:
            RegistryError: when nothing matches.
        """
        name, version = parse_ref(ref)
        with self._lock():
            index = self._read()
            versions = index["masks"].get(name) or []
            gone = [v for v in versions if version is None or v["version"] == version]
            if not gone:
                raise RegistryError(f"no mask {shorten(ref)!r} in the local registry", hint="list local masks with: szoq mask list")
            keep = [v for v in versions if v not in gone]
            if keep:
                index["masks"][name] = keep
            else:
                del index["masks"][name]
            self._write(index)
            used = {v["sha256"] for vs in index["masks"].values() for v in vs}
            for v in gone:
                if v["sha256"] not in used:
                    shutil.rmtree(self.objects / v["sha256"], ignore_errors=True)
        return [self._entry(name, v) for v in gone]


def mask_name_for_sha256(sha256: str, *, registry: Registry | None = None) -> str | None:
    """The name of the local mask whose `mask.safetensors` has this sha256, or None.

    A built-in mask answers with its name, a registry entry with `NAME@vN` (the newest one
    holding that content).
    """
    for builtin in builtin_masks():
        if builtin.sha256 == sha256:
            return builtin.name
    entries = [e for e in (registry or Registry()).entries() if e.sha256 == sha256]
    return entries[-1].ref if entries else None
