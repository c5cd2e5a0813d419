"""Issue 31 (trust, third pass): one hash over what a file means, LoRA files checked against the
model before any arithmetic, resume that notices changed contents, templates and task files
validated before use, and tokens scrubbed by value. GGUF cases (4, 7, 8) live with the GGUF loader.

Each numbered case of the issue is one `error:` line and exit 2 here (or the right result where
the input is legal). A LoRA run of the tiny Llama (`--lora 4`, quant none) is built once and copied.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch

from conftest import TRAIN_ARGS, assert_one_line_error
from szoq_hub.core import content
from szoq_hub.core.errors import MaskError, TaskError, TrainingError
from szoq_hub.methods.lora.file import LORA_FILE, load_lora

Q1 = "model.layers.1.self_attn.q_proj"


# -- helpers ---------------------------------------------------------------------------------
def _config(model, train, out, **kw):
    """A few steps on the tiny rows, no mask (--lora or --dense), quant none; `kw` overrides."""
    from szoq_cli.finetune import finetune_config

    base = dict(model=str(model), task=None, train_file=str(train), template="{text} It was", labels="0=bad,1=good", quant="none",
                steps=6, batch_size=4, eval_every=3, save_every=3, train_samples=12, dev_samples=4, eval_samples=4, out=str(out))
    return finetune_config({**base, **kw})


def split(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def write(path: Path, header: dict, body: bytes) -> None:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)


def edit_header(path: Path, edit, *, restamp: bool = False) -> None:
    """Apply `edit(header)` to a safetensors header (tensor data unchanged). `restamp`: then record
    the content hash of the edited file, as a forger would, so the checks behind the hash are reached."""
    header, body = split(path)
    edit(header)
    write(path, header, body)
    if restamp:
        from safetensors.torch import load_file

        header, body = split(path)
        header["__metadata__"] = content.stamp(header["__metadata__"], load_file(str(path)))
        write(path, header, body)


def set_meta(**changes):
    def edit(header):
        for k, v in changes.items():
            if v is None:
                header["__metadata__"].pop(k, None)
            else:
                header["__metadata__"][k] = v
    return edit


def rename_tensors(old: str, new: str):
    def edit(header):
        for key in [k for k in header if k.startswith(old + ".")]:
            header[new + key[len(old):]] = header.pop(key)
    return edit


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, train_jsonl, tmp_path_factory) -> Path:
    from szoq_hub import finetune

    out = tmp_path_factory.mktemp("lora-31") / "run"
    finetune(_config(tiny_model_dir, train_jsonl, out, lora=4, steps=4, eval_every=2, save_every=2))
    return out


@pytest.fixture
def run(lora_run, tmp_path) -> Path:
    return Path(shutil.copytree(lora_run, tmp_path / "run"))


def raises(error, needle: str, tmp_path: Path, fn, *args, **kwargs):
    """`fn` raises `error` whose message holds `needle` outside the test's temp path (test names are in it)."""
    with pytest.raises(error) as exc:
        fn(*args, **kwargs)
    assert needle in exc.value.message.replace(str(tmp_path), "TMP"), exc.value.message
    return exc.value


def one_line(code: int, err: str, tmp_path: Path, *needles: str) -> None:
    """`assert_one_line_error`, with the temp path (which holds the test's name) taken out first."""
    assert_one_line_error(code, err.replace(str(tmp_path), "TMP"), *needles)


def refused_everywhere(run_cli, run: Path, tmp_path: Path, train: Path, *needles: str, commands=("merge", "export", "eval")) -> None:
    """merge, export peft and eval of `run` each print one `error:` line (with the needles) and exit 2, writing nothing."""
    for command in commands:
        if command == "export":
            pytest.importorskip("peft")
            args = ["export", "peft", "--delta", run, "--out", tmp_path / "adapter"]
        elif command == "merge":
            args = ["merge", "--delta", run, "--out", tmp_path / "merged"]
        else:
            args = ["eval", "--delta", run, "--train", train, *TRAIN_ARGS, "--eval-samples", "4", "--dtype", "fp32", "--quant", "none"]
        code, _, err = run_cli(*args)
        assert code == 2, (command, err)
        one_line(code, err, tmp_path, *needles)
    assert not (tmp_path / "merged").exists() and not (tmp_path / "adapter").exists()


# -- the hash scheme -------------------------------------------------------------------------
def test_every_artifact_records_scheme_2_and_any_header_field_is_covered(lora_run, run_dir, tiny_mask):
    from szoq_hub.core.schema import read_header

    for path in (lora_run / LORA_FILE, run_dir / "delta.safetensors", tiny_mask / "mask.safetensors"):
        meta = read_header(path).metadata
        assert meta["hash_scheme"] == "2" and len(meta["content_sha256"]) == 64
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        assert content.content_sha256(meta, tensors) == meta["content_sha256"]
        for key in meta:  # every field but the hash itself changes the hash
            if key != "content_sha256":
                assert content.content_sha256({**meta, key: meta[key] + "x"}, tensors) != meta["content_sha256"], key
        renamed = {("x" + n): t for n, t in tensors.items()}
        assert content.content_sha256(meta, renamed) != meta["content_sha256"]  # names are covered, not only bytes


def test_old_files_still_verify_scheme_1_and_hashless(tmp_path, caplog):
    """A scheme-1 file (tensor bytes only) verifies; a hashless 0.1.0 mask or delta loads with a warning;
    the built-in mask (0.1.0, no hash) loads."""
    from szoq_hub.masks.artifact import load_mask
    from szoq_hub.masks.catalog import builtin_masks
    from szoq_hub.methods.sparse.delta import load_delta, save_delta

    path = save_delta(tmp_path / "d", {"a.weight": torch.tensor([1.0, 2.0])}, mask_sha256="a" * 64, fingerprint="b" * 64, base_model="m")
    from safetensors.torch import load_file

    v1 = content.tensors_sha256(load_file(str(path)))
    edit_header(path, set_meta(hash_scheme=None, content_sha256=v1))
    assert load_delta(path).tensors["a.weight"].tolist() == [1.0, 2.0]
    edit_header(path, set_meta(content_sha256="0" * 64))
    raises(MaskError, "content sha256", tmp_path, lambda: load_delta(path))
    edit_header(path, set_meta(content_sha256=None))
    caplog.set_level(logging.WARNING)
    load_delta(path)
    assert "records no content hash" in caplog.text
    caplog.clear()
    mask = load_mask(builtin_masks()[0].path)  # no hash, but the catalog pins its file sha256: checked, no warning
    assert mask.nnz > 0 and mask.config.content_sha256 == ""
    assert "records no content hash" not in caplog.text


def test_a_mask_whose_hash_was_stripped_but_its_config_keeps_it_is_refused(tiny_mask, tmp_path):
    from szoq_hub.masks.artifact import load_mask

    folder = Path(shutil.copytree(tiny_mask, tmp_path / "m"))
    edit_header(folder / "mask.safetensors", set_meta(content_sha256=None, hash_scheme=None))
    raises(MaskError, "stripped", tmp_path, lambda: load_mask(folder))


@pytest.mark.parametrize("edit", ["hash_scheme_dropped", "hash_scheme_1", "hash_scheme_9"])
def test_a_downgraded_hash_scheme_is_refused(edit, run):
    value = {"hash_scheme_dropped": None, "hash_scheme_1": "1", "hash_scheme_9": "9"}[edit]
    edit_header(run / LORA_FILE, set_meta(hash_scheme=value))
    with pytest.raises(MaskError):
        load_lora(run)


# -- 1. header edits: renamed modules, targets, a stripped hash -------------------------------
def test_case1_a_renamed_module_is_refused_by_merge_export_and_eval(run, tmp_path, train_jsonl, run_cli):
    edit_header(run / LORA_FILE, rename_tensors(Q1, "model.layers.1.self_attn.o_proj"))
    refused_everywhere(run_cli, run, tmp_path, train_jsonl, "content sha256")


def test_case1_a_renamed_module_with_a_forged_hash_is_refused_against_the_targets_and_the_model(run, tmp_path, train_jsonl, run_cli):
    edit_header(run / LORA_FILE, rename_tensors(Q1, "model.layers.1.self_attn.o_proj"), restamp=True)
    refused_everywhere(run_cli, run, tmp_path, train_jsonl, "o_proj")
    edit_header(run / LORA_FILE, set_meta(targets="q_proj,v_proj,o_proj"), restamp=True)  # targets that name it: the model decides
    refused_everywhere(run_cli, run, tmp_path, train_jsonl, commands=("merge", "export"))


@pytest.mark.parametrize("targets", ["k_proj", "lm_head", "mlp", "embed_tokens", "q_proj,v_proj,k_proj"])
def test_case1_header_targets_are_read_and_checked(targets, run, tmp_path, train_jsonl, run_cli):
    edit_header(run / LORA_FILE, set_meta(targets=targets))
    refused_everywhere(run_cli, run, tmp_path, train_jsonl, "content sha256", commands=("merge", "export"))
    edit_header(run / LORA_FILE, lambda h: None, restamp=True)  # forged: the targets themselves are checked
    refused_everywhere(run_cli, run, tmp_path, train_jsonl, commands=("merge", "export"))


def test_case1_a_stripped_hash_and_a_flipped_bit_are_refused(run, tmp_path, train_jsonl, run_cli):
    header, body = split(run / LORA_FILE)
    body = body[:-1] + bytes([body[-1] ^ 1])  # the last fp32 value, still finite
    header["__metadata__"].pop("content_sha256")
    header["__metadata__"].pop("hash_scheme")
    write(run / LORA_FILE, header, body)
    refused_everywhere(run_cli, run, tmp_path, train_jsonl, "no content hash")


# -- 2. numbers in range before any arithmetic ------------------------------------------------
@pytest.mark.parametrize("alpha", ["1e308", "inf", "nan", "0", "-16", "1e7", "x"])
def test_case2_alpha_out_of_range(alpha, run, tmp_path, train_jsonl, run_cli):
    edit_header(run / LORA_FILE, set_meta(alpha=alpha), restamp=True)
    refused_everywhere(run_cli, run, tmp_path, train_jsonl, "alpha")


@pytest.mark.parametrize("rank", ["0", "-1", "4.0", "99999999", ""])
def test_case2_rank_out_of_range(rank, run, tmp_path):
    edit_header(run / LORA_FILE, set_meta(rank=rank), restamp=True)
    raises(MaskError, "rank", tmp_path, lambda: load_lora(run))


# -- 5. settings that are not an object --------------------------------------------------------
@pytest.mark.parametrize("with_config", [True, False])
@pytest.mark.parametrize("settings", ["[1,2]", "42", '"x"', "[" * 50_000])
def test_case5_settings_not_an_object(settings, with_config, run, tmp_path, train_jsonl, run_cli):
    if not with_config:
        (run / "finetune_config.json").unlink()
    edit_header(run / LORA_FILE, set_meta(settings=settings), restamp=True)
    commands = ("merge", "export", "eval") if with_config else ("eval",)  # without it merge and export need --model
    refused_everywhere(run_cli, run, tmp_path, train_jsonl, "settings", commands=commands)
    if not with_config:
        for args in (["merge", "--delta", run, "--out", tmp_path / "m2"], ["export", "peft", "--delta", run, "--out", tmp_path / "a2"]):
            code, _, err = run_cli(*args)
            assert code == 2 and "settings" in err, err


# -- 6. shapes before arithmetic ---------------------------------------------------------------
def test_case6_adapter_shapes_are_checked_against_the_model_before_any_product(run, tmp_path, train_jsonl, run_cli, monkeypatch):
    from szoq_hub.methods.lora.config import LoRASettings
    from szoq_hub.methods.lora.file import save_lora

    good = load_lora(run)
    tensors = {k: v for k, v in good.tensors.items()}
    tensors[f"{Q1}.lora_A.weight"], tensors[f"{Q1}.lora_B.weight"] = torch.zeros(1, 40000), torch.zeros(40000, 1)
    for k in tensors:
        if k.endswith("lora_A.weight") and not k.startswith(Q1):
            tensors[k] = tensors[k][:1]
        elif k.endswith("lora_B.weight") and not k.startswith(Q1):
            tensors[k] = tensors[k][:, :1]
    save_lora(run / LORA_FILE, tensors, settings=LoRASettings(rank=1, alpha=16.0), fingerprint=good.fingerprint, base_model="tiny",
              run_settings=good.run_settings)
    products = []
    real_matmul = torch.Tensor.__matmul__
    monkeypatch.setattr(torch.Tensor, "__matmul__", lambda a, b: products.append(a.shape) or real_matmul(a, b))
    refused_everywhere(run_cli, run, tmp_path, train_jsonl, "shape", commands=("merge", "export"))
    assert not products  # refused before any B·A
    monkeypatch.undo()
    refused_everywhere(run_cli, run, tmp_path, train_jsonl, "shape", commands=("eval",))


# -- misleading: a damaged lora.safetensors says what is wrong with it --------------------------
@pytest.mark.parametrize("damage", ["truncated", "empty", "no header"])
def test_a_damaged_adapter_is_named_as_damaged_not_as_a_lora_run(damage, run, tmp_path, train_jsonl, run_cli):
    data = (run / LORA_FILE).read_bytes()
    (run / LORA_FILE).write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "no header": data[8:]}[damage])
    for command in ("merge", "export", "eval"):
        if command == "export":
            pytest.importorskip("peft")
        args = {"merge": ["merge", "--delta", run, "--out", tmp_path / "m"], "export": ["export", "peft", "--delta", run, "--out", tmp_path / "a"],
                "eval": ["eval", "--delta", run, "--train", train_jsonl, *TRAIN_ARGS, "--eval-samples", "4"]}[command]
        code, _, err = run_cli(*args)
        assert code == 2, err
        assert_one_line_error(code, err, "lora.safetensors")
        assert "is a --lora run" not in err and "not a sparse delta" not in err


# -- 3. resume checks contents, not names ------------------------------------------------------
class _Stop(Exception):
    pass


def _stop_after(step: int):
    def progress(event):
        if event["kind"] == "step" and event["step"] == step:
            raise _Stop
    return progress


def _scale_weights(folder: Path, factor: float) -> None:
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    save_file({k: v * factor for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


@pytest.mark.parametrize("method", ["lora", "dense"])
def test_case3_resume_refuses_a_model_whose_weights_changed(method, tiny_model_dir, train_jsonl, tmp_path, run_cli):
    from szoq_hub import finetune

    model = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    kw = dict(steps=6, save_every=3, eval_every=3, **({"lora": 4} if method == "lora" else {"dense": True}))
    config = _config(model, train_jsonl, tmp_path / "out", **kw)
    with pytest.raises(_Stop):
        finetune(config, progress=_stop_after(4))
    _scale_weights(model, 1.5)
    with pytest.raises(TrainingError, match="model changed") as exc:
        finetune(config, resume=True)
    before = json.loads((tmp_path / "out" / "finetune_config.json").read_text())["fingerprint"]
    assert before[:12] in exc.value.message and before[:12] != exc.value.message.rsplit("fingerprint ", 1)[1][:12]
    args = ["finetune", "--model", model, "--train", train_jsonl, *TRAIN_ARGS, "--quant", "none", "--steps", "6", "--batch-size", "4",
            "--eval-every", "3", "--save-every", "3", "--train-samples", "12", "--dev-samples", "4", "--eval-samples", "4",
            "--out", tmp_path / "out", "--resume", *(["--lora", "4"] if method == "lora" else ["--dense"])]
    code, _, err = run_cli(*args)
    assert code == 2
    assert_one_line_error(code, err, "model changed", before[:12])
    assert not any((tmp_path / "out" / f).exists() for f in ("lora.safetensors", "dense.safetensors"))
    _scale_weights(model, 1 / 1.5 * 1.0)  # other bytes again (rounding), still refused: contents, not names
    with pytest.raises(TrainingError, match="model changed"):
        finetune(config, resume=True)


def test_case3_resume_refuses_rows_that_changed_and_continues_when_nothing_did(tiny_model_dir, tmp_path):
    from conftest import ROWS
    from szoq_hub import finetune

    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    config = _config(tiny_model_dir, train, tmp_path / "out", lora=4, steps=6, save_every=3, eval_every=3)
    with pytest.raises(_Stop):
        finetune(config, progress=_stop_after(4))
    saved = train.read_text()
    train.write_text(saved.replace("great", "grand"))
    with pytest.raises(TrainingError, match="rows changed") as exc:
        finetune(config, resume=True)
    assert "then" in exc.value.message and "now" in exc.value.message
    train.write_text(saved)
    assert finetune(config, resume=True).resumed_from == 3


# -- 9. templates and task files ---------------------------------------------------------------
def _task(tmp_path: Path, rows: list | None = None, raw: str | None = None, template: str = "{text} It was", labels: str = "0=bad,1=good"):
    from szoq_hub.data.custom_tasks import custom_task_from
    from szoq_hub.data.tasks import Sampling, load_task

    path = tmp_path / "rows.jsonl"
    if raw is not None:
        path.write_text(raw)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in (rows or [{"text": f"row {i}", "label": i % 2} for i in range(8)])))
    task = custom_task_from(task_file=None, train_file=str(path), eval_file=None, template=template, labels=labels)
    return load_task(custom=task, sampling=Sampling(4, 0, 2))


@pytest.mark.parametrize("template", ["{text!z}", "{text:%}", "{text:>300000000}", "{text!r}", "{text.upper}", "{text[0]}", "{}", "{0}",
                                      "{text:{label}}", "{text"])
def test_case9_templates_allow_plain_field_references_only(template, tmp_path, run_cli, tiny_model_dir):
    raises(TaskError, "template", tmp_path, lambda: _task(tmp_path, template=template))
    code, _, err = run_cli("eval", "--model", tiny_model_dir, "--train", tmp_path / "rows.jsonl", "--template", template, "--labels", "0=bad,1=good")
    assert code == 2
    one_line(code, err, tmp_path, "template")


def test_case9_a_legal_template_renders_as_before(tmp_path):
    data = _task(tmp_path, template="Q: {text} {{braces}} It was")
    assert all(e.prompt.startswith("Q: row ") and e.prompt.endswith(" {braces} It was") for e in data.train)


@pytest.mark.parametrize("raw,needle", [
    ("[" * 100_000 + "\n", "line 1"),
    ('{"text": {"a": ' + "[" * 40 + "1" + "]" * 40 + '}, "label": 1}\n', "deeper"),
    ('{"text": "ok", "label": 0}\n{"text": "\\ud800 x", "label": 1}\n', "line 2"),
    ('{"text": "ok", "label": 0}\n{"text": "x", "label": null}\n', "row 2"),
    ('{"text": "ok", "label": 0}\n{"text": null, "label": 1}\n{"text": "y", "label": 1}\n', "null"),
])
def test_case9_rows_that_are_not_text_are_refused_with_their_row(raw, needle, tmp_path, run_cli, tiny_model_dir):
    raises(TaskError, needle, tmp_path, lambda: _task(tmp_path, raw=raw))
    code, _, err = run_cli("eval", "--model", tiny_model_dir, "--train", tmp_path / "rows.jsonl", *TRAIN_ARGS)
    one_line(code, err, tmp_path, needle)
    assert code == 2


def test_case9_a_surrogate_pair_is_text(tmp_path):
    rows = [{"text": "\U0001f600 smile", "label": 1}, *({"text": f"row {i}", "label": i % 2} for i in range(6))]
    raw = "".join(json.dumps(r) + "\n" for r in rows)  # json.dumps writes the emoji as the escaped pair \\ud83d\\ude00
    assert "\\ud83d\\ude00" in raw
    data = _task(tmp_path, raw=raw)
    assert any("\U0001f600" in e.prompt for e in data.train + data.dev + data.eval)


@pytest.mark.parametrize("fields,needle", [
    ({"labels": [1, 2]}, "labels"), ({"eval": 5}, "eval"), ({"template": 7}, "template"), ({"encoding": 5}, "encoding"),
    ({"train": ["a"]}, "train"), ({"label_field": None}, "label_field"), ({"labels": {"0": "bad", "1": 5}}, "labels"),
    ({"labels": {"0": "bad", "1": "bad"}}, "same verbalizer"), ({"nmae": "typo"}, "unknown key"),
])
def test_case9_every_task_file_field_is_type_checked(fields, needle, tmp_path, run_cli, tiny_model_dir):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"text": f"r{i}", "label": i % 2}) + "\n" for i in range(8)))
    task = tmp_path / "task.json"
    task.write_text(json.dumps({"train": "rows.jsonl", "template": "{text} It was", "labels": {"0": "bad", "1": "good"}, **fields}))
    from szoq_hub.data.custom_tasks import load_task_file

    raises(TaskError, needle, tmp_path, lambda: load_task_file(task))
    code, _, err = run_cli("eval", "--model", tiny_model_dir, "--task-file", task)
    assert code == 2
    one_line(code, err, tmp_path, needle)


def test_case9_a_task_file_with_a_key_twice_or_nested_too_deep_is_refused(tmp_path):
    from szoq_hub.data.custom_tasks import load_task_file

    task = tmp_path / "task.json"
    task.write_text('{"train": "r.jsonl", "template": "{text}", "labels": {"0": "bad", "0": "good", "1": "ok"}}')
    raises(TaskError, "twice", tmp_path, lambda: load_task_file(task))
    task.write_text("[" * 100_000)
    raises(TaskError, "cannot parse", tmp_path, lambda: load_task_file(task))


@pytest.mark.parametrize("labels,needle", [("0=bad,0=good", "twice"), ("1=good=x,0=bad", "second '='"), ("0=bad,1=bad", "same verbalizer")])
def test_minor_labels_given_twice_or_with_a_second_equals_are_refused(labels, needle, tmp_path, run_cli, tiny_model_dir):
    raises(TaskError, needle, tmp_path, lambda: _task(tmp_path, labels=labels))
    code, _, err = run_cli("eval", "--model", tiny_model_dir, "--train", tmp_path / "rows.jsonl", "--template", "{text}", "--labels", labels)
    one_line(code, err, tmp_path, needle)


@pytest.mark.parametrize("kind", ["folder", "fifo", "dev-zero-link", "missing", "dangling-link"])
def test_minor_a_data_path_that_is_not_a_regular_file_has_its_own_message(kind, tmp_path, run_cli, tiny_model_dir):
    path = tmp_path / "data.jsonl"
    needle = {"folder": "is a folder", "fifo": "is a FIFO", "dev-zero-link": "is a device (through a link)", "missing": "not found",
              "dangling-link": "a link to a missing file"}[kind]
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero-link":
        path.symlink_to("/dev/zero")
    elif kind == "dangling-link":
        path.symlink_to(tmp_path / "gone.jsonl")
    code, _, err = run_cli("eval", "--model", tiny_model_dir, "--train", path, *TRAIN_ARGS)
    assert code == 2
    one_line(code, err, tmp_path, needle)
    task = tmp_path / "task.json"
    task.write_text(json.dumps({"train": str(path), "template": "{text}", "labels": "0=bad,1=good"}))
    code, _, err = run_cli("eval", "--model", tiny_model_dir, "--task-file", task)
    one_line(code, err, tmp_path, needle)


# -- 10. tokens scrubbed by value --------------------------------------------------------------
FILE_TOKEN = "odd-saved-token-0123"  # not hf_-shaped: only its value can catch it


@pytest.fixture
def saved_token(hub):
    from huggingface_hub import constants

    path = Path(constants.HF_TOKEN_PATH)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(FILE_TOKEN)
    hub.add_token(FILE_TOKEN, "alice", orgs=("team",), role="write")
    yield FILE_TOKEN
    path.unlink()


@pytest.mark.parametrize("debug", [False, True])
def test_case10_a_saved_token_echoed_without_bearer_is_hidden(debug, saved_token, hub, tmp_path, run_cli, monkeypatch, caplog):
    from test_trust_hub import pushed

    repo = pushed(hub, tmp_path)
    monkeypatch.setenv("SZOQ_DEBUG", "")
    hub.faults["echo_token"] = True
    caplog.set_level(logging.DEBUG)
    code, out, err = run_cli(*(["--debug"] if debug else []), "mask", "info", repo)
    hub.faults.clear()
    text = out + err + caplog.text
    assert code != 0 and "boom" in text
    assert saved_token not in text
    if not debug:
        assert_one_line_error(code, err)


def test_case10_an_echoed_bearer_header_reads_once(hub, tmp_path, run_cli):
    from test_hub import WRITE
    from test_trust_hub import pushed

    repo = pushed(hub, tmp_path)
    hub.faults["echo_auth"] = True
    code, _, err = run_cli("mask", "info", repo, "--token", "sk-plain-value-0123")
    hub.faults.clear()
    assert code != 0 and "sk-plain-value-0123" not in err and WRITE not in err
    assert "hidden] hidden]" not in err and "Bearer [token hidden]" in err


def test_case10_scrub_reads_the_token_file_and_stored_tokens(tmp_path, monkeypatch):
    from szoq_hub.hub.scrub import scrub

    monkeypatch.setenv("HF_HOME", str(tmp_path))
    (tmp_path / "token").write_text("plain.value.99\n")
    (tmp_path / "stored_tokens").write_text("[work]\nhf_token = other:value:42\n")
    text = scrub("a plain.value.99 b other:value:42 c Bearer plain.value.99 d [work]")
    assert "plain.value.99" not in text and "other:value:42" not in text and "hidden] hidden]" not in text and "[work]" in text


# -- dense files: the same hash, settings checked before a model is chosen ----------------------
@pytest.fixture(scope="module")
def dense_run(tiny_model_dir, train_jsonl, tmp_path_factory) -> Path:
    from szoq_hub import finetune

    out = tmp_path_factory.mktemp("dense-31") / "run"
    finetune(_config(tiny_model_dir, train_jsonl, out, dense=True, steps=2, eval_every=2, save_every=2))
    return out


@pytest.mark.parametrize("damage", ["header edit", "renamed weight", "settings [1,2] rehashed", "truncated", "wrong hash, bit flipped"])
def test_a_changed_dense_file_is_refused_by_merge_and_eval(damage, dense_run, tmp_path, train_jsonl, run_cli):
    run = Path(shutil.copytree(dense_run, tmp_path / "run"))
    path = run / "dense.safetensors"
    needle = {"header edit": "content sha256", "renamed weight": "content sha256", "settings [1,2] rehashed": "settings",
              "truncated": "dense.safetensors", "wrong hash, bit flipped": ""}[damage]
    if damage == "header edit":
        edit_header(path, set_meta(base_model="someone/else"))
    elif damage == "renamed weight":  # two weights of one shape swap names
        def swap(header):
            a, b = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.o_proj.weight"
            header[a], header[b] = header[b], header[a]
        edit_header(path, swap)
    elif damage == "settings [1,2] rehashed":
        edit_header(path, set_meta(settings="[1,2]"), restamp=True)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    else:
        header, body = split(path)
        header["__metadata__"]["content_sha256"] = "0" * 64
        write(path, header, body[:-1] + bytes([body[-1] ^ 1]))
    for args in (["merge", "--delta", run, "--out", tmp_path / "merged"],
                 ["eval", "--delta", run, "--train", train_jsonl, *TRAIN_ARGS, "--eval-samples", "4"]):
        code, _, err = run_cli(*args)
        assert code == 2, err
        one_line(code, err, tmp_path, needle)
        assert "not a sparse delta" not in err
    assert not (tmp_path / "merged").exists()
