"""`--lr scores` (a sparse run's default): lr = SCORES_C / (the mask's Σg² / calibration windows), recorded; a mask
without scores falls back to the method's fixed default; the steps equal those of the run given that lr."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import cli_in_process
from conftest import tiny_finetune_config as _config
from szoq_hub.core.defaults import DEFAULT_LR
from szoq_hub.core.errors import TrainingError
from szoq_hub.masks.artifact import load_mask
from szoq_hub.methods.sparse.delta import load_delta
from szoq_hub.runtime.zo_config import SCORES_C, SCORES_LR
from szoq_hub.training.finetune import finetune
from szoq_hub.training.lr_scores import lr_from_scores


def _steps(out: Path) -> list[dict]:
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows if r["kind"] == "step"]


def _settings(out: Path) -> dict:
    return json.loads((out / "finetune_config.json").read_text())["settings"]


def _expected_lr(mask_folder: Path) -> float:
    mask = load_mask(mask_folder)
    total = sum(float(t.double().sum()) for t in mask.scores.values())
    return float(f"{SCORES_C / (total / mask.config.calibration['samples']):.2g}")


def test_the_rule_divides_c_by_the_scores_per_window_and_falls_back_without_scores():
    scores = torch.tensor([3.0, 1.0, 0.5, 0.5])  # Σ 5 over 2 windows: 2.5 per window
    chosen = lr_from_scores(scores, 2, fallback=1e-4, c=1e-3)
    assert (chosen.lr, chosen.score_sum, chosen.windows, chosen.per_window) == (4e-4, 5.0, 2, 2.5) and chosen.from_scores
    assert lr_from_scores(torch.tensor([3.0]), 1, fallback=1e-4, c=1e-3).lr == 3.3e-4  # 2 significant digits
    none = lr_from_scores(None, None, fallback=1e-4)
    assert (none.lr, none.per_window, none.from_scores) == (1e-4, None, False)
    assert none.record() == {"lr": 1e-4, "c": SCORES_C, "score_sum": None, "windows": None, "per_window": None}
    with pytest.raises(TrainingError, match="sum to 0"):
        lr_from_scores(torch.zeros(4), 2, fallback=1e-4)
    with pytest.raises(TrainingError, match="window count"):
        lr_from_scores(scores, None, fallback=1e-4)


def test_zo_sgd_on_a_quadratic_is_best_near_one_over_the_trace():
    """The module's derivation: one ZO-SGD step's expected decrease of L = ½ xᵀHx peaks at lr ≈ 1/(tr H + 2 λ_max),
    so a rule in 1/tr H scales with the best step (here H is diagonal with a 100x spread, as the scores are)."""
    gen = torch.Generator().manual_seed(0)
    k = 400
    h = torch.logspace(-1, 1, k, dtype=torch.float64)  # diag H [k]
    x = torch.randn(k, generator=gen, dtype=torch.float64)  # [k]
    grad = h * x  # ∇L [k]
    z = torch.randn(4000, k, generator=gen, dtype=torch.float64)  # [S, k] perturbations
    g = z @ grad  # [S] exact two-point estimates (eps -> 0)

    def mean_decrease(lr: float) -> float:
        step = -lr * g[:, None] * z  # [S, k]
        return float((-(grad * step).sum(1) - 0.5 * (step * step * h).sum(1)).mean())

    predicted = 1.0 / (float(h.sum()) + 2 * float(h.max()))
    grid = [predicted * f for f in (0.1, 0.3, 0.5, 1.0, 2.0, 3.0, 10.0)]
    gains = [mean_decrease(lr) for lr in grid]
    best = grid[max(range(len(grid)), key=gains.__getitem__)]
    assert 0.5 * predicted <= best <= 2.0 * predicted
    assert mean_decrease(3.0 * predicted) < 0 < mean_decrease(predicted)  # 3x past it the step raises the loss


def test_a_scored_mask_sets_the_default_lr_and_equals_the_run_given_it(tiny_model_dir, tiny_mask, train_file, tmp_path):
    kw = dict(steps=4, save_every=2, eval_every=2)
    config = _config(tiny_model_dir, tiny_mask, train_file, tmp_path / "default", **kw)
    assert config.zo.lr == SCORES_LR  # the sparse method's default
    events = []
    result = finetune(config, progress=events.append)
    expected = _expected_lr(tiny_mask)
    chosen = _settings(tmp_path / "default")["lr_scores"]
    assert result.lr == chosen["lr"] == expected and chosen["windows"] == 4 and chosen["c"] == SCORES_C
    assert [e["lr"] for e in events if e["kind"] == "lr_scores"] == [expected]
    assert [r["lr"] for r in _steps(tmp_path / "default")] == [expected] * 4

    finetune(_config(tiny_model_dir, tiny_mask, train_file, tmp_path / "given", lr=expected, **kw))
    assert _steps(tmp_path / "given") == _steps(tmp_path / "default")
    x, y = load_delta(tmp_path / "default").tensors, load_delta(tmp_path / "given").tensors
    assert all(torch.equal(x[n], y[n]) for n in x)
    assert "lr_scores" not in _settings(tmp_path / "given")


def test_a_mask_without_scores_falls_back_to_the_fixed_default_and_says_so(tiny_model_dir, tiny_mask, train_file, tmp_path,
                                                                           monkeypatch, capsys):
    bare = tmp_path / "bare-mask"
    shutil.copytree(tiny_mask, bare)
    monkeypatch.setattr("szoq_hub.methods.sparse.trainable.SparseTrainable.lr_scores", lambda self: (None, None))
    args = ["--model", tiny_model_dir, "--mask", bare, "--train", train_file, "--template", "{text} It was", "--labels", "0=bad,1=good",
            "--quant", "none", "--steps", "2", "--batch-size", "4", "--eval-every", "2", "--save-every", "2", "--train-samples", "12",
            "--dev-samples", "4", "--eval-samples", "4", "--no-dev-baseline"]
    code, _, err = cli_in_process(["finetune", *args, "--out", tmp_path / "run"], monkeypatch, capsys)
    assert code == 0, err
    assert _settings(tmp_path / "run")["lr_scores"]["lr"] == DEFAULT_LR
    assert f"lr {DEFAULT_LR:g}: the method's default (the mask stores no Σg² scores to set it from)" in err
    assert [r["lr"] for r in _steps(tmp_path / "run")] == [DEFAULT_LR] * 2


def test_the_cli_prints_the_choice_and_a_resumed_run_recomputes_it(tiny_model_dir, tiny_mask, train_file, tmp_path, monkeypatch, capsys):
    args = ["--model", tiny_model_dir, "--mask", tiny_mask, "--train", train_file, "--template", "{text} It was", "--labels", "0=bad,1=good",
            "--quant", "none", "--steps", "2", "--batch-size", "4", "--eval-every", "2", "--save-every", "1", "--train-samples", "12",
            "--dev-samples", "4", "--eval-samples", "4", "--no-dev-baseline", "--out", tmp_path / "run"]
    code, _, err = cli_in_process(["finetune", *args], monkeypatch, capsys)
    assert code == 0, err
    chosen = _settings(tmp_path / "run")["lr_scores"]
    assert f"lr scores: Σg² {chosen['per_window']:.3g} per calibration window -> lr {chosen['lr']:g}" in err


class _Stop(Exception):
    pass


def test_a_resumed_run_recomputes_the_same_lr_and_steps(tiny_model_dir, tiny_mask, train_file, tmp_path):
    kw = dict(steps=4, save_every=2, eval_every=2)
    finetune(_config(tiny_model_dir, tiny_mask, train_file, tmp_path / "straight", **kw))

    def stop_at_3(event):
        if event["kind"] == "step" and event["step"] == 3:
            raise _Stop  # the checkpoint is at step 2
    with pytest.raises(_Stop):
        finetune(_config(tiny_model_dir, tiny_mask, train_file, tmp_path / "resumed", **kw), progress=stop_at_3)
    events = []
    result = finetune(_config(tiny_model_dir, tiny_mask, train_file, tmp_path / "resumed", **kw), resume=True, progress=events.append)
    chosen = [e for e in events if e["kind"] == "lr_scores"]
    assert result.resumed_from == 2 and len(chosen) == 1 and chosen[0]["resumed"] and chosen[0]["lr"] == _expected_lr(tiny_mask)
    assert _settings(tmp_path / "resumed")["lr_scores"] == _settings(tmp_path / "straight")["lr_scores"]
    assert _steps(tmp_path / "resumed") == _steps(tmp_path / "straight")


def test_a_method_without_scores_given_lr_scores_takes_its_own_fixed_default(tiny_model_dir, train_file, tmp_path):
    from szoq_cli.finetune import finetune_config
    from szoq_hub import DENSE_LR

    config = finetune_config(dict(model=str(tiny_model_dir), dense=True, task=None, train_file=str(train_file), template="{text} It was",
                                  labels="0=bad,1=good", steps=1, batch_size=4, eval_every=1, save_every=1, train_samples=12, dev_samples=4,
                                  eval_samples=4, out=str(tmp_path / "dense"), dev_baseline=False, lr="scores"))
    result = finetune(config)
    assert result.lr == DENSE_LR and _settings(tmp_path / "dense")["lr_scores"] == lr_from_scores(None, None, DENSE_LR).record()
