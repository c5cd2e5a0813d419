"""Scores travel with the mask: the kept weights' Σg² as `scores/NAME` tensors of a fisher mask."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from szoq_hub.core import schema
from szoq_hub.core.errors import MaskError
from szoq_hub.runtime.zo_config import SCORES_C
from szoq_hub.training.lr_scores import lr_of_mask
from szoq_hub.masks.artifact import MaskConfig, load_mask, read_header, save_mask, write_safetensors
from szoq_hub import SensitivityMask
from szoq_hub.masks.selection import StreamingSelector

SHAPES = {"a.weight": [8, 16], "b.weight": [4, 4]}
BUILTIN = Path(__file__).resolve().parents[1] / "masks" / "smollm2-135m-instruct"


def make_config(**kw) -> MaskConfig:
    base = dict(base_model="org/model", base_revision=None, fingerprint="f" * 64, density=0.1, scope="per-matrix",
                scorer="fisher", shapes=SHAPES, calibration=None, created_at="2026-01-01T00:00:00+00:00")
    return MaskConfig(**{**base, **kw})


def scored_mask() -> SensitivityMask:
    indices = {"a.weight": torch.tensor([0, 5, 127], dtype=torch.int32), "b.weight": torch.tensor([3], dtype=torch.int32)}
    scores = {"a.weight": torch.tensor([0.5, 2.0, 1e-7]), "b.weight": torch.tensor([3.25])}
    return SensitivityMask(indices, make_config(), scores=scores)


def test_scores_round_trip_in_the_order_of_the_indices(tmp_path):
    mask = scored_mask()
    folder = save_mask(mask, tmp_path / "m")
    header = read_header(folder / "mask.safetensors")
    assert header["format_version"] == "2"  # a reader that knows only 1 says "upgrade" instead of misreading
    loaded = load_mask(folder)
    assert loaded.config.format_version == "2" and loaded.nnz == 4  # scores are no weights
    for n in mask.indices:
        assert torch.equal(loaded.indices[n], mask.indices[n])
        assert loaded.scores[n].dtype == torch.float32 and torch.equal(loaded.scores[n], mask.scores[n])
    assert torch.equal(loaded.flat_scores(["b.weight", "a.weight"]), torch.tensor([3.25, 0.5, 2.0, 1e-7]))
    summary = loaded.score_summary()
    assert {k: summary[k] for k in ("count", "min", "median", "max")} == {"count": 4, "min": pytest.approx(1e-7), "median": 0.5, "max": 3.25}
    assert summary["sum"] == pytest.approx(5.75) and lr_of_mask(loaded) is None  # no calibration record: no window count, no lr
    # with the window count a build records: the sum per window and the lr `--lr scores` takes, by hand (2.3e-3 / (5.75 / 8))
    chosen = lr_of_mask(SensitivityMask(mask.indices, make_config(calibration={"samples": 8, "seq_len": 16}), scores=mask.scores))
    assert chosen.windows == 8 and chosen.per_window == pytest.approx(5.75 / 8)
    assert chosen.lr == float(f"{SCORES_C / (5.75 / 8):.2g}") == 3.2e-3
    assert lr_of_mask(SensitivityMask(mask.indices, make_config(calibration={"samples": 8}))) is None  # no scores
    assert json.loads((folder / "mask_config.json").read_text())["format_version"] == "2"
    # saved again without scores: a version-1 file, as before scores existed
    plain = save_mask(SensitivityMask(loaded.indices, loaded.config), tmp_path / "plain")
    assert read_header(plain / "mask.safetensors")["format_version"] == "1" and load_mask(plain).scores is None


def test_a_flipped_score_bit_is_refused_by_the_content_hash(tmp_path):
    folder = save_mask(scored_mask(), tmp_path / "m")
    path = folder / "mask.safetensors"
    header = schema.read_header(path)
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little") + header.tensors["scores/a.weight"].offsets[0]
    data[start + 4] ^= 0x01  # lowest mantissa bit of the second score: still finite, non-negative
    path.write_bytes(bytes(data))
    with pytest.raises(MaskError, match="content sha256"):
        load_mask(folder)


def test_scores_that_do_not_fit_the_indices_are_refused(tmp_path):
    mask = scored_mask()
    mask.scores["a.weight"] = torch.tensor([1.0, 2.0])
    with pytest.raises(MaskError, match="one value per kept weight"):
        save_mask(mask, tmp_path / "short")
    mask.scores["a.weight"] = torch.tensor([1.0, -2.0, 3.0])
    with pytest.raises(MaskError, match="negative or non-finite"):
        save_mask(mask, tmp_path / "negative")
    # a file whose header holds scores but says version 1, or scores for only some tensors
    folder = save_mask(scored_mask(), tmp_path / "m")
    meta = read_header(folder / "mask.safetensors")
    tensors = {"a.weight": torch.tensor([0, 5, 127], dtype=torch.int32), "b.weight": torch.tensor([3], dtype=torch.int32),
               "scores/a.weight": torch.tensor([0.5, 2.0, 1e-7])}
    write_safetensors(tensors, folder / "mask.safetensors", {**meta, "content_sha256": ""})
    with pytest.raises(MaskError, match="one per index tensor"):
        load_mask(folder / "mask.safetensors")
    tensors["scores/b.weight"] = torch.tensor([1.0])
    write_safetensors(tensors, folder / "mask.safetensors", {**meta, "content_sha256": "", "format_version": "1"})
    with pytest.raises(MaskError, match="format_version"):
        load_mask(folder / "mask.safetensors")


def test_the_selector_keeps_the_scores_of_what_it_selects():
    torch.manual_seed(0)  # test-side data only
    scores = {"a.weight": torch.rand(8, 16), "b.weight": torch.rand(4, 4)}
    for scope in ("per-matrix", "global"):
        sel = StreamingSelector(list(scores), {n: s.numel() for n, s in scores.items()}, 0.1, scope)
        for n, s in scores.items():
            sel.add(n, s)
        indices, _, _ = sel.result()
        assert set(sel.kept_scores) == set(indices)
        for n, idx in indices.items():
            assert torch.equal(sel.kept_scores[n], scores[n].flatten()[idx.long()])


def test_fisher_builds_keep_scores_and_magnitude_builds_do_not(tiny_masks, tiny_model_dir, tmp_path):
    from szoq_hub.masks.build import MaskBuildConfig, build_mask

    mask, folder = tiny_masks(0.01)
    loaded = load_mask(folder)
    assert loaded.scores is not None and set(loaded.scores) == set(loaded.indices)
    assert all(bool((s > 0).all()) for s in loaded.scores.values())
    magnitude, mfolder = build_mask(MaskBuildConfig(model=str(tiny_model_dir), scorer="magnitude", density=0.01), tmp_path / "mag")
    assert magnitude.scores is None and load_mask(mfolder).scores is None
    assert read_header(mfolder / "mask.safetensors")["format_version"] == "1"


def test_the_builtin_mask_has_no_scores_and_still_loads():
    mask = load_mask(BUILTIN)
    assert mask.scores is None and mask.config.format_version == "1" and mask.score_summary() is None
    assert mask.flat_scores(list(mask.indices)) is None


def test_mask_show_reports_scores(run_cli, tiny_mask):
    code, out, err = run_cli("mask", "show", str(tiny_mask), "--json")
    assert code == 0, err
    summary = json.loads(out)["scores"]
    assert summary["count"] == json.loads(out)["nnz"] and 0 < summary["min"] <= summary["median"] <= summary["max"]
    windows = json.loads(out)["config"]["calibration"]["samples"]  # the lr --lr scores takes, beside the scores it comes from
    assert summary["lr_scores"]["lr"] == float(f"{SCORES_C / (summary['sum'] / windows):.2g}") and summary["lr_scores"]["windows"] == windows
    code, out, err = run_cli("mask", "show", str(tiny_mask))
    assert code == 0, err
    assert "--lr scores takes" in " ".join(out.split())
    code, out, err = run_cli("mask", "show", str(BUILTIN))
    assert code == 0, err
    assert "scores" in out and "none" in out
