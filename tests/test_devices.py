"""Devices and compute dtypes of the runtime, and the paired pass that evaluates a ZO step's
perturbations in one forward, against the two-pass form on the same points."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import ROWS, TINY_TEXTS, assert_one_line_error
from szoq_hub.core.devices import DTYPES, resolve_device, resolve_dtype
from szoq_hub.core.defaults import check_device_spec, check_dtype_spec
from szoq_hub.core.errors import ConfigError, TrainingError
from szoq_cli.finetune import finetune_config
from szoq_hub.training.config import FinetuneConfig
from szoq_hub.training.finetune import finetune
from szoq_hub.training.run_folder import CHECKPOINT_FILE
from szoq_hub.runtime.sparse import SparseQuantLinear, SparseValues, load_sparse_model
from szoq_hub.data.scoring import Encoded, loss_sum, loss_sums, option_scores
from szoq_hub.runtime.zo import ZOConfig, in_place, make_optimizer

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without a GPU")


@pytest.fixture(scope="module")
def encoded(tiny_model_dir):
    from transformers import AutoTokenizer

    from szoq_hub.data.scoring import encode
    from szoq_hub.data.tasks import Example

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    examples = [Example(f"{t} It was", [" bad", " good"], r["label"]) for t, r in zip(TINY_TEXTS[:6], ROWS)]
    return encode(tok, examples), tok.pad_token_id


def _points(sm, p: int, scale: float = 0.05, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return sm.values[None] + scale * torch.randn(p, sm.values.numel(), generator=gen)  # [P, nnz]


# --- resolving --device / --dtype ------------------------------------------------------------

def test_resolve_device_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected and resolve_device(None).type == expected


@no_cuda
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "CUDA:1"])
def test_cuda_without_a_gpu_is_a_config_error_with_a_hint(spec):
    with pytest.raises(ConfigError, match="no CUDA GPU") as err:
        resolve_device(spec)
    assert "--device cpu" in err.value.hint
    check_device_spec(spec)  # the spelling itself is valid


@pytest.mark.parametrize("spec", ["tpu", "cuda:x", "cpu:0", "", "gpu"])
def test_unknown_device_strings_are_refused(spec):
    with pytest.raises(ConfigError, match="unknown --device"):
        resolve_device(spec) if spec else check_device_spec(spec)
    with pytest.raises(ConfigError):
        check_device_spec(spec)


def test_resolve_dtype_defaults_and_names():
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype(None, torch.device("cuda", 0)) == torch.bfloat16
    assert resolve_dtype("auto", torch.device("cuda", 0)) == torch.bfloat16
    for name, dtype in DTYPES.items():
        assert resolve_dtype(name, torch.device("cpu")) == dtype
    assert resolve_dtype(torch.float16, torch.device("cpu")) == torch.float16
    with pytest.raises(ConfigError, match="unknown --dtype"):
        resolve_dtype("fp8", torch.device("cpu"))
    with pytest.raises(ConfigError):
        check_dtype_spec("int8")
    with pytest.raises(ConfigError):
        FinetuneConfig(device="npu")
    with pytest.raises(ConfigError):
        FinetuneConfig(dtype="half")


@pytest.mark.parametrize("flags, want", [("fpu avx2 avx512f avx512_bf16", "bf16"), ("fpu amx_bf16 amx_tile", "bf16"),
                                         ("fp asimd bf16 i8mm", "bf16"), ("fpu avx2 avx512f", "fp32")])
def test_auto_dtype_is_bf16_where_the_cpu_has_native_bf16(flags, want, tmp_path, monkeypatch):
    from szoq_hub.core import devices

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\n{'Features' if 'asimd' in flags else 'flags'}\t\t: {flags}\n")
    real_path = devices.Path
    monkeypatch.setattr(devices, "Path", lambda p: cpuinfo if p == "/proc/cpuinfo" else real_path(p))
    devices.cpu_has_native_bf16.cache_clear()
    try:
        assert devices.auto_dtype(torch.device("cpu")) == want
        assert resolve_dtype("auto", torch.device("cpu")) == DTYPES[want]
        assert resolve_dtype(None, torch.device("cpu")) == torch.float32  # None: the device default, not the probe
        assert devices.auto_dtype(torch.device("cuda", 0)) == "bf16"
    finally:
        devices.cpu_has_native_bf16.cache_clear()


# --- all runtime state follows .to() ----------------------------------------------------------

def _all_tensors(sm) -> dict[str, torch.Tensor]:
    """Every tensor the runtime model uses: parameters, buffers, the 4-bit quant states."""
    # remove_duplicate=False: a move to `meta` unties lm_head from the embeddings (the two
    # parameters are replaced one by one); list both names either way.
    tensors = {f"param {n}": p for n, p in sm.model.named_parameters(remove_duplicate=False)}
    tensors.update({f"buffer {n}": b for n, b in sm.model.named_buffers(remove_duplicate=False)})
    for name, m in sm.model.named_modules():
        if isinstance(m, SparseQuantLinear) and m.quant_state is not None:
            tensors[f"{name}.quant_state.absmax"] = m.quant_state.absmax
            tensors[f"{name}.quant_state.code"] = m.quant_state.code
    tensors["store values"] = sm.values
    return tensors


@pytest.mark.parametrize("quant", ["nf4", "none"])
def test_every_runtime_tensor_follows_model_to_device(tiny_model_dir, devices_mask, quant):
    """`meta` stands in for an accelerator: a tensor that stays behind would still be on the CPU."""
    sm = load_sparse_model(str(tiny_model_dir), devices_mask[0], quant=quant, device="cpu")
    before = _all_tensors(sm)
    assert before and all(t.device.type == "cpu" for t in before.values())
    assert any(n.startswith("buffer") and n.endswith("szoq_sparse.values") for n in before)  # registered once, as a buffer
    assert sum(isinstance(m, SparseValues) for m in sm.model.modules()) == 1
    sm.model.to("meta")
    after = _all_tensors(sm)
    assert after.keys() == before.keys()
    stayed = [n for n, t in after.items() if t.device.type != "meta"]
    assert not stayed, stayed
    assert sm.device.type == "meta" and sm.values.dtype == torch.float32
    layers = [m for m in sm.model.modules() if isinstance(m, SparseQuantLinear) and m.nnz]
    assert layers and all(m.values.device.type == "meta" for m in layers)  # layers read the moved store


def test_model_to_dtype_casts_compute_but_keeps_values_and_quant_constants_fp32(tiny_model_dir, devices_mask, encoded):
    mask = devices_mask[0]
    ref = load_sparse_model(str(tiny_model_dir), mask, quant="nf4", device="cpu")
    sm = load_sparse_model(str(tiny_model_dir), mask, quant="nf4", device="cpu")
    values = sm.values.clone()
    sm.model.to(torch.bfloat16)
    assert torch.equal(sm.values, values) and sm.values.dtype == torch.float32
    assert sm.model.get_input_embeddings().weight.dtype == torch.bfloat16
    for m in sm.model.modules():
        if isinstance(m, SparseQuantLinear):
            assert m.compute_dtype == torch.bfloat16 and m.quant_state.dtype == torch.bfloat16
            assert m.quant_state.absmax.dtype == torch.float32 and m._base_weight().dtype == torch.bfloat16
    batch, pad = encoded
    a, b = option_scores(ref.model, batch, pad), option_scores(sm.model, batch, pad)
    assert (a - b).abs().max() < 0.1 and (a - b).abs().max() > 0  # bf16 ran, and ran close


# --- compute dtype ----------------------------------------------------------------------------

@pytest.mark.parametrize("quant", ["nf4", "none"])
def test_bf16_compute_keeps_fp32_master_values(tiny_model_dir, devices_mask, encoded, quant):
    from safetensors.torch import load_file

    mask = devices_mask[0]
    sm = load_sparse_model(str(tiny_model_dir), mask, quant=quant, device="cpu", compute_dtype="bf16")
    ref = load_sparse_model(str(tiny_model_dir), mask, quant=quant, device="cpu", compute_dtype="fp32")
    lm = sm.model
    assert lm.get_input_embeddings().weight.dtype == torch.bfloat16
    assert lm.get_output_embeddings().weight.dtype == torch.bfloat16
    assert lm.model.norm.weight.dtype == torch.bfloat16
    assert all(m._base_weight().dtype == torch.bfloat16 for m in lm.modules() if isinstance(m, SparseQuantLinear))
    # The master values are the checkpoint's weights bit for bit (fp32, never rounded to bf16).
    state = load_file(str(tiny_model_dir / "model.safetensors"))
    assert sm.values.dtype == torch.float32
    for name, off, n in sm.segments:
        assert torch.equal(sm.values[off : off + n], state[name].reshape(-1)[mask.indices[name].long()])
    batch, pad = encoded
    for _ in range(2):  # the same values, perturbed in place: bf16 tracks fp32
        a, b = option_scores(ref.model, batch, pad), option_scores(sm.model, batch, pad)
        assert (a - b).abs().max() < 0.1
        noise = torch.randn(sm.values.shape, generator=torch.Generator().manual_seed(3))
        sm.values.add_(noise)
        ref.values.add_(noise)


def test_bf16_sparse_part_is_added_in_fp32(tiny_model_dir, devices_mask):
    """The correction x[..., cols] @ S is computed from the fp32 values and summed in fp32: the
    layer output equals round_bf16(base(x) + x @ delta^T computed in fp32)."""
    sm = load_sparse_model(str(tiny_model_dir), devices_mask[0], quant="nf4", device="cpu", compute_dtype="bf16")
    gen = torch.Generator().manual_seed(4)
    sm.values.add_(torch.randn(sm.values.shape, generator=gen) * 1e-3)  # below bf16 resolution of the weights
    layer = next(m for m in sm.model.modules() if isinstance(m, SparseQuantLinear) and m.nnz)
    x = torch.randn(2, 5, layer.in_features, generator=gen).to(torch.bfloat16)  # [B, T, in]
    delta = torch.zeros(layer.out_features * layer.in_features)
    delta[layer.flat_idx] = layer.values
    with torch.no_grad():
        base = torch.nn.functional.linear(x, layer._base_weight()).float()  # [B, T, out]
        expected = (base + x.float() @ delta.view(layer.out_features, layer.in_features).T).to(torch.bfloat16)
        out = layer(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected, atol=0, rtol=0)


# --- the paired pass --------------------------------------------------------------------------

@pytest.mark.parametrize("quant,dtype,tol", [("nf4", "fp32", 1e-5), ("fp4", "fp32", 1e-5), ("int8", "fp32", 1e-5), ("none", "fp32", 1e-5),
                                             ("nf4", "bf16", 2e-2)])
def test_paired_losses_match_the_two_pass_form(tiny_model_dir, devices_mask, encoded, quant, dtype, tol):
    sm = load_sparse_model(str(tiny_model_dir), devices_mask[0], quant=quant, device="cpu", compute_dtype=dtype)
    batch, pad = encoded
    points = _points(sm, 4)  # [4, nnz] (2q points with q = 2)
    before = sm.values.clone()
    with sm.perturbed(points) as parts:
        paired = loss_sums(sm.model, batch, pad, copies=parts)
    assert sm.store.parts is None and torch.equal(sm.values, before)
    two_pass = in_place(sm.values, lambda: loss_sum(sm.model, batch, pad))(points)
    assert len(paired) == 4 and len(set(paired)) == 4  # the parts really differ
    assert paired == pytest.approx(two_pass, rel=tol)


def test_paired_single_token_options_match(tiny_model_dir, devices_mask, encoded):
    """The shared single-token path (sst2-like: one forward, logits_to_keep=1) with copies."""
    _, pad = encoded
    sm = load_sparse_model(str(tiny_model_dir), devices_mask[0], quant="nf4", device="cpu")
    batch = [Encoded(e.prompt, [[5], [7]], e.label) for e in encoded[0]]
    points = _points(sm, 4)
    with sm.perturbed(points) as parts:
        paired = loss_sums(sm.model, batch, pad, copies=parts)
    two_pass = in_place(sm.values, lambda: loss_sum(sm.model, batch, pad))(points)
    assert len(set(paired)) == 4 and paired == pytest.approx(two_pass, rel=1e-5)


@pytest.mark.parametrize("multi_token", [False, True])
def test_micro_batches_give_the_batch_loss(tiny_model_dir, devices_mask, encoded, multi_token):
    """Length-grouped forwards of 1, 2 or 4 examples sum to the one-forward loss of every copy."""
    from szoq_hub.data.scoring import _longest, micro_batches

    base, pad = encoded
    batch = [Encoded(e.prompt, [[5, 9], [7], [11, 3, 4]][: 2 + i % 2], i % 2) for i, e in enumerate(base)] if multi_token else base
    assert len({len(e.prompt) for e in batch}) > 2  # lengths differ, so grouping changes the padding
    sm = load_sparse_model(str(tiny_model_dir), devices_mask[0], quant="nf4", device="cpu")
    points = _points(sm, 4)
    with sm.perturbed(points) as parts:
        whole = loss_sums(sm.model, batch, pad, copies=parts)
        for size in (1, 2, 4):
            chunks = micro_batches(batch, size)
            assert sorted(id(e) for c in chunks for e in c) == sorted(id(e) for e in batch) and max(map(len, chunks)) <= size
            lengths = [len(e.prompt) for c in chunks for e in c]
            assert lengths == sorted(lengths)  # similar lengths share a forward
            assert loss_sums(sm.model, batch, pad, copies=parts, micro_batch_size=size) == pytest.approx(whole, rel=1e-6)
        longest = max(len(e.prompt) + 3 for e in batch)
        for tokens in (1, 2 * longest, 4 * longest):  # a token budget: as many rows as fit, at least one
            chunks = micro_batches(batch, tokens=tokens)
            assert sorted(id(e) for c in chunks for e in c) == sorted(id(e) for e in batch)
            assert all(len(c) == 1 or len(c) * max(map(_longest, c)) <= tokens for c in chunks)
            assert loss_sums(sm.model, batch, pad, copies=parts, micro_batch_tokens=tokens) == pytest.approx(whole, rel=1e-5)
        assert len(micro_batches(batch, tokens=1)) == len(batch) and len(micro_batches(batch, tokens=4 * longest)) < len(batch)
    assert len(set(whole)) == 4 and micro_batches(batch, None) == [batch] and micro_batches(batch, 99) == [batch]


def test_paired_multi_token_options_match(tiny_model_dir, devices_mask, encoded):
    """The per-(example, option) path (copa, custom words) with copies."""
    _, pad = encoded
    sm = load_sparse_model(str(tiny_model_dir), devices_mask[0], quant="nf4", device="cpu")
    batch = [Encoded(e.prompt, [[5, 9], [7], [11, 3, 4]][: 2 + i % 2], i % 2) for i, e in enumerate(encoded[0][:4])]
    points = _points(sm, 2)
    with sm.perturbed(points):
        paired = option_scores(sm.model, batch, pad, copies=2)  # [2 * B, O]
    for p in range(2):
        sm.values.copy_(points[p])
        torch.testing.assert_close(paired[p * len(batch):(p + 1) * len(batch)], option_scores(sm.model, batch, pad), atol=1e-5, rtol=1e-5)


def test_paired_pass_dequantizes_each_base_once(tiny_model_dir, devices_mask, encoded, monkeypatch):
    import bitsandbytes.functional as bnbf

    sm = load_sparse_model(str(tiny_model_dir), devices_mask[0], quant="nf4", device="cpu")
    n_layers = sum(isinstance(m, SparseQuantLinear) for m in sm.model.modules())
    calls = {"n": 0}
    real = bnbf.dequantize_4bit

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(bnbf, "dequantize_4bit", counting)
    batch, pad = encoded
    opt = make_optimizer(sm.values, ZOConfig(zo_samples=2))

    def closure(points):
        with sm.perturbed(points) as parts:
            return [x / len(batch) for x in loss_sums(sm.model, batch, pad, copies=parts)]

    opt.step(closure, 0)
    assert calls["n"] == n_layers  # 4 points, one forward: one dequantization per layer


def test_perturbed_refuses_wrong_shapes(tiny_model_dir, devices_mask, encoded):
    sm = load_sparse_model(str(tiny_model_dir), devices_mask[0], quant="none", device="cpu")
    with pytest.raises(ConfigError):
        with sm.perturbed(torch.zeros(2, sm.values.numel() + 1)):
            pass
    batch, pad = encoded
    with pytest.raises(ConfigError, match="equal row blocks"):
        with sm.perturbed(_points(sm, 2)), torch.no_grad():
            sm.model(input_ids=torch.full((3, 4), pad))  # 3 rows cannot split in 2
    assert sm.store.parts is None  # cleared on error


# --- runs: device and dtype recorded, reproducible, resume on the same runtime only -----------

def _config(model, mask, train_file, out, **kw) -> FinetuneConfig:
    base = dict(model=str(model), mask=str(mask), task=None, train_file=str(train_file), template="{text} It was", labels="0=bad,1=good",
                quant="nf4", steps=4, batch_size=4, zo_samples=2, lr=1e-3, eval_every=0, save_every=2, train_samples=12, dev_samples=4,
                eval_samples=4, device="cpu", out=str(out))
    base.update(kw)
    return finetune_config(base)


def test_paired_run_is_bit_reproducible_and_matches_the_two_pass_losses(tiny_model_dir, devices_mask, train_file, tmp_path):
    from safetensors.torch import load_file

    from szoq_hub.hub.refs import open_mask
    from szoq_hub.data.scoring import encode
    from szoq_hub.data.tasks import load_task
    from szoq_hub.runtime.zo import StepRecord

    mask_dir = devices_mask[1]
    config = _config(tiny_model_dir, mask_dir, train_file, tmp_path / "a", dtype="bf16")
    finetune(config)
    finetune(_config(tiny_model_dir, mask_dir, train_file, tmp_path / "b", dtype="bf16"))
    a, b = (load_file(str(tmp_path / r / CHECKPOINT_FILE))["values"] for r in "ab")
    assert torch.equal(a, b)
    saved = json.loads((tmp_path / "a" / "finetune_config.json").read_text())
    assert {k: saved["runtime"][k] for k in ("device_type", "dtype")} == {"device_type": "cpu", "dtype": "bf16"}

    # fp32: the paired run's logged losses are the two-pass losses at the same points.
    config = _config(tiny_model_dir, mask_dir, train_file, tmp_path / "c", steps=2, dtype="fp32")
    finetune(config)
    records = [StepRecord.from_dict(r) for r in map(json.loads, (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "step"]
    sm = load_sparse_model(str(tiny_model_dir), open_mask(str(mask_dir)), quant="nf4", device="cpu")
    task = load_task(None, custom=config.custom_task(), sampling=config.sampling())
    train = encode(sm.tokenizer, task.train)
    from szoq_hub.training.finetune import batch_indices as _batch_indices

    opt = make_optimizer(sm.values, config.zo)
    for record in records:
        shard = [train[i] for i in _batch_indices(len(train), config.batch_size, record.step, config.seed, {})]
        two_pass = opt.estimate(in_place(sm.values, lambda: loss_sum(sm.model, shard, sm.tokenizer.pad_token_id) / len(shard)), record.step)
        assert record.loss_plus == pytest.approx(two_pass.loss_plus, rel=1e-5)
        assert record.loss_minus == pytest.approx(two_pass.loss_minus, rel=1e-5)
        opt.apply(record)


class _Stop(Exception):
    pass


def stop_at_3(event: dict) -> None:
    """A progress callback that stops a run right after its step 3 (as Ctrl-C would)."""
    if event["kind"] == "step" and event["step"] == 3:
        raise _Stop


def test_resume_is_exact_and_refuses_another_dtype(tiny_model_dir, devices_mask, train_file, tmp_path):
    from szoq_hub.methods.sparse.delta import load_delta

    mask_dir = devices_mask[1]
    finetune(_config(tiny_model_dir, mask_dir, train_file, tmp_path / "straight", dtype="bf16"))

    out = tmp_path / "resumed"
    with pytest.raises(_Stop):
        finetune(_config(tiny_model_dir, mask_dir, train_file, out, dtype="bf16"), progress=stop_at_3)
    with pytest.raises(TrainingError, match="ran on cpu in bf16") as err:
        finetune(_config(tiny_model_dir, mask_dir, train_file, out, dtype="fp32"), resume=True)
    assert "--dtype bf16" in err.value.hint
    result = finetune(_config(tiny_model_dir, mask_dir, train_file, out, dtype="bf16", device="auto" if not torch.cuda.is_available() else "cpu"),
                      resume=True)
    assert result.resumed_from == 2
    a, b = load_delta(tmp_path / "straight").tensors, load_delta(out).tensors
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_micro_batches_are_chosen_recorded_and_kept_on_resume(tiny_model_dir, tiny_mask, train_file, tmp_path):
    """No --micro-batch-size: a token budget on the CPU, recorded in the run; a resume keeps the
    recorded choice, a forced size wins; the run's loss is the whole-batch loss."""
    from szoq_hub.training.finetune import MICRO_BATCH_TOKENS

    mask_dir = tiny_mask
    auto = finetune(_config(tiny_model_dir, mask_dir, train_file, tmp_path / "auto", dtype="fp32"))
    whole = finetune(_config(tiny_model_dir, mask_dir, train_file, tmp_path / "whole", dtype="fp32", micro_batch_size=16))
    assert (auto.micro_batch_size, auto.micro_batch_tokens, whole.micro_batch_size, whole.micro_batch_tokens) == (None, MICRO_BATCH_TOKENS, 16, None)
    runtime = json.loads((tmp_path / "auto" / "finetune_config.json").read_text())["runtime"]
    assert (runtime["micro_batch_tokens"], runtime["dtype"]) == (MICRO_BATCH_TOKENS, auto.dtype)
    losses = [[json.loads(l)["loss"] for l in (tmp_path / r / "metrics.jsonl").read_text().splitlines() if '"kind": "step"' in l] for r in ("auto", "whole")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)

    out = tmp_path / "resumed"
    with pytest.raises(_Stop):
        finetune(_config(tiny_model_dir, mask_dir, train_file, out, device="cpu"), progress=stop_at_3)
    record = json.loads((out / "finetune_config.json").read_text())
    record["runtime"]["micro_batch_tokens"] = 32  # as if the run was started by a version with another budget
    (out / "finetune_config.json").write_text(json.dumps(record))
    resumed = finetune(_config(tiny_model_dir, mask_dir, train_file, out, device="cpu"), resume=True)
    assert (resumed.resumed_from, resumed.micro_batch_size, resumed.micro_batch_tokens) == (2, None, 32)


@no_cuda
def test_cli_device_errors_are_one_line(tiny_model_dir, devices_mask, train_file, tmp_path, run_cli):
    custom = ["--train", str(train_file), "--template", "{text} It was", "--labels", "0=bad,1=good"]
    common = ["--model", str(tiny_model_dir), "--mask", str(devices_mask[1]), "--quant", "none"]
    code, _, err = run_cli("finetune", *common, *custom, "--steps", "1", "--device", "cuda", "--out", str(tmp_path / "run"))
    assert_one_line_error(code, err, "no CUDA GPU")
    assert not (tmp_path / "run").exists()
    code, _, err = run_cli("eval", *common, *custom, "--device", "tpu")
    assert_one_line_error(code, err, "unknown --device")
    code, _, err = run_cli("eval", *common, *custom, "--dtype", "fp8")
    assert_one_line_error(code, err, "unknown --dtype")
    code, _, err = run_cli("merge", *common[:4], "--delta", str(tmp_path), "--out", str(tmp_path / "m"), "--device", "cuda:1")
    assert_one_line_error(code, err, "no CUDA GPU")


def test_eval_and_merge_take_device_and_dtype(tiny_model_dir, devices_mask, train_file, tmp_path):
    from safetensors.torch import load_file

    from szoq_hub.training.evaluate import EvalConfig, evaluate
    from szoq_hub.training.merge import merge

    mask, mask_dir = devices_mask
    run = tmp_path / "run"
    finetune(_config(tiny_model_dir, mask_dir, train_file, run, steps=2))
    common = dict(model=str(tiny_model_dir), mask=str(mask_dir), task=None, train_file=str(train_file), template="{text} It was",
                  labels="0=bad,1=good", eval_samples=4, delta=str(run))
    fp32 = evaluate(EvalConfig(**common, device="cpu", dtype="fp32"))
    bf16 = evaluate(EvalConfig(**common, device="cpu", dtype="bf16"))
    assert fp32.n == bf16.n == 4 and fp32.mode == "delta"
    merged = merge(model=str(tiny_model_dir), mask_ref=str(mask_dir), delta=run, out=tmp_path / "merged", device="cpu")
    weights = load_file(str(next(merged.glob("*.safetensors"))))
    delta = load_file(str(run / "delta.safetensors"))
    for name, idx in mask.indices.items():
        assert torch.equal(weights[name].reshape(-1)[idx.long()], delta[name])


def test_scatter_and_column_forms_agree_and_are_chosen_by_column_spread():
    """A random mask (nearly every column) takes the scatter form, a column-concentrated one the
    column form; both give base(x) + x @ delta^T for each part of a paired batch."""
    from szoq_hub.runtime.sparse import SparseValues

    gen = torch.Generator().manual_seed(5)
    out_f, in_f = 512, 128  # C * out / nnz: ~500 for 40 spread entries, 26 for 2 columns
    w = torch.randn(out_f, in_f, generator=gen)
    spread = torch.randperm(out_f * in_f, generator=gen)[:40].sort().values  # ~40 distinct columns
    concentrated = (torch.arange(out_f)[:, None] * in_f + torch.tensor([3, 70])).reshape(-1)[:40]  # 2 columns
    for idx, form in ((spread, "scatter"), (concentrated, "column")):
        store = SparseValues(idx.numel(), torch.device("cpu"))
        store.values.copy_(w.reshape(-1)[idx])
        layer = SparseQuantLinear(w.clone(), None, idx, store, 0, "none", torch.float32)
        assert layer.sparse_form == form
        x = torch.randn(2 * 3, 5, in_f, generator=gen)  # [P * B, T, in] with P = 2
        parts = store.values[None] + torch.randn(2, idx.numel(), generator=gen)  # [2, nnz]
        store.parts = parts
        with torch.no_grad():
            got = layer(x)
            other = "column" if form == "scatter" else "scatter"
            layer.sparse_form = other
            again = layer(x)
        store.parts = None
        for p in range(2):
            dense = w.clone().reshape(-1)
            dense[idx] = parts[p]
            expected = x[3 * p : 3 * (p + 1)] @ dense.view(out_f, in_f).T  # [B, T, out]
            torch.testing.assert_close(got[3 * p : 3 * (p + 1)], expected, atol=1e-4, rtol=1e-5)
            torch.testing.assert_close(again[3 * p : 3 * (p + 1)], expected, atol=1e-4, rtol=1e-5)


def test_dtype_auto_is_the_default_and_a_resume_keeps_the_runs_dtype(tiny_model_dir, tiny_mask, train_file, tmp_path, monkeypatch):
    from szoq_hub.core import devices
    from szoq_hub.training.evaluate import EvalConfig

    assert FinetuneConfig().dtype == "auto" and EvalConfig().dtype == "auto"
    monkeypatch.setattr(devices, "auto_dtype", lambda device: "bf16")  # as on a CPU with native bf16, whatever this one has
    mask_dir = tiny_mask
    new = finetune(_config(tiny_model_dir, mask_dir, train_file, tmp_path / "new", steps=2))
    assert new.dtype == "bf16" and json.loads((tmp_path / "new" / "finetune_config.json").read_text())["runtime"]["dtype"] == "bf16"

    out = tmp_path / "fp32"
    with pytest.raises(_Stop):
        finetune(_config(tiny_model_dir, mask_dir, train_file, out, dtype="fp32"), progress=stop_at_3)
    resumed = finetune(_config(tiny_model_dir, mask_dir, train_file, out), resume=True)  # auto: the run's fp32, not bf16
    assert (resumed.resumed_from, resumed.dtype) == (2, "fp32")
