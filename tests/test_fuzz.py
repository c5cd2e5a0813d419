"""Property-based fuzzing (hypothesis) of everything szoq reads from outside: mask and delta files,
mask and run configs, model cards and Hub listings, and the CLI that shows them.

The property: whatever the bytes, reading them either works or raises a `SzoqError` (one
`error:` line and a hint in the CLI) — never any other exception. Each test starts from a real
artifact written by szoq and mutates it: header values of the wrong type or JSON shape, keys
deleted or added, bytes flipped, files cut. Runs are derandomized (the same cases every CI run)
and sized to stay well under a minute together; the case counts are asserted, so a change that
silently skips cases fails here.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from szoq_hub.core import schema
from szoq_hub.methods.sparse.delta import load_delta, save_delta
from szoq_hub.core.errors import SzoqError
from szoq_hub.masks.artifact import CONFIG_FILE, MASK_FILE, load_mask
from test_hub import SHAPES, make_mask

# derandomize: the same cases every CI run (the seed is derived from each test's name); on a
# failure hypothesis prints the falsifying example and a `@reproduce_failure` blob (print_blob).
FUZZ = dict(deadline=None, derandomize=True, database=None, print_blob=True, suppress_health_check=list(HealthCheck))
# Every input the fuzzer reads back: accepted, refused with a SzoqError, or a bug (anything else,
# which fails the test at once). Printed at the end of the module (`pytest -s`), and written as
# JSON to $SZOQ_FUZZ_TOTALS when set.
TOTALS = {"cases": 0, "accepted": 0, "clean_error": 0, "bug_path": 0}
NAMES = sorted(SHAPES)
MASK_KEYS = ["format", "format_version", "base_model", "base_revision", "fingerprint", "density", "scope", "scorer", "shapes",
             "calibration", "szoq_version", "created_at", "stats", "command", "targets", "seed"]
DELTA_KEYS = ["format", "format_version", "mask_sha256", "fingerprint", "base_model", "nnz", "settings"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
# Values that are nearly right get past the first checks and reach the deeper ones.
plausible = st.one_of(
    st.dictionaries(st.sampled_from(NAMES + ["x", ""]), st.lists(st.integers(-2, 300), max_size=3), max_size=3).map(json.dumps),
    st.dictionaries(st.sampled_from(["source", "samples", "seq_len", "seed", "sha256", "nnz", "total_nnz", "captured_share"]),
                    json_values, max_size=4).map(json.dumps),
    st.floats().map(repr), st.integers(-5, 10**12).map(str), st.sampled_from(["szoq.mask", "szoq.delta", "1", "2", "per-matrix", "global",
                                                                              "fisher", "a" * 64, "f" * 64, "", "null", "[]", "{}"]),
)
meta_values = st.one_of(st.text(max_size=30), json_values.map(json.dumps), plausible, json_values)  # the last: not even a string
entry_edits = st.tuples(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]),
                        st.one_of(json_values, st.lists(st.integers(-3, 10**6), max_size=3), st.sampled_from(["I32", "F32", "I64", "BOOL", "X"])))


def split(data: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def join(header: object, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def header_mutation(keys: list[str]):
    """A list of edits to a safetensors header: metadata values, tensor entries, deletions, a new top level."""
    meta_edit = st.tuples(st.just("meta"), st.sampled_from(keys + ["junk"]), meta_values)
    delete = st.tuples(st.just("delete"), st.sampled_from(keys + NAMES), st.none())
    entry = st.tuples(st.just("entry"), st.sampled_from(NAMES), entry_edits)
    whole = st.tuples(st.just("whole"), st.sampled_from(["__metadata__", "top"]), json_values)
    return st.lists(st.one_of(meta_edit, meta_edit, delete, entry, whole), min_size=1, max_size=3)


def apply(header: dict, edits) -> object:
    for kind, key, value in edits:
        if not isinstance(header, dict):
            return header
        meta = header.get("__metadata__")
        if kind == "meta" and isinstance(meta, dict):
            meta[key] = value
        elif kind == "delete":
            header.pop(key, None)
            if isinstance(meta, dict):
                meta.pop(key, None)
        elif kind == "entry" and isinstance(header.get(key), dict):
            header[key][value[0]] = value[1]
        elif kind == "whole":
            if key == "top":
                return value
            header["__metadata__"] = value
    return header


def byte_edits():
    return st.one_of(
        st.lists(st.tuples(st.integers(0, 10**5), st.integers(0, 255)), min_size=1, max_size=4).map(lambda e: ("flip", e)),
        st.integers(0, 10**5).map(lambda n: ("cut", n)),
        st.binary(max_size=64).map(lambda b: ("replace", b)),
    )


def apply_bytes(data: bytes, edit) -> bytes:
    kind, arg = edit
    if kind == "cut":
        return data[: arg % (len(data) + 1)]
    if kind == "replace":
        return arg
    out = bytearray(data)
    for pos, val in arg:
        out[pos % len(out)] = val
    return bytes(out)


def only_szoq_errors(fn, *args, **kwargs) -> bool:
    """Call fn: True when it worked, False when it raised a SzoqError; anything else propagates
    (and is counted as a bug path before it fails the test)."""
    TOTALS["cases"] += 1
    try:
        fn(*args, **kwargs)
    except SzoqError:
        TOTALS["clean_error"] += 1
        return False
    except BaseException:
        TOTALS["bug_path"] += 1
        raise
    TOTALS["accepted"] += 1
    return True


@pytest.fixture(scope="module", autouse=True)
def fuzz_totals():
    yield
    print(f"\nfuzz totals: {TOTALS['cases']} cases, {TOTALS['accepted']} accepted, {TOTALS['clean_error']} clean errors, "
          f"{TOTALS['bug_path']} bug paths")
    if os.environ.get("SZOQ_FUZZ_TOTALS"):
        Path(os.environ["SZOQ_FUZZ_TOTALS"]).write_text(json.dumps(TOTALS))


@pytest.fixture
def mask_folder(tmp_path) -> Path:
    return make_mask(tmp_path / "mask")


def test_fuzz_mask_headers(mask_folder):
    original = (mask_folder / MASK_FILE).read_bytes()
    seen = {"cases": 0, "loaded": 0}

    @settings(max_examples=1500, **FUZZ)
    @given(header_mutation(MASK_KEYS))
    def run(edits):
        header, body = split(original)
        (mask_folder / MASK_FILE).write_bytes(join(apply(header, edits), body))
        seen["cases"] += 1
        seen["loaded"] += only_szoq_errors(load_mask, mask_folder)

    run()
    assert seen["cases"] >= 1500 and seen["loaded"] < seen["cases"]


def test_fuzz_mask_bytes(mask_folder):
    original = (mask_folder / MASK_FILE).read_bytes()
    seen = {"cases": 0}

    @settings(max_examples=600, **FUZZ)
    @given(byte_edits())
    def run(edit):
        (mask_folder / MASK_FILE).write_bytes(apply_bytes(original, edit))
        seen["cases"] += 1
        only_szoq_errors(load_mask, mask_folder)

    run()
    assert seen["cases"] >= 600


def test_fuzz_mask_configs(mask_folder):
    original = json.loads((mask_folder / CONFIG_FILE).read_text())
    seen = {"cases": 0}
    fields = st.dictionaries(st.sampled_from(list(original) + ["junk"]), st.one_of(json_values, st.sampled_from(list(original.values()))), max_size=4)

    @settings(max_examples=1200, **FUZZ)
    @given(st.one_of(fields.map(lambda f: {**original, **f}), json_values, st.binary(max_size=40)))
    def run(config):
        path = mask_folder / CONFIG_FILE
        path.write_bytes(config if isinstance(config, bytes) else json.dumps(config).encode())
        seen["cases"] += 1
        only_szoq_errors(load_mask, mask_folder)

    run()
    assert seen["cases"] >= 1200


def test_fuzz_delta_files(mask_folder, tmp_path):
    mask = load_mask(mask_folder)
    path = save_delta(tmp_path / "run", {n: torch.randn(i.numel()) for n, i in mask.indices.items()}, mask_sha256="a" * 64,
                      fingerprint=mask.config.fingerprint, base_model="org/model", settings={"lr": 1e-4})
    original = path.read_bytes()
    seen = {"cases": 0}

    @settings(max_examples=1200, **FUZZ)
    @given(st.one_of(header_mutation(DELTA_KEYS).map(lambda e: ("header", e)), byte_edits().map(lambda e: ("bytes", e))))
    def run(case):
        kind, edit = case
        if kind == "header":
            header, body = split(original)
            path.write_bytes(join(apply(header, edit), body))
        else:
            path.write_bytes(apply_bytes(original, edit))
        seen["cases"] += 1
        if only_szoq_errors(load_delta, path, mask=mask, mask_sha256="a" * 64, fingerprint=mask.config.fingerprint):
            _ = load_delta(path).settings  # what callers read from a loaded delta

    run()
    assert seen["cases"] >= 1200


def test_fuzz_run_configs_and_resume(tmp_path):
    from szoq_hub.training.config import FinetuneConfig
    from szoq_hub.training.run_folder import CONFIG_FILE as RUN_CONFIG, RunFolder

    out = tmp_path / "run"
    out.mkdir()
    config = FinetuneConfig(out=str(out))
    seen = {"cases": 0}

    @settings(max_examples=800, **FUZZ)
    @given(st.one_of(json_values, st.dictionaries(st.sampled_from(["settings", "task", "x"]), json_values, max_size=3), st.binary(max_size=30)))
    def run(value):
        (out / RUN_CONFIG).write_bytes(value if isinstance(value, bytes) else json.dumps(value).encode())
        seen["cases"] += 1
        only_szoq_errors(RunFolder(out).check_out, config, True)
        only_szoq_errors(schema.run_config, out / RUN_CONFIG)

    run()
    assert seen["cases"] >= 800


def test_fuzz_cards_and_listings():
    seen = {"cases": 0}
    cards = st.one_of(json_values, st.dictionaries(st.sampled_from(["szoq", "base_model", "tags"]),
                                                   st.one_of(json_values, st.dictionaries(st.sampled_from(["density", "scorer", "nnz"]), json_values)),
                                                   max_size=3))

    @settings(max_examples=800, **FUZZ)
    @given(cards)
    def run(card):
        seen["cases"] += 1
        fields = schema.listing_fields(card)  # never raises, whatever a stranger's card holds
        TOTALS["cases"] += 1
        TOTALS["accepted"] += 1
        assert fields["density"] is None or isinstance(fields["density"], float)
        assert fields["nnz"] is None or (isinstance(fields["nnz"], int) and fields["nnz"] >= 0)
        f"{fields['density']:g}" if fields["density"] is not None else None  # what `mask search` renders  # noqa: B018

    run()
    assert seen["cases"] >= 800


def test_fuzz_cli_show_and_verify(mask_folder, run_cli):
    """The CLI on hostile headers: exit 0, or one `error:` line with a hint, never a bug line."""
    original = (mask_folder / MASK_FILE).read_bytes()
    seen = {"cases": 0}

    @settings(max_examples=150, **FUZZ)
    @given(header_mutation(MASK_KEYS))
    def run(edits):
        header, body = split(original)
        (mask_folder / MASK_FILE).write_bytes(join(apply(header, edits), body))
        seen["cases"] += 1
        for command in ("show", "verify"):
            code, _, err = run_cli("mask", command, str(mask_folder))
            TOTALS["cases"] += 1
            TOTALS["accepted" if code == 0 else "clean_error" if "this is a bug" not in err else "bug_path"] += 1
            assert "Traceback" not in err and "this is a bug" not in err, err
            assert code == 0 or (err.startswith("error: ") and "\nhint: " in err), err

    run()
    assert seen["cases"] >= 150
