"""MeZO's prompt templates and verbalizers for the built-in tasks: raw row -> `Example`.

Each built-in task is a `TaskSpec`: the template that builds an `Example` (a prompt, the
candidate continuations and the index of the right one), its metric, its files in the shared
offline data layout and its dataset on the Hugging Face Hub.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

TASKS = ("sst2", "rte", "cb", "boolq", "wic", "wsc", "copa", "multirc")


@dataclass
class Example:
    """One scored example: the prompt, its candidate continuations and the right one's index."""

    prompt: str
    options: list[str]
    label: int
    group: str | None = None  # MultiRC: question id (kept for reporting)



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


