"""bench/quality.py's bookkeeping: the grid order, resumable cells, the summary and README table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import quality  # noqa: E402


def test_plan_starts_with_the_informative_cells_and_has_unique_keys():
    keys = [c.key for c in quality.plan()]
    assert keys[:3] == ["sst2-zero-shot-s0", "sst2-senszoq-s0", "sst2-random-s0"]
    assert len(keys) == len(set(keys))
    assert {"sst2-senszoq-d0.0001-s0", "sst2-senszoq-d0.01-s0", "boolq-task-fisher-s0", "cb-magnitude-s0"} <= set(keys)
    for method, seeds in (("senszoq", {0, 1, 2}), ("random", {0, 1, 2}), ("magnitude", {0}), ("task-fisher", {0})):
        for task in quality.TASKS:
            got = {c.seed for c in quality.plan() if c.task == task and c.method == method and c.density == quality.DENSITY}
            assert got == seeds, (task, method)


def _cell(task, method, seed, acc, n=500, density=1e-3, steps=300):
    key = quality.Cell(task, method, seed, density, steps).key
    return {"task": task, "method": method, "seed": seed, "density": density, "steps": steps, "key": key, "accuracy": acc, "n": n,
            "lr": 1e-4, "eps": 1e-3, "dev_curve": [[50, acc - 0.1], [100, acc]], "wall_s": 1.0, "git_sha": "0123456789abcdef", "argv": ["finetune"]}


def test_report_summarises_exactly_what_exists(tmp_path, monkeypatch):
    for name, value in (("ROOT", tmp_path), ("RESULTS", tmp_path / "results"), ("CELLS", tmp_path / "results" / "cells"),
                        ("TRANSFER", tmp_path / "results" / "transfer")):
        monkeypatch.setattr(quality, name, value)
    quality.CELLS.mkdir(parents=True)
    quality.TRANSFER.mkdir(parents=True)
    for c in (_cell("sst2", "senszoq", 0, 0.6), _cell("sst2", "senszoq", 1, 0.7), _cell("sst2", "senszoq", 2, 0.8),
              _cell("sst2", "zero-shot", 0, 0.5, density=None, steps=0)):
        (quality.CELLS / f"{c['key']}.json").write_text(json.dumps(c))
    (quality.TRANSFER / "sst2.json").write_text(json.dumps({"task": "sst2", "c4_share": 0.4, "task_share": 0.6, "random_share": 0.001}))
    (tmp_path / "README.md").write_text("intro\n<!-- quality-table -->\nold\n<!-- /quality-table -->\nrest\n")
    quality.report()
    data = json.loads((quality.RESULTS / "quality.json").read_text())
    assert len(data["cells"]) == 4
    (senszoq,) = [r for r in data["summary"] if r["method"] == "senszoq"]
    assert senszoq["mean"] == pytest.approx(0.7) and senszoq["std"] == pytest.approx(0.1) and senszoq["seeds"] == [0, 1, 2]
    assert "sst2-senszoq-s0" not in data["pending"] and "sst2-random-s0" in data["pending"] and "transfer-rte" in data["pending"]
    assert "transfer-sst2" not in data["pending"] and "not_runnable" not in data
    assert {f"{t}-dense-d1-s{s}" for t in quality.TASKS for s in quality.SEEDS} <= set(data["pending"])  # dense cells run like the others
    readme = (tmp_path / "README.md").read_text()
    assert readme.startswith("intro\n") and readme.endswith("rest\n") and "old" not in readme
    assert "| sst2 | senszoq | 0.001 | 300 | 70.0 ± 10.0 | 3 (0,1,2) | 500 |" in readme
    assert "| sst2 | zero-shot | - | 0 | 50.0 | 1 (0) | 500 |" in readme
    assert "| sst2 | 40.0% | 60.0% | 0.10% |" in readme


def test_dense_cell_runs_through_the_cli_and_its_argv_reruns_it(tiny_model_dir, tmp_path, monkeypatch):
    """A dense cell: `szoq finetune --dense` at DENSE_LR, no mask; its argv (plus --out) reruns to the same accuracy."""
    from conftest import SHARED_DATA

    if not (SHARED_DATA / "sst2").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    for name, value in (("WORK", tmp_path / "work"), ("DATA", SHARED_DATA), ("MODEL", str(tiny_model_dir)), ("BATCH", 2), ("EVAL_EVERY", 2),
                        ("SAVE_EVERY", 2), ("TRAIN", 8), ("DEV", 4), ("EVAL", 4)):
        monkeypatch.setattr(quality, name, value)
    record = quality.run_cell(quality.Cell("sst2", "dense", 0, 1.0, steps=4))
    argv = record["argv"]
    assert argv[:4] == ["finetune", "--model", str(tiny_model_dir), "--dense"] and "--mask" not in argv and "--out" not in argv
    assert argv[argv.index("--lr") + 1] == f"{quality.DENSE_LR:g}" and record["lr"] == quality.DENSE_LR and record["mask_argv"] is None
    assert record["n"] == 4 and [s for s, _ in record["dev_curve"]] == [2, 4] and record["nnz"] > 0
    rerun = json.loads(quality._szoq([*argv, "--out", str(tmp_path / "rerun")]))
    assert rerun["eval"] == record["accuracy"] and rerun["best_dev"] == record["best_dev"]
