"""ZO-LoRA as a training method (`finetune --lora R`): run folder, seeds, resume, eval, merge, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import TINY_TEXTS, assert_one_line_error
from szoq_hub.core.errors import ConfigError, FingerprintMismatch, MaskError
from szoq_hub.methods.lora.config import LORA_FILE
from szoq_hub.methods.lora.file import load_lora, save_lora
from szoq_cli.finetune import finetune_config
from szoq_hub.training.finetune import finetune
from szoq_hub.training.run_folder import CHECKPOINT_FILE

ROWS = [{"text": t, "label": int("great" in t or "wonderful" in t)} for t in TINY_TEXTS]


@pytest.fixture
def train_file(tmp_path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def _config(model, train_file, out, **kw):
    """A LoRA run of a few steps on the tiny rows, without the step-0 dev baseline (see conftest's tiny_finetune_config)."""
    base = dict(model=str(model), task=None, train_file=str(train_file), template="{text} It was", labels="0=bad,1=good", lora=4,
                quant="nf4", dtype="fp32", steps=6, batch_size=4, eval_every=3, save_every=3, train_samples=12, dev_samples=4,
                eval_samples=4, lr=1e-2, out=str(out), dev_baseline=False)
    base.update(kw)
    return finetune_config(base)


def _losses(out: Path) -> list[float]:
    return [json.loads(l)["loss"] for l in (out / "metrics.jsonl").read_text().splitlines() if '"kind": "step"' in l]


def test_lora_run_writes_its_adapter_and_reruns_to_the_same_losses(tiny_model_dir, train_file, tmp_path):
    from szoq_hub.data.models import model_fingerprint, resolve_model

    result = finetune(_config(tiny_model_dir, train_file, tmp_path / "a"))
    out = tmp_path / "a"
    files = {p.name for p in out.iterdir()}
    assert {LORA_FILE, "finetune_config.json", "metrics.jsonl", "README.md", "best-dev.safetensors", CHECKPOINT_FILE} <= files
    assert "delta.safetensors" not in files
    adapter = load_lora(out)
    assert adapter.fingerprint == model_fingerprint(resolve_model(str(tiny_model_dir)))
    assert (adapter.settings.rank, adapter.settings.alpha, adapter.settings.targets) == (4, 16.0, ("q_proj", "v_proj"))
    assert any(t.count_nonzero() for k, t in adapter.tensors.items() if "lora_B" in k)  # B moved off zero
    cfg = json.loads((out / "finetune_config.json").read_text())
    assert cfg["nnz"] == sum(t.numel() for t in adapter.tensors.values()) and cfg["mask_sha256"] is None
    assert cfg["lora"]["rank"] == 4 and cfg["lora"]["targets"] == ["q_proj", "v_proj"] and cfg["settings"]["lora"] == 4
    assert "ZO-LoRA" in (out / "README.md").read_text()
    finetune(_config(tiny_model_dir, train_file, tmp_path / "b"))
    assert _losses(out) == _losses(tmp_path / "b") and len(_losses(out)) == 6
    assert all(torch.equal(t, load_lora(tmp_path / "b").tensors[k]) for k, t in adapter.tensors.items())
    other = finetune(_config(tiny_model_dir, train_file, tmp_path / "c", seed=1))
    assert _losses(tmp_path / "c") != _losses(out) and other.steps == result.steps


class _Stop(Exception):
    pass


def test_lora_resume_is_bit_identical(tiny_model_dir, train_file, tmp_path):
    kw = dict(steps=12, save_every=5, eval_every=5, optimizer="zo-momentum")
    finetune(_config(tiny_model_dir, train_file, tmp_path / "straight", **kw))

    def stop_at_8(event):
        if event["kind"] == "step" and event["step"] == 8:
            raise _Stop  # killed after step 8: the checkpoint is at step 5
    with pytest.raises(_Stop):
        finetune(_config(tiny_model_dir, train_file, tmp_path / "resumed", **kw), progress=stop_at_8)
    assert not (tmp_path / "resumed" / LORA_FILE).exists()
    result = finetune(_config(tiny_model_dir, train_file, tmp_path / "resumed", **kw), resume=True)
    assert result.resumed_from == 5
    a, b = load_lora(tmp_path / "straight").tensors, load_lora(tmp_path / "resumed").tensors
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(tmp_path / "straight") == _losses(tmp_path / "resumed")


def test_eval_and_merge_of_a_lora_run(tiny_model_dir, train_file, tmp_path, run_cli, monkeypatch):
    from transformers import AutoModelForCausalLM

    from szoq_hub.methods.lora.runtime import attach_lora
    from szoq_hub.runtime.sparse import load_sparse_model
    from szoq_hub.training.evaluate import EvalConfig, evaluate
    from szoq_hub.training.merge import merge

    out = tmp_path / "run"
    result = finetune(_config(tiny_model_dir, train_file, out))
    ev = evaluate(EvalConfig(delta=str(out), train_file=str(train_file), template="{text} It was", labels="0=bad,1=good", eval_samples=4,
                             dtype="fp32"))
    assert ev.mode == "lora" and ev.n == 4 and ev.value == result.eval_metric
    task = ("--train", str(train_file), "--template", "{text} It was", "--labels", "0=bad,1=good", "--eval-samples", "4", "--dtype", "fp32")
    code, printed, err = run_cli("eval", "--delta", str(out), *task, "--json")
    assert code == 0, err
    assert json.loads(printed)["value"] == result.eval_metric and json.loads(printed)["mode"] == "lora"
    assert_one_line_error(*run_cli("eval", "--delta", str(out), *task, "--mask", "smollm2-135m-instruct")[:3:2], "--mask", "LoRA")
    assert_one_line_error(*run_cli("merge", "--delta", str(out), "--out", str(tmp_path / "m"), "--mask", "x")[:3:2], "--mask", "LoRA")
    # merge on the full-precision weights equals the hooked fp32 model (--quant none)
    merged_dir = merge(delta=out, out=tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    base = load_sparse_model(str(tiny_model_dir), None, quant="none", compute_dtype="fp32")
    adapter = load_lora(out)
    hooked = attach_lora(base.model, base.tokenizer, adapter.settings)
    hooked.load_adapter(adapter.tensors)
    ids = base.tokenizer(["the movie was great", "a boring plot"], return_tensors="pt", padding=True)
    with torch.no_grad():
        want, got = hooked.model(**ids).logits, merged(**ids).logits
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
    import szoq_hub.runtime.sparse as sparse_runtime

    fp32_run = finetune(_config(tiny_model_dir, train_file, tmp_path / "fp32", quant="none"))
    real, quants = sparse_runtime.load_sparse_model, []
    monkeypatch.setattr(sparse_runtime, "load_sparse_model", lambda *a, **k: quants.append(k["quant"]) or real(*a, **k))  # the real loader, recorded
    ev = evaluate(EvalConfig(delta=str(tmp_path / "fp32"), train_file=str(train_file), template="{text} It was", labels="0=bad,1=good",
                             eval_samples=4, dtype="fp32"))
    assert quants == ["none"] and ev.value == fp32_run.eval_metric  # without --quant: the run's own base (none here)
    monkeypatch.setattr(sparse_runtime, "load_sparse_model", real)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        assert not torch.allclose(plain(**ids).logits, got, atol=1e-6)  # the adapter changed something


def test_lora_file_loader_refuses_bad_files(tiny_model_dir, tmp_path):
    from szoq_hub.methods.lora.config import LoRASettings

    settings = LoRASettings(rank=2, alpha=4.0)
    good = {"m.q_proj.lora_A.weight": torch.zeros(2, 8), "m.q_proj.lora_B.weight": torch.zeros(6, 2)}
    kw = dict(settings=settings, fingerprint="f" * 64, base_model="tiny", run_settings={"seed": 0})
    loaded = load_lora(save_lora(tmp_path / "ok.safetensors", good, **kw))
    assert loaded.modules == ["m.q_proj"] and loaded.weight_deltas({"m.q_proj": (8, 6)})["m.q_proj.weight"].shape == (6, 8)
    with pytest.raises(FingerprintMismatch):
        loaded.check_fingerprint("0" * 64)
    with pytest.raises(MaskError, match="rank"):
        load_lora(save_lora(tmp_path / "rank.safetensors", {**good, "m.q_proj.lora_A.weight": torch.zeros(3, 8)}, **kw))
    with pytest.raises(MaskError, match="lora_B"):
        load_lora(save_lora(tmp_path / "half.safetensors", {"m.q_proj.lora_A.weight": torch.zeros(2, 8)}, **kw))
    from safetensors.torch import save_file

    save_file(good, str(tmp_path / "plain.safetensors"), metadata={"format": "szoq.delta"})
    with pytest.raises(MaskError, match="format"):
        load_lora(tmp_path / "plain.safetensors")
    with pytest.raises(ConfigError):
        load_lora(tmp_path)


def test_lora_flags_and_refusals(run_cli, tiny_model_dir, train_file, tmp_path):
    code, out, err = run_cli("finetune", "--help")
    assert code == 0 and "--lora" in out and "--lora-alpha" in out and "--lora-targets" in out
    common = ("--model", str(tiny_model_dir), "--train", str(train_file), "--template", "{text} It was", "--labels", "0=bad,1=good",
              "--out", str(tmp_path / "x"))
    assert_one_line_error(*run_cli("finetune", *common, "--lora", "8", "--dense")[:3:2], "--lora", "--dense", "were both given")
    assert_one_line_error(*run_cli("finetune", *common, "--lora", "8", "--mask", "smollm2-135m-instruct")[:3:2], "--mask", "--lora")
    assert_one_line_error(*run_cli("finetune", *common, "--lora", "-1")[:3:2], "--lora must be >= 0")
    assert_one_line_error(*run_cli("finetune", *common, "--lora", "8", "--lora-alpha", "0")[:3:2], "alpha")
    assert_one_line_error(*run_cli("finetune", *common, "--lora", "8", "--lora-targets", "nothing_here", "--steps", "1")[:3:2], "nothing_here")
    assert not (tmp_path / "x" / LORA_FILE).exists()


def test_export_peft_of_a_lora_run_loads_in_peft_and_equals_the_merge(tiny_model_dir, train_file, tmp_path, run_cli):
    pytest.importorskip("peft", reason="pip install 'szoq[peft]'")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from szoq_hub.export.peft import verify_adapter
    from szoq_hub.training.merge import merge

    out = tmp_path / "run"
    finetune(_config(tiny_model_dir, train_file, out, lora_targets="q_proj,v_proj,down_proj"))
    code, printed, err = run_cli("export", "peft", "--delta", str(out), "--out", str(tmp_path / "adapter"), "--json")
    assert code == 0, err
    result = json.loads(printed)
    assert result["peft_type"] == "LORA" and result["r"] == 4 and result["padding"] == 0
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 16.0
    assert {m.rsplit(".", 1)[1] for m in config["target_modules"]} == {"q_proj", "v_proj", "down_proj"}
    assert config["base_model_name_or_path"] == tiny_model_dir.name  # no local path
    assert verify_adapter(tmp_path / "adapter") == config
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tok(["the movie was great", "a boring plot"], return_tensors="pt", padding=True)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    peft_model = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(merge(delta=out, out=tmp_path / "merged"), dtype=torch.float32).eval()
    with torch.no_grad():
        adapted, want = peft_model(**ids).logits, merged(**ids).logits
    assert torch.allclose(adapted, want, atol=1e-4, rtol=1e-4)
    assert_one_line_error(*run_cli("export", "peft", "--delta", str(out), "--out", str(tmp_path / "a2"), "--mask", "x")[:3:2], "--mask", "LoRA")
    assert_one_line_error(*run_cli("delta", "push", str(out), "--repo", "me/lora")[:3:2], "is a --lora run")  # before any Hub call
