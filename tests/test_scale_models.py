"""bench/scale_models.py: shard-by-shard random checkpoints that transformers loads, resumable."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import scale_models  # noqa: E402


def test_shards_index_resume_and_spec(tmp_path):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "ckpt"
    shard_gib = 3e-3  # ~3 MiB: the tiny shape spans several shards
    scale_models.write_checkpoint("llama-tiny", folder, seed=3, shard_gib=shard_gib, tokenizer=False, log=lambda s: None)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) >= 3
    assert sorted(p.name for p in folder.glob("*.safetensors")) == files
    for f in files:  # no shard beyond the limit unless it is a single tensor
        with safe_open(str(folder / f), "pt") as sf:
            keys = list(sf.keys())
            assert all(index["weight_map"][k] == f for k in keys)
        assert (folder / f).stat().st_size <= shard_gib * 2**30 + 64 * 1024 or len(keys) == 1
    model = AutoModelForCausalLM.from_pretrained(folder)
    params = dict(model.named_parameters())
    assert set(params) == set(index["weight_map"])
    assert index["metadata"]["total_parameters"] == sum(p.numel() for p in params.values())
    assert str(model.dtype) == "torch.bfloat16"
    assert 0.015 < params["model.layers.0.mlp.up_proj.weight"].float().std() < 0.025
    assert (params["model.norm.weight"] == 1).all()

    # resume: a missing shard and marker are rewritten byte-identically; others are kept
    victim = folder / files[1]
    before = victim.read_bytes()
    victim.unlink()
    (folder / scale_models.MARKER).unlink()
    kept_mtime = (folder / files[0]).stat().st_mtime_ns
    scale_models.write_checkpoint("llama-tiny", folder, seed=3, shard_gib=shard_gib, tokenizer=False, log=lambda s: None)
    assert victim.read_bytes() == before
    assert (folder / files[0]).stat().st_mtime_ns == kept_mtime
    # another seed in the same folder is refused, not mixed in
    with pytest.raises(SystemExit, match="another spec"):
        scale_models.write_checkpoint("llama-tiny", folder, seed=4, shard_gib=shard_gib, tokenizer=False, log=lambda s: None)


def test_real_shapes():
    counts = {name: sum(scale_models._numel(s) for _, s in scale_models.parameter_shapes(scale_models.make_config(name)))
              for name in ("llama-2-7b", "llama-1.1b")}
    assert round(counts["llama-2-7b"] / 1e9, 2) == 6.88
    assert round(counts["llama-1.1b"] / 1e9, 2) == 1.17


def test_bench_stopgap_random_mask_equals_mask_build(tiny_model_dir, tmp_path):
    """bench_scale's streaming random-mask writer yields the mask `mask build --scorer random` does."""
    import bench_scale
    import torch

    from szoq_hub.masks.build import MaskBuildConfig, build_mask
    from szoq_hub.hub.refs import open_mask

    bench_scale.stream_random_mask(tiny_model_dir, tmp_path / "stream", 0.01, seed=2)
    ours = open_mask(str(tmp_path / "stream"))
    theirs, _ = build_mask(MaskBuildConfig(model=str(tiny_model_dir), scorer="random", density=0.01, seed=2), None)
    assert sorted(ours.indices) == sorted(theirs.indices)
    assert all(torch.equal(ours.indices[n], theirs.indices[n]) for n in ours.indices)
    assert ours.config.fingerprint == theirs.config.fingerprint


def test_gguf_writer_q4_k_m_reopens_through_szoq(tmp_path):
    """A llama-tiny-k GGUF: Q4_K_M's types, weights of the intended scale through szoq's reader,
    SmolLM2's tokenizer from the file alone; an interrupted write resumes byte-identically."""
    from szoq_hub.data.gguf_file import GGUFModelFile
    from szoq_hub.data.gguf_meta import tokenizer_from_gguf

    path = tmp_path / "tiny.gguf"
    scale_models.write_gguf("llama-tiny-k", path, seed=1, log=lambda s: None)
    file = GGUFModelFile(path)
    file.check_ranges()
    types = {name: info.qtype.name for name, info in file.tensors.items()}
    assert (types["token_embd.weight"], types["output.weight"], types["blk.0.ffn_norm.weight"]) == ("Q4_K", "Q6_K", "F32")
    assert (types["blk.0.attn_v.weight"], types["blk.1.attn_v.weight"], types["blk.1.ffn_down.weight"]) == ("Q4_K", "Q6_K", "Q6_K")
    assert file.meta("feed_forward_length") == 512 and file.heads() == (4, 2)
    for name, tensor in file.iter_tensors({g: g for g in file.tensors}):
        assert tensor.shape == file.tensors[name].shape and tensor.isfinite().all()
        if name.endswith("norm.weight"):
            assert (tensor == 1).all()
        else:
            assert abs(tensor.mean()) < 2e-3 and 0.018 < tensor.std() < 0.022, name

    tok = tokenizer_from_gguf(path)
    assert len(tok) == scale_models.VOCAB and tok.eos_token == "<|im_end|>"
    assert tok.decode(tok("the movie was great")["input_ids"]) == "the movie was great"

    # complete: skipped; interrupted mid-tensor: resumed to the same bytes; another seed: refused
    whole, mtime = path.read_bytes(), path.stat().st_mtime_ns
    scale_models.write_gguf("llama-tiny-k", path, seed=1, log=lambda s: None)
    assert path.stat().st_mtime_ns == mtime
    partial = path.with_name(f".{path.name}.partial")
    path.rename(partial)
    with open(partial, "r+b") as fh:
        fh.truncate(len(whole) // 2 + 7)
    scale_models.write_gguf("llama-tiny-k", path, seed=1, log=lambda s: None)
    assert path.read_bytes() == whole and not partial.exists()
    with pytest.raises(SystemExit, match="another spec"):
        scale_models.write_gguf("llama-tiny-k", path, seed=2, log=lambda s: None)
