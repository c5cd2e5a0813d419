"""The runtime on a CUDA GPU (run by bench/gpu_check.sh; skipped where torch sees no GPU).

Same checks as the CPU tests, on the device: every tensor on the GPU (bitsandbytes' CUDA 4-bit
kernels), the paired pass equal to the two-pass form, runs bit-reproducible on one device type
and across --resume, bf16 as the CUDA default, eval and merge.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY_TEXTS
from conftest import ROWS
from szoq_hub.runtime.zo import ZOConfig
from szoq_hub.training.finetune import FinetuneConfig, finetune
from szoq_hub.training.run_folder import CHECKPOINT_FILE
from szoq_hub.runtime.sparse import SparseQuantLinear, load_sparse_model
from szoq_hub.data.scoring import Encoded, loss_sum, loss_sums, option_scores
from szoq_hub.runtime.zo import in_place, perturbation

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _batch(sm) -> tuple[list[Encoded], int]:
    ids = sm.tokenizer([f"{t} It was" for t in TINY_TEXTS[:6]])["input_ids"]
    return [Encoded(p, [[5], [7]], i % 2) for i, p in enumerate(ids)], sm.tokenizer.pad_token_id


@pytest.mark.parametrize("quant", ["nf4", "fp4", "int8", "none"])
def test_everything_lives_on_the_gpu_and_matches_the_cpu(tiny_model_dir, devices_mask, quant):
    gpu = load_sparse_model(str(tiny_model_dir), devices_mask[0], quant=quant, device="cuda", compute_dtype="fp32")
    cpu = load_sparse_model(str(tiny_model_dir), devices_mask[0], quant=quant, device="cpu", compute_dtype="fp32")
    tensors = list(gpu.model.parameters()) + list(gpu.model.buffers()) + [gpu.values]
    for m in gpu.model.modules():
        if isinstance(m, SparseQuantLinear) and m.quant_state is not None:
            tensors += [m.quant_state.absmax, m.quant_state.code]
    assert all(t.device.type == "cuda" for t in tensors)
    assert torch.equal(gpu.values.cpu(), cpu.values)
    batch, pad = _batch(gpu)
    tol = 0.05 if quant == "int8" else 1e-3
    torch.testing.assert_close(option_scores(gpu.model, batch, pad), option_scores(cpu.model, batch, pad), atol=tol, rtol=tol)


def test_cuda_defaults_to_bf16_and_keeps_fp32_values(tiny_model_dir, devices_mask):
    sm = load_sparse_model(str(tiny_model_dir), devices_mask[0], quant="nf4", device="cuda")
    assert sm.model.get_input_embeddings().weight.dtype == torch.bfloat16
    assert sm.values.dtype == torch.float32 and sm.values.device.type == "cuda"


@pytest.mark.parametrize("dtype,tol", [("fp32", 1e-5), ("bf16", 2e-2)])
def test_paired_matches_two_pass_on_cuda(tiny_model_dir, devices_mask, dtype, tol):
    sm = load_sparse_model(str(tiny_model_dir), devices_mask[0], quant="nf4", device="cuda", compute_dtype=dtype)
    batch, pad = _batch(sm)
    gen = torch.Generator(device="cuda").manual_seed(0)
    points = sm.values[None] + 0.05 * torch.randn(4, sm.values.numel(), generator=gen, device="cuda")  # [4, nnz]
    with sm.perturbed(points) as parts:
        paired = loss_sums(sm.model, batch, pad, copies=parts)
    two_pass = in_place(sm.values, lambda: loss_sum(sm.model, batch, pad))(points)
    assert paired == pytest.approx(two_pass, rel=tol)


def test_z_is_drawn_on_the_device():
    z = perturbation(123, 1000, "cuda")
    assert z.device.type == "cuda" and torch.equal(z, perturbation(123, 1000, "cuda"))


def test_cuda_run_is_bit_reproducible_and_resumes_exactly(tiny_model_dir, devices_mask, tmp_path):
    from safetensors.torch import load_file

    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in ROWS))

    def config(out, **kw):
        return FinetuneConfig(model=str(tiny_model_dir), mask=str(devices_mask[1]), task=None, train_file=str(train), template="{text} It was",
                              labels="0=bad,1=good", quant="nf4", device="cuda", steps=4, batch_size=4, zo=ZOConfig(zo_samples=2, lr=1e-3), eval_every=0,
                              save_every=2, train_samples=12, dev_samples=4, eval_samples=4, out=str(out), **kw)

    finetune(config(tmp_path / "a"))
    finetune(config(tmp_path / "b"))
    a, b = (load_file(str(tmp_path / r / CHECKPOINT_FILE))["values"] for r in "ab")
    assert torch.equal(a, b)

    class Stop(Exception):
        pass

    def stop(event):
        if event["kind"] == "step" and event["step"] == 3:
            raise Stop

    with pytest.raises(Stop):
        finetune(config(tmp_path / "c"), progress=stop)
    finetune(config(tmp_path / "c"), resume=True)
    assert torch.equal(load_file(str(tmp_path / "c" / CHECKPOINT_FILE))["values"], a)


def test_eval_and_merge_on_cuda(tiny_model_dir, devices_mask, tmp_path):
    from safetensors.torch import load_file

    from szoq_hub.methods.sparse.delta import save_delta
    from szoq_hub.training.evaluate import EvalConfig, evaluate
    from szoq_hub.core.files import file_sha256
    from szoq_hub.training.merge import merge
    from szoq_hub.data.models import model_fingerprint, resolve_model

    mask, mask_dir = devices_mask
    tensors = {n: torch.randn(idx.numel()) for n, idx in mask.indices.items()}
    source = resolve_model(str(tiny_model_dir))
    save_delta(tmp_path / "delta.safetensors", tensors, mask_sha256=file_sha256(mask_dir / "mask.safetensors"),
               fingerprint=model_fingerprint(source), base_model=source.base_model)
    out = merge(model=str(tiny_model_dir), mask_ref=str(mask_dir), delta=tmp_path / "delta.safetensors", out=tmp_path / "merged", device="cuda")
    weights = load_file(str(next(out.glob("*.safetensors"))))
    for name, idx in mask.indices.items():
        assert torch.equal(weights[name].reshape(-1)[idx.long()], tensors[name])
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    common = dict(model=str(tiny_model_dir), mask=str(mask_dir), task=None, train_file=str(train), template="{text} It was",
                  labels="0=bad,1=good", eval_samples=4, delta=str(tmp_path / "delta.safetensors"))
    on_gpu, on_cpu = evaluate(EvalConfig(**common, device="cuda", dtype="fp32")), evaluate(EvalConfig(**common, device="cpu"))
    assert on_gpu.n == on_cpu.n == 4 and on_gpu.value == pytest.approx(on_cpu.value)
