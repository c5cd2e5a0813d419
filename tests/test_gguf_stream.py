"""The streaming GGUF reader (data/gguf_file.py) against transformers' own GGUF loading, bit for bit,
and GGUF files as untrusted input (issue 31, cases 4, 7 and 8)."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_one_line_error
from tiny_gguf import write_tiny_gguf

VARIANTS = [  # (arch, weight type, tied, kv heads): GQA and MHA, both permutation cases, biases, untied and tied
    ("llama", "Q8_0", False, 2),
    ("llama", "Q4_1", True, 4),
    ("qwen2", "Q5_0", True, 2),
    ("qwen2", "F16", False, 1),
]


def _transformers_state(path: Path) -> dict[str, torch.Tensor]:
    """The reference: what transformers' `from_pretrained(gguf_file=...)` (the old path) loads, fp32."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model.state_dict()


@pytest.mark.parametrize("arch,qtype,tied,kv", VARIANTS)
def test_streamed_weights_are_transformers_weights_bit_for_bit(tmp_path, arch, qtype, tied, kv):
    from szoq_hub.data.models import load_model, parameter_layout, resolve_model

    path = write_tiny_gguf(tmp_path / "m.gguf", arch=arch, qtype=qtype, tied=tied, kv_heads=kv)
    source = resolve_model(str(path))
    assert source.gguf == path and not list(source.path.glob("*.safetensors"))  # nothing converted
    new = load_model(source).model.state_dict()
    old = _transformers_state(path)
    assert set(new) == set(old)
    assert [k for k in old if not torch.equal(old[k], new[k])] == []
    assert parameter_layout(source) == sorted((k, tuple(v.shape), "float32") for k, v in old.items()
                                               if not (tied and k == "lm_head.weight"))  # the fingerprint's input is unchanged


def test_llama_qk_permutation_is_undone_not_skipped(tmp_path):
    """The q/k un-permutation is real work (a bug that skipped it would still load)."""
    import gguf
    from gguf.quants import dequantize

    from szoq_hub.data.gguf_file import GGUFModelFile, unpermute_qk

    path = write_tiny_gguf(tmp_path / "m.gguf", arch="llama", qtype="F32", kv_heads=2)
    raw = {t.name: np.array(dequantize(t.data, t.tensor_type)) for t in gguf.GGUFReader(str(path)).tensors}
    file = GGUFModelFile(path)
    from szoq_hub.data.footprint import load_config, skeleton
    from szoq_hub.data.models import resolve_model

    skeleton = skeleton(load_config(resolve_model(str(path))))
    got = dict(file.iter_tensors(file.hf_names(skeleton)))
    q = got["model.layers.0.self_attn.q_proj.weight"]
    assert not torch.equal(q, torch.from_numpy(raw["blk.0.attn_q.weight"]))
    assert torch.equal(q, unpermute_qk(torch.from_numpy(raw["blk.0.attn_q.weight"]), 4))
    assert torch.equal(got["model.layers.0.self_attn.k_proj.weight"], unpermute_qk(torch.from_numpy(raw["blk.0.attn_k.weight"]), 2))


def test_cast_slabs_equal_the_whole_tensor_cast(tmp_path, monkeypatch):
    from szoq_hub.data import gguf_file
    from szoq_hub.data.footprint import load_config, skeleton
    from szoq_hub.data.models import resolve_model

    path = write_tiny_gguf(tmp_path / "m.gguf", arch="qwen2", qtype="Q4_0")
    skeleton = skeleton(load_config(resolve_model(str(path))))
    file = gguf_file.GGUFModelFile(path)
    whole = {k: v.to(torch.bfloat16) for k, v in file.iter_tensors(file.hf_names(skeleton))}
    monkeypatch.setattr(gguf_file, "SLAB_BYTES", 7 * 64 * 4)  # 7 rows a slab: the last slab is short
    slabs = dict(file.iter_tensors(file.hf_names(skeleton), cast=lambda name: torch.bfloat16))
    assert all(torch.equal(whole[k], slabs[k]) for k in whole)


def test_sparse_runtime_from_a_gguf_holds_the_exact_masked_values(tmp_path):
    from szoq_hub import MaskBuildConfig, build_mask
    from szoq_hub.runtime.sparse import load_sparse_model

    path = write_tiny_gguf(tmp_path / "m.gguf", arch="qwen2", qtype="Q8_0")
    mask, _ = build_mask(MaskBuildConfig(model=str(path), scorer="random", density=0.01))
    sparse = load_sparse_model(str(path), mask, quant="nf4", device="cpu", compute_dtype="fp32")
    old = _transformers_state(path)
    for name, values in sparse.delta_tensors().items():
        assert torch.equal(values, old[name].reshape(-1)[mask.indices[name].long()])


def test_magnitude_mask_from_the_gguf_is_the_mask_of_transformers_weights(tmp_path):
    """Mask builds read the same streamed weights: a magnitude mask is the top-|w| of the reference."""
    from szoq_hub import MaskBuildConfig, build_mask

    path = write_tiny_gguf(tmp_path / "m.gguf", arch="llama", qtype="Q8_0")
    mask, _ = build_mask(MaskBuildConfig(model=str(path), scorer="magnitude", density=0.05))
    old = _transformers_state(path)
    for name, idx in mask.indices.items():
        w = old[name].reshape(-1).abs()
        k = idx.numel()
        assert w[idx.long()].min() >= torch.topk(w, k).values.min()


@pytest.mark.slow
def test_real_smollm2_streams_what_transformers_loads(real_model_available):
    from szoq_hub.data.models import ALIASES, _alias_gguf, load_model, resolve_model

    path, _ = _alias_gguf(next(iter(ALIASES)))
    new = load_model(resolve_model(next(iter(ALIASES)))).model.state_dict()
    old = _transformers_state(path)
    assert set(new) == set(old)
    assert [k for k in old if not torch.equal(old[k], new[k])] == []


# ---- GGUF files as untrusted input (issue 31) ----------------------------------------------------

def test_a_gguf_holding_only_the_embedding_is_refused_naming_what_is_missing(tmp_path, run_cli):
    """Case 4: it used to convert, and `mask build` reported "built 7 weights" on random weights."""
    path = write_tiny_gguf(tmp_path / "m.gguf", only=("token_embd.weight",))
    code, _, err = run_cli("mask", "build", str(path), "--scorer", "random")
    assert_one_line_error(code, err, "m.gguf", "promises 2 layers", "blk.0")
    path = write_tiny_gguf(tmp_path / "n.gguf", drop=("blk.1.ffn_down.weight",))
    code, _, err = run_cli("mask", "build", str(path), "--scorer", "random")
    assert_one_line_error(code, err, "lacks 1 tensor", "blk.1.ffn_down.weight", "model.layers.1.mlp.down_proj.weight")


def test_a_gguf_whose_metadata_promises_a_huge_model_is_refused_at_once(tmp_path, run_cli):
    """Case 8: 2^20 hidden, 10,000 layers, 2^22 ffn in a tiny file used to run 300 s at 3.8 GB."""
    path = write_tiny_gguf(tmp_path / "m.gguf", meta={"embedding_length": 2**20, "block_count": 10000, "feed_forward_length": 2**22},
                           only=("token_embd.weight",))
    start = time.monotonic()
    code, _, err = run_cli("mask", "build", str(path), "--scorer", "random")
    assert time.monotonic() - start < 30
    assert_one_line_error(code, err, "promises 10000 layers")
    path = write_tiny_gguf(tmp_path / "n.gguf", meta={"embedding_length": 2**20})
    code, _, err = run_cli("mask", "build", str(path), "--scorer", "magnitude")
    assert_one_line_error(code, err, "embedding_length is 1048576")


def test_a_truncated_gguf_is_refused(tmp_path, run_cli):
    path = write_tiny_gguf(tmp_path / "m.gguf")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    code, _, err = run_cli("mask", "build", str(path), "--scorer", "random")
    assert_one_line_error(code, err, "m.gguf")


def test_a_tokenizer_that_panics_in_native_code_is_one_error(tmp_path, run_cli):
    """Case 7: merges naming a token missing from the vocab made the tokenizers crate panic
    (`pyo3_runtime.PanicException`, a BaseException that `except Exception` misses)."""
    path = write_tiny_gguf(tmp_path / "m.gguf", merges=["Ġ t", "h e", "Ġt he", "zz qq"])
    code, _, err = run_cli("mask", "build", str(path), "--scorer", "random")
    assert_one_line_error(code, err, "cannot build the tokenizer of m.gguf")


def test_base_exceptions_from_native_code_become_model_errors(tmp_path, monkeypatch):
    """Any BaseException but KeyboardInterrupt/SystemExit is caught, whatever the native library raises."""
    import transformers

    from szoq_hub.core.errors import ModelError
    from szoq_hub.data.gguf_meta import tokenizer_from_gguf

    class PanicException(BaseException):  # pyo3_runtime's class is a BaseException subclass like this one
        pass

    def panic(*args, **kwargs):
        raise PanicException("called `Option::unwrap()` on a `None` value")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", panic)
    with pytest.raises(ModelError, match="PanicException"):
        tokenizer_from_gguf(tmp_path / "m.gguf")

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", interrupt)
    with pytest.raises(KeyboardInterrupt):
        tokenizer_from_gguf(tmp_path / "m.gguf")


def test_untied_embedding_stays_in_the_file_and_gives_the_same_logits(tmp_path, monkeypatch):
    """`MappedEmbedding`: the runtime dequantizes only the rows of the tokens it sees; the forward
    is the one of a fully loaded embedding, bit for bit."""
    from szoq_hub.data import gguf_file
    from szoq_hub.runtime.sparse import load_sparse_model

    path = write_tiny_gguf(tmp_path / "m.gguf", arch="qwen2", qtype="Q4_1", tied=False)
    mapped = load_sparse_model(str(path), None, quant="nf4", device="cpu", compute_dtype="bf16")
    assert isinstance(mapped.model.get_input_embeddings(), gguf_file.MappedEmbedding)
    monkeypatch.setattr(gguf_file.GGUFModelFile, "mapped_embedding", lambda *a, **k: None)
    loaded = load_sparse_model(str(path), None, quant="nf4", device="cpu", compute_dtype="bf16")
    assert isinstance(loaded.model.get_input_embeddings(), torch.nn.Embedding)
    ids = torch.tensor([[5, 7, 7, 258, 0], [1, 2, 3, 4, 5]])
    assert torch.equal(mapped.model.get_input_embeddings()(ids), loaded.model.get_input_embeddings()(ids))
    with torch.no_grad():
        assert torch.equal(mapped.model(ids).logits, loaded.model(ids).logits)
    assert torch.equal(mapped.model.get_input_embeddings().weight, loaded.model.get_input_embeddings().weight)
    tied = load_sparse_model(str(write_tiny_gguf(tmp_path / "t.gguf", tied=True)), None, quant="nf4", device="cpu")
    assert isinstance(tied.model.get_input_embeddings(), torch.nn.Embedding)  # lm_head reads every row: loaded


def test_later_opens_read_the_saved_tensor_table_not_the_file_header(tmp_path, monkeypatch):
    import gguf

    from szoq_hub.data.models import load_model, resolve_model

    path = write_tiny_gguf(tmp_path / "m.gguf", arch="qwen2", qtype="Q8_0")
    source = resolve_model(str(path))
    first = load_model(source).model.state_dict()
    monkeypatch.setattr(gguf, "GGUFReader", lambda *a, **k: pytest.fail("header parsed again"))
    again = load_model(resolve_model(str(path))).model.state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
