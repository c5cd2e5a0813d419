"""Property-based fuzzing, part two (issue 21): the registry index, registering a mutated
artifact, `metrics.jsonl` for `szoq plot`, and Hub responses (headers, Range answers, files
corrupted in transit) from the loopback server.

Same property as `test_fuzz.py` (only `SzoqError`s escape), plus: nothing is registered or left
in the registry when an input is refused. Cases reuse one built artifact and mutate bytes in
memory or in one temp file, so the whole fuzz run stays well under a minute. Totals (cases,
accepted, clean errors, bug paths) are printed at the end (`pytest -s`).
"""

from __future__ import annotations

import json
import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from szoq_hub.core.errors import RegistryError
from szoq_hub.masks.artifact import CARD_FILE, CONFIG_FILE, MASK_FILE, load_mask
from szoq_hub.masks.registry import Registry
from test_fuzz import (FUZZ, MASK_KEYS, WARNINGS, apply, apply_bytes, byte_edits, fuzz_totals, header_mutation, join, json_values,  # noqa: F401
                       mask_meaning, only_szoq_errors, same_meaning, split)
from test_hub import WRITE, make_mask, repo_name

SHA = "ab" * 32
entry = st.dictionaries(st.sampled_from(["version", "sha256", "created_at", "source", "hub", "x"]),
                        st.one_of(json_values, st.sampled_from(["v1", SHA, "2026-01-01", ""])), max_size=6)
# Index shapes from wholly wrong to nearly right (the nearly right ones reach the deep checks).
index_values = st.one_of(
    json_values,
    st.fixed_dictionaries({"schema_version": st.one_of(st.integers(-3, 4), json_values),
                           "masks": st.one_of(json_values, st.dictionaries(st.sampled_from(["x", "m"]),
                                                                           st.one_of(json_values, st.lists(st.one_of(entry, json_values), max_size=3)),
                                                                           max_size=2))}),
)


def test_fuzz_registry_index(isolated_state):
    index = isolated_state / "registry" / "index.json"
    index.parent.mkdir(parents=True)
    seen = {"cases": 0}

    @settings(max_examples=700, **FUZZ)
    @given(st.one_of(index_values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=40)))
    def run(raw):
        index.write_bytes(raw)
        seen["cases"] += 1
        reg = Registry()
        if only_szoq_errors(reg.entries):
            only_szoq_errors(reg.get, "x")
            only_szoq_errors(reg.find, "m@v1")

    run()
    assert seen["cases"] >= 700


def test_fuzz_register_a_mutated_artifact_registers_nothing_on_failure(tmp_path):
    good = make_mask(tmp_path / "good")
    folder = tmp_path / "case"
    shutil.copytree(good, folder)
    original = (good / MASK_FILE).read_bytes()
    config = (good / CONFIG_FILE).read_bytes()
    reg = Registry()
    meaning = mask_meaning(load_mask(good))
    seen = {"cases": 0, "registered": 0}

    @settings(max_examples=150, **FUZZ)
    @given(st.one_of(header_mutation(MASK_KEYS).map(lambda e: ("header", e)), byte_edits().map(lambda e: ("bytes", e)),
                     byte_edits().map(lambda e: ("config", e))))
    def run(case):
        kind, edit = case
        (folder / CONFIG_FILE).write_bytes(apply_bytes(config, edit) if kind == "config" else config)
        if kind == "header":
            header, body = split(original)
            mutated = apply(header, edit)
            (folder / MASK_FILE).write_bytes(join(mutated, body))
        else:
            (folder / MASK_FILE).write_bytes(apply_bytes(original, edit) if kind == "bytes" else original)
        seen["cases"] += 1
        before = reg.entries()
        objects = sorted(p.name for p in reg.objects.glob("*")) if reg.objects.is_dir() else []
        WARNINGS.seen.clear()
        if only_szoq_errors(reg.add, folder, f"fz{seen['cases']}"):
            seen["registered"] += 1
            if kind == "header":  # registered: it must mean what the original meant (issue 31)
                same_meaning(mask_meaning(load_mask(folder)), meaning, mutated)
        else:  # refused: the registry is exactly as it was
            assert reg.entries() == before
            assert (sorted(p.name for p in reg.objects.glob("*")) if reg.objects.is_dir() else []) == objects

    run()
    assert seen["cases"] >= 150 and seen["registered"] < seen["cases"]


step_rows = st.fixed_dictionaries({"kind": st.sampled_from(["step", "eval", "final", "x"])},
                                  optional={"step": st.one_of(st.integers(-2, 10), json_values), "loss": json_values,
                                            "metric": json_values, "eval_metric": json_values, "acc": json_values, "split": json_values})


def test_fuzz_metrics_for_plot(tmp_path):
    from szoq_hub.export.plots import read_metrics

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    good = '{"kind":"step","step":0,"loss":0.7}'
    seen = {"cases": 0}

    @settings(max_examples=600, **FUZZ)
    @given(st.lists(st.one_of(step_rows.map(json.dumps), json_values.map(json.dumps), st.text(max_size=20)), min_size=1, max_size=4))
    def run(lines):
        (run_dir / "metrics.jsonl").write_text("\n".join([good, *lines]) + "\n")
        seen["cases"] += 1
        only_szoq_errors(read_metrics, run_dir)

    run()
    assert seen["cases"] >= 600


@pytest.fixture(scope="module")
def hub_mask(hub_server, tmp_path_factory) -> str:
    from szoq_hub.hub.masks import push_mask

    folder = make_mask(tmp_path_factory.mktemp("fuzz-hub") / "m")
    repo = repo_name()
    push_mask(str(folder), repo_id=repo, tag="v1", token=WRITE)
    return repo


def _serve(hub, repo: str, files: dict[str, bytes]) -> None:
    """Make main of `repo` hold these files (a commit straight into the loopback Hub's store)."""
    with hub.lock:
        r = hub.repos[repo]
        head = r.branches["main"]
        r.branches["main"] = hub.commit(r, head, {**r.commits[head].files, **files}, "fuzz").sha


def test_fuzz_hub_headers_for_info(hub, hub_mask):
    from szoq_hub.hub.masks import mask_info

    with hub.lock:
        original = hub.repos[hub_mask].commits[hub.repos[hub_mask].branches["main"]].files[MASK_FILE]
    seen = {"cases": 0}

    @settings(max_examples=120, **FUZZ)
    @given(st.one_of(header_mutation(MASK_KEYS).map(lambda e: ("header", e)), byte_edits().map(lambda e: ("bytes", e))), st.booleans())
    def run(case, unknown_length):
        kind, edit = case
        if kind == "header":
            header, body = split(original)
            data = join(apply(header, edit), body)
        else:
            data = apply_bytes(original, edit)
        _serve(hub, hub_mask, {MASK_FILE: data})
        hub.faults["unknown_length"] = unknown_length
        seen["cases"] += 1
        only_szoq_errors(mask_info, hub_mask)

    run()
    assert seen["cases"] >= 120


def test_fuzz_hub_pull_registers_nothing_on_failure(hub, hub_mask):
    from szoq_hub.hub.masks import pull_mask

    with hub.lock:
        files = dict(hub.repos[hub_mask].commits[hub.repos[hub_mask].branches["main"]].files)
    reg = Registry()
    seen = {"cases": 0}

    @settings(max_examples=40, **FUZZ)
    @given(st.sampled_from([MASK_FILE, CONFIG_FILE, CARD_FILE]), byte_edits(), st.sampled_from([None, MASK_FILE, CONFIG_FILE, CARD_FILE]))
    def run(fname, edit, corrupt):
        _serve(hub, hub_mask, {**files, fname: apply_bytes(files[fname], edit)})
        hub.faults.pop("corrupt", None)
        if corrupt:
            hub.faults["corrupt"] = corrupt  # and a flipped byte in transit
        seen["cases"] += 1
        before = reg.entries()
        if not only_szoq_errors(pull_mask, hub_mask, name=f"p{seen['cases']}", registry=reg):
            assert reg.entries() == before

    run()
    assert seen["cases"] >= 40
    with pytest.raises(RegistryError):
        reg.get("never-pulled")
