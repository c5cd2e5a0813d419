"""Read a safetensors checkpoint tensor by tensor, under the names the model uses.

Three things a transformers checkpoint folder asks of a reader that streams it:
- Which files hold the weights: `model.safetensors.index.json` names them when present (a folder
  may hold other `*.safetensors`, e.g. Mistral's `consolidated.safetensors`, that are not part
  of the transformers checkpoint); else `model.safetensors`; else every `*.safetensors`.
  Pickle weights (`*.bin`, `*.pt`, `*.pth`) are never read: unpickling runs arbitrary code.
- How checkpoint keys map to the model's parameter names: the rules of transformers'
  `from_pretrained` itself (its registered key renamings, e.g. `LayerNorm.gamma` -> `.weight`,
  then adding or stripping `base_model_prefix`, so a `GPT2Model` checkpoint with `h.0...` keys
  loads into `GPT2LMHeadModel`'s `transformer.h.0...`).
- Reading without mmap (see `iter_tensors`), except for tensors the caller asks to map: the
  input embedding on the CPU, of which a forward reads only the rows of its tokens.
Conversions that fuse or split several checkpoint tensors into one parameter (MoE expert
stacking) need every part in memory at once and are refused with a clear error.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from ..core import schema
from ..core.errors import ModelError

log = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")

_PICKLE_HINT = (
    "szoq reads safetensors only and never unpickles .bin/.pt files (loading a pickle can run arbitrary code). "
    "Use a revision of the repo with *.safetensors (many have one, e.g. a refs/pr/N branch), or convert once in a "
    "trusted environment: AutoModelForCausalLM.from_pretrained(PATH).save_pretrained(OUT)"
)


def checkpoint_files(folder: Path) -> list[Path]:
    """The safetensors files that make up the checkpoint in `folder`.

    Args:
        folder: A transformers model folder.

    Returns:
        The files named by `model.safetensors.index.json` (in order, each once) when it exists,
        else `[model.safetensors]` when it exists, else every `*.safetensors` in the folder.

    Raises:
        ModelError: an unreadable index or one naming a missing file; a folder holding only
            pickle weights (refused, never unpickled) or no weights at all.
    """
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = list(dict.fromkeys(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ModelError(f"{index} is not a valid safetensors index (no weight_map)", hint="the checkpoint is corrupt: download or save it again") from None
        files = [folder / n for n in names]
        missing = [p.name for p in files if not p.is_file()]
        if missing:
            raise ModelError(
                f"{index.name} names {len(missing)} file(s) missing from {folder} (e.g. {missing[0]})",
                hint="the download is incomplete: download the model again",
            )
        return files
    if (folder / SINGLE_FILE).is_file():
        return [folder / SINGLE_FILE]
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file()) if folder.is_dir() else []
    if pickles:
        raise ModelError(f"{folder} holds only pickle weights ({', '.join(pickles[:3])}), no *.safetensors", hint=_PICKLE_HINT)
    raise ModelError(f"{folder} holds no *.safetensors weights", hint=_PICKLE_HINT)


ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


def _read_header(fh, path: Path) -> tuple[dict, int]:
    """The JSON header of an open safetensors file and the byte offset where its data starts.

    The bytes are read where every safetensors header is (`core.schema.read_raw_header`); a
    checkpoint's entries stay plain dicts, their dtypes checked as tensors are read.
    """
    raw, start, _ = schema.read_raw_header(fh, str(path), error=ModelError)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):
        header = None
    if not isinstance(header, dict):
        raise ModelError(f"{path} is not a readable safetensors file", hint="the checkpoint is corrupt: download or convert it again")
    return header, start


def read_header(path: Path) -> dict:
    """The tensor entries of a safetensors file's header (no `__metadata__`); reads no tensor data.

    Raises:
        ModelError: the file is not safetensors.
    """
    with open(path, "rb") as fh:
        header, _ = _read_header(fh, path)
    header.pop("__metadata__", None)
    return header


def iter_tensors(files: list[Path], map_if=None):
    """Yield (checkpoint key, tensor) one owned tensor at a time from safetensors files.

    Plain reads instead of safetensors' mmap: a mapping keeps every page it has touched
    resident until it is closed (the whole checkpoint, by the end of a file), and writes into
    mapped views copy-on-write scattered pages. Reading each tensor into its own buffer keeps
    the process at one full-precision tensor at a time.

    The exception is a tensor for which `map_if(key, dtype)` is true: it is yielded as a view
    of a private (copy-on-write) memory map of its file and never read. Only the pages a
    computation touches become resident: an embedding lookup touches its tokens' rows, so a
    frozen CPU embedding costs a few MB of resident memory instead of vocab x hidden (192 MiB
    for a 49k x 2048 bf16 table, 1 GB for Llama-3-8B's 128k x 4096). The file must not be
    truncated while the view lives (Hub cache blobs never change).

    Args:
        files: The checkpoint's safetensors files (see `checkpoint_files`).
        map_if: Optional predicate (checkpoint key, torch dtype) -> map instead of read.

    Raises:
        ModelError: a file that is not safetensors, truncated, or holds an unsupported dtype.
    """
    for path in files:
        mapping: torch.Tensor | None = None  # [file bytes] uint8, created on the first mapped tensor
        with open(path, "rb") as fh:
            header, base = _read_header(fh, path)
            entries = sorted(((k, v) for k, v in header.items() if k != "__metadata__"), key=lambda kv: kv[1]["data_offsets"][0])
            for key, meta in entries:
                start, end = meta["data_offsets"]
                dtype = ST_DTYPES.get(meta["dtype"])
                if dtype is None:
                    raise ModelError(f"{path}: tensor {key} has unsupported dtype {meta['dtype']}", hint="convert the checkpoint to fp32/bf16/fp16 safetensors")
                itemsize = torch.empty(0, dtype=dtype).element_size()
                if map_if is not None and end > start and (base + start) % itemsize == 0 and map_if(key, dtype):
                    if mapping is None:
                        size = path.stat().st_size
                        mapping = torch.from_file(str(path), shared=False, size=size, dtype=torch.uint8)  # MAP_PRIVATE
                    if base + end > mapping.numel():
                        raise ModelError(f"{path} is truncated (tensor {key})", hint="the checkpoint is incomplete: download or convert it again")
                    yield key, mapping[base + start : base + end].view(dtype).view(meta["shape"])
                    continue
                tensor = torch.empty(meta["shape"], dtype=dtype)
                raw = tensor.view(-1).view(torch.uint8) if tensor.numel() else torch.empty(0, dtype=torch.uint8)
                fh.seek(base + start)
                if raw.numel() and fh.readinto(raw.numpy()) != end - start:
                    raise ModelError(f"{path} is truncated (tensor {key})", hint="the checkpoint is incomplete: download or convert it again")
                yield key, tensor
                del tensor, raw  # the consumer is done with it: free before reading the next


class KeyMapper:
    """Map checkpoint keys to the model's state-dict names as `from_pretrained` does.

    Built from the model before any module is replaced (it needs the original state-dict
    names, on the meta device or not).

    Args:
        model: The transformers model the checkpoint is loaded into.
    """

    def __init__(self, model: nn.Module) -> None:
        self.names = set(model.state_dict().keys())
        self.prefix = getattr(model, "base_model_prefix", "") or ""
        self._names_dict = dict.fromkeys(self.names, True)  # rename_source_key asks `.get(name)` only
        self._renamings: list = []
        self._converters: list = []
        self._rename = None
        try:  # transformers >= 5: its registered key conversions and its own rename rule
            from transformers.conversion_mapping import get_model_conversion_mapping
            from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
        except ImportError:  # older transformers: prefix handling only (below)
            return
        mapping = get_model_conversion_mapping(model)
        self._renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
        self._converters = [m for m in mapping if isinstance(m, WeightConverter)]
        self._rename = rename_source_key

    def __call__(self, key: str) -> str | None:
        """The model name of a checkpoint key, or None when the model has no place for it.

        Raises:
            ModelError: the key needs a multi-tensor conversion (fusing or splitting tensors).
        """
        if self._rename is not None:
            name, converter = self._rename(key, self._renamings, self._converters, self.prefix or None, self._names_dict)
            if name not in self.names and key in self.names:  # as transformers: prefer the key as it is
                name, converter = key, None
            if converter is not None and name in self.names:
                raise ModelError(
                    f"checkpoint tensor {key} must be converted ({converter} -> {name}) with other tensors; "
                    "the streaming runtime loads one tensor at a time",
                    hint="save the model once with transformers (from_pretrained + save_pretrained) to store it in its current layout",
                )
            return name if name in self.names else None
        if key in self.names:
            return key
        if self.prefix and key.startswith(self.prefix + ".") and key[len(self.prefix) + 1:] in self.names:
            return key[len(self.prefix) + 1:]
        if self.prefix and f"{self.prefix}.{key}" in self.names:
            return f"{self.prefix}.{key}"
        return None


_ST_NAMES = {v: k for k, v in ST_DTYPES.items()}


def write_tensors(path: Path, tensors: list[tuple[str, torch.Tensor]], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file tensor by tensor (atomic: temp file, then rename).

    `safetensors.torch.save_file` serializes every tensor into one in-memory buffer first (a
    second copy of everything written); this writes each tensor's bytes straight from its
    storage, so writing 100M+ trained weights costs no more than one tensor's CPU copy.

    Args:
        path: The file to write.
        tensors: (name, tensor) in file order; any device (copied to the CPU one at a time).
        metadata: str -> str header metadata (safetensors' `__metadata__`).
    """
    from ..core.files import atomic_file

    with atomic_file(path) as tmp:
        with open(tmp, "wb") as fh:
            for chunk in _file_chunks(tensors, metadata):
                fh.write(chunk)


def tensors_file_sha256(tensors: list[tuple[str, torch.Tensor]], metadata: dict[str, str] | None = None) -> str:
    """The sha256 of the file `write_tensors` would write, computed without writing it.

    Args:
        tensors: (name, tensor) in file order.
        metadata: str -> str header metadata.

    Returns:
        The hex digest.
    """
    import hashlib

    digest = hashlib.sha256()
    for chunk in _file_chunks(tensors, metadata):
        digest.update(chunk)
    return digest.hexdigest()


def _file_chunks(tensors: list[tuple[str, torch.Tensor]], metadata: dict[str, str] | None):
    """The bytes of a safetensors file, in order: header length, header, each tensor's data."""
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, t in tensors:
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _ST_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    yield len(raw).to_bytes(8, "little")
    yield raw
    for _, t in tensors:
        cpu = t.detach().contiguous().cpu()
        if cpu.numel():
            yield memoryview(cpu.view(-1).view(torch.uint8).numpy())
        del cpu
