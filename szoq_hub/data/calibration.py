"""Calibration windows: N sequences x L tokens of generic text, chosen deterministically."""

from __future__ import annotations

import gzip
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch

from ..core.errors import CalibrationError, DependencyError
from ..core.files import file_sha256

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrationInfo:
    """What a mask records about its calibration data."""

    source: str
    sha256: str | None
    samples: int
    seq_len: int
    seed: int
    tokens: int

    def to_dict(self) -> dict:
        return asdict(self)


def _read_texts(path: Path) -> Iterator[str]:
    name = path.name
    if name.endswith((".jsonl.gz", ".jsonl", ".json.gz")):
        opener = gzip.open if name.endswith(".gz") else open
        try:
            with opener(path, "rt", encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except ValueError:
                        raise CalibrationError(f"{path}:{lineno} is not valid JSON", hint="each line must be an object with a 'text' field") from None
                    text = row.get("text") if isinstance(row, dict) else None
                    if not isinstance(text, str):
                        raise CalibrationError(f"{path}:{lineno} has no 'text' field", hint="each line must be an object with a 'text' field")
                    if text.strip():
                        yield text
        except UnicodeDecodeError as exc:
            raise CalibrationError(f"{path} is not UTF-8 text (byte {exc.start} of a line)", hint="pass a .jsonl(.gz) file of {\"text\": ...} lines") from None
        except (OSError, EOFError) as exc:
            raise CalibrationError(f"cannot read {path}: {exc}", hint="check that the file is complete") from None
    else:
        # Plain text: paragraphs separated by blank lines are documents.
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CalibrationError(f"cannot read {path}: {exc.strerror}", hint="check the path") from None
        try:
            raw = data.decode("utf-8").replace("\r\n", "\n")
        except UnicodeDecodeError as exc:
            raise CalibrationError(f"{path} is not UTF-8 text (invalid byte at offset {exc.start})",
                                   hint="pass a plain-text or .jsonl(.gz) file; binary files are not calibration data") from None
        if "\x00" in raw:
            raise CalibrationError(f"{path} holds NUL bytes: it is a binary file, not text",
                                   hint="pass a plain-text or .jsonl(.gz) file; binary files are not calibration data")
        for line in raw.split("\n"):
            if line.strip():
                yield line


def _c4_texts() -> Iterator[str]:
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise DependencyError(
            "calibration source 'c4' needs the `datasets` package and a connection to the Hub",
            hint="pip install 'szoq[datasets]', or pass a local file: --calibration c4_sample.jsonl.gz",
        ) from None
    from datasets import load_dataset

    try:
        ds = load_dataset("allenai/c4", "en", split="validation", streaming=True)
        for row in ds:
            yield row["text"]
    except Exception as exc:  # datasets raises many types when offline
        raise CalibrationError(f"cannot stream allenai/c4: {str(exc).splitlines()[0]}", hint="pass a local file: --calibration path/to/c4.jsonl.gz") from None


def load_windows(source: str, tokenizer, *, samples: int, seq_len: int, seed: int = 0) -> tuple[torch.Tensor, CalibrationInfo]:
    """Cut `samples` windows of `seq_len` tokens from a text source.

    Documents are shuffled with a seeded generator, tokenized in that order with EOS between
    them, and the token stream is cut into consecutive windows; only as many documents as
    needed are tokenized.

    Args:
        source: `c4`, or a path to `.txt` / `.raw` / `.jsonl` / `.jsonl.gz` (with `text`).
        tokenizer: A transformers tokenizer.
        samples: Number of windows N (>= 1).
        seq_len: Tokens per window L (>= 2).
        seed: Seed of the document order.

    Returns:
        (windows [N, L] int64, CalibrationInfo). N may be smaller than asked when the source is
        short (a warning is logged); it is never zero.

    Raises:
        CalibrationError: missing, empty, or shorter than one window.
    """
    if samples < 1 or seq_len < 2:
        raise CalibrationError(f"need --samples >= 1 and --seq-len >= 2 (got {samples}, {seq_len})", hint="e.g. --samples 32 --seq-len 256")
    if source == "c4":
        texts = []
        for text in _c4_texts():  # stream only what is needed, in stream order
            texts.append(text)
            if sum(len(t) for t in texts) > samples * seq_len * 8:
                break
        digest = None
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise CalibrationError(f"calibration file {path} not found", hint="pass an existing .jsonl(.gz) or .txt file, or 'c4'")
        texts = list(_read_texts(path))
        digest = file_sha256(path)
    if not texts:
        raise CalibrationError(f"calibration source {source} holds no text", hint="use a file with non-empty 'text' fields or lines")

    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(texts), generator=gen).tolist()
    need = samples * seq_len
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for i in order:
        stream.extend(tokenizer(texts[i], add_special_tokens=False)["input_ids"])
        if eos is not None:
            stream.append(eos)
        if len(stream) >= need:
            break
    n = min(samples, len(stream) // seq_len)
    if n == 0:
        raise CalibrationError(
            f"calibration source {source} has {len(stream)} tokens, shorter than one window of {seq_len}",
            hint="use more text or a smaller --seq-len",
        )
    if n < samples:
        log.warning("calibration source has only %d windows of %d tokens (asked for %d)", n, seq_len, samples)
    windows = torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)  # [N, L]
    info = CalibrationInfo(source=source if source == "c4" else Path(source).name, sha256=digest, samples=n, seq_len=seq_len, seed=seed, tokens=n * seq_len)
    return windows, info
