"""Where szoq keeps its state: everything lives under one directory set by `SZOQ_HOME`."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shlex
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import RegistryError, SzoqError


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


def path_exists(path: str | Path) -> bool:
    """`Path.exists` that says False, instead of raising, for names no file system accepts."""
    try:
        return Path(path).expanduser().exists()
    except (OSError, ValueError):  # e.g. ENAMETOOLONG, or a NUL byte
        return False


def shorten(text: object, limit: int = 80) -> str:
    """A value as it may appear in a one-line message: at most `limit` characters."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_local_path(value: object) -> bool:
    """True for an absolute (or `~`) path: something private to this machine."""
    return isinstance(value, str) and (os.path.isabs(value) or value.startswith("~"))


# Hiding this machine's paths before anything is published (a mask's recipe, a delta's settings,
# a run's config and card): the one place that decides what is local and what it becomes.
def public(value: object) -> object:
    """A JSON value with every absolute local path reduced to its file or folder name."""
    if is_local_path(value):
        return Path(value).name or value
    if isinstance(value, dict):
        return {k: public(v) for k, v in value.items()}
    if isinstance(value, list):
        return [public(v) for v in value]
    return value


def public_word(word: str) -> str:
    """A command-line word safe to publish: a local path (absolute, `~`, or an existing relative
    path with a folder part), alone or as `--key=PATH`, becomes its file or folder name."""
    key, eq, value = word.partition("=")
    if eq and key.startswith("--"):
        return f"{key}={public_word(value)}"
    if is_local_path(word) or (os.sep in word and path_exists(word)):
        return Path(word).name or word
    return word


def command_words(command: str | None) -> list[str]:
    """The words of a recorded shell command (split on spaces where it does not parse)."""
    try:
        return shlex.split(command or "")
    except ValueError:
        return (command or "").split()


def local_paths(value: object) -> list[str]:
    """The absolute local paths a JSON value records (at any depth; `--key=PATH` words too), longest first."""
    found: set[str] = set()

    def walk(v: object) -> None:
        if isinstance(v, str):
            path = v.partition("=")[2] if v.startswith("--") else v
            if is_local_path(path):
                found.add(path)
        elif isinstance(v, dict):
            for item in v.values():
                walk(item)
        elif isinstance(v, list):
            for item in v:
                walk(item)
    walk(value)
    return sorted(found, key=len, reverse=True)


def public_text(text: str, paths: list[str]) -> str:
    """Text with each of `paths` (longest first, from `local_paths`) reduced to its name."""
    for path in paths:
        text = text.replace(path, Path(path).name or path)
    return text


def temp_prefix(name: str) -> str:
    """Prefix of a temp file or folder beside `name`: hidden, with the writer's pid.

    `szoq gc` removes such debris only when that process is gone, so a writer that is still
    running never loses its temp file.
    """
    return f".{name}-{os.getpid()}-"


def pid_alive(pid: int) -> bool:
    """True when a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # exists but belongs to another user; absurd ids are not alive
    return True


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


def file_sha256(path: Path) -> str:
    """sha256 hex digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _apply_umask(folder: Path) -> None:
    """mkdtemp creates 0700 folders; give a finished folder ordinary permissions."""
    umask = _umask()
    os.chmod(folder, 0o777 & ~umask)
    for f in folder.iterdir():
        os.chmod(f, 0o666 & ~umask)


@contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Write a file under a temp name beside `target`; on success sync it and rename it into place.

    Readers see the old file or the new one, never a half-written one; a failure leaves the
    old file untouched and no temp file behind.

    Yields:
        The temp path to write to.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=temp_prefix(target.name), suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Build a folder in a temp sibling and rename it into place only when the body succeeds.

    Readers never see a half-written `target`; a failure leaves nothing behind. `target` may
    exist only as an empty folder (callers refuse non-empty ones first, with their own hint).

    Yields:
        The temp folder to write into.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(target.name), dir=target.parent))
    try:
        yield tmp
        _apply_umask(tmp)
        if target.exists():
            target.rmdir()
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# A full disk (or a file-size limit) while an output folder is written: one clean error. Writers fail in two
# shapes: Python's OSError (ENOSPC, EDQUOT, EFBIG) and safetensors' SafetensorError, whose only trace of the
# cause is the text "os error 28" (its Rust writer does not keep the errno).
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_RUST_OS_ERROR = re.compile(r"os error (\d+)")


def full_disk_errno(exc: BaseException) -> int | None:
    """The errno of a full-disk / file-too-large failure in `exc`, else None."""
    if isinstance(exc, OSError) and exc.errno in _FULL:
        return exc.errno
    if type(exc).__name__ == "SafetensorError":  # no errno attribute: the Rust message carries it
        m = _RUST_OS_ERROR.search(str(exc))
        if m and int(m.group(1)) in _FULL:
            return int(m.group(1))
    return None


@contextmanager
def disk_errors(out: Path | str) -> Iterator[None]:
    """Map a full disk while writing `out` to a `SzoqError` (nothing partial is kept by `atomic_dir`).

    Raises:
        SzoqError: the disk (or quota, or file-size limit) ran out while writing `out`.
    """
    try:
        yield
    except Exception as exc:
        code = full_disk_errno(exc)
        if code is None:
            raise
        reason = "the file-size limit was reached" if code == errno.EFBIG else "no space left on the device"
        raise SzoqError(f"{reason} while writing {out}; nothing was kept",
                        hint="free some space (or raise the limit) and run the same command again, or choose another --out") from None
