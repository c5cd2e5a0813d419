"""Selection, the artifact format, verification and diff (library level, no model needed)."""

from __future__ import annotations

import json
import math
import struct

import pytest
import torch
from safetensors.torch import save_file

from szoq_hub.core.errors import ConfigError, FingerprintMismatch, MaskError
from szoq_hub.masks.artifact import MaskConfig, load_mask, read_header, save_mask
from szoq_hub import SensitivityMask
from szoq_hub.masks.diff import diff_masks
from szoq_hub.masks.selection import select, top_k_flat

SHAPES = {"a.weight": [8, 16], "b.weight": [4, 4], "c.weight": [3, 5]}


def make_config(**kw) -> MaskConfig:
    base = dict(base_model="org/model", base_revision=None, fingerprint="f" * 64, density=0.1, scope="per-matrix",
                scorer="fisher", shapes=SHAPES, calibration={"source": "x.txt", "samples": 2}, created_at="2026-01-01T00:00:00+00:00")
    base.update(kw)
    return MaskConfig(**base)


def make_mask(indices: dict[str, list[int]], **kw) -> SensitivityMask:
    return SensitivityMask({n: torch.tensor(v, dtype=torch.int32) for n, v in indices.items()}, make_config(**kw))


def test_top_k_breaks_ties_by_lowest_index():
    scores = torch.tensor([1.0, 5.0, 3.0, 3.0, 3.0, 0.0])
    assert top_k_flat(scores, 3).tolist() == [1, 2, 3]
    assert top_k_flat(scores, 1).tolist() == [1]
    assert top_k_flat(scores, 6).tolist() == list(range(6))


def test_per_matrix_selection_counts_and_order():
    gen = torch.Generator().manual_seed(0)
    scores = {n: torch.rand(s, generator=gen) for n, s in SHAPES.items()}
    picked = select(scores, 0.05, "per-matrix")
    for name, shape in SHAPES.items():
        k = max(1, math.floor(math.prod(shape) * 0.05))
        idx = picked[name]
        assert idx.dtype == torch.int32 and idx.numel() == k
        assert torch.equal(idx, idx.sort().values)
        # exactly the k best of this matrix
        assert torch.equal(idx.long(), scores[name].flatten().topk(k).indices.sort().values)


def test_global_selection_matches_full_sort():
    gen = torch.Generator().manual_seed(1)
    scores = {n: torch.rand(s, generator=gen) * (i + 1) for i, (n, s) in enumerate(SHAPES.items())}
    picked = select(scores, 0.1, "global")
    total = sum(math.prod(s) for s in SHAPES.values())
    k = math.floor(total * 0.1)
    assert sum(t.numel() for t in picked.values()) == k
    flat = torch.cat([s.flatten() for s in scores.values()])
    threshold = flat.topk(k).values.min()
    for name, idx in picked.items():
        assert bool((scores[name].flatten()[idx.long()] >= threshold).all())


def test_global_selection_ties_are_deterministic():
    scores = {n: torch.ones(s) for n, s in SHAPES.items()}
    picked = select(scores, 0.1, "global")
    k = math.floor(sum(math.prod(s) for s in SHAPES.values()) * 0.1)
    # all tied: the first tensor in order gets them, lowest indices first
    assert list(picked) == ["a.weight"] and picked["a.weight"].tolist() == list(range(k))


@pytest.mark.parametrize("density", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_density_outside_open_interval_is_refused(density):
    with pytest.raises(ConfigError, match="density"):
        select({"a": torch.rand(4)}, density)


@pytest.mark.parametrize("scope", ["per-matrix", "global"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_scores_are_refused_not_silently_dropped(scope, bad):
    gen = torch.Generator().manual_seed(0)
    scores = {n: torch.rand(s, generator=gen) for n, s in SHAPES.items()}
    scores["b.weight"][1, 2] = bad  # one overflowed score used to empty b (global: the whole mask)
    with pytest.raises(MaskError, match=r"1 of 16 scores of b.weight are NaN or infinite") as info:
        select(scores, 0.1, scope)
    assert "fp32" in info.value.hint


def test_flat_indices_beyond_int32_are_refused_before_the_cast(tmp_path):
    huge = torch.zeros(1).expand(2**31 + 5)  # [2^31 + 5] without the memory (stride 0)
    with pytest.raises(MaskError, match=r"2147483653 elements: its flat indices do not fit the mask format's int32"):
        select({"huge.weight": huge, "a.weight": torch.rand(4)}, 0.5, "per-matrix")
    with pytest.raises(MaskError, match="int32"):
        save_mask(make_mask({"a.weight": [1]}, shapes={"a.weight": [2**16, 2**15 + 1]}), tmp_path / "m")


def test_empty_target_selection_is_refused():
    with pytest.raises(MaskError, match="no weights to score"):
        select({}, 0.1, "global")


def test_zero_weight_mask_is_refused_on_save_and_load(tmp_path):
    empty = make_mask({})
    with pytest.raises(MaskError, match="0 weights"):
        save_mask(empty, tmp_path / "m")
    folder = save_mask(make_mask({"a.weight": [1]}), tmp_path / "ok")  # then empty its tensor file by hand
    from szoq_hub.masks.artifact import write_safetensors

    meta = read_header(folder / "mask.safetensors")
    write_safetensors({"a.weight": torch.zeros(0, dtype=torch.int32)}, folder / "mask.safetensors", meta)
    with pytest.raises(MaskError, match="selects 0 weights"):
        load_mask(folder)


def test_artifact_round_trip(tmp_path):
    mask = make_mask({"a.weight": [0, 5, 127], "b.weight": [3], "c.weight": [0, 14]})
    folder = save_mask(mask, tmp_path / "m")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "mask.safetensors", "mask_config.json"]
    loaded = load_mask(folder)
    assert loaded.indices.keys() == mask.indices.keys()
    for n in mask.indices:
        assert torch.equal(loaded.indices[n], mask.indices[n])
    assert loaded.config.shapes == SHAPES and loaded.config.fingerprint == "f" * 64
    header = read_header(folder / "mask.safetensors")
    assert header["format"] == "szoq.mask" and header["format_version"] == "1"
    assert json.loads(header["shapes"]) == SHAPES
    assert all(isinstance(v, str) for v in header.values())
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: szoq" in card and "sensitivity-mask" in card
    assert "base_model: org/model" in card


def test_save_refuses_non_empty_target(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "keep.txt").write_text("precious")
    with pytest.raises(MaskError, match="not empty"):
        save_mask(make_mask({"a.weight": [1]}), tmp_path / "m")
    assert (tmp_path / "m" / "keep.txt").read_text() == "precious"


def _write_raw(folder, tensors, config=None):
    folder.mkdir(parents=True, exist_ok=True)
    config = config or make_config()
    save_file(tensors, str(folder / "mask.safetensors"), metadata=config.header())
    return folder


@pytest.mark.parametrize(
    "tensors, problem",
    [
        ({"a.weight": torch.tensor([3, 1], dtype=torch.int32)}, "unsorted"),
        ({"a.weight": torch.tensor([1, 1], dtype=torch.int32)}, "duplicate"),
        ({"a.weight": torch.tensor([1, 128], dtype=torch.int32)}, "out of range"),
        ({"a.weight": torch.tensor([-1, 2], dtype=torch.int32)}, "out of range"),
        ({"a.weight": torch.tensor([1, 2], dtype=torch.int64)}, "int32"),
        ({"zzz.weight": torch.tensor([1], dtype=torch.int32)}, "no recorded shape"),
    ],
)
def test_invalid_indices_are_refused_naming_the_tensor(tmp_path, tensors, problem):
    folder = _write_raw(tmp_path / "bad", tensors)
    with pytest.raises(MaskError) as info:
        load_mask(folder)
    assert problem in info.value.message and next(iter(tensors)) in info.value.message
    assert info.value.hint


def test_truncated_and_corrupt_files_are_refused(tmp_path):
    folder = save_mask(make_mask({"a.weight": list(range(0, 120, 3))}), tmp_path / "m")
    path = folder / "mask.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])  # cut the tensor data
    with pytest.raises(MaskError, match="corrupt or truncated"):
        load_mask(folder)
    path.write_bytes(data[:5])  # cut inside the length prefix
    with pytest.raises(MaskError, match="not a readable safetensors"):
        load_mask(folder)
    path.write_bytes(struct.pack("<Q", 10) + b"{not json}")
    with pytest.raises(MaskError, match="not a readable safetensors"):
        load_mask(folder)


def test_foreign_safetensors_is_not_a_mask(tmp_path):
    (tmp_path / "x").mkdir()
    save_file({"w": torch.zeros(2)}, str(tmp_path / "x" / "mask.safetensors"), metadata={"format": "pt"})
    with pytest.raises(MaskError, match="not a szoq mask"):
        load_mask(tmp_path / "x")


def test_config_file_must_agree_with_header(tmp_path):
    folder = save_mask(make_mask({"a.weight": [1]}), tmp_path / "m")
    cfg = json.loads((folder / "mask_config.json").read_text())
    cfg["fingerprint"] = "0" * 64
    (folder / "mask_config.json").write_text(json.dumps(cfg))
    with pytest.raises(MaskError, match="does not match"):
        load_mask(folder)


def test_fingerprint_mismatch(tmp_path):
    folder = save_mask(make_mask({"a.weight": [1]}), tmp_path / "m")
    assert load_mask(folder, fingerprint="f" * 64).nnz == 1
    with pytest.raises(FingerprintMismatch, match="built for org/model"):
        load_mask(folder, fingerprint="e" * 64)


def test_diff_on_known_overlap():
    a = make_mask({"a.weight": [0, 1, 2, 3], "b.weight": [5, 6]})
    b = make_mask({"a.weight": [2, 3, 4], "c.weight": [7]})
    d = diff_masks(a, b)
    assert (d.shared, d.nnz_a, d.nnz_b) == (2, 6, 4)
    assert d.jaccard == pytest.approx(2 / 8)
    assert d.recall == pytest.approx(2 / 6)
    per = {x.name: x for x in d.layers}
    assert (per["a.weight"].shared, per["a.weight"].jaccard) == (2, pytest.approx(2 / 5))
    assert per["b.weight"].shared == 0 and per["c.weight"].nnz_a == 0
    assert diff_masks(a, a).jaccard == 1.0 and diff_masks(a, a).recall == 1.0


@pytest.mark.parametrize("n, k, chunk", [(1000, 7, 64), (1000, 300, 64), (1000, 999, 128), (4096, 5, 4096), (777, 100, 50)])
def test_top_k_flat_in_chunks_matches_the_reference_order(n, k, chunk):
    """Chunked selection keeps the k largest, ties to the lowest index, exactly as a full sort
    by (-score, index) does, whatever the chunk size (scores drawn from few values: many ties)."""
    g = torch.Generator().manual_seed(n + k + chunk)
    scores = torch.randint(0, 9, (n,), generator=g).float() / 8  # [n], ~n/9 entries per value
    reference = sorted(range(n), key=lambda i: (-float(scores[i]), i))[:k]
    got = top_k_flat(scores, k, chunk=chunk)
    assert got.tolist() == sorted(reference)
    assert torch.equal(got, top_k_flat(scores, k, chunk=n))
