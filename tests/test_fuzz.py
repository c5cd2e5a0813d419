"""Property-based fuzzing (hypothesis) of everything szoq reads from outside: mask and delta files,
mask and run configs, model cards and Hub listings, and the CLI that shows them.

The property: whatever the bytes, reading them either works or raises a `SzoqError` (one
`error:` line and a hint in the CLI) — never any other exception. Each test starts from a real
artifact written by szoq and mutates it: header values of the wrong type or JSON shape, keys
deleted or added, tensors renamed, bytes flipped, files cut.

A second property for header-only edits of every artifact kind (mask, delta, LoRA adapter, dense
weights; issue 31): an accepted file means what the original meant (same tensors, names, shapes
and header fields as loaded), or it records no hash at all (a format that predates hashes: loaded
with a warning, counted as `changed_without_hash`). `changed_with_hash` must stay 0: no edit is
accepted that changes what a file does without a hash mismatch. Runs are derandomized (the same cases every CI run)
and sized to stay well under a minute together; the case counts are asserted, so a change that
silently skips cases fails here.
"""

from __future__ import annotations

import json
import logging
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
from szoq_hub.hub.masks import listing_fields
from szoq_hub.masks.artifact import CONFIG_FILE, MASK_FILE, load_mask
from test_hub import SHAPES, make_mask

# derandomize: the same cases every CI run (the seed is derived from each test's name); on a
# failure hypothesis prints the falsifying example and a `@reproduce_failure` blob (print_blob).
FUZZ = dict(deadline=None, derandomize=True, database=None, print_blob=True, suppress_health_check=list(HealthCheck))
# Every input the fuzzer reads back: accepted, refused with a SzoqError, or a bug (anything else,
# which fails the test at once). Printed at the end of the module (`pytest -s`), and written as
# JSON to $SZOQ_FUZZ_TOTALS when set.
TOTALS = {"cases": 0, "accepted": 0, "clean_error": 0, "bug_path": 0, "changed_with_hash": 0, "changed_without_hash": 0}
NAMES = sorted(SHAPES)
HASH_KEYS = ["content_sha256", "hash_scheme"]
MASK_KEYS = ["format", "format_version", "base_model", "base_revision", "fingerprint", "density", "scope", "scorer", "shapes",
             "calibration", "szoq_version", "created_at", "stats", "command", "targets", "seed", *HASH_KEYS]
DELTA_KEYS = ["format", "format_version", "mask_sha256", "fingerprint", "base_model", "nnz", "settings", *HASH_KEYS]
LORA_KEYS = ["format", "rank", "alpha", "targets", "base_model", "fingerprint", "settings", *HASH_KEYS]
LORA_NAMES = [f"m.layers.{i}.{p}.lora_{ab}.weight" for i in (0, 1) for p in ("q_proj", "v_proj") for ab in "AB"]
DENSE_KEYS = ["format", "fingerprint", "base_model", "settings", "step", *HASH_KEYS]
DENSE_NAMES = ["m.0.weight", "m.1.weight"]

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


def header_mutation(keys: list[str], names: list[str] = NAMES):
    """A list of edits to a safetensors header: metadata values, tensor entries, deletions, tensors
    renamed (to another tensor's name, swapping them, or a new one), a new top level."""
    meta_edit = st.tuples(st.just("meta"), st.sampled_from(keys + ["junk"]), meta_values)
    delete = st.tuples(st.just("delete"), st.sampled_from(keys + names), st.none())
    entry = st.tuples(st.just("entry"), st.sampled_from(names), entry_edits)
    rename = st.tuples(st.just("rename"), st.sampled_from(names), st.sampled_from(names + ["x.weight", names[0].replace("0", "1", 1)]))
    whole = st.tuples(st.just("whole"), st.sampled_from(["__metadata__", "top"]), json_values)
    return st.lists(st.one_of(meta_edit, meta_edit, delete, entry, rename, whole), min_size=1, max_size=3)


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
        elif kind == "rename" and key in header and key != value:
            if value in header:  # onto another tensor's name: the two swap
                header[key], header[value] = header[value], header[key]
            else:
                header[value] = header.pop(key)
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


def same_meaning(loaded, original, mutated_header) -> None:
    """An accepted header edit: the file must mean what the original meant, unless it records no hash
    at all (legacy, loaded with a warning); counted either way. See the module doc."""
    if loaded == original:
        return
    meta = mutated_header.get("__metadata__") if isinstance(mutated_header, dict) else None
    if isinstance(meta, dict) and not meta.get("content_sha256") and "hash_scheme" not in meta:
        TOTALS["changed_without_hash"] += 1
        assert WARNINGS.pop(), "a file without a hash was accepted without a warning"
        return
    TOTALS["changed_with_hash"] += 1
    raise AssertionError(f"an edited file was accepted without a hash mismatch: {mutated_header!r:.300}")


class _Warnings(logging.Handler):
    """Counts the "records no content hash" warnings of core.content."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[str] = []

    def emit(self, record) -> None:
        self.seen.append(record.getMessage())

    def pop(self) -> bool:
        found = any("records no content hash" in m for m in self.seen)
        self.seen.clear()
        return found


WARNINGS = _Warnings()
logging.getLogger("szoq_hub.core.content").addHandler(WARNINGS)


def tensor_view(tensors: dict) -> dict:
    """name -> (dtype, shape, values) of loaded tensors: what a file's tensors mean."""
    return {n: (str(t.dtype), tuple(t.shape), t.flatten().tolist()) for n, t in tensors.items()}


@pytest.fixture(scope="module", autouse=True)
def fuzz_totals():
    yield
    print(f"\nfuzz totals: {TOTALS['cases']} cases, {TOTALS['accepted']} accepted, {TOTALS['clean_error']} clean errors, "
          f"{TOTALS['bug_path']} bug paths; accepted header edits that changed the meaning: {TOTALS['changed_with_hash']} with a hash, "
          f"{TOTALS['changed_without_hash']} of files without one (legacy, with a warning)")
    if os.environ.get("SZOQ_FUZZ_TOTALS"):
        Path(os.environ["SZOQ_FUZZ_TOTALS"]).write_text(json.dumps(TOTALS))


@pytest.fixture
def mask_folder(tmp_path) -> Path:
    return make_mask(tmp_path / "mask")


def mask_meaning(mask) -> tuple:
    from dataclasses import asdict

    config = {k: v for k, v in asdict(mask.config).items() if k not in HASH_KEYS}
    return json.dumps(config, sort_keys=True, default=str), tensor_view(mask.indices)


def test_fuzz_mask_headers(mask_folder):
    original = (mask_folder / MASK_FILE).read_bytes()
    meaning = mask_meaning(load_mask(mask_folder))
    seen = {"cases": 0, "loaded": 0}

    @settings(max_examples=1500, **FUZZ)
    @given(header_mutation(MASK_KEYS))
    def run(edits):
        header, body = split(original)
        mutated = apply(header, edits)
        (mask_folder / MASK_FILE).write_bytes(join(mutated, body))
        seen["cases"] += 1
        WARNINGS.seen.clear()
        if only_szoq_errors(load_mask, mask_folder):
            seen["loaded"] += 1
            same_meaning(mask_meaning(load_mask(mask_folder)), meaning, mutated)

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
    meaning = delta_meaning(load_delta(path))
    seen = {"cases": 0}

    @settings(max_examples=1200, **FUZZ)
    @given(st.one_of(header_mutation(DELTA_KEYS).map(lambda e: ("header", e)), byte_edits().map(lambda e: ("bytes", e))))
    def run(case):
        kind, edit = case
        mutated = None
        if kind == "header":
            header, body = split(original)
            mutated = apply(header, edit)
            path.write_bytes(join(mutated, body))
        else:
            path.write_bytes(apply_bytes(original, edit))
        seen["cases"] += 1
        WARNINGS.seen.clear()
        if only_szoq_errors(load_delta, path, mask=mask, mask_sha256="a" * 64, fingerprint=mask.config.fingerprint):
            loaded = load_delta(path)
            _ = loaded.settings  # what callers read from a loaded delta
            if kind == "header":
                same_meaning(delta_meaning(loaded), meaning, mutated)

    run()
    assert seen["cases"] >= 1200


def delta_meaning(delta) -> tuple:
    return json.dumps({k: v for k, v in delta.meta.items() if k not in HASH_KEYS}, sort_keys=True), tensor_view(delta.tensors)


def fuzz_header_meaning(path: Path, original: bytes, mutations, use, want, n: int) -> None:
    """Write `n` header mutations of `original` to `path`: each either fails with a szoq error or `use()` gives `want`;
    some must fail (the fuzzer reaches the checks)."""
    seen = {"cases": 0, "loaded": 0}

    @settings(max_examples=n, **FUZZ)
    @given(mutations)
    def run(edits):
        header, body = split(original)
        mutated = apply(header, edits)
        path.write_bytes(join(mutated, body))
        seen["cases"] += 1
        WARNINGS.seen.clear()
        if only_szoq_errors(use):
            seen["loaded"] += 1
            same_meaning(use(), want, mutated)

    run()
    assert seen["cases"] >= n and seen["loaded"] < seen["cases"]


def test_fuzz_lora_headers(tmp_path):
    """Header-only edits of a LoRA adapter (rank, alpha, targets, settings, tensor names and entries)."""
    from szoq_hub.methods.lora.file import LORA_FILE, load_lora, save_lora
    from szoq_hub.methods.lora.config import LoRASettings

    g = torch.Generator().manual_seed(0)
    tensors = {n: torch.randn((2, 8) if n.endswith("A.weight") else (6, 2), generator=g) for n in LORA_NAMES}
    path = save_lora(tmp_path / LORA_FILE, tensors, settings=LoRASettings(rank=2, alpha=4.0), fingerprint="f" * 64, base_model="tiny",
                     run_settings={"seed": 0, "quant": "none"})
    original = path.read_bytes()
    shapes = {f"m.layers.{i}.{p}": (8, 6) for i in (0, 1) for p in ("q_proj", "v_proj")}  # the model's (in, out)

    def meaning(adapter) -> tuple:
        return (json.dumps({k: v for k, v in adapter.meta.items() if k not in HASH_KEYS}, sort_keys=True), tensor_view(adapter.tensors),
                adapter.settings, {k: v.tolist() for k, v in adapter.weight_deltas(shapes).items()})

    def use():  # what merge and export do with it
        adapter = load_lora(path)
        adapter.check_fingerprint("f" * 64)
        return meaning(adapter)

    fuzz_header_meaning(path, original, header_mutation(LORA_KEYS, LORA_NAMES), use, meaning(load_lora(path)), 1000)


def test_fuzz_dense_headers(tmp_path):
    """Header-only edits of a dense file (its weights by parameter name, settings, fingerprint)."""
    from types import SimpleNamespace

    from torch import nn

    from szoq_hub.methods.dense.runtime import DenseModel, save_dense

    g = torch.Generator().manual_seed(0)
    weights = [(n, torch.randn(4, 3, generator=g)) for n in DENSE_NAMES]
    path = tmp_path / "dense.safetensors"
    save_dense(path, SimpleNamespace(tensors=lambda: weights), fingerprint="f" * 64, base_model="tiny", settings={"model": "tiny"})
    original = path.read_bytes()

    def use():
        modules = [nn.Linear(3, 4, bias=False) for _ in DENSE_NAMES]
        meta = DenseModel(None, None, None, list(DENSE_NAMES), modules).load_weights(path, dense_file=True)  # as eval and merge read it
        return (json.dumps({k: v for k, v in meta.items() if k not in HASH_KEYS}, sort_keys=True),
                [m.weight.detach().flatten().tolist() for m in modules])

    fuzz_header_meaning(path, original, header_mutation(DENSE_KEYS, DENSE_NAMES), use, use(), 500)


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
        fields = listing_fields(card)  # never raises, whatever a stranger's card holds
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
