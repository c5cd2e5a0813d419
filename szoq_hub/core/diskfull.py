"""A full disk (or a file-size limit) while an output folder is written: one clean error.

Writers fail in two shapes when the disk fills: Python's `OSError` (ENOSPC, EDQUOT, EFBIG) and
safetensors' `SafetensorError`, whose only trace of the cause is the text "os error 28" (its
Rust writer does not keep the errno). `disk_errors` wraps a whole output write (outside
`atomic_dir`, which has already removed the half-written temp folder when the error reaches
it) and turns both shapes into a `SzoqError` with a hint; any other error passes unchanged.
"""

from __future__ import annotations

import errno
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import SzoqError

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
