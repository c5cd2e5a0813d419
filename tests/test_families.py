"""Every common decoder family end to end on tiny random configs: mask build, 2 ZO steps, eval,
merge; plus the checkpoint layouts real repos use (sharded with an index, keys without the
base-model prefix, GPT-2 Conv1D, pickle-only refused)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import TINY_TEXTS, _tiny_tokenizer

ROWS = [{"text": t, "label": int("great" in t or "wonderful" in t)} for t in TINY_TEXTS]
HIDDEN, LAYERS, INTER, HEADS, KV = 64, 2, 128, 4, 2


def _config(family: str, vocab: int, eos: int):
    import transformers as tf

    ids = dict(vocab_size=vocab, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    llama_like = dict(hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                      num_key_value_heads=KV, max_position_embeddings=128, **ids)
    if family == "llama":
        return tf.LlamaConfig(**llama_like, tie_word_embeddings=True)
    if family == "mistral":
        return tf.MistralConfig(**llama_like, sliding_window=32, tie_word_embeddings=False)
    if family == "qwen2":  # q/k/v biases
        return tf.Qwen2Config(**llama_like, tie_word_embeddings=True)
    if family == "qwen3":  # q/k norms, explicit head_dim
        return tf.Qwen3Config(**llama_like, head_dim=16, tie_word_embeddings=True)
    if family == "phi3":  # fused qkv_proj and gate_up_proj
        return tf.Phi3Config(**llama_like, tie_word_embeddings=False)
    if family == "gemma3":
        return tf.Gemma3TextConfig(**llama_like, head_dim=16, sliding_window=16, tie_word_embeddings=True)
    if family == "opt":
        return tf.OPTConfig(hidden_size=HIDDEN, ffn_dim=INTER, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                            word_embed_proj_dim=HIDDEN, max_position_embeddings=128, **ids)
    if family == "gpt2":  # Conv1D layers, weights stored [in, out]
        return tf.GPT2Config(n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_inner=INTER, n_positions=128, **ids)
    if family == "gpt_neox":  # fused query_key_value, untied embed_out
        return tf.GPTNeoXConfig(hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                max_position_embeddings=128, rotary_pct=0.5, **ids)
    raise ValueError(family)


FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "phi3", "gemma3", "opt", "gpt2", "gpt_neox"]


def make_tiny(family: str, folder: Path, *, layout: str = "plain") -> Path:
    """Save a tiny random model of `family` with the tiny test tokenizer.

    layout: `plain` (save_pretrained), `sharded` (several files + index.json, and a stray
    safetensors file the index does not name), `no_prefix` (keys without base_model_prefix,
    as original GPT-2 / OPT checkpoints store them).
    """
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    tokenizer = _tiny_tokenizer()
    config = _config(family, len(tokenizer), tokenizer.eos_token_id)
    torch.manual_seed(0)  # test-side seeding of the initialiser only
    model = AutoModelForCausalLM.from_config(config).eval()
    if layout == "sharded":
        model.save_pretrained(folder, max_shard_size="40KB")
        # Not part of the checkpoint (like Mistral's consolidated.safetensors): wrong shapes, so
        # reading it would fail the load; only the files the index names may be read.
        save_file({"model.embed_tokens.weight": torch.zeros(3, 3)}, str(folder / "consolidated.safetensors"))
    elif layout == "no_prefix":
        model.save_pretrained(folder)
        prefix = model.base_model_prefix + "."
        state = {k.removeprefix(prefix): v.contiguous() for k, v in model.state_dict().items() if k.startswith(prefix)}
        (folder / "model.safetensors").unlink()
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:
        model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _end_to_end(model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from szoq_hub.masks.build import MaskBuildConfig, build_mask
    from szoq_hub.methods.sparse.delta import load_delta
    from szoq_hub.training.evaluate import EvalConfig, evaluate
    from szoq_hub.runtime.zo import ZOConfig
    from szoq_hub.training.finetune import FinetuneConfig, finetune
    from szoq_hub.training.merge import merge
    from szoq_hub.hub.refs import open_mask
    from szoq_hub.runtime.sparse import load_sparse_model

    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(TINY_TEXTS * 5))
    mask, _ = build_mask(MaskBuildConfig(model=str(model_dir), calibration=str(calib), samples=2, seq_len=16, density=0.02), tmp_path / "mask")
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    task = dict(task=None, train_file=str(train), template="{text} It was", labels="0=bad,1=good")
    run = tmp_path / "run"
    result = finetune(FinetuneConfig(model=str(model_dir), mask=str(tmp_path / "mask"), **task, quant="nf4", steps=2, batch_size=4,
                                     zo=ZOConfig(lr=1.0, eps=1e-2), eval_every=0, save_every=2, train_samples=8, dev_samples=4, eval_samples=4, out=str(run),
                                     dev_baseline=False))  # the trained values, not the untouched ones a 4-row dev may keep
    assert result.steps == 2
    delta = load_delta(run).tensors
    base = {n: p.detach().clone() for n, p in AutoModelForCausalLM.from_pretrained(model_dir).named_parameters()}
    assert any(not torch.equal(delta[n], base[n].view(-1)[idx.long()]) for n, idx in mask.indices.items())  # the steps moved them
    ev = evaluate(EvalConfig(model=str(model_dir), mask=str(tmp_path / "mask"), **task, delta=str(run), quant="nf4", eval_samples=4))
    assert ev.mode == "delta" and ev.value == result.eval_metric  # the same rows and values as the run's own final eval

    merged_dir = merge(model=str(model_dir), mask_ref=str(tmp_path / "mask"), delta=run, out=tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    params = dict(merged.named_parameters())
    for name, idx in mask.indices.items():  # indices refer to the parameter as the model stores it
        flat = params[name].detach().view(-1)
        assert torch.equal(flat[idx.long()], delta[name]), name
        keep = torch.ones(flat.numel(), dtype=torch.bool)
        keep[idx.long()] = False
        assert torch.equal(flat[keep], base[name].view(-1)[keep]), name

    # The runtime (exact base, quant none) with the delta computes what the merged model does:
    # keys, transposes and ties were all loaded where transformers puts them.
    sparse = load_sparse_model(str(model_dir), open_mask(str(tmp_path / "mask")), quant="none")
    sparse.load_delta(delta)
    ids = sparse.tokenizer(["the movie was great", "zeroth order fine tuning of"], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(sparse.model(**ids).logits, merged(**ids).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_end_to_end(family, tmp_path):
    _end_to_end(make_tiny(family, tmp_path / "model"), tmp_path)


@pytest.mark.parametrize("family,layout", [("llama", "sharded"), ("gpt2", "no_prefix"), ("opt", "no_prefix")])
def test_checkpoint_layouts_end_to_end(family, layout, tmp_path):
    folder = make_tiny(family, tmp_path / "model", layout=layout)
    if layout == "sharded":
        assert len(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]) > 0
        assert len(list(folder.glob("model-*.safetensors"))) >= 3
    _end_to_end(folder, tmp_path)


def test_gpt2_conv1d_runtime_matches_transformers_and_mask_positions(tmp_path):
    """A masked Conv1D weight is [in, out]: values read at the mask's flat indices of the stored
    weight, and the nf4 runtime forward stays close to the dense model."""
    from transformers import AutoModelForCausalLM

    from szoq_hub.masks.build import MaskBuildConfig, build_mask
    from szoq_hub.runtime.sparse import SparseQuantLinear, load_sparse_model

    folder = make_tiny("gpt2", tmp_path / "model")
    mask, _ = build_mask(MaskBuildConfig(model=str(folder), scorer="random", density=0.05), None)
    assert "transformer.h.0.attn.c_attn.weight" in mask.indices
    dense = AutoModelForCausalLM.from_pretrained(folder).eval()
    params = dict(dense.named_parameters())
    sm = load_sparse_model(str(folder), mask, quant="nf4")
    assert isinstance(sm.model.transformer.h[0].attn.c_attn, SparseQuantLinear)
    for name, off, n in sm.segments:
        assert torch.equal(sm.values[off:off + n], params[name].detach().view(-1)[mask.indices[name].long()])
    ids = sm.tokenizer(["the movie was great"], return_tensors="pt")
    with torch.no_grad():
        want, got = dense(**ids).logits, sm.model(**ids).logits
    assert (got - want).abs().max() < 0.1 * want.abs().max()


def test_key_mapper_uses_transformers_rules():
    from transformers import BertConfig, BertLMHeadModel, GPT2Config, GPT2LMHeadModel

    from szoq_hub.data.checkpoint import KeyMapper

    with torch.device("meta"):
        gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50))
        bert = BertLMHeadModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=50, is_decoder=True))
    m = KeyMapper(gpt2)
    assert m("transformer.h.0.attn.c_attn.weight") == "transformer.h.0.attn.c_attn.weight"
    assert m("h.0.attn.c_attn.weight") == "transformer.h.0.attn.c_attn.weight"  # prefix missing
    assert m("h.0.attn.masked_bias") is None  # old buffer with no place
    b = KeyMapper(bert)
    assert b("bert.embeddings.LayerNorm.gamma") == "bert.embeddings.LayerNorm.weight"  # transformers' legacy renaming
    assert b("embeddings.LayerNorm.beta") == "bert.embeddings.LayerNorm.bias"  # both at once


def test_pickle_only_folder_refused_without_unpickling(tmp_path, run_cli):
    from conftest import assert_one_line_error

    from szoq_hub.core.errors import ModelError
    from szoq_hub.data.models import resolve_model

    folder = make_tiny("llama", tmp_path / "model")
    (folder / "model.safetensors").unlink()
    # A pickle that would run code if loaded: refusing must not touch it.
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04cbuiltins\nexec\n(Vraise SystemExit('unpickled')\ntR.")
    with pytest.raises(ModelError) as err:
        resolve_model(str(folder))
    assert "pickle" in str(err.value) and "safetensors" in err.value.hint and "never unpickles" in err.value.hint
    code, out, err_text = run_cli("mask", "build", str(folder), "--scorer", "random", "--out", str(tmp_path / "m"))
    assert_one_line_error(code, err_text, "pickle")


def test_index_naming_a_missing_shard_is_refused(tmp_path):
    from szoq_hub.data.checkpoint import checkpoint_files
    from szoq_hub.core.errors import ModelError

    folder = make_tiny("llama", tmp_path / "model", layout="sharded")
    files = checkpoint_files(folder)
    assert sorted(p.name for p in files) == sorted(p.name for p in folder.glob("model-*.safetensors"))  # not consolidated.safetensors
    files[1].unlink()
    with pytest.raises(ModelError, match="missing"):
        checkpoint_files(folder)


def test_cli_path_gpt2_checkpoint_without_prefix(tmp_path, run_cli):
    """The CLI on an original-layout GPT-2 checkpoint (Conv1D, keys without `transformer.`)."""
    folder = make_tiny("gpt2", tmp_path / "model", layout="no_prefix")
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    code, out, err = run_cli("mask", "build", str(folder), "--scorer", "random", "--density", "0.02", "--out", str(tmp_path / "mask"), "--json")
    assert code == 0, err
    common = ["--model", str(folder), "--mask", str(tmp_path / "mask")]
    task = ["--train", str(train), "--template", "{text} It was", "--labels", "0=bad,1=good"]
    code, out, err = run_cli("finetune", *common, *task, "--steps", "2", "--batch-size", "4", "--eval-every", "0", "--train-samples", "8",
                             "--dev-samples", "0", "--eval-samples", "2", "--lr", "1", "--eps", "0.01", "--out", str(tmp_path / "run"), "--json")
    assert code == 0, err
    assert json.loads(out)["steps"] == 2
    code, out, err = run_cli("merge", *common, "--delta", str(tmp_path / "run"), "--out", str(tmp_path / "merged"))
    assert code == 0, err
    from transformers import AutoModelForCausalLM

    from szoq_hub.methods.sparse.delta import load_delta
    from szoq_hub.hub.refs import open_mask

    merged = dict(AutoModelForCausalLM.from_pretrained(tmp_path / "merged").named_parameters())
    delta = load_delta(tmp_path / "run").tensors
    for name, idx in open_mask(str(tmp_path / "mask")).indices.items():
        assert torch.equal(merged[name].detach().view(-1)[idx.long()], delta[name]), name
