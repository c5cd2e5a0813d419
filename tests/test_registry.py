"""The local registry: versions, content addressing, atomic writes, concurrency, migrations."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path

import pytest
import torch

from szoq_hub.core.errors import RegistryError
from szoq_hub.masks.artifact import MASK_FILE, MaskConfig, save_mask
from szoq_hub import SensitivityMask
from szoq_hub.masks.registry import SCHEMA_VERSION, Registry
from szoq_hub.hub.refs import open_mask, resolve_mask_ref

SHAPES = {"w": [10, 10]}


def artifact(tmp_path: Path, tag: int) -> Path:
    cfg = MaskConfig(base_model="org/m", base_revision=None, fingerprint="a" * 64, density=0.05, scope="per-matrix",
                     scorer="random", shapes=SHAPES, created_at="2026-01-01T00:00:00+00:00")
    idx = torch.tensor(sorted({(tag * 7 + k * 13) % 100 for k in range(5)}), dtype=torch.int32)
    if (tmp_path / f"art-{tag}").exists():
        return tmp_path / f"art-{tag}"
    return save_mask(SensitivityMask({"w": idx}, cfg), tmp_path / f"art-{tag}")


def test_versions_auto_increment_and_latest(tmp_path):
    reg = Registry()
    e1 = reg.add(artifact(tmp_path, 1), "m")
    e2 = reg.add(artifact(tmp_path, 2), "m")
    assert (e1.ref, e2.ref) == ("m@v1", "m@v2")
    assert reg.get("m").ref == "m@v2" and reg.get("m@v1").sha256 == e1.sha256
    assert e1.path.name == e1.sha256 and (e1.path / MASK_FILE).exists()
    assert reg.add(artifact(tmp_path, 2), "m").ref == "m@v2"  # same content as latest: no new version
    assert reg.add(artifact(tmp_path, 3), "m", "2026-q1").ref == "m@2026-q1"
    with pytest.raises(RegistryError, match="already exists with other content"):
        reg.add(artifact(tmp_path, 4), "m", "v1")


def test_content_addressed_objects_are_shared_and_collected(tmp_path):
    reg = Registry()
    a = reg.add(artifact(tmp_path, 1), "a")
    b = reg.add(artifact(tmp_path, 1), "b")
    assert a.path == b.path
    reg.remove("a")
    assert b.path.exists()  # still named by b
    reg.remove("b@v1")
    assert not b.path.exists()
    with pytest.raises(RegistryError, match="no mask 'b'"):
        reg.remove("b")


def test_refs_resolve_path_registry_and_builtin(tmp_path):
    reg = Registry()
    folder = artifact(tmp_path, 1)
    reg.add(folder, "mine")
    assert resolve_mask_ref(str(folder)) == folder
    assert resolve_mask_ref(str(folder / MASK_FILE)) == folder
    assert resolve_mask_ref("mine@v1").name == reg.get("mine").sha256
    builtin = open_mask("smollm2-135m-instruct")
    assert builtin.config.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and builtin.nnz == 106020
    with pytest.raises(RegistryError, match="no mask 'nope'"):
        resolve_mask_ref("nope")
    with pytest.raises(RegistryError, match="no mask 'mine@v9'") as info:
        resolve_mask_ref("mine@v9")
    assert info.value.hint == "versions of mine: v1"


def test_crash_leftovers_leave_registry_readable(tmp_path):
    reg = Registry()
    reg.add(artifact(tmp_path, 1), "m")
    # what a crash mid-write leaves: a temp index, a temp object folder, a half object
    (reg.root / ".index-crash").write_text('{"schema_version": 2, "masks": {"trunc')
    (reg.objects / ".obj-crash").mkdir()
    half = reg.objects / ("b" * 64)
    half.mkdir()
    (half / MASK_FILE).write_bytes(b"\x00" * 3)
    assert [e.ref for e in reg.entries()] == ["m@v1"]
    assert open_mask("m").nnz == 5


def test_damaged_object_is_stored_afresh(tmp_path):
    from szoq_hub.core.files import file_sha256

    folder = artifact(tmp_path, 1)
    sha = file_sha256(folder / MASK_FILE)
    reg = Registry()
    damaged = reg.objects / sha
    damaged.mkdir(parents=True)
    (damaged / MASK_FILE).write_bytes(b"\x00" * 3)  # same address, wrong bytes
    entry = reg.add(folder, "m")
    assert file_sha256(entry.path / MASK_FILE) == sha and open_mask("m").nnz == 5


def test_corrupt_index_is_an_error_not_a_reset(tmp_path):
    reg = Registry()
    reg.add(artifact(tmp_path, 1), "m")
    reg.index_path.write_text("{broken")
    with pytest.raises(RegistryError, match="unreadable"):
        reg.entries()
    assert reg.index_path.read_text() == "{broken"


def test_migration_from_schema_1(tmp_path):
    reg = Registry()
    e = reg.add(artifact(tmp_path, 1), "m")
    raw = json.loads(reg.index_path.read_text())
    raw["schema_version"] = 1
    for entry in raw["masks"]["m"]:
        del entry["hub"]
    reg.index_path.write_text(json.dumps(raw))
    assert reg.get("m").hub is None and reg.get("m").sha256 == e.sha256
    reg.add(artifact(tmp_path, 2), "m")
    assert json.loads(reg.index_path.read_text())["schema_version"] == SCHEMA_VERSION
    raw["schema_version"] = SCHEMA_VERSION + 1
    reg.index_path.write_text(json.dumps(raw))
    with pytest.raises(RegistryError, match="newer than this szoq"):
        reg.entries()


def _writer(home: str, folders: list[str], name: str, barrier) -> None:
    os.environ["SZOQ_HOME"] = home
    reg = Registry()
    barrier.wait()
    for f in folders:
        reg.add(Path(f), name)


def test_two_concurrent_writers_lose_nothing(tmp_path):
    folders = [str(artifact(tmp_path, k)) for k in range(16)]
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(os.environ["SZOQ_HOME"], folders[i::2], "shared", barrier)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    entries = Registry().entries()
    assert sorted(e.version for e in entries) == sorted(f"v{k}" for k in range(1, 17))
    assert len({e.sha256 for e in entries}) == 16
    for e in entries:
        assert open_mask(e.ref).nnz == 5


def test_unwritable_home(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("SZOQ_HOME", str(blocker / "home"))
    with pytest.raises(RegistryError, match="not writable"):
        Registry().add(artifact(tmp_path, 1), "m")
