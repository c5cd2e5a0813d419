"""ZO-LoRA runtime: adapters in one flat fp32 vector, applied by hooks, exact against a merged reference."""

from __future__ import annotations

import copy

import pytest
import torch

from szoq_hub.core.errors import ConfigError, MaskError
from szoq_hub.methods.lora.config import LoRASettings
from szoq_hub.methods.lora.runtime import attach_lora


@pytest.fixture(scope="module")
def base(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tok(["the movie was great", "a terrible film with a boring plot"], return_tensors="pt", padding=True)
    return model, tok, ids


def _logits(model, ids, copies: int = 1) -> torch.Tensor:
    with torch.no_grad():
        rep = {k: v.repeat(copies, 1) for k, v in ids.items()}
        return model(**rep).logits  # [copies * B, T, V]


def _randomize(lora, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    point = torch.randn(lora.values.numel(), generator=g) * 0.05  # [n]
    lora.values.copy_(point)
    return point


def test_starts_as_the_base_model_and_counts_mezo_shapes(base):
    model, tok, ids = base
    model = copy.deepcopy(model)
    before = _logits(model, ids)
    lora = attach_lora(model, tok, LoRASettings(rank=4, alpha=8), seed=3)
    assert [s.module.rsplit(".", 1)[1] for s in lora.segments] == ["q_proj", "v_proj"] * model.config.num_hidden_layers
    hidden = model.config.hidden_size
    kv = model.config.num_key_value_heads * (hidden // model.config.num_attention_heads)
    assert lora.values.numel() == model.config.num_hidden_layers * 4 * ((hidden + hidden) + (hidden + kv))
    tensors = lora.adapter_tensors()
    a = tensors[f"{lora.segments[0].module}.lora_A.weight"]
    assert a.shape == (4, hidden) and a.abs().max() <= hidden ** -0.5 and a.std() > 0  # PEFT's init range, not zeros
    assert all(t.count_nonzero() == 0 for k, t in tensors.items() if "lora_B" in k)
    assert torch.equal(_logits(model, ids), before)  # B = 0: exactly the base
    again = attach_lora(copy.deepcopy(base[0]), tok, LoRASettings(rank=4, alpha=8), seed=3)
    assert torch.equal(again.values, lora.values)  # the seed fixes A


def test_hooked_forward_equals_the_merged_weights(base):
    model, tok, ids = base
    hooked = copy.deepcopy(model)
    lora = attach_lora(hooked, tok, LoRASettings(rank=2, alpha=16, targets=("q_proj", "v_proj", "down_proj")), seed=0)
    _randomize(lora, 1)
    merged = copy.deepcopy(model)
    with torch.no_grad():
        for name, delta in lora.weight_deltas().items():
            merged.get_parameter(name).add_(delta)
    assert torch.allclose(_logits(hooked, ids), _logits(merged, ids), atol=1e-5, rtol=1e-5)
    lora.remove()
    assert torch.equal(_logits(hooked, ids), _logits(model, ids))


def test_paired_pass_gives_each_row_block_its_own_adapter(base):
    model, tok, ids = base
    model = copy.deepcopy(model)
    lora = attach_lora(model, tok, LoRASettings(), seed=0)
    points = torch.stack([_randomize(lora, s) for s in (1, 2, 3)])  # [3, n]
    singles = []
    for p in points:
        lora.values.copy_(p)
        singles.append(_logits(model, ids))
    lora.values.zero_()
    with lora.perturbed(points) as parts:
        paired = _logits(model, ids, copies=parts)  # [3 * B, T, V]
    assert torch.allclose(paired, torch.cat(singles), atol=1e-5, rtol=1e-5)
    assert lora.values.count_nonzero() == 0  # the pass never touches values
    with pytest.raises(ConfigError, match=r"must be \[P, "):
        with lora.perturbed(points[:, :5]):
            pass


def test_adapter_round_trip_and_refusals(base):
    model, tok, ids = base
    lora = attach_lora(copy.deepcopy(model), tok, LoRASettings(rank=2), seed=0)
    point = _randomize(lora, 7)
    tensors = lora.adapter_tensors()
    other = attach_lora(copy.deepcopy(model), tok, LoRASettings(rank=2), seed=1)
    other.load_adapter(tensors)
    assert torch.equal(other.values, point)
    first = f"{lora.segments[0].module}.lora_A.weight"
    with pytest.raises(MaskError, match="has shape"):
        other.load_adapter({**tensors, first: torch.zeros(3, 3)})
    with pytest.raises(MaskError, match="1 tensor\\(s\\) missing"):
        other.load_adapter({k: v for k, v in tensors.items() if k != first})
    with pytest.raises(MaskError, match="non-finite"):
        other.load_adapter({**tensors, first: torch.full_like(tensors[first], float("nan"))})
    assert torch.equal(other.values, point)  # a refused load changes nothing


@pytest.mark.parametrize("kwargs, needle", [({"rank": 0}, "positive integer"), ({"alpha": float("nan")}, "positive number"),
                                            ({"targets": ()}, "non-empty"), ({"targets": ("nope",)}, "no linear layer")])
def test_bad_settings_say_what_is_wrong(base, kwargs, needle):
    model, tok, _ = base
    with pytest.raises(ConfigError, match=needle):
        attach_lora(copy.deepcopy(model), tok, LoRASettings(**kwargs))


def test_adapter_file_is_byte_reproducible_and_refuses_a_flipped_bit(base, tmp_path):
    from szoq_hub.methods.lora.file import load_lora, save_lora

    model, tok, _ = base
    lora = attach_lora(copy.deepcopy(model), tok, LoRASettings(rank=2), seed=0)
    _randomize(lora, 5)
    args = dict(settings=lora.settings, fingerprint="f" * 64, base_model="tiny", run_settings={"seed": 0, "lr": 1e-3})
    a, b = save_lora(tmp_path / "a.safetensors", lora.adapter_tensors(), **args), save_lora(tmp_path / "b.safetensors", lora.adapter_tensors(), **args)
    assert a.read_bytes() == b.read_bytes()  # sorted header and tensors: the same adapter, the same bytes
    loaded = load_lora(a)
    assert all(torch.equal(loaded.tensors[k], v) for k, v in lora.adapter_tensors().items())
    data = bytearray(a.read_bytes())
    data[-3] ^= 0x01  # one bit of the last tensor's bytes: still a finite fp32 value
    a.write_bytes(bytes(data))
    with pytest.raises(MaskError, match="content sha256"):
        load_lora(a)
