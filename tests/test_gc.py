"""`szoq gc`: removes the debris of interrupted writes, reports it, never touches a complete entry,
and is safe while another process writes to the registry (real processes, real kill -9)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from szoq_hub.masks.cleanup import collect_garbage
from szoq_hub.masks.artifact import MASK_FILE, load_mask
from szoq_hub.masks.registry import Registry
from test_hub import make_mask

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def own_caches(tmp_path, monkeypatch):
    """A private model cache and system temp dir, so gc never looks at shared ones."""
    monkeypatch.setenv("SZOQ_MODEL_CACHE", str(tmp_path / "models"))
    (tmp_path / "systmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "systmp"))
    return tmp_path


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def debris(path: Path, size: int = 100) -> Path:
    if path.suffix == ".tmp" or path.name.startswith(".write-probe"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
    else:
        path.mkdir(parents=True)
        (path / "part").write_bytes(b"x" * size)
    return path


def registry_debris(reg: Registry) -> list[str]:
    """Names in the registry that are not index.json, its lock, or an indexed object."""
    named = {e.sha256 for e in reg.entries()}
    loose = [p.name for p in reg.root.iterdir() if p.name not in ("index.json", ".lock", "objects")]
    return loose + [p.name for p in reg.objects.iterdir() if p.name not in named]


def test_gc_removes_exactly_the_debris_and_reports_it(own_caches, tmp_path, run_cli):
    home = Path(os.environ["SZOQ_HOME"])
    reg = Registry()
    entries = [reg.add(make_mask(tmp_path / f"m{i}", seed=i), "m") for i in range(2)]
    gone = dead_pid()
    expected = {
        debris(reg.root / f".index.json-{gone}-abcd1234.tmp", 300),
        debris(reg.root / ".index.json-abcd1234.tmp"),  # from before pids were recorded
        debris(reg.objects / f".{'a' * 64}-{gone}-abcd1234"),
        debris(reg.objects / f".{'b' * 64}-wxyz9876"),
        debris(reg.objects / ("c" * 64), 1000),  # stored, then killed before the index named it
        debris(home / "tmp" / f"szoq-build-{gone}-abcd1234", 5000),
        debris(home / "tmp" / f"szoq-pull-{gone}-abcd1234"),
        debris(Path(os.environ["SZOQ_MODEL_CACHE"]) / f".gguf-0123456789abcdef-{gone}-abcd1234"),
        debris(Path(os.environ["SZOQ_MODEL_CACHE"]) / "gguf-0123456789abcdef", 7000),  # szoq 0.1's fp32 copy of a GGUF file
    }
    keep = {
        debris(home / "tmp" / f"szoq-build-{os.getpid()}-abcd1234"),  # a live build (this process)
        debris(Path(os.environ["SZOQ_MODEL_CACHE"]) / f".gguf-0123456789abcdef-{os.getpid()}-abcd1234"),  # a live conversion
        debris(own_caches / "systmp" / "szoq-pull-oldone12"),  # the system temp dir is not szoq's to sweep
        debris(Path(os.environ["SZOQ_MODEL_CACHE"]) / "gguf-meta-0123456789abcdef"),  # what GGUF loading reads today
    }

    code, out, err = run_cli("gc", "--dry-run", "--json")
    assert code == 0, err
    planned = json.loads(out)
    assert planned["dry_run"] and {d["path"] for d in planned["removed"]} == {str(p) for p in expected}
    assert all(p.exists() for p in expected)

    code, out, err = run_cli("gc")
    assert code == 0, err
    assert "freed" in err and "in 9 item(s)" in err and "2 temp file(s) of running szoq processes left alone" in err
    assert "unindexed object" in out and "scratch folder" in out and "old GGUF fp32 copy" in out
    assert not any(p.exists() for p in expected)
    assert all(p.exists() for p in keep)
    for entry in entries:  # complete entries are untouched and still verify
        assert load_mask(reg.get(entry.ref).path).nnz > 0
    assert registry_debris(reg) == []

    code, out, err = run_cli("gc", "--json")
    assert code == 0 and json.loads(out)["removed"] == []


WRITER = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from szoq_hub.masks.registry import Registry
from test_hub import make_mask
root = Path({root!r})
for i in range({n}):
    Registry().add(make_mask(root / f"w{{i}}", seed=100 + i), "w")
    print(i, flush=True)
"""


def start_writer(root: Path, n: int) -> subprocess.Popen:
    code = WRITER.format(tests=str(TESTS), root=str(root), n=n)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())


def test_gc_is_safe_under_a_concurrent_writer_and_cleans_after_kill_9(own_caches, tmp_path):
    reg = Registry()
    reg.add(make_mask(tmp_path / "first"), "first")
    writer = start_writer(tmp_path / "writer", 12)
    runs = 0
    while writer.poll() is None:  # gc again and again while the other process adds masks
        collect_garbage()
        runs += 1
    out, err = writer.communicate()
    assert writer.returncode == 0, err
    assert runs >= 1
    names = [e.ref for e in reg.entries()]
    assert len(names) == 13 and all(load_mask(reg.get(r).path).nnz > 0 for r in names)

    # kill -9 in the middle of adds: whatever it leaves, gc removes, and every entry still verifies.
    killed = start_writer(tmp_path / "killed", 200)
    assert killed.stdout.readline()  # it has added at least one
    time.sleep(0.3)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    collect_garbage()
    assert registry_debris(reg) == []
    assert all(load_mask(e.path).nnz > 0 and (e.path / MASK_FILE).is_file() for e in reg.entries())
