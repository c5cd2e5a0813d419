"""Curated masks shipped in the package (`masks/catalog.json`), usable offline."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CatalogEntry:
    """A curated mask: its name, where it lies, and how it was built."""

    name: str
    path: Path
    model: str
    base_model: str
    scorer: str
    density: float
    command: str
    sha256: str


def _catalog_dir() -> Path | None:
    spec = importlib.util.find_spec("szoq_masks")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def builtin_masks() -> list[CatalogEntry]:
    """Every curated mask listed in the catalog (empty when the data package is absent)."""
    folder = _catalog_dir()
    if folder is None or not (folder / "catalog.json").exists():
        return []
    data = json.loads((folder / "catalog.json").read_text())
    return [
        CatalogEntry(m["name"], folder / m["path"], m["model"], m["base_model"], m["scorer"], float(m["density"]), m["command"], m["sha256"])
        for m in data["masks"]
    ]


def find_builtin(name: str) -> CatalogEntry | None:
    """The curated mask called `name`, or None."""
    return next((m for m in builtin_masks() if m.name == name), None)
