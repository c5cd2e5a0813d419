"""Writing files safely: atomically (readers see the old file or the new one), with one clean error
for a full disk, under temp names `szoq gc` recognises; and a file's sha256."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import SzoqError


def path_exists(path: str | Path) -> bool:
    """`Path.exists` that says False, instead of raising, for names no file system accepts."""
    try:
        return Path(path).expanduser().exists()
    except (OSError, ValueError):  # e.g. ENAMETOOLONG, or a NUL byte
        return False


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
