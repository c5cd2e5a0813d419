"""Tasks, templates, sampling and option scoring (fast paths against a slow full-logit reference)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import SHARED_DATA
from szoq_hub.core.errors import DependencyError, TaskError
from szoq_hub.data.scoring import encode, loss_sum, metric_value, option_scores, shared_single_token
from szoq_hub.data.task_templates import TASKS, Example, lowercase_sentence_start
from szoq_hub.data.custom_tasks import CustomTask, load_task_file, parse_labels
from szoq_hub.data.tasks import Sampling, load_task, with_demonstrations

needs_data = pytest.mark.skipif(not (SHARED_DATA / "sst2").is_dir(), reason=f"shared data not found at {SHARED_DATA}")


# The verbalizers of MeZO's templates (COPA's options are the two choices of each example).
OPTIONS = {"sst2": [" terrible", " great"], "rte": ["Yes", "No"], "cb": ["Yes", "No", "Maybe"], "boolq": ["No", "Yes"], "wic": ["No", "Yes"],
           "wsc": ["No", "Yes"], "multirc": ["No", "Yes"]}


@needs_data
@pytest.mark.parametrize("name", TASKS)
def test_builtin_tasks_load_from_data_dir(name):
    sampling = Sampling(train_samples=20, dev_samples=5, eval_samples=30, seed=0)
    data = load_task(name, data_dir=SHARED_DATA, sampling=sampling)
    assert (data.name, data.metric) == (name, "accuracy")
    assert (len(data.train), len(data.eval)) == (20, 30), data.info
    assert len(data.dev) == 5 or (name == "multirc" and 0 < len(data.dev) < 5)  # whole questions only (MultiRC)
    assert data.info["source"] == str(SHARED_DATA) and data.info["train"] == 20 and data.info["eval"] == 30
    for ex in data.train + data.dev + data.eval:
        assert 0 <= ex.label < len(ex.options) and ex.prompt
        if name == "copa":
            assert len(ex.options) == 2 and ex.options[0] != ex.options[1]
        else:
            assert ex.options == OPTIONS[name], ex.options
    assert not {e.prompt for e in data.train} & {e.prompt for e in data.dev}  # dev is disjoint from train
    again = load_task(name, data_dir=SHARED_DATA, sampling=sampling)  # the seed fixes the sample
    assert [(e.prompt, e.label) for e in again.train + again.dev + again.eval] == [(e.prompt, e.label) for e in data.train + data.dev + data.eval]
    other = load_task(name, data_dir=SHARED_DATA, sampling=Sampling(train_samples=20, dev_samples=5, eval_samples=30, seed=1))
    assert [e.prompt for e in other.train] != [e.prompt for e in data.train]


@needs_data
def test_sst2_template_and_verbalizers_match_mezo():
    data = load_task("sst2", data_dir=SHARED_DATA, sampling=Sampling(5, 0, 5))
    ex = data.eval[0]
    assert ex.prompt.endswith(" It was") and ex.options == [" terrible", " great"]
    assert data.metric == "accuracy"


@needs_data
def test_multirc_keeps_a_questions_answers_on_one_side():
    """MultiRC scores each answer of a question as its own example, grouped by question: a question's
    answers never straddle train and dev (the same question would leak)."""
    data = load_task("multirc", data_dir=SHARED_DATA, sampling=Sampling(40, 10, 5))
    train_groups, dev_groups = {e.group for e in data.train}, {e.group for e in data.dev}
    assert None not in train_groups and not train_groups & dev_groups


@needs_data
def test_copa_lowercases_choices_but_not_i():
    data = load_task("copa", data_dir=SHARED_DATA, sampling=Sampling(400, 0, 100))
    options = [o for e in data.train + data.eval for o in e.options]
    assert sum(o.startswith((" I ", " I'")) for o in options) > 100  # "I" kept (149 of the 1000 choices start with it)
    assert not any(o.startswith((" i ", " i'")) for o in options)
    assert any(o.startswith(" the ") for o in options) and not any(o.split()[0] == "The" for o in options)
    assert not any(o.startswith("  ") for o in options)  # a choice in the data starts with a space


@pytest.mark.parametrize("sentence,context,expected", [
    ("The man laughed.", "", "the man laughed."),
    ("I woke up.", "", "I woke up."),
    ("I'm tired.", "", "I'm tired."),
    ("TV prices fell.", "", "TV prices fell."),
    ("Mary left early.", "I waved at Mary.", "Mary left early."),  # a name: capitalized mid-sentence elsewhere
    ("She left early.", "She waved.", "she left early."),  # sentence-initial elsewhere only: not a name
])
def test_lowercase_sentence_start(sentence, context, expected):
    assert lowercase_sentence_start(sentence, context) == expected


def _multirc_rows(passages=12, questions=3, answers=5):
    return [{"idx": p, "passage": {"text": f"passage {p}", "questions": [
        {"idx": q, "question": f"q{p}.{q}?", "answers": [{"idx": a, "text": f"a{a}", "label": a % 2} for a in range(answers)]}
        for q in range(questions)]}} for p in range(passages)]


@pytest.mark.parametrize("seed", range(4))
def test_multirc_dev_never_shares_a_question_with_train(tmp_path, seed):
    folder = tmp_path / "superglue" / "MultiRC"
    folder.mkdir(parents=True)
    _jsonl(folder / "train32.jsonl", _multirc_rows())
    _jsonl(folder / "val.jsonl", _multirc_rows(2))
    data = load_task("multirc", data_dir=tmp_path, sampling=Sampling(120, 50, 10, seed=seed))
    train_q, dev_q = {e.group for e in data.train}, {e.group for e in data.dev}
    assert len(data.train) == 120 and len(data.dev) == 50  # whole questions of 5 answers fill both budgets exactly
    assert dev_q and not train_q & dev_q
    assert all(sum(e.group == g for e in data.train) == 5 for g in train_q)  # every question whole


@needs_data
def test_sampling_is_seeded_and_capped():
    a = load_task("cb", data_dir=SHARED_DATA, sampling=Sampling(1000, 500, 1000, seed=3))
    b = load_task("cb", data_dir=SHARED_DATA, sampling=Sampling(1000, 500, 1000, seed=3))
    c = load_task("cb", data_dir=SHARED_DATA, sampling=Sampling(1000, 500, 1000, seed=4))
    assert [e.prompt for e in a.train] == [e.prompt for e in b.train] != [e.prompt for e in c.train]
    assert len(a.train) + len(a.dev) == 250 and len(a.dev) > 0 and len(a.eval) == 56  # capped by what exists


@needs_data
def test_copa_has_per_example_multi_token_options():
    data = load_task("copa", data_dir=SHARED_DATA, sampling=Sampling(5, 0, 5))
    ex = data.eval[0]
    assert ex.prompt.endswith((" because", " so")) and all(o.startswith(" ") for o in ex.options)


def test_unknown_task():
    with pytest.raises(TaskError, match="unknown task"):
        load_task("sst3")


def test_no_data_anywhere_names_both_ways(monkeypatch, tmp_path):
    monkeypatch.delenv("SZOQ_DATA_DIR", raising=False)
    with pytest.raises((TaskError, DependencyError)) as info:
        load_task("rte")
    assert "--data-dir" in info.value.hint and "datasets" in info.value.hint
    with pytest.raises(TaskError, match="has no rte data"):
        load_task("rte", data_dir=tmp_path)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_custom_task_jsonl_csv_tsv(tmp_path):
    rows = [{"text": f"row {i}", "label": i % 2} for i in range(20)]
    _jsonl(tmp_path / "t.jsonl", rows)
    (tmp_path / "t.csv").write_text("text,label\n" + "".join(f"row {i},{i % 2}\n" for i in range(20)))
    (tmp_path / "t.tsv").write_text("text\tlabel\n" + "".join(f"row {i}\t{i % 2}\n" for i in range(20)))
    for name in ("t.jsonl", "t.csv", "t.tsv"):
        task = CustomTask(train=str(tmp_path / name), template="{text} It was", labels=parse_labels("0=bad,1=good"))
        data = load_task(custom=task, sampling=Sampling(10, 2, 4))
        assert len(data.train) == 10 and len(data.dev) == 2 and len(data.eval) == 4
        ex = data.train[0]
        assert ex.options == [" bad", " good"] and ex.prompt.endswith("It was")  # leading space added


def test_custom_task_file_json(tmp_path):
    _jsonl(tmp_path / "train.jsonl", [{"q": "x", "y": "yes"}, {"q": "z", "y": "no"}] * 5)
    (tmp_path / "task.json").write_text(json.dumps({"train": "train.jsonl", "template": "Q: {q}\nA:", "labels": {"no": " No", "yes": " Yes"}, "label_field": "y"}))
    data = load_task(custom=load_task_file(tmp_path / "task.json"), sampling=Sampling(4, 0, 2))
    assert data.train[0].options == [" No", " Yes"]


@pytest.mark.parametrize("rows,template,labels,match", [
    ([{"text": "a", "label": 0}], "{sentence} It was", "0=bad,1=good", "field 'sentence'"),
    ([{"text": "a", "label": 2}, {"text": "b", "label": 0}], "{text}", "0=bad,1=good", "label '2' has no verbalizer"),
    ([{"text": "a", "label": 0}], "{text}", "0=bad,1", "has no '='"),
])
def test_custom_task_errors(tmp_path, rows, template, labels, match):
    path = _jsonl(tmp_path / "t.jsonl", rows)
    with pytest.raises(TaskError, match=match):
        load_task(custom=CustomTask(train=str(path), template=template, labels=parse_labels(labels)))


def test_labels_none_of_which_the_data_has_say_so_and_list_the_data_labels(tmp_path):
    """README's `--labels "0=terrible,1=great"` copied onto pos/neg data (issue 22 item 6)."""
    path = _jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}] * 3)
    with pytest.raises(TaskError) as caught:
        load_task(custom=CustomTask(train=str(path), template="{text} It was", labels=parse_labels("0=terrible,1=great")))
    assert caught.value.message == f"none of the labels in {path} (pos, neg) is in --labels (0, 1)"
    assert caught.value.hint == "name the data's own labels, e.g. --labels 'pos=WORD,neg=WORD'"


def test_a_missing_label_names_the_data_labels_and_keeps_the_given_ones(tmp_path):
    path = _jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1}, {"text": "c", "label": 2}])
    with pytest.raises(TaskError) as caught:
        load_task(custom=CustomTask(train=str(path), template="{text}", labels=parse_labels("0=bad,1=good")))
    assert caught.value.message == f"label '2' has no verbalizer in --labels (0, 1); the labels in {path}: 0, 1, 2"
    assert caught.value.hint == "add it, e.g. --labels '0=bad,1=good,2=WORD'"


def test_empty_train_file(tmp_path):
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(TaskError, match="no rows"):
        load_task(custom=CustomTask(train=str(tmp_path / "e.jsonl"), template="{text}", labels={"0": "a"}))


def test_icl_demonstrations_prefix_solved_examples():
    pool = [Example(f"p{i}", [" a", " b"], i % 2) for i in range(10)]
    out = with_demonstrations([Example("q", [" a", " b"], 0)], pool, 3, seed=0)
    assert out[0].prompt.count("\n\n") == 3 and out[0].prompt.endswith("\n\nq")
    with pytest.raises(TaskError):
        with_demonstrations(pool, pool[:2], 3, 0)


def test_metrics():
    assert metric_value("accuracy", [1, 0, 1], [1, 1, 1]) == pytest.approx(2 / 3)
    assert metric_value("f1", [1, 0, 1, 0], [1, 1, 0, 0]) == pytest.approx(0.5)
    assert metric_value("macro_f1", [0, 1, 2], [0, 1, 2]) == 1.0


# --- scoring against a slow reference --------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def _reference_scores(model, enc):
    """Slow path: one unpadded forward per (example, option) with full logits."""
    out = torch.full((len(enc), max(len(e.options) for e in enc)), -float("inf"))
    for b, e in enumerate(enc):
        for j, opt in enumerate(e.options):
            ids = torch.tensor([e.contexts[j] + opt])
            logp = model(ids).logits[0].log_softmax(-1)  # [T, V]
            lp = [logp[len(e.contexts[j]) - 1 + k, t] for k, t in enumerate(opt)]
            out[b, j] = torch.stack(lp).mean()
    return out


def test_single_token_fast_path_matches_reference(tiny_lm):
    model, tok = tiny_lm
    exs = [Example(p, [" great", " terrible"], i % 2) for i, p in enumerate(["the movie was", "a boring plot and bad acting. It was", "It was"])]
    enc = encode(tok, exs)
    enc = [type(e)(e.prompt, [o[:1] for o in e.options], e.label) for e in enc]  # force single tokens
    assert shared_single_token(enc)
    with torch.no_grad():
        torch.testing.assert_close(option_scores(model, enc, tok.pad_token_id), _reference_scores(model, enc), atol=1e-4, rtol=1e-4)


def test_multi_token_path_matches_reference(tiny_lm):
    model, tok = tiny_lm
    exs = [Example("the movie was", [" great and wonderful", " bad"], 0), Example("zeroth order", [" fine tuning of models", " quantized", " x"], 2)]
    enc = encode(tok, exs)
    assert not shared_single_token(enc)
    with torch.no_grad():
        torch.testing.assert_close(option_scores(model, enc, tok.pad_token_id), _reference_scores(model, enc), atol=1e-4, rtol=1e-4)
        ref = _reference_scores(model, enc)
    expected = sum(float(-ref[b].log_softmax(-1)[e.label]) for b, e in enumerate(enc))
    assert loss_sum(model, enc, tok.pad_token_id) == pytest.approx(expected, rel=1e-4)


# --- SentencePiece-style tokenization (Llama-2 / Mistral): options scored inside the prompt --

def _sentencepiece_tokenizer():
    """A Llama-2-style tokenizer built locally: Prepend("▁") + Replace(" ", "▁") normalizer,
    unigram pieces, Metaspace decoder. Alone, " terrible" becomes ['▁', '▁terrible']."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    pieces = ["<unk>", "<s>", "</s>", "<pad>", "▁", "▁It", "▁was", "▁terrible", "▁great", "▁the", "▁movie", "▁bad", "▁so",
              "▁Yes", "▁No", "\n", *"terribleogdsmvhwIYNa."]
    tok = Tokenizer(models.Unigram([(p, -1.0 if len(p) > 1 else -5.0) for p in dict.fromkeys(pieces)], unk_id=0, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def test_sentencepiece_options_are_the_trailing_tokens_of_prompt_plus_option():
    tok = _sentencepiece_tokenizer()
    assert tok.convert_ids_to_tokens(tok(" terrible", add_special_tokens=False)["input_ids"]) == ["▁", "▁terrible"]  # the trap
    enc = encode(tok, [Example("the movie was so bad. It was", [" terrible", " great"], 0)])[0]
    assert [tok.convert_ids_to_tokens(o) for o in enc.options] == [["▁terrible"], ["▁great"]]
    assert enc.contexts == [enc.prompt, enc.prompt]
    full = tok("the movie was so bad. It was terrible")["input_ids"]
    assert enc.contexts[0] + enc.options[0] == full
    assert shared_single_token([enc])  # one forward per batch still applies


def test_sentencepiece_scores_match_a_reference_on_the_joint_encoding():
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _sentencepiece_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id)).eval()
    exs = [Example("It was", [" terrible", " great"], 0), Example("the movie was so bad. It was", [" terrible", " great"], 1)]
    enc = encode(tok, exs)
    expected = torch.zeros(2, 2)
    with torch.no_grad():
        for b, e in enumerate(exs):
            for j, opt in enumerate(e.options):
                full = tok(e.prompt + opt)["input_ids"]  # the option is the last token of the joint encoding
                logp = model(torch.tensor([full])).logits[0].log_softmax(-1)  # [T, V]
                expected[b, j] = logp[len(full) - 2, full[-1]]
        torch.testing.assert_close(option_scores(model, enc, tok.pad_token_id), expected, atol=1e-5, rtol=1e-5)


def test_encode_of_no_examples_is_empty(tiny_lm):
    _, tok = tiny_lm
    assert encode(tok, []) == []  # --dev-samples 0: the tokenizer itself refuses an empty batch
