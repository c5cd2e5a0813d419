"""The root Typer app and its options (`--debug`, `--version`).

Command modules import `app` from here, and `app.py` imports the command modules: keeping the
root apart from the entry point keeps imports one-way (no cycle between `app` and the groups).
"""

from __future__ import annotations

import logging
import os
import sys

import typer

from szoq_hub import __version__
from szoq_hub import set_progress_listener

from .render import library_progress

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


def _quiet_hugging_face() -> None:
    """transformers' and huggingface_hub's progress bars and notices off, without importing them (`szoq --help` stays light).

    Both read these settings at import; a CLI driven in-process after they were imported (a notebook, a test) is set directly.
    """
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # huggingface_hub's download/upload bars (szoq's push/pull lines instead) and transformers' bars
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


@app.callback()
def root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks and debug logs.", envvar="SZOQ_DEBUG"),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """szoq: build, share and fine-tune with sensitivity masks."""
    if debug:
        os.environ["SZOQ_DEBUG"] = "1"
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    set_progress_listener(library_progress)  # the library's progress events (conversion, eval, Hub transfers) as notes and lines
    if not debug:  # szoq draws its own progress; keep transformers' bars and notices quiet
        _quiet_hugging_face()
        # bitsandbytes warns on CPU that the optional `kernels` package is missing; szoq does
        # not use it (it downloads kernels at run time), so the warning is noise here.
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
