"""What transformers reads from a GGUF file's metadata: its config and its tokenizer.

Both are built by transformers from the file's key-value metadata (no tensor is read). That
metadata is untrusted input and its parsers include native code, so every failure, including a
Rust panic surfacing as `pyo3_runtime.PanicException` (a `BaseException`), becomes one
`ModelError`; only KeyboardInterrupt and SystemExit pass through.
"""

from __future__ import annotations

from pathlib import Path

from ..core.errors import ModelError


def tokenizer_from_gguf(path: Path):
    """The tokenizer transformers builds from a GGUF file's vocabulary.

    Native tokenizer code can fail in ways Python's `except Exception` does not catch (a Rust
    panic surfaces as `pyo3_runtime.PanicException`, a `BaseException`): everything but
    KeyboardInterrupt and SystemExit becomes one ModelError.

    Raises:
        ModelError: the vocabulary cannot make a tokenizer.
    """
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 (see the docstring: PanicException is a BaseException)
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelError(f"cannot build the tokenizer of {path.name}: {type(exc).__name__}" + (f": {detail}" if detail else ""),
                         hint="the file's tokenizer.ggml.* metadata is damaged or of a kind transformers does not read") from None


def config_from_gguf(path: Path):
    """The transformers config of a GGUF file (its metadata only; no tensor is read).

    Raises:
        ModelError: transformers cannot read it.
    """
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 (metadata of any shape: one error)
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"cannot read the config of {path.name}: {detail}", hint="check that the file is a complete GGUF model supported by transformers") from None
