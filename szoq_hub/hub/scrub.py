"""One token scrubber for all text that came from outside and is about to be shown or stored.

A Hub (or a proxy in front of it) may echo the request's `Authorization` header in its error
text, and that text reaches `error:` lines, `--debug` tracebacks and logs. Everything szoq
prints or raises from outside goes through `scrub`, which removes:

- every token this process could send, whatever its shape: those szoq was handed (`remember`,
  e.g. `--token`), `HF_TOKEN` / `HUGGING_FACE_HUB_TOKEN` from the environment, and the tokens
  `hf auth login` saved (the token file and the stored-tokens file under `HF_HOME`, or where
  `HF_TOKEN_PATH` / `HF_STORED_TOKENS_PATH` point), read when text is scrubbed;
- `Bearer <anything>` (any scheme's credential after the word Bearer);
- `hf_...`-shaped strings (Hugging Face user and organisation tokens).

It is a pure function of its text; nothing here ever writes a token anywhere.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from pathlib import Path

REDACTED = "[token hidden]"
# A credential after "Bearer" that is not already the redaction (else "Bearer [token hidden] hidden]").
_BEARER = re.compile(r"(?i)\bbearer\s+(?!\[token hidden\])[^\s'\",;)}\]]+")
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9_\-]{4,}")
_ENV_TOKENS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
_remembered: set[str] = set()


def remember(token: str | None) -> None:
    """Scrub this token from all later text (called wherever a token is handed to szoq)."""
    if isinstance(token, str) and len(token) >= 4:
        _remembered.add(token)


def _token_files() -> list[Path]:
    """Where `hf auth login` keeps tokens: as huggingface_hub resolves them now, and as it would at import."""
    hf_home = Path(os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface").expanduser()
    files = [Path(os.environ.get("HF_TOKEN_PATH") or hf_home / "token").expanduser(),
             Path(os.environ.get("HF_STORED_TOKENS_PATH") or hf_home / "stored_tokens").expanduser()]
    constants = sys.modules.get("huggingface_hub.constants")  # already imported: the paths the client itself reads
    for name in ("HF_TOKEN_PATH", "HF_STORED_TOKENS_PATH"):
        value = getattr(constants, name, None)
        if isinstance(value, str):
            files.append(Path(value))
    return list(dict.fromkeys(files))


_file_cache: dict[Path, tuple[tuple[int, int], set[str]]] = {}


def _saved_tokens() -> set[str]:
    """The tokens saved on disk (the token file, and every `name = token` of the stored-tokens file;
    re-read when a file changes)."""
    found: set[str] = set()
    for path in _token_files():
        try:
            st = path.stat()
            if not path.is_file() or st.st_size > 1_000_000:
                continue
            key = (st.st_mtime_ns, st.st_size)
            if _file_cache.get(path, ((), set()))[0] != key:
                text = path.read_text(encoding="utf-8", errors="replace")
                stored = path.name != "token"  # stored_tokens: an INI file of `[name]` / `hf_token = TOKEN`
                values = {(line.partition("=")[2] if stored else line).strip() for line in text.splitlines()
                          if not (stored and (line.lstrip().startswith(("[", "#", ";")) or "=" not in line))}
                _file_cache[path] = (key, values)
        except OSError:
            continue
        found |= _file_cache[path][1]
    return found


def _known_tokens() -> list[str]:
    env = [os.environ.get(v) for v in _ENV_TOKENS]
    tokens = {t for t in (*_remembered, *env, *_saved_tokens()) if t and len(t) >= 4}
    return sorted(tokens, key=len, reverse=True)  # a token that contains another goes first


def scrub(text: object) -> str:
    """`text` as a string with every token removed (see the module docstring).

    Args:
        text: Any value; it is turned into a string first.

    Returns:
        The text, tokens replaced by "[token hidden]".
    """
    out = text if isinstance(text, str) else str(text)
    for token in _known_tokens():
        out = out.replace(token, REDACTED)
    out = _BEARER.sub("Bearer " + REDACTED, out)
    return _HF_TOKEN.sub(REDACTED, out)


def _scrub_record(record: logging.LogRecord) -> logging.LogRecord:
    try:
        message = record.getMessage()
    except Exception:  # a record whose args do not fit its format: logging reports that itself
        return record
    record.msg, record.args = scrub(message), None
    if record.exc_info:
        record.exc_text = scrub("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
    return record


def scrub_logging() -> None:
    """Scrub every log record this process creates (for programs such as the CLI; idempotent).

    Done at record creation, so that every handler and every logger (huggingface_hub's,
    httpx's) sees scrubbed text.
    """
    factory = logging.getLogRecordFactory()
    if getattr(factory, "_szoq_scrubs", False):
        return

    def scrubbing_factory(*args, **kwargs) -> logging.LogRecord:
        return _scrub_record(factory(*args, **kwargs))

    scrubbing_factory._szoq_scrubs = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(scrubbing_factory)
