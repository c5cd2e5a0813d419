"""Hostile artifacts and inputs (issue 10, items 1-7, 11, 12): each is refused with one `error:`
line and a hint, or handled, never a bug line. Real files, the real CLI, the loopback Hub.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch

from conftest import assert_one_line_error
from szoq_hub.core.errors import CalibrationError, MaskError
from szoq_hub.masks.artifact import CONFIG_FILE, MASK_FILE, load_mask, mask_stats, save_mask
from szoq_hub.masks.registry import Registry
from test_hub import BOB, WRITE, make_mask, repo_name


def write_raw(path: Path, header: object, data: bytes = b"") -> Path:
    """A safetensors file with exactly this header JSON (any JSON value)."""
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def header_of(folder: Path) -> dict:
    data = (folder / MASK_FILE).read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n])


def rewrite_header(folder: Path, edit) -> None:
    """Apply `edit` to the parsed header and write it back, tensor data unchanged."""
    data = (folder / MASK_FILE).read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    header = edit(header) or header
    write_raw(folder / MASK_FILE, header, data[8 + n:])


# -- 1. a hostile card must not break `szoq mask search` --------------------------------------
@pytest.mark.parametrize("block", ["szoq: [1, 2, 3]", "szoq:\n  density: lots\n  nnz: many\n  scorer: [x]", "szoq: 7\nbase_model: [a, b]"])
def test_hostile_card_does_not_break_search(hub, run_cli, block):
    from huggingface_hub import HfApi

    from szoq_hub.hub.masks import search_masks

    repo = repo_name("bob")
    card = f"---\nlibrary_name: szoq\ntags:\n- szoq\n- sensitivity-mask\n{block}\n---\n# hostile\n"
    HfApi().create_repo(repo, token=BOB)
    HfApi().upload_file(path_or_fileobj=card.encode(), path_in_repo="README.md", repo_id=repo, token=BOB)
    listed = {m.repo_id: m for m in search_masks(author="bob")}
    assert repo in listed
    assert (listed[repo].density, listed[repo].scorer, listed[repo].nnz) == (None, None, None)
    code, out, err = run_cli("mask", "search", "--author", "bob")
    assert code == 0, err
    assert repo in out


# -- 2. recorded shapes are checked against the model ----------------------------------------
def forged(tiny_mask: Path, dest: Path, *, grow: bool = False, extra: bool = False) -> Path:  # noqa: F811
    """A copy of a real mask with the real fingerprint but a shape the model does not have."""
    mask = load_mask(tiny_mask)
    name = next(iter(mask.config.shapes))
    rows, cols = mask.config.shapes[name]
    scores = mask.scores if mask.scores is not None else {}  # a fisher mask: one score per index, kept consistent
    if grow:  # 4x the rows, and an index valid only for that shape
        mask.config.shapes[name] = [4 * rows, cols]
        mask.indices[name] = torch.cat([mask.indices[name], torch.tensor([rows * cols + 5], dtype=torch.int32)])
        if name in scores:
            scores[name] = torch.cat([scores[name], torch.tensor([1.0])])
    if extra:  # a tensor the model lacks
        mask.config.shapes["model.layers.9.mlp.up_proj.weight"] = [8, 8]
        mask.indices["model.layers.9.mlp.up_proj.weight"] = torch.tensor([3], dtype=torch.int32)
        if mask.scores is not None:
            scores["model.layers.9.mlp.up_proj.weight"] = torch.tensor([1.0])
    mask.config.stats = mask_stats(mask.indices, mask.config.shapes)
    return save_mask(mask, dest)


@pytest.mark.parametrize("kind", ["grow", "extra"])
def test_forged_shape_is_refused_by_verify_and_finetune(kind, tiny_model_dir, tiny_mask, tmp_path, run_cli):  # noqa: F811
    folder = forged(tiny_mask, tmp_path / "forged", grow=kind == "grow", extra=kind == "extra")
    load_mask(folder)  # consistent in itself: only the model can tell
    code, _, err = run_cli("mask", "verify", str(folder), "--model", str(tiny_model_dir))
    assert_one_line_error(code, err, "the mask" if kind == "grow" else "does not have")
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"text": f"row {i}", "label": i % 2}) + "\n" for i in range(8)))
    code, _, err = run_cli("finetune", "--model", str(tiny_model_dir), "--mask", str(folder), "--train", str(train), "--template", "{text}",
                           "--labels", "0=bad,1=good", "--quant", "none", "--steps", "1", "--out", str(tmp_path / "run"))
    assert_one_line_error(code, err, "records" if kind == "grow" else "does not have")
    assert not (tmp_path / "run").exists()


# -- 3. malformed JSON types in the header or the config ---------------------------------------
HEADER_EDITS = {
    "header is a list": lambda h: [1, 2],
    "metadata is a string": lambda h: {**h, "__metadata__": "x"},
    "metadata value is a number": lambda h: {**h, "__metadata__": {**h["__metadata__"], "density": 0.1}},
    "shapes is a list": lambda h: {**h, "__metadata__": {**h["__metadata__"], "shapes": "[1, 2]"}},
    "shape values are strings": lambda h: {**h, "__metadata__": {**h["__metadata__"], "shapes": json.dumps({k: ["8", "8"] for k in json.loads(h["__metadata__"]["shapes"])})}},
    "calibration is a list": lambda h: {**h, "__metadata__": {**h["__metadata__"], "calibration": "[1]"}},
    "calibration samples is a string": lambda h: {**h, "__metadata__": {**h["__metadata__"], "calibration": '{"samples": "4"}'}},
    "stats is a list": lambda h: {**h, "__metadata__": {**h["__metadata__"], "stats": "[]"}},
    "density is text": lambda h: {**h, "__metadata__": {**h["__metadata__"], "density": "lots"}},
    "density is nan": lambda h: {**h, "__metadata__": {**h["__metadata__"], "density": "nan"}},
    "fingerprint is short": lambda h: {**h, "__metadata__": {**h["__metadata__"], "fingerprint": "abc"}},
    "tensor entry is a list": lambda h: {**h, **{k: [1] for k in h if k != "__metadata__"}},
    "shape is a string": lambda h: {**h, **{k: {**v, "shape": "3"} for k, v in h.items() if k != "__metadata__"}},
    "offsets past the end": lambda h: {**h, **{k: {**v, "data_offsets": [0, 10**9]} for k, v in h.items() if k != "__metadata__"}},
    "deep nesting": lambda h: {**h, "__metadata__": {**h["__metadata__"], "calibration": "[" * 100000 + "]" * 100000}},
}


@pytest.mark.parametrize("case", sorted(HEADER_EDITS))
def test_malformed_header_types_are_mask_errors(case, tmp_path, run_cli):
    folder = make_mask(tmp_path / "m")
    rewrite_header(folder, HEADER_EDITS[case])
    with pytest.raises(MaskError):
        load_mask(folder)
    for args in (["mask", "verify", str(folder)], ["mask", "show", str(folder)]):
        code, _, err = run_cli(*args)
        assert_one_line_error(code, err)
        assert "bug" not in err
    with pytest.raises(MaskError):
        Registry().add(folder, "hostile")


CONFIG_EDITS = {
    "a list": [1, 2],
    "a string": "x",
    "stats is a list": "STATS",
    "shapes as a list": {"shapes": [1, 2]},
    "calibration is a list": {"calibration": [1]},
    "seed is text": {"seed": "zero"},
    "not json": b"\xff\xfe{",
}


@pytest.mark.parametrize("case", sorted(CONFIG_EDITS))
def test_malformed_config_types_are_mask_errors(case, tmp_path, run_cli):
    folder = make_mask(tmp_path / "m")
    edit = CONFIG_EDITS[case]
    cfg = json.loads((folder / CONFIG_FILE).read_text())
    if isinstance(edit, bytes):
        (folder / CONFIG_FILE).write_bytes(edit)
    elif edit == "STATS":
        (folder / CONFIG_FILE).write_text(json.dumps({**cfg, "stats": []}))
    elif isinstance(edit, dict):
        (folder / CONFIG_FILE).write_text(json.dumps({**cfg, **edit}))
    else:
        (folder / CONFIG_FILE).write_text(json.dumps(edit))
    with pytest.raises(MaskError):
        load_mask(folder)
    code, _, err = run_cli("mask", "show", str(folder))
    assert_one_line_error(code, err)


def test_malformed_header_on_the_hub_is_refused_by_info_and_pull(hub, tmp_path, run_cli):
    from huggingface_hub import HfApi

    folder = make_mask(tmp_path / "m")
    rewrite_header(folder, HEADER_EDITS["shapes is a list"])
    repo = repo_name()
    HfApi().create_repo(repo, token=WRITE)
    HfApi().upload_file(path_or_fileobj=str(folder / MASK_FILE), path_in_repo=MASK_FILE, repo_id=repo, token=WRITE)
    for args in (["mask", "info", repo], ["mask", "pull", repo]):
        code, _, err = run_cli(*args)
        assert_one_line_error(code, err, "shapes")
    assert Registry().entries() == []


# -- 4. the header is the single source of truth -----------------------------------------------
@pytest.mark.parametrize("field,value", [("density", 0.5), ("base_model", "evil/model"), ("stats", {"total_nnz": 1}), ("scorer", "magnitude")])
def test_config_that_disagrees_with_the_header_is_refused(field, value, tmp_path, run_cli):
    folder = make_mask(tmp_path / "m")
    cfg = json.loads((folder / CONFIG_FILE).read_text())
    (folder / CONFIG_FILE).write_text(json.dumps({**cfg, field: value}))
    with pytest.raises(MaskError, match=f"does not match mask.safetensors \\({field} differs"):
        load_mask(folder)
    code, out, err = run_cli("mask", "show", str(folder))
    assert_one_line_error(code, err, field)
    assert str(value) not in out


def test_registry_config_is_a_function_of_the_header(tmp_path):
    a = make_mask(tmp_path / "a")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    cfg = json.loads((b / CONFIG_FILE).read_text())
    (b / CONFIG_FILE).write_text(json.dumps({"fingerprint": cfg["fingerprint"], "note": "another copy"}, indent=1))  # partial, other bytes
    second = Registry().add(b, "m")
    first = Registry().add(a, "m")
    assert first.sha256 == second.sha256
    stored = json.loads((first.path / CONFIG_FILE).read_text())
    assert stored == cfg  # written from the verified header, whichever copy came first


# -- 5. calibration files ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["calib.jsonl", "calib.txt"])
def test_binary_calibration_is_refused(name, tiny_model_dir, tmp_path, run_cli):
    from szoq_hub.data.calibration import load_windows
    from transformers import AutoTokenizer

    path = tmp_path / name
    path.write_bytes(bytes(range(256)) * 64)
    with pytest.raises(CalibrationError, match="UTF-8|binary"):
        load_windows(str(path), AutoTokenizer.from_pretrained(tiny_model_dir), samples=2, seq_len=8)
    code, _, err = run_cli("mask", "build", str(tiny_model_dir), "--calibration", str(path), "--samples", "2", "--seq-len", "8")
    assert_one_line_error(code, err, str(path))


def test_calibration_is_neither_read_nor_recorded_by_data_free_scorers(tiny_model_dir, tmp_path, run_cli):
    code, out, err = run_cli("mask", "build", str(tiny_model_dir), "--scorer", "magnitude", "--calibration", str(tmp_path / "missing.txt"),
                             "--name", "mag", "--json")
    assert code == 0, err
    assert "--calibration is not read by --scorer magnitude" in err
    mask = load_mask(Registry().get("mag").path)
    assert "--calibration" not in mask.config.command and "missing.txt" not in mask.config.command
    assert mask.config.calibration is None


# -- 6. absurd names ------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [["mask", "show"], ["mask", "verify"], ["mask", "diff", "x" * 10_000], ["mask", "rm"]])
def test_a_10k_character_ref_is_a_one_line_error(args, run_cli):
    code, _, err = run_cli(*args, "y" * 10_000)
    assert_one_line_error(code, err)
    assert "bug" not in err and len(err) < 1000


# -- 7. local paths never reach the Hub ---------------------------------------------------------
def test_mask_from_a_local_folder_publishes_no_local_path(hub, tiny_model_dir, tmp_path, run_cli):
    calib = tmp_path / "calib.txt"
    calib.write_text("the movie was great and the actors were wonderful\n" * 50)
    code, _, err = run_cli("mask", "build", str(tiny_model_dir), "--calibration", str(calib), "--samples", "2", "--seq-len", "8", "--name", "local")
    assert code == 0, err
    mask = load_mask(Registry().get("local").path)
    assert mask.config.base_model == tiny_model_dir.name
    repo = repo_name()
    code, _, err = run_cli("mask", "push", "local@v1", "--repo", repo, "--token", WRITE)
    assert code == 0, err
    files = hub.repos[repo].commits[hub.repos[repo].branches["main"]].files
    for fname in (MASK_FILE, CONFIG_FILE, "README.md"):
        assert str(tmp_path).encode() not in files[fname], fname
        assert str(tiny_model_dir.parent).encode() not in files[fname], fname


def test_push_refuses_a_mask_that_records_a_local_path(hub, tmp_path, run_cli):
    folder = make_mask(tmp_path / "m", base_model=str(tmp_path / "models" / "mine"))
    Registry().add(folder, "old")
    code, _, err = run_cli("mask", "push", "old@v1", "--repo", repo_name(), "--token", WRITE)
    assert_one_line_error(code, err, "local path", "pushing would publish it")


# -- 11. a push whose connection drops ----------------------------------------------------------
def test_push_whose_connection_drops_says_so_and_a_rerun_completes(hub, tmp_path, run_cli):
    folder = make_mask(tmp_path / "m")
    ref = Registry().add(folder, "drop").ref
    repo = repo_name()
    hub.faults["drop_commit_answer"] = True
    code, _, err = run_cli("mask", "push", ref, "--repo", repo, "--token", WRITE)
    assert_one_line_error(code, err, "while pushing to", repo)
    assert "download" not in err and "reading" not in err
    code, out, err = run_cli("mask", "push", ref, "--repo", repo, "--token", WRITE)  # what the hint says
    assert code == 0, err
    assert len([c for c in hub.repos[repo].commits.values() if MASK_FILE in c.files]) == 1  # no second commit
    assert "v1" in hub.repos[repo].tags


# -- 12. a Hub ref whose default alias is taken locally ------------------------------------------
def test_hub_ref_is_usable_when_its_default_alias_is_taken(hub, tmp_path, run_cli):
    from szoq_hub.hub.masks import push_mask
    from szoq_hub.hub.refs import open_mask

    repo = repo_name()
    push_mask(Registry().add(make_mask(tmp_path / "theirs", seed=1), "theirs").ref, repo_id=repo, token=WRITE)
    alias = repo.split("/")[1]
    Registry().add(make_mask(tmp_path / "mine", seed=2), alias, "v1")  # my own mask under the same NAME@v1
    code, out, err = run_cli("mask", "verify", f"{repo}@v1")
    assert code == 0, err
    mask = open_mask(f"{repo}@v1")
    assert mask.indices.keys() and Registry().find(f"{alias}@v1").sha256 != Registry().find(f"team-{alias}@v1").sha256
    assert (Registry().find(f"team-{alias}@v1").hub or {})["repo_id"] == repo
    # An explicit --name still refuses to overwrite.
    code, _, err = run_cli("mask", "pull", f"{repo}@v1", "--name", alias)
    assert_one_line_error(code, err, "already exists with other content")



def test_a_10k_character_path_is_a_one_line_error(tiny_model_dir, tmp_path, run_cli):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"text": f"row {i}", "label": i % 2}) + "\n" for i in range(8)))
    long = str(tmp_path / ("o" * 10_000))
    for args in (["finetune", "--model", str(tiny_model_dir), "--mask", "smollm2-135m-instruct", "--train", str(train), "--template", "{text}",
                  "--labels", "0=bad,1=good", "--quant", "none", "--steps", "1", "--out", long],
                 ["delta", "push", long, "--repo", "team/x"], ["mask", "push", long, "--repo", "team/x"], ["eval", "--delta", long]):
        code, _, err = run_cli(*args)
        assert_one_line_error(code, err)
        assert "bug" not in err and len(err) < 1000, args


def test_delta_push_publishes_no_local_path(hub, run_dir, tmp_path, run_cli):  # noqa: F811
    """The tiny run was trained from absolute temp paths (model, mask, train file, --out)."""
    from szoq_hub.methods.sparse.delta import load_delta

    run = json.loads((run_dir / "finetune_config.json").read_text())
    local = [v for v in run["settings"].values() if isinstance(v, str) and v.startswith("/")]
    assert len(local) >= 3  # the fixture really used local paths
    assert not [v for v in load_delta(run_dir).settings.values() if isinstance(v, str) and v.startswith("/")]
    repo = repo_name()
    code, _, err = run_cli("delta", "push", str(run_dir), "--repo", repo, "--token", WRITE)
    assert code == 0, err
    files = hub.repos[repo].commits[hub.repos[repo].branches["main"]].files
    for fname, data in files.items():
        for path in local:
            assert path.encode() not in data, (fname, path)
    assert json.loads(files["finetune_config.json"])["settings"]["model"] == Path(run["settings"]["model"]).name
