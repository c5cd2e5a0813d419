"""`szoq gc`: remove what interrupted writes left behind and caches nothing reads any more, never a
complete entry in use.

Every szoq write goes to a temp name first and is renamed into place, so a killed process
(kill -9, power loss) leaves only debris beside complete files: `.index.json-*.tmp` and
`objects/.<sha>-*` folders in the registry, objects that no index entry names, scratch folders
of builds and pulls under `$SZOQ_HOME/tmp`, and temp files in the model cache. Besides debris, the
model cache may hold `gguf-<16 hex>` folders: the fp32 safetensors copies szoq 0.1 converted every
GGUF file into (6.7 GB for a 1.5B model). GGUF files are streamed now (data/gguf_file.py) and only
the few-MB `gguf-meta-<16 hex>` folders are read, so gc removes the old copies too.

Safety under a concurrent writer: registry debris is collected while holding the registry's
own lock, under which every registry write (object, then index) happens, so nothing found
there can belong to a write in progress. Everything else carries its writer's pid in its name
(`files.temp_prefix`, `home.scratch_dir`) and is removed only when that process is gone.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.home import model_cache_dir, szoq_home
from ..core.files import pid_alive
from .registry import Registry

# `.NAME-PID-XXXXXXXX[.tmp]` (files.temp_prefix + mkstemp/mkdtemp's 8 random characters)
_TEMP = re.compile(r"^\..+-(\d+)-[A-Za-z0-9_]{8}(\.tmp)?$")
_SCRATCH = re.compile(r"^[a-z0-9-]+-(\d+)-[A-Za-z0-9_]{8}$")
_PROBE = re.compile(r"^\.write-probe-(\d+)$")
_OLD_GGUF_COPY = re.compile(r"^gguf-[0-9a-f]{16}$")  # szoq 0.1's fp32 copy of a GGUF file (not `gguf-meta-...`, read today)


@dataclass
class Debris:
    """One thing removed (or, in a dry run, that would be)."""

    path: str
    kind: str
    bytes: int


@dataclass
class GcReport:
    """What `collect_garbage` removed."""

    removed: list[Debris] = field(default_factory=list)
    dry_run: bool = False
    busy: int = 0  # temp files of writers still running, left alone

    @property
    def freed_bytes(self) -> int:
        return sum(d.bytes for d in self.removed)

    def to_dict(self) -> dict:
        return {"removed": [asdict(d) for d in self.removed], "freed_bytes": self.freed_bytes, "dry_run": self.dry_run, "busy": self.busy}


def _size(path: Path) -> int:
    try:
        if path.is_dir() and not path.is_symlink():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
        return path.lstat().st_size
    except OSError:
        return 0


def _remove(path: Path, kind: str, report: GcReport) -> None:
    size = _size(path)
    if not report.dry_run:
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            return  # its writer finished or another gc got there first
    report.removed.append(Debris(str(path), kind, size))


def _sweep_pid_named(folder: Path, report: GcReport, kind: str) -> None:
    """Hidden temp names beside real files: removed when their writer is gone."""
    if not folder.is_dir():
        return
    for path in sorted(folder.iterdir()):
        m = _TEMP.match(path.name) or _PROBE.match(path.name)
        if m:
            if pid_alive(int(m.group(1))):
                report.busy += 1
            else:
                _remove(path, kind, report)


def collect_garbage(*, dry_run: bool = False, registry: Registry | None = None) -> GcReport:
    """Remove the debris of interrupted writes under `$SZOQ_HOME` (and the model cache), and
    szoq 0.1's fp32 copies of GGUF files in the model cache (nothing reads them today).

    Args:
        dry_run: Only report what would be removed.
        registry: The registry to clean (default `Registry()`).

    Returns:
        A GcReport listing each removed path with its size.

    Raises:
        RegistryError: the registry index is unreadable (then nothing is removed from it), or
            its lock cannot be taken within two minutes.
    """
    report = GcReport(dry_run=dry_run)
    registry = registry or Registry()
    if registry.root.is_dir():
        with registry._lock():  # every registry write happens under this lock: none is in flight now
            named = {e.sha256 for e in registry.entries()}
            for path in sorted(registry.root.iterdir()):
                if path.name.startswith(".index.json-") and path.name.endswith(".tmp"):
                    _remove(path, "registry temp file", report)
                elif _PROBE.match(path.name) and not pid_alive(int(_PROBE.match(path.name).group(1))):
                    _remove(path, "write probe", report)
            if registry.objects.is_dir():
                for path in sorted(registry.objects.iterdir()):
                    if path.name.startswith("."):
                        _remove(path, "registry temp folder", report)
                    elif path.name not in named:
                        _remove(path, "unindexed object", report)
    scratch = szoq_home() / "tmp"
    if scratch.is_dir():
        for path in sorted(scratch.iterdir()):
            m = _SCRATCH.match(path.name)
            if m and pid_alive(int(m.group(1))):
                report.busy += 1
            elif m or _PROBE.match(path.name) and not pid_alive(int(_PROBE.match(path.name).group(1))):
                _remove(path, "scratch folder", report)
    _sweep_pid_named(model_cache_dir(), report, "model cache temp")
    if model_cache_dir().is_dir():
        for path in sorted(model_cache_dir().iterdir()):
            if _OLD_GGUF_COPY.match(path.name) and path.is_dir() and not path.is_symlink():
                _remove(path, "old GGUF fp32 copy", report)
    _sweep_pid_named(szoq_home(), report, "temp file")
    return report
