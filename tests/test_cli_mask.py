"""`szoq mask ...` end to end through the real entry point, including every bad input."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import assert_one_line_error
from szoq_hub.masks.artifact import MaskConfig, save_mask, write_safetensors
from szoq_hub import SensitivityMask


def build_cli(run_cli, model, calib, *extra):
    return run_cli("mask", "build", model, "--calibration", calib, "--samples", "4", "--seq-len", "16", *extra)


def test_build_list_show_verify_diff_rm(run_cli, tiny_model_dir, tiny_text_file):
    code, out, err = build_cli(run_cli, tiny_model_dir, tiny_text_file, "--name", "tiny")
    assert code == 0, err
    ref, path = out.strip().split("\t")
    assert ref == "tiny@v1" and path.endswith("/registry/objects/" + path.rsplit("/", 1)[1])
    code, out, err = build_cli(run_cli, tiny_model_dir, tiny_text_file, "--name", "tiny", "--scorer", "magnitude", "--json")
    assert code == 0, err
    assert json.loads(out)["ref"] == "tiny@v2"

    code, out, _ = run_cli("mask", "list", "--json")
    listed = json.loads(out)
    assert [e["ref"] for e in listed["registry"]] == ["tiny@v1", "tiny@v2"]
    assert listed["builtin"][0]["name"] == "smollm2-135m-instruct"

    code, out, _ = run_cli("mask", "show", "tiny@v1", "--json")
    shown = json.loads(out)
    assert code == 0 and shown["config"]["scorer"] == "fisher" and len(shown["layers"]) == 14
    code, out, _ = run_cli("mask", "show", "tiny")
    assert code == 0 and "magnitude" in out and "q_proj" in out

    code, out, err = run_cli("mask", "verify", "tiny@v1", "--model", tiny_model_dir)
    assert code == 0 and out.startswith("ok\t"), err

    code, out, _ = run_cli("mask", "diff", "tiny@v1", "tiny@v1", "--json")
    assert json.loads(out)["jaccard"] == 1.0
    code, out, _ = run_cli("mask", "diff", "tiny@v1", "tiny@v2")
    assert code == 0 and "jaccard" in out

    code, out, _ = run_cli("mask", "rm", "tiny@v1")
    assert code == 0 and "removed\ttiny@v1" in out
    code, out, _ = run_cli("mask", "list", "--json")
    assert [e["ref"] for e in json.loads(out)["registry"]] == ["tiny@v2"]


def test_output_options_leave_the_mask_bytes_alone(run_cli, tiny_model_dir, tiny_text_file, tmp_path, monkeypatch):
    """--out, --name, --version and --json say where the mask goes, not what it is: same bytes."""
    from szoq_hub.masks.artifact import MASK_FILE, load_mask
    from szoq_hub.core.files import file_sha256

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    (tmp_path / "empty").mkdir()  # an existing empty --out and a new one; a relative and an absolute one
    monkeypatch.chdir(tmp_path)
    runs = [("--out", "a", "--name", "first"), ("--out", str(tmp_path / "empty"), "--name", "second", "--version", "v7", "--json"),
            ("--json", "--out=deeper/c", "--name=third")]
    for extra in runs:
        code, _, err = build_cli(run_cli, tiny_model_dir, tiny_text_file, *extra)
        assert code == 0, err
    shas = {file_sha256(tmp_path / out / MASK_FILE) for out in ("a", "empty", "deeper/c")}
    assert len(shas) == 1
    recipe = load_mask(tmp_path / "a").config.command
    assert recipe == f"szoq mask build {tiny_model_dir.name} --calibration {tiny_text_file.name} --samples 4 --seq-len 16"


def test_build_mask_register_gives_the_cli_entry_and_recipe(run_cli, tiny_model_dir, tiny_text_file, tmp_path, monkeypatch):
    """`build_mask(..., register=True)` from Python registers what `szoq mask build` registers: same name,
    version, bytes, recipe (from the config, not sys.argv) and recorded options."""
    from szoq_hub import MaskBuildConfig, Registry, build_mask

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    monkeypatch.chdir(tmp_path)
    code, out, err = build_cli(run_cli, tiny_model_dir, tiny_text_file, "--density", "0.01", "--json")
    assert code == 0, err
    by_cli = Registry().get(json.loads(out)["ref"])
    Registry().remove(by_cli.ref)
    config = MaskBuildConfig(model=str(tiny_model_dir), calibration=str(tiny_text_file), samples=4, seq_len=16, density=0.01)
    monkeypatch.setattr("sys.argv", ["python", "something-else.py"])  # the recipe must not come from argv
    mask, folder = build_mask(config, register=True)
    by_api = Registry().get(mask.ref)
    assert by_api.ref == by_cli.ref == f"{tiny_model_dir.name}@v1" and folder == by_api.path
    assert by_api.sha256 == by_cli.sha256 and by_api.source == by_cli.source
    assert mask.config.command == (f"szoq mask build {tiny_model_dir.name} --calibration {tiny_text_file.name} --samples 4 --seq-len 16"
                                   " --density 0.01")
    with pytest.raises(Exception, match="name"):
        build_mask(config, register=True, name="Bad Name!")


def test_help_has_an_example_everywhere(run_cli):
    for cmd in ("build", "list", "show", "verify", "rm", "diff"):
        code, out, _ = run_cli("mask", cmd, "--help")
        assert code == 0 and "Example: szoq mask" in out, cmd


@pytest.mark.parametrize(
    "args, needles",
    [
        (["mask", "build", "no-such-model"], ["unknown model"]),
        (["mask", "build", "{tiny}", "--calibration", "{tmp}/missing.jsonl"], ["not found"]),
        (["mask", "build", "{tiny}", "--calibration", "{empty}"], ["holds no text"]),
        (["mask", "build", "{tiny}", "--calibration", "{short}", "--seq-len", "64"], ["shorter than one window"]),
        (["mask", "build", "{tiny}", "--calibration", "{calib}", "--density", "0"], ["density must be in (0, 1)"]),
        (["mask", "build", "{tiny}", "--calibration", "{calib}", "--density", "1.5"], ["density"]),
        (["mask", "build", "{tiny}", "--calibration", "{calib}", "--targets", "nothing_matches"], ["matches no parameter"]),
        (["mask", "build", "{tiny}", "--calibration", "{calib}", "--targets", "(["], ["not a valid regex"]),
        (["mask", "build", "{tiny}", "--calibration", "{calib}", "--scorer", "taylor"], ["unknown scorer"]),
        (["mask", "show", "{tmp}/corrupt"], ["corrupt or truncated"]),
        (["mask", "show", "{tmp}/unsorted"], ["unsorted", "w"]),
        (["mask", "show", "{tmp}/outofrange"], ["out of range", "w"]),
        (["mask", "verify", "smollm2-135m-instruct", "--model", "{tiny}"], ["built for HuggingFaceTB/SmolLM2-135M-Instruct"]),
        (["mask", "rm", "ghost"], ["no mask 'ghost'"]),
        (["mask", "show", "ghost@v3"], ["no mask 'ghost@v3'"]),
    ],
)
def test_bad_input_gets_one_line_error_and_hint(run_cli, tiny_model_dir, tiny_text_file, tmp_path, args, needles):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "short.txt").write_text("too short")
    cfg = MaskConfig(base_model="org/m", base_revision=None, fingerprint="a" * 64, density=0.1, scope="per-matrix", scorer="random", shapes={"w": [4, 4]})
    good = save_mask(SensitivityMask({"w": torch.tensor([1, 2, 3], dtype=torch.int32)}, cfg), tmp_path / "corrupt")
    data = (good / "mask.safetensors").read_bytes()
    (good / "mask.safetensors").write_bytes(data[:-6])
    for name, idx in (("unsorted", [3, 1]), ("outofrange", [1, 16])):
        (tmp_path / name).mkdir()
        write_safetensors({"w": torch.tensor(idx, dtype=torch.int32)}, tmp_path / name / "mask.safetensors", cfg.header())
    subst = {"{tiny}": str(tiny_model_dir), "{tmp}": str(tmp_path), "{calib}": str(tiny_text_file),
             "{empty}": str(tmp_path / "empty.txt"), "{short}": str(tmp_path / "short.txt")}
    real = []
    for a in args:
        for k, v in subst.items():
            a = a.replace(k, v)
        real.append(a)
    code, out, err = run_cli(*real)
    assert_one_line_error(code, err, *needles)
    assert out == ""


def test_unwritable_home_fails_before_building(run_cli, tiny_model_dir, tiny_text_file, tmp_path, monkeypatch):
    (tmp_path / "f").write_text("")
    monkeypatch.setenv("SZOQ_HOME", str(tmp_path / "f" / "home"))
    code, _, err = build_cli(run_cli, tiny_model_dir, tiny_text_file)
    assert_one_line_error(code, err, "not writable")
    assert "scoring" not in err


def test_occupied_out_folder_is_refused_before_building(run_cli, tiny_model_dir, tiny_text_file, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("precious")
    code, _, err = build_cli(run_cli, tiny_model_dir, tiny_text_file, "--out", tmp_path / "out")
    assert_one_line_error(code, err, "not empty")
    assert (tmp_path / "out" / "keep.txt").read_text() == "precious"
    code, out, _ = run_cli("mask", "list", "--json")
    assert json.loads(out)["registry"] == []


def test_failed_build_leaves_nothing_half_written(run_cli, tiny_model_dir, tiny_text_file, tmp_path):
    out_dir = tmp_path / "out"
    code, _, err = build_cli(run_cli, tiny_model_dir, tiny_text_file, "--targets", "nothing_matches", "--out", out_dir)
    assert code != 0 and not out_dir.exists()
    code, out, _ = run_cli("mask", "list", "--json")
    assert json.loads(out)["registry"] == []
