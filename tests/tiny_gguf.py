"""Tiny random GGUF model files written with `gguf.GGUFWriter`, for the streaming reader's tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def byte_vocab() -> list[str]:
    """The 256 byte-level BPE symbols (GPT-2's printable mapping of bytes)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def write_tiny_gguf(path: Path, *, arch: str = "llama", layers: int = 2, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
                    ffn: int = 128, qtype: str = "Q8_0", tied: bool = False, bias: bool | None = None, drop: tuple[str, ...] = (),
                    only: tuple[str, ...] | None = None, meta: dict | None = None, merges: list[str] | None = None, seed: int = 0) -> Path:
    """Write a random decoder in llama.cpp's layout.

    Args:
        path: The file to write.
        arch: GGUF architecture (`llama`, `qwen2`).
        qtype: Type of the 2-D weights: `Q8_0`, `Q4_0`, `Q4_1`, `Q5_0`, `F16` or `F32` (norms stay F32).
        tied: Leave out `output.weight` (the embedding is the output layer).
        bias: q/k/v biases (default: qwen2 has them).
        drop: Tensor names to leave out.
        only: Write only these tensors (the metadata still promises the whole model).
        meta: Metadata keys to override ({`block_count`: ...} is prefixed with the arch).
        merges: BPE merges (default a valid pair of merges).
        seed: numpy seed of the weights.

    Returns:
        `path`.
    """
    import gguf
    from gguf.quants import quantize

    rng = np.random.default_rng(seed)
    tokens = byte_vocab() + ["Ġt", "he", "<|endoftext|>"]
    vocab = len(tokens)
    bias = (arch == "qwen2") if bias is None else bias
    head_dim = hidden // heads
    w = gguf.GGUFWriter(str(path), arch)
    settings = {"block_count": layers, "context_length": 128, "embedding_length": hidden, "feed_forward_length": ffn,
                "attention.head_count": heads, "attention.head_count_kv": kv_heads, "attention.layer_norm_rms_epsilon": 1e-6,
                "rope.freq_base": 10000.0}
    settings.update(meta or {})
    for key, value in settings.items():
        full = f"{arch}.{key}"
        if isinstance(value, float):
            w.add_float32(full, value)
        else:
            w.add_uint32(full, int(value))
    w.add_name("tiny")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2" if arch == "qwen2" else "default")
    w.add_token_list(tokens)
    w.add_token_types([1] * (vocab - 1) + [3])
    w.add_token_merges(merges if merges is not None else ["Ġ t", "h e"])
    w.add_bos_token_id(vocab - 1)
    w.add_eos_token_id(vocab - 1)

    def add(name: str, shape: tuple[int, ...], scale: float = 0.05, quant: bool = True) -> None:
        if name in drop or (only is not None and name not in only):
            return
        data = (rng.standard_normal(shape) * scale).astype(np.float32)  # torch order [out, in]
        if quant and qtype not in ("F32",) and len(shape) == 2:
            q = getattr(gguf.GGMLQuantizationType, qtype)
            w.add_tensor(name, quantize(data, q), raw_dtype=q)
        else:
            w.add_tensor(name, data)

    add("token_embd.weight", (vocab, hidden))
    for i in range(layers):
        add(f"blk.{i}.attn_norm.weight", (hidden,), 1.0, False)
        add(f"blk.{i}.attn_q.weight", (heads * head_dim, hidden))
        add(f"blk.{i}.attn_k.weight", (kv_heads * head_dim, hidden))
        add(f"blk.{i}.attn_v.weight", (kv_heads * head_dim, hidden))
        if bias:
            add(f"blk.{i}.attn_q.bias", (heads * head_dim,), 0.1, False)
            add(f"blk.{i}.attn_k.bias", (kv_heads * head_dim,), 0.1, False)
            add(f"blk.{i}.attn_v.bias", (kv_heads * head_dim,), 0.1, False)
        add(f"blk.{i}.attn_output.weight", (hidden, heads * head_dim))
        add(f"blk.{i}.ffn_norm.weight", (hidden,), 1.0, False)
        add(f"blk.{i}.ffn_gate.weight", (ffn, hidden))
        add(f"blk.{i}.ffn_up.weight", (ffn, hidden))
        add(f"blk.{i}.ffn_down.weight", (hidden, ffn))
    add("output_norm.weight", (hidden,), 1.0, False)
    if not tied:
        add("output.weight", (vocab, hidden))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
