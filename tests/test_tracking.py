"""`szoq finetune --report-to`: TensorBoard, Trackio and W&B get metrics.jsonl's numbers, offline."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import pytest

from conftest import assert_one_line_error
from szoq_hub.training.finetune import finetune
from szoq_hub.training.tracking import scalars
from conftest import tiny_finetune_config as _config
from conftest import TRAIN_ARGS


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_scalars_keep_the_metrics_jsonl_names():
    step = {"kind": "step", "step": 3, "lr": 1e-4, "seeds": [7, 8], "grads": [0.5, -1.5], "loss_plus": [1.0, 2.0],
            "loss_minus": [3.0, 4.0], "loss": 2.5, "seconds": 0.25}
    assert scalars(step) == {"lr": 1e-4, "grads": -0.5, "loss_plus": 1.5, "loss_minus": 3.5, "loss": 2.5, "seconds": 0.25}
    assert scalars({"kind": "eval", "step": 4, "split": "dev", "accuracy": 0.75}) == {"dev/accuracy": 0.75}
    final = {"kind": "final", "split": "eval", "metric": "f1", "eval_metric": 0.5, "best_dev": 0.75, "best_step": 4}
    assert scalars(final) == {"eval/f1": 0.5}


def test_tensorboard_event_files_hold_the_logged_numbers(tiny_model_dir, tiny_mask, train_jsonl, tmp_path):  # noqa: F811
    pytest.importorskip("tensorboard", reason="pip install 'szoq[tensorboard]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    finetune(_config(tiny_model_dir, tiny_mask, train_jsonl, out, steps=4, eval_every=2, save_every=2, report_to="tensorboard"))
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    rows = _rows(out)
    steps = [r for r in rows if r["kind"] == "step"]
    logged = {(e.step, round(e.value, 5)) for e in acc.Scalars("loss")}
    assert logged == {(r["step"] + 1, round(r["loss"], 5)) for r in steps}
    assert [e.step for e in acc.Scalars("lr")] == [1, 2, 3, 4]
    assert {"grads", "loss_plus", "loss_minus", "seconds"} <= set(acc.Tags()["scalars"])
    metric = next(r for r in rows if r["kind"] == "final")["metric"]
    dev = [(r["step"], round(r[metric], 5)) for r in rows if r["kind"] == "eval"]
    assert [(e.step, round(e.value, 5)) for e in acc.Scalars(f"dev/{metric}")] == dev
    assert [e.step for e in acc.Scalars(f"eval/{metric}")] == [4]
    assert "config/text_summary" in acc.Tags()["tensors"]  # the settings, as text


def test_trackio_writes_its_local_database_offline_and_keeps_stdout_clean(tiny_model_dir, tiny_mask, train_jsonl, tmp_path, run_cli):  # noqa: F811
    pytest.importorskip("trackio", reason="pip install 'szoq[trackio]'")
    out = tmp_path / "tracked-run"
    code, stdout, err = run_cli("finetune", "--model", tiny_model_dir, "--mask", tiny_mask, "--train", train_jsonl, *TRAIN_ARGS,
                                "--quant", "none", "--steps", "3", "--batch-size", "4", "--eval-every", "3", "--train-samples", "12",
                                "--dev-samples", "4", "--eval-samples", "4", "--out", out, "--report-to", "trackio")
    assert code == 0, err
    assert stdout.strip() == str(out)  # trackio's banner went to stderr
    from trackio.utils import TRACKIO_DIR  # $HF_HOME/trackio: a temp dir under the tests

    db = sqlite3.connect(Path(TRACKIO_DIR) / "szoq.db")
    got: dict[int, dict] = {}
    for step, m in db.execute("SELECT step, metrics FROM metrics WHERE run_name = ?", (out.name,)):
        got.setdefault(step, {}).update(json.loads(m))  # step 3 has its step, dev and final rows
    steps = {r["step"] + 1: r for r in _rows(out) if r["kind"] == "step"}
    assert set(steps) <= set(got)
    for step, row in steps.items():
        assert got[step]["loss"] == pytest.approx(row["loss"]) and got[step]["lr"] == pytest.approx(row["lr"])
    metric = _rows(out)[-1]["metric"]
    assert f"dev/{metric}" in got[3] and f"eval/{metric}" in got[3]
    config = json.loads(db.execute("SELECT config FROM configs WHERE run_name = ?", (out.name,)).fetchone()[0])
    assert config["steps"] == 3 and config["report_to"] == "trackio"


def test_wandb_offline_run_folder(tiny_model_dir, tiny_mask, train_jsonl, tmp_path, monkeypatch):  # noqa: F811
    pytest.importorskip("wandb", reason="pip install 'szoq[wandb]'")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    finetune(_config(tiny_model_dir, tiny_mask, train_jsonl, out, steps=2, eval_every=2, save_every=2, report_to="wandb"))
    runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and b"loss_plus" in runs[0].read_bytes()


def test_missing_tracker_package_names_the_extra(run_cli, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)  # importlib then reports it as not installed
    code, _, err = run_cli("finetune", "--report-to", "wandb", "--out", tmp_path / "r")
    assert_one_line_error(code, err, "wandb")
    assert "pip install 'szoq[wandb]'" in err
    code, _, err = run_cli("finetune", "--report-to", "mlflow", "--out", tmp_path / "r")
    assert_one_line_error(code, err, "--report-to")
    assert not (tmp_path / "r").exists()
