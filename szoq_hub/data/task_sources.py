"""Where a task's raw rows come from: csv/tsv/jsonl files, the shared offline data folder, or the Hub.

Built-in data is read from a folder in the layout of the shared offline data (`--data-dir` /
`SZOQ_DATA_DIR`), else from the Hugging Face Hub through `datasets`.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from ..core.errors import DependencyError, TaskError
from .task_templates import BUILTIN, TASKS


def _decode(path: Path, raw: bytes, encoding: str) -> str:
    """Decode a data file, naming the line of the first undecodable byte."""
    try:
        text = raw.decode(encoding)
    except LookupError:
        raise TaskError(f"unknown --encoding {encoding!r}", hint="e.g. --encoding utf-8, latin-1 or cp1252") from None
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise TaskError(f"{path} line {line} is not valid {encoding} (byte 0x{raw[exc.start]:02x})",
                        hint="pass the file's encoding, e.g. --encoding latin-1 or cp1252 (or save the file as UTF-8)") from None
    return text.removeprefix("\ufeff")  # a byte-order mark is not data


MAX_JSON_DEPTH = 32  # a data row is an object of text and numbers; deeper nesting is refused before any use


def check_regular_file(path: Path, what: str = "data file") -> None:
    """Refuse a path that does not exist, or is a folder, a FIFO, a device or a socket (directly or through
    a link): each would hang a read, read forever (/dev/zero) or fail with an OS error.

    Raises:
        TaskError: one message per case.
    """
    import stat

    try:
        mode = path.stat().st_mode  # follows links: a link to /dev/zero is a device
    except FileNotFoundError:
        link = " (a link to a missing file)" if path.is_symlink() else ""
        raise TaskError(f"{what} {path} not found{link}", hint="check the path") from None
    except OSError as exc:
        raise TaskError(f"cannot read {what} {path} ({exc.strerror})", hint="check the path and its permissions") from None
    if stat.S_ISDIR(mode):
        raise TaskError(f"{what} {path} is a folder, not a file", hint="pass the data file inside it (.jsonl, .csv or .tsv)")
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a regular file"
        via = " (through a link)" if path.is_symlink() else ""
        raise TaskError(f"{what} {path} is {kind}{via}, not a regular file", hint="copy the data into a regular file and pass that")


def _check_row_values(value: object, where: str) -> None:
    """Refuse nesting deeper than MAX_JSON_DEPTH and strings holding a lone surrogate (valid JSON, not text)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise TaskError(f"{where} nests deeper than {MAX_JSON_DEPTH} levels", hint="a row is an object of text and numbers")
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise TaskError(f"{where} holds a lone surrogate (an unpaired \\ud800-\\udfff escape), which is not text",
                                hint="fix or drop that row (only a surrogate pair, e.g. \\ud83d\\ude00, makes a character)") from None
        elif isinstance(item, dict):
            stack.extend((x, depth + 1) for kv in item.items() for x in kv)
        elif isinstance(item, list):
            stack.extend((x, depth + 1) for x in item)


def read_rows(path: Path, encoding: str = "utf-8") -> list[dict]:
    """Read a jsonl, csv or tsv file into a list of dict rows.

    JSON lines are split at `\n` only: U+2028, U+0085 and other characters that
    `str.splitlines()` treats as line breaks are valid inside JSON strings.

    Args:
        path: The data file.
        encoding: Its text encoding.

    Raises:
        TaskError: missing, undecodable, unparsable or empty file, or an unsupported extension;
            the message names the line.
    """
    path = Path(path)
    check_regular_file(path)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".csv", ".tsv"):
        raise TaskError(f"unsupported data file {path.name}", hint="use .jsonl, .csv or .tsv")
    text = _decode(path, path.read_bytes(), encoding)
    rows: list = []
    if suffix in (".jsonl", ".json"):
        for number, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError as exc:
                reason = getattr(exc, "msg", str(exc).splitlines()[0])
                raise TaskError(f"cannot parse {path} line {number}: {reason}", hint="jsonl: one JSON object per line") from None
            except RecursionError:
                raise TaskError(f"{path} line {number} nests deeper than {MAX_JSON_DEPTH} levels", hint="a row is an object of text and numbers") from None
            _check_row_values(rows[-1], f"{path} line {number}")
    else:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ",",
                                quoting=csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL)
        try:
            rows = list(reader)
        except csv.Error as exc:
            raise TaskError(f"cannot parse {path} line {reader.line_num}: {exc}", hint="csv/tsv: a header row, then one row per line") from None
    if not rows:
        raise TaskError(f"data file {path} has no rows", hint="a data file needs at least one example")
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise TaskError(f"{path}: row {number} is not an object with named fields", hint='e.g. {"text": "...", "label": 1}')
    return rows


def _wic_original(path: Path) -> list[dict]:
    gold = path.with_name(path.name.replace(".data.", ".gold."))
    data = path.read_text(encoding="utf-8").splitlines()
    labels = gold.read_text(encoding="utf-8").split()
    rows = []
    for line, lab in zip(data, labels):
        word, _pos, _idx, s1, s2 = line.split("\t")
        rows.append({"word": word, "sentence1": s1, "sentence2": s2, "label": lab == "T"})
    return rows


def _flatten_multirc(rows: list[dict]) -> list[dict]:
    flat = []
    for r in rows:
        if "paragraph" in r and "answer" in r:  # already flat (Hub layout)
            idx = r.get("idx")
            flat.append({**r, "group": f"{idx.get('paragraph')}-{idx.get('question')}" if isinstance(idx, dict) else None})
            continue
        text = r["passage"]["text"]
        for q in r["passage"]["questions"]:
            for a in q["answers"]:
                flat.append({"paragraph": text, "question": q["question"], "answer": a["text"], "label": a["label"], "group": f"{r['idx']}-{q['idx']}"})
    return flat


def data_dir_from(data_dir: str | os.PathLike | None) -> Path | None:
    """The data folder: the argument, else `SZOQ_DATA_DIR`, else None."""
    value = data_dir or os.environ.get("SZOQ_DATA_DIR")
    return Path(value).expanduser() if value else None


def _hub_rows(task: str, split: str) -> list[dict]:
    spec = BUILTIN[task]
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise DependencyError(
            f"no local data for task {task!r} and the `datasets` package is not installed",
            hint="pass --data-dir DIR (or set SZOQ_DATA_DIR) to a GLUE/SuperGLUE folder, or pip install datasets and go online",
        ) from None
    from datasets import load_dataset

    try:
        ds = load_dataset(spec.hub[0], spec.hub[1], split=split)
    except Exception as exc:  # datasets raises many types (offline, not found)
        raise TaskError(
            f"cannot load {spec.hub[0]}/{spec.hub[1]} from the Hub: {str(exc).splitlines()[0]}",
            hint="pass --data-dir DIR (or set SZOQ_DATA_DIR) to a GLUE/SuperGLUE folder, or go online",
        ) from None
    rows = [dict(r) for r in ds]
    if task == "wsc":  # Hub layout is flat; the templates read the jsonl's nested `target`
        rows = [{**r, "target": {"span1_text": r["span1_text"], "span2_text": r["span2_text"]}} for r in rows]
    return rows


def load_builtin_rows(task: str, data_dir: str | os.PathLike | None = None) -> tuple[list[dict], list[dict], str]:
    """Raw (train rows, validation rows, where from) of a built-in task.

    Raises:
        TaskError: unknown task, or no data anywhere.
        DependencyError: no data folder and no `datasets`.
    """
    if task not in BUILTIN:
        raise TaskError(f"unknown task {task!r}", hint=f"choose one of: {', '.join(TASKS)}; or pass --train FILE --template ... --labels ...")
    spec = BUILTIN[task]
    folder = data_dir_from(data_dir)
    if folder is not None:
        train_path, eval_path = folder / spec.train_file, folder / spec.eval_file
        if not train_path.is_file() or not eval_path.is_file():
            raise TaskError(
                f"{folder} has no {task} data (expected {spec.train_file} and {spec.eval_file})",
                hint="point --data-dir / SZOQ_DATA_DIR at a folder in the shared GLUE/SuperGLUE layout, or unset it to use `datasets`",
            )
        train = _wic_original(train_path) if task == "wic" else read_rows(train_path)
        evals = read_rows(eval_path)
        source = str(folder)
    else:
        train, evals = _hub_rows(task, "train"), _hub_rows(task, spec.eval_split)
        source = f"hub:{spec.hub[0]}/{spec.hub[1]}"
    if task == "multirc":
        train, evals = _flatten_multirc(train), _flatten_multirc(evals)
    return train, evals, source


