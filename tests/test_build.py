"""Mask building on a tiny real transformers model: scoring, selection, determinism, calibration."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from szoq_hub.masks.build import MaskBuildConfig, build_mask
from szoq_hub.data.calibration import load_windows
from szoq_hub.core.errors import CalibrationError, ConfigError, DependencyError, ModelError
from szoq_hub.core.files import file_sha256
from szoq_hub.masks.artifact import load_mask
from szoq_hub.data.models import load_model, model_fingerprint, resolve_model, target_parameter_names
from szoq_hub.masks.sensitivity import fisher_scores

from conftest import WIKITEXT

LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def build(tiny_model_dir, calib, out, **kw):
    cfg = MaskBuildConfig(model=str(tiny_model_dir), calibration=str(calib), samples=kw.pop("samples", 4), seq_len=kw.pop("seq_len", 16), **kw)
    return build_mask(cfg, out)


def test_default_targets_are_decoder_linears_only(tiny_model_dir, tiny_text_file, tmp_path):
    mask, folder = build(tiny_model_dir, tiny_text_file, tmp_path / "m", density=0.01)
    names = set(mask.indices)
    assert len(names) == 2 * 7  # 2 layers x q,k,v,o,gate,up,down
    assert all(n.endswith(".weight") and any(p in n for p in LINEAR) for n in names)
    assert not any("embed" in n or "norm" in n or "lm_head" in n for n in names)
    for n, shape in mask.config.shapes.items():
        assert mask.indices[n].numel() == max(1, math.floor(math.prod(shape) * 0.01))
    assert mask.config.stats["total_nnz"] == mask.nnz
    # captured share = Σg² at the picked weights / Σg² over all targets, recomputed by hand
    loaded = load_model(resolve_model(str(tiny_model_dir)))
    windows, _ = load_windows(str(tiny_text_file), loaded.tokenizer, samples=4, seq_len=16, seed=0)
    scores = fisher_scores(loaded.model, target_parameter_names(loaded.model), windows)
    kept = sum(float(scores[n].double().flatten()[idx.long()].sum()) for n, idx in mask.indices.items())
    total = sum(float(s.double().sum()) for s in scores.values())
    assert mask.config.stats["captured_share"] == pytest.approx(kept / total, abs=1e-6)
    assert load_mask(folder, fingerprint=model_fingerprint(resolve_model(str(tiny_model_dir)))).nnz == mask.nnz


def test_targets_regex_overrides(tiny_model_dir, tiny_text_file, tmp_path):
    mask, _ = build(tiny_model_dir, tiny_text_file, None, targets=r"mlp\.(gate|up)_proj")
    assert sorted(mask.indices) == sorted(f"model.layers.{i}.mlp.{p}_proj.weight" for i in range(2) for p in ("gate", "up"))


def test_fisher_matches_slow_per_sequence_reference(tiny_model_dir, tiny_text_file):
    loaded = load_model(resolve_model(str(tiny_model_dir)))
    model = loaded.model
    targets = target_parameter_names(model)
    windows, _ = load_windows(str(tiny_text_file), loaded.tokenizer, samples=3, seq_len=12, seed=0)
    fast = fisher_scores(model, targets, windows)
    params = dict(model.named_parameters())
    ref = {n: torch.zeros_like(params[n]) for n in targets}
    for i in range(windows.shape[0]):  # reference: autograd.grad per window, then square and sum
        ids = windows[i : i + 1]
        loss = model(input_ids=ids, labels=ids).loss
        grads = torch.autograd.grad(loss, [params[n] for n in targets])
        for n, g in zip(targets, grads):
            ref[n] += g * g
    for n in targets:
        torch.testing.assert_close(fast[n], ref[n], rtol=1e-5, atol=1e-12)
    assert all(p.grad is None for p in model.parameters())  # no gradient is left behind


def test_fisher_gives_no_gradient_to_non_targets(tiny_model_dir, tiny_text_file):
    loaded = load_model(resolve_model(str(tiny_model_dir)))
    model = loaded.model
    windows, _ = load_windows(str(tiny_text_file), loaded.tokenizer, samples=1, seq_len=8)
    seen = []
    for n, p in model.named_parameters():
        p.register_hook(lambda g, n=n: seen.append(n))
    fisher_scores(model, ["model.layers.1.mlp.down_proj.weight"], windows)
    assert seen == ["model.layers.1.mlp.down_proj.weight"]


def test_reproducible_build_same_seed_same_sha(tiny_model_dir, tiny_text_file, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")  # build time is the only non-derived field
    _, a = build(tiny_model_dir, tiny_text_file, tmp_path / "a", seed=3)
    _, b = build(tiny_model_dir, tiny_text_file, tmp_path / "b", seed=3)
    assert file_sha256(a / "mask.safetensors") == file_sha256(b / "mask.safetensors")
    _, c = build(tiny_model_dir, tiny_text_file, tmp_path / "c", seed=4, scorer="random")
    _, d = build(tiny_model_dir, tiny_text_file, tmp_path / "d", seed=5, scorer="random")
    assert file_sha256(c / "mask.safetensors") != file_sha256(d / "mask.safetensors")


def test_magnitude_and_random_scorers(tiny_model_dir, tiny_text_file):
    mag, _ = build(tiny_model_dir, tiny_text_file, None, scorer="magnitude", density=0.05)
    params = dict(load_model(resolve_model(str(tiny_model_dir))).model.named_parameters())
    for n, idx in mag.indices.items():
        w = params[n].detach().abs().flatten()
        assert float(w[idx.long()].min()) >= float(w.topk(idx.numel()).values.min())
    assert mag.config.calibration is None
    rnd1, _ = build(tiny_model_dir, tiny_text_file, None, scorer="random", seed=1)
    rnd1b, _ = build(tiny_model_dir, tiny_text_file, None, scorer="random", seed=1)
    assert all(torch.equal(rnd1.indices[n], rnd1b.indices[n]) for n in rnd1.indices)


def test_calibration_windows_are_deterministic_and_recorded(tiny_model_dir, tiny_text_file):
    tok = load_model(resolve_model(str(tiny_model_dir))).tokenizer
    w1, info = load_windows(str(tiny_text_file), tok, samples=3, seq_len=10, seed=7)
    w2, _ = load_windows(str(tiny_text_file), tok, samples=3, seq_len=10, seed=7)
    w3, _ = load_windows(str(tiny_text_file), tok, samples=3, seq_len=10, seed=8)
    assert w1.shape == (3, 10) and torch.equal(w1, w2) and not torch.equal(w1, w3)
    assert info.tokens == 30 and info.sha256 and info.source == tiny_text_file.name


def test_calibration_from_shared_files(tiny_model_dir, c4_sample):
    tok = load_model(resolve_model(str(tiny_model_dir))).tokenizer
    w, info = load_windows(str(c4_sample), tok, samples=2, seq_len=32)
    assert w.shape == (2, 32) and info.source == "c4_validation_2k.jsonl.gz"
    if WIKITEXT.exists():
        w, _ = load_windows(str(WIKITEXT), tok, samples=2, seq_len=32)
        assert w.shape == (2, 32)


def test_calibration_errors(tiny_model_dir, tmp_path):
    tok = load_model(resolve_model(str(tiny_model_dir))).tokenizer
    with pytest.raises(CalibrationError, match="not found"):
        load_windows(str(tmp_path / "missing.jsonl"), tok, samples=1, seq_len=8)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(CalibrationError, match="holds no text"):
        load_windows(str(tmp_path / "empty.txt"), tok, samples=1, seq_len=8)
    (tmp_path / "short.txt").write_text("tiny")
    with pytest.raises(CalibrationError, match="shorter than one window"):
        load_windows(str(tmp_path / "short.txt"), tok, samples=1, seq_len=64)
    (tmp_path / "bad.jsonl").write_text('{"txt": "x"}\n')
    with pytest.raises(CalibrationError, match="no 'text' field"):
        load_windows(str(tmp_path / "bad.jsonl"), tok, samples=1, seq_len=8)


def test_config_validation():
    with pytest.raises(ConfigError, match="density"):
        MaskBuildConfig(density=1.0)
    with pytest.raises(ConfigError, match="scorer"):
        MaskBuildConfig(scorer="taylor")
    with pytest.raises(ConfigError, match="scope"):
        MaskBuildConfig(scope="per-row")


def test_model_resolution_errors(tmp_path, monkeypatch):
    with pytest.raises(ModelError, match="unknown model"):
        resolve_model("no-such-alias")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))
    (tmp_path / "x.gguf").write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "gguf", None)  # make `import gguf` fail
    with pytest.raises(DependencyError, match="gguf"):
        resolve_model(str(tmp_path / "x.gguf"))


def test_fingerprint_from_config_equals_build_fingerprint(tiny_model_dir, tiny_text_file, tmp_path):
    mask, _ = build(tiny_model_dir, tiny_text_file, None, scorer="magnitude")
    assert mask.config.fingerprint == model_fingerprint(resolve_model(str(tiny_model_dir)))


def test_two_process_distributed_build_equals_one_process(tiny_model_dir, tiny_text_file, tmp_path):
    env = dict(os.environ, SOURCE_DATE_EPOCH="1767225600", OMP_NUM_THREADS="1")
    args = ["mask", "build", str(tiny_model_dir), "--calibration", str(tiny_text_file), "--samples", "6", "--seq-len", "16", "--density", "0.02"]
    one = subprocess.run([sys.executable, "-m", "szoq_cli", *args, "--name", "one", "--out", str(tmp_path / "one")], env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "szoq_cli", *args,
                          "--name", "two", "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = load_mask(tmp_path / "one"), load_mask(tmp_path / "two")
    assert a.indices.keys() == b.indices.keys()
    assert all(torch.equal(a.indices[n], b.indices[n]) for n in a.indices)
    assert a.config.stats["captured_share"] == pytest.approx(b.config.stats["captured_share"], rel=1e-5)
    assert two.stdout.count("two@v1") == 1  # only rank 0 writes and reports
