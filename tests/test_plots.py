"""`szoq plot` and `szoq mask show --plot`: PNGs from real runs and masks; a clear message without matplotlib."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from conftest import assert_one_line_error
from szoq_hub.masks.artifact import load_mask
from szoq_hub.export.plots import mask_grid
from conftest import other_run

PNG = b"\x89PNG\r\n\x1a\n"


def _pixels(path: Path):
    from matplotlib.image import imread

    return imread(path)  # [H, W, 4] floats in [0, 1]


def _count_color(img, hex_color: str, tol: float = 0.06) -> int:
    rgb = [int(hex_color[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    close = (abs(img[..., 0] - rgb[0]) < tol) & (abs(img[..., 1] - rgb[1]) < tol) & (abs(img[..., 2] - rgb[2]) < tol)
    return int(close.sum())


def test_plot_overlays_several_runs(run_dir, tmp_path, run_cli):
    pytest.importorskip("matplotlib", reason="pip install 'szoq[plots]'")
    second = other_run(run_dir, tmp_path / "second")
    code, out, err = run_cli("plot", run_dir, "--out", tmp_path / "one.png")
    assert code == 0, err
    assert out.strip() == str(tmp_path / "one.png")
    code, out, err = run_cli("plot", run_dir, second, "--out", tmp_path / "two.png")
    assert code == 0, err
    assert (tmp_path / "two.png").read_bytes().startswith(PNG)
    one, two = _pixels(tmp_path / "one.png"), _pixels(tmp_path / "two.png")
    assert one.shape[0] > 300 and one.shape[1] > 800
    # matplotlib's first two colours: run 1 in both pictures, run 2 only where two runs were given
    assert _count_color(one, "#1f77b4") > 200 and _count_color(two, "#1f77b4") > 200
    assert _count_color(one, "#ff7f0e") < 20 < 200 < _count_color(two, "#ff7f0e")


def test_mask_grid_places_every_tensor_by_layer_and_projection(tiny_mask):
    mask = load_mask(tiny_mask)
    layers, projs, cells = mask_grid(mask)
    assert layers == ["0", "1"] and projs == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    name = "model.layers.1.mlp.up_proj.weight"
    cell = cells[("1", "up_proj")]
    assert cell["density"] == mask.indices[name].numel() / math.prod(mask.config.shapes[name])
    assert 0 < cell["captured_share"] <= 1 and cell["captured_share"] == mask.config.stats["captured_share_per_tensor"][name]


def test_mask_show_plot_draws_both_heatmaps(tiny_mask, tmp_path, run_cli):
    pytest.importorskip("matplotlib", reason="pip install 'szoq[plots]'")
    code, out, err = run_cli("mask", "show", tiny_mask, "--plot", tmp_path / "mask.png")
    assert code == 0, err
    assert "captured" in out and str(tmp_path / "mask.png") in err
    # the same mask without per-tensor shares (masks built before they were recorded): density only
    from dataclasses import replace

    from szoq_hub.masks.artifact import save_mask

    mask = load_mask(tiny_mask)
    stats = {k: v for k, v in mask.config.stats.items() if k != "captured_share_per_tensor"}
    old = save_mask(type(mask)(mask.indices, replace(mask.config, stats=stats)), tmp_path / "old-mask")
    code, _, err = run_cli("mask", "show", old, "--plot", tmp_path / "old.png")
    assert code == 0, err
    both, density_only = _pixels(tmp_path / "mask.png"), _pixels(tmp_path / "old.png")
    assert both.shape[1] > 1.5 * density_only.shape[1]  # a second panel
    # the share panel is viridis (its colour bar holds both ends); density is magma, near neither
    viridis_ends = [_count_color(img, "#fde725", tol=0.1) + _count_color(img, "#440154", tol=0.1) for img in (both, density_only)]
    assert viridis_ends[0] > 1000 and viridis_ends[0] > 20 * viridis_ends[1], viridis_ends


def test_plots_without_matplotlib_name_the_extra(run_dir, tiny_mask, tmp_path, run_cli, monkeypatch):
    for mod in ("matplotlib", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, mod, None)  # imports of matplotlib now fail as if it were not installed
    code, _, err = run_cli("plot", run_dir, "--out", tmp_path / "p.png")
    assert_one_line_error(code, err, "matplotlib")
    assert "pip install 'szoq[plots]'" in err
    code, _, err = run_cli("mask", "show", tiny_mask, "--plot", tmp_path / "m.png")
    assert_one_line_error(code, err, "matplotlib")
    assert "pip install 'szoq[plots]'" in err
    assert not (tmp_path / "p.png").exists() and not (tmp_path / "m.png").exists()


def test_plot_refuses_a_folder_without_metrics_and_a_non_png(run_dir, tmp_path, run_cli):
    code, _, err = run_cli("plot", tmp_path, "--out", tmp_path / "p.png")
    assert_one_line_error(code, err, "metrics.jsonl")
    pytest.importorskip("matplotlib", reason="pip install 'szoq[plots]'")
    code, _, err = run_cli("plot", run_dir, "--out", tmp_path / "p.jpg")
    assert_one_line_error(code, err, "PNG")
