"""The quality study's bookkeeping (bench/quality_study, run as bench/quality.py): the grid order, resumable cells,
the summary and README table."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from quality_study import main, plan, plots, probes, records, report, run, settings, szoq_process, verify  # noqa: E402


def test_plan_starts_with_the_informative_cells_and_has_unique_keys():
    keys = [c.key for c in plan.plan()]
    assert keys[:3] == ["sst2-zero-shot-s0", "sst2-senszoq-s0", "sst2-random-s0"]
    assert len(keys) == len(set(keys))
    assert {"sst2-senszoq-d0.0001-s0", "sst2-senszoq-d0.01-s0", "cb-task-fisher-s0", "cb-magnitude-s0"} <= set(keys)
    assert {c.seed for c in plan.plan() if c.dtype == "bf16" and c.task == "sst2"} == {0, 1, 2}  # bf16 parity: SST-2 senszoq, 3 seeds
    for method in ("senszoq", "random", "magnitude", "task-fisher"):
        for task in settings.PLAN_TASKS:
            got = {c.seed for c in plan.plan() if c.task == task and c.method == method and c.density == settings.DENSITY and not c.dtype}
            assert got == {0, 1, 2}, (task, method)
    # the extra seeds (1, 2) of magnitude and task-fisher come after their seed-0 cells on every task
    first_extra = min(keys.index(f"{t}-{m}-s{s}") for t in settings.PLAN_TASKS for m in ("magnitude", "task-fisher") for s in (1, 2))
    assert max(keys.index(f"{t}-{m}-s0") for t in settings.PLAN_TASKS for m in ("magnitude", "task-fisher")) < first_extra
    # TREC runs from the shared files with a placeholder for the data folder: the recorded argv names no machine path
    trec = [c for c in plan.plan() if c.task == "trec"]
    assert {c.method for c in trec} - {"zo-lora", "defaults", *settings.VARIANTS} == {"zero-shot", "icl", "senszoq", "random", "dense"}
    assert keys.index("trec-senszoq-bf16-s0") < keys.index("cb-icl-s0")
    argv = run.finetune_argv("trec", ["--mask", "m"], 3e-4, 1e-3, 300, 0, 500, "bf16")
    assert "{data}/trec/train.jsonl" in argv and "--task" not in argv and argv[argv.index("--dtype") + 1] == "bf16"
    assert str(settings.DATA / "trec" / "train.jsonl") in [szoq_process.expand(a) for a in argv]
    # RTE/BoolQ cells that never ran are not planned (nothing learns them at 135M); finished ones keep their records
    assert not any(c.task in ("rte", "boolq") and c.key not in {p.stem for p in settings.CELLS.glob("*.json")} for c in plan.plan())


def test_long_runs_get_their_own_plot_and_a_resumed_run_no_wall_time(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    _isolate(monkeypatch, tmp_path)
    settings.RESULTS.mkdir(parents=True)
    short = _cell("sst2", "senszoq", 0, 0.7)
    long = {**_cell("sst2", "senszoq", 0, 0.68, steps=settings.LONG_STEPS), "best_step": 100, "dev_n": 200, "wall_s": 50.0}
    resumed = {**_cell("sst2", "senszoq", 1, 0.66, steps=settings.LONG_STEPS), "resumed": True, "wall_s": 5.0}
    plots.plot_long([short])  # no long run: no plot
    assert not (settings.RESULTS / "quality_long.png").exists()
    plots.plot_long([short, long, resumed])
    assert (settings.RESULTS / "quality_long.png").stat().st_size > 1000
    (row,) = [r for r in report.summary([long, resumed]) if r["steps"] == settings.LONG_STEPS]
    assert row["seeds"] == [0, 1] and row["wall_s"] == 50.0  # the resumed run's 5 s is only its last leg


def test_evidence_cells_zo_lora_after_its_sweep_gemma_and_long_runs_have_their_own_keys(tmp_path, monkeypatch):
    """Issue 24's cells: ZO-LoRA is planned once its lr sweep is complete (at the sweep's choice); Gemma cells carry a
    prefix and a `{work}` path to the GGUF; 1000-step cells a `-1000steps` part; every key is unique."""
    _isolate(monkeypatch, tmp_path, LR={k: v for k, v in settings.LR.items() if k != "zo-lora"}, MODEL_LR={settings.GEMMA: {}})
    assert not any(c.method == "zo-lora" for c in plan.plan())
    # a method with its own Gemma sweep waits for it there; then its Gemma cells run at the Gemma choice
    assert not any(c.model == settings.GEMMA and c.method == "senszoq" for c in plan.plan())
    settings.MODEL_LR[settings.GEMMA]["senszoq"] = 1e-4
    assert [c.learning_rate for c in plan.plan() if c.model == settings.GEMMA and c.method == "senszoq"] == [1e-4] * 3
    assert plan.lr_of("senszoq") == settings.LR["senszoq"]
    assert plan.lr_of("dense", settings.GEMMA) == pytest.approx(settings.LR["dense"] * settings.MODEL_LR_SCALE[settings.GEMMA])
    assert not any(c.model == settings.GEMMA and c.method == "random" for c in plan.plan())  # its Gemma sweep is pending
    assert plan.SweepRun("senszoq", 3e-5, settings.GEMMA).key == "sweep-gemma3-senszoq-lr3e-05"
    settings.SWEEP.mkdir(parents=True)
    for lr, dev in zip(settings.SWEEP_LRS["zo-lora"], (0.55, 0.7, 0.7, 0.5, 0.4), strict=True):
        sweep_run = plan.SweepRun("zo-lora", lr)
        (settings.SWEEP / f"{sweep_run.key}.json").write_text(json.dumps({"method": "zo-lora", "lr": lr, "key": sweep_run.key, "dev_final": dev}))
        if lr != settings.SWEEP_LRS["zo-lora"][-1]:
            assert plan.swept_lr("zo-lora") is None  # an incomplete sweep chooses nothing
    assert plan.swept_lr("zo-lora") == settings.SWEEP_LRS["zo-lora"][1]  # a tie goes to the smaller lr
    settings.LR["zo-lora"] = plan.swept_lr("zo-lora")
    keys = [c.key for c in plan.plan()]
    assert len(keys) == len(set(keys))
    assert {"sst2-zo-lora-bf16-s0", "sst2-zo-lora-bf16-s2", "trec-zo-lora-bf16-s0", "gemma3-sst2-zo-lora-bf16-s0", "gemma3-sst2-zero-shot-bf16-s0",
            "gemma3-sst2-senszoq-bf16-s2", "gemma3-sst2-dense-d1-s0", "sst2-senszoq-1000steps-bf16-s1", "sst2-zo-lora-1000steps-bf16-s1",
            "sst2-dense-d1-1000steps-s0"} <= set(keys)
    lora = next(c for c in plan.plan() if c.key == "sst2-zo-lora-bf16-s0")
    assert run.trained_args(lora) == (["--lora", str(settings.LORA_RANK)], None) and lora.learning_rate == settings.LR["zo-lora"]
    gemma = next(c for c in plan.plan() if c.key == "gemma3-sst2-senszoq-bf16-s0")
    (settings.WORK / "models").mkdir(parents=True)
    (settings.WORK / settings.GEMMA_FILE).write_bytes(b"gguf")  # present: not assembled again
    assert run.model_ref(settings.GEMMA) == "{work}/" + settings.GEMMA_FILE
    argv = run.finetune_argv("sst2", ["--mask", "m"], 3e-4, 1e-3, 300, 0, 500, "bf16", settings.GEMMA)
    assert argv[argv.index("--model") + 1] == "{work}/" + settings.GEMMA_FILE
    # records keep their keys: the model and the steps are part of a record's key
    for cell in (gemma, lora, next(c for c in plan.plan() if c.key == "sst2-zo-lora-1000steps-bf16-s1")):
        rec = {**dataclasses.asdict(cell), "lr": cell.learning_rate, "dtype": cell.dtype}
        assert plan.record_key(rec) == cell.key


def test_bench_quality_py_keeps_its_command_line():
    """README and the recorded cells quote `python bench/quality.py ...`: the entry point keeps every flag."""
    script = Path(__file__).resolve().parents[1] / "bench" / "quality.py"
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, check=True).stdout
    assert "Quality study: does the C4 sensitivity mask (SensZOQ) beat the alternatives on real tasks?" in " ".join(out.split())
    for flag in ("--report", "--only", "--max-cells", "--sweep", "--verify", "--transfer", "--probe"):
        assert flag in out, flag

def test_old_cells_rerun_pinned_to_the_settings_they_ran_under():
    fp32 = {"argv": ["finetune", "--model", "m", "--task", "sst2", "--json"]}
    assert verify.pinned(fp32) == ["finetune", "--model", "m", "--task", "sst2", "--dtype", "fp32", "--micro-batch-size", "16",
                                   "--no-dev-baseline", "--json"]
    bf16 = {"argv": ["finetune", "--task", "sst2", "--dtype", "bf16", "--micro-batch-size", "4", "--no-dev-baseline", "--json"], "dtype": "bf16"}
    assert verify.pinned(bf16) == bf16["argv"]
    dense = {"argv": ["finetune", "--dense", "--task", "sst2", "--json"]}  # recorded before the step-0 dev baseline: it had none
    assert verify.pinned(dense) == ["finetune", "--dense", "--task", "sst2", "--micro-batch-size", "16", "--no-dev-baseline", "--json"]
    assert verify.pinned({"argv": ["eval", "--task", "cb", "--json"]}) == ["eval", "--task", "cb", "--dtype", "fp32", "--json"]


def _isolate(monkeypatch, tmp_path, **overrides) -> None:
    """Point every results and work folder of the quality study into tmp_path, then set `overrides` (names in settings)."""
    results = tmp_path / "results"
    folders = {"ROOT": tmp_path, "RESULTS": results, "CELLS": results / "cells", "TRANSFER": results / "transfer",
               "SWEEP": results / "sweep", "VERIFY": results / "verify", "PROBE": results / "probe", "MASKS": results / "masks", "WORK": tmp_path / "work"}
    for name, value in {**folders, **overrides}.items():
        monkeypatch.setattr(settings, name, value)


def _tiny_grid(monkeypatch, tmp_path, tiny_model_dir, **overrides) -> None:
    """A grid on the tiny Llama with a few rows and steps (skips without the shared data)."""
    from conftest import SHARED_DATA

    if not (SHARED_DATA / "sst2").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    _isolate(monkeypatch, tmp_path, DATA=SHARED_DATA, MODEL=str(tiny_model_dir), BATCH=2, EVAL_EVERY=2, SAVE_EVERY=2, TRAIN=8, DEV=4,
             **overrides)


def _cell(task, method, seed, acc, n=500, density=1e-3, steps=300, lr=None):
    key = plan.Cell(task, method, seed, density, steps, lr).key
    return {"task": task, "method": method, "seed": seed, "density": density, "steps": steps, "key": key, "accuracy": acc, "n": n,
            "lr": lr if lr is not None else settings.LR.get(method), "eps": 1e-3, "dev_curve": [[50, acc - 0.1], [100, acc]], "wall_s": 1.0, "git_sha": "0123456789abcdef", "argv": ["finetune"]}


def test_report_summarises_exactly_what_exists(tmp_path, monkeypatch):
    _isolate(monkeypatch, tmp_path, LR={**settings.LR, "senszoq": 1e-4, "random": 1e-3})
    settings.CELLS.mkdir(parents=True)
    settings.TRANSFER.mkdir(parents=True)
    settings.SWEEP.mkdir(parents=True)
    for method, lr, final in (("senszoq", 1e-4, 0.7), ("senszoq", 3e-4, 0.65), ("random", 1e-3, 0.61)):
        key = plan.SweepRun(method, lr).key
        (settings.SWEEP / f"{key}.json").write_text(json.dumps({"method": method, "lr": lr, "key": key, "dev_final": final, "dev_n": 200,
                                                               "dev_curve": [[50, 0.6], [100, final]]}))
    for c in (_cell("sst2", "senszoq", 0, 0.6), _cell("sst2", "senszoq", 1, 0.7), _cell("sst2", "senszoq", 2, 0.8),
              _cell("sst2", "zero-shot", 0, 0.5, density=None, steps=0)):
        (settings.CELLS / f"{c['key']}.json").write_text(json.dumps(c))
    (settings.TRANSFER / "sst2.json").write_text(json.dumps({"task": "sst2", "c4_share": 0.4, "task_share": 0.6, "random_share": 0.001}))
    (tmp_path / "README.md").write_text("intro\n<!-- quality-table -->\nold\n<!-- /quality-table -->\nrest\n")
    (tmp_path / "docs").mkdir()  # the study page, where the docs split moves the table
    (tmp_path / "docs" / "study.md").write_text("page\n<!-- quality-table -->\nold\n<!-- /quality-table -->\n")
    report.report()
    data = json.loads((settings.RESULTS / "quality.json").read_text())
    assert len(data["cells"]) == 4
    (senszoq,) = [r for r in data["summary"] if r["method"] == "senszoq"]
    assert senszoq["mean"] == pytest.approx(0.7) and senszoq["std"] == pytest.approx(0.1) and senszoq["seeds"] == [0, 1, 2]
    assert "sst2-senszoq-s0" not in data["pending"] and "sst2-random-s0" in data["pending"] and "transfer-rte" in data["pending"]
    assert "transfer-sst2" not in data["pending"] and "not_runnable" not in data
    assert {f"{t}-dense-d1-s{s}" for t in settings.PLAN_TASKS for s in settings.SEEDS} <= set(data["pending"])  # dense cells run like the others
    readme = (tmp_path / "README.md").read_text()
    assert readme.startswith("intro\n") and readme.endswith("rest\n") and "old" not in readme
    assert "| smollm2-135m-instruct | sst2 | senszoq | 0.001 | 300 | 0.0001 | fp32 | 70.0 ± 10.0 | 3 (0,1,2) | 500 | - | 1 |" in readme
    assert "| smollm2-135m-instruct | sst2 | zero-shot | - | 0 | - | fp32 | 50.0 | 1 (0) | 500 | - | - |" in readme
    assert "| sst2 | 40.0% | 60.0% | 0.10% |" in readme
    assert data["sweep_choice"] == {"senszoq": 1e-4, "random": 1e-3} and len(data["sweep"]) == 3
    assert "sweep-senszoq-lr0.0003" not in data["pending"] and "sweep-senszoq-lr3e-05" in data["pending"]
    assert "| senszoq | 0.0001 | 50: 60.0, 100: 70.0 | yes | 0.0001 |" in readme
    assert "| senszoq | 0.0003 | 50: 60.0, 100: 65.0 |  | 0.0001 |" in readme
    assert "| random | 0.001 | 50: 60.0, 100: 61.0 | yes | 0.001 |" in readme
    study = (tmp_path / "docs" / "study.md").read_text()
    table = lambda page: page.split("<!-- quality-table -->")[1].split("<!-- /quality-table -->")[0]  # noqa: E731
    assert study.startswith("page\n") and "old" not in study
    assert table(study) == table(readme).replace("](", "](../")  # the same table, its images linked from docs/


def test_a_cell_run_at_another_lr_moves_to_its_lr_key_with_its_run(tmp_path, monkeypatch):
    """After the sweep changes a method's lr, an earlier cell (and its run folder) moves to `-lr<old>`; the plain key is pending again."""
    _isolate(monkeypatch, tmp_path)
    settings.CELLS.mkdir(parents=True)
    monkeypatch.setattr(settings, "LR", {**settings.LR, "senszoq": 1e-4})
    old = _cell("sst2", "senszoq", 0, 0.67)
    assert old["key"] == "sst2-senszoq-s0" and old["lr"] == 1e-4
    (settings.CELLS / "sst2-senszoq-s0.json").write_text(json.dumps(old))
    (settings.WORK / "runs" / "sst2-senszoq-s0").mkdir(parents=True)
    (settings.WORK / "runs" / "sst2-senszoq-s0" / "metrics.jsonl").write_text("{}\n")
    monkeypatch.setattr(settings, "LR", {**settings.LR, "senszoq": 3e-4})  # the sweep chose another lr
    assert plan.Cell("sst2", "senszoq", 0).key == "sst2-senszoq-s0" and plan.Cell("sst2", "senszoq", 0).learning_rate == 3e-4
    report.report()
    assert not (settings.CELLS / "sst2-senszoq-s0.json").exists() and not (settings.WORK / "runs" / "sst2-senszoq-s0").exists()
    moved = json.loads((settings.CELLS / "sst2-senszoq-lr0.0001-s0.json").read_text())
    assert moved["key"] == "sst2-senszoq-lr0.0001-s0" and moved["accuracy"] == 0.67
    assert (settings.WORK / "runs" / "sst2-senszoq-lr0.0001-s0" / "metrics.jsonl").is_file()
    data = json.loads((settings.RESULTS / "quality.json").read_text())
    assert "sst2-senszoq-s0" in data["pending"] and [r["lr"] for r in data["summary"]] == [1e-4]
    assert "| sst2 | senszoq | 0.001 | 300 | 0.0001 (not the sweep's) | fp32 | 67.0 | 1 (0) | 500 |" in (settings.RESULTS / "quality.md").read_text()


def test_a_re_key_leaves_the_run_folder_a_lane_trains_the_new_lr_in(tmp_path, monkeypatch):
    """A lane may already train a cell's new configuration in the folder of the old key (same name) when another process
    re-keys the old record: the record moves, the folder (its config records the new lr) stays where the lane writes."""
    _isolate(monkeypatch, tmp_path)
    settings.CELLS.mkdir(parents=True)
    monkeypatch.setattr(settings, "LR", {**settings.LR, "senszoq": 1e-4})
    (settings.CELLS / "sst2-senszoq-s1.json").write_text(json.dumps(_cell("sst2", "senszoq", 1, 0.66)))
    monkeypatch.setattr(settings, "LR", {**settings.LR, "senszoq": 3e-4})
    running = settings.WORK / "runs" / "sst2-senszoq-s1"
    running.mkdir(parents=True)
    (running / "finetune_config.json").write_text(json.dumps({"settings": {"lr": 3e-4, "seed": 1}}))
    assert records.trains_another_lr(running, 1e-4) and not records.trains_another_lr(running, 3e-4)
    assert [c["key"] for c in records.load_cells()] == ["sst2-senszoq-lr0.0001-s1"]
    assert (running / "finetune_config.json").is_file() and not (settings.WORK / "runs" / "sst2-senszoq-lr0.0001-s1").exists()


def test_a_cell_of_a_model_this_code_does_not_know_is_left_out_with_a_note(tmp_path, monkeypatch, capsys):
    """A lane running older code meets a record that newer code wrote for a newly added model: its report leaves that
    record out (and says so) instead of stopping on it; the file stays for the code that knows the model."""
    _isolate(monkeypatch, tmp_path)
    settings.CELLS.mkdir(parents=True)
    (settings.CELLS / "sst2-senszoq-s0.json").write_text(json.dumps(_cell("sst2", "senszoq", 0, 0.66)))
    newer = {**_cell("sst2", "senszoq", 0, 0.8), "key": "qwen7-sst2-senszoq-bf16-s0", "model": "qwen2.5-7b"}
    (settings.CELLS / "qwen7-sst2-senszoq-bf16-s0.json").write_text(json.dumps(newer))
    assert [c["key"] for c in records.load_cells()] == ["sst2-senszoq-s0"]
    assert "qwen7-sst2-senszoq-bf16-s0.json is a cell of qwen2.5-7b" in capsys.readouterr().err
    assert (settings.CELLS / "qwen7-sst2-senszoq-bf16-s0.json").is_file()


def test_only_runs_a_cell_whose_record_an_lr_change_moved_away(tmp_path, monkeypatch, capsys):
    """`--only KEY` right after LR changes: the old record moves to `-lr<old>` before pending is decided, so KEY runs."""
    _isolate(monkeypatch, tmp_path)
    settings.CELLS.mkdir(parents=True)
    monkeypatch.setattr(settings, "LR", {**settings.LR, "magnitude": 3e-4})
    (settings.CELLS / "sst2-magnitude-s0.json").write_text(json.dumps(_cell("sst2", "magnitude", 0, 0.524)))
    monkeypatch.setattr(settings, "LR", {**settings.LR, "magnitude": 1e-2})  # the sweep chose 1e-2
    ran = []
    monkeypatch.setattr(run, "run_cell", lambda cell: ran.append(cell.key) or _cell(cell.task, cell.method, cell.seed, 0.6))
    monkeypatch.setattr(sys, "argv", ["quality.py", "--only", "sst2-magnitude-s0"])
    main.main()
    assert ran == ["sst2-magnitude-s0"]
    assert json.loads((settings.CELLS / "sst2-magnitude-s0.json").read_text())["lr"] == 1e-2
    assert json.loads((settings.CELLS / "sst2-magnitude-lr0.0003-s0.json").read_text())["accuracy"] == 0.524
    main.main()  # now finished: says so instead of exiting silently
    assert ran == ["sst2-magnitude-s0"] and "nothing pending matches 'sst2-magnitude-s0'" in capsys.readouterr().out


def test_sweep_choice_takes_the_best_final_dev_and_the_smaller_lr_on_a_tie():
    rows = [{"method": "senszoq", "lr": 3e-4, "dev_final": 0.7}, {"method": "senszoq", "lr": 1e-4, "dev_final": 0.7},
            {"method": "senszoq", "lr": 1e-3, "dev_final": 0.5}, {"method": "dense", "lr": 5e-6, "dev_final": 0.62},
            {"method": "dense", "lr": 2e-6, "dev_final": 0.6}]
    assert plan.sweep_choice(rows) == {"senszoq": 1e-4, "dense": 5e-6}
    keys = [r.key for r in plan.sweep_plan()]
    assert len(keys) == len(set(keys)) and "sweep-random-lr0.01" in keys and "sweep-dense-lr2e-06" in keys


def test_dense_cell_runs_through_the_cli_and_its_argv_reruns_it(tiny_model_dir, tmp_path, monkeypatch):
    """A dense cell: `szoq finetune --dense` at LR["dense"], no mask; its argv (plus --out) reruns to the same accuracy."""
    _tiny_grid(monkeypatch, tmp_path, tiny_model_dir, EVAL=4)
    record = run.run_cell(plan.Cell("sst2", "dense", 0, 1.0, steps=4))
    argv = record["argv"]
    assert argv[:4] == ["finetune", "--model", str(tiny_model_dir), "--dense"] and "--mask" not in argv and "--out" not in argv
    assert argv[argv.index("--lr") + 1] == f"{settings.LR['dense']:g}" and record["lr"] == settings.LR["dense"] and record["mask_argv"] is None
    assert record["n"] == 4 and [s for s, _ in record["dev_curve"]] == [2, 4] and record["nnz"] > 0
    rerun = json.loads(szoq_process.szoq([*argv, "--out", str(tmp_path / "rerun")]))
    assert rerun["eval"] == record["accuracy"] and rerun["best_dev"] == record["best_dev"]


def test_sweep_run_reads_only_dev_and_its_argv_reruns_it(tiny_model_dir, tmp_path, monkeypatch):
    """An lr-sweep run: a random mask built through the CLI, SWEEP_STEPS steps, 1 eval example; rerunning its argv gives its dev curve."""
    _tiny_grid(monkeypatch, tmp_path, tiny_model_dir, SWEEP_STEPS=4)
    record = run.run_sweep(plan.SweepRun("random", 1e-3))
    argv = record["argv"]
    assert record["key"] == "sweep-random-lr0.001" and argv[argv.index("--lr") + 1] == "0.001" and argv[argv.index("--eval-samples") + 1] == "1"
    assert record["mask_argv"][:3] == ["mask", "build", str(tiny_model_dir)] and "--scorer" in record["mask_argv"]
    assert record["dev_n"] == 4 and [s for s, _ in record["dev_curve"]] == [2, 4] and record["dev_final"] == record["dev_curve"][-1][1]
    rerun = json.loads(szoq_process.szoq([*argv, "--out", str(tmp_path / "rerun")]))
    rows = [json.loads(line) for line in (tmp_path / "rerun" / "metrics.jsonl").read_text().splitlines()]
    assert run.dev_curve(rows, "accuracy") == record["dev_curve"] and rerun["best_dev"] == max(v for _, v in record["dev_curve"])


def test_verify_reruns_a_recorded_cell_and_reports_a_mismatch(tiny_model_dir, tmp_path, monkeypatch):
    """--verify reruns a cell's argv with today's code: the same accuracy for an honest record, 'NO' for a doctored one."""
    _tiny_grid(monkeypatch, tmp_path, tiny_model_dir, EVAL=6)
    settings.CELLS.mkdir(parents=True)
    mask, _ = run.mask_for(plan.Cell("sst2", "random", 0))  # the tiny model has no built-in mask for `eval` to default to
    assert mask == "{work}/masks/random-d0.001" and (settings.WORK / "masks" / "random-d0.001" / "mask.safetensors").is_file()
    argv = ["eval", "--model", str(tiny_model_dir), "--mask", mask, "--task", "sst2", "--eval-samples", "6", "--seed", "0", "--json"]
    res = json.loads(szoq_process.szoq(argv))
    record = {**_cell("sst2", "zero-shot", 0, res["value"], n=res["n"], density=None, steps=0), "argv": argv}
    path = settings.CELLS / f"{record['key']}.json"
    path.write_text(json.dumps(record))
    row = verify.verify(record["key"])
    assert row["same"] and row["rerun"] == record["accuracy"] and row["n"] == 6 and row["argv"] == argv
    path.write_text(json.dumps({**record, "accuracy": record["accuracy"] + 0.5}))  # a record the code cannot reproduce
    doctored = verify.verify(record["key"])
    assert not doctored["same"] and doctored["rerun"] == record["accuracy"]
    settings.VERIFY.mkdir(parents=True)
    (settings.VERIFY / f"{record['key']}.json").write_text(json.dumps(doctored))
    report.report()
    assert f"| {record['key']} | {100 * (record['accuracy'] + 0.5):.1f} | {100 * record['accuracy']:.1f} | NO |" in (settings.RESULTS / "quality.md").read_text()


def test_recorded_paths_are_portable_and_old_cells_verify_on_this_machine(tmp_path, monkeypatch):
    """Cells record `{work}/...` and `{data}/...`; --verify expands them, and reads a cell recorded with
    another machine's absolute paths (as the cells before this change were) the same way."""
    _isolate(monkeypatch, tmp_path, DATA=tmp_path / "data")
    assert szoq_process.portable(str(tmp_path / "work" / "masks" / "random-d0.001")) == "{work}/masks/random-d0.001"
    assert szoq_process.portable(str(tmp_path / "data" / "c4" / "c4.jsonl.gz")) == "{data}/c4/c4.jsonl.gz"
    assert szoq_process.portable("/elsewhere/cache/quality-i9/masks/magnitude-d0.001") == "{work}/masks/magnitude-d0.001"
    assert szoq_process.portable("/home/u/.cache/szoq/quality/calibration/sst2.jsonl") == "{work}/calibration/sst2.jsonl"
    assert szoq_process.portable("/mnt/x/shared/data/c4/c4_validation_2k.jsonl.gz") == "{data}/c4/c4_validation_2k.jsonl.gz"
    assert szoq_process.portable("smollm2-135m-instruct") == "smollm2-135m-instruct" and szoq_process.portable("0.001") == "0.001"
    assert szoq_process.expand("{work}/masks/x") == str(tmp_path / "work" / "masks" / "x")
    assert szoq_process.expand("{data}/sst2") == str(tmp_path / "data" / "sst2")

    ran = []
    monkeypatch.setattr(records, "git_sha", lambda: "0" * 40)
    monkeypatch.setattr(szoq_process, "szoq", lambda args: ran.append([szoq_process.expand(a) for a in args]) or json.dumps({"value": 0.5}))
    settings.CELLS.mkdir(parents=True)
    old = {**_cell("sst2", "zero-shot", 0, 0.5, density=None, steps=0),
           "argv": ["eval", "--mask", "/home/ada/.cache/szoq/quality/masks/random-d0.001", "--task", "sst2", "--json"]}
    (settings.CELLS / f"{old['key']}.json").write_text(json.dumps(old))
    row = verify.verify(old["key"])
    assert row["same"] and row["argv"] == ["eval", "--mask", "{work}/masks/random-d0.001", "--task", "sst2", "--json"]
    # it reruns on this machine's work folder, pinned to the fp32 compute the old cell ran with
    assert ran == [["eval", "--mask", str(tmp_path / "work" / "masks" / "random-d0.001"), "--task", "sst2", "--dtype", "fp32", "--json"]]


def test_no_recorded_cell_names_a_path_of_some_machine():
    for path in [*settings.CELLS.glob("*.json"), *settings.SWEEP.glob("*.json")]:
        record = json.loads(path.read_text())
        for word in [*record.get("argv", []), *(record.get("mask_argv") or [])]:
            assert not word.startswith("/") and szoq_process.portable(word) == word, (path.name, word)


def test_a_finished_run_with_other_settings_is_never_read_back(tmp_path):
    """A run folder left from another lr is refused, not taken as the cell's result."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "finetune_config.json").write_text(json.dumps({"settings": {"lr": 1e-4, "eps": 1e-3, "steps": 300, "seed": 0}}))
    (out / "delta.safetensors").write_bytes(b"")
    (out / "metrics.jsonl").write_text('{"kind": "final"}\n')
    argv = run.finetune_argv("sst2", ["--mask", "m"], 3e-4, 1e-3, 300, 0, 500)
    with pytest.raises(RuntimeError, match="holds a run with lr 0.0001, not 0.0003"):
        run.run_finetune(argv, out)
    rows, cfg, resumed = run.run_finetune(run.finetune_argv("sst2", ["--mask", "m"], 1e-4, 1e-3, 300, 0, 500), out)
    assert rows == [{"kind": "final"}] and cfg["settings"]["lr"] == 1e-4 and resumed


def test_zo_lora_cell_runs_through_the_cli_and_a_probe_puts_it_on_the_pareto_plot(tiny_model_dir, tmp_path, monkeypatch):
    """A zo-lora cell: `szoq finetune --lora 8`, no mask, its peak RSS recorded; a probe reruns a few of its steps for
    memory and s/step; the Pareto points and PNG come from the cell and the probe."""
    _tiny_grid(monkeypatch, tmp_path, tiny_model_dir, EVAL=4, STEPS=4, PROBE_STEPS=3, LR={**settings.LR, "zo-lora": 1e-3})
    cell = plan.Cell("sst2", "zo-lora", 0, None, 4, dtype="bf16")
    record = run.run_cell(cell)
    argv = record["argv"]
    assert argv[argv.index("--lora") + 1] == "8" and "--mask" not in argv and argv[argv.index("--dtype") + 1] == "bf16"
    assert record["key"] == "sst2-zo-lora-bf16-s0" and record["lr"] == 1e-3 and record["model"] == settings.SMOLLM2
    assert record["peak_rss_mb"] > 50 and record["n"] == 4 and record["nnz"] > 0
    settings.CELLS.mkdir(parents=True)
    (settings.CELLS / f"{record['key']}.json").write_text(json.dumps(record))
    assert probes.probe_keys(records.load_cells()) == [record["key"]]
    row = probes.probe(record["key"])
    assert row["argv"][row["argv"].index("--steps") + 1] == "3" and row["peak_rss_mb"] > 50 and row["s_per_step"] > 0
    settings.PROBE.mkdir(parents=True)
    (settings.PROBE / f"{record['key']}.json").write_text(json.dumps(row))
    (point,) = plots.pareto_points(report.summary(records.load_cells()))
    assert point["rss_mb"] == row["peak_rss_mb"] and point["rss_source"] == "probe"  # every point measured alike where probed
    import bench_fo_lora  # the first-order reference's equal-time budget: the cell's steps x a probe run beside it

    budget = bench_fo_lora.budget_probe(record["key"])
    assert budget["key"] == record["key"] and budget["cell_steps"] == 4 and budget["probe_s_per_step"] > 0
    assert budget["budget_s"] == pytest.approx(4 * budget["probe_s_per_step"], abs=0.02) and budget["load"] >= 0
    assert point["train_s"] == pytest.approx(4 * row["s_per_step"]) and point["mean"] == record["accuracy"]
    settings.RESULTS.mkdir(exist_ok=True)
    plots.plot_pareto(report.summary(records.load_cells()), records.load_cells())
    assert (settings.RESULTS / "quality_pareto.png").stat().st_size > 1000


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
    assert row["nf4_linears"] == 2 * 7  # every q/k/v/o and MLP linear of the 2 layers, not the output layer


def test_fo_lora_reference_runs_a_gguf_model_on_nf4_linears_of_its_own(tmp_path, monkeypatch):
    """A GGUF model (transformers refuses a quantization_config beside gguf_file): streamed in bf16, every linear but the
    output layer swapped for a bitsandbytes nf4 Linear4bit, then the same PEFT LoRA training; the row names the study model."""
    from conftest import SHARED_DATA
    from tiny_gguf import write_tiny_gguf

    pytest.importorskip("peft")
    if not (SHARED_DATA / "sst2").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    import bench_fo_lora

    path = write_tiny_gguf(tmp_path / "m.gguf", arch="qwen2", qtype="Q8_0")
    row = bench_fo_lora.run(0, 1e-2, budget_s=600.0, max_steps=2, data_dir=SHARED_DATA, model_ref=str(path), sampling=(16, 0, 8),
                            model_name=settings.QWEN05)
    assert row["model"] == settings.QWEN05 and row["nf4_linears"] == 2 * 7 and row["steps"] == 2 and row["trainable"] > 0
    assert row["loss_last10"] < 1e3 and 0.0 <= row["accuracy"] <= 1.0
    _isolate(monkeypatch, tmp_path)
    settings.RESULTS.mkdir()
    (settings.RESULTS / "fo_lora.json").write_text(json.dumps({"rows": [{**row, "accuracy": 0.7}, {**row, "model": settings.SMOLLM2, "accuracy": 0.78}]}))
    points = {p["model"]: p["mean"] for p in plots.pareto_points([]) if p["method"] == "fo-lora"}
    assert points == {settings.QWEN05: 0.7, settings.SMOLLM2: 0.78}  # one Pareto point per model


def test_lora_regime_sweep_picks_eps_alpha_lr_and_plans_its_cells_with_those_flags(tmp_path, monkeypatch):
    """Issue 33's ZO-LoRA regime sweep: eps x alpha x lr keys (the grid's eps and alpha left out of the key, so its corner
    reuses the first sweep's records); once complete, its best final dev picks the cells' eps, alpha and lr, which show in
    their keys and argv; the first sweep's choice ignores the regime records."""
    monkeypatch.setattr(settings, "SWEEP", tmp_path / "sweep")
    monkeypatch.setattr(settings, "LORA_REGIME", {"eps": (1e-3, 1e-2), "alpha": (16.0, 128.0), "lr": (1e-5, 1e-4)})
    settings.SWEEP.mkdir()
    runs = plan.lora_regime_runs()
    keys = [r.key for r in runs]
    assert len(runs) == 8 and "sweep-zo-lora-lr0.0001" in keys and "sweep-zo-lora-eps0.01-a128-lr1e-05" in keys
    assert "sweep-zo-lora-a128-lr0.0001" in keys and not any(k.startswith("sweep-zo-lora-eps0.001") for k in keys)
    for i, r in enumerate(runs):
        dev = 0.7 if (r.eps, r.alpha, r.lr) == (1e-2, 128.0, 1e-4) else 0.59
        if i < len(runs) - 1:
            assert plan.lora_regime() is None  # an incomplete sweep chooses nothing
        (settings.SWEEP / f"{r.key}.json").write_text(json.dumps({"method": "zo-lora", "lr": r.lr, "eps": r.eps or settings.EPS,
                                                                  "alpha": r.alpha, "key": r.key, "dev_final": dev}))
    assert plan.lora_regime() == (1e-2, 128.0, 1e-4)
    cells = [c for c in plan.plan() if c.method == "zo-lora" and c.alpha == 128.0 and c.model == settings.SMOLLM2]
    assert {c.key for c in cells} == {f"sst2-zo-lora-eps0.01-a128-lr0.0001-bf16-s{s}" for s in settings.SEEDS} | {"trec-zo-lora-eps0.01-a128-lr0.0001-bf16-s0"}
    monkeypatch.setattr(settings, "LR", {**settings.LR, "zo-lora": 1e-3})
    argv = run.finetune_argv("sst2", run.trained_args(cells[0])[0], cells[0].learning_rate, cells[0].eps, 300, 0, 500, "bf16")
    assert argv[argv.index("--lora-alpha") + 1] == "128" and argv[argv.index("--eps") + 1] == "0.01" and argv[argv.index("--lr") + 1] == "0.0001"
    record = {**dataclasses.asdict(cells[0]), "eps": 1e-2, "lr": 1e-4}
    assert plan.cell_of(record) == cells[0] and plan.on_pareto({**record, "density": None, "steps": settings.STEPS})
    assert not plan.on_pareto({**record, "alpha": None, "density": None, "steps": settings.STEPS})  # another regime, not the chosen one


def test_senszoq_variants_train_senszoq_s_mask_then_plan_their_cells_best_first(tiny_model_dir, tmp_path, monkeypatch):
    """Issue 33's SensZOQ variants: a variant trains SensZOQ's C4 fisher mask (a scored one: the build with its scores, as the
    built-in file stores none) with its options added, at eps VARIANT_EPS in bf16, and its argv reruns it; once a
    variant's sweep range is recorded, its best final dev sets its lr, its cells are planned (the best variant first, with
    TREC and 1000 steps) and sit on the Pareto set."""
    _tiny_grid(monkeypatch, tmp_path, tiny_model_dir, EVAL=4, LR={**settings.LR, "senszoq-precond": 1e-3},
               VARIANT_SWEEP_LRS={"senszoq-precond": (1e-3, 3e-3), "senszoq-cosine": (3e-4,)},
               VARIANTS={k: settings.VARIANTS[k] for k in ("senszoq-precond", "senszoq-cosine")})
    assert run.trained_args(plan.Cell("sst2", "senszoq-cosine", 0)) == (["--mask", settings.MODEL, "--lr-schedule", "cosine"], None)
    record = run.run_cell(plan.Cell("sst2", "senszoq-precond", 0, steps=2, dtype="bf16", eps=settings.VARIANT_EPS))
    argv = record["argv"]
    assert record["key"] == "sst2-senszoq-precond-eps0.01-2steps-bf16-s0" and argv[argv.index("--method") + 1] == "senszoq-curvature"
    assert argv[argv.index("--eps") + 1] == "0.01" and argv[argv.index("--dtype") + 1] == "bf16" and argv[argv.index("--lr") + 1] == "0.001"
    assert argv[argv.index("--mask") + 1] == "{work}/masks/c4-fisher-d0.001" and "--calibration" in record["mask_argv"]
    from szoq_hub import SensitivityMask

    assert SensitivityMask.from_pretrained(settings.WORK / "masks" / "c4-fisher-d0.001").scores is not None  # what the preconditioner reads
    mask = (settings.MASKS / "c4-fisher-d0.001.json").read_text()
    assert json.loads(mask)["captured_share"] > 0 and json.loads(mask)["samples"] == 32  # the study keeps what its mask holds
    rerun = json.loads(szoq_process.szoq([*argv, "--out", str(tmp_path / "rerun")]))
    assert rerun["eval"] == record["accuracy"]
    settings.SWEEP.mkdir(parents=True)
    first = plan.SweepRun("senszoq-precond", 1e-3, settings.SMOLLM2, settings.VARIANT_EPS).key
    records.write_json(settings.SWEEP / f"{first}.json", {"method": "senszoq-precond", "lr": 1e-3, "eps": 1e-2, "key": first, "dev_final": 0.6})
    assert plan.swept_variants() == [] and not any(c.method in settings.VARIANTS and c.model == settings.SMOLLM2 and c.steps == settings.STEPS
                                                   for c in plan.plan())  # incomplete: nothing planned
    for v, lr, dev in (("senszoq-precond", 3e-3, 0.7), ("senszoq-cosine", 3e-4, 0.8)):
        key = plan.SweepRun(v, lr, settings.SMOLLM2, settings.VARIANT_EPS).key
        records.write_json(settings.SWEEP / f"{key}.json", {"method": v, "lr": lr, "eps": 1e-2, "key": key, "dev_final": dev})
    plan.adopt_swept_lrs()
    assert settings.LR["senszoq-precond"] == 3e-3 and settings.LR["senszoq-cosine"] == 3e-4 and plan.swept_variants() == ["senszoq-cosine", "senszoq-precond"]
    keys = [c.key for c in plan.plan() if c.method in settings.VARIANTS]
    assert keys == ["sst2-senszoq-cosine-eps0.01-bf16-s0", "sst2-senszoq-cosine-eps0.01-bf16-s1", "sst2-senszoq-cosine-eps0.01-bf16-s2",
                    "trec-senszoq-cosine-eps0.01-bf16-s0", "sst2-senszoq-precond-eps0.01-bf16-s0", "sst2-senszoq-precond-eps0.01-bf16-s1",
                    "sst2-senszoq-precond-eps0.01-bf16-s2", "sst2-senszoq-cosine-eps0.01-1000steps-bf16-s0",
                    "sst2-senszoq-cosine-eps0.01-1000steps-bf16-s1"]
    cell = next(c for c in plan.plan() if c.method == "senszoq-precond")
    rec = {**dataclasses.asdict(cell), "eps": 1e-2, "lr": 3e-3, "density": settings.DENSITY}
    assert plan.cell_of(rec).key == cell.key and plan.on_pareto(rec) and not plan.on_pareto({**rec, "lr": 1e-3})
    settings.CELLS.mkdir(parents=True, exist_ok=True)
    for v, acc in (("senszoq-precond", 0.7), ("senszoq-cosine", 0.6)):  # once every variant has its seeds, their eval ranks them
        for seed in settings.SEEDS:
            key = plan.Cell("sst2", v, seed, dtype="bf16", eps=settings.VARIANT_EPS).key
            records.write_json(settings.CELLS / f"{key}.json", {"accuracy": acc + seed / 100})
            assert plan.swept_variants()[0] == ("senszoq-precond" if (v, seed) == ("senszoq-cosine", 2) else "senszoq-cosine")
    assert "trec-senszoq-precond-eps0.01-bf16-s0" in {c.key for c in plan.plan()}


def test_size_plot_needs_two_models_and_takes_each_model_s_bf16_row(tmp_path, monkeypatch):
    """quality_size.png: one line per method across model sizes, drawn once a second model has a point; a model with both
    fp32 and bf16 cells of a method plots its bf16 row."""
    pytest.importorskip("matplotlib")
    _isolate(monkeypatch, tmp_path)
    settings.RESULTS.mkdir(parents=True)
    smol = [{**_cell("sst2", "senszoq", s, 0.6 + s / 100), "dtype": d} for s in (0, 1) for d in ("fp32", "bf16")]
    smol[1]["key"] += "-bf16"
    smol[3]["key"] += "-bf16"
    plots.plot_size(report.summary(smol))
    assert not (settings.RESULTS / "quality_size.png").exists()  # one model: no size axis
    qwen = {**_cell("sst2", "zero-shot", 0, 0.61, density=None, steps=0), "model": settings.QWEN05, "dtype": "bf16"}
    rows = report.summary([*smol, qwen])
    assert {p["dtype"] for p in plots.pareto_points(rows) if p["method"] == "senszoq"} == {"fp32", "bf16"}
    lines = plots.size_lines(rows)
    assert [(p["model"], p["dtype"]) for p in lines["senszoq"]] == [(settings.SMOLLM2, "bf16")]
    assert [p["model"] for p in lines["zero-shot"]] == [settings.QWEN05]
    fo = {"model": settings.QWEN05, "seed": 0, "steps": 40, "accuracy": 0.8, "n": 500, "peak_rss_mb": 4000.0, "train_s": 900.0}
    (settings.RESULTS / "fo_lora.json").write_text(json.dumps({"rows": [fo]}))  # first-order LoRA: a SensZOQ run's time, any steps
    assert [(p["model"], p["mean"]) for p in plots.size_lines(rows)["fo-lora"]] == [(settings.QWEN05, 0.8)]
    plots.plot_size(rows)
    assert (settings.RESULTS / "quality_size.png").stat().st_size > 1000


def test_qwen_competitors_sweep_at_zo_lora_s_regime_then_plan_their_cells(tmp_path, monkeypatch):
    """Issue 32: Qwen's own ZO-LoRA sweep waits for SmolLM2's regime sweep and runs at its (eps, alpha); once Qwen's ZO-LoRA
    and dense sweeps are recorded, their choices plan SST-2 (2 seeds) and TREC cells at those settings, dense in fp32."""
    qwen = settings.QWEN05
    _isolate(monkeypatch, tmp_path, LORA_REGIME={"eps": (1e-3, 1e-2), "alpha": (16.0, 128.0), "lr": (1e-4,)},
             MODEL_LR={settings.GEMMA: {}, qwen: {"senszoq": 1e-5}})
    settings.SWEEP.mkdir(parents=True)
    assert not [r for r in plan.sweep_plan() if r.model == qwen and r.method == "zo-lora"]  # no regime yet: no Qwen ZO-LoRA run
    for r in plan.lora_regime_runs():
        dev = 0.7 if (r.eps, r.alpha) == (1e-2, 128.0) else 0.59
        records.write_json(settings.SWEEP / f"{r.key}.json", {"method": "zo-lora", "lr": r.lr, "eps": r.eps or settings.EPS, "alpha": r.alpha,
                                                              "key": r.key, "dev_final": dev})
    runs = [r for r in plan.sweep_plan() if r.model == qwen and r.method in ("zo-lora", "dense")]
    assert {(r.method, r.eps, r.alpha) for r in runs} == {("zo-lora", 1e-2, 128.0), ("dense", None, None)}
    assert "sweep-qwen05-zo-lora-eps0.01-a128-lr3e-05" in {r.key for r in runs}
    for i, r in enumerate(runs):
        if i == len(runs) - 1:
            assert plan.swept_lr(r.method, qwen) is None  # a sweep chooses once its last run is recorded
        dev = 0.8 if r.lr == 3e-5 or r.lr == 3e-6 else 0.6
        records.write_json(settings.SWEEP / f"{r.key}.json", {"method": r.method, "lr": r.lr, "model": qwen, "eps": r.eps, "alpha": r.alpha,
                                                              "key": r.key, "dev_final": dev})
    plan.adopt_swept_lrs()
    assert settings.MODEL_LR[qwen]["zo-lora"] == 3e-5 and settings.MODEL_LR[qwen]["dense"] == 3e-6
    cells = {c.key: c for c in plan.plan() if c.model == qwen and c.method in ("zo-lora", "dense")}
    assert set(cells) == {"qwen05-sst2-zo-lora-eps0.01-a128-bf16-s0", "qwen05-sst2-zo-lora-eps0.01-a128-bf16-s1", "qwen05-trec-zo-lora-eps0.01-a128-bf16-s0",
                          "qwen05-sst2-dense-d1-s0", "qwen05-sst2-dense-d1-s1", "qwen05-trec-dense-d1-s0"}
    lora = cells["qwen05-sst2-zo-lora-eps0.01-a128-bf16-s0"]
    assert cells["qwen05-sst2-dense-d1-s0"].dtype is None and lora.learning_rate == 3e-5
    row = {**dataclasses.asdict(lora), "lr": 3e-5, "density": None}
    assert plan.on_pareto(row) and not plan.on_pareto({**row, "lr": 1e-4})  # at Qwen's own ZO-LoRA lr, not SmolLM2's


def test_floor_cell_runs_szoq_finetune_at_its_defaults_and_the_report_sets_it_beside_zero_shot(tiny_model_dir, tmp_path, monkeypatch):
    """Issue 33's floor check: a `defaults` cell passes no training setting (no --lr, --eps, --dtype, --micro-batch-size,
    --no-dev-baseline), records what they resolved to, keeps its key, and the report sets it beside the bf16 zero-shot."""
    _tiny_grid(monkeypatch, tmp_path, tiny_model_dir, EVAL=4)
    settings.CELLS.mkdir(parents=True)
    cell = plan.Cell("sst2", "defaults", 0, steps=settings.STEPS, dtype="auto")
    argv = run.defaults_argv(cell, run.trained_args(plan.Cell("sst2", "defaults", 0, 1e-2))[0])
    assert not {"--lr", "--eps", "--dtype", "--micro-batch-size", "--no-dev-baseline", "--steps", "--eval-every"} & set(argv)
    assert argv[argv.index("--mask") + 1] == "{work}/masks/c4-fisher-d0.01" and argv[argv.index("--eval-samples") + 1] == "4"
    from szoq_hub import FinetuneConfig

    assert settings.STEPS == FinetuneConfig().steps  # the grid's 300 steps are the CLI's default: the floor cells pass no --steps
    record = run.run_cell(plan.Cell("sst2", "defaults", 0, 1e-2, steps=2, dtype="auto"))
    assert record["argv"][record["argv"].index("--steps") + 1] == "2"
    chosen = json.loads((settings.WORK / "runs" / record["key"] / "finetune_config.json").read_text())["settings"]["lr_scores"]
    assert record["lr_rule"] == "scores" and record["lr"] == chosen["lr"] and chosen["per_window"] > 0  # the fisher mask's scores set it
    assert record["eps"] == 1e-3 and record["resolved_dtype"] in ("bf16", "fp32") and record["dtype"] == "auto"
    assert plan.cell_of(record).key == record["key"] == "sst2-defaults-d0.01-2steps-auto-s0"  # no move, no rerun
    zero = {**_cell("sst2", "zero-shot", 0, record["accuracy"] + 0.1, density=None, steps=0), "dtype": "bf16"}
    (row,) = report.floor_rows([record, zero])
    assert row["zero_shot"] == zero["accuracy"] and row["defaults"] == record["accuracy"] and row["best_step"] == record["best_step"]
    assert "| YES |" in "\n".join(report._floor_table([record, zero])) and "| scores |" in "\n".join(report._floor_table([record, zero]))


def test_qwen_1_5b_borrows_each_method_s_0_5b_lr_and_plans_dense_at_equal_time_and_equal_steps(tmp_path, monkeypatch):
    """Issue 32 at 1.5B: no sweep of its own; a method's 1.5B cells appear once its 0.5B sweep has chosen, at that lr (no lr in
    the key), dense at QWEN15_EQUAL_TIME_STEPS before dense at the full 300; the 0.5B task-fisher cell trains at SensZOQ's lr."""
    q05, q15 = settings.QWEN05, settings.QWEN15
    _isolate(monkeypatch, tmp_path, MODEL_LR={settings.GEMMA: {}, q05: {}, q15: {}})
    monkeypatch.setattr(plan, "lora_regime", lambda: (1e-2, 128.0, 1e-4))
    assert [c.key for c in plan.plan() if c.model == q15] == ["qwen15-sst2-zero-shot-bf16-s0"]  # nothing trains before 0.5B's sweeps
    settings.MODEL_LR[q05].update({"senszoq": 1e-5, "zo-lora": 3e-5, "dense": 3e-6})
    cells = {c.key: c for c in plan.plan() if c.model == q15}
    assert list(cells) == ["qwen15-sst2-zero-shot-bf16-s0", "qwen15-sst2-senszoq-bf16-s0", "qwen15-sst2-defaults-auto-s0",
                           "qwen15-sst2-senszoq-bf16-s1", "qwen15-sst2-zo-lora-eps0.01-a128-bf16-s0",
                           f"qwen15-sst2-dense-d1-{settings.QWEN15_EQUAL_TIME_STEPS}steps-s0", "qwen15-sst2-dense-d1-s0"]
    trained = [k for k in cells if "zero-shot" not in k and "defaults" not in k]  # the floor cell passes no --lr (`--lr scores`)
    assert [cells[k].learning_rate for k in trained] == [1e-5, 1e-5, 3e-5, 3e-6, 3e-6]
    assert cells["qwen15-sst2-dense-d1-s0"].dtype is None and cells["qwen15-sst2-dense-d1-s0"].steps == settings.STEPS
    settings.MODEL_LR[q15]["senszoq"] = 2e-5  # a sweep of its own would win over the borrowed lr
    assert plan.lr_of("senszoq", q15) == 2e-5 and plan.lr_of("dense", q15) == 3e-6
    fisher = [c for c in plan.plan() if c.model == q05 and c.method == "task-fisher"]
    assert [(c.key, c.learning_rate) for c in fisher] == [("qwen05-sst2-task-fisher-lr1e-05-bf16-s0", 1e-5)]
    randoms = lambda: [(c.key, c.learning_rate) for c in plan.plan() if c.model == q05 and c.method == "random"]  # noqa: E731
    assert randoms() == [("qwen05-sst2-random-lr1e-05-bf16-s0", 1e-5)]  # at SensZOQ's lr until its own sweep chooses
    assert [r.lr for r in plan.sweep_plan() if r.model == q05 and r.method == "random"] == [1e-5, 1e-4, 1e-3]
    settings.MODEL_LR[q05]["random"] = 1e-3
    assert randoms() == [("qwen05-sst2-random-lr1e-05-bf16-s0", 1e-5), ("qwen05-sst2-random-bf16-s0", 1e-3)]
    settings.MODEL_LR[q05]["random"] = 1e-5  # the sweep agrees with SensZOQ's lr: the recorded cell is the cell
    assert randoms() == [("qwen05-sst2-random-bf16-s0", 1e-5)]
    argv, _ = run.trained_args(plan.Cell("sst2", "dense", 0, 1.0, model=q15))
    assert argv == ["--dense"] and settings.MODEL_REFS[q15] == "{work}/" + settings.QWEN15_FILE


def test_budget_table_picks_per_model_the_best_run_that_fits_each_budget(monkeypatch):
    """Issue 32's per-budget verdict: per budget and model the best SST-2 point whose whole-run peak RSS fits, the best
    of another method after it, "does not fit" where nothing does; 1000-step points are not a budget's choice."""
    def pt(model, method, mean, rss, steps=300, seeds=(0,), std=None):
        return {"model": model, "task": "sst2", "method": method, "mean": mean, "std": std, "seeds": list(seeds), "steps": steps,
                "peak_rss_mb": rss, "rss_complete": True, "rss_mb": rss - 50}

    points = [pt(settings.SMOLLM2, "dense", 0.73, 970, seeds=(0, 1, 2), std=0.043), pt(settings.SMOLLM2, "senszoq", 0.66, 810),
              pt(settings.SMOLLM2, "dense", 0.90, 970, steps=1000), pt(settings.SMOLLM2, "zero-shot", 0.52, 660, steps=0),
              pt(settings.QWEN05, "zero-shot", 0.61, 1170, steps=0), pt(settings.QWEN05, "senszoq", 0.79, 1400),
              pt(settings.QWEN05, "dense", 0.83, 3100)]
    lines = report.budget_table(points, ["qwen05-sst2-dense-d1-s1", "qwen05-trec-dense-d1-s0", "gemma3-sst2-x"])
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in lines if line.startswith("| ") and " GB |" in line}
    assert lines[0] == "| peak memory | SmolLM2-135M | Qwen2.5-Coder-0.5B | best that fits |"
    assert rows["1 GB"] == ["dense MeZO **73.0 ± 4.3%** (3 seeds, 0.97 GB); SensZOQ 66.0% (1 seed, 0.81 GB)", "does not fit (1.17 GB)",
                            "SmolLM2-135M, dense MeZO |"]
    assert rows["2 GB"][1] == "SensZOQ **79.0%** (1 seed, 1.40 GB); zero-shot 61.0% (1 seed, 1.17 GB)"
    assert rows["2 GB"][2] == "Qwen2.5-Coder-0.5B, SensZOQ |"
    assert rows["4 GB"][1].startswith("dense MeZO **83.0%** (1 seed, 3.10 GB); SensZOQ 79.0%")
    assert "90.0" not in "\n".join(lines)  # the 1000-step point is another time budget
    assert lines[-1].endswith("pending for these models: 1 (qwen05-sst2-dense-d1-s1).")
