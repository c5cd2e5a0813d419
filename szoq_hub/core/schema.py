"""One schema layer for everything szoq reads from outside: safetensors headers, JSON configs,
model cards and Hub listings.

Masks and deltas come from strangers (the Hub) and from disks that crash, so nothing in them is
trusted: every value is type-checked here before any other module touches it, and a bad value
becomes a `SzoqError` naming the file and the field, never an `AttributeError` three calls
later. The safetensors header is the single source of truth of an artifact; a JSON config
beside it is a readable mirror that must agree with it. Recorded shapes are checked against
the model before any index is used. A Hub listing (a stranger's model card) never raises: a
field of the wrong type is shown as missing, so one hostile repo cannot break a search.

The functions here only validate and convert; they never read tensor data.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .errors import MaskError, SzoqError

MAX_HEADER_BYTES = 100_000_000
HEX64 = re.compile(r"^[0-9a-f]{64}\Z")
# A scorer is a lowercase word ("fisher", "task-fisher"); never a number such as "Infinity".
_SCORER = re.compile(r"[a-z][a-z0-9._-]{0,63}")
_NOT_SCORERS = {"nan", "inf", "infinity"}
DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
REBUILD = "the artifact is corrupt or was not written by szoq: pull or build it again"


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as a safetensors header describes it."""

    dtype: str
    shape: tuple[int, ...]
    offsets: tuple[int, int]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Header:
    """A type-checked safetensors header: string metadata and tensor entries."""

    metadata: dict[str, str]
    tensors: dict[str, TensorEntry]


# -- JSON ------------------------------------------------------------------------------------
def loads(text: str | bytes, where: str, error: type[SzoqError] = MaskError, hint: str = REBUILD) -> Any:
    """`json.loads` whose every failure (bad syntax, bad UTF-8, absurd nesting) is `error`."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise error(f"{where} is not valid JSON ({str(exc).splitlines()[0][:80]})", hint=hint) from None


def is_int(x: object) -> bool:
    """True for a JSON integer (bool is not one)."""
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x: object) -> bool:
    """True for a finite JSON number (bool is not one)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def is_timestamp(x: object) -> bool:
    """True for "" (not recorded) or an ISO 8601 time such as 2026-01-01T00:00:00+00:00."""
    if x == "":
        return True
    if not isinstance(x, str) or len(x) > 40:
        return False
    from datetime import datetime

    try:
        datetime.fromisoformat(x)
    except ValueError:
        return False
    return True


def content_hash_ok(meta: dict[str, str]) -> bool:
    """`content_sha256` is absent or empty (written before hashes were recorded) or 64 hex digits."""
    value = meta.get("content_sha256", "")
    return value == "" or HEX64.match(value) is not None


def settings_of(meta: dict[str, str]) -> dict:
    """A delta header's `settings` as an object, or {} when it is absent or not a JSON object.

    For callers that only look names up (defaults, messages); `delta_fields` refuses a bad one.
    """
    try:
        value = json.loads(meta.get("settings") or "{}")
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _expect(cond: bool, where: str, field: str, expected: str, error: type[SzoqError], hint: str = REBUILD) -> None:
    if not cond:
        raise error(f"{where}: {field} must be {expected}", hint=hint)


# -- safetensors headers ---------------------------------------------------------------------
def parse_header(raw: bytes, where: str, *, data_size: int | None = None, error: type[SzoqError] = MaskError) -> Header:
    """Type-check a safetensors header (the JSON after the 8-byte length).

    Args:
        raw: The header bytes.
        where: The file, for messages.
        data_size: Bytes after the header, when known: every tensor must lie inside them.
        error: The SzoqError class to raise.

    Returns:
        The header with str -> str metadata and typed tensor entries.

    Raises:
        error: not a JSON object, metadata not str -> str, a tensor entry of the wrong shape.
    """
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise error(f"{where} is not a readable safetensors file (its header is not valid JSON)", hint=REBUILD) from None
    _expect(isinstance(header, dict), where, "the safetensors header", "a JSON object", error)
    meta = header.get("__metadata__", {})
    _expect(isinstance(meta, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()),
            where, "__metadata__", "an object of strings", error)
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        field = f"tensor {name[:80]!r}"
        _expect(isinstance(entry, dict), where, field, "an object", error)
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        _expect(isinstance(dtype, str) and dtype in DTYPE_SIZES, where, f"{field} dtype", "a safetensors dtype", error)
        _expect(isinstance(shape, list) and len(shape) <= 8 and all(is_int(d) and d >= 0 for d in shape), where,
                f"{field} shape", "a list of sizes >= 0", error)
        _expect(isinstance(offsets, list) and len(offsets) == 2 and all(is_int(o) for o in offsets) and 0 <= offsets[0] <= offsets[1],
                where, f"{field} data_offsets", "[begin, end] with 0 <= begin <= end", error)
        t = TensorEntry(dtype, tuple(shape), (offsets[0], offsets[1]))
        _expect(t.offsets[1] - t.offsets[0] == t.numel * DTYPE_SIZES[dtype], where, f"{field} data_offsets", "as long as its shape and dtype", error)
        if data_size is not None and t.offsets[1] > data_size:
            raise error(f"{where} is corrupt or truncated ({field} ends past the end of the file)", hint="pull or build it again")
        tensors[name] = t
    return Header(dict(meta), tensors)


def header_length(prefix: bytes, where: str, *, available: int | None = None, error: type[SzoqError] = MaskError) -> int:
    """The header length a safetensors file's first 8 bytes give (`available`: bytes after them, when known).

    Raises:
        error: fewer than 8 bytes, or a length over `MAX_HEADER_BYTES` or past the end of the file.
    """
    n, limit = int.from_bytes(prefix[:8], "little"), MAX_HEADER_BYTES if available is None else min(MAX_HEADER_BYTES, available)
    why = ("file shorter than a safetensors header" if len(prefix) < 8 else
           "header length is implausible or the file is truncated" if n > limit else None)
    if why:
        raise error(f"{where} is not a readable safetensors file ({why})", hint="the file is corrupt or truncated: pull or build it again")
    return n


def read_raw_header(fh: BinaryIO, where: str, *, error: type[SzoqError] = MaskError) -> tuple[bytes, int, int]:
    """(header JSON bytes, offset of the tensor data, bytes of tensor data) of an open safetensors file: every local header is read here.

    Raises:
        error: unreadable, or a length `header_length` refuses.
    """
    try:
        fh.seek(0)
        prefix, size = fh.read(8), fh.seek(0, 2)
        n = header_length(prefix, where, available=size - 8, error=error)
        fh.seek(8)
        return fh.read(n), 8 + n, size - 8 - n
    except OSError as exc:
        raise error(f"{where} is not a readable safetensors file ({exc})", hint="the file is corrupt or truncated: pull or build it again") from None


def read_header(path: Path, *, error: type[SzoqError] = MaskError) -> Header:
    """Read and type-check the header of a safetensors file (no tensor data is read).

    Raises:
        error: unreadable, truncated, or a header that fails `parse_header`.
    """
    try:
        with open(path, "rb") as fh:
            raw, _, data_size = read_raw_header(fh, str(path), error=error)
    except OSError as exc:
        raise error(f"{path} is not a readable safetensors file ({exc})", hint="the file is corrupt or truncated: pull or build it again") from None
    return parse_header(raw, str(path), data_size=data_size, error=error)


def json_field(meta: dict[str, str], key: str, where: str, *, error: type[SzoqError] = MaskError, default: Any = None) -> Any:
    """A metadata value that holds JSON (structure inside str -> str metadata)."""
    if key not in meta or meta[key] == "":
        return default
    return loads(meta[key], f"{where}: metadata {key}", error)


# -- mask ------------------------------------------------------------------------------------
_CALIBRATION_TYPES = {"source": str, "sha256": (str, type(None)), "samples": int, "seq_len": int, "seed": int, "tokens": int}
_CALIBRATION_COUNTS = ("samples", "seq_len", "tokens")  # counts: never negative


def check_calibration(value: Any, where: str, error: type[SzoqError] = MaskError) -> dict | None:
    """`calibration`: null, or an object whose known fields have their types."""
    if value is None:
        return None
    _expect(isinstance(value, dict), where, "calibration", "an object or null", error)
    for key, typ in _CALIBRATION_TYPES.items():
        if key in value:
            ok = is_int(value[key]) if typ is int else isinstance(value[key], typ)
            _expect(ok, where, f"calibration.{key}", typ.__name__ if isinstance(typ, type) else "a string or null", error)
    for key in _CALIBRATION_COUNTS:
        if key in value:
            _expect(0 <= value[key] <= 10**15, where, f"calibration.{key}", "a count >= 0", error)
    return value


def check_shapes(value: Any, where: str, error: type[SzoqError] = MaskError) -> dict[str, list[int]]:
    """`shapes`: an object of tensor name -> list of sizes >= 1."""
    _expect(isinstance(value, dict) and value, where, "shapes", "a non-empty object of tensor name -> shape", error)
    for name, shape in value.items():
        _expect(isinstance(shape, list) and 1 <= len(shape) <= 8 and all(is_int(d) and d >= 1 for d in shape), where,
                f"shapes[{name[:80]!r}]", "a list of sizes >= 1", error)
    return {k: list(v) for k, v in value.items()}


def check_stats(value: Any, where: str, error: type[SzoqError] = MaskError) -> dict:
    """`stats`: an object; nnz an object of ints, totals ints, captured_share a number."""
    _expect(isinstance(value, dict), where, "stats", "an object", error)
    if "nnz" in value:
        _expect(isinstance(value["nnz"], dict) and all(is_int(v) and v >= 0 for v in value["nnz"].values()), where, "stats.nnz", "an object of counts", error)
    for key in ("total_nnz", "total_numel"):
        if key in value:
            _expect(is_int(value[key]) and value[key] >= 0, where, f"stats.{key}", "a count", error)
    if "captured_share" in value:
        _expect(is_number(value["captured_share"]) and 0.0 <= value["captured_share"] <= 1.0, where, "stats.captured_share", "a share in [0, 1]", error)
    if "captured_share_per_tensor" in value:
        per = value["captured_share_per_tensor"]
        _expect(isinstance(per, dict) and all(is_number(v) and 0.0 <= v <= 1.0 for v in per.values()), where,
                "stats.captured_share_per_tensor", "an object of shares in [0, 1]", error)
    return value


# A mask may carry one fp32 tensor of its kept weights' scores per index tensor, named this prefix +
# the parameter name (values in the order of the indices). No model parameter name starts with it.
SCORES_PREFIX = "scores/"


def is_scores_name(name: str) -> bool:
    """Whether a mask tensor holds scores (`scores/PARAM`) rather than the indices of PARAM."""
    return name.startswith(SCORES_PREFIX)


def mask_fields(header: Header, where: str, *, scopes: tuple[str, ...], fmt: str, version: str | tuple[str, ...],
                scores_version: str | None = None) -> dict[str, Any]:
    """The typed facts of a mask, from its safetensors header alone.

    Args:
        header: The parsed header.
        where: The file, for messages.
        scopes: The known selection scopes.
        fmt: The expected `format`; version: the supported `format_version`(s).
        scores_version: The `format_version` a mask holding score tensors must have (None: any).

    Returns:
        The keyword arguments of `MaskConfig` that the header holds (`stats`, `command`,
        `targets` and `seed` only when it holds them: masks written before szoq 0.1 keep those
        in mask_config.json alone). Score tensors (`scores/PARAM`, fp32, one per index of PARAM)
        are checked here and left out of the nnz count.

    Raises:
        MaskError: not a szoq mask, an unsupported version, or a field of the wrong type.
    """
    meta = header.metadata
    if meta.get("format") != fmt:
        raise MaskError(f"{where} is not a szoq mask (format={meta.get('format', None)!r:.40})", hint="a szoq mask has format=szoq.mask in its safetensors header")
    if meta.get("format_version") not in ((version,) if isinstance(version, str) else version):
        raise MaskError(f"{where}: unsupported mask format_version {meta.get('format_version')!r:.40}", hint="upgrade szoq: pip install -U szoq")
    for key in ("base_model", "fingerprint", "density", "scope", "scorer", "shapes"):
        if key not in meta:
            raise MaskError(f"{where}: mask header is incomplete (no {key})", hint=REBUILD)
    _expect(meta["base_model"] != "" and len(meta["base_model"]) <= 1000, where, "base_model", "a model name", MaskError)
    _expect(bool(HEX64.match(meta["fingerprint"])), where, "fingerprint", "64 hex digits", MaskError)
    try:
        density = float(meta["density"])
    except ValueError:
        density = math.nan
    _expect(math.isfinite(density) and 0.0 < density < 1.0, where, "density", "a number in (0, 1)", MaskError)
    _expect(meta["scope"] in scopes, where, "scope", " or ".join(scopes), MaskError)
    _expect(_SCORER.fullmatch(meta["scorer"]) is not None and meta["scorer"] not in _NOT_SCORERS, where, "scorer", "a scorer name", MaskError)
    _expect(is_timestamp(meta.get("created_at", "")), where, "created_at", "an ISO 8601 time or empty", MaskError)
    _expect(content_hash_ok(meta), where, "content_sha256", "64 hex digits", MaskError)
    fields: dict[str, Any] = {
        "base_model": meta["base_model"], "base_revision": meta.get("base_revision") or None, "fingerprint": meta["fingerprint"],
        "density": density, "scope": meta["scope"], "scorer": meta["scorer"],
        "shapes": check_shapes(json_field(meta, "shapes", where), where),
        "calibration": check_calibration(json_field(meta, "calibration", where), where),
        "szoq_version": meta.get("szoq_version", ""), "created_at": meta.get("created_at", ""),
    }
    if meta.get("content_sha256"):
        fields["content_sha256"] = meta["content_sha256"]
    if "hash_scheme" in meta:
        fields["hash_scheme"] = meta["hash_scheme"]
    if "stats" in meta:
        fields["stats"] = check_stats(json_field(meta, "stats", where), where)
    if "command" in meta:
        fields["command"] = meta["command"] or None
    if "targets" in meta:
        fields["targets"] = meta["targets"] or None
    if "seed" in meta:
        _expect(re.fullmatch(r"-?\d{1,20}", meta["seed"]) is not None, where, "seed", "an integer", MaskError)
        fields["seed"] = int(meta["seed"])
    index = {n: t for n, t in header.tensors.items() if not is_scores_name(n)}
    for name, t in index.items():
        if name not in fields["shapes"]:
            raise MaskError(f"{where}: tensor {name[:80]!r} has no recorded shape", hint="the artifact is inconsistent: rebuild it")
        _expect(t.dtype == "I32" and len(t.shape) == 1, where, f"tensor {name[:80]!r}", "int32 and 1-D", MaskError)
        _expect(t.numel <= math.prod(fields["shapes"][name]), where, f"tensor {name[:80]!r}", "no longer than its recorded shape", MaskError)
    scored = {n.removeprefix(SCORES_PREFIX): t for n, t in header.tensors.items() if is_scores_name(n)}
    if scored:  # all or none: one score per kept weight of every index tensor
        _expect(set(scored) == set(index), where, "the score tensors", "one per index tensor", MaskError)
        _expect(scores_version is None or meta["format_version"] == scores_version, where, "format_version", f"{scores_version} (the mask holds scores)", MaskError)
        for name, t in scored.items():
            _expect(t.dtype == "F32" and len(t.shape) == 1 and t.numel == index[name].numel, where, f"tensor {(SCORES_PREFIX + name)[:80]!r}",
                    "fp32, 1-D, one score per index", MaskError)
    nnz = {n: t.numel for n, t in index.items()}
    stats = fields.get("stats")
    if stats is not None and "total_nnz" in stats and stats["total_nnz"] != sum(nnz.values()):
        raise MaskError(f"{where}: the recorded stats say {stats['total_nnz']} weights, the file holds {sum(nnz.values())}", hint=REBUILD)
    return fields


def mask_config_extras(text: str, header_fields: dict[str, Any], where: str, formats: dict[str, str] | None = None) -> dict[str, Any]:
    """Check `mask_config.json` against the header; return what only the config holds.

    The header is the truth: a config field that the header also holds must be equal to it.

    Args:
        text: The config file's text.
        header_fields: What `mask_fields` read from the header.
        where: The config file, for messages.
        formats: The header's `format` and `format_version` (the config's must equal them).

    Returns:
        `stats`, `command`, `targets`, `seed` from the config when the header lacks them
        (masks written before these moved into the header), type-checked.

    Raises:
        MaskError: not a JSON object, a field that disagrees with the header, a wrong type.
    """
    config = loads(text, where)
    formats = formats or {}
    _expect(isinstance(config, dict), where, "the config", "a JSON object", MaskError)
    for key, value in header_fields.items():
        if key in config and config[key] != value:
            raise MaskError(f"{where} does not match mask.safetensors ({key} differs: {str(config[key])[:40]!r} vs {str(value)[:40]!r})",
                            hint="the safetensors header is the truth; this config was edited or mixed up: pull or build the mask again")
    for key in ("format", "format_version"):  # mirrors of the header's own format fields: equal to them
        if key in config and config[key] != formats.get(key):
            raise MaskError(f"{where} does not match mask.safetensors ({key} differs: {str(config[key])[:40]!r} vs {formats.get(key)!r})",
                            hint="the safetensors header is the truth; this config was edited or mixed up: pull or build the mask again")
    for key in ("content_sha256", "hash_scheme"):  # a hash the config mirrors but the header lost: stripped, not old
        if config.get(key) and key not in header_fields:
            raise MaskError(f"{where} records a {key} that mask.safetensors lacks (its hash was stripped)",
                            hint="the safetensors header is the truth; this mask was edited: pull or build it again")
    extras: dict[str, Any] = {}
    if "stats" not in header_fields and "stats" in config:
        extras["stats"] = check_stats(config["stats"], where)
    for key in ("command", "targets"):
        if key not in header_fields and key in config:
            _expect(config[key] is None or isinstance(config[key], str), where, key, "a string or null", MaskError)
            extras[key] = config[key]
    if "seed" not in header_fields and "seed" in config:
        _expect(is_int(config["seed"]), where, "seed", "an integer", MaskError)
        extras["seed"] = config["seed"]
    return extras


def check_fits_model(shapes: dict[str, list[int]], layout: list[tuple[str, tuple[int, ...], str]], where: str) -> None:
    """Every tensor a mask records must be a parameter of the model, with the same shape.

    Raises:
        MaskError: naming the first tensor that does not fit.
    """
    params = {name: list(shape) for name, shape, _ in layout}
    for name, shape in shapes.items():
        if name not in params:
            raise MaskError(f"{where}: the mask selects weights of {name[:80]!r}, which this model does not have",
                            hint="the mask was built for another model: build one for this model with szoq mask build MODEL")
        if params[name] != list(shape):
            raise MaskError(f"{where}: the mask records {name} as {shape}, but the model's is {params[name]}",
                            hint="the mask does not fit this model (forged or built for another one): build one with szoq mask build MODEL")


# -- delta -----------------------------------------------------------------------------------
def delta_fields(header: Header, where: str, *, fmt: str, version: str) -> dict[str, Any]:
    """The typed facts of a delta, from its safetensors header alone.

    Returns:
        {"fingerprint", "mask_sha256", "base_model", "nnz", "settings", "content_sha256"} with
        their types (`content_sha256` None for deltas written before it was recorded).

    Raises:
        MaskError: not a szoq delta, unsupported version, a field of the wrong type, or
            tensors that are not fp32 1-D or do not add up to `nnz`.
    """
    meta = header.metadata
    if meta.get("format") != fmt:
        raise MaskError(f"{where} is not a szoq delta (format={meta.get('format', None)!r:.40})", hint="pass the delta.safetensors written by szoq finetune")
    if meta.get("format_version") not in ((version,) if isinstance(version, str) else version):
        raise MaskError(f"{where}: unsupported delta format_version {meta.get('format_version')!r:.40}", hint="upgrade szoq")
    for key in ("fingerprint", "mask_sha256"):
        _expect(bool(HEX64.match(meta.get(key, ""))), where, key, "64 hex digits", MaskError, hint="the delta is corrupt")
    _expect(re.fullmatch(r"\d{1,15}", meta.get("nnz", "")) is not None, where, "nnz", "a count", MaskError, hint="the delta is corrupt")
    settings = json_field(meta, "settings", where, default={})
    _expect(isinstance(settings, dict), where, "settings", "a JSON object", MaskError, hint="the delta is corrupt")
    _expect(content_hash_ok(meta), where, "content_sha256", "64 hex digits", MaskError, hint="the delta is corrupt")
    for name, t in header.tensors.items():
        _expect(t.dtype == "F32" and len(t.shape) == 1, where, f"tensor {name[:80]!r}", "fp32 and 1-D", MaskError, hint="the delta is corrupt")
    if sum(t.numel for t in header.tensors.values()) != int(meta["nnz"]):
        raise MaskError(f"{where}: value count does not match the header", hint="the delta is corrupt")
    return {"fingerprint": meta["fingerprint"], "mask_sha256": meta["mask_sha256"], "base_model": meta.get("base_model", ""),
            "nnz": int(meta["nnz"]), "settings": settings, "content_sha256": meta.get("content_sha256") or None}


# -- run configs --------------------------------------------------------------------------
def run_config(path: Path, error: type[SzoqError] = MaskError, hint: str = "the run folder is damaged") -> dict[str, Any]:
    """`finetune_config.json` as a dict whose `settings` and `task` are objects ({} when absent).

    Raises:
        error: not valid JSON, not an object, or `settings` / `task` not objects.
    """
    config = loads(path.read_text(encoding="utf-8", errors="replace"), str(path), error, hint=hint)
    _expect(isinstance(config, dict), str(path), "the config", "a JSON object", error, hint=hint)
    for key in ("settings", "task"):
        if config.get(key) is None:
            config[key] = {}
        _expect(isinstance(config[key], dict), str(path), key, "a JSON object", error, hint=hint)
    return config
