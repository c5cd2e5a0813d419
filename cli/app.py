"""The root Typer app and the one place where errors become `error:` / `hint:` lines."""

from __future__ import annotations

import logging
import os
import sys

import typer

from szoq_hub import __version__
from szoq_hub.errors import SzoqError

app = typer.Typer(
    name="szoq",
    help="Zeroth-order fine-tuning of quantized LLMs with shareable sensitivity masks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"szoq {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks and debug logs.", envvar="SZOQ_DEBUG"),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """szoq: build, share and fine-tune with sensitivity masks."""
    if debug:
        os.environ["SZOQ_DEBUG"] = "1"
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not debug:  # szoq draws its own progress; keep transformers' bars and notices quiet
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        # bitsandbytes warns on CPU that the optional `kernels` package is missing; szoq does
        # not use it (it downloads kernels at run time), so the warning is noise here.
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def _register() -> None:
    from . import mask  # noqa: F401  (registers the `mask` group)

    for optional in ("mask_hub", "finetune", "delta", "plot", "export"):
        try:
            __import__(f"{__package__}.{optional}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{optional}":
                raise


def _hub_error(exc: Exception) -> SzoqError | None:
    """Map huggingface_hub exceptions that escaped the library to SzoqError."""
    try:
        from szoq_hub.hub import as_szoq_error
    except ImportError:
        return None
    return as_szoq_error(exc)


def main() -> None:
    """Console-script entry: run the app, print errors as one line plus a hint."""
    _register()
    from szoq_hub.memory import use_predictable_malloc

    use_predictable_malloc()
    try:
        app()
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # the one place errors are mapped
        if os.environ.get("SZOQ_DEBUG"):
            raise
        mapped = exc if isinstance(exc, SzoqError) else _hub_error(exc)
        if mapped is None:
            print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
            print("hint: this is a bug in szoq; rerun with --debug for the traceback and report it", file=sys.stderr)
            sys.exit(1)
        # plain print: an error line must never be wrapped or styled
        print(f"error: {mapped.message}", file=sys.stderr)
        if mapped.hint:
            print(f"hint: {mapped.hint}", file=sys.stderr)
        sys.exit(2 if isinstance(mapped, SzoqError) else 1)
