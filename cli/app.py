"""The `szoq` entry point and the one place where errors become `error:` / `hint:` lines."""

from __future__ import annotations

import os
import sys

from szoq_hub import Interrupted, SzoqError, as_user_error, scrub, scrub_logging, use_predictable_malloc

from .root import app


def _register() -> None:
    """Import the command groups: each adds itself to `app`."""
    from . import cleanup, delta, export, finetune, mask, mask_hub  # noqa: F401


def _interrupt_in(exc: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt that an exit was raised from, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _interrupted(exc: KeyboardInterrupt) -> None:
    """Ctrl-C: one `error:` line (where it stopped and what was kept), a hint, exit 130."""
    print(f"error: {exc.message}" if isinstance(exc, Interrupted) else "error: interrupted", file=sys.stderr)
    hint = exc.hint if isinstance(exc, Interrupted) else "nothing half-written is ever used; szoq gc removes what an interrupted write left behind"
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
    sys.exit(130)


def main() -> None:
    """Console-script entry: run the app, print errors as one line plus a hint."""
    _register()  # the command groups' options come from the library's configs, which are torch-free
    use_predictable_malloc()
    scrub_logging()  # a --token is remembered as it is parsed (mask_hub.TOKEN), then scrubbed from all output
    try:
        app()
    except KeyboardInterrupt as exc:
        _interrupted(exc)
    except SystemExit as exc:
        # Typer turns Ctrl-C inside a command into a silent exit 130: say what happened.
        interrupt = _interrupt_in(exc)
        if interrupt is None:
            raise
        _interrupted(interrupt)
    except Exception as exc:  # the one place errors are mapped
        if os.environ.get("SZOQ_DEBUG"):  # the traceback, with any token a server echoed removed
            import traceback

            print(scrub("".join(traceback.format_exception(exc))), end="", file=sys.stderr)
            sys.exit(1)
        mapped = as_user_error(exc)
        if mapped is None:
            print(scrub(f"error: {type(exc).__name__}: {exc}"), file=sys.stderr)
            print("hint: this is a bug in szoq; rerun with --debug for the traceback and report it", file=sys.stderr)
            sys.exit(1)
        # plain print: an error line must never be wrapped or styled
        print(scrub(f"error: {mapped.message}"), file=sys.stderr)
        if mapped.hint:
            print(scrub(f"hint: {mapped.hint}"), file=sys.stderr)
        sys.exit(2 if isinstance(mapped, SzoqError) else 1)
