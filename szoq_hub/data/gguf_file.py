"""Read a GGUF model file tensor by tensor, under the names the transformers model uses.

Why not transformers' own GGUF loading: `from_pretrained(gguf_file=...)` dequantizes every tensor
into one fp32 state dict before the model exists, so opening Qwen2.5-1.5B (a 1.1 GB Q4_K_M file)
peaked at 9.09 GB and a 7B file would need ~40 GB. Here the file is parsed once for its metadata
(`gguf.GGUFReader`, which maps the file but touches only the header), then each tensor's bytes
are read with a plain `readinto` (a mapping would keep every page it touched resident, the whole
file by the end) and dequantized on its own (`gguf.quants.dequantize`). A consumer keeps what it
needs (nf4 codes, a few exact fp32 values) and drops the rest before the next tensor is read, so
opening costs the runtime model + one fp32 tensor. A tensor the consumer will cast anyway (the
embedding, kept in the compute dtype) is dequantized a slab of rows at a time straight into the
cast buffer: quantization blocks never cross a row, so row slabs dequantize independently and
give the same numbers as the whole tensor. A consumer short of memory may also keep tensors as their
file bytes (`read_raw`, Q4_K: 0.56 bytes a weight) and dequantize on each use (`dequantize_cast`).

The values are bit for bit what transformers loads: the same `dequantize`, in fp32, then the same
per-architecture fix-ups of llama.cpp's conversion (the llama q/k rotary permutation undone,
Gemma's `norm + 1` undone), checked against transformers in tests/test_gguf_stream.py.
Architectures whose conversion fuses or splits tensors (MoE experts, GPT-2's fused qkv, ...) are
refused: they need several tensors in memory at once.

GGUF files are untrusted input: the metadata's sizes are checked against the tensors the file
actually holds before any model is built (a config promising 10,000 layers or weights the file
lacks is refused, naming what is missing), and every tensor's bytes must lie inside the file.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.errors import DependencyError, ModelError

log = logging.getLogger(__name__)

# Architectures (GGUF `general.architecture`) whose llama.cpp conversion changed a tensor's values
# in a way the reader must undo; every other supported architecture stores tensors as they are.
_PERMUTED_QK = {"llama"}  # llama.cpp interleaves the rotary halves of q and k
_NORM_PLUS_ONE = {"gemma2", "gemma3"}  # Gemma stores norm weights as w + 1
# Architectures whose transformers conversion fuses, splits or reshapes tensors: not streamable.
_REFUSED = {"qwen2moe", "qwen3moe", "gpt-oss", "gpt_oss", "bloom", "t5", "t5encoder", "gpt2", "mamba", "nemotron", "lfm2",
            "minimax-m2"}
SLAB_BYTES = 4 << 20  # fp32 bytes of one dequantized slab of rows when a tensor is cast on the fly (gguf-py's temporaries: ~2x)
_BLOCK = re.compile(r"^blk\.(\d+)\.")


def require_gguf():
    """Import `gguf` or explain how to get it.

    Raises:
        DependencyError: the package is missing.
    """
    try:
        import gguf
    except ImportError:
        raise DependencyError("loading a GGUF model needs the `gguf` package", hint="pip install gguf") from None
    return gguf


@dataclass(frozen=True)
class GGUFTensorInfo:
    """Where one tensor lives in the file.

    Attributes:
        name: The GGUF tensor name (`blk.0.attn_q.weight`).
        qtype: The ggml quantization type (a `gguf.GGMLQuantizationType`).
        shape: The torch shape ([out, in] for a linear: GGUF lists dims innermost first).
        n_bytes: Bytes of its data in the file.
        offset: Absolute byte offset of its data.
    """

    name: str
    qtype: object
    shape: tuple[int, ...]
    n_bytes: int
    offset: int

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


class GGUFModelFile:
    """A GGUF file's metadata and tensor table (no tensor data is read).

    Args:
        path: The `.gguf` file.

    Raises:
        ModelError: not a GGUF file, truncated, a tensor outside the file, big-endian.
        DependencyError: the `gguf` package is missing.
    """

    TABLE = "gguf_tensors.json"  # the parsed table, kept in the model's metadata folder

    def __init__(self, path: Path, table: Path | None = None) -> None:
        """Parse the file, or read the table an earlier parse of the same file wrote to `table`.

        gguf-py's reader walks every metadata array in Python (a 151k-token vocabulary and its
        merges: about a minute on a busy 2-core machine), so the table is parsed once, when the
        model's metadata folder is written, and read back from JSON by every later open.
        """
        gguf = require_gguf()
        self.path = Path(path)
        size = self.path.stat().st_size
        if table is not None and table.is_file():
            try:
                saved = json.loads(table.read_text())
                if saved["size"] == size:
                    self.fields = saved["fields"]
                    self.architecture = saved["architecture"]
                    self.tensors = {t[0]: GGUFTensorInfo(t[0], gguf.GGMLQuantizationType(t[1]), tuple(t[2]), t[3], t[4]) for t in saved["tensors"]}
                    return
            except (OSError, ValueError, KeyError, TypeError, IndexError):
                pass  # unreadable: parse the file again
        try:
            reader = gguf.GGUFReader(str(self.path), "r")
        except Exception as exc:  # gguf raises ValueError, struct/numpy errors on a damaged file
            raise ModelError(f"{self.path.name} is not a readable GGUF file: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                             hint="the file is incomplete or not a GGUF model: download it again") from None
        if getattr(reader, "byte_order", "I") != "I":
            raise ModelError(f"{self.path.name} is a big-endian GGUF file", hint="use a little-endian GGUF (the llama.cpp default)")
        self.fields: dict[str, object] = {}
        for key, field in reader.fields.items():
            if key.startswith("tokenizer.ggml.") and key not in ("tokenizer.ggml.model", "tokenizer.ggml.pre"):
                continue  # vocab arrays: the tokenizer reads them, the checks here do not
            try:
                value = field.contents()
            except Exception:  # an exotic type: no check here needs it
                continue
            self.fields[key] = value
        self.architecture = str(self.fields.get("general.architecture", ""))
        if not self.architecture:
            raise ModelError(f"{self.path.name} has no general.architecture", hint="the file is not a GGUF model")
        self.tensors: dict[str, GGUFTensorInfo] = {}
        for t in reader.tensors:
            info = GGUFTensorInfo(t.name, t.tensor_type, tuple(int(d) for d in reversed(t.shape.tolist())), int(t.n_bytes), int(t.data_offset))
            if info.offset < 0 or info.offset + info.n_bytes > size:
                raise ModelError(f"{self.path.name}: tensor {t.name} lies outside the file ({info.offset + info.n_bytes} > {size} bytes)",
                                 hint="the file is truncated: download it again")
            self.tensors[t.name] = info
        del reader  # closes the mapping: the tensor table is all that is kept

    def save_table(self, table: Path) -> None:
        """Write the parsed table (scalar metadata + tensor entries) for later opens."""
        fields = {k: v for k, v in self.fields.items() if isinstance(v, (int, float, str, bool))}
        tensors = [[t.name, int(t.qtype), list(t.shape), t.n_bytes, t.offset] for t in self.tensors.values()]
        table.write_text(json.dumps({"size": self.path.stat().st_size, "architecture": self.architecture, "fields": fields, "tensors": tensors}))

    def meta(self, key: str, default=None):
        """An architecture field (`block_count` -> `{arch}.block_count`), or `default`."""
        return self.fields.get(f"{self.architecture}.{key}", default)

    def check_ranges(self) -> None:
        """Check the metadata's sizes against the tensors the file holds, before any model is built.

        Raises:
            ModelError: a size field that is not a positive integer, more layers than the file
                holds tensors for, or dimensions that contradict the embedding's shape.
        """
        name = self.path.name
        blocks = sorted({int(m.group(1)) for t in self.tensors if (m := _BLOCK.match(t))})
        n_layers = self.meta("block_count")
        if not isinstance(n_layers, int) or n_layers < 1:
            raise ModelError(f"{name}: {self.architecture}.block_count is {n_layers!r}, not a positive integer", hint="the file's metadata is damaged")
        absent = [i for i in range(n_layers) if i not in set(blocks)]
        if absent:
            raise ModelError(f"{name} promises {n_layers} layers ({self.architecture}.block_count) but holds tensors for {len(blocks)}: "
                             f"no blk.{absent[0]}.* tensors ({len(absent)} layer(s) missing)",
                             hint="the file is incomplete or its metadata is wrong: download it again")
        emb = self.tensors.get("token_embd.weight")
        if emb is None:
            raise ModelError(f"{name} holds no token_embd.weight (the input embedding)", hint="the file is incomplete: download it again")
        hidden = self.meta("embedding_length")
        if hidden != emb.shape[-1]:
            raise ModelError(f"{name}: {self.architecture}.embedding_length is {hidden!r} but token_embd.weight is {list(emb.shape)}",
                             hint="the file's metadata does not match its tensors")
        ffn = self.meta("feed_forward_length")
        up = self.tensors.get("blk.0.ffn_up.weight")
        if up is not None and isinstance(ffn, int) and ffn != up.shape[0]:
            raise ModelError(f"{name}: {self.architecture}.feed_forward_length is {ffn} but blk.0.ffn_up.weight is {list(up.shape)}",
                             hint="the file's metadata does not match its tensors")
        if self.architecture in _REFUSED:
            raise ModelError(f"{name}: GGUF architecture {self.architecture!r} stores tensors that must be fused or split to load; "
                             "szoq streams one tensor at a time", hint="convert it once with transformers (from_pretrained + save_pretrained) and pass the folder")

    def hf_names(self, model: nn.Module) -> dict[str, str]:
        """GGUF tensor name -> the model's state-dict name, for the tensors the model has a place for.

        Uses gguf-py's own table of llama.cpp tensor names (`get_tensor_name_map`), looked up with
        each state-dict name and, for wrapped models, with its leading module names removed.
        """
        gguf = require_gguf()
        arch = next((k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == self.architecture), None)
        if arch is None:
            raise ModelError(f"{self.path.name}: GGUF architecture {self.architecture!r} is unknown to the installed gguf package",
                             hint="pip install -U gguf")
        table = gguf.get_tensor_name_map(arch, int(self.meta("block_count")))
        out: dict[str, str] = {}
        for hf_name in model.state_dict():
            base, dot, suffix = hf_name.rpartition(".")
            if not dot:
                continue
            parts = base.split(".")
            for i in range(len(parts)):  # `model.layers.0.mlp.up_proj`, then `layers.0.mlp.up_proj`, ...
                gguf_name = table.get_name(".".join(parts[i:]))
                if gguf_name is not None:
                    out.setdefault(f"{gguf_name}.{suffix}", hf_name)
                    break
        return out

    def check_against(self, model: nn.Module, names: dict[str, str], tied: bool) -> None:
        """Refuse a model whose parameters the file does not hold, or holds in another shape.

        Args:
            model: The model built from the file's config (meta device).
            names: `hf_names(model)`.
            tied: The output embedding is the input embedding (needs no tensor of its own).

        Raises:
            ModelError: naming the missing or misshapen tensors.
        """
        by_hf = {hf: g for g, hf in names.items()}
        out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        skip = {n for n, p in model.named_parameters() if tied and out_emb is not None and p is out_emb.weight} if tied else set()
        missing, misshapen = [], []
        for hf, p in model.named_parameters():
            if hf in skip:
                continue
            g = by_hf.get(hf)
            info = self.tensors.get(g) if g is not None else None
            if info is None:
                missing.append(f"{g or '?'} ({hf})")
            elif info.shape != tuple(p.shape):
                misshapen.append(f"{g} is {list(info.shape)}, {hf} is {list(p.shape)}")
        if missing:
            raise ModelError(f"{self.path.name} lacks {len(missing)} tensor(s) its config promises: {', '.join(missing[:3])}"
                             + (" ..." if len(missing) > 3 else ""), hint="the file is incomplete or its metadata is wrong: download it again")
        if misshapen:
            raise ModelError(f"{self.path.name}: {len(misshapen)} tensor(s) do not have the shape its config gives: {misshapen[0]}",
                             hint="the file's metadata does not match its tensors")

    def mapped_embedding(self, model: nn.Module, names: dict[str, str], dtype: torch.dtype) -> str | None:
        """Install a `MappedEmbedding` as the model's input embedding when it is not tied to the
        output layer; returns its parameter name (to `skip` when streaming), or None.
        """
        emb = model.get_input_embeddings()
        out = model.get_output_embeddings()
        info = self.tensors.get("token_embd.weight")
        name = next((f"{n}.weight" for n, m in model.named_modules() if m is emb), None)
        if info is None or name is None or names.get("token_embd.weight") != name or len(info.shape) != 2:
            return None
        if out is not None and (getattr(model.config, "tie_word_embeddings", False) or "output.weight" not in self.tensors):
            return None  # tied: lm_head needs every row
        model.set_input_embeddings(MappedEmbedding(self.path, info, dtype, getattr(emb, "padding_idx", None)))
        return name

    def heads(self) -> tuple[int | None, int | None]:
        """(attention heads, key-value heads) for the q/k un-permutation, from the file's metadata.

        As transformers does: when either count is absent the tensors are left as they are.
        """
        heads, kv = self.meta("attention.head_count"), self.meta("attention.head_count_kv")
        if not isinstance(heads, int) or not isinstance(kv, int):
            return None, None
        return heads, kv

    def iter_tensors(self, names: dict[str, str], cast=None, skip: frozenset[str] = frozenset()):
        """Yield (model name, tensor) one tensor at a time, in file order.

        Args:
            names: GGUF name -> model name (`hf_names`); tensors without one are skipped.
            cast: Optional (model name) -> torch dtype or None. A tensor with a dtype is returned
                in it, dequantized slab by slab into the cast buffer; without one it is fp32.
            skip: Model names not to read (e.g. an input embedding served by `mapped_embedding`).

        Raises:
            ModelError: a tensor type `gguf` cannot dequantize, or a short read.
        """
        skipped = [g for g in self.tensors if g not in names]
        if skipped:
            log.info("%d GGUF tensor(s) have no place in the model (e.g. %s)", len(skipped), skipped[0])
        entries = sorted((t for t in self.tensors.values() if t.name in names and names[t.name] not in skip), key=lambda t: t.offset)
        with open(self.path, "rb") as fh:
            for info in entries:
                hf = names[info.name]
                dtype = cast(hf) if cast is not None else None
                fixup = self.fixup(info.name)
                if dtype is not None and fixup is None and info.shape:
                    tensor = cast_rows(lambda r0, r1: self._raw(fh, info, r0, r1), info, dtype, self.path.name)
                else:
                    tensor = dequantize_rows(self._raw(fh, info, 0, _rows(info)), info, self.path.name)  # [rows, row] fp32
                    tensor = tensor.reshape(info.shape) if info.shape else tensor.reshape(())
                    if fixup is not None:
                        tensor = fixup(tensor)
                    if dtype is not None:
                        tensor = tensor.to(dtype)
                yield hf, tensor
                del tensor

    def read_raw(self, gguf_names: list[str]) -> dict[str, torch.Tensor]:
        """The file bytes of these tensors, uint8 [rows, row_bytes] each: views of one buffer, freed as a
        whole when the last view goes (`dequantize_cast` gives the values). Raises ModelError on a short read."""
        infos = sorted((self.tensors[g] for g in gguf_names), key=lambda t: t.offset)
        buffer = torch.empty(sum(t.n_bytes for t in infos), dtype=torch.uint8)
        out, at = {}, 0
        with open(self.path, "rb") as fh:
            for info in infos:
                out[info.name] = buffer[at : at + info.n_bytes].view(_rows(info), -1)  # [rows, row_bytes]
                self._raw(fh, info, 0, _rows(info), into=out[info.name].numpy())
                at += info.n_bytes
        return out

    def fixup(self, gguf_name: str):
        """The inverse of llama.cpp's change to this tensor's values (fp32 tensor -> tensor), or None."""
        if self.architecture in _PERMUTED_QK and (".attn_q." in gguf_name or ".attn_k." in gguf_name):
            n_head = self.heads()[1 if ".attn_k." in gguf_name else 0]
            return lambda t: unpermute_qk(t, n_head)
        if self.architecture in _NORM_PLUS_ONE and "norm.weight" in gguf_name:
            return lambda t: t - 1
        return None

    def _raw(self, fh, info: GGUFTensorInfo, row0: int, row1: int, into: np.ndarray | None = None) -> np.ndarray:
        """The file bytes of rows [row0, row1) of one tensor (a row = its innermost dim): uint8 [n, row_bytes]."""
        row_bytes = info.n_bytes // _rows(info)
        raw = np.empty((row1 - row0, row_bytes), dtype=np.uint8) if into is None else into
        fh.seek(info.offset + row0 * row_bytes)
        if fh.readinto(memoryview(raw.reshape(-1))) != raw.size:
            raise ModelError(f"{self.path.name} is truncated (tensor {info.name})", hint="the file is incomplete: download it again")
        return raw


def cast_rows(read, info: GGUFTensorInfo, dtype: torch.dtype, where: str) -> torch.Tensor:
    """A tensor in `dtype`, dequantized into it a slab of rows at a time; `read(row0, row1)` gives those
    rows' file bytes (uint8 [n, row_bytes]). Blocks never cross a row: the whole tensor's values, cast."""
    rows, row_len = _rows(info), info.shape[-1]
    out = torch.empty(rows, row_len, dtype=dtype)  # [rows, row]
    step = max(1, SLAB_BYTES // (4 * row_len))
    for r in range(0, rows, step):
        out[r : r + step].copy_(dequantize_rows(read(r, min(rows, r + step)), info, where))
    return out.view(info.shape)


def dequantize_cast(raw: torch.Tensor, info: GGUFTensorInfo, dtype: torch.dtype, fixup, where: str) -> torch.Tensor:
    """Tensor `info` from its file bytes (uint8 [rows, row_bytes]): bit for bit what `iter_tensors`
    yields cast to `dtype` (the same slabs, or, with a `fixup`, the same fp32 tensor fixed then cast)."""
    if fixup is None:
        return cast_rows(lambda r0, r1: raw[r0:r1].numpy(), info, dtype, where)
    return fixup(dequantize_rows(raw.numpy(), info, where).reshape(info.shape)).to(dtype)


def dequantize_rows(raw: np.ndarray, info: GGUFTensorInfo, where: str) -> torch.Tensor:
    """fp32 [n, row] from the file bytes of n whole rows ([n, row_bytes] uint8) of tensor `info`."""
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import dequantize

    n = raw.shape[0]
    row_len = info.shape[-1] if info.shape else 1
    if info.qtype == Q.F32:
        data = raw.reshape(-1).view(np.float32)
    elif info.qtype == Q.F16:
        data = raw.reshape(-1).view(np.float16)
    else:
        data = raw
    try:
        values = dequantize(data, info.qtype)  # fp32
    except (NotImplementedError, ValueError, KeyError) as exc:
        raise ModelError(f"{where}: tensor {info.name} has type {getattr(info.qtype, 'name', info.qtype)}, which gguf cannot "
                         f"dequantize ({exc})", hint="pip install -U gguf, or use a file with common quant types (Q4_K_M, Q8_0, F16)") from None
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).reshape(n, row_len)


class MappedEmbedding(nn.Module):
    """A frozen input embedding served from the GGUF file's own (quantized) rows.

    A forward dequantizes only the rows of the tokens it sees, from a private read-only map of
    the file: of a 151,936 x 1,536 table (467 MB in bf16) a batch touches a few hundred rows, so
    the embedding costs a few MB of resident memory. The rows are exactly what dequantizing the
    whole tensor and casting it to `dtype` gives (quantization blocks never cross a row). CPU only,
    and only for an embedding that is not also the output layer (a tied lm_head reads every row).

    Args:
        path: The GGUF file (must not change while the module lives).
        info: The embedding's tensor entry.
        dtype: The compute dtype of the rows it returns.
        padding_idx: As `nn.Embedding`'s (no effect on a frozen lookup; kept for introspection).
    """

    def __init__(self, path: Path, info: GGUFTensorInfo, dtype: torch.dtype, padding_idx: int | None = None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = info.shape
        self.padding_idx = padding_idx
        self.dtype = dtype
        self._info = info
        self._where = Path(path).name
        size = Path(path).stat().st_size
        mapping = torch.from_file(str(path), shared=False, size=size, dtype=torch.uint8)  # MAP_PRIVATE: pages load on touch
        self._rows = mapping[info.offset : info.offset + info.n_bytes].view(self.num_embeddings, -1)  # [vocab, row_bytes]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # [...] -> [..., hidden]
        flat = input_ids.reshape(-1).cpu()
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.num_embeddings):
            raise IndexError(f"token id out of range for an embedding of {self.num_embeddings} rows")
        ids, inverse = torch.unique(flat, return_inverse=True)  # [u], [n]
        rows = dequantize_rows(self._rows[ids].numpy(), self._info, self._where).to(self.dtype)  # [u, hidden]
        return rows[inverse].view(*input_ids.shape, self.embedding_dim).to(input_ids.device)

    @property
    def weight(self) -> torch.Tensor:
        """The whole table in `dtype` (materialised: for callers that need every row)."""
        return dequantize_rows(self._rows.numpy(), self._info, self._where).to(self.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, mapped from {self._where} ({getattr(self._info.qtype, 'name', '?')})"


def _rows(info: GGUFTensorInfo) -> int:
    return int(np.prod(info.shape[:-1], dtype=np.int64)) if len(info.shape) > 1 else 1


def unpermute_qk(weight: torch.Tensor, n_head: int | None) -> torch.Tensor:
    """Undo llama.cpp's rotary permutation of a q or k projection.

    llama.cpp stores each head's rows as interleaved (even, odd) pairs; transformers' Llama wants
    the two rotary halves one after the other. Pure data movement: exact.

    Args:
        weight: [n_head * head_dim, ...] as stored in the GGUF.
        n_head: Heads of this projection (key-value heads for k); None leaves it as it is.

    Returns:
        [n_head * head_dim, ...] in transformers' order.
    """
    if n_head is None:
        return weight
    rest = weight.shape[1:]
    half = weight.shape[0] // n_head // 2
    # [n_head, half, 2, ...] (pairs) -> [n_head, 2, half, ...] (halves)
    return weight.reshape(n_head, half, 2, *rest).transpose(1, 2).reshape(weight.shape)
