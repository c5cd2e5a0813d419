"""Dense MeZO (`szoq finetune --dense`): the step against a hand-written MeZO, exact resume and
replay, a learnable task, the run's files, and the options it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import TINY_TEXTS
from szoq_hub.methods.dense.config import DENSE_FILE
from szoq_hub.methods.dense.runtime import DenseZO, load_dense_model, tensor_seed
from szoq_hub.core.errors import ConfigError, TrainingError
from szoq_cli.finetune import finetune_config
from szoq_hub.training.config import FinetuneConfig
from szoq_hub.training.finetune import finetune
from szoq_hub.training.run_folder import BEST_FILE, CHECKPOINT_FILE
from szoq_hub.data.models import resolve_model
from szoq_hub.runtime.zo import StepRecord, ZOConfig
from conftest import cli_in_process as run_cli


def _config(model, train_file, out, **kw) -> FinetuneConfig:
    """A dense run of a few steps on the tiny rows, without the step-0 dev baseline (see conftest's tiny_finetune_config)."""
    base = dict(model=str(model), dense=True, task=None, train_file=str(train_file), template="{text} It was", labels="0=bad,1=good",
                steps=6, batch_size=4, eval_every=3, save_every=3, train_samples=12, dev_samples=4, eval_samples=4, out=str(out),
                dev_baseline=False)
    base.update(kw)
    return finetune_config(base)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _batch(model, train_file):
    from szoq_hub.data.scoring import encode
    from szoq_hub.data.tasks import load_task

    config = _config(model, train_file, "unused")
    return encode(model_tok(model), load_task(custom=config.custom_task(), sampling=config.sampling()).train[:4])


def model_tok(model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model))


def test_dense_step_equals_hand_written_mezo(tiny_model_dir, train_file):
    """One step of the dense optimizer against MeZO written out: perturb every linear weight in
    place by +eps z, loss, -2 eps z, loss, +eps z, then w -= lr g z (z of weight j from its seed)."""
    from transformers import AutoModelForCausalLM

    from szoq_hub.data.scoring import loss_sum, loss_sums

    batch = _batch(tiny_model_dir, train_file)
    pad = model_tok(tiny_model_dir).pad_token_id
    lr, eps = 1e-2, 1e-2
    dense = load_dense_model(resolve_model(str(tiny_model_dir)), device=torch.device("cpu"))
    frozen = {n: p.clone() for n, p in dense.model.named_parameters() if n not in dense.names}
    before = [w.clone() for w in dense.weights]
    opt = DenseZO(dense.weights, ZOConfig(lr=lr, eps=eps, total_steps=1, seed=3))

    def closure(points):
        with dense.perturbed(points) as parts:
            return [x / len(batch) for x in loss_sums(dense.model, batch, pad, copies=parts)]

    record = opt.estimate(closure, 0)
    assert all(torch.equal(a, b) for a, b in zip(before, dense.weights))  # estimating touches no weight
    opt.apply(record)

    ref = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    params = dict(ref.named_parameters())
    assert sorted(dense.names) == sorted(n for n in params if n.endswith("_proj.weight"))  # every decoder linear, no lm_head/embeddings
    (seed,) = record.seeds
    zs = [torch.randn(params[n].numel(), generator=torch.Generator().manual_seed(tensor_seed(seed, j))).view_as(params[n])
          for j, n in enumerate(dense.names)]
    with torch.no_grad():
        for n, z in zip(dense.names, zs):
            params[n].add_(z, alpha=eps)
        loss_plus = loss_sum(ref, batch, pad) / len(batch)
        for n, z in zip(dense.names, zs):
            params[n].add_(z, alpha=-2 * eps)
        loss_minus = loss_sum(ref, batch, pad) / len(batch)
        for n, z in zip(dense.names, zs):
            params[n].add_(z, alpha=eps)
        g = (loss_plus - loss_minus) / (2 * eps)
        assert record.loss_plus[0] == pytest.approx(loss_plus, rel=1e-5) and record.loss_minus[0] == pytest.approx(loss_minus, rel=1e-5)
        assert record.grads[0] == pytest.approx(g, rel=1e-3) and abs(g) > 1e-3
        for n, z in zip(dense.names, zs):
            params[n].add_(z, alpha=-lr * g)
    for n, w, w0, z in zip(dense.names, dense.weights, before, zs):
        torch.testing.assert_close(w, params[n], rtol=0, atol=1e-6)  # MeZO's in-place restore drifts by rounding only
        assert torch.equal(w, w0.clone().add_(z, alpha=-lr * record.grads[0]))  # ZO-SGD's update, exactly
        assert not torch.equal(w, w0)
    assert all(torch.equal(p, frozen[n]) for n, p in dense.model.named_parameters() if n in frozen)  # embeddings, norms untouched
    steps = {n: w - w0 for n, w, w0 in zip(dense.names, dense.weights, before)}
    assert not torch.allclose(steps["model.layers.0.self_attn.q_proj.weight"], steps["model.layers.1.self_attn.q_proj.weight"])  # own z per weight


def test_dense_run_files_resume_and_replay_are_exact(tiny_model_dir, train_file, tmp_path):
    kw = dict(steps=8, save_every=3, eval_every=2, optimizer="zo-momentum", lr=1e-3)
    straight = finetune(_config(tiny_model_dir, train_file, tmp_path / "straight", **kw))
    files = {p.name for p in (tmp_path / "straight").iterdir()}
    assert {DENSE_FILE, "finetune_config.json", "metrics.jsonl", "README.md"} <= files
    assert CHECKPOINT_FILE not in files and BEST_FILE not in files  # dense.safetensors holds the best-dev weights
    cfg = json.loads((tmp_path / "straight" / "finetune_config.json").read_text())
    assert cfg["settings"]["dense"] is True and cfg["settings"]["quant"] == "none" and cfg["settings"]["mask"] is None
    assert cfg["nnz"] == 2 * (64 * 64 * 2 + 32 * 64 * 2 + 3 * 64 * 128) and cfg["runtime"]["dtype"] == "fp32"

    class Stop(Exception):
        pass

    def stop_at_5(event):
        if event["kind"] == "step" and event["step"] == 5:
            raise Stop  # the checkpoint is at step 3, or later when dev improved at step 4
    with pytest.raises(Stop):
        finetune(_config(tiny_model_dir, train_file, tmp_path / "resumed", **kw), progress=stop_at_5)
    assert (tmp_path / "resumed" / CHECKPOINT_FILE).is_file() and not (tmp_path / "resumed" / DENSE_FILE).exists()
    resumed = finetune(_config(tiny_model_dir, train_file, tmp_path / "resumed", **kw), resume=True)
    assert resumed.resumed_from in (3, 4)
    a, b = _weights(tmp_path / "straight" / DENSE_FILE), _weights(tmp_path / "resumed" / DENSE_FILE)
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    assert (resumed.best_step, resumed.best_dev, resumed.eval_metric) == (straight.best_step, straight.best_dev, straight.eval_metric)
    rows = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "step"] == list(range(8))

    # Without a dev set the final weights are the last step's: replaying the step log (seeds, g,
    # lr) from the base weights, with no forward pass, gives them bit for bit.
    out = tmp_path / "nodev"
    finetune(_config(tiny_model_dir, train_file, out, **{**kw, "dev_samples": 0, "eval_every": 0}))
    records = [StepRecord.from_dict(r) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "step"]
    base = load_dense_model(resolve_model(str(tiny_model_dir)), device=torch.device("cpu"))
    replay = DenseZO(base.weights, _config(tiny_model_dir, train_file, out, **kw).zo)
    for record in records:
        replay.apply(record)
    trained = _weights(out / DENSE_FILE)
    assert all(torch.equal(w, trained[n]) for n, w in zip(base.names, base.weights))


def test_dense_fine_tuning_lowers_the_loss_on_a_learnable_task(tiny_model_dir, tmp_path):
    """Every answer is " good": dense ZO over all linear weights must lower the exact train loss."""
    from szoq_hub.data.scoring import encode, loss_sum
    from szoq_hub.data.tasks import load_task

    path = tmp_path / "good.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": 1}) + "\n" for t in TINY_TEXTS))
    config = _config(tiny_model_dir, path, tmp_path / "run", steps=60, batch_size=8, lr=3e-3, eval_every=0, save_every=30,
                     train_samples=16, dev_samples=0)
    finetune(config)
    dense = load_dense_model(resolve_model(str(tiny_model_dir)), device=torch.device("cpu"))
    train = encode(dense.tokenizer, load_task(custom=config.custom_task(), sampling=config.sampling()).train)
    before = loss_sum(dense.model, train, dense.tokenizer.pad_token_id) / len(train)
    dense.load_weights(tmp_path / "run" / DENSE_FILE)
    after = loss_sum(dense.model, train, dense.tokenizer.pad_token_id) / len(train)
    assert after < 0.9 * before, (before, after)


def test_dense_resume_makes_best_dev_agree_with_the_checkpoint(tiny_model_dir, train_file, tmp_path):
    """best-dev.safetensors is written after the checkpoint that names its step: a run stopped
    between the two gets it back from the checkpoint; a file the checkpoint does not name is refused."""
    from szoq_hub.methods.dense.runtime import dense_metadata, save_dense

    class Stop(Exception):
        pass

    def stop_at(kind, step=None):
        def progress(event):
            if event["kind"] == kind and (step is None or event["step"] == step):
                raise Stop
        return progress

    # eval at step 2 (the first: it improves) and no periodic checkpoint: the only checkpoint is step 2's.
    kw = dict(steps=4, eval_every=2, save_every=100, lr=1e-3)
    out = tmp_path / "run"
    with pytest.raises(Stop):
        finetune(_config(tiny_model_dir, train_file, out, **kw), progress=stop_at("step", 3))
    ckpt = dense_metadata(out / CHECKPOINT_FILE)
    assert (ckpt["step"], ckpt["best_step"], dense_metadata(out / BEST_FILE)["step"]) == ("2", "2", "2")
    (out / BEST_FILE).unlink()  # as if the run stopped between writing the checkpoint and the best-dev file
    with pytest.raises(Stop):
        finetune(_config(tiny_model_dir, train_file, out, **kw), resume=True, progress=stop_at("start"))
    best, ckpt_weights = _weights(out / BEST_FILE), _weights(out / CHECKPOINT_FILE)
    assert dense_metadata(out / BEST_FILE)["step"] == "2" and all(torch.equal(t, ckpt_weights[n]) for n, t in best.items())

    # a checkpoint at step 3 naming best step 2, beside a best-dev file from another step
    kw = dict(steps=4, eval_every=2, save_every=1, lr=1e-3)
    out = tmp_path / "run2"
    with pytest.raises(Stop):
        finetune(_config(tiny_model_dir, train_file, out, **kw), progress=stop_at("step", 4))
    ckpt = dense_metadata(out / CHECKPOINT_FILE)
    assert (ckpt["step"], ckpt["best_step"]) == ("3", "2")
    dense = load_dense_model(resolve_model(str(tiny_model_dir)), device=torch.device("cpu"))
    save_dense(out / BEST_FILE, dense, step="1")
    with pytest.raises(TrainingError, match="does not hold the best step 2"):
        finetune(_config(tiny_model_dir, train_file, out, **kw), resume=True)


@pytest.mark.parametrize("extra, words", [(["--mask", "smollm2-135m-instruct"], "--mask"), (["--quant", "nf4"], "--quant nf4"),
                                          (["--dtype", "bf16"], "--dtype bf16")])
def test_cli_dense_refuses_options_that_do_not_apply(extra, words, tiny_model_dir, train_file, tmp_path, monkeypatch, capsys):
    out_dir = tmp_path / "run"
    args = ["finetune", "--dense", "--model", str(tiny_model_dir), "--train", str(train_file), "--template", "{text} It was",
            "--labels", "0=bad,1=good", "--steps", "2", "--out", str(out_dir), *extra]
    code, out, err = run_cli(args, monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2, err
    assert lines[0].startswith(f"error: {words}") and "--dense" in lines[0] and lines[1].startswith("hint: ")
    assert not out_dir.exists()


def test_cli_dense_json_and_resume_of_a_sparse_run_refused(tiny_model_dir, train_file, tmp_path, monkeypatch, capsys):
    common = ["--model", str(tiny_model_dir), "--train", str(train_file), "--template", "{text} It was", "--labels", "0=bad,1=good",
              "--steps", "2", "--batch-size", "4", "--eval-every", "1", "--train-samples", "12", "--dev-samples", "4", "--eval-samples", "4",
              "--no-dev-baseline"]  # trained weights, not the untouched ones a 4-row dev may keep
    code, out, err = run_cli(["finetune", "--dense", *common, "--out", str(tmp_path / "dense"), "--json"], monkeypatch, capsys)
    assert code == 0, err
    got = json.loads(out)
    assert set(got) == {"out", "steps", "metric", "best_step", "best_dev", "eval", "seconds", "dtype", "micro_batch_size", "micro_batch_tokens"}
    assert got["steps"] == 2 and got["dtype"] == "fp32"
    rows = [json.loads(line) for line in (tmp_path / "dense" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["kind"] == "final" and rows[-1]["eval_metric"] == got["eval"]
    assert max((r["accuracy"], -r["step"]) for r in rows if r["kind"] == "eval") == (got["best_dev"], -got["best_step"])
    custom = common[:8]
    code, out, err = run_cli(["eval", *custom, "--eval-samples", "4", "--delta", str(tmp_path / "dense"), "--json"], monkeypatch, capsys)
    assert code == 0, err
    ev = json.loads(out)
    assert (ev["mode"], ev["n"], ev["value"]) == ("dense", 4, got["eval"])  # the weights score on eval what finetune reported
    code, out, err = run_cli(["eval", *custom, "--mask", "x", "--delta", str(tmp_path / "dense")], monkeypatch, capsys)
    assert code == 2 and err.startswith("error: --mask x does not apply") and "\nhint: " in err
    code, out, err = run_cli(["merge", "--delta", str(tmp_path / "dense"), "--out", str(tmp_path / "merged")], monkeypatch, capsys)
    assert code == 0, err
    from transformers import AutoModelForCausalLM

    merged, base = (dict(AutoModelForCausalLM.from_pretrained(str(f)).named_parameters()) for f in (tmp_path / "merged", tiny_model_dir))
    trained = _weights(tmp_path / "dense" / DENSE_FILE)
    assert trained.keys() < merged.keys() and all(torch.equal(merged[n], t) and not torch.equal(base[n], t) for n, t in trained.items())
    assert all(torch.equal(merged[n], base[n]) for n in merged if n not in trained)  # embeddings, norms: the base's
    for args in (["delta", "push", str(tmp_path / "dense"), "--repo", "me/dense"], ["export", "peft", "--delta", str(tmp_path / "dense"), "--out", str(tmp_path / "peft")]):
        code, out, err = run_cli(args, monkeypatch, capsys)  # sparse-delta commands say what a dense run is
        assert code == 2 and err.startswith(f"error: {tmp_path / 'dense'} is a --dense run") and "\nhint: szoq eval / szoq merge" in err, err
    # a stopped sparse run in the same folder is not continued as a dense one
    sparse = tmp_path / "sparse"
    sparse.mkdir()
    (sparse / "finetune_config.json").write_text((tmp_path / "dense" / "finetune_config.json").read_text().replace('"dense": true', '"dense": false'))
    code, out, err = run_cli(["finetune", "--dense", *common, "--out", str(sparse), "--resume"], monkeypatch, capsys)
    assert code == 2 and "other settings: dense (False -> True)" in err, err
    with pytest.raises(ConfigError, match="--mask"):
        FinetuneConfig(method="dense", mask="x")
