"""The newcomer's path (issue 11): README flows as written, custom data without traps, honest
progress and messages. CLI behaviour is tested through the real entry point (`run_cli`)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, TINY_TEXTS, assert_one_line_error, make_tiny_llama

ROWS = [{"text": t, "label": int("great" in t or "wonderful" in t)} for t in TINY_TEXTS]
CUSTOM = ["--template", "{text} It was", "--labels", "0=bad,1=good"]
SMALL = ["--quant", "none", "--steps", "4", "--batch-size", "2", "--eval-every", "2", "--save-every", "2",
         "--train-samples", "8", "--dev-samples", "4", "--eval-samples", "4"]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def train_file(tmp_path) -> Path:
    return _jsonl(tmp_path / "train.jsonl", ROWS)


@pytest.fixture(scope="module")
def tiny_calib(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text("\n".join(TINY_TEXTS * 5))
    return path


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# --- 1. eval / merge use the delta's own mask and model; masks are named ---------------------

def test_eval_and_merge_default_to_the_deltas_mask_and_model(run_cli, tiny_model_dir, tiny_calib, train_file, tmp_path):
    model = str(tiny_model_dir)
    build = ["mask", "build", model, "--calibration", tiny_calib, "--samples", "2", "--seq-len", "16", "--density", "0.01"]
    assert run_cli(*build, "--name", "tiny-c4")[0] == 0
    assert run_cli(*build, "--scorer", "magnitude", "--name", "tiny-mag")[0] == 0
    run = tmp_path / "run"
    code, _, err = run_cli("finetune", "--model", model, "--mask", "tiny-c4", "--train", train_file, *CUSTOM, *SMALL, "--out", run)
    assert code == 0, err
    assert json.loads((run / "finetune_config.json").read_text())["mask_ref"] == "tiny-c4@v1"
    # A newer tiny-c4 must not change which mask the delta is read with.
    assert run_cli(*build, "--scorer", "random", "--name", "tiny-c4")[0] == 0

    code, out, err = run_cli("eval", "--delta", run, "--eval", train_file, *CUSTOM, "--eval-samples", "4", "--json")
    assert code == 0, err
    assert json.loads(out)["mode"] == "delta"
    code, out, err = run_cli("merge", "--delta", run, "--out", tmp_path / "merged")
    assert code == 0, err
    assert (tmp_path / "merged" / "config.json").is_file()

    # Another mask: the message names both masks, not sha256 prefixes.
    code, _, err = run_cli("eval", "--delta", run, "--mask", "tiny-mag", "--eval", train_file, *CUSTOM, "--eval-samples", "4")
    assert_one_line_error(code, err, "trained with mask tiny-c4@v1, not tiny-mag")
    assert not re.search(r"\b[0-9a-f]{12}\b", err), err


# --- 2. the main command reruns after an interruption -----------------------------------------

def test_rerunning_the_same_command_continues_a_stopped_run(run_cli, tiny_model_dir, tiny_mask, train_file, tmp_path, monkeypatch):
    import importlib

    from szoq_hub.training.run_folder import RunFolder
    run = tmp_path / "run"
    args = ["finetune", "--model", tiny_model_dir, "--mask", tiny_mask, "--train", train_file, *CUSTOM, *SMALL, "--out", run]
    real_save = RunFolder.write_checkpoint

    def save_then_stop(*a, **k):  # Ctrl-C right after the first checkpoint (step 2)
        real_save(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(RunFolder, "write_checkpoint", save_then_stop)
    code, _, err = run_cli(*args)
    assert code == 130 and not (run / "delta.safetensors").exists(), err
    monkeypatch.setattr(RunFolder, "write_checkpoint", real_save)

    code, out, err = run_cli(*args)  # the same command again, no extra flag
    assert code == 0, err
    assert f"resuming {run} from its checkpoint at step 2" in err
    assert [r["step"] for r in _metrics(run) if r["kind"] == "step"] == [0, 1, 2, 3]
    assert (run / "delta.safetensors").is_file()

    code, _, err = run_cli(*args)
    assert_one_line_error(code, err, "already complete")
    code, _, err = run_cli(*args[:-2], "--lr", "0.5", "--out", run)
    assert_one_line_error(code, err, "other settings: lr")


# --- 3. local-looking refs that do not exist ------------------------------------------------

def test_missing_local_paths_are_named_as_missing_folders(run_cli, tiny_model_dir, tiny_mask, train_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    ev = ["--eval", str(train_file), *CUSTOM, "--eval-samples", "4", "--quant", "none"]
    code, _, err = run_cli("eval", "--delta", "runs/typo", *ev)
    assert_one_line_error(code, err, "no local folder runs/typo")
    code, _, err = run_cli("eval", "--model", str(tiny_model_dir), "--mask", "masks/typo", *ev)
    assert_one_line_error(code, err, "no local folder masks/typo")
    code, _, err = run_cli("eval", "--model", "models/x", "--mask", str(tiny_mask), *ev)
    assert_one_line_error(code, err, "no local folder models/x")
    assert "the Hub was asked" in err  # it says whether the Hub was asked (the loopback Hub answers 404)

    # An unfinished run is named as one, with how to continue it.
    from szoq_hub.training.finetune import FinetuneConfig, finetune

    finetune(FinetuneConfig(model=str(tiny_model_dir), mask=str(tiny_mask), train_file=str(train_file), template="{text} It was",
                            labels="0=bad,1=good", quant="none", steps=2, batch_size=2, eval_every=0, train_samples=8, dev_samples=2,
                            eval_samples=2, out="runs/sst2"))
    (tmp_path / "runs" / "sst2" / "delta.safetensors").unlink()
    code, _, err = run_cli("eval", "--delta", "runs/sst2", *ev)
    assert_one_line_error(code, err, "unfinished")
    assert "pass the output folder of szoq finetune" not in err and "same szoq finetune command" in err


# --- 4, 5. data files: JSON line breaks, line numbers, encodings ----------------------------

def test_jsonl_strings_may_hold_unicode_line_separators(run_cli, tiny_model_dir, tiny_mask, tmp_path):
    rows = [dict(r, text=r["text"] + sep) for r, sep in zip(ROWS, ["\u2028", "\u0085", "\u2029", "\x1c", "\x0b"] * 4)]
    path = _jsonl(tmp_path / "odd.jsonl", rows)
    common = ["eval", "--model", tiny_model_dir, "--mask", tiny_mask, "--quant", "none", *CUSTOM, "--eval-samples", "100", "--json"]
    code, out, err = run_cli(*common, "--eval", path)
    assert code == 0, err
    assert json.loads(out)["n"] == len(rows)

    lines = path.read_text(encoding="utf-8").split("\n")
    lines[17] = lines[17][:-1]  # cut the closing brace of the row on line 18
    path.write_text("\n".join(lines), encoding="utf-8")
    code, _, err = run_cli(*common, "--eval", path)
    assert_one_line_error(code, err, "line 18")


def test_non_utf8_file_names_the_line_and_takes_encoding(run_cli, tiny_model_dir, tiny_mask, tmp_path):
    path = tmp_path / "latin.jsonl"
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS[:5]) + json.dumps({"text": "un film très réussi", "label": 1}, ensure_ascii=False) + "\n"
    path.write_bytes(text.encode("latin-1"))
    common = ["eval", "--model", tiny_model_dir, "--mask", tiny_mask, "--quant", "none", *CUSTOM, "--eval", path, "--json"]
    code, _, err = run_cli(*common)
    assert_one_line_error(code, err, "line 6", "utf-8")
    assert "--encoding" in err
    code, out, err = run_cli(*common, "--encoding", "latin-1")
    assert code == 0, err
    assert json.loads(out)["n"] == 6


# --- 6, 7. the split is shown, --dev gives a dev set, the config says custom ----------------

def test_split_is_printed_and_dev_file_is_used(run_cli, tiny_model_dir, tiny_mask, train_file, tmp_path):
    base = ["finetune", "--model", tiny_model_dir, "--mask", tiny_mask, "--train", train_file, *CUSTOM, "--quant", "none",
            "--steps", "2", "--batch-size", "2", "--eval-every", "0"]
    code, _, err = run_cli(*base, "--out", tmp_path / "a")
    assert code == 0, err
    # 20 rows: 4 held out for eval, then 16 shared by train and dev; the defaults (1000/500) cannot be met.
    assert re.search(r"custom: 12 train \(.*train.jsonl\), 4 dev \(held out from .*\), 4 eval \(held out from .*\)", err), err
    assert "fewer than asked: --train-samples 1000 (got 12)" in err
    saved = json.loads((tmp_path / "a" / "finetune_config.json").read_text())
    assert saved["settings"]["task"] == "custom" and saved["task"]["name"] == "custom"

    dev = _jsonl(tmp_path / "dev.jsonl", ROWS[:3])
    code, _, err = run_cli(*base, "--dev", dev, "--out", tmp_path / "b")
    assert code == 0, err
    assert re.search(r"custom: 16 train \(.*\), 3 dev \(.*dev.jsonl\)", err), err
    info = json.loads((tmp_path / "b" / "finetune_config.json").read_text())["task"]
    assert (info["train"], info["dev"]) == (16, 3)


# --- 8, 9. zero-shot eval of a custom file; no label leak ------------------------------------

def test_zero_shot_eval_of_a_custom_file_needs_no_train_file(run_cli, tiny_model_dir, tiny_mask, tmp_path):
    path = _jsonl(tmp_path / "eval.jsonl", ROWS[:7])
    code, out, err = run_cli("eval", "--model", tiny_model_dir, "--mask", tiny_mask, "--quant", "none", "--eval", path, *CUSTOM, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert (result["task"], result["n"], result["mode"]) == ("custom", 7, "zero-shot")
    code, _, err = run_cli("eval", "--model", tiny_model_dir, "--mask", tiny_mask, *CUSTOM)  # template without data
    assert_one_line_error(code, err, "no data file")


def test_template_with_the_label_field_is_refused(run_cli, train_file):
    code, _, err = run_cli("finetune", "--train", train_file, "--template", "{text} ({label}) It was", "--labels", "0=bad,1=good")
    assert_one_line_error(code, err, "{label}", "answer")


# --- 10. help texts say what they mean for custom data ---------------------------------------

def test_eval_help_describes_custom_data(run_cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    code, out, _ = run_cli("eval", "--help")
    assert code == 0
    assert "Built-in task name" not in out and "(from validation)" not in out
    assert "not with a custom task" in out and "held out from --train" in out


# --- 11. data errors come before any model loads ---------------------------------------------

@pytest.mark.parametrize("command", ["finetune", "eval"])
def test_data_errors_come_before_the_model_is_resolved(command, run_cli, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine", "label": 1}\n{"text": "broken\n')
    data = ["--train", bad] if command == "finetune" else ["--eval", bad]
    # The model does not exist: before the fix, this was the error reported (after resolving it).
    code, _, err = run_cli(command, "--model", tmp_path / "no-such-model", *data, *CUSTOM)
    assert_one_line_error(code, err, "bad.jsonl line 2")


# --- 12. progress and messages ---------------------------------------------------------------

def test_eta_uses_the_average_rate_when_updates_are_far_apart():
    from rich.console import Console
    from rich.progress import Progress, TimeRemainingColumn

    from szoq_cli.render import AverageRateEta

    now = [0.0]
    bar = Progress(console=Console(file=open(os.devnull, "w")), get_time=lambda: now[0], auto_refresh=False)
    task = bar.add_task("ZO", total=100, info="")
    now[0] = 60.0  # loading the model
    bar.update(task, first=0, begun=bar.tasks[task].elapsed)
    for step in range(1, 11):  # 40 s per step
        now[0] += 40.0
        bar.update(task, completed=step)
    t = bar.tasks[task]
    assert str(TimeRemainingColumn().render(t)) == "-:--:--"  # rich's own estimate gives up
    assert str(AverageRateEta().render(t)) == "eta 1:00:00"  # 90 steps x 40 s


def test_progress_line_is_cleared_before_an_error(run_cli, tiny_mask, train_file, tmp_path, monkeypatch):
    monkeypatch.delenv("SZOQ_NO_PROGRESS")
    other = make_tiny_llama(tmp_path / "other", seed=1)
    code, _, err = run_cli("finetune", "--model", other, "--mask", tiny_mask, "--train", train_file, *CUSTOM, "--quant", "none",
                           "--out", tmp_path / "run")
    assert_one_line_error(code, err, "fingerprint")
    before = err[: err.index("error:")]
    assert "loading" not in before and "━" not in before, err


def test_magnitude_build_progress_counts_tensors(run_cli, tiny_model_dir, monkeypatch):
    monkeypatch.delenv("SZOQ_NO_PROGRESS")
    code, _, err = run_cli("mask", "build", tiny_model_dir, "--scorer", "magnitude", "--density", "0.01")
    assert code == 0, err
    assert "0/?" not in err and "14/14" in err, err  # 2 layers x 7 linear weights


def test_zero_eval_samples_names_only_that_option(run_cli):
    code, _, err = run_cli("eval", "--eval-samples", "0")
    assert_one_line_error(code, err, "--eval-samples must be >= 1, got 0")
    assert "--icl-shots" not in err and "--batch-size" not in err
    code, _, err = run_cli("finetune", "--eval-samples", "0")
    assert_one_line_error(code, err, "--eval-samples must be >= 1, got 0")
    assert "--train-samples" not in err and "--dev-samples" not in err


def test_layer_tables_sort_layers_numerically(run_cli, tmp_path):
    model = make_tiny_llama(tmp_path / "deep", hidden=16, layers=12, intermediate=32)
    code, out, err = run_cli("mask", "build", model, "--scorer", "magnitude", "--density", "0.05", "--name", "deep", "--json")
    assert code == 0, err
    code, out, err = run_cli("mask", "show", "deep", "--json")
    layers = [int(re.search(r"layers\.(\d+)\.", l["tensor"]).group(1)) for l in json.loads(out)["layers"]]
    assert layers == sorted(layers) and layers[-1] == 11
    code, out, err = run_cli("mask", "diff", "deep", "deep", "--json")
    names = [l["name"] for l in json.loads(out)["layers"]]
    assert [int(re.search(r"layers\.(\d+)\.", n).group(1)) for n in names] == sorted(layers)


def test_merged_config_carries_no_gguf_internal_name(run_cli, tiny_mask, tiny_model_dir, train_file, tmp_path):
    import shutil

    # A model converted from GGUF has the GGUF's internal name in its config (as the SmolLM2 cache does).
    model = tmp_path / "converted"
    shutil.copytree(tiny_model_dir, model)
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**cfg, "_model_name_or_path": "Smollm2 135M 8k Lc100K Mix1 Ep2"}))
    from szoq_hub.masks.build import MaskBuildConfig, build_mask

    build_mask(MaskBuildConfig(model=str(model), scorer="magnitude", density=0.01), tmp_path / "mask")
    run = tmp_path / "run"
    code, _, err = run_cli("finetune", "--model", model, "--mask", tmp_path / "mask", "--train", train_file, *CUSTOM, *SMALL, "--out", run)
    assert code == 0, err
    code, _, err = run_cli("merge", "--delta", run, "--out", tmp_path / "merged")
    assert code == 0, err
    assert "Smollm2 135M" not in (tmp_path / "merged" / "config.json").read_text()


def test_readme_run_folder_and_custom_data_flags_match_what_szoq_does(run_dir, run_cli):
    """The "run folder" list of docs/commands.md names what a finished run holds (checkpoints aside, which a
    finished run keeps only while running), and every flag its custom-data usage line shows exists."""
    page = (REPO / "docs" / "commands.md").read_text()
    section = page.split("### The run folder", 1)[1].split("\n\n", 2)[1]
    documented = set(re.findall(r"^- `([^`]+)`", section, re.M))
    assert {"delta.safetensors", "best-dev.safetensors", "finetune_config.json", "metrics.jsonl", "README.md"} <= documented
    written = {p.name for p in run_dir.iterdir()}
    assert documented - {"checkpoint.safetensors"} <= written, (documented, written)
    assert written <= documented, written - documented  # nothing a run writes goes undocumented
    usage = next(line for line in page.splitlines() if "[--encoding" in line)
    code, out, _ = run_cli("finetune", "--help")
    assert code == 0
    for flag in re.findall(r"--[a-z-]+", usage):
        assert flag in out, flag
    code, out, _ = run_cli("mask", "rm", "--help")
    assert code == 0 and "Remove a mask from the local registry" in out


def test_test_run_shows_no_deprecation_warnings():
    """Importing the quantized runtime (bitsandbytes -> torch.compile) and the CLI raises no warning
    that the project's pytest settings (pyproject `filterwarnings`) do not filter.

    The imports run in a bare interpreter (a fresh import is what warns; this session has imported
    them already), not a pytest subprocess: the filters are read from pyproject and applied here.
    """
    probe = ("import json, warnings\nwith warnings.catch_warnings(record=True) as caught:\n    warnings.simplefilter('always')\n"
             "    import bitsandbytes, szoq_hub.runtime.sparse, szoq_cli.app\n"
             "print(json.dumps([[w.category.__name__, str(w.message)] for w in caught]))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    import builtins

    caught = json.loads(done.stdout.strip().splitlines()[-1])
    filters = pyproject_warning_filters()
    shown = [(c, m) for c, m in caught if not any(f(getattr(builtins, c, Warning), m) for f in filters)]
    assert not shown, shown


def pyproject_warning_filters():
    """pyproject's `ignore:MESSAGE:CATEGORY` filters as predicates on a caught warning."""
    import builtins
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    preds = []
    for spec in config.get("filterwarnings", []):
        action, message, category = (spec.split(":") + ["", ""])[:3]
        assert action == "ignore", spec
        cls = getattr(builtins, category or "Warning")
        preds.append(lambda category, text, m=re.compile(message), c=cls: issubclass(category, c) and m.match(text) is not None)
    return preds


# --- the README's Quickstart runs as written -------------------------------------------------

def _quickstart_block() -> str:
    text = (REPO / "README.md").read_text()
    m = re.search(r"<!-- quickstart -->\n```bash\n(.*?)\n```", text, re.S)
    assert m, "README.md has no ```bash block after <!-- quickstart -->"
    return m.group(1)


def test_readme_quickstart_runs_top_to_bottom(run_cli, tmp_path, monkeypatch, tiny_calib):
    """Every line of the Quickstart, in order, through the real entry point, in a fresh checkout
    beside `../shared/data`, after the main command (whose `runs/sst2` must stay untouched).

    Only the model shrinks: the built-in SmolLM2 becomes a tiny Llama (and the built-in mask a
    mask of it), and step/sample counts become small. Each substitution must apply exactly as
    often as stated, so a README that drifts breaks this test.
    """
    import shlex

    from conftest import SHARED_DATA

    if not (SHARED_DATA / "sst2").is_dir() or not (SHARED_DATA / "c4").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    from szoq_hub.masks.build import MaskBuildConfig, build_mask

    clone = tmp_path / "szoq"
    clone.mkdir()
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(SHARED_DATA)
    model = make_tiny_llama(tmp_path / "models" / "smollm2-135m-instruct")  # same folder name: same default mask names
    builtin = tmp_path / "builtin-mask"
    build_mask(MaskBuildConfig(model=str(model), calibration=str(tiny_calib), samples=2, seq_len=16), builtin)
    main_run = clone / "runs" / "sst2"  # what the main command left behind
    main_run.mkdir(parents=True)
    (main_run / "finetune_config.json").write_text('{"settings": {}}\n')
    monkeypatch.chdir(clone)

    block = _quickstart_block()
    subs = [  # (pattern, replacement, expected count)
        (r"szoq mask build smollm2-135m-instruct", f"szoq mask build {model}", 2),
        (r"--samples 32 --seq-len 256", "--samples 2 --seq-len 16", 1),
        (r"--model smollm2-135m-instruct", f"--model {model}", 1),
        (r"(szoq mask diff \S+) smollm2-135m-instruct", rf"\1 {builtin}", 1),
        (r"(szoq finetune .*)--steps 300", rf"\1--steps 2 --batch-size 2 --train-samples 8 --dev-samples 4 --eval-samples 8 --model {model}", 1),
        (r"(szoq eval [^#\n]*)", r"\1 --eval-samples 8 ", 1),
    ]
    for pattern, replacement, count in subs:
        block, n = re.subn(pattern, replacement, block)
        assert n == count, f"README Quickstart changed: {pattern!r} matched {n} times, expected {count}"

    commands = [shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines()]
    commands = [c for c in commands if c]
    assert [c[:3] for c in commands if c[0] == "szoq"][-3:] == [["szoq", "finetune", "--mask"], ["szoq", "eval", "--task"], ["szoq", "merge", "--delta"]]
    for argv in commands:
        if argv[0] == "export":
            name, value = argv[1].split("=", 1)
            monkeypatch.setenv(name, value)
            continue
        assert argv[0] == "szoq", argv
        code, out, err = run_cli(*argv[1:])
        assert code == 0, f"{shlex.join(argv)}\n{err}"
    assert (clone / "merged" / "config.json").is_file()
    assert [p.name for p in main_run.iterdir()] == ["finetune_config.json"]


# --- issue 22, second pass --------------------------------------------------------------------

def test_python_api_prints_no_trust_remote_code_warning(tiny_model_dir, tiny_mask):
    """Loading an nf4 sparse model imports bitsandbytes, which on an avx512_bf16 CPU looks up a Hub
    kernel at import and warns about trust_remote_code; szoq keeps it from looking (issue 22 item 5)."""
    pytest.importorskip("bitsandbytes")
    script = ("import szoq_hub, sys\n"
              "from szoq_hub.masks.artifact import load_mask\n"
              "from szoq_hub.runtime.sparse import load_sparse_model\n"
              f"load_sparse_model({str(tiny_model_dir)!r}, load_mask({str(tiny_mask)!r}), quant='nf4')\n"
              "assert 'bitsandbytes' in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "trust_remote_code" not in proc.stderr and "kernels-community" not in proc.stderr, proc.stderr


def test_finetune_writes_whole_progress_lines_when_stderr_is_a_file(tiny_model_dir, tiny_mask, train_file, tmp_path):
    """With stderr not a terminal, a 30-step run writes plain progress lines, not one truncated redraw (issue 22 item 3)."""
    env = {k: v for k, v in os.environ.items() if k != "SZOQ_NO_PROGRESS"}
    log = tmp_path / "stderr.log"
    args = ["finetune", "--model", tiny_model_dir, "--mask", tiny_mask, "--train", train_file, *CUSTOM, "--quant", "none",
            "--steps", "30", "--batch-size", "2", "--eval-every", "0", "--save-every", "30", "--train-samples", "8",
            "--dev-samples", "4", "--eval-samples", "4", "--out", tmp_path / "run"]
    with log.open("w") as fh:
        proc = subprocess.run([sys.executable, "-m", "szoq_cli", *map(str, args)], stdout=subprocess.PIPE, stderr=fh, text=True,
                              env=env, timeout=900)
    text = log.read_text()
    assert proc.returncode == 0, text
    lines = [line for line in text.splitlines() if re.search(r" step \d+/30 ", line)]
    assert len(lines) >= 3, text
    assert "\r" not in text and "\u2026" not in text, text  # no redraws, no ellipsis of a cropped line
    for line in lines:
        assert re.search(r"step \d+/30 loss \d+\.\d+ \|g\| \S+ lr \S+ .* \d+\.\d+ s/step eta \d+:\d\d:\d\d$", line), line
    assert lines[-1].split(" step ")[1].startswith("30/30"), text


def test_readme_plot_example_names_runs_the_readme_creates():
    """Every run folder the plot example (docs/commands.md) names is the --out of a command in the README
    or the docs (issue 22 item 9)."""
    readme = "\n".join(p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])
    created = set(re.findall(r"--out (runs/[\w.-]+)", readme))
    plotted = [run for line in readme.splitlines() if line.startswith("szoq plot ")
               for run in re.findall(r"runs/[\w.-]+", line.split(" --out ")[0])]
    assert plotted and set(plotted) <= created, (plotted, created)


def test_library_jobs_report_through_one_progress_system(capsys, monkeypatch):
    """A third-party tqdm inside a job (transformers' GGUF conversion) becomes szoq's events, and the
    CLI renders a job as a start note, a few whole step lines and an end note when stderr is not a terminal."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    from szoq_cli.render import library_progress
    from szoq_hub.core import progress

    monkeypatch.delenv("SZOQ_NO_PROGRESS", raising=False)
    events = []
    previous = progress.set_progress_listener(lambda e: (events.append(e), library_progress(e)))
    try:
        original = gguf_utils.tqdm
        with progress.job("convert", "model.gguf"), progress.tqdm_through(gguf_utils.__name__, "convert"):
            assert list(gguf_utils.tqdm(range(50), desc="Converting")) == list(range(50))
        assert gguf_utils.tqdm is original  # put back after the job
    finally:
        progress.set_progress_listener(previous)
    assert [e.phase for e in events] == ["start", *["step"] * 50, "end"] and events[-2].done == events[-2].total == 50
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines[0] == "converting model.gguf ..." and lines[-1].startswith("converted model.gguf in ")
    steps = [line for line in lines if line.startswith("convert ")]
    assert 3 <= len(steps) <= 12 and steps[-1].startswith("convert 50/50 tensors") and "\r" not in err
