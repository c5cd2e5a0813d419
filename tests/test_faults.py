"""Faults and lost work in `szoq finetune`: resume before the first checkpoint, Ctrl-C, divergence.

Real runs of the tiny model (quant none) through the real entry point.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import assert_one_line_error
from szoq_hub.training.finetune import finetune
from szoq_hub.training.run_folder import CHECKPOINT_FILE
from conftest import tiny_finetune_config as _config


class _Stop(Exception):
    pass


def cli_args(model, mask, train, out, *extra) -> list[str]:
    """The CLI form of test_finetune._config(...) (a custom task) with the given extra options."""
    return ["finetune", "--model", str(model), "--mask", str(mask), "--train", str(train), "--template", "{text} It was",
            "--labels", "0=bad,1=good", "--quant", "none", "--batch-size", "4", "--eval-every", "3", "--train-samples", "12",
            "--dev-samples", "4", "--eval-samples", "4", "--no-dev-baseline", "--out", str(out), *extra]


def step_lines(path: Path) -> list[int]:
    return [json.loads(l)["step"] for l in path.read_text().splitlines() if json.loads(l)["kind"] == "step"]


def stopped_run(model, mask, train, out, *, steps: int, save_every: int, stop_at: int) -> None:
    """A run killed right after step `stop_at` (what a crash or kill -9 leaves behind)."""
    def stop(event):
        if event["kind"] == "step" and event["step"] == stop_at:
            raise _Stop
    with pytest.raises(_Stop):
        finetune(_config(model, mask, train, out, steps=steps, save_every=save_every), progress=stop)


def test_resume_before_the_first_checkpoint_says_so_and_keeps_the_log(tiny_model_dir, tiny_mask, train_file, tmp_path, run_cli):  # noqa: F811
    out = tmp_path / "run"
    stopped_run(tiny_model_dir, tiny_mask, train_file, out, steps=6, save_every=100, stop_at=4)
    assert not (out / CHECKPOINT_FILE).exists() and step_lines(out / "metrics.jsonl") == [0, 1, 2, 3]
    code, _, err = run_cli(*cli_args(tiny_model_dir, tiny_mask, train_file, out, "--steps", "6", "--save-every", "100", "--resume"))
    assert code == 0, err
    assert "has no checkpoint yet" in err and "starting again from step 0" in err and "4 logged steps are redone" in err
    assert step_lines(out / "metrics.redone.jsonl") == [0, 1, 2, 3]  # set aside, not lost
    assert step_lines(out / "metrics.jsonl") == list(range(6))


def test_a_real_resume_says_where_it_resumes(tiny_model_dir, tiny_mask, train_file, tmp_path, run_cli):  # noqa: F811
    out = tmp_path / "run"
    stopped_run(tiny_model_dir, tiny_mask, train_file, out, steps=6, save_every=3, stop_at=5)
    code, _, err = run_cli(*cli_args(tiny_model_dir, tiny_mask, train_file, out, "--steps", "6", "--save-every", "3", "--resume"))
    assert code == 0, err
    assert "resuming" in err and "from its checkpoint at step 3 of 6" in err and "2 logged steps are redone" in err
    assert step_lines(out / "metrics.jsonl") == list(range(6))


def test_ctrl_c_says_where_it_stopped_and_how_to_continue(tiny_model_dir, tiny_mask, train_file, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    # A background child of a non-interactive shell inherits SIGINT as ignored: a new session
    # gives it the default handler, as a terminal would (see FINDINGS.md).
    proc = subprocess.Popen([sys.executable, "-m", "szoq_cli", *cli_args(tiny_model_dir, tiny_mask, train_file, out, "--steps", "5000", "--save-every", "2")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / CHECKPOINT_FILE).exists() and len(step_lines(out / "metrics.jsonl")) >= 3:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert_one_line_error(1, err, "interrupted at step", "the checkpoint at step", str(out))
    hint = next(l for l in err.splitlines() if l.startswith("hint:"))
    assert "--resume" in hint and str(out) in hint


def test_ctrl_c_before_the_first_checkpoint_says_there_is_none(tiny_model_dir, tiny_mask, train_file, tmp_path):  # noqa: F811
    from szoq_hub.core.errors import Interrupted

    def ctrl_c(event):
        if event["kind"] == "step" and event["step"] == 2:
            raise KeyboardInterrupt
    with pytest.raises(Interrupted, match="interrupted at step 2 of 6, before the first checkpoint") as info:
        finetune(_config(tiny_model_dir, tiny_mask, train_file, tmp_path / "run", save_every=100), progress=ctrl_c)
    assert isinstance(info.value, KeyboardInterrupt) and "--resume" in info.value.hint


def test_divergence_hint_works_as_written(tiny_model_dir, tiny_mask, train_file, tmp_path, run_cli):  # noqa: F811
    out = tmp_path / "run"
    args = cli_args(tiny_model_dir, tiny_mask, train_file, out, "--steps", "3", "--save-every", "100")
    code, _, err = run_cli(*args, "--lr", "1e30")
    assert_one_line_error(code, err, "non-finite")
    hint = next(l for l in err.splitlines() if l.startswith("hint:"))
    assert "no checkpoint was written" in hint and "the last checkpoint is intact" not in hint
    # Do what the hint says: the suggested --lr and --out, everything else as before.
    lr = re.search(r"--lr (\S+)\)", hint).group(1)
    new_out = re.search(r"--out (\S+)$", hint).group(1)
    args[args.index("--out") + 1] = new_out
    code, _, err = run_cli(*args, "--lr", lr)
    assert code == 0, err
    assert (Path(new_out) / "delta.safetensors").is_file()


def test_checkpoints_by_time_as_well_as_by_steps_and_the_resume_is_exact(tiny_model_dir, tiny_mask, train_file, tmp_path):  # noqa: F811
    """--save-every-minutes: a stopped run keeps what the last timed checkpoint held (a clock that
    moves 20 s per step, a checkpoint every half minute), and continuing it is bit-identical."""
    import torch
    from safetensors import safe_open

    from szoq_hub.training.config import FinetuneConfig
    from test_finetune import _delta_values

    assert FinetuneConfig().save_every_minutes == 10.0  # on by default
    kw = dict(steps=6, save_every=100, eval_every=0, quant="nf4")
    straight = finetune(_config(tiny_model_dir, tiny_mask, train_file, tmp_path / "straight", **kw))
    now = {"t": 0.0}

    def tick_then_stop(event):
        if event["kind"] == "step":
            now["t"] += 20.0
            if event["step"] == 5:
                raise _Stop

    for minutes, want in ((0.0, None), (0.5, "4")):  # 0: by steps only (none before step 100)
        out = tmp_path / f"timed-{minutes}"
        with pytest.raises(_Stop):
            finetune(_config(tiny_model_dir, tiny_mask, train_file, out, save_every_minutes=minutes, **kw), progress=tick_then_stop,
                     clock=lambda: now["t"])
        if want is None:
            assert not (out / CHECKPOINT_FILE).exists()
            continue
        with safe_open(str(out / CHECKPOINT_FILE), framework="pt") as fh:
            assert fh.metadata()["step"] == want  # steps 2 and 4 were 40 s after the last checkpoint
        resumed = finetune(_config(tiny_model_dir, tiny_mask, train_file, out, **kw), resume=True)  # the default minutes: may differ
        assert resumed.resumed_from == 4
        a, b = _delta_values(tmp_path / "straight"), _delta_values(out)
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
        assert resumed.eval_metric == straight.eval_metric
