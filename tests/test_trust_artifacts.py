"""Issue 21, artifacts: content hashes on masks and deltas, header numbers in range, a config
whose format disagrees, hostile delta settings, byte-reproducible deltas, damaged metrics."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
import torch

from conftest import assert_one_line_error
from szoq_hub.core.errors import ConfigError, MaskError
from szoq_hub.core.schema import read_header
from szoq_hub.data.checkpoint import write_tensors
from szoq_hub.masks.artifact import CONFIG_FILE, MASK_FILE, load_mask
from szoq_hub.methods.sparse.config import DELTA_FILE
from szoq_hub.methods.sparse.delta import load_delta, save_delta, trained_mask_ref
from szoq_hub.methods.sparse.setup import delta_origin
from conftest import tiny_finetune_config as _config
from test_hub import make_mask


def body_flip(path: Path, offset_from_end: int = 1, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 1 << bit
    path.write_bytes(bytes(data))


def rewrite_meta(path: Path, restamp: bool = False, **changes) -> None:
    """Rewrite a safetensors header's metadata, keeping the tensors (None removes a key).

    `restamp`: record the content hash of the edited file (as a forger would), so that the checks
    behind the hash are reached.
    """
    from safetensors.torch import load_file

    from szoq_hub.core import content

    meta = read_header(path).metadata
    for k, v in changes.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    tensors = load_file(str(path))
    if restamp:
        meta = content.stamp(meta, tensors)
    write_tensors(path, [(n, tensors[n]) for n in sorted(tensors)], dict(sorted(meta.items())))


# -- masks -----------------------------------------------------------------------------------
def test_mask_records_a_content_hash_and_any_index_change_is_refused(tmp_path):
    folder = make_mask(tmp_path / "m")
    meta = read_header(folder / MASK_FILE).metadata
    assert len(meta["content_sha256"]) == 64
    assert json.loads((folder / CONFIG_FILE).read_text())["content_sha256"] == meta["content_sha256"]
    assert load_mask(folder).config.content_sha256 == meta["content_sha256"]
    # other indices, still sorted, unique and in range, under the same header: only the hash can tell
    from safetensors.torch import load_file

    tensors = load_file(str(folder / MASK_FILE))
    name = sorted(tensors)[0]
    tensors[name] = torch.unique(torch.cat([tensors[name][1:], tensors[name][:1] + 1])).to(torch.int32)
    write_tensors(folder / MASK_FILE, [(n, tensors[n]) for n in sorted(tensors)], meta)
    with pytest.raises(MaskError, match="content sha256"):
        load_mask(folder)


def test_a_mask_written_before_content_hashes_still_loads_and_show_says_so(tmp_path, run_cli):
    folder = make_mask(tmp_path / "m")
    rewrite_meta(folder / MASK_FILE, content_sha256=None, hash_scheme=None)  # as szoq 0.1.0 wrote it
    (folder / CONFIG_FILE).unlink()
    assert load_mask(folder).config.content_sha256 == ""
    code, out, err = run_cli("mask", "show", folder)
    assert code == 0, err
    assert "written before szoq recorded content hashes" in " ".join(out.split())


def test_the_builtin_mask_has_no_hash_and_still_loads(run_cli):
    from szoq_hub.masks.catalog import builtin_masks

    mask = load_mask(builtin_masks()[0].path)
    assert mask.config.content_sha256 == "" and mask.nnz > 0


@pytest.mark.parametrize("key,value", [
    ("stats", json.dumps({"captured_share": -1})), ("stats", json.dumps({"captured_share": 1e308})),
    ("calibration", json.dumps({"samples": -1})), ("scorer", "Infinity"), ("scorer", "nan"),
    ("created_at", "[1,2]"), ("content_sha256", "xyz"),
])
def test_header_numbers_out_of_range_are_refused(key, value, tmp_path):
    folder = make_mask(tmp_path / "m")
    (folder / CONFIG_FILE).unlink()
    rewrite_meta(folder / MASK_FILE, **{key: value})
    with pytest.raises(MaskError, match=key):
        load_mask(folder)


@pytest.mark.parametrize("key,value", [("format", "szoq.delta"), ("format_version", "9")])
def test_a_config_whose_format_disagrees_with_the_header_is_refused(key, value, tmp_path):
    folder = make_mask(tmp_path / "m")
    config = json.loads((folder / CONFIG_FILE).read_text())
    config[key] = value
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(MaskError, match=f"{key} differs"):
        load_mask(folder)


# -- deltas ----------------------------------------------------------------------------------
def small_delta(folder: Path, settings: dict | None = None) -> Path:
    tensors = {"b.weight": torch.tensor([0.5, -1.0]), "a.weight": torch.tensor([0.25, 2.0, 3.0])}
    return save_delta(folder, tensors, mask_sha256="a" * 64, fingerprint="b" * 64, base_model="org/m", settings=settings)


def test_delta_values_carry_a_content_hash_every_bit_flip_is_refused(tmp_path):
    path = small_delta(tmp_path / "d")
    assert len(read_header(path).metadata["content_sha256"]) == 64
    load_delta(path)
    for i in range(8):  # one bit of each kind: mantissa, exponent, sign; all still finite
        flipped = tmp_path / f"flip{i}" / DELTA_FILE
        flipped.parent.mkdir()
        flipped.write_bytes(path.read_bytes())
        body_flip(flipped, offset_from_end=1 + i // 2, bit=[0, 3, 5, 6, 1, 2, 4, 0][i])
        with pytest.raises(MaskError):
            load_delta(flipped)


def test_the_same_delta_is_written_byte_for_byte(tmp_path):
    a = small_delta(tmp_path / "a", {"lr": 1e-3, "task": "sst2", "seed": 0, "mask": "m"})
    b = small_delta(tmp_path / "b", {"mask": "m", "seed": 0, "task": "sst2", "lr": 1e-3})
    assert hashlib.sha256(a.read_bytes()).hexdigest() == hashlib.sha256(b.read_bytes()).hexdigest()
    raw = a.read_bytes()
    header = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
    assert list(header) == sorted(header) and list(header["__metadata__"]) == sorted(header["__metadata__"])


def test_two_identical_runs_write_the_same_delta_file(tiny_model_dir, tiny_mask, train_jsonl, tmp_path):  # noqa: F811
    from szoq_hub.training.finetune import finetune

    shas = []
    for first in ("one", "two"):  # same folder name: the header records it (as a name, never a path)
        finetune(_config(tiny_model_dir, tiny_mask, train_jsonl, tmp_path / first / "run", steps=2, eval_every=0, save_every=2))
        shas.append(hashlib.sha256((tmp_path / first / "run" / DELTA_FILE).read_bytes()).hexdigest())
    assert shas[0] == shas[1]


@pytest.mark.parametrize("settings", ["[]", "[" * 50_000, "7", '"x"', json.dumps({"model": [1], "mask_ref": {"a": 1}})])
def test_hostile_delta_settings_are_clean_errors(settings, run_dir, tiny_model_dir, tiny_mask, tmp_path, run_cli):  # noqa: F811
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "finetune_config.json").unlink()
    rewrite_meta(run / DELTA_FILE, restamp=True, settings=settings)  # hashed again: the checks behind the hash are what is tried
    assert delta_origin(run) in ((None, None), (None, trained_mask_ref(read_header(run / DELTA_FILE).metadata)))
    assert isinstance(trained_mask_ref(read_header(run / DELTA_FILE).metadata), str)
    if settings.startswith("{"):  # a JSON object with odd values: loads (no names are taken from it)
        load_delta(run)
        return
    with pytest.raises(MaskError, match="settings|not valid JSON"):
        load_delta(run)
    code, _, err = run_cli("merge", "--delta", run, "--model", tiny_model_dir, "--mask", tiny_mask, "--out", tmp_path / "merged")
    assert code == 2, err
    assert_one_line_error(code, err)
    assert not (tmp_path / "merged").exists()


# -- metrics for `szoq plot` -----------------------------------------------------------------
@pytest.mark.parametrize("line", ["[1,2]", '{"kind":"step","step":"x","loss":1}', '{"kind":"step","step":1,"loss":"nan"}',
                                  "[" * 50_000 + "]" * 50_000, '{"kind":"final","metric":[1],"eval_metric":0.5}', "7"])
def test_damaged_metrics_are_a_clean_error_for_plot(line, tmp_path, run_cli):
    run = tmp_path / "run"
    run.mkdir()
    good = '{"kind":"step","step":0,"loss":0.7}'
    (run / "metrics.jsonl").write_text("\n".join([good, line, good]) + "\n")
    code, _, err = run_cli("plot", run, "--out", tmp_path / "p.png")
    assert_one_line_error(code, err, "metrics.jsonl line 2")
    assert code == 2
    from szoq_hub.export.plots import read_metrics

    with pytest.raises(ConfigError):
        read_metrics(run)


def test_metrics_with_a_cut_last_line_and_unknown_kinds_still_plot(tmp_path, run_cli):
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"kind": "step", "step": i, "loss": 1.0 / (i + 1)} for i in range(4)] + [{"kind": "eval", "step": 2, "split": "dev", "acc": 0.5}]
    rows += [{"kind": "something-new", "x": [1]}, {"kind": "eval", "step": 4, "split": "dev", "acc": "n/a"}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"kind": "st')
    code, _, err = run_cli("plot", run, "--out", tmp_path / "p.png")
    assert code == 0, err
    assert (tmp_path / "p.png").stat().st_size > 0
