"""Where szoq keeps its state: everything lives under one directory set by `SZOQ_HOME`."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import RegistryError


def szoq_home() -> Path:
    """Return the state directory (`$SZOQ_HOME`, default `~/.cache/szoq`).

    Returns:
        The directory path (not created).
    """
    env = os.environ.get("SZOQ_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "szoq"


def model_cache_dir() -> Path:
    """Return where converted models (GGUF -> safetensors) are cached.

    `SZOQ_MODEL_CACHE` overrides the default `$SZOQ_HOME/models`, so tests can share one
    conversion across many isolated homes.
    """
    env = os.environ.get("SZOQ_MODEL_CACHE")
    return Path(env).expanduser() if env else szoq_home() / "models"


def ensure_writable_dir(path: Path, what: str) -> Path:
    """Create `path` if needed and check that files can be written in it.

    Raises:
        RegistryError: when the directory cannot be created or written.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise RegistryError(
            f"{what} {path} is not writable ({exc.strerror or exc})",
            hint="set SZOQ_HOME to a writable directory, e.g. export SZOQ_HOME=~/.cache/szoq",
        ) from None
    return path


@contextmanager
def scratch_dir(kind: str) -> Iterator[Path]:
    """A private temp folder under `$SZOQ_HOME/tmp`, removed on exit.

    Its name carries the pid (`KIND-PID-XXXX`), so the folder of a killed process is found and
    removed by `szoq gc`, while one in use is left alone.

    Yields:
        The folder.
    """
    root = ensure_writable_dir(szoq_home() / "tmp", "SZOQ_HOME temp folder")
    tmp = Path(tempfile.mkdtemp(prefix=f"{kind}-{os.getpid()}-", dir=root))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
