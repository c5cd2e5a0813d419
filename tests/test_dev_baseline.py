"""The untouched model is the first best-dev candidate (issue 33): `szoq finetune` scores dev at step 0
and keeps the starting state when no step beats it, for every method; `--no-dev-baseline` is the old loop.

The runs here see a dev set labelled with the untouched model's own zero-shot predictions: its dev score
is 1.0, so no step can beat it, whatever the lr does (with an absurd lr the later dev scores fall).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import ROWS, TINY_TEXTS, TRAIN_ARGS
from conftest import cli_in_process as run_cli
from szoq_cli.finetune import finetune_config
from szoq_hub.training.finetune import finetune
from szoq_hub.training.run_folder import BEST_FILE, CHECKPOINT_FILE
from test_trust_meaning import _Stop, _stop_after  # a progress callback that interrupts a run at a step

TEMPLATE, LABELS = "{text} It was", "0=bad,1=good"
DEV_TEXTS = [*dict.fromkeys(TINY_TEXTS), "an awful waste of two hours", "the best film of the year", "sparse values on a quantized base",
             "nothing happens and nobody cares", "a warm and funny story", "the plot made no sense at all", "I would watch it again"]
METHODS = ["sparse", "senszoq-curvature", "dense", "lora"]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _own_labels(model_dir: Path, texts: list[str], tmp_path: Path) -> list[dict]:
    """`texts` labelled with the untouched fp32 model's own zero-shot predictions (its dev score on them is 1.0)."""
    from szoq_hub.data.custom_tasks import custom_task_from
    from szoq_hub.data.scoring import encode, pad_id_of, predict
    from szoq_hub.data.tasks import Sampling, load_task
    from szoq_hub.runtime.sparse import load_sparse_model

    unlabelled = _write(tmp_path / "unlabelled.jsonl", [{"text": t, "label": 0} for t in texts])
    custom = custom_task_from(task_file=None, train_file=None, eval_file=str(unlabelled), template=TEMPLATE, labels=LABELS)
    examples = load_task(custom=custom, sampling=Sampling(eval_samples=len(texts))).eval
    base = load_sparse_model(str(model_dir), None, quant="none", device="cpu", compute_dtype=torch.float32)
    preds = predict(base.model, encode(base.tokenizer, examples), pad_id_of(base.tokenizer), batch_size=32)
    by_prompt = {e.prompt: p for e, p in zip(examples, preds)}
    return [{"text": t, "label": by_prompt[TEMPLATE.format(text=t)]} for t in texts]


@pytest.fixture
def task_files(tiny_model_dir, tmp_path) -> dict[str, str]:
    """train (the tiny rows), dev (labelled by the untouched model: no step can beat it) and eval files."""
    return {"train_file": str(_write(tmp_path / "train.jsonl", ROWS)),
            "dev_file": str(_write(tmp_path / "dev.jsonl", _own_labels(tiny_model_dir, DEV_TEXTS, tmp_path))),
            "eval_file": str(_write(tmp_path / "eval.jsonl", ROWS[:5]))}


def _config(method: str, model: Path, mask: Path, files: dict, out: Path, **kw):
    base = dict(model=str(model), task=None, template=TEMPLATE, labels=LABELS, quant="none", dtype="fp32", steps=6, batch_size=4,
                eval_every=2, save_every=3, train_samples=12, dev_samples=len(DEV_TEXTS), eval_samples=5, out=str(out), **files)
    if method == "dense":
        base["dense"] = True
    elif method == "lora":
        base["lora"] = 4
    else:
        base.update(method=method, mask=str(mask))
    return finetune_config({**base, **kw})


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _dev(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["accuracy"]) for r in _rows(out) if r["kind"] == "eval"]


def _trained(method: str, out: Path) -> dict[str, torch.Tensor]:
    """The run's final file: its tensors by name."""
    from safetensors.torch import load_file

    return load_file(str(out / {"dense": "dense.safetensors", "lora": "lora.safetensors"}.get(method, "delta.safetensors")))


def _start(method: str, config) -> dict[str, torch.Tensor]:
    """What the method's final file holds for the untouched model: a fresh trainable's state."""
    from szoq_hub.training.config import settings_of

    fresh = config.method_spec.trainable_cls(config, torch.device("cpu"), torch.float32, settings_of(config), False)
    if method == "dense":
        return {n: t.clone() for n, t in fresh.dense.tensors()}
    if method == "lora":
        return fresh._tensors(fresh.values)
    values = fresh.values
    return {name: values[off:off + n].clone() for name, off, n in fresh.sparse.segments}


def _zero_shot(config) -> float:
    """`szoq eval` with no delta: the untouched model (with the run's mask, if any) on the run's eval rows."""
    from szoq_hub import EvalConfig, evaluate

    return evaluate(EvalConfig(model=config.model, mask=config.mask, task=None, eval_file=config.eval_file, template=TEMPLATE, labels=LABELS,
                               quant="none", dtype="fp32", eval_samples=config.eval_samples, batch_size=config.eval_batch_size)).value


@pytest.mark.parametrize("method", METHODS)
def test_a_run_that_makes_dev_worse_ends_with_the_untouched_model(method, tiny_model_dir, tiny_mask, task_files, tmp_path):
    """An absurd lr: dev falls below the step-0 score, and the run keeps its starting state exactly
    (a delta of the base values, LoRA's B = 0, the base weights), which scores the zero-shot eval."""
    out = tmp_path / "run"
    config = _config(method, tiny_model_dir, tiny_mask, task_files, out, lr=100.0 if method != "dense" else 1.0)
    events = []
    result = finetune(config, progress=events.append)
    dev = _dev(out)
    assert dev[0] == (0, 1.0) and [s for s, _ in dev] == [0, 2, 4, 6]
    assert min(score for _, score in dev[1:]) < 1.0, dev  # the steps made dev worse
    assert (result.best_step, result.best_dev, result.kept_start) == (0, 1.0, True)
    assert [e["step"] for e in events if e["kind"] == "eval"] == [0, 2, 4, 6]
    final = _rows(out)[-1]
    assert (final["kind"], final["best_step"], final["eval_metric"]) == ("final", 0, result.eval_metric)
    trained, start = _trained(method, out), _start(method, config)
    assert trained.keys() == start.keys() and all(torch.equal(trained[n], start[n]) for n in start)
    if method == "lora":
        assert all(not t.any() for n, t in trained.items() if "lora_B" in n)
    assert result.eval_metric == _zero_shot(config)
    assert "the untouched model" in (out / "README.md").read_text()


def test_a_run_that_beats_the_untouched_model_keeps_its_best_step(tiny_model_dir, tiny_mask, tmp_path):
    """Every answer is the word the untouched model gives least on dev: training beats step 0, and the
    best later step is kept, as before."""
    own = [r["label"] for r in _own_labels(tiny_model_dir, DEV_TEXTS, tmp_path)]
    target = int(sum(own) < len(own) / 2)  # the rarer answer
    start = own.count(target) / len(own)  # the untouched model's dev accuracy
    rows = [{"text": t, "label": target} for t in TINY_TEXTS]
    files = {"train_file": str(_write(tmp_path / "train.jsonl", rows)), "eval_file": str(_write(tmp_path / "eval.jsonl", rows[:5])),
             "dev_file": str(_write(tmp_path / "dev.jsonl", [{"text": t, "label": target} for t in DEV_TEXTS]))}
    config = _config("sparse", tiny_model_dir, tiny_mask, files, tmp_path / "run", steps=30, batch_size=8, lr=0.1, eval_every=10,
                     save_every=30, train_samples=16)
    result = finetune(config)
    dev = _dev(tmp_path / "run")
    assert dev[0] == (0, start) and [s for s, _ in dev] == [0, 10, 20, 30]
    assert result.best_step > 0 and (result.best_step, result.best_dev) == max(dev, key=lambda sd: sd[1]) and not result.kept_start
    from szoq_hub.methods.sparse.delta import load_delta

    assert load_delta(tmp_path / "run" / BEST_FILE).settings["step"] == load_delta(tmp_path / "run").settings["best_step"] == result.best_step


@pytest.mark.parametrize("method", ["sparse", "dense"])
def test_no_dev_baseline_is_the_loop_as_it_was(method, tiny_model_dir, tiny_mask, train_file, tmp_path):
    """--no-dev-baseline: no step-0 evaluation, and the step log, the dev curve, the best step and the
    trained values are those of the loop before the baseline. The baseline itself changes no step:
    with it on, the log is the same plus the step-0 row, and a run whose later step wins keeps the same values."""
    files = {"train_file": str(train_file)}
    kw = dict(steps=6, eval_every=2, save_every=3, lr=1.0 if method != "dense" else 1e-2, dev_samples=4, eval_samples=4)
    off = finetune(_config(method, tiny_model_dir, tiny_mask, files, tmp_path / "off", dev_baseline=False, **kw))
    on = finetune(_config(method, tiny_model_dir, tiny_mask, files, tmp_path / "on", **kw))
    rows_off, rows_on = _rows(tmp_path / "off"), _rows(tmp_path / "on")
    assert [s for s, _ in _dev(tmp_path / "off")] == [2, 4, 6] and _dev(tmp_path / "on")[1:] == _dev(tmp_path / "off")
    steps = [[{k: v for k, v in r.items() if k != "seconds"} for r in rows if r["kind"] == "step"] for rows in (rows_off, rows_on)]
    assert steps[0] == steps[1] and len(steps[0]) == 6
    assert off.best_step == max(_dev(tmp_path / "off"), key=lambda sd: sd[1])[0]
    if on.best_step != 0:  # a later step won: the same result, bit for bit
        assert (on.best_step, on.best_dev, on.eval_metric) == (off.best_step, off.best_dev, off.eval_metric)
        a, b = _trained(method, tmp_path / "off"), _trained(method, tmp_path / "on")
        assert all(torch.equal(a[n], b[n]) for n in a)
    settings = json.loads((tmp_path / "off" / "finetune_config.json").read_text())["settings"]
    assert settings["dev_baseline"] is False


@pytest.mark.parametrize("method", ["sparse", "dense", "lora"])
def test_resume_across_the_baseline(method, tiny_model_dir, tiny_mask, task_files, tmp_path):
    """Killed after the checkpoint at step 3 (best step 0): the resumed run restores best step 0 and its
    state from the checkpoint, does not score step 0 again, and ends like the straight run. Killed
    before any checkpoint: it starts over, and the step-0 evaluation is logged once."""
    from safetensors import safe_open

    kw = dict(lr=100.0 if method != "dense" else 1.0)
    straight = finetune(_config(method, tiny_model_dir, tiny_mask, task_files, tmp_path / "straight", **kw))
    assert straight.best_step == 0
    out = tmp_path / "resumed"
    with pytest.raises(_Stop):
        finetune(_config(method, tiny_model_dir, tiny_mask, task_files, out, **kw), progress=_stop_after(4))
    with safe_open(str(out / CHECKPOINT_FILE), framework="pt") as fh:
        meta = fh.metadata()
    assert (meta["step"], meta["best_step"], float(meta["best_dev"])) == ("3", "0", 1.0)
    events = []
    resumed = finetune(_config(method, tiny_model_dir, tiny_mask, task_files, out, **kw), resume=True, progress=events.append)
    assert resumed.resumed_from == 3 and 0 not in [e["step"] for e in events if e["kind"] == "eval"]
    assert (resumed.best_step, resumed.best_dev, resumed.eval_metric) == (straight.best_step, straight.best_dev, straight.eval_metric)
    assert _dev(out) == _dev(tmp_path / "straight")  # one step-0 row, kept from before the stop
    a, b = _trained(method, tmp_path / "straight"), _trained(method, out)
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)

    early = tmp_path / "early"
    with pytest.raises(_Stop):
        finetune(_config(method, tiny_model_dir, tiny_mask, task_files, early, **kw), progress=_stop_after(2))
    assert not (early / CHECKPOINT_FILE).exists() and (early / BEST_FILE).exists()  # the step-0 best-dev file, nothing to resume from
    again = finetune(_config(method, tiny_model_dir, tiny_mask, task_files, early, **kw))
    assert again.resumed_from == 0 and _dev(early) == _dev(tmp_path / "straight")
    b = _trained(method, early)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_cli_says_the_untouched_model_was_kept(tiny_model_dir, tiny_mask, task_files, tmp_path, monkeypatch, capsys):
    files = ["--train", task_files["train_file"], "--dev", task_files["dev_file"], "--eval", task_files["eval_file"], *TRAIN_ARGS]
    common = ["finetune", "--model", str(tiny_model_dir), "--mask", str(tiny_mask), "--quant", "none", "--dtype", "fp32", *files,
              "--steps", "4", "--batch-size", "4", "--eval-every", "2", "--train-samples", "12", "--dev-samples", "12", "--eval-samples", "5"]
    code, out, err = run_cli([*common, "--lr", "100", "--out", str(tmp_path / "kept")], monkeypatch, capsys)
    assert code == 0, err
    assert "no step beat the untouched model on dev: kept it" in err and "hint: try a smaller --lr, e.g. --lr 10" in err
    code, out, err = run_cli([*common, "--lr", "100", "--no-dev-baseline", "--out", str(tmp_path / "off"), "--json"], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(out)["best_step"] in (2, 4) and "no step beat" not in err
    assert [s for s, _ in _dev(tmp_path / "off")] == [2, 4]


@pytest.mark.parametrize("given", [True, False])
def test_a_run_recorded_before_the_option_resumes_under_either_value(given, tiny_model_dir, tiny_mask, task_files, tmp_path):
    """A run folder written before --dev-baseline existed has no `dev_baseline` setting: it continues from its
    checkpoint with or without the flag (from a checkpoint the baseline changes nothing), and the flag is not
    taken for another setting. A run that recorded it is continued under its own value only."""
    from szoq_hub import TrainingError

    out = tmp_path / "old"
    config = _config("sparse", tiny_model_dir, tiny_mask, task_files, out, dev_baseline=False, lr=1e-2)
    with pytest.raises(_Stop):
        finetune(config, progress=_stop_after(4))
    with pytest.raises(TrainingError, match=r"other settings: dev_baseline \(False -> True\)"):
        finetune(_config("sparse", tiny_model_dir, tiny_mask, task_files, out, lr=1e-2))
    recorded = json.loads((out / "finetune_config.json").read_text())
    del recorded["settings"]["dev_baseline"]
    (out / "finetune_config.json").write_text(json.dumps(recorded))
    resumed = finetune(_config("sparse", tiny_model_dir, tiny_mask, task_files, out, dev_baseline=given, lr=1e-2))
    assert resumed.resumed_from == 3 and [s for s, _ in _dev(out)] == [2, 4, 6]
