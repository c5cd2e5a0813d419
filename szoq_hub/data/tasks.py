"""Tasks: data sources, MeZO's prompt templates and verbalizers, seeded MeZO-like sampling.

A task turns raw rows into `Example`s: a prompt, the candidate continuations (options) and the
index of the right one. Classification tasks share one option list (the verbalizers); COPA has
per-example options. Built-in data is read from a folder in the layout of the shared offline
data (`--data-dir` / `SZOQ_DATA_DIR`), else from the Hugging Face Hub through `datasets`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..core.errors import DependencyError, TaskError

log = logging.getLogger(__name__)

TASKS = ("sst2", "rte", "cb", "boolq", "wic", "wsc", "copa", "multirc")


@dataclass
class Example:
    """One scored example: the prompt, its candidate continuations and the right one's index."""

    prompt: str
    options: list[str]
    label: int
    group: str | None = None  # MultiRC: question id (kept for reporting)


@dataclass
class TaskData:
    """The sampled splits of a task.

    Attributes:
        name: Task name (`sst2`, ..., or `custom`).
        metric: `accuracy`: MeZO's metric for every built-in task (CB and MultiRC included) and
            for custom tasks.
        train, dev, eval: Examples; dev is drawn from the train split, eval from validation.
        demos: The pool for in-context demonstrations (the sampled train examples).
    """

    name: str
    metric: str
    train: list[Example]
    dev: list[Example]
    eval: list[Example]
    info: dict = field(default_factory=dict)
    origin: dict = field(default_factory=dict)  # where each split came from, as the user named it (for messages)


@dataclass
class Sampling:
    """How many examples to draw (capped by what exists), and the seed."""

    train_samples: int = 1000
    dev_samples: int = 500
    eval_samples: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        for option, value, low, mezo in (("--train-samples", self.train_samples, 1, 1000), ("--dev-samples", self.dev_samples, 0, 500),
                                         ("--eval-samples", self.eval_samples, 1, 1000)):
            if value < low:  # one option per message: name the one that is wrong
                raise TaskError(f"{option} must be >= {low}, got {value}", hint=f"MeZO uses {option} {mezo}")


# --- MeZO templates -------------------------------------------------------------------------

def _sst2(r: dict) -> Example:
    return Example(f"{r['sentence'].strip()} It was", [" terrible", " great"], int(r["label"]))


def _rte(r: dict) -> Example:
    label = {"entailment": 0, "not_entailment": 1}[r["label"]] if isinstance(r["label"], str) else int(r["label"])
    return Example(f"{r['premise']}\nDoes this mean that \"{r['hypothesis']}\" is true? Yes or No?\n", ["Yes", "No"], label)


def _cb(r: dict) -> Example:
    label = {"entailment": 0, "contradiction": 1, "neutral": 2}[r["label"]] if isinstance(r["label"], str) else int(r["label"])
    return Example(f"Suppose {r['premise']} Can we infer that \"{r['hypothesis']}\"? Yes, No, or Maybe?\n", ["Yes", "No", "Maybe"], label)


def _boolq(r: dict) -> Example:
    label = r["label"] if "label" in r else r["answer"]
    question = r["question"].strip()
    question = question[0].upper() + question[1:] + "?"
    return Example(f"{r['passage']} {question}\n", ["No", "Yes"], int(bool(label)))


def _wic(r: dict) -> Example:
    prompt = f"Does the word \"{r['word']}\" have the same meaning in these two sentences? Yes, No?\n{r['sentence1']}\n{r['sentence2']}\n"
    return Example(prompt, ["No", "Yes"], int(bool(r["label"])))


def _wsc(r: dict) -> Example:
    t = r["target"]
    prompt = f"{r['text']}\nIn the previous sentence, does the pronoun \"{t['span2_text'].lower()}\" refer to {t['span1_text']}? Yes or No?\n"
    return Example(prompt, ["No", "Yes"], int(bool(r["label"])))


def lowercase_sentence_start(sentence: str, context: str = "") -> str:
    """Lowercase a sentence's first letter where that is right in mid-sentence position.

    MeZO lowercases every COPA choice ("The man ..." -> "... so the man ..."), which also turns
    "I" into "i" (149 of the 1000 choices). The first word keeps its case when it is "I" or an
    "I'm"-style contraction, an acronym or a word with inner capitals ("TV", "McDonald"), or a
    name: a word that `context` (the premise and other choice) also capitalizes mid-sentence.
    """
    word = sentence.split(" ", 1)[0]
    bare = word.rstrip(".,;:!?")
    mid_sentence = {w.rstrip(".,;:!?") for part in context.split(". ") for w in part.split()[1:]}
    keep = (bare == "I" or bare.startswith("I'") or not bare[:1].isupper() or any(ch.isupper() for ch in bare[1:])
            or bare in mid_sentence)
    return sentence if keep else sentence[0].lower() + sentence[1:]


def _copa(r: dict) -> Example:
    premise = r["premise"].strip()
    premise = premise[:-1] if premise.endswith(".") else premise
    connector = {"cause": " because", "effect": " so"}[r["question"]]
    context = " ".join((r["premise"], r["choice1"], r["choice2"]))
    options = [" " + lowercase_sentence_start(c.strip(), context) for c in (r["choice1"], r["choice2"])]  # one choice starts with a space
    return Example(premise + connector, options, int(r["label"]))


def _multirc(r: dict) -> Example:
    prompt = f"{r['paragraph']}\nQuestion: {r['question']}\nI found this answer \"{r['answer']}\". Is that correct? Yes or No?\n"
    return Example(prompt, ["No", "Yes"], int(r["label"]), group=r.get("group"))


@dataclass(frozen=True)
class TaskSpec:
    """A built-in task: how to build examples, its metric, files, and its Hub dataset."""

    build: Callable[[dict], Example]
    metric: str
    train_file: str
    eval_file: str
    hub: tuple[str, str | None]  # datasets.load_dataset(path, name)
    eval_split: str = "validation"


BUILTIN: dict[str, TaskSpec] = {
    "sst2": TaskSpec(_sst2, "accuracy", "sst2/train.tsv", "sst2/dev.tsv", ("glue", "sst2")),
    "rte": TaskSpec(_rte, "accuracy", "superglue/RTE/train.jsonl", "superglue/RTE/val.jsonl", ("super_glue", "rte")),
    "cb": TaskSpec(_cb, "accuracy", "superglue/CB/train.jsonl", "superglue/CB/val.jsonl", ("super_glue", "cb")),
    "boolq": TaskSpec(_boolq, "accuracy", "superglue/BoolQ/train.jsonl", "superglue/BoolQ/val.jsonl", ("super_glue", "boolq")),
    "wic": TaskSpec(_wic, "accuracy", "superglue/WiC/original/train.data.txt", "superglue/WiC/val.jsonl", ("super_glue", "wic")),
    "wsc": TaskSpec(_wsc, "accuracy", "superglue/WSC/train.jsonl", "superglue/WSC/val.jsonl", ("super_glue", "wsc.fixed")),
    "copa": TaskSpec(_copa, "accuracy", "superglue/COPA/train.jsonl", "superglue/COPA/val.jsonl", ("super_glue", "copa")),
    "multirc": TaskSpec(_multirc, "accuracy", "superglue/MultiRC/train32.jsonl", "superglue/MultiRC/val.jsonl", ("super_glue", "multirc")),
}


# --- readers ---------------------------------------------------------------------------------

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
    if not path.is_file():
        raise TaskError(f"data file {path} not found", hint="check the path")
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


# --- custom tasks ----------------------------------------------------------------------------

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
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None]
        except ValueError as exc:
            raise TaskError(f"--template is not a valid format string: {exc}", hint='e.g. --template "{text} It was"') from None
        if not fields:
            raise TaskError("--template names no field", hint='e.g. --template "{text} It was"')
        self.fields = [f.split(".")[0].split("[")[0] for f in fields]
        if self.label_field in self.fields:
            raise TaskError(f"--template includes {{{self.label_field}}}, the label field: every prompt would contain its answer",
                            hint="leave the label out of --template; the answer words come from --labels")
        try:
            "".encode(self.encoding)
        except LookupError:
            raise TaskError(f"unknown --encoding {self.encoding!r}", hint="e.g. --encoding utf-8, latin-1 or cp1252") from None


def parse_labels(text: str) -> dict[str, str]:
    """Parse `value=word,value=word` into a dict.

    Raises:
        TaskError: an item without `=`, or an empty word.
    """
    out: dict[str, str] = {}
    for item in [p for p in text.split(",") if p.strip()]:
        if "=" not in item:
            raise TaskError(f"--labels item {item!r} has no '='", hint="e.g. --labels '0=terrible,1=great'")
        value, word = item.split("=", 1)
        if not word.strip():
            raise TaskError(f"label {value.strip()!r} has an empty verbalizer", hint="e.g. --labels '0=terrible,1=great'")
        out[value.strip()] = word
    return out


def load_task_file(path: str | os.PathLike) -> CustomTask:
    """Read a JSON or YAML task file with keys train, eval, dev, template, labels, label_field, encoding.

    Relative data paths are resolved against the task file's folder.

    Raises:
        TaskError: unreadable file, missing keys.
        DependencyError: a YAML file without PyYAML.
    """
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"task file {path} not found", hint="check the path")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise DependencyError("reading a YAML task file needs PyYAML", hint="pip install pyyaml, or write the task file as JSON") from None
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except ValueError as exc:
        raise TaskError(f"cannot parse task file {path}: {str(exc).splitlines()[0]}", hint="keys: train, eval, dev, template, labels, label_field, encoding") from None
    if not isinstance(data, dict) or not ({"train", "eval"} & set(data)) or "template" not in data or "labels" not in data:
        raise TaskError(f"task file {path} needs the keys train (or eval), template and labels", hint='e.g. {"train": "t.jsonl", "template": "{text} It was", "labels": {"0": " bad", "1": " good"}}')
    labels = data["labels"]
    labels = parse_labels(labels) if isinstance(labels, str) else {str(k): str(v) for k, v in labels.items()}

    def rel(p: str | None) -> str | None:
        return None if p is None else str((path.parent / p) if not Path(p).is_absolute() else Path(p))

    return CustomTask(train=rel(data.get("train")), eval=rel(data.get("eval")), dev=rel(data.get("dev")), template=data["template"], labels=labels,
                      label_field=data.get("label_field", "label"), encoding=data.get("encoding", "utf-8"))


def _custom_builder(task: CustomTask) -> Callable[[dict], Example]:
    values = list(task.labels)
    prompt_ends_in_space = False

    def build(row: dict) -> Example:
        missing = [f for f in task.fields if f not in row]
        if missing:
            raise TaskError(f"--template names the field {missing[0]!r}, which the data rows do not have (fields: {', '.join(map(str, row))})", hint="use {FIELD} names from the data file's header / keys")
        if task.label_field not in row:
            raise TaskError(f"label field {task.label_field!r} is not in the data rows (fields: {', '.join(map(str, row))})", hint="pass --label-field NAME")
        value = row[task.label_field]
        key = str(value).lower() if isinstance(value, bool) else str(value)
        if key not in task.labels:
            raise TaskError(f"label {key!r} has no verbalizer in --labels ({', '.join(values)})", hint=f"add it, e.g. --labels '{','.join(f'{v}={w.strip()}' for v, w in task.labels.items())},{key}=WORD'")
        prompt = task.template.format(**row)
        # A word after a prompt that does not end in whitespace needs its leading space.
        words = [w if (prompt[-1:].isspace() or w[:1].isspace() or prompt_ends_in_space) else " " + w for w in task.labels.values()]
        return Example(prompt, words, values.index(key))

    return build


# --- sampling --------------------------------------------------------------------------------

def _perm(n: int, seed: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def _split_train_dev(n: int, sampling: Sampling) -> tuple[int, int]:
    """(train, dev) counts from one train split of n rows, capped; dev keeps a share if short."""
    dev = min(sampling.dev_samples, max(n - sampling.train_samples, n // 4))
    train = min(sampling.train_samples, n - dev)
    return train, dev


def _split_by_group(examples: list[Example], n_train: int, n_dev: int, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, dev) of whole groups in seeded order: a group goes to train while it fits, then to dev.

    Splitting by answer row would put answers to the same question on both sides, so dev would
    score questions the model was trained on.
    """
    groups: dict[str | None, list[Example]] = {}
    for e in examples:
        groups.setdefault(e.group, []).append(e)
    keys = list(groups)
    train: list[Example] = []
    dev: list[Example] = []
    for i in _perm(len(keys), seed):
        members = groups[keys[i]]
        if not train or len(train) + len(members) <= n_train:  # the first group always trains (cut if too big)
            train += members[: n_train - len(train)]
        elif len(dev) + len(members) <= n_dev:
            dev += members
    return train, dev


def _build_all(rows: list[dict], build: Callable[[dict], Example], where: str) -> list[Example]:
    out = []
    for i, row in enumerate(rows):
        try:
            out.append(build(row))
        except (KeyError, TypeError, AttributeError, IndexError) as exc:
            raise TaskError(f"{where}: row {i} does not fit the task template ({type(exc).__name__}: {exc})", hint="check the data file's fields") from None
    return out


def load_task(task: str | None = None, *, custom: CustomTask | None = None, data_dir: str | os.PathLike | None = None,
              sampling: Sampling | None = None) -> TaskData:
    """Load and sample a task, MeZO-style: train and dev from the train split, eval from validation.

    Args:
        task: A built-in task name (ignored when `custom` is given).
        custom: A custom task.
        data_dir: Folder in the shared GLUE/SuperGLUE layout (default `SZOQ_DATA_DIR`).
        sampling: Sample counts and seed.

    Returns:
        The sampled `TaskData`.

    Raises:
        TaskError: unknown task, bad template/labels, empty or unreadable files.
        DependencyError: no data folder and no `datasets`.
    """
    sampling = sampling or Sampling()
    dev_all: list[Example] | None = None
    if custom is not None:
        build = _custom_builder(custom)

        def rows_of(path: str) -> list[Example]:
            return _build_all(read_rows(Path(path), custom.encoding), build, path)

        name, metric = "custom", "accuracy"
        source = custom.train or custom.eval
        train_all = rows_of(custom.train) if custom.train else []
        dev_all = rows_of(custom.dev) if custom.dev else None
        if custom.eval:
            eval_all, eval_from = rows_of(custom.eval), custom.eval
        else:  # hold out eval from the train file
            order = _perm(len(train_all), sampling.seed + 1)
            n_eval = min(sampling.eval_samples, max(1, len(train_all) // 5)) if len(train_all) > 1 else 0
            eval_all, eval_from = [train_all[i] for i in order[:n_eval]], f"held out from {custom.train}"
            train_all = [train_all[i] for i in order[n_eval:]]
            if not train_all:
                raise TaskError(f"{custom.train} has too few rows to hold out an eval set", hint="add rows or pass --eval FILE")
        train_from = custom.train
        dev_from = custom.dev or f"held out from {custom.train}"
    else:
        if task not in BUILTIN:
            raise TaskError(f"unknown task {task!r}", hint=f"choose one of: {', '.join(TASKS)}; or pass --train FILE --template ... --labels ...")
        train_rows, eval_rows, source = load_builtin_rows(task, data_dir)
        spec = BUILTIN[task]
        name, metric = task, spec.metric
        train_all = _build_all(train_rows, spec.build, f"{task} train")
        eval_all = _build_all(eval_rows, spec.build, f"{task} validation")
        train_from, dev_from, eval_from = f"{task} train", f"held out from {task} train", f"{task} validation"
    if dev_all is not None:  # an explicit dev file: train keeps every row it is asked for
        train = [train_all[i] for i in _perm(len(train_all), sampling.seed)[: sampling.train_samples]]
        dev = [dev_all[i] for i in _perm(len(dev_all), sampling.seed + 3)[: sampling.dev_samples]]
    else:
        n_train, n_dev = _split_train_dev(len(train_all), sampling)
        if any(e.group is not None for e in train_all):  # MultiRC: a question's answers stay on one side
            train, dev = _split_by_group(train_all, n_train, n_dev, sampling.seed)
        else:
            order = _perm(len(train_all), sampling.seed)
            train = [train_all[i] for i in order[:n_train]]
            dev = [train_all[i] for i in order[n_train:n_train + n_dev]]
    eval_order = _perm(len(eval_all), sampling.seed + 2)
    evals = [eval_all[i] for i in eval_order[: sampling.eval_samples]]
    info = {"source": source, "train_rows": len(train_all), "eval_rows": len(eval_all), "train": len(train), "dev": len(dev), "eval": len(evals)}
    log.info("task %s: %s", name, info)
    return TaskData(name, metric, train, dev, evals, info, {"train": train_from, "dev": dev_from, "eval": eval_from})


def describe_split(task: TaskData, sampling: Sampling) -> str:
    """One line saying how many examples each split holds and where they come from.

    Also says when the data cannot give the requested train or dev counts (e.g. `--train-samples
    1000` from a file whose rows went partly to dev and eval).
    """
    i, o = task.info, task.origin
    line = f"{task.name}: {i['train']} train ({o['train']}), {i['dev']} dev ({o['dev']}), {i['eval']} eval ({o['eval']})"
    # Eval takes what the eval split has (SST-2 validation holds 872 rows); train and dev are the
    # ones a file can silently short.
    short = [f"--{k}-samples {want} (got {i[k]})" for k, want in (("train", sampling.train_samples), ("dev", sampling.dev_samples))
             if 0 < i[k] < want or (k == "dev" and i[k] < want)]
    if short:
        line += "; fewer than asked: " + ", ".join(short)
    return line


def with_demonstrations(examples: list[Example], pool: list[Example], shots: int, seed: int) -> list[Example]:
    """Prefix each example with `shots` solved demonstrations drawn from `pool` (seeded).

    Args:
        examples: Examples to evaluate.
        pool: Demonstration pool (the train examples).
        shots: K demonstrations per example (0 = unchanged).
        seed: Seed of the draw.

    Returns:
        New examples whose prompts start with the demonstrations, separated by blank lines.
    """
    if shots <= 0:
        return examples
    if len(pool) < shots:
        raise TaskError(f"--icl-shots {shots} needs at least {shots} train examples, have {len(pool)}", hint="lower --icl-shots")
    gen = torch.Generator().manual_seed(seed)
    out = []
    for ex in examples:
        picks = torch.randperm(len(pool), generator=gen)[:shots].tolist()
        demos = "\n\n".join(pool[i].prompt + pool[i].options[pool[i].label] for i in picks)
        out.append(Example(demos + "\n\n" + ex.prompt, ex.options, ex.label, ex.group))
    return out


def describe(task: TaskData) -> dict[str, Any]:
    """Small JSON-able summary of a loaded task."""
    return {"task": task.name, "metric": task.metric, **task.info}


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
