"""The fine-tuning loop, checkpoints/resume, the delta artifact, eval, merge, data-parallel, CLI."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

from conftest import SHARED_DATA, TINY_TEXTS, make_tiny_llama
from conftest import cli_in_process as run_cli
from conftest import tiny_finetune_config as _config
from szoq_hub.methods.sparse.delta import load_delta, save_delta
from szoq_hub.core.errors import ConfigError, FingerprintMismatch, MaskError, TrainingError
from szoq_cli.finetune import finetune_config
from szoq_hub import DEFAULT_LR
from szoq_hub.training.config import FinetuneConfig, _flag as flag
from szoq_hub.training.finetune import finetune
from szoq_hub.training.run_folder import CHECKPOINT_FILE

def _delta_values(folder: Path) -> dict[str, torch.Tensor]:
    return load_delta(folder).tensors


def test_run_writes_a_complete_linked_artifact(tiny_model_dir, tiny_mask, train_file, tmp_path):
    from szoq_hub.core.files import file_sha256
    from szoq_hub.data.models import model_fingerprint, resolve_model

    out = tmp_path / "run"
    events = []
    result = finetune(_config(tiny_model_dir, tiny_mask, train_file, out, quant="nf4"), progress=events.append)
    files = {p.name for p in out.iterdir()}
    assert {"delta.safetensors", "finetune_config.json", "metrics.jsonl", "README.md", "best-dev.safetensors", CHECKPOINT_FILE} <= files
    delta = load_delta(out, fingerprint=model_fingerprint(resolve_model(str(tiny_model_dir))), mask_sha256=file_sha256(tiny_mask / "mask.safetensors"))
    assert all(t.dtype == torch.float32 for t in delta.tensors.values())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(6)) and all({"seeds", "grads", "loss_plus", "loss_minus", "lr"} <= set(r) for r in steps)
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [3, 6] and rows[-1]["kind"] == "final"
    dev = [(r["step"], r["accuracy"]) for r in rows if r["kind"] == "eval"]
    best = max(dev, key=lambda sd: sd[1])  # the first step with the highest dev score
    assert (result.best_step, result.best_dev) == best
    assert load_delta(out / "best-dev.safetensors").settings["step"] == best[0]
    # eval = accuracy of the delta on the eval split, recomputed here from the files alone
    from szoq_hub.hub.refs import open_mask
    from szoq_hub.runtime.sparse import load_sparse_model
    from szoq_hub.data.scoring import encode, predict
    from szoq_hub.data.tasks import load_task

    config = _config(tiny_model_dir, tiny_mask, train_file, out, quant="nf4")
    sparse = load_sparse_model(str(tiny_model_dir), open_mask(str(tiny_mask)), quant="nf4")
    sparse.load_delta(delta.tensors)
    evals = encode(sparse.tokenizer, load_task(custom=config.custom_task(), sampling=config.sampling()).eval)
    preds = predict(sparse.model, evals, sparse.tokenizer.pad_token_id)
    assert len(evals) == 4 and result.eval_metric == sum(p == e.label for p, e in zip(preds, evals)) / 4
    assert {e["kind"] for e in events} == {"lr_scores", "start", "step", "eval", "final"}  # the tiny mask is a fisher build: it has scores
    cfg = json.loads((out / "finetune_config.json").read_text())
    assert cfg["settings"]["seed"] == 0 and cfg["settings"]["lr"] == "scores" and cfg["mask_sha256"] == delta.mask_sha256
    assert result.lr == cfg["settings"]["lr_scores"]["lr"] != DEFAULT_LR


def test_zo_fine_tuning_lowers_the_loss_on_a_learnable_task(tiny_model_dir, tiny_mask, tmp_path):
    """Every answer is " good": ZO over the masked weights must lower the exact train loss."""
    from szoq_hub.hub.refs import open_mask
    from szoq_hub.runtime.sparse import load_sparse_model
    from szoq_hub.data.scoring import encode, loss_sum
    from szoq_hub.data.tasks import load_task

    path = tmp_path / "good.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": 1}) + "\n" for t in TINY_TEXTS))
    config = _config(tiny_model_dir, tiny_mask, path, tmp_path / "run", steps=30, batch_size=8, lr=0.1, eval_every=0, save_every=30,
                     train_samples=16, dev_samples=0)
    finetune(config)
    sparse = load_sparse_model(str(tiny_model_dir), open_mask(str(tiny_mask)), quant="none")
    train = encode(sparse.tokenizer, load_task(custom=config.custom_task(), sampling=config.sampling()).train)
    before = loss_sum(sparse.model, train, sparse.tokenizer.pad_token_id) / len(train)
    sparse.load_delta(_delta_values(tmp_path / "run"))
    after = loss_sum(sparse.model, train, sparse.tokenizer.pad_token_id) / len(train)
    assert after < 0.9 * before, (before, after)


def test_step_log_replays_to_the_final_values(tiny_model_dir, tiny_mask, train_file, tmp_path):
    """Replaying the recorded (seed, g, lr) from the original weights gives the last checkpoint."""
    from safetensors.torch import load_file

    from szoq_hub.runtime.sparse import load_sparse_model
    from szoq_hub.hub.refs import open_mask
    from szoq_hub.runtime.zo import StepRecord, replay

    out = tmp_path / "run"
    config = _config(tiny_model_dir, tiny_mask, train_file, out, optimizer="zo-adam", lr=1e-3, eval_every=0)
    finetune(config)
    records = [StepRecord.from_dict(r) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "step"]
    initial = load_sparse_model(str(tiny_model_dir), open_mask(str(tiny_mask)), quant="none").values.clone()
    replayed = replay(initial, config.zo, records)
    assert torch.equal(replayed, load_file(str(out / CHECKPOINT_FILE))["values"])


class _Stop(Exception):
    pass


def test_resume_is_bit_identical(tiny_model_dir, tiny_mask, train_file, tmp_path):
    kw = dict(quant="nf4", steps=20, save_every=5, eval_every=5, optimizer="zo-momentum")
    finetune(_config(tiny_model_dir, tiny_mask, train_file, tmp_path / "straight", **kw))

    def stop_at_12(event):
        if event["kind"] == "step" and event["step"] == 12:
            raise _Stop  # a run killed after step 12: the checkpoint is at step 10
    with pytest.raises(_Stop):
        finetune(_config(tiny_model_dir, tiny_mask, train_file, tmp_path / "resumed", **kw), progress=stop_at_12)
    assert not (tmp_path / "resumed" / "delta.safetensors").exists()  # not looking complete
    result = finetune(_config(tiny_model_dir, tiny_mask, train_file, tmp_path / "resumed", **kw), resume=True)
    assert result.resumed_from == 10
    a, b = _delta_values(tmp_path / "straight"), _delta_values(tmp_path / "resumed")
    assert all(torch.equal(a[n], b[n]) for n in a)
    steps = [json.loads(l)["step"] for l in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines() if '"kind": "step"' in l]
    assert steps == list(range(20))  # log lines past the checkpoint were redone, not duplicated


def test_resume_makes_best_dev_agree_with_the_checkpoint(tiny_model_dir, tiny_mask, train_file, tmp_path):
    """A best-dev file newer than the checkpoint (an eval improved after it, then the run died)
    is put back to the checkpoint's best step, score and values on --resume."""
    from safetensors import safe_open

    kw = dict(quant="none", eval_every=1, save_every=2)
    reference = finetune(_config(tiny_model_dir, tiny_mask, train_file, tmp_path / "two", steps=2, **kw))  # same first 2 steps
    ref_best = load_delta(tmp_path / "two" / "best-dev.safetensors")

    def stop_at_4(event):
        if event["kind"] == "step" and event["step"] == 4:
            raise _Stop  # after step 3's eval; the checkpoint is at step 2
    out = tmp_path / "run"
    with pytest.raises(_Stop):
        finetune(_config(tiny_model_dir, tiny_mask, train_file, out, steps=4, **kw), progress=stop_at_4)
    with safe_open(str(out / CHECKPOINT_FILE), framework="pt") as fh:
        meta = fh.metadata()
    assert (int(meta["best_step"]), float(meta["best_dev"])) == (reference.best_step, reference.best_dev)
    # What a run that improved at step 3 and died leaves behind: a newer best-dev file.
    newer = {n: t + 1.0 for n, t in ref_best.tensors.items()}
    save_delta(out / "best-dev.safetensors", newer, mask_sha256=ref_best.mask_sha256, fingerprint=ref_best.fingerprint,
               base_model="x", settings={**ref_best.settings, "step": 3, "dev": 1.0})

    def stop_at_start(event):
        if event["kind"] == "start":
            raise _Stop
    with pytest.raises(_Stop):
        finetune(_config(tiny_model_dir, tiny_mask, train_file, out, steps=4, **kw), resume=True, progress=stop_at_start)
    best = load_delta(out / "best-dev.safetensors")
    assert (best.settings["step"], best.settings["dev"]) == (reference.best_step, reference.best_dev)
    assert all(torch.equal(best.tensors[n], ref_best.tensors[n]) for n in ref_best.tensors)


def test_micro_batches_train_like_one_forward_and_may_change_on_resume(tiny_model_dir, tiny_mask, train_file, tmp_path):
    """--micro-batch-size changes float rounding only: the trajectory matches one forward per step,
    and a run stopped with one size resumes with another (smaller forwards after running out of memory)."""
    kw = dict(quant="nf4", steps=8, save_every=2, eval_every=4, lr=1e-2, dtype="fp32")  # fp32: rounding differences stay ~1e-7
    finetune(_config(tiny_model_dir, tiny_mask, train_file, tmp_path / "whole", micro_batch_size=4, **kw))

    def stop_at_5(event):
        if event["kind"] == "step" and event["step"] == 5:
            raise _Stop
    with pytest.raises(_Stop):
        finetune(_config(tiny_model_dir, tiny_mask, train_file, tmp_path / "micro", micro_batch_size=2, **kw), progress=stop_at_5)
    result = finetune(_config(tiny_model_dir, tiny_mask, train_file, tmp_path / "micro", micro_batch_size=1, **kw), resume=True)
    assert result.resumed_from == 4
    a, b = _delta_values(tmp_path / "whole"), _delta_values(tmp_path / "micro")
    assert any(not torch.equal(t, 0 * t) for t in a.values())  # it trained
    grads = [[json.loads(l)["grads"][0] for l in (tmp_path / f / "metrics.jsonl").read_text().splitlines() if '"kind": "step"' in l]
             for f in ("whole", "micro")]
    assert len(grads[1]) == 8 and grads[1] == pytest.approx(grads[0], rel=1e-2, abs=1e-3)  # rounding-level differences only
    assert all(torch.allclose(a[n], b[n], rtol=0, atol=5e-5) for n in a)  # updates are ~1e-3 per step
    with pytest.raises(ConfigError, match="--micro-batch-size must be > 0"):
        _config(tiny_model_dir, tiny_mask, train_file, tmp_path / "bad", micro_batch_size=0)


def test_resume_refuses_other_settings_and_complete_runs(tiny_model_dir, tiny_mask, train_file, tmp_path):
    out = tmp_path / "run"
    finetune(_config(tiny_model_dir, tiny_mask, train_file, out))
    with pytest.raises(TrainingError, match="other settings: lr"):
        finetune(_config(tiny_model_dir, tiny_mask, train_file, out, lr=1e-3), resume=True)
    with pytest.raises(TrainingError, match="already complete"):
        finetune(_config(tiny_model_dir, tiny_mask, train_file, out), resume=True)
    with pytest.raises(TrainingError, match="already complete"):  # the default continues a stopped run, never redoes a complete one
        finetune(_config(tiny_model_dir, tiny_mask, train_file, out))
    with pytest.raises(TrainingError, match="other settings: lr"):
        finetune(_config(tiny_model_dir, tiny_mask, train_file, out, lr=1e-3))
    with pytest.raises(TrainingError, match="not empty"):
        finetune(_config(tiny_model_dir, tiny_mask, train_file, out), resume=False)


def test_non_finite_stops_with_checkpoint_intact(tiny_model_dir, tiny_mask, train_file, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    # Warmup makes step 0's lr exactly 0 (a finite checkpoint at step 1), then lr 1e37 explodes.
    config = _config(tiny_model_dir, tiny_mask, train_file, out, lr=1e38, warmup=10, save_every=1, eval_every=0)
    with pytest.raises(TrainingError, match="non-finite"):
        finetune(config)
    ckpt = load_file(str(out / CHECKPOINT_FILE))
    assert torch.isfinite(ckpt["values"]).all()
    assert not (out / "delta.safetensors").exists()


def test_fingerprint_mismatch_refused_before_anything(tiny_mask, train_file, tmp_path, monkeypatch):
    other = make_tiny_llama(tmp_path / "other", seed=1)
    import szoq_hub.runtime.sparse as runtime

    monkeypatch.setattr(runtime, "load_sparse_model", lambda *a, **k: pytest.fail("weights loaded"))
    with pytest.raises(FingerprintMismatch):
        finetune(_config(other, tiny_mask, train_file, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_delta_artifact_refuses_corrupt_and_mismatched(tiny_mask, tmp_path):
    from szoq_hub.hub.refs import open_mask

    mask = open_mask(str(tiny_mask))
    tensors = {n: torch.randn(i.numel()) for n, i in mask.indices.items()}
    path = save_delta(tmp_path / "d", tensors, mask_sha256="a" * 64, fingerprint="f" * 64, base_model="tiny")
    assert load_delta(tmp_path / "d", mask=mask, mask_sha256="a" * 64, fingerprint="f" * 64).tensors.keys() == tensors.keys()
    with pytest.raises(FingerprintMismatch):
        load_delta(path, fingerprint="0" * 64)
    with pytest.raises(FingerprintMismatch):
        load_delta(path, mask_sha256="b" * 64)
    name = next(iter(tensors))
    bad = dict(tensors, **{name: tensors[name][:-1]})
    save_delta(tmp_path / "short", bad, mask_sha256="a" * 64, fingerprint="f" * 64, base_model="tiny")
    with pytest.raises(MaskError, match="the mask selects"):
        load_delta(tmp_path / "short", mask=mask)
    data = path.read_bytes()
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "delta.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(MaskError, match="corrupt or truncated"):
        load_delta(tmp_path / "cut")


def test_merge_matches_runtime_quant_none(tiny_model_dir, tiny_mask, tmp_path):
    from transformers import AutoModelForCausalLM

    from szoq_hub.core.files import file_sha256
    from szoq_hub.training.merge import merge
    from szoq_hub.data.models import model_fingerprint, resolve_model
    from szoq_hub.hub.refs import open_mask
    from szoq_hub.runtime.sparse import load_sparse_model

    mask = open_mask(str(tiny_mask))
    sparse = load_sparse_model(str(tiny_model_dir), mask, quant="none")
    sparse.values.add_(torch.randn(sparse.values.numel(), generator=torch.Generator().manual_seed(0)) * 0.5)  # a visible delta
    save_delta(tmp_path / "run", sparse.delta_tensors(), mask_sha256=file_sha256(tiny_mask / "mask.safetensors"),
               fingerprint=model_fingerprint(resolve_model(str(tiny_model_dir))), base_model="tiny")
    merged = merge(model=str(tiny_model_dir), mask_ref=str(tiny_mask), delta=tmp_path / "run", out=tmp_path / "merged")
    plain = AutoModelForCausalLM.from_pretrained(merged).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = sparse.tokenizer(["the movie was great", "zeroth order fine tuning"], return_tensors="pt", padding=True)
    with torch.no_grad():
        want = sparse.model(**ids).logits
        got = plain(**ids).logits
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(base(**ids).logits, want, atol=1e-3)  # the delta mattered
    bf16 = merge(model=str(tiny_model_dir), mask_ref=str(tiny_mask), delta=tmp_path / "run", out=tmp_path / "bf16", dtype="bf16")
    assert AutoModelForCausalLM.from_pretrained(bf16).dtype == torch.bfloat16
    with pytest.raises(TrainingError, match="not empty"):
        merge(model=str(tiny_model_dir), mask_ref=str(tiny_mask), delta=tmp_path / "run", out=tmp_path / "merged")


def _dp_worker(rank: int, world: int, port: int, config_kw: dict, result_file: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    result = finetune(finetune_config(config_kw))
    if rank == 1:
        Path(result_file).write_text(json.dumps({"eval": result.eval_metric, "best": result.best_step}))
    # Both ranks leave together: a rank that tears gloo down while its peer is still busy makes
    # the peer's transport thread abort ("terminate called without an active exception").
    dist.barrier()
    dist.destroy_process_group()


def test_data_parallel_two_gloo_ranks_match_one_process(tiny_model_dir, tiny_mask, train_file, tmp_path):
    import socket

    import torch.multiprocessing as mp

    kw = dict(steps=4, eval_every=2, save_every=2, dtype="fp32", micro_batch_size=4)  # one fp32 forward per rank: rounding ~1e-7
    single = finetune(_config(tiny_model_dir, tiny_mask, train_file, tmp_path / "one", **kw))
    config = _config(tiny_model_dir, tiny_mask, train_file, tmp_path / "two", **kw)
    from szoq_hub.training.config import settings_of

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_dp_worker, args=(2, port, settings_of(config), str(tmp_path / "rank1.json")), nprocs=2, join=True)
    a, b = _delta_values(tmp_path / "one"), _delta_values(tmp_path / "two")
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=0)
    one = [json.loads(l) for l in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines() if '"step"' in l and '"seeds"' in l]
    two = [json.loads(l) for l in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines() if '"step"' in l and '"seeds"' in l]
    assert [r["seeds"] for r in one] == [r["seeds"] for r in two]
    for r1, r2 in zip(one, two):
        assert r2["loss_plus"][0] == pytest.approx(r1["loss_plus"][0], abs=1e-6)
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert rank1["eval"] == pytest.approx(single.eval_metric) and rank1["best"] == single.best_step


# --- CLI -------------------------------------------------------------------------------------

def test_cli_finetune_eval_merge(tiny_model_dir, tiny_mask, train_file, tmp_path, monkeypatch, capsys):
    common = ["--model", str(tiny_model_dir), "--mask", str(tiny_mask), "--quant", "none"]
    custom = ["--train", str(train_file), "--template", "{text} It was", "--labels", "0=bad,1=good"]
    code, out, err = run_cli(["finetune", *common, *custom, "--steps", "4", "--batch-size", "4", "--eval-every", "2",
                              "--train-samples", "12", "--dev-samples", "4", "--eval-samples", "4", "--out", str(tmp_path / "run"), "--json"], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(out)["steps"] == 4
    trained = json.loads(out)
    for extra, mode in (([], "zero-shot"), (["--icl-shots", "2"], "icl-2"), (["--delta", str(tmp_path / "run")], "delta")):
        code, out, err = run_cli(["eval", *common, *custom, "--eval-samples", "4", *extra, "--json"], monkeypatch, capsys)
        assert code == 0, err
        got = json.loads(out)
        assert (got["mode"], got["n"], got["metric"]) == (mode, 4, "accuracy")
    assert got["value"] == trained["eval"]  # the delta scores on eval what finetune reported
    code, out, err = run_cli(["merge", *common[:4], "--delta", str(tmp_path / "run"), "--out", str(tmp_path / "merged")], monkeypatch, capsys)
    assert code == 0, err
    assert (tmp_path / "merged" / "config.json").exists()


# Each bad input, and the one `error:` line (and `hint:` line) it must give: its own message, not just any error.
BAD_INPUTS = {
    "unknown_task": ("error: unknown task 'sst3'", "hint: choose one of: sst2, rte, cb, boolq, wic, wsc, copa, multirc; or pass --train FILE"),
    "missing_field": ("error: --template names the field 'sentence', which the data rows do not have (fields: text, label)",
                      "hint: use {{FIELD}} names from the data file's header / keys"),
    "no_verbalizer": ("error: label '0' has no verbalizer in --labels (1); the labels in {train}: 1, 0", "hint: add it, e.g. --labels '1=good,0=WORD'"),
    "empty_train": ("error: data file {empty} has no rows", "hint: a data file needs at least one example"),
    "batch0": ("error: --batch-size must be >= 1, got 0", "hint: e.g. --batch-size 16"),
    "micro0": ("error: --micro-batch-size must be > 0, got 0", "hint: e.g. --micro-batch-size 4, or leave it out for one forward per step"),
    "steps0": ("error: --steps must be >= 1, got 0", "hint: e.g. --steps 300"),
    "resume_other": ("error: --resume: --out {out} holds a run with other settings: batch_size (4 -> 2), dev_samples (4 -> 500)",
                     "hint: rerun with that run's options (see its finetune_config.json) to continue it, or choose another --out"),
    "no_bnb": ("error: --quant nf4 needs bitsandbytes", "hint: pip install 'bitsandbytes>=0.48' (or use --quant none)"),
    "fingerprint": ("error: mask was built for ", "hint: "),
    "bad_quant": ("error: unknown quant 'int3'", "hint: choose one of: nf4, fp4, int8, none"),
    "bad_optimizer": ("error: unknown optimizer 'zo-lion'", "hint: choose one of: "),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_cli_bad_input(case, tiny_model_dir, tiny_mask, train_file, tmp_path, monkeypatch, capsys):
    out_dir = tmp_path / "run"
    model = str(tiny_model_dir)
    args = ["--mask", str(tiny_mask), "--quant", "none", "--steps", "2", "--batch-size", "2", "--out", str(out_dir)]
    custom = ["--train", str(train_file), "--template", "{text} It was", "--labels", "0=bad,1=good"]
    if case == "unknown_task":
        extra = ["--task", "sst3"]
    elif case == "missing_field":
        extra = ["--train", str(train_file), "--template", "{sentence} It was", "--labels", "0=bad,1=good"]
    elif case == "no_verbalizer":
        extra = ["--train", str(train_file), "--template", "{text}", "--labels", "1=good"]
    elif case == "empty_train":
        (tmp_path / "empty.jsonl").write_text("")
        extra = ["--train", str(tmp_path / "empty.jsonl"), "--template", "{text}", "--labels", "0=bad,1=good"]
    elif case == "batch0":
        extra = [*custom, "--batch-size", "0"]
    elif case == "micro0":
        extra = [*custom, "--micro-batch-size", "0"]
    elif case == "steps0":
        extra = [*custom, "--steps", "0"]
    elif case == "resume_other":
        finetune(_config(tiny_model_dir, tiny_mask, train_file, out_dir, steps=2, eval_every=0))
        (out_dir / "delta.safetensors").unlink()  # a stopped run
        extra = [*custom, "--lr", "0.5", "--no-dev-baseline", "--resume"]  # as _config
    elif case == "no_bnb":
        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None if name == "bitsandbytes" else real(name, *a, **k))
        extra = [*custom, "--quant", "nf4"]
    elif case == "fingerprint":
        model = str(make_tiny_llama(tmp_path / "other", seed=1))
        extra = custom
    elif case == "bad_quant":
        extra = [*custom, "--quant", "int3"]
    else:
        extra = [*custom, "--optimizer", "zo-lion"]
    code, out, err = run_cli(["finetune", "--model", model, *args, *extra], monkeypatch, capsys)
    error, hint = (s.format(train=train_file, empty=tmp_path / "empty.jsonl", out=out_dir) for s in BAD_INPUTS[case])
    lines = err.strip().splitlines()
    assert code == 2 and [l for l in lines if l.startswith(("error:", "hint:"))] == lines[-2:], err  # one error, one hint, last
    assert lines[-2].startswith(error) and lines[-1].startswith(hint), (case, err)
    assert "Traceback" not in err
    assert not (out_dir / "delta.safetensors").exists()
    if case != "resume_other":
        assert not out_dir.exists()


@pytest.mark.slow
def test_real_model_sst2_end_to_end(real_model_available, tmp_path, monkeypatch, capsys):
    """A short SST-2 run on SmolLM2-135M (nf4, built-in C4 mask), then eval of its delta."""
    if not (SHARED_DATA / "sst2").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    monkeypatch.setenv("SZOQ_DATA_DIR", str(SHARED_DATA))
    code, out, err = run_cli(["finetune", "--steps", "4", "--batch-size", "8", "--eval-every", "2", "--save-every", "2",
                              "--dev-samples", "16", "--eval-samples", "32", "--out", str(tmp_path / "run"), "--json"], monkeypatch, capsys)
    assert code == 0, err
    result = json.loads(out)
    dev = [(r["step"], r["accuracy"]) for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "eval"]
    assert [s for s, _ in dev] == [0, 2, 4] and (result["best_step"], result["best_dev"]) == max(dev, key=lambda sd: sd[1])  # 0: untouched
    code, out, err = run_cli(["eval", "--delta", str(tmp_path / "run"), "--eval-samples", "32", "--json"], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(out)["value"] == pytest.approx(result["eval"])


def test_run_without_dev_set_keeps_final_values(tiny_model_dir, tiny_mask, train_file, tmp_path):
    """--dev-samples 0 is allowed: no dev evaluation, and the delta holds the values after the last step
    (the recorded steps replayed from the mask's initial values), not the initial or a best-dev copy."""
    from szoq_hub.hub.refs import open_mask
    from szoq_hub.runtime.sparse import load_sparse_model
    from szoq_hub.runtime.zo import StepRecord, replay

    config = _config(tiny_model_dir, tiny_mask, train_file, tmp_path / "run", steps=2, dev_samples=0, eval_every=0)
    result = finetune(config)
    assert result.steps == 2 and result.best_step is None
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert not [r for r in rows if r["kind"] == "eval" and r.get("split") == "dev"]
    records = [StepRecord.from_dict(r) for r in rows if r["kind"] == "step"]
    assert [r.step for r in records] == [0, 1]
    sparse = load_sparse_model(str(tiny_model_dir), open_mask(str(tiny_mask)), quant="none")
    initial = sparse.delta_tensors()
    sparse.values.copy_(replay(sparse.values.clone(), config.zo, records))
    want, final = sparse.delta_tensors(), _delta_values(tmp_path / "run")
    assert final.keys() == want.keys() and all(torch.equal(final[n], want[n]) for n in final)
    assert not all(torch.equal(final[n], initial[n]) for n in final)  # the steps moved the values



def _help_flags(monkeypatch, capsys) -> set[str]:
    import re

    code, out, _ = run_cli(["finetune", "--help"], monkeypatch, capsys)
    assert code == 0
    return set(re.findall(r"--[a-z0-9-]+", out))


def test_every_setting_is_an_option_and_every_flag_an_error_names_exists(monkeypatch, capsys):
    """Options come from the config's fields; error messages name flags that `--help` lists."""
    import re

    from szoq_cli.options import options_of

    flags = _help_flags(monkeypatch, capsys)
    assert {o.flag for o in options_of(FinetuneConfig)} <= flags
    assert {"--momentum", "--beta1", "--beta2", "--adam-eps", "--save-every-minutes", "--eval-batch-size"} <= flags
    bad = [dict(steps=0), dict(batch_size=0), dict(eval_batch_size=0), dict(eval_every=-1), dict(save_every=0), dict(micro_batch_size=0),
           dict(save_every_minutes=-1.0), dict(lr=-1.0), dict(eps=0.0), dict(zo_samples=0), dict(warmup=-1), dict(weight_decay=-1.0)]
    for kw in bad:
        with pytest.raises(ConfigError) as info:
            finetune_config(kw)
        named = re.findall(r"--[a-z0-9-]+", f"{info.value.message} {info.value.hint}")
        option = flag(next(iter(kw)))
        assert option in named and set(named) <= flags, (kw, named)


def test_without_lr_each_method_gets_its_own_sweeps_lr_and_help_says_which(monkeypatch, capsys):
    """--lr left out: a mask run, a --dense run and a --lora run each take their method's default; a given --lr wins."""
    from szoq_cli.options import options_of
    from szoq_hub import DEFAULT_LR, DENSE_LR, LORA_LR, ZOConfig

    assert (FinetuneConfig().zo.lr, FinetuneConfig(method="dense").zo.lr, FinetuneConfig(method="lora", method_config={"lora": 8}).zo.lr) == ("scores", DENSE_LR, LORA_LR)
    assert FinetuneConfig(method="lora", method_config={"lora": 8}, zo=ZOConfig(lr=5e-3)).zo.lr == 5e-3
    assert finetune_config(dict(lr=None)).zo.lr == "scores" and finetune_config(dict(dense=True)).zo.lr == DENSE_LR
    assert finetune_config(dict(lora=4, lr=None)).zo.lr == LORA_LR and finetune_config(dict(lora=4, lr=0.0)).zo.lr == 0.0
    lr = next(o for o in options_of(FinetuneConfig) if o.name == "lr")
    text = lr.help
    assert lr.default is None  # left out: the method's own
    assert f"scores ({DEFAULT_LR:g} without scores) with a mask" in text and f"{DENSE_LR:g} with --dense" in text and f"{LORA_LR:g} with --lora" in text
    assert "--lr" in _help_flags(monkeypatch, capsys)


@pytest.mark.parametrize("kw", [dict(lora_alpha=32.0), dict(lora_targets="q_proj"), dict(lora_alpha=8.0, lora_targets="v_proj")])
def test_lora_settings_without_lora_are_refused_not_ignored(kw):
    with pytest.raises(ConfigError) as info:
        finetune_config(kw)
    named = {flag(k) for k in kw}
    assert all(f in info.value.message for f in named) and "--lora 8" in info.value.hint
    assert finetune_config({**kw, "lora": 4}).method_config.settings().rank == 4


def test_zo_options_are_settable_from_the_cli_and_recorded(tiny_model_dir, tiny_mask, train_file, tmp_path, monkeypatch, capsys):
    common = ["--model", str(tiny_model_dir), "--mask", str(tiny_mask), "--train", str(train_file), "--template", "{text} It was",
              "--labels", "0=bad,1=good", "--quant", "none", "--steps", "3", "--batch-size", "4", "--eval-every", "0", "--train-samples", "12",
              "--dev-samples", "0", "--eval-samples", "4", "--optimizer", "zo-adam", "--lr", "1e-2"]
    code, _, err = run_cli(["finetune", *common, "--beta1", "0.5", "--adam-eps", "1e-3", "--out", str(tmp_path / "a")], monkeypatch, capsys)
    assert code == 0, err
    settings = json.loads((tmp_path / "a" / "finetune_config.json").read_text())["settings"]
    assert (settings["beta1"], settings["adam_eps"], settings["beta2"], settings["optimizer"]) == (0.5, 1e-3, 0.999, "zo-adam")
    code, _, err = run_cli(["finetune", *common, "--out", str(tmp_path / "b")], monkeypatch, capsys)
    assert code == 0, err
    a, b = _delta_values(tmp_path / "a"), _delta_values(tmp_path / "b")
    assert any(not torch.equal(a[n], b[n]) for n in a)  # the betas reached the optimizer


def test_an_error_while_opening_the_tracker_closes_the_metrics_file(tiny_model_dir, tiny_mask, train_file, tmp_path, monkeypatch):
    from szoq_hub.training import finetune as loop
    from szoq_hub.training.run_folder import RunFolder

    opened = []
    real_open = RunFolder.open_metrics
    monkeypatch.setattr(RunFolder, "open_metrics", lambda self: opened.append(real_open(self)) or opened[-1])

    def broken_tracker(*a, **k):
        raise ConfigError("tracker down", hint="none")

    monkeypatch.setattr(loop, "open_tracker", broken_tracker)
    with pytest.raises(ConfigError, match="tracker down"):
        finetune(_config(tiny_model_dir, tiny_mask, train_file, tmp_path / "run", steps=2))
    assert len(opened) == 1 and opened[0].closed


def test_zero_shot_eval_of_a_model_without_a_mask(tiny_model_dir, tiny_mask, train_file, monkeypatch, capsys):
    """No --delta: any model scores as its quantized base, no mask needed (the built-in mask is for another model)."""
    task = ["--model", str(tiny_model_dir), "--eval", str(train_file), "--template", "{text} It was", "--labels", "0=bad,1=good",
            "--eval-samples", "8", "--json"]
    scores = {}
    for quant in ("nf4", "none"):
        code, out, err = run_cli(["eval", *task, "--quant", quant], monkeypatch, capsys)
        assert code == 0, err
        got = json.loads(out)
        assert (got["mode"], got["n"]) == ("zero-shot", 8)
        scores[quant] = got["value"]
    # unquantized, the masked weights hold the base's own values: the same model with or without a mask
    code, out, err = run_cli(["eval", *task, "--quant", "none", "--mask", str(tiny_mask)], monkeypatch, capsys)
    assert code == 0 and json.loads(out)["value"] == scores["none"], err
