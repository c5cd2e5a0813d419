"""Custom tasks: a task file or `--train/--template/--labels`, checked before any row is used.

A custom task is data files, a template and label verbalizers. Everything a user hands in is
checked for type and shape here: the template is parsed once into literal text and plain
`{field}` references (no format specs or lookups, so a prompt costs what its text costs), labels
are `value=word` pairs with no label named twice, a task file's keys are type-checked, and each
row's label and fields must be text or numbers. `tasks.load_task` samples the examples these build.
"""

from __future__ import annotations

import json
import os
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..core.errors import DependencyError, TaskError
from .task_sources import check_regular_file
from .task_templates import Example


@dataclass
class CustomTask:
    """A user task: rows from files, a format-string template and label verbalizers.

    Attributes:
        train: Path of the training file (jsonl/csv/tsv); None for zero-shot evaluation of `eval`.
        eval: Optional path of the evaluation file (else eval is held out from train).
        template: Python format string over the row's fields, e.g. "{text} It was".
        labels: Label value (as text) -> verbalizer word, e.g. {"0": "bad", "1": "good"}.
        label_field: The row field that holds the label.
        dev: Optional path of the dev file (else dev is held out from train).
        encoding: Text encoding of the data files.
    """

    train: str | None
    template: str
    labels: dict[str, str]
    eval: str | None = None
    label_field: str = "label"
    dev: str | None = None
    encoding: str = "utf-8"

    def __post_init__(self) -> None:
        if self.train is None and self.eval is None:
            raise TaskError("a custom task needs a data file", hint="pass --train FILE (and optionally --eval FILE), or --eval FILE for zero-shot evaluation")
        if not self.labels:
            raise TaskError("--labels is empty", hint="e.g. --labels '0=terrible,1=great'")
        words = list(self.labels.values())
        repeated = next((w for w in words if words.count(w) > 1), None)
        if repeated is not None:
            raise TaskError(f"--labels gives two labels the same verbalizer {repeated!r}: the model could not tell them apart",
                            hint="give each label its own word, e.g. --labels '0=terrible,1=great'")
        for what, text in (("--template", self.template), *(("--labels", w) for w in words), ("--label-field", self.label_field)):
            _check_text(text, what)
        self.pieces = parse_template(self.template)  # parsed once; prompts are rendered from the pieces, never by str.format
        self.fields = [f for _, f in self.pieces if f is not None]
        if self.label_field in self.fields:
            raise TaskError(f"--template includes {{{self.label_field}}}, the label field: every prompt would contain its answer",
                            hint="leave the label out of --template; the answer words come from --labels")
        try:
            "".encode(self.encoding)
        except LookupError:
            raise TaskError(f"unknown --encoding {self.encoding!r}", hint="e.g. --encoding utf-8, latin-1 or cp1252") from None


_TEMPLATE_HINT = 'only plain {FIELD} references (FIELD a data field name), e.g. --template "{text} It was"; write {{ and }} for braces'


def parse_template(template: str) -> list[tuple[str, str | None]]:
    """Parse a template once into (literal text, field name or None) pieces.

    Only plain `{field}` references are allowed: no conversions (`!r`), format specs (`:>300`),
    attribute or index lookups, or positional `{}`, so rendering a prompt is concatenation and
    costs what its text costs.

    Raises:
        TaskError: not a string, a malformed template, anything but a plain reference, or no field.
    """
    if not isinstance(template, str):
        raise TaskError(f"--template must be text, got {type(template).__name__}", hint=_TEMPLATE_HINT)
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise TaskError(f"--template is not a valid template: {exc}", hint=_TEMPLATE_HINT) from None
    pieces: list[tuple[str, str | None]] = []
    for literal, field, spec, conversion in parsed:
        if field is not None and (conversion is not None or spec or not field.isidentifier()):
            shown = "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise TaskError(f"--template reference {shown[:60]!r} is not a plain field reference", hint=_TEMPLATE_HINT)
        pieces.append((literal, field))
    if not any(f is not None for _, f in pieces):
        raise TaskError("--template names no field", hint='e.g. --template "{text} It was"')
    return pieces


def _check_text(text: object, what: str) -> None:
    """Refuse a value that is not text, or text no tokenizer can take (a lone surrogate)."""
    if not isinstance(text, str):
        raise TaskError(f"{what} must be text, got {type(text).__name__}", hint="e.g. --labels '0=terrible,1=great'")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise TaskError(f"{what} holds a lone surrogate (an unpaired \\ud800-\\udfff), which is not text", hint="remove or fix that character") from None


def parse_labels(text: str) -> dict[str, str]:
    """Parse `value=word,value=word` into a dict.

    Raises:
        TaskError: an item without `=`, an empty word, a word holding `=`, or a label given twice.
    """
    out: dict[str, str] = {}
    for item in [p for p in text.split(",") if p.strip()]:
        if "=" not in item:
            raise TaskError(f"--labels item {item!r} has no '='", hint="e.g. --labels '0=terrible,1=great'")
        value, word = item.split("=", 1)
        if not word.strip():
            raise TaskError(f"label {value.strip()!r} has an empty verbalizer", hint="e.g. --labels '0=terrible,1=great'")
        if "=" in word:
            raise TaskError(f"--labels item {item!r} holds a second '=': is the verbalizer {word!r}, or a typo?",
                            hint='for a word with "=" or ",", use a task file: {"labels": {"1": "good=x"}}')
        if value.strip() in out:
            raise TaskError(f"--labels names label {value.strip()!r} twice ({value.strip()}={out[value.strip()]}, {item.strip()})",
                            hint="give each label one verbalizer, e.g. --labels '0=terrible,1=great'")
        out[value.strip()] = word
    return out


_TASK_KEYS = {"train": "a file path or null", "eval": "a file path or null", "dev": "a file path or null", "template": "text",
              "labels": "an object of label -> word, or 'value=word,...'", "label_field": "a field name", "encoding": "an encoding name"}
_TASK_HINT = 'keys: train, eval, dev, template, labels, label_field, encoding; e.g. {"train": "t.jsonl", "template": "{text} It was", "labels": {"0": " bad", "1": " good"}}'


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    keys = [k for k, _ in pairs]
    repeated = next((k for k in keys if keys.count(k) > 1), None)
    if repeated is not None:
        raise TaskError(f"the task file names {repeated!r} twice", hint="keep one entry per key")
    return dict(pairs)


def _task_fields(data: dict, path: Path) -> dict[str, Any]:
    """Every task-file field type-checked; labels as label -> word."""
    unknown = sorted(str(k) for k in data if k not in _TASK_KEYS)
    if unknown:
        raise TaskError(f"task file {path} has an unknown key {unknown[0][:40]!r}", hint=_TASK_HINT)
    for key in ("train", "eval", "dev"):
        if data.get(key) is not None and not (isinstance(data[key], str) and data[key]):
            raise TaskError(f"task file {path}: {key} must be {_TASK_KEYS[key]}, got {type(data[key]).__name__}", hint=_TASK_HINT)
    for key in ("template", "label_field", "encoding"):
        if key in data and not isinstance(data[key], str):
            raise TaskError(f"task file {path}: {key} must be {_TASK_KEYS[key]}, got {type(data[key]).__name__}", hint=_TASK_HINT)
    labels = data["labels"]
    if isinstance(labels, str):
        return {**data, "labels": parse_labels(labels)}
    if not isinstance(labels, dict):
        raise TaskError(f"task file {path}: labels must be {_TASK_KEYS['labels']}, got {type(labels).__name__}", hint=_TASK_HINT)
    out: dict[str, str] = {}
    for value, word in labels.items():
        if not isinstance(value, (str, int, bool)) or not isinstance(word, str) or not word.strip():
            raise TaskError(f"task file {path}: labels[{str(value)[:20]!r}] must be a non-empty word", hint=_TASK_HINT)
        key = _label_key(value)
        if key in out:
            raise TaskError(f"task file {path}: labels names label {key!r} twice", hint="give each label one verbalizer")
        out[key] = word
    return {**data, "labels": out}


def load_task_file(path: str | os.PathLike) -> CustomTask:
    """Read a JSON or YAML task file with keys train, eval, dev, template, labels, label_field, encoding.

    Relative data paths are resolved against the task file's folder.

    Raises:
        TaskError: unreadable file, missing keys.
        DependencyError: a YAML file without PyYAML.
    """
    path = Path(path)
    check_regular_file(path, "task file")
    if path.stat().st_size > 1_000_000:
        raise TaskError(f"task file {path} is larger than 1 MB", hint="a task file names data files; it does not hold the rows")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise DependencyError("reading a YAML task file needs PyYAML", hint="pip install pyyaml, or write the task file as JSON") from None
            data = yaml.safe_load(text)
        else:
            data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise TaskError(f"cannot parse task file {path}: {str(exc).splitlines()[0][:120]}", hint=_TASK_HINT) from None
    except Exception as exc:  # PyYAML's own errors (not ValueErrors)
        if type(exc).__module__.split(".")[0] != "yaml":
            raise
        raise TaskError(f"cannot parse task file {path}: {str(exc).splitlines()[0][:120]}", hint=_TASK_HINT) from None
    if not isinstance(data, dict) or not ({"train", "eval"} & set(data)) or "template" not in data or "labels" not in data:
        raise TaskError(f"task file {path} needs the keys train (or eval), template and labels", hint=_TASK_HINT)
    data = _task_fields(data, path)

    def rel(p: str | None) -> str | None:
        return None if p is None else str((path.parent / p) if not Path(p).is_absolute() else Path(p))

    return CustomTask(train=rel(data.get("train")), eval=rel(data.get("eval")), dev=rel(data.get("dev")), template=data["template"], labels=data["labels"],
                      label_field=data.get("label_field", "label"), encoding=data.get("encoding", "utf-8"))


def _label_key(value: object) -> str:
    """A data label as --labels names it (JSON true/false as `true`/`false`)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def check_labels(rows: list[dict], task: CustomTask, where: str) -> None:
    """Refuse data whose labels --labels does not cover, naming the data's own label values.

    Raises:
        TaskError: none of the data's labels is in --labels (e.g. pos/neg data with README's
            `0=terrible,1=great`), or some are missing.
    """
    for number, r in enumerate(rows, 1):
        value = r.get(task.label_field) if isinstance(r, dict) else None
        if isinstance(r, dict) and task.label_field in r and not isinstance(value, (str, int, float, bool)):
            what = "null" if value is None else f"a JSON {type(value).__name__}"
            raise TaskError(f"{where}: row {number} has label {what}, not a label value", hint="give every row a label that --labels names, or drop the row")
    found = list(dict.fromkeys(_label_key(r[task.label_field]) for r in rows if isinstance(r, dict) and task.label_field in r))
    missing = [v for v in found if v not in task.labels]
    if not missing:
        return
    shown = ", ".join(found[:12]) + (", ..." if len(found) > 12 else "")
    if len(missing) == len(found):
        raise TaskError(f"none of the labels in {where} ({shown}) is in --labels ({', '.join(task.labels)})",
                        hint=f"name the data's own labels, e.g. --labels '{','.join(f'{v}=WORD' for v in found[:12])}'")
    raise TaskError(f"label {missing[0]!r} has no verbalizer in --labels ({', '.join(task.labels)}); the labels in {where}: {shown}",
                    hint=f"add it, e.g. --labels '{','.join(f'{v}={w.strip()}' for v, w in task.labels.items())},{','.join(f'{m}=WORD' for m in missing[:12])}'")


def _field_text(value: object, field: str) -> str:
    """A row's value as the prompt shows it: text and numbers; null, lists and objects are refused."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):  # bool included: True / False, as before
        return str(value)
    raise TypeError(f"field {field!r} is {'null' if value is None else 'a JSON ' + type(value).__name__}, not text")


def custom_builder(task: CustomTask) -> Callable[[dict], Example]:
    values = list(task.labels)
    prompt_ends_in_space = False

    def build(row: dict) -> Example:
        missing = [f for f in task.fields if f not in row]
        if missing:
            raise TaskError(f"--template names the field {missing[0]!r}, which the data rows do not have (fields: {', '.join(map(str, row))})", hint="use {FIELD} names from the data file's header / keys")
        if task.label_field not in row:
            raise TaskError(f"label field {task.label_field!r} is not in the data rows (fields: {', '.join(map(str, row))})", hint="pass --label-field NAME")
        value = row[task.label_field]
        key = _label_key(value)
        if key not in task.labels:
            raise TaskError(f"label {key!r} has no verbalizer in --labels ({', '.join(values)})", hint=f"add it, e.g. --labels '{','.join(f'{v}={w.strip()}' for v, w in task.labels.items())},{key}=WORD'")
        prompt = "".join(literal + (_field_text(row[f], f) if f is not None else "") for literal, f in task.pieces)
        # A word after a prompt that does not end in whitespace needs its leading space.
        words = [w if (prompt[-1:].isspace() or w[:1].isspace() or prompt_ends_in_space) else " " + w for w in task.labels.values()]
        return Example(prompt, words, values.index(key))

    return build


def custom_task_from(*, task_file: str | None, train_file: str | None, eval_file: str | None, template: str | None,
                     labels: str | None, label_field: str = "label", dev_file: str | None = None,
                     encoding: str = "utf-8") -> CustomTask | None:
    """The custom task that command-line settings describe (a task file wins), or None for built-ins.

    Raises:
        TaskError: a template or labels without a data file, a data file without them, or a
            template that includes the label field.
    """
    if task_file:
        return load_task_file(task_file)
    if train_file or eval_file or dev_file:
        if template is None or labels is None:
            raise TaskError("a custom task needs --template and --labels", hint="e.g. --template '{text} It was' --labels '0=terrible,1=great'")
        return CustomTask(train=train_file, eval=eval_file, dev=dev_file, template=template, labels=parse_labels(labels), label_field=label_field,
                          encoding=encoding)
    if template is not None or labels is not None:
        raise TaskError("--template and --labels describe a custom task, but no data file was given",
                        hint="pass --train FILE (finetune), or --eval FILE for zero-shot evaluation")
    return None
