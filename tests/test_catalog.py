"""`masks/catalog.json` pins what `masks/` ships: the file's sha256, its facts, and the command that builds it.

Whether that command still rebuilds the same bytes on the real model takes minutes of fp32
backward passes, so it is a benchmark (`bench/bench_builtin_mask.py`), not a test; these checks
keep the catalog, the shipped file and the command consistent with each other.
"""

from __future__ import annotations

import json
import shlex
from datetime import datetime, timezone
from pathlib import Path

import pytest

from szoq_hub.masks.catalog import _catalog_dir, builtin_masks
from szoq_hub.masks.artifact import MASK_FILE, load_mask
from szoq_hub.core.files import file_sha256


def entries() -> list[dict]:
    folder = _catalog_dir()
    if folder is None:
        pytest.skip("the szoq_masks data package is not installed")
    return json.loads((folder / "catalog.json").read_text())["masks"]


def recipe_of(command: str) -> tuple[dict[str, str], str]:
    """The env prefix of a catalog command and the recipe `szoq mask build` records for it."""
    words = shlex.split(command)
    env = {}
    while "=" in words[0] and not words[0].startswith("-"):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    assert words[:3] == ["szoq", "mask", "build"], command
    kept, skip = [], False
    for word in words[3:]:
        if skip:
            skip = False
        elif word in ("--out", "--name", "--version"):
            skip = True
        elif word != "--json":
            kept.append(Path(word).name if "/" in word else word)
    return env, "szoq mask build " + " ".join(shlex.quote(w) for w in kept)


def test_every_shipped_mask_matches_its_catalog_entry():
    listed = {e.name: e for e in builtin_masks()}
    for raw in entries():
        entry = listed[raw["name"]]
        assert file_sha256(entry.path / MASK_FILE) == raw["sha256"], f"{raw['name']}: the shipped file is not the pinned one"
        mask = load_mask(entry.path, fingerprint=raw["fingerprint"])
        assert mask.nnz == mask.config.stats["total_nnz"] == raw["nnz"]
        assert mask.config.stats["captured_share"] == raw["captured_share"]
        assert (mask.config.scorer, mask.config.density, mask.config.scope) == (raw["scorer"], raw["density"], raw["scope"])
        assert mask.config.calibration == raw["calibration"]


def test_the_catalog_command_is_the_recorded_recipe_with_its_build_time():
    for raw in entries():
        mask = load_mask(Path(_catalog_dir()) / raw["path"])
        env, recipe = recipe_of(raw["command"])
        assert mask.config.command == recipe
        # the build time is the header's only field not derived from the inputs: the command pins it
        epoch = int(env["SOURCE_DATE_EPOCH"])
        assert mask.config.created_at == datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds")
