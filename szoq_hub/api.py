"""Public functions that span the layers (the package root sits above them all).

`as_user_error` is what turns an exception that escaped the library into the one-line error a
user can act on: the CLI (cli/app.py) maps errors through it in exactly one place.
"""

from __future__ import annotations

import errno

from .core.errors import SzoqError, shorten

# File-system refusals a user can act on (a bad path, permissions, a full disk), not bugs.
_FILE_ERRNOS = {errno.ENAMETOOLONG, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR,
                errno.ELOOP, errno.EEXIST, errno.ENOENT, errno.EFBIG}


def as_user_error(exc: BaseException) -> SzoqError | None:
    """The `SzoqError` (message + hint) an exception means to a user, or None for a bug.

    Args:
        exc: Any exception: a `SzoqError` is itself; a Hugging Face Hub error is mapped as the
            Hub layer maps it; an `OSError` about a named file becomes a one-line error.

    Returns:
        The error to show, or None when it is not a user error (a bug in szoq).
    """
    if isinstance(exc, SzoqError):
        return exc
    from .hub.errors import as_szoq_error

    mapped = as_szoq_error(exc)
    if mapped is None and isinstance(exc, OSError) and exc.errno in _FILE_ERRNOS and exc.filename is not None:
        mapped = SzoqError(f"{exc.strerror}: {shorten(exc.filename)}", hint="check the path, its permissions and the free space")
    return mapped
