"""Issue 21, the local registry: hostile index shapes, names ending in a newline, a failed build
that must register nothing, and objects re-hashed before use or publishing."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from conftest import assert_one_line_error
from szoq_hub.core.errors import RegistryError
from szoq_hub.masks.artifact import MASK_FILE
from szoq_hub.masks.registry import Registry, check_name, check_version
from test_registry import artifact

INDEX_SHAPES = {
    "list": "[]",
    "null": "null",
    "string-version": '{"schema_version":"2","masks":{}}',
    "negative-version": '{"schema_version":-5,"masks":{}}',
    "entry-without-sha": '{"schema_version":2,"masks":{"x":[{"version":"v1"}]}}',
    "int-version-entry": '{"schema_version":2,"masks":{"x":[{"version":1}]}}',
    "versions-object": '{"masks":{"x":{"a":1}}}',
    "masks-list": '{"masks":[]}',
    "masks-null": '{"schema_version":2,"masks":null}',
    "bool-version": '{"schema_version":true,"masks":{}}',
    "deep": "[" * 50_000,
}


@pytest.mark.parametrize("case", sorted(INDEX_SHAPES))
@pytest.mark.parametrize("command", [["mask", "list"], ["mask", "show", "x"]])
def test_an_index_of_the_wrong_shape_is_a_registry_error(case, command, isolated_state, run_cli):
    index = isolated_state / "registry" / "index.json"
    index.parent.mkdir(parents=True)
    index.write_text(INDEX_SHAPES[case])
    code, _, err = run_cli(*command)
    assert code == 2, err
    assert_one_line_error(code, err, "registry index")
    with pytest.raises(RegistryError, match="registry index"):
        Registry().entries()


@pytest.mark.parametrize("bad", ["evil\n", "v1\n"])
def test_names_and_versions_ending_in_a_newline_are_refused(bad):
    with pytest.raises(RegistryError):
        check_name(bad)
    with pytest.raises(RegistryError):
        check_version(bad)


def test_cli_refuses_a_name_with_a_trailing_newline(tiny_model_dir, run_cli):
    code, _, err = run_cli("mask", "build", tiny_model_dir, "--scorer", "magnitude", "--name", "evil\n")
    assert_one_line_error(code, err, "invalid mask name")
    assert Registry().entries() == []


def test_a_failing_step_before_commit_registers_nothing(tmp_path):
    reg = Registry()

    def fail(entry):
        assert (entry.path / MASK_FILE).is_file()  # the object is stored, the index does not name it yet
        raise OSError(30, "Read-only file system", str(tmp_path / "out"))

    with pytest.raises(OSError):
        reg.add(artifact(tmp_path, 1), "p3", before_commit=fail)
    assert reg.entries() == [] and reg.find("p3") is None
    assert not any(reg.objects.iterdir())  # the new object went with it
    entry = reg.add(artifact(tmp_path, 1), "p3")  # and a retry works
    assert entry.ref == "p3@v1"


@pytest.mark.parametrize("kind", ["read-only", "under-a-file"])
def test_cli_build_whose_out_cannot_be_written_registers_nothing(kind, tiny_model_dir, tmp_path, run_cli):
    if kind == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        parent = tmp_path / "ro"
        parent.mkdir()
        parent.chmod(stat.S_IRUSR | stat.S_IXUSR)
    else:  # a file where the folder's parent should be: the write fails the same way (ENOTDIR), also as root
        parent = tmp_path / "a-file"
        parent.write_text("x")
    try:
        code, _, err = run_cli("mask", "build", tiny_model_dir, "--scorer", "magnitude", "--name", "p3", "--out", parent / "m")
    finally:
        if parent.is_dir():
            parent.chmod(stat.S_IRWXU)
    assert_one_line_error(code, err)
    assert code == 2
    assert Registry().find("p3") is None and not any(Registry().objects.glob("*"))


def test_a_tampered_object_is_refused_by_verify_and_push(hub, tmp_path, run_cli):
    reg = Registry()
    entry = reg.add(artifact(tmp_path, 1), "m")
    from safetensors.torch import load_file

    from szoq_hub.data.checkpoint import write_tensors
    from szoq_hub.core.schema import read_header

    path = entry.path / MASK_FILE
    meta = read_header(path).metadata
    idx = load_file(str(path))["w"]
    other = torch.tensor(sorted({(int(i) + 1) % 100 for i in idx}), dtype=torch.int32)  # still sorted, unique, in range
    path.chmod(0o644)
    write_tensors(path, [("w", other)], meta)
    for command in (["mask", "verify", "m@v1"], ["mask", "show", "m@v1"],
                    ["mask", "push", "m@v1", "--repo", "alice/tampered", "--token", "hf_alice_write_0123456789"]):
        code, _, err = run_cli(*command)
        assert_one_line_error(code, err, "m@v1")
    assert "alice/tampered" not in hub.repos
