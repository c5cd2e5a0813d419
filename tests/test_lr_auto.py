"""`--lr auto`: lr = AUTO_C / median |g| of a probe before the first step; recorded, kept on resume, steps unchanged."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest
import torch

from conftest import assert_one_line_error, cli_in_process
from conftest import tiny_finetune_config as _config
from szoq_hub import FinetuneConfig, ZOConfig
from szoq_hub.core.errors import ConfigError, TrainingError
from szoq_hub.methods.sparse.delta import load_delta
from szoq_hub.runtime.zo import StepRecord, step_seeds
from szoq_hub.runtime.zo_config import AUTO_C, AUTO_PROBES
from szoq_hub.training.finetune import finetune
from szoq_hub.training.lr_probe import lr_from_grads, probe_lr

KW = dict(steps=4, save_every=2, eval_every=2)


class _Stop(Exception):
    pass


def _steps(out: Path) -> list[dict]:
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows if r["kind"] == "step"]


def _auto(out: Path) -> dict:
    return json.loads((out / "finetune_config.json").read_text())["settings"]["lr_auto"]


def _same_values(a: Path, b: Path) -> bool:
    x, y = load_delta(a).tensors, load_delta(b).tensors
    return all(torch.equal(x[n], y[n]) for n in x)


def test_probe_takes_k_negative_steps_and_picks_c_over_the_median():
    seen = []

    def estimate(step: int) -> StepRecord:
        seen.append(step)
        return StepRecord(step, 0.0, [0], [float(-step) * (-1) ** step], [0.0], [0.0])  # |g| = 1..K, signs mixed

    probe = probe_lr(estimate)
    assert seen == [-(k + 1) for k in range(AUTO_PROBES)]
    assert probe.median_grad == statistics.median(range(1, AUTO_PROBES + 1)) and probe.probes == AUTO_PROBES and probe.c == AUTO_C
    assert probe.lr == float(f"{AUTO_C / probe.median_grad:.2g}")
    # the probe's seeds are never a training step's seeds
    assert not {s for k in range(AUTO_PROBES) for s in step_seeds(0, -(k + 1), 1)} & {s for t in range(10_000) for s in step_seeds(0, t, 1)}
    with pytest.raises(TrainingError, match="median"):
        lr_from_grads([0.0, 0.0, 0.0])


@pytest.mark.parametrize("bad", ["fast", "-1", "nan", "inf", -1.0, float("nan")])
def test_bad_lr_values_are_refused(bad):
    with pytest.raises(ConfigError, match="--lr must be a finite number >= 0, auto or scores") as info:
        FinetuneConfig(zo={"lr": bad})
    assert "--lr auto" in info.value.hint
    with pytest.raises(ConfigError):
        ZOConfig(lr=bad)
    assert FinetuneConfig(zo={"lr": "auto"}).zo.lr == "auto" and FinetuneConfig(zo={"lr": "3e-4"}).zo.lr == 3e-4


def test_cli_refuses_a_bad_lr_in_one_line(monkeypatch, capsys):
    code, _, err = cli_in_process(["finetune", "--lr", "fast"], monkeypatch, capsys)
    assert_one_line_error(code, err, "--lr", "'fast'")


def test_auto_records_its_choice_and_equals_the_run_given_that_lr(tiny_model_dir, tiny_mask, train_file, tmp_path, monkeypatch, capsys):
    args = ["--model", tiny_model_dir, "--mask", tiny_mask, "--train", train_file, "--template", "{text} It was", "--labels", "0=bad,1=good",
            "--quant", "none", "--steps", "4", "--batch-size", "4", "--eval-every", "2", "--save-every", "2", "--train-samples", "12",
            "--dev-samples", "4", "--eval-samples", "4", "--no-dev-baseline"]
    code, _, err = cli_in_process(["finetune", *args, "--lr", "auto", "--out", tmp_path / "auto"], monkeypatch, capsys)
    assert code == 0, err
    auto = _auto(tmp_path / "auto")
    assert (auto["probes"], auto["c"], len(auto["grads"])) == (AUTO_PROBES, AUTO_C, AUTO_PROBES)
    assert auto["median_grad"] == statistics.median(auto["grads"]) > 0
    assert auto["lr"] == float(f"{AUTO_C / auto['median_grad']:.2g}")
    line = f"lr auto: median |g| {auto['median_grad']:.3g} over {AUTO_PROBES} probes -> lr {auto['lr']:g}"
    assert line in err and re.search(r"lr auto: median \|g\| \S+ over 8 probes -> lr \S+", err)
    steps = _steps(tmp_path / "auto")
    assert [r["lr"] for r in steps] == [auto["lr"]] * 4  # the schedule's base lr is the choice

    code, _, err = cli_in_process(["finetune", *args, "--lr", f"{auto['lr']:g}", "--out", tmp_path / "given"], monkeypatch, capsys)
    assert code == 0, err
    assert _steps(tmp_path / "given") == steps  # the same steps: seeds, losses, g, lr
    assert _same_values(tmp_path / "auto", tmp_path / "given")
    assert "lr_auto" not in json.loads((tmp_path / "given" / "finetune_config.json").read_text())["settings"]


def test_resume_keeps_the_lr_and_never_probes_again(tiny_model_dir, tiny_mask, train_file, tmp_path, monkeypatch):
    result = finetune(_config(tiny_model_dir, tiny_mask, train_file, tmp_path / "straight", lr="auto", **KW))
    chosen = _auto(tmp_path / "straight")["lr"]
    assert result.lr == chosen

    def stop_at_3(event):
        if event["kind"] == "step" and event["step"] == 3:
            raise _Stop  # the checkpoint is at step 2
    with pytest.raises(_Stop):
        finetune(_config(tiny_model_dir, tiny_mask, train_file, tmp_path / "resumed", lr="auto", **KW), progress=stop_at_3)

    def no_probe(*_a, **_k):
        raise AssertionError("a resumed --lr auto run probed again")
    monkeypatch.setattr("szoq_hub.training.finetune.probe_lr", no_probe)
    events = []
    result = finetune(_config(tiny_model_dir, tiny_mask, train_file, tmp_path / "resumed", lr="auto", **KW), resume=True, progress=events.append)
    assert result.resumed_from == 2 and result.lr == chosen
    assert [e["lr"] for e in events if e["kind"] == "lr_auto"] == [chosen] and next(e for e in events if e["kind"] == "lr_auto")["resumed"]
    assert _auto(tmp_path / "resumed") == _auto(tmp_path / "straight")
    assert _steps(tmp_path / "resumed") == _steps(tmp_path / "straight")
    assert _same_values(tmp_path / "straight", tmp_path / "resumed")
