"""bench/bench_roofline.py on the tiny scale shape: the FLOP count, the synthetic mask and the breakdown add up."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_roofline  # noqa: E402


@pytest.fixture(scope="module")
def tiny_decoder():
    pytest.importorskip("bitsandbytes")
    from szoq_hub.core.devices import import_bitsandbytes

    import_bitsandbytes()
    bench_roofline._install_timed_attention()
    decoder, full = bench_roofline.synthetic("llama-tiny", 2)
    decoder.config._attn_implementation = bench_roofline.TIMED_ATTENTION
    return decoder, bench_roofline._time_linears(decoder)


def test_flops_count_every_linear_and_attention(tiny_decoder):
    decoder, layers = tiny_decoder
    cfg = decoder.config
    lin, attn, flops = bench_roofline.matmul_list(decoder, 3 * 5, 3, 5)
    h, i, d = cfg.hidden_size, cfg.intermediate_size, cfg.hidden_size // cfg.num_attention_heads
    kv = cfg.num_key_value_heads * d
    per_layer = 2 * 15 * (h * h * 2 + 2 * kv * h + 3 * h * i) + 2 * 2 * 3 * cfg.num_attention_heads * 5 * 5 * d  # q, o; k, v; MLP; QK^T, AV
    assert flops == cfg.num_hidden_layers * per_layer and sum(lin.values()) == 7 * cfg.num_hidden_layers == len(layers)


def test_synthetic_mask_is_column_concentrated_and_exact(tiny_decoder):
    decoder, layers = tiny_decoder
    for m in layers:
        assert m.nnz == max(1, round(1e-3 * m.out_features * m.in_features))
        assert m.cols.numel() <= max(1, round(0.02 * m.in_features)) and m.sparse_form == "column"
        assert m.values.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_breakdown_parts_are_each_timed_once(tiny_decoder, dtype):
    decoder, layers = tiny_decoder
    decoder.to(dtype)
    groups = [bench_roofline.batch([4, 7], decoder.config.vocab_size, torch.Generator().manual_seed(0))]
    sample = bench_roofline.timed_forward(decoder, groups, layers, dtype)
    assert sample["attention"] > 0 and sample["dequantize"] > 0
    if dtype == torch.bfloat16:
        assert sample["sparse"] > 0  # the column form runs; in fp32 the fold's scatter is timed on its own
    # matmul and rest are what is left after the timed parts: negative would mean a part counted twice
    assert all(sample[p] >= 0 for p in bench_roofline.PARTS), sample
