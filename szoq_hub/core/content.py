"""Content hashes of artifacts: one sha256 over what a file means, recorded in its own header.

Every artifact szoq writes (mask, sparse delta, LoRA adapter, dense weights) records
`content_sha256` in its safetensors header, and every load recomputes it before the file is
used. Two schemes exist, named by the header field `hash_scheme`:

- scheme 2 (written since szoq 0.1.0's third trust pass, `hash_scheme: "2"`): the sha256 of
  the canonical JSON of *every* header field except `content_sha256` itself (sorted keys, no
  whitespace, ASCII) followed by, for each tensor in sorted name order, its name, dtype and
  shape (JSON) and the sha256 of its raw bytes. A renamed tensor, a changed rank, alpha,
  target list, density, shape or run setting is therefore a hash mismatch, exactly as a
  flipped value bit is. Covering every field (rather than a chosen list of the ones "that
  matter") means no reader can start to depend on a field the hash forgot. Per-tensor digests
  make the hash computable while a large file is streamed in any tensor order (dense weights).
- scheme 1 (masks and deltas written before, and LoRA adapters of szoq <= this change; no
  `hash_scheme` field): the sha256 of the tensors' raw bytes in sorted name order. Such files
  still verify their values; their header is not covered, so the loaders' range and shape
  checks are all that guards it (a log note says so).

A file with no hash at all is accepted only where its format predates hashes (masks and deltas
of szoq 0.1.0, dense weights) and a warning says it was not checked; a scheme-2 file that lost
its hash, or a LoRA adapter without one, is refused. Hashing a mask, delta or adapter (a few MB)
costs milliseconds; a dense file (every linear weight) about a second per GB.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Iterable, Mapping

import torch

from .errors import SzoqError

log = logging.getLogger(__name__)

CONTENT_KEY = "content_sha256"
SCHEME_KEY = "hash_scheme"
SCHEME = "2"  # what every writer records now
_PREFIX = b"szoq-content-sha256-v2\n"


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """Scheme 1: sha256 of the tensors' raw bytes, concatenated in sorted name order.

    Args:
        tensors: name -> tensor (any device; copied to the CPU one at a time).

    Returns:
        64 hex digits.
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        cpu = tensors[name].detach().contiguous().cpu()
        if cpu.numel():
            h.update(memoryview(cpu.view(-1).view(torch.uint8).numpy()))  # [numel * element_size] bytes
    return h.hexdigest()


def tensor_digest(name: str, tensor: torch.Tensor) -> str:
    """Scheme 2's digest of one tensor: its name, dtype, shape and raw bytes."""
    cpu = tensor.detach().contiguous().cpu()
    h = hashlib.sha256(json.dumps([name, str(cpu.dtype).removeprefix("torch."), list(cpu.shape)]).encode() + b"\n")
    if cpu.numel():
        h.update(memoryview(cpu.view(-1).view(torch.uint8).numpy()))  # [numel * element_size] bytes
    return h.hexdigest()


def meaning_sha256(metadata: Mapping[str, str], digests: Iterable[tuple[str, str]]) -> str:
    """Scheme 2: sha256 over every header field but the hash itself, then every tensor's digest.

    Args:
        metadata: The safetensors `__metadata__` (str -> str).
        digests: (name, `tensor_digest`) of every tensor, in any order.

    Returns:
        64 hex digits.
    """
    fields = {k: v for k, v in metadata.items() if k != CONTENT_KEY}
    h = hashlib.sha256(_PREFIX)
    h.update(json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode() + b"\n")
    for name, digest in sorted(digests):
        h.update(f"{json.dumps(name, ensure_ascii=True)} {digest}\n".encode())
    return h.hexdigest()


def content_sha256(metadata: Mapping[str, str], tensors: Mapping[str, torch.Tensor]) -> str:
    """Scheme 2 of a whole file held in memory (`meaning_sha256` of its tensors)."""
    return meaning_sha256(metadata, ((n, tensor_digest(n, t)) for n, t in tensors.items()))


def stamp(metadata: Mapping[str, str], tensors: Mapping[str, torch.Tensor] | None = None,
          digests: Iterable[tuple[str, str]] | None = None) -> dict[str, str]:
    """The header to write: `metadata` plus `hash_scheme` 2 and its `content_sha256`.

    Args:
        metadata: Every other header field.
        tensors: The tensors to write (or `digests` of them, for files written tensor by tensor).
    """
    meta = {k: v for k, v in metadata.items() if k != CONTENT_KEY}
    meta[SCHEME_KEY] = SCHEME
    pairs = list(digests) if digests is not None else [(n, tensor_digest(n, t)) for n, t in (tensors or {}).items()]
    meta[CONTENT_KEY] = meaning_sha256(meta, pairs)
    return meta


def verify(metadata: Mapping[str, str], where: str, error: type[SzoqError], *, tensors: Mapping[str, torch.Tensor] | None = None,
           digests: Iterable[tuple[str, str]] | None = None, hashless_ok: bool, hint: str, pinned: bool = False) -> str:
    """Check a file's recorded content hash against what it holds.

    Args:
        metadata: The file's header.
        where: The file, for messages.
        error: The SzoqError class to raise.
        tensors: Its tensors; or `digests` (name, `tensor_digest`) when they were streamed (scheme 2 only).
        hashless_ok: Whether a file without any hash is accepted (formats that predate hashes).
        hint: What to do about a mismatch.
        pinned: The caller checked the whole file's sha256 against a pin (the catalog's): a
            hashless file is then checked after all, and no warning is given.

    Returns:
        "2" or "1" (the scheme checked), "pinned", or "" for a hashless file accepted with a warning.

    Raises:
        error: a mismatch, an unknown scheme, a scheme-2 header without its hash, or a hashless
            file where the format always had one.
    """
    recorded, scheme = metadata.get(CONTENT_KEY, ""), metadata.get(SCHEME_KEY)
    if scheme is None and not recorded:
        if not hashless_ok:
            raise error(f"{where} records no content hash: it cannot be checked, so it is refused", hint=hint)
        if pinned:
            log.info("%s records no content hash; its file sha256 is the one the catalog pins", where)
            return "pinned"
        log.warning("%s records no content hash (written before szoq recorded them): its contents are not checked", where)
        return ""
    if scheme is None:  # scheme 1: the tensors' bytes only
        if tensors is None:
            raise error(f"{where} records a scheme-1 content hash, which needs the whole file in memory", hint=hint)
        if tensors_sha256(tensors) != recorded:
            raise error(f"{where}: its contents do not match the content sha256 its header records (a flipped bit, or an edit)", hint=hint)
        log.info("%s: content hash scheme 1 (tensor bytes only; its header fields are range-checked, not hashed)", where)
        return "1"
    if scheme != SCHEME:
        raise error(f"{where}: unknown content hash scheme {scheme!r:.40}", hint="upgrade szoq (pip install -U szoq), or the file is damaged")
    if not recorded:
        raise error(f"{where} names hash scheme {SCHEME} but records no content sha256 (an edit, or a damaged file)", hint=hint)
    pairs = list(digests) if digests is not None else [(n, tensor_digest(n, t)) for n, t in (tensors or {}).items()]
    if meaning_sha256(metadata, pairs) != recorded:
        raise error(f"{where}: its header or tensors do not match the content sha256 it records (a flipped bit, or an edit)", hint=hint)
    return SCHEME


def describe_content_hash(recorded: str | None) -> str:
    """How `mask show` names the content hash: its first 12 digits, or why there is none."""
    return recorded[:12] if recorded else "none (written before szoq recorded content hashes: not checked)"
