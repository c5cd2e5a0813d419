"""bench/quality.py's bookkeeping: the grid order, resumable cells, the summary and the study page's table (docs/study.md)."""

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
    assert {"sst2-senszoq-d0.0001-s0", "sst2-senszoq-d0.01-s0", "cb-task-fisher-s0", "cb-magnitude-s0"} <= set(keys)
    assert {c.seed for c in quality.plan() if c.dtype == "bf16" and c.task == "sst2"} == {0, 1, 2}  # bf16 parity: SST-2 senszoq, 3 seeds
    for method in ("senszoq", "random", "magnitude", "task-fisher"):
        for task in quality.PLAN_TASKS:
            got = {c.seed for c in quality.plan() if c.task == task and c.method == method and c.density == quality.DENSITY and not c.dtype}
            assert got == {0, 1, 2}, (task, method)
    # the extra seeds (1, 2) of magnitude and task-fisher come after their seed-0 cells on every task
    first_extra = min(keys.index(f"{t}-{m}-s{s}") for t in quality.PLAN_TASKS for m in ("magnitude", "task-fisher") for s in (1, 2))
    assert max(keys.index(f"{t}-{m}-s0") for t in quality.PLAN_TASKS for m in ("magnitude", "task-fisher")) < first_extra
    # TREC runs from the shared files with a placeholder for the data folder: the recorded argv names no machine path
    trec = [c for c in quality.plan() if c.task == "trec"]
    assert {c.method for c in trec} - {"zo-lora"} == {"zero-shot", "icl", "senszoq", "random", "dense"}
    assert keys.index("trec-senszoq-bf16-s0") < keys.index("cb-icl-s0")
    argv = quality._finetune_argv("trec", ["--mask", "m"], 3e-4, 1e-3, 300, 0, 500, "bf16")
    assert "{data}/trec/train.jsonl" in argv and "--task" not in argv and argv[argv.index("--dtype") + 1] == "bf16"
    assert str(quality.DATA / "trec" / "train.jsonl") in [quality.expand(a) for a in argv]
    # RTE/BoolQ cells that never ran are not planned (nothing learns them at 135M); finished ones keep their records
    assert not any(c.task in ("rte", "boolq") and c.key not in {p.stem for p in quality.CELLS.glob("*.json")} for c in quality.plan())


def test_long_runs_get_their_own_plot_and_a_resumed_run_no_wall_time(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    _isolate(monkeypatch, tmp_path)
    quality.RESULTS.mkdir(parents=True)
    short = _cell("sst2", "senszoq", 0, 0.7)
    long = {**_cell("sst2", "senszoq", 0, 0.68, steps=quality.LONG_STEPS), "best_step": 100, "dev_n": 200, "wall_s": 50.0}
    resumed = {**_cell("sst2", "senszoq", 1, 0.66, steps=quality.LONG_STEPS), "resumed": True, "wall_s": 5.0}
    quality.long_plot([short])  # no long run: no plot
    assert not (quality.RESULTS / "quality_long.png").exists()
    quality.long_plot([short, long, resumed])
    assert (quality.RESULTS / "quality_long.png").stat().st_size > 1000
    (row,) = [r for r in quality._summary([long, resumed]) if r["steps"] == quality.LONG_STEPS]
    assert row["seeds"] == [0, 1] and row["wall_s"] == 50.0  # the resumed run's 5 s is only its last leg


def test_evidence_cells_zo_lora_after_its_sweep_gemma_and_long_runs_have_their_own_keys(tmp_path, monkeypatch):
    """Issue 24's cells: ZO-LoRA is planned once its lr sweep is complete (at the sweep's choice); Gemma cells carry a
    prefix and a `{work}` path to the GGUF; 1000-step cells a `-1000steps` part; every key is unique."""
    _isolate(monkeypatch, tmp_path, LR={k: v for k, v in quality.LR.items() if k != "zo-lora"}, MODEL_LR={quality.GEMMA: {}})
    assert not any(c.method == "zo-lora" for c in quality.plan())
    # a method with its own Gemma sweep waits for it there; then its Gemma cells run at the Gemma choice
    assert not any(c.model == quality.GEMMA and c.method == "senszoq" for c in quality.plan())
    quality.MODEL_LR[quality.GEMMA]["senszoq"] = 1e-4
    assert [c.learning_rate for c in quality.plan() if c.model == quality.GEMMA and c.method == "senszoq"] == [1e-4] * 3
    assert quality.lr_of("senszoq") == quality.LR["senszoq"]
    assert quality.lr_of("dense", quality.GEMMA) == pytest.approx(quality.LR["dense"] * quality.MODEL_LR_SCALE[quality.GEMMA])
    assert not any(c.model == quality.GEMMA and c.method == "random" for c in quality.plan())  # its Gemma sweep is pending
    assert quality.SweepRun("senszoq", 3e-5, quality.GEMMA).key == "sweep-gemma3-senszoq-lr3e-05"
    quality.SWEEP.mkdir(parents=True)
    for lr, dev in zip(quality.SWEEP_LRS["zo-lora"], (0.55, 0.7, 0.7, 0.5, 0.4), strict=True):
        run = quality.SweepRun("zo-lora", lr)
        (quality.SWEEP / f"{run.key}.json").write_text(json.dumps({"method": "zo-lora", "lr": lr, "key": run.key, "dev_final": dev}))
        if lr != quality.SWEEP_LRS["zo-lora"][-1]:
            assert quality._swept_lr("zo-lora") is None  # an incomplete sweep chooses nothing
    assert quality._swept_lr("zo-lora") == quality.SWEEP_LRS["zo-lora"][1]  # a tie goes to the smaller lr
    quality.LR["zo-lora"] = quality._swept_lr("zo-lora")
    keys = [c.key for c in quality.plan()]
    assert len(keys) == len(set(keys))
    assert {"sst2-zo-lora-bf16-s0", "sst2-zo-lora-bf16-s2", "trec-zo-lora-bf16-s0", "gemma3-sst2-zo-lora-bf16-s0", "gemma3-sst2-zero-shot-bf16-s0",
            "gemma3-sst2-senszoq-bf16-s2", "gemma3-sst2-dense-d1-s0", "sst2-senszoq-1000steps-bf16-s1", "sst2-zo-lora-1000steps-bf16-s1",
            "sst2-dense-d1-1000steps-s0"} <= set(keys)
    lora = next(c for c in quality.plan() if c.key == "sst2-zo-lora-bf16-s0")
    assert quality._trained(lora) == (["--lora", str(quality.LORA_RANK)], None) and lora.learning_rate == quality.LR["zo-lora"]
    gemma = next(c for c in quality.plan() if c.key == "gemma3-sst2-senszoq-bf16-s0")
    (quality.WORK / "models").mkdir(parents=True)
    (quality.WORK / quality.GEMMA_FILE).write_bytes(b"gguf")  # present: not assembled again
    assert quality.model_ref(quality.GEMMA) == "{work}/" + quality.GEMMA_FILE
    argv = quality._finetune_argv("sst2", ["--mask", "m"], 3e-4, 1e-3, 300, 0, 500, "bf16", quality.GEMMA)
    assert argv[argv.index("--model") + 1] == "{work}/" + quality.GEMMA_FILE
    # records keep their keys: the model and the steps are part of a record's key
    for cell in (gemma, lora, next(c for c in quality.plan() if c.key == "sst2-zo-lora-1000steps-bf16-s1")):
        rec = {**quality.asdict(cell), "lr": cell.learning_rate, "dtype": cell.dtype}
        assert quality.record_key(rec) == cell.key


def test_old_cells_rerun_pinned_to_the_settings_they_ran_under():
    fp32 = {"argv": ["finetune", "--model", "m", "--task", "sst2", "--json"]}
    assert quality.pinned(fp32) == ["finetune", "--model", "m", "--task", "sst2", "--dtype", "fp32", "--micro-batch-size", "16", "--json"]
    bf16 = {"argv": ["finetune", "--task", "sst2", "--dtype", "bf16", "--micro-batch-size", "4", "--json"], "dtype": "bf16"}
    assert quality.pinned(bf16) == bf16["argv"]
    dense = {"argv": ["finetune", "--dense", "--task", "sst2", "--json"]}
    assert quality.pinned(dense) == ["finetune", "--dense", "--task", "sst2", "--micro-batch-size", "16", "--json"]
    assert quality.pinned({"argv": ["eval", "--task", "cb", "--json"]}) == ["eval", "--task", "cb", "--dtype", "fp32", "--json"]


def _isolate(monkeypatch, tmp_path, **settings) -> None:
    """Point every results and work folder of bench/quality.py into tmp_path, then set `settings`."""
    results = tmp_path / "results"
    folders = {"ROOT": tmp_path, "RESULTS": results, "CELLS": results / "cells", "TRANSFER": results / "transfer",
               "SWEEP": results / "sweep", "VERIFY": results / "verify", "PROBE": results / "probe", "WORK": tmp_path / "work"}
    for name, value in {**folders, **settings}.items():
        monkeypatch.setattr(quality, name, value)


def _tiny_grid(monkeypatch, tmp_path, tiny_model_dir, **settings) -> None:
    """A grid on the tiny Llama with a few rows and steps (skips without the shared data)."""
    from conftest import SHARED_DATA

    if not (SHARED_DATA / "sst2").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    _isolate(monkeypatch, tmp_path, DATA=SHARED_DATA, MODEL=str(tiny_model_dir), BATCH=2, EVAL_EVERY=2, SAVE_EVERY=2, TRAIN=8, DEV=4,
             **settings)


def _cell(task, method, seed, acc, n=500, density=1e-3, steps=300, lr=None):
    key = quality.Cell(task, method, seed, density, steps, lr).key
    return {"task": task, "method": method, "seed": seed, "density": density, "steps": steps, "key": key, "accuracy": acc, "n": n,
            "lr": lr if lr is not None else quality.LR.get(method), "eps": 1e-3, "dev_curve": [[50, acc - 0.1], [100, acc]], "wall_s": 1.0, "git_sha": "0123456789abcdef", "argv": ["finetune"]}


def test_report_summarises_exactly_what_exists(tmp_path, monkeypatch):
    _isolate(monkeypatch, tmp_path, LR={**quality.LR, "senszoq": 1e-4, "random": 1e-3})
    quality.CELLS.mkdir(parents=True)
    quality.TRANSFER.mkdir(parents=True)
    quality.SWEEP.mkdir(parents=True)
    for method, lr, final in (("senszoq", 1e-4, 0.7), ("senszoq", 3e-4, 0.65), ("random", 1e-3, 0.61)):
        key = quality.SweepRun(method, lr).key
        (quality.SWEEP / f"{key}.json").write_text(json.dumps({"method": method, "lr": lr, "key": key, "dev_final": final, "dev_n": 200,
                                                               "dev_curve": [[50, 0.6], [100, final]]}))
    for c in (_cell("sst2", "senszoq", 0, 0.6), _cell("sst2", "senszoq", 1, 0.7), _cell("sst2", "senszoq", 2, 0.8),
              _cell("sst2", "zero-shot", 0, 0.5, density=None, steps=0)):
        (quality.CELLS / f"{c['key']}.json").write_text(json.dumps(c))
    (quality.TRANSFER / "sst2.json").write_text(json.dumps({"task": "sst2", "c4_share": 0.4, "task_share": 0.6, "random_share": 0.001}))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "study.md").write_text("intro\n<!-- quality-table -->\nold\n<!-- /quality-table -->\nrest\n")
    quality.report()
    data = json.loads((quality.RESULTS / "quality.json").read_text())
    assert len(data["cells"]) == 4
    (senszoq,) = [r for r in data["summary"] if r["method"] == "senszoq"]
    assert senszoq["mean"] == pytest.approx(0.7) and senszoq["std"] == pytest.approx(0.1) and senszoq["seeds"] == [0, 1, 2]
    assert "sst2-senszoq-s0" not in data["pending"] and "sst2-random-s0" in data["pending"] and "transfer-rte" in data["pending"]
    assert "transfer-sst2" not in data["pending"] and "not_runnable" not in data
    assert {f"{t}-dense-d1-s{s}" for t in quality.PLAN_TASKS for s in quality.SEEDS} <= set(data["pending"])  # dense cells run like the others
    readme = (tmp_path / "docs" / "study.md").read_text()
    assert readme.startswith("intro\n") and readme.endswith("rest\n") and "old" not in readme
    assert "| smollm2-135m-instruct | sst2 | senszoq | 0.001 | 300 | 0.0001 | fp32 | 70.0 ± 10.0 | 3 (0,1,2) | 500 | - | 1 |" in readme
    assert "| smollm2-135m-instruct | sst2 | zero-shot | - | 0 | - | fp32 | 50.0 | 1 (0) | 500 | - | - |" in readme
    assert "| sst2 | 40.0% | 60.0% | 0.10% |" in readme
    assert data["sweep_choice"] == {"senszoq": 1e-4, "random": 1e-3} and len(data["sweep"]) == 3
    assert "sweep-senszoq-lr0.0003" not in data["pending"] and "sweep-senszoq-lr3e-05" in data["pending"]
    assert "| senszoq | 0.0001 | 50: 60.0, 100: 70.0 | yes | 0.0001 |" in readme
    assert "| senszoq | 0.0003 | 50: 60.0, 100: 65.0 |  | 0.0001 |" in readme
    assert "| random | 0.001 | 50: 60.0, 100: 61.0 | yes | 0.001 |" in readme


def test_a_cell_run_at_another_lr_moves_to_its_lr_key_with_its_run(tmp_path, monkeypatch):
    """After the sweep changes a method's lr, an earlier cell (and its run folder) moves to `-lr<old>`; the plain key is pending again."""
    _isolate(monkeypatch, tmp_path)
    quality.CELLS.mkdir(parents=True)
    monkeypatch.setattr(quality, "LR", {**quality.LR, "senszoq": 1e-4})
    old = _cell("sst2", "senszoq", 0, 0.67)
    assert old["key"] == "sst2-senszoq-s0" and old["lr"] == 1e-4
    (quality.CELLS / "sst2-senszoq-s0.json").write_text(json.dumps(old))
    (quality.WORK / "runs" / "sst2-senszoq-s0").mkdir(parents=True)
    (quality.WORK / "runs" / "sst2-senszoq-s0" / "metrics.jsonl").write_text("{}\n")
    monkeypatch.setattr(quality, "LR", {**quality.LR, "senszoq": 3e-4})  # the sweep chose another lr
    assert quality.Cell("sst2", "senszoq", 0).key == "sst2-senszoq-s0" and quality.Cell("sst2", "senszoq", 0).learning_rate == 3e-4
    quality.report()
    assert not (quality.CELLS / "sst2-senszoq-s0.json").exists() and not (quality.WORK / "runs" / "sst2-senszoq-s0").exists()
    moved = json.loads((quality.CELLS / "sst2-senszoq-lr0.0001-s0.json").read_text())
    assert moved["key"] == "sst2-senszoq-lr0.0001-s0" and moved["accuracy"] == 0.67
    assert (quality.WORK / "runs" / "sst2-senszoq-lr0.0001-s0" / "metrics.jsonl").is_file()
    data = json.loads((quality.RESULTS / "quality.json").read_text())
    assert "sst2-senszoq-s0" in data["pending"] and [r["lr"] for r in data["summary"]] == [1e-4]
    assert "| sst2 | senszoq | 0.001 | 300 | 0.0001 (not the sweep's) | fp32 | 67.0 | 1 (0) | 500 |" in (quality.RESULTS / "quality.md").read_text()


def test_only_runs_a_cell_whose_record_an_lr_change_moved_away(tmp_path, monkeypatch, capsys):
    """`--only KEY` right after LR changes: the old record moves to `-lr<old>` before pending is decided, so KEY runs."""
    _isolate(monkeypatch, tmp_path)
    quality.CELLS.mkdir(parents=True)
    monkeypatch.setattr(quality, "LR", {**quality.LR, "magnitude": 3e-4})
    (quality.CELLS / "sst2-magnitude-s0.json").write_text(json.dumps(_cell("sst2", "magnitude", 0, 0.524)))
    monkeypatch.setattr(quality, "LR", {**quality.LR, "magnitude": 1e-2})  # the sweep chose 1e-2
    ran = []
    monkeypatch.setattr(quality, "run_cell", lambda cell: ran.append(cell.key) or _cell(cell.task, cell.method, cell.seed, 0.6))
    monkeypatch.setattr(sys, "argv", ["quality.py", "--only", "sst2-magnitude-s0"])
    quality.main()
    assert ran == ["sst2-magnitude-s0"]
    assert json.loads((quality.CELLS / "sst2-magnitude-s0.json").read_text())["lr"] == 1e-2
    assert json.loads((quality.CELLS / "sst2-magnitude-lr0.0003-s0.json").read_text())["accuracy"] == 0.524
    quality.main()  # now finished: says so instead of exiting silently
    assert ran == ["sst2-magnitude-s0"] and "nothing pending matches 'sst2-magnitude-s0'" in capsys.readouterr().out


def test_sweep_choice_takes_the_best_final_dev_and_the_smaller_lr_on_a_tie():
    rows = [{"method": "senszoq", "lr": 3e-4, "dev_final": 0.7}, {"method": "senszoq", "lr": 1e-4, "dev_final": 0.7},
            {"method": "senszoq", "lr": 1e-3, "dev_final": 0.5}, {"method": "dense", "lr": 5e-6, "dev_final": 0.62},
            {"method": "dense", "lr": 2e-6, "dev_final": 0.6}]
    assert quality.sweep_choice(rows) == {"senszoq": 1e-4, "dense": 5e-6}
    keys = [r.key for r in quality.sweep_plan()]
    assert len(keys) == len(set(keys)) and "sweep-random-lr0.01" in keys and "sweep-dense-lr2e-06" in keys


def test_dense_cell_runs_through_the_cli_and_its_argv_reruns_it(tiny_model_dir, tmp_path, monkeypatch):
    """A dense cell: `szoq finetune --dense` at LR["dense"], no mask; its argv (plus --out) reruns to the same accuracy."""
    _tiny_grid(monkeypatch, tmp_path, tiny_model_dir, EVAL=4)
    record = quality.run_cell(quality.Cell("sst2", "dense", 0, 1.0, steps=4))
    argv = record["argv"]
    assert argv[:4] == ["finetune", "--model", str(tiny_model_dir), "--dense"] and "--mask" not in argv and "--out" not in argv
    assert argv[argv.index("--lr") + 1] == f"{quality.LR['dense']:g}" and record["lr"] == quality.LR["dense"] and record["mask_argv"] is None
    assert record["n"] == 4 and [s for s, _ in record["dev_curve"]] == [2, 4] and record["nnz"] > 0
    rerun = json.loads(quality._szoq([*argv, "--out", str(tmp_path / "rerun")]))
    assert rerun["eval"] == record["accuracy"] and rerun["best_dev"] == record["best_dev"]


def test_sweep_run_reads_only_dev_and_its_argv_reruns_it(tiny_model_dir, tmp_path, monkeypatch):
    """An lr-sweep run: a random mask built through the CLI, SWEEP_STEPS steps, 1 eval example; rerunning its argv gives its dev curve."""
    _tiny_grid(monkeypatch, tmp_path, tiny_model_dir, SWEEP_STEPS=4)
    record = quality.run_sweep(quality.SweepRun("random", 1e-3))
    argv = record["argv"]
    assert record["key"] == "sweep-random-lr0.001" and argv[argv.index("--lr") + 1] == "0.001" and argv[argv.index("--eval-samples") + 1] == "1"
    assert record["mask_argv"][:3] == ["mask", "build", str(tiny_model_dir)] and "--scorer" in record["mask_argv"]
    assert record["dev_n"] == 4 and [s for s, _ in record["dev_curve"]] == [2, 4] and record["dev_final"] == record["dev_curve"][-1][1]
    rerun = json.loads(quality._szoq([*argv, "--out", str(tmp_path / "rerun")]))
    rows = [json.loads(line) for line in (tmp_path / "rerun" / "metrics.jsonl").read_text().splitlines()]
    assert quality._dev_curve(rows, "accuracy") == record["dev_curve"] and rerun["best_dev"] == max(v for _, v in record["dev_curve"])


def test_verify_reruns_a_recorded_cell_and_reports_a_mismatch(tiny_model_dir, tmp_path, monkeypatch):
    """--verify reruns a cell's argv with today's code: the same accuracy for an honest record, 'NO' for a doctored one."""
    _tiny_grid(monkeypatch, tmp_path, tiny_model_dir, EVAL=6)
    quality.CELLS.mkdir(parents=True)
    mask, _ = quality.mask_for(quality.Cell("sst2", "random", 0))  # the tiny model has no built-in mask for `eval` to default to
    assert mask == "{work}/masks/random-d0.001" and (quality.WORK / "masks" / "random-d0.001" / "mask.safetensors").is_file()
    argv = ["eval", "--model", str(tiny_model_dir), "--mask", mask, "--task", "sst2", "--eval-samples", "6", "--seed", "0", "--json"]
    res = json.loads(quality._szoq(argv))
    record = {**_cell("sst2", "zero-shot", 0, res["value"], n=res["n"], density=None, steps=0), "argv": argv}
    path = quality.CELLS / f"{record['key']}.json"
    path.write_text(json.dumps(record))
    row = quality.verify(record["key"])
    assert row["same"] and row["rerun"] == record["accuracy"] and row["n"] == 6 and row["argv"] == argv
    path.write_text(json.dumps({**record, "accuracy": record["accuracy"] + 0.5}))  # a record the code cannot reproduce
    doctored = quality.verify(record["key"])
    assert not doctored["same"] and doctored["rerun"] == record["accuracy"]
    quality.VERIFY.mkdir(parents=True)
    (quality.VERIFY / f"{record['key']}.json").write_text(json.dumps(doctored))
    quality.report()
    assert f"| {record['key']} | {100 * (record['accuracy'] + 0.5):.1f} | {100 * record['accuracy']:.1f} | NO |" in (quality.RESULTS / "quality.md").read_text()


def test_recorded_paths_are_portable_and_old_cells_verify_on_this_machine(tmp_path, monkeypatch):
    """Cells record `{work}/...` and `{data}/...`; --verify expands them, and reads a cell recorded with
    another machine's absolute paths (as the cells before this change were) the same way."""
    _isolate(monkeypatch, tmp_path, DATA=tmp_path / "data")
    assert quality.portable(str(tmp_path / "work" / "masks" / "random-d0.001")) == "{work}/masks/random-d0.001"
    assert quality.portable(str(tmp_path / "data" / "c4" / "c4.jsonl.gz")) == "{data}/c4/c4.jsonl.gz"
    assert quality.portable("/elsewhere/cache/quality-i9/masks/magnitude-d0.001") == "{work}/masks/magnitude-d0.001"
    assert quality.portable("/home/u/.cache/szoq/quality/calibration/sst2.jsonl") == "{work}/calibration/sst2.jsonl"
    assert quality.portable("/mnt/x/shared/data/c4/c4_validation_2k.jsonl.gz") == "{data}/c4/c4_validation_2k.jsonl.gz"
    assert quality.portable("smollm2-135m-instruct") == "smollm2-135m-instruct" and quality.portable("0.001") == "0.001"
    assert quality.expand("{work}/masks/x") == str(tmp_path / "work" / "masks" / "x")
    assert quality.expand("{data}/sst2") == str(tmp_path / "data" / "sst2")

    ran = []
    monkeypatch.setattr(quality, "_git_sha", lambda: "0" * 40)
    monkeypatch.setattr(quality, "_szoq", lambda args: ran.append([quality.expand(a) for a in args]) or json.dumps({"value": 0.5}))
    quality.CELLS.mkdir(parents=True)
    old = {**_cell("sst2", "zero-shot", 0, 0.5, density=None, steps=0),
           "argv": ["eval", "--mask", "/home/ada/.cache/szoq/quality/masks/random-d0.001", "--task", "sst2", "--json"]}
    (quality.CELLS / f"{old['key']}.json").write_text(json.dumps(old))
    row = quality.verify(old["key"])
    assert row["same"] and row["argv"] == ["eval", "--mask", "{work}/masks/random-d0.001", "--task", "sst2", "--json"]
    # it reruns on this machine's work folder, pinned to the fp32 compute the old cell ran with
    assert ran == [["eval", "--mask", str(tmp_path / "work" / "masks" / "random-d0.001"), "--task", "sst2", "--dtype", "fp32", "--json"]]


def test_no_recorded_cell_names_a_path_of_some_machine():
    for path in [*quality.CELLS.glob("*.json"), *quality.SWEEP.glob("*.json")]:
        record = json.loads(path.read_text())
        for word in [*record.get("argv", []), *(record.get("mask_argv") or [])]:
            assert not word.startswith("/") and quality.portable(word) == word, (path.name, word)


def test_a_finished_run_with_other_settings_is_never_read_back(tmp_path):
    """A run folder left from another lr is refused, not taken as the cell's result."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "finetune_config.json").write_text(json.dumps({"settings": {"lr": 1e-4, "eps": 1e-3, "steps": 300, "seed": 0}}))
    (out / "delta.safetensors").write_bytes(b"")
    (out / "metrics.jsonl").write_text('{"kind": "final"}\n')
    argv = quality._finetune_argv("sst2", ["--mask", "m"], 3e-4, 1e-3, 300, 0, 500)
    with pytest.raises(RuntimeError, match="holds a run with lr 0.0001, not 0.0003"):
        quality._finetune(argv, out)
    rows, cfg, resumed = quality._finetune(quality._finetune_argv("sst2", ["--mask", "m"], 1e-4, 1e-3, 300, 0, 500), out)
    assert rows == [{"kind": "final"}] and cfg["settings"]["lr"] == 1e-4 and resumed


def test_zo_lora_cell_runs_through_the_cli_and_a_probe_puts_it_on_the_pareto_plot(tiny_model_dir, tmp_path, monkeypatch):
    """A zo-lora cell: `szoq finetune --lora 8`, no mask, its peak RSS recorded; a probe reruns a few of its steps for
    memory and s/step; the Pareto points and PNG come from the cell and the probe."""
    _tiny_grid(monkeypatch, tmp_path, tiny_model_dir, EVAL=4, STEPS=4, PROBE_STEPS=3, LR={**quality.LR, "zo-lora": 1e-3})
    cell = quality.Cell("sst2", "zo-lora", 0, None, 4, dtype="bf16")
    record = quality.run_cell(cell)
    argv = record["argv"]
    assert argv[argv.index("--lora") + 1] == "8" and "--mask" not in argv and argv[argv.index("--dtype") + 1] == "bf16"
    assert record["key"] == "sst2-zo-lora-bf16-s0" and record["lr"] == 1e-3 and record["model"] == quality.SMOLLM2
    assert record["peak_rss_mb"] > 50 and record["n"] == 4 and record["nnz"] > 0
    quality.CELLS.mkdir(parents=True)
    (quality.CELLS / f"{record['key']}.json").write_text(json.dumps(record))
    assert quality.probe_keys(quality.load_cells()) == [record["key"]]
    row = quality.probe(record["key"])
    assert row["argv"][row["argv"].index("--steps") + 1] == "3" and row["peak_rss_mb"] > 50 and row["s_per_step"] > 0
    quality.PROBE.mkdir(parents=True)
    (quality.PROBE / f"{record['key']}.json").write_text(json.dumps(row))
    (point,) = quality.pareto_points(quality._summary(quality.load_cells()))
    assert point["rss_mb"] == row["peak_rss_mb"] and point["rss_source"] == "probe"  # every point measured alike where probed
    assert point["train_s"] == pytest.approx(4 * row["s_per_step"]) and point["mean"] == record["accuracy"]
    quality.RESULTS.mkdir(exist_ok=True)
    quality.pareto(quality._summary(quality.load_cells()), quality.load_cells())
    assert (quality.RESULTS / "quality_pareto.png").stat().st_size > 1000


def test_fo_lora_reference_trains_peft_lora_on_the_nf4_base_within_its_budget(tiny_model_dir):
    """bench_fo_lora: PEFT LoRA over transformers' bitsandbytes nf4 model, autograd + AdamW, stops at --max-steps."""
    from conftest import SHARED_DATA

    pytest.importorskip("peft")
    if not (SHARED_DATA / "sst2").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    import bench_fo_lora

    row = bench_fo_lora.run(0, 1e-2, budget_s=600.0, max_steps=3, data_dir=SHARED_DATA, model_ref=str(tiny_model_dir), sampling=(16, 0, 8))
    assert row["steps"] == 3 and row["trainable"] > 0 and row["n"] == 8 and 0.0 <= row["accuracy"] <= 1.0
    assert row["peak_rss_mb"] > 50 and row["s_per_step"] > 0 and row["quant"] == "nf4" and row["model"] == str(tiny_model_dir)
    assert row["loss_first10"] == pytest.approx(row["loss_first10"]) and row["loss_last10"] < 1e3  # finite losses
