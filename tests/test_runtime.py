"""The quantized dense-and-sparse runtime against slow dense references on the same weights."""

from __future__ import annotations

import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch

from szoq_hub.data.checkpoint import iter_tensors
from szoq_hub.data.models import source_tensors
from szoq_hub.runtime import sparse as runtime
from szoq_hub.core.errors import ConfigError, DependencyError, FingerprintMismatch, MaskError
from szoq_hub.runtime.sparse import SparseQuantLinear, load_sparse_model

ATOL = 2e-5


@pytest.fixture
def runtime_mask(tiny_masks):
    """A fresh copy of a density-1e-3 mask of the tiny Llama (built once per session)."""
    return tiny_masks(1e-3)[0]


@pytest.fixture
def batch(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    enc = tok(["the movie was great", "a terrible film with a boring plot"], return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def _logits(model, batch) -> torch.Tensor:
    ids, attn = batch
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=attn).logits  # [B, T, V]


# The 4-bit code books, written out by hand (QLoRA's NF4 table; bitsandbytes' FP4 = e2m1 / 12).
NF4_CODE = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635, -0.18477343022823334,
            -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
            0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]
FP4_CODE = sorted({s * v / 12 for v in (0.0, 0.0625, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0) for s in (1, -1)})


def hand_4bit(w: torch.Tensor, quant: str, blocksize: int = 64) -> torch.Tensor:
    """dequant(quant(w)) by hand: per block of 64, the nearest code point of w / absmax, times absmax."""
    code = torch.tensor(NF4_CODE if quant == "nf4" else FP4_CODE)  # [16] or [15] (FP4 has +0 and -0)
    blocks = w.reshape(-1, blocksize)  # [numel / 64, 64]
    absmax = blocks.abs().amax(-1, keepdim=True)  # [numel / 64, 1]
    nearest = ((blocks / absmax).unsqueeze(-1) - code).abs().argmin(-1)  # [numel / 64, 64]; ties: the lower code
    return (code[nearest] * absmax).reshape(w.shape)


def test_hand_4bit_is_exact_on_code_points():
    absmax = 2.0
    w = torch.tensor(NF4_CODE * 4) * absmax  # every block holds each code point once (and +-absmax)
    torch.testing.assert_close(hand_4bit(w, "nf4"), w, rtol=0, atol=0)
    assert len(FP4_CODE) == 15 and FP4_CODE[0] == -1.0 and 1 / 192 in FP4_CODE


def dense_reference(model_dir, mask, quant: str, values: dict[str, torch.Tensor] | None = None):
    """The slow reference: a plain transformers model whose decoder linears hold
    dequant(quantize(W with the masked entries zeroed)) with the exact sparse values written back.
    The 4-bit round trip is `hand_4bit`, not the bitsandbytes call the runtime makes.

    Args:
        values: name -> fp32 [nnz] sparse values; None = the original weights at the mask.
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out_emb = model.get_output_embeddings()
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is out_emb:
            continue
        wname = f"{name}.weight"
        w = module.weight.data.clone()  # [out, in]
        idx = mask.indices.get(wname, torch.zeros(0, dtype=torch.int32)).long()
        original = w.view(-1)[idx].clone()
        if quant == "none" and wname not in mask.indices:
            continue
        w.view(-1)[idx] = 0.0
        if quant in ("nf4", "fp4"):
            w = hand_4bit(w, quant)
        w.view(-1)[idx] = original if values is None else values[wname]
        module.weight.data = w
    return model


@pytest.mark.parametrize("quant", ["none", "nf4", "fp4"])
def test_logits_match_dense_reference(tiny_model_dir, runtime_mask, batch, quant):
    sm = load_sparse_model(str(tiny_model_dir), runtime_mask, quant=quant)
    ref = dense_reference(tiny_model_dir, runtime_mask, quant)
    torch.testing.assert_close(_logits(sm.model, batch), _logits(ref, batch), atol=ATOL, rtol=0)


def test_none_equals_original_model(tiny_model_dir, runtime_mask, batch):
    from transformers import AutoModelForCausalLM

    sm = load_sparse_model(str(tiny_model_dir), runtime_mask, quant="none")
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    torch.testing.assert_close(_logits(sm.model, batch), _logits(original, batch), atol=1e-5, rtol=0)


def test_nf4_differs_from_original(tiny_model_dir, runtime_mask, batch):
    """Guards the reference test: nf4 really quantizes (else the comparison proves nothing)."""
    from transformers import AutoModelForCausalLM

    sm = load_sparse_model(str(tiny_model_dir), runtime_mask, quant="nf4")
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    assert (_logits(sm.model, batch) - _logits(original, batch)).abs().max() > 1e-3


@pytest.mark.parametrize("quant", ["nf4", "fp4"])
def test_4bit_represents_zero_exactly(quant):
    import bitsandbytes.functional as bnbf

    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 128, generator=g)  # [out, in]
    idx = torch.randperm(w.numel(), generator=g)[:200]
    w.view(-1)[idx] = 0.0
    packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type=quant)
    back = bnbf.dequantize_4bit(packed, state)
    assert (back.view(-1)[idx] == 0.0).all()


@pytest.mark.parametrize("quant", ["nf4", "fp4", "int8", "none"])
def test_masked_entries_of_base_are_zero_and_values_exact(tiny_model_dir, runtime_mask, quant):
    from safetensors.torch import load_file

    sm = load_sparse_model(str(tiny_model_dir), runtime_mask, quant=quant)
    state = load_file(str(tiny_model_dir / "model.safetensors"))
    layers = {n: m for n, m in sm.model.named_modules() if isinstance(m, SparseQuantLinear)}
    for name, off, n in sm.segments:
        layer = layers[name[: -len(".weight")]]
        assert (layer._base_weight().reshape(-1)[layer.flat_idx] == 0.0).all()
        # The trainable values are the checkpoint's weights, bit for bit (never rounded).
        assert torch.equal(sm.values[off : off + n], state[name].reshape(-1)[runtime_mask.indices[name].long()])
    assert sm.values.dtype == torch.float32 and sm.values.numel() == runtime_mask.nnz


@pytest.mark.parametrize("quant", ["none", "nf4", "fp4"])
def test_inplace_value_updates_reach_the_forward(tiny_model_dir, runtime_mask, batch, quant):
    sm = load_sparse_model(str(tiny_model_dir), runtime_mask, quant=quant)
    before = _logits(sm.model, batch)
    g = torch.Generator().manual_seed(1)
    for _ in range(2):  # twice: a stale cache would pass the first round only
        sm.values.add_(torch.randn(sm.values.shape, generator=g) * 0.5)
        ref = dense_reference(tiny_model_dir, runtime_mask, quant, sm.delta_tensors())
        after = _logits(sm.model, batch)
        torch.testing.assert_close(after, _logits(ref, batch), atol=ATOL, rtol=0)
        assert (after - before).abs().max() > 1e-3
    sm.values.copy_(torch.zeros_like(sm.values))  # copy_ too, and zero delta
    torch.testing.assert_close(
        _logits(sm.model, batch), _logits(dense_reference(tiny_model_dir, runtime_mask, quant, sm.delta_tensors()), batch), atol=ATOL, rtol=0
    )


def test_int8_sparse_part_is_exact_on_top_of_the_int8_base(tiny_model_dir, runtime_mask):
    """int8 quantizes activations too, so compare per layer: layer(x) = base(x) + x @ delta^T."""
    sm = load_sparse_model(str(tiny_model_dir), runtime_mask, quant="int8")
    g = torch.Generator().manual_seed(2)
    sm.values.add_(torch.randn(sm.values.shape, generator=g))
    layers = [m for m in sm.model.modules() if isinstance(m, SparseQuantLinear) and m.flat_idx.numel()]
    assert layers
    for layer in layers:
        x = torch.randn(3, 5, layer.in_features, generator=g)  # [B, T, in]
        delta = torch.zeros(layer.out_features * layer.in_features)
        delta[layer.flat_idx] = layer.values
        with torch.no_grad():
            expected = layer.base(x) + x @ delta.view(layer.out_features, layer.in_features).T  # [B, T, out]
            torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_int8_runs_close_to_original(tiny_model_dir, runtime_mask, batch):
    from transformers import AutoModelForCausalLM

    sm = load_sparse_model(str(tiny_model_dir), runtime_mask, quant="int8")
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    a, b = _logits(sm.model, batch), _logits(original, batch)
    assert torch.isfinite(a).all()
    assert (a - b).abs().max() < 0.1 * b.abs().max()


def test_frozen_parts_tied_and_nothing_trainable(tiny_model_dir, runtime_mask):
    sm = load_sparse_model(str(tiny_model_dir), runtime_mask, quant="nf4")
    lm = sm.model
    assert lm.lm_head.weight is lm.model.embed_tokens.weight
    assert lm.model.embed_tokens.weight.dtype == torch.float32
    assert not any(p.requires_grad for p in lm.parameters())
    assert not any(p.device.type == "meta" for p in lm.parameters())
    n_sparse = sum(isinstance(m, SparseQuantLinear) for m in lm.modules())
    assert n_sparse == 2 * 7  # every decoder linear is quantized, masked or not
    assert [s[0] for s in sm.segments] == list(runtime_mask.indices)
    assert sum(s[2] for s in sm.segments) == sm.values.numel()


def test_delta_roundtrip_and_validation(tiny_model_dir, runtime_mask):
    sm = load_sparse_model(str(tiny_model_dir), runtime_mask, quant="none")
    delta = sm.delta_tensors()
    assert list(delta) == [s[0] for s in sm.segments]
    changed = {n: t + 1.0 for n, t in delta.items()}
    sm.load_delta(changed)
    for name, off, n in sm.segments:
        assert torch.equal(sm.values[off : off + n], changed[name])
    delta["x"] = delta[next(iter(delta))]  # the copy is independent of values
    first = next(iter(changed))
    with pytest.raises(MaskError):
        sm.load_delta({n: t for n, t in changed.items() if n != first})
    with pytest.raises(MaskError):
        sm.load_delta({**changed, "model.not.there": torch.zeros(3)})
    with pytest.raises(MaskError):
        sm.load_delta({**changed, first: torch.zeros(changed[first].numel() + 1)})
    with pytest.raises(MaskError):
        sm.load_delta({**changed, first: torch.full_like(changed[first], float("nan"))})


def test_fingerprint_mismatch_refused_before_weights(tiny_model_dir, runtime_mask, monkeypatch):
    def no_weights(*args, **kwargs):
        raise AssertionError("weights were read before the fingerprint check")

    monkeypatch.setattr(runtime, "source_tensors", no_weights)
    runtime_mask.config.fingerprint = "0" * 64
    with pytest.raises(FingerprintMismatch) as err:
        load_sparse_model(str(tiny_model_dir), runtime_mask)
    assert err.value.hint


def test_bad_quant_and_missing_bitsandbytes(tiny_model_dir, runtime_mask, monkeypatch):
    with pytest.raises(ConfigError, match="q3") as bad:
        load_sparse_model(str(tiny_model_dir), runtime_mask, quant="q3")
    assert all(mode in bad.value.hint for mode in ("nf4", "fp4", "int8", "none"))  # the hint lists what works
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real(n, *a))
    with pytest.raises(DependencyError) as err:
        load_sparse_model(str(tiny_model_dir), runtime_mask, quant="nf4")
    assert "pip install" in err.value.hint
    load_sparse_model(str(tiny_model_dir), runtime_mask, quant="none")  # no bitsandbytes needed


def test_streaming_load_holds_one_linear_weight_at_a_time(tiny_model_dir, runtime_mask, monkeypatch):
    """Every full-precision linear weight the checkpoint yields must be dead before the next
    one is read: a loader that collected the state dict first would keep them all alive."""
    real_iter = runtime.source_tensors
    alive: list[weakref.ref] = []
    peak = {"n": 0}

    def tracking(source, model, map_if=None, cast=None):
        for name, tensor in real_iter(source, model, map_if=map_if, cast=cast):
            if name.endswith("_proj.weight"):
                live = sum(r() is not None for r in alive)
                peak["n"] = max(peak["n"], live)
                alive.append(weakref.ref(tensor))
            yield name, tensor
            del tensor

    # bitsandbytes' first 4-bit call in a process initialises its backend, and a traceback it
    # keeps from that can pin the tensor of the moment: warm it up so only the loader is measured.
    import bitsandbytes.functional as bnbf

    packed, state = bnbf.quantize_4bit(torch.ones(64, 64), blocksize=64, quant_type="nf4")
    bnbf.dequantize_4bit(packed, state)
    monkeypatch.setattr(runtime, "source_tensors", tracking)
    load_sparse_model(str(tiny_model_dir), runtime_mask, quant="nf4")
    assert len(alive) == 14
    assert peak["n"] == 0, f"{peak['n']} earlier fp32 linear weights were still alive"


def _mapped_files(tensor: torch.Tensor) -> set[str]:
    """Files (/proc/self/maps) whose mapping holds `tensor`'s first byte; heap/anonymous memory: none."""
    addr, found = tensor.data_ptr(), set()
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        if lo <= addr < hi and len(parts) == 6 and parts[5].startswith("/"):
            found.add(parts[5].strip())
    return found


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs Linux /proc")
def test_cpu_embedding_is_a_private_map_of_the_checkpoint(tiny_model_dir, runtime_mask):
    """On the CPU the frozen input embedding is not read into memory: it is a copy-on-write
    map of the checkpoint file (only the rows a lookup touches become resident). It holds the
    checkpoint's values; a cast (bf16 compute of an fp32 checkpoint) gets an owned copy."""
    from safetensors.torch import load_file

    path = tiny_model_dir / "model.safetensors"
    stored = load_file(str(path))["model.embed_tokens.weight"]
    assert stored.dtype == torch.float32
    sm = load_sparse_model(str(tiny_model_dir), runtime_mask, quant="nf4", device="cpu", compute_dtype="fp32")
    emb = sm.model.get_input_embeddings().weight
    assert _mapped_files(emb) == {str(path.resolve())}
    assert torch.equal(emb, stored) and not emb.requires_grad
    cast = load_sparse_model(str(tiny_model_dir), runtime_mask, quant="nf4", device="cpu", compute_dtype="bf16")
    emb16 = cast.model.get_input_embeddings().weight
    assert emb16.dtype == torch.bfloat16 and _mapped_files(emb16) == set()
    assert torch.equal(emb16, stored.to(torch.bfloat16))


def test_mapped_reader_refuses_a_truncated_file(tiny_model_dir, tmp_path):
    from szoq_hub.core.errors import ModelError

    cut = tmp_path / "cut.safetensors"
    cut.write_bytes((tiny_model_dir / "model.safetensors").read_bytes()[:-100])
    with pytest.raises(ModelError, match="truncated"):
        list(iter_tensors([cut], map_if=lambda key, dtype: True))


def test_checkpoint_reader_matches_safetensors_and_refuses_truncation(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    from szoq_hub.core.errors import ModelError

    path = tiny_model_dir / "model.safetensors"
    ours = dict(iter_tensors([path]))
    theirs = load_file(str(path))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) and ours[k].dtype == theirs[k].dtype for k in theirs)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ModelError, match="truncated"):
        list(iter_tensors([cut]))


def test_predictable_malloc_returns_freed_blocks_to_the_os():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt policy is glibc-only")
    # glibc's dynamic mmap threshold: after a 16 MiB block is freed, an 8 MiB block comes from the
    # heap and stays resident after free. Pinned, it is mapped and unmapped: RSS goes back.
    script = """
import ctypes, sys
from szoq_hub.core.memory import use_predictable_malloc
if sys.argv[1] == "pin":
    use_predictable_malloc()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
def rss_kb():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1])
def touch_and_free(size):
    p = libc.malloc(size); ctypes.memset(p, 1, size); libc.free(p)
touch_and_free(16 << 20)
base = rss_kb()
touch_and_free(8 << 20)
print(rss_kb() - base)
"""
    kept = {mode: int(subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True).stdout)
            for mode in ("pin", "default")}
    assert kept["default"] > 4096  # the control: without the pin, 8 MiB stay resident
    assert kept["pin"] < 1024


def test_logits_to_keep_matches_full_logits(tiny_model_dir, runtime_mask, batch):
    """lm_head gets a contiguous copy of the kept positions (a speed fix): same numbers."""
    sm = load_sparse_model(str(tiny_model_dir), runtime_mask, quant="nf4")
    ids, attn = batch
    with torch.no_grad():
        last = sm.model(input_ids=ids, attention_mask=attn, logits_to_keep=1).logits  # [B, 1, V]
    torch.testing.assert_close(last, _logits(sm.model, batch)[:, -1:], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_real_smollm2_nf4_with_builtin_mask(real_model_available):
    """The real model and its built-in mask: loads, values are the checkpoint's, forward runs."""
    from szoq_hub.data.footprint import load_config, skeleton
    from szoq_hub.masks.artifact import load_mask
    from szoq_hub.data.models import resolve_model

    folder = Path(__file__).resolve().parents[1] / "masks" / "smollm2-135m-instruct"
    if not (folder / "mask.safetensors").exists():
        pytest.skip("built-in mask not present")
    source = resolve_model("smollm2-135m-instruct")
    mask = load_mask(folder)
    sm = load_sparse_model(source, mask, quant="nf4")
    name, off, n = sm.segments[0]
    weight = next(tensor for key, tensor in source_tensors(source, skeleton(load_config(source))) if key == name)  # the GGUF's
    expected = weight.reshape(-1)[mask.indices[name].long()]
    assert torch.equal(sm.values[off : off + n], expected)
    enc = sm.tokenizer(["a gripping, funny film . It was"], return_tensors="pt")
    with torch.no_grad():
        logits = sm.model(**enc, logits_to_keep=1).logits  # [1, 1, V]
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("quant", ["nf4", "fp4"])
@pytest.mark.parametrize("shape", [(96, 200), (5, 13), (130, 33)])
def test_chunked_4bit_quantization_is_bit_identical(quant, shape):
    """Quantizing the masked weight chunk by chunk (bounded fp32 transient) gives the bytes and
    absmax of one bitsandbytes call on the whole fp32 weight with the mask zeroed."""
    import bitsandbytes.functional as bnbf

    from szoq_hub.runtime.sparse_linear import BLOCKSIZE_4BIT, quantize_4bit_masked

    w = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    before = w.clone()
    idx = torch.randperm(w.numel(), generator=torch.Generator().manual_seed(1))[: w.numel() // 5]  # unsorted, like Conv1D's
    ref = w.float().reshape(-1).clone()
    ref[idx] = 0.0
    want, want_state = bnbf.quantize_4bit(ref.view(shape), blocksize=BLOCKSIZE_4BIT, quant_type=quant)
    for chunk in (128, 384, 1 << 22):
        got, state = quantize_4bit_masked(w, idx, quant, chunk=chunk)
        assert torch.equal(got, want) and torch.equal(state.absmax, want_state.absmax) and tuple(state.shape) == shape
        assert torch.equal(bnbf.dequantize_4bit(got, state).view(-1)[idx], torch.zeros(idx.numel()))
    assert torch.equal(w, before)  # the input is not modified


def test_lm_head_input_gets_row_major_strides():
    """hidden[:, -1:, :] of one sequence is 'contiguous' with strides (T*H, H, 1); a bf16 linear
    on it copied the whole lm_head weight. The pre-hook hands over row-major strides."""
    from szoq_hub.runtime.sparse_linear import contiguous_input

    h = torch.randn(1, 7, 16)
    x = h[:, -1:, :]
    assert x.is_contiguous() and x.stride() == (112, 16, 1)
    (y,) = contiguous_input(None, (x,))
    assert y.stride() == (16, 16, 1) and torch.equal(y, x)
    z = torch.randn(2, 3, 16)
    assert contiguous_input(None, (z,))[0] is z  # already row-major: no copy
    (w,) = contiguous_input(None, (z.transpose(0, 1),))
    assert w.is_contiguous() and torch.equal(w, z.transpose(0, 1))


def test_scatter_layer_keeps_no_column_positions():
    """A scatter-form layer holds no s_pos (nnz int64), and still computes the column form when
    switched to it."""
    from szoq_hub.runtime.sparse import SparseValues

    gen = torch.Generator().manual_seed(3)
    w = torch.randn(512, 128, generator=gen)
    idx = torch.randperm(w.numel(), generator=gen)[:40].sort().values
    store = SparseValues(idx.numel(), torch.device("cpu"))
    store.values.copy_(torch.randn(idx.numel(), generator=gen))
    layer = SparseQuantLinear(w.clone(), None, idx, store, 0, "none", torch.float32)
    assert layer.sparse_form == "scatter" and layer.s_pos.untyped_storage().nbytes() == 0
    x = torch.randn(3, 128, generator=gen)
    with torch.no_grad():
        scatter = layer(x)
        layer.sparse_form = "column"
        column = layer(x)
    dense = w.clone().view(-1)
    dense[idx] = store.values
    torch.testing.assert_close(scatter, x @ dense.view(512, 128).T, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(column, scatter, atol=1e-5, rtol=1e-5)
