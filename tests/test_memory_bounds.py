"""Memory bounds by default (issue 30): `mask build` picks a bound from the available memory (same
mask as the unbounded build); finetune, eval and merge refuse before loading a model that cannot
fit. And the missing-mask hint names the user's own model."""

from __future__ import annotations

import json

import pytest

from conftest import assert_one_line_error
from tiny_gguf import write_tiny_gguf


@pytest.fixture
def tiny_gguf(tmp_path):
    return write_tiny_gguf(tmp_path / "tiny-qwen.gguf", arch="qwen2", qtype="Q8_0")


@pytest.fixture
def train_file(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [{"text": t, "label": i % 2} for i, t in enumerate(["good film", "bad film", "great", "awful", "fine", "dull"] * 4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_mask_build_picks_a_bound_and_builds_the_unbounded_mask(tiny_gguf, tmp_path, run_cli, monkeypatch):
    from szoq_hub.data import footprint

    calib = tmp_path / "calib.txt"
    calib.write_text("the movie was great and the actors were wonderful. " * 200)
    common = [str(tiny_gguf), "--calibration", str(calib), "--samples", "4", "--seq-len", "16", "--density", "0.01", "--json"]
    code, out, err = run_cli("mask", "build", *common, "--max-memory", "100GB", "--name", "given")
    assert code == 0, err
    given = json.loads(out)
    # a machine with little memory left: room for about half the accumulators, so the picked bound splits the build
    import torch

    from szoq_hub.data.footprint import load_config, skeleton
    from szoq_hub.data.models import resolve_model, target_parameter_names
    from szoq_hub.masks import build_plan

    skeleton = skeleton(load_config(resolve_model(str(tiny_gguf))))
    numels = {n: p.numel() for n, p in skeleton.named_parameters() if n in set(target_parameter_names(skeleton))}
    largest = max(numels.values())
    from szoq_hub.data.gguf_file import GGUFModelFile

    # the linears load as their file bytes (the bound is picked then) and are materialised in fp32 once the plan holds them
    held = sum(t.n_bytes for t in GGUFModelFile(tiny_gguf).tensors.values() if t.name.startswith("blk.") and len(t.shape) == 2)
    fixed = (build_plan.activation_bytes(skeleton.config, 16, torch.float32, 0, False) + largest * 8 + 16 * largest
             + build_plan._RESERVE + 2 * sum(numels.values())  # accumulators: 4 bytes each, room for half
             + 4 * sum(numels.values()) - held)
    monkeypatch.setattr(footprint, "available_bytes", lambda: int(fixed / 0.8))
    monkeypatch.setattr(footprint, "OVERHEAD", 0)  # the tiny model itself fits that little memory
    code, out, err = run_cli("mask", "build", *common, "--name", "picked")
    assert code == 0, err
    picked = json.loads(out)
    assert picked["passes"] > 1 and picked["max_memory_picked"]
    from szoq_hub import Registry
    from szoq_hub.masks.artifact import load_mask

    a, b = (load_mask(Registry().get(r["ref"]).path) for r in (given, picked))
    assert all(a.indices[n].tolist() == b.indices[n].tolist() for n in a.indices)  # Jaccard 1.0
    monkeypatch.setattr(footprint, "available_bytes", lambda: 10**11)
    code, out, err = run_cli("mask", "build", *common[:-1], "--name", "said")
    assert code == 0 and "memory bound" in err and "picked from the 100.00 GB available" in err, err


@pytest.mark.parametrize("command", ["eval", "finetune", "merge"])
def test_commands_refuse_a_model_that_cannot_fit_before_loading(command, tiny_gguf, train_file, tmp_path, run_cli, monkeypatch):
    from szoq_hub.data import footprint

    custom = ["--train", str(train_file), "--template", "{text} It was", "--labels", "0=bad,1=good"]
    if command == "merge":  # a dense delta from a real run, then too little memory to merge it
        code, _, err = run_cli("finetune", "--model", str(tiny_gguf), "--dense", *custom, "--steps", "1", "--out", str(tmp_path / "run"))
        assert code == 0, err
    monkeypatch.setattr(footprint, "available_bytes", lambda: 10_000_000)
    import szoq_hub.data.gguf_file as gguf_file

    monkeypatch.setattr(gguf_file.GGUFModelFile, "iter_tensors", lambda *a, **k: pytest.fail("weights read"))
    argv = {"eval": ["eval", "--model", str(tiny_gguf), *custom],
            "finetune": ["finetune", "--model", str(tiny_gguf), "--lora", "2", *custom, "--steps", "1", "--out", str(tmp_path / "r2")],
            "merge": ["merge", "--delta", str(tmp_path / "run"), "--out", str(tmp_path / "merged")]}[command]
    code, _, err = run_cli(*argv)
    assert_one_line_error(code, err, "not enough memory", "tiny-qwen.gguf", "needs about", "available")


def test_forgotten_mask_names_the_model_and_the_default_mask(tiny_gguf, train_file, tmp_path, run_cli):
    custom = ["--train", str(train_file), "--template", "{text} It was", "--labels", "0=bad,1=good"]
    code, _, err = run_cli("finetune", "--model", str(tiny_gguf), *custom, "--steps", "1", "--out", str(tmp_path / "run"))
    assert_one_line_error(code, err, "built-in default", "no --mask given")
    hint = next(line for line in err.splitlines() if line.startswith("hint:"))
    assert f"szoq mask build {tiny_gguf}" in hint and "--mask tiny-qwen" in hint and "MODEL" not in hint
