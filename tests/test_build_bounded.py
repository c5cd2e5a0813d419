"""Memory-bounded mask builds: checkpoint dtype, passes, streaming selection, 4-bit scoring, FSDP."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from szoq_hub.masks.build import MaskBuildConfig, build_mask, checkpoint_files, load_scoring_model
from szoq_hub.masks.build_plan import activation_bytes, parse_size, plan_groups
from szoq_hub.data.calibration import load_windows
from szoq_hub.core.errors import ConfigError, ModelError
from szoq_hub.masks.artifact import captured_share, captured_share_per_tensor
from szoq_hub.data.models import load_model, resolve_model, target_parameter_names
from szoq_hub.masks.selection import StreamingSelector
from szoq_hub.masks.sensitivity import fisher_scores

from conftest import assert_one_line_error, make_tiny_llama, reference_select as select

REPO = Path(__file__).resolve().parents[1]


def cfg(model, calib, **kw):
    return MaskBuildConfig(model=str(model), calibration=str(calib), samples=kw.pop("samples", 3), seq_len=kw.pop("seq_len", 12), **kw)


@pytest.fixture(scope="module")
def bf16_model_dir(tmp_path_factory) -> Path:
    """The tiny Llama saved in bf16 and sharded (index json), with a stray file the index omits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = make_tiny_llama(tmp_path_factory.mktemp("tiny-src"), hidden=64, layers=2)
    folder = tmp_path_factory.mktemp("tiny-bf16")
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    model.save_pretrained(folder, max_shard_size="60KB")
    AutoTokenizer.from_pretrained(src).save_pretrained(folder)
    assert (folder / "model.safetensors.index.json").exists()
    from safetensors.torch import save_file  # a stale consolidated file that is not part of the checkpoint
    save_file({"model.layers.0.mlp.up_proj.weight": torch.full((128, 64), 7.0)}, str(folder / "consolidated.safetensors"))
    return folder


def reference_mask(model_dir, calib, *, density=0.02, scope="per-matrix", dtype=torch.float32, samples=3, seq_len=12):
    """The unbounded reference: whole model, every score at once, `mask.select`."""
    loaded = load_model(resolve_model(str(model_dir)), dtype=dtype)
    targets = target_parameter_names(loaded.model)
    windows, _ = load_windows(str(calib), loaded.tokenizer, samples=samples, seq_len=seq_len, seed=0)
    scores = fisher_scores(loaded.model, targets, windows)
    idx = select(scores, density, scope)
    return idx, captured_share(scores, idx), scores


def assert_same_indices(a, b):
    assert list(a) == list(b)
    for n in a:
        assert torch.equal(a[n], b[n]), n


# ---- sizes and plans ---------------------------------------------------------------------

def test_parse_size_units_and_errors():
    assert parse_size("3.5GB") == 3_500_000_000
    assert parse_size("512MiB") == 512 * 2**20
    assert parse_size("1000") == 1000
    for bad in ("", "lots", "-1GB", "3.5XB", "0"):
        with pytest.raises(ConfigError):
            parse_size(bad)


def test_plan_packs_in_order_and_refuses_a_budget_below_one_tensor():
    numels = {"a": 1000, "b": 3000, "c": 500, "d": 2000}
    base = dict(resident=0, activations=0, grad_bytes=2)
    reserve = 160 * 2**20
    transient = 3000 * (2 + 4 + 16)  # the largest gradient + its fp32 copy; selection (chunked above mask.SELECT_CHUNK)
    plan = plan_groups(list(numels), numels, budget=reserve + transient + 4 * 4000, **base)
    assert plan.groups == [["a", "b"], ["c", "d"]]  # order kept; each group's fp32 accumulators fit 16 kB
    assert all(size <= 4 * 4000 for size in plan.accumulators)
    assert plan_groups(list(numels), numels, budget=None, **base).groups == [list(numels)]
    # a pass that starts at a later layer keeps fewer activations, so its group may hold more
    later = plan_groups(list(numels), numels, budget=reserve + transient + 4 * 4000 + 8000,
                        activations=lambda n: 8000 if n in ("a", "b") else 0, resident=0, grad_bytes=2)
    assert later.groups == [["a", "b"], ["c", "d"]] and later.accumulators == [16000, 10000]
    tight = plan_groups(list(numels), numels, budget=reserve + transient + 4 * 3000 + 8000,
                        activations=lambda n: 8000 if n == "a" else 0, resident=0, grad_bytes=2)
    assert tight.groups == [["a"], ["b", "c"], ["d"]]
    with pytest.raises(ConfigError, match="cannot hold") as info:
        plan_groups(list(numels), numels, budget=reserve + transient + 4 * 2999, **base)
    assert "at least" in info.value.hint


# ---- streaming selection == mask.select ----------------------------------------------------

@pytest.mark.parametrize("scope", ["per-matrix", "global"])
def test_streaming_selector_equals_select_with_ties_in_any_order_and_shards(scope):
    gen = torch.Generator().manual_seed(0)
    shapes = {"l0.q": (6, 8), "l0.v": (4, 8), "l1.q": (6, 8), "l1.down": (8, 5)}
    scores = {n: torch.randint(0, 5, s, generator=gen).float() for n, s in shapes.items()}  # many exact ties
    want = select(scores, 0.2, scope)
    numels = {n: s.numel() for n, s in scores.items()}
    for order in (list(shapes), list(reversed(shapes))):
        sel = StreamingSelector(list(shapes), numels, 0.2, scope)
        for n in order:
            sel.add(n, scores[n].clone())
        got, share, per_tensor = sel.result()
        assert_same_indices(got, want)
        assert share == pytest.approx(captured_share(scores, want), abs=1e-12)
        assert per_tensor == captured_share_per_tensor(scores, want)
    sel = StreamingSelector(list(shapes), numels, 0.2, scope)  # row shards, as FSDP ranks hold them
    for n in reversed(shapes):
        flat = scores[n].reshape(-1)
        half = (shapes[n][0] + 1) // 2 * shapes[n][1]
        for start, part in ((half, flat[half:]), (0, flat[:half])):
            k = min(sel.k_for(n), part.numel())
            top = torch.topk(part, k).values.min()
            cand = torch.cat([(part > top).nonzero().flatten(), (part == top).nonzero().flatten()])
            sel.add_candidates(n, part[cand], cand + start)  # a superset of the shard's top-k is fine
        sel.add_mass(n, float(flat.double().sum()))
    assert_same_indices(sel.result()[0], want)


def test_streaming_selector_refuses_non_finite_scores():
    from szoq_hub.core.errors import MaskError

    sel = StreamingSelector(["a"], {"a": 4}, 0.5, "global")
    with pytest.raises(MaskError, match="NaN or infinite"):
        sel.add("a", torch.tensor([1.0, float("nan"), 2.0, 3.0]))


# ---- the build -------------------------------------------------------------------------------

@pytest.mark.parametrize("scope", ["per-matrix", "global"])
def test_fp32_build_equals_unbounded_reference_and_bounded_passes_change_nothing(tiny_model_dir, tiny_text_file, scope, monkeypatch):
    want, share, _ = reference_mask(tiny_model_dir, tiny_text_file, scope=scope)
    mask, _ = build_mask(cfg(tiny_model_dir, tiny_text_file, density=0.02, scope=scope), None)
    assert_same_indices(mask.indices, want)
    assert mask.config.stats["captured_share"] == round(share, 6)
    assert "score_dtype" not in mask.config.stats  # fp32 checkpoints keep the old artifact bytes
    # Now bound memory so that every pass holds only a few tensors' accumulators. The resident
    # figure is pinned to 0 so the bound is about accumulators only, not this test process.
    monkeypatch.setattr("szoq_hub.masks.build.resident_bytes", lambda device: 0)
    from transformers import AutoConfig

    acts = activation_bytes(AutoConfig.from_pretrained(tiny_model_dir), 12, torch.float32)
    largest = 128 * 64
    budget = acts + 160 * 2**20 + largest * (4 + 4 + 16) + 4 * 2 * largest
    plan: dict = {}
    bounded, _ = build_mask(cfg(tiny_model_dir, tiny_text_file, density=0.02, scope=scope, max_memory=str(budget)), None, plan_out=plan)
    assert plan["passes"] >= 3
    assert_same_indices(bounded.indices, want)
    assert bounded.config.stats == mask.config.stats


def test_checkpointed_layers_give_the_same_scores_bit_for_bit(tiny_model_dir, tiny_text_file):
    from szoq_hub.masks.sensitivity import checkpointed_layers, decoder_layers

    loaded = load_model(resolve_model(str(tiny_model_dir)))
    model, targets = loaded.model, target_parameter_names(loaded.model)
    windows, _ = load_windows(str(tiny_text_file), loaded.tokenizer, samples=2, seq_len=12)
    plain = fisher_scores(model, targets, windows)
    assert len(decoder_layers(model)) == 2
    with checkpointed_layers(model):
        assert all("forward" in layer.__dict__ for layer in decoder_layers(model))
        ckpt = fisher_scores(model, targets[3:], windows)
    assert not any("forward" in layer.__dict__ for layer in decoder_layers(model))  # restored
    for n in targets[3:]:
        assert torch.equal(ckpt[n], plain[n]), n


def test_bf16_checkpoint_scores_in_bf16_with_fp32_accumulators(bf16_model_dir, tiny_text_file):
    source = resolve_model(str(bf16_model_dir))
    model = load_scoring_model(source, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    ref = load_model(source, dtype=torch.bfloat16).model  # transformers' own loader, same dtype
    windows, _ = load_windows(str(tiny_text_file), load_model(source).tokenizer, samples=2, seq_len=10)
    targets = target_parameter_names(model)
    got = fisher_scores(model, targets, windows)
    params = dict(ref.named_parameters())
    want = {n: torch.zeros(params[n].shape) for n in targets}
    for i in range(2):  # reference: bf16 gradient per window, squared and summed in fp32
        loss = ref(input_ids=windows[i : i + 1], labels=windows[i : i + 1]).loss
        for n, g in zip(targets, torch.autograd.grad(loss, [params[n] for n in targets])):
            want[n] += g.float() ** 2
    for n in targets:
        assert got[n].dtype == torch.float32
        torch.testing.assert_close(got[n], want[n], rtol=0, atol=0)
    mask, _ = build_mask(cfg(bf16_model_dir, tiny_text_file), None)
    assert mask.config.stats["score_dtype"] == "bfloat16"


def test_magnitude_and_random_stream_from_a_sharded_checkpoint_without_a_model(bf16_model_dir, monkeypatch):
    assert [f.name for f in checkpoint_files(bf16_model_dir)] == sorted(
        set(json.loads((bf16_model_dir / "model.safetensors.index.json").read_text())["weight_map"].values()))
    full = load_model(resolve_model(str(bf16_model_dir))).model  # fp32 copy of the bf16 weights
    params = dict(full.named_parameters())
    targets = target_parameter_names(full)

    def no_model(*a, **k):
        raise AssertionError("a magnitude/random build must not load the model")

    monkeypatch.setattr("szoq_hub.masks.build.load_scoring_model", no_model)
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", no_model)
    for scope in ("per-matrix", "global"):
        mask, _ = build_mask(MaskBuildConfig(model=str(bf16_model_dir), scorer="magnitude", density=0.05, scope=scope), None)
        want = select({n: params[n].detach().abs() for n in targets}, 0.05, scope)
        assert_same_indices(mask.indices, want)  # the stray consolidated file (all 7.0) was not read
    mask, _ = build_mask(MaskBuildConfig(model=str(bf16_model_dir), scorer="random", density=0.05, seed=4), None)
    from szoq_hub.masks.sensitivity import stream_random_scores

    want = select(dict(stream_random_scores({n: list(params[n].shape) for n in targets}, 4)), 0.05, "per-matrix")
    assert_same_indices(mask.indices, want)


def test_missing_shard_is_a_model_error(bf16_model_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(bf16_model_dir, broken)
    index = json.loads((broken / "model.safetensors.index.json").read_text())
    (broken / sorted(set(index["weight_map"].values()))[0]).unlink()
    with pytest.raises(ModelError, match="missing"):
        build_mask(MaskBuildConfig(model=str(broken), scorer="magnitude"), None)


def test_nf4_scoring_equals_autograd_on_the_dequantized_weights(tiny_model_dir, tiny_text_file):
    import bitsandbytes.functional as bnbf

    source = resolve_model(str(tiny_model_dir))
    q = load_scoring_model(source, quant="nf4", dtype=torch.float32)
    loaded = load_model(source)
    ref = loaded.model
    targets = target_parameter_names(ref)
    with torch.no_grad():  # reference: the fp32 model holding exactly the NF4-rounded weights
        params = dict(ref.named_parameters())
        for n in targets:
            layer = q.get_submodule(n[: -len(".weight")])
            params[n].copy_(bnbf.dequantize_4bit(layer.qweight, layer.quant_state))
            assert not torch.equal(params[n], dict(load_model(source).model.named_parameters())[n])  # really rounded
    windows, _ = load_windows(str(tiny_text_file), loaded.tokenizer, samples=3, seq_len=12)
    want = fisher_scores(ref, targets, windows)
    half = targets[::2]  # a pass over some layers only: the others stay frozen 4-bit
    got = fisher_scores(q, half, windows)
    for n in half:
        torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-10)
    assert all(not p.requires_grad for p in q.parameters())
    mask, _ = build_mask(cfg(tiny_model_dir, tiny_text_file, score_quant="nf4", density=0.02), None)
    assert mask.config.stats["score_quant"] == "nf4"
    assert_same_indices(mask.indices, select({n: want[n] for n in targets}, 0.02, "per-matrix"))


def test_cli_rejects_bad_memory_device_and_dtype(run_cli, tiny_model_dir, tiny_text_file):
    base = ["mask", "build", str(tiny_model_dir), "--calibration", str(tiny_text_file), "--samples", "2", "--seq-len", "8"]
    assert_one_line_error(*run_cli(*base, "--max-memory", "lots")[::2], "--max-memory")
    assert_one_line_error(*run_cli(*base, "--dtype", "int3")[::2], "--dtype")
    if not torch.cuda.is_available():
        assert_one_line_error(*run_cli(*base, "--device", "cuda:0")[::2], "no CUDA")
    assert_one_line_error(*run_cli(*base, "--fsdp")[::2], "torchrun")
    assert_one_line_error(*run_cli(*base, "--fsdp", "--score-quant", "nf4")[::2], "cannot be combined")
    code, out, err = run_cli(*base, "--max-memory", "100MB")
    assert_one_line_error(code, err, "cannot hold")
    assert "at least" in err


def _torchrun(nproc: int, out: Path, model: Path, calib: Path, *extra: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SOURCE_DATE_EPOCH": "1767225600"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "szoq_cli",
           "mask", "build", str(model), "--calibration", str(calib), "--samples", "3", "--seq-len", "12", "--density", "0.02",
           "--out", str(out), "--name", "fsdp", *extra]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _fsdp_case(tmp_path, model_dir, calib, device_args, ranks=2):
    from szoq_hub.masks.artifact import load_mask

    for scope in ("per-matrix", "global"):
        _torchrun(1, tmp_path / f"one-{scope}", model_dir, calib, "--scope", scope, *device_args)
        _torchrun(ranks, tmp_path / f"two-{scope}", model_dir, calib, "--scope", scope, "--fsdp", *device_args)
        one, two = load_mask(tmp_path / f"one-{scope}"), load_mask(tmp_path / f"two-{scope}")
        assert_same_indices(two.indices, one.indices)
        assert two.config.stats["captured_share"] == pytest.approx(one.config.stats["captured_share"], abs=2e-6)


@pytest.mark.slow
def test_fsdp_two_ranks_on_cpu_gloo_equal_one_process(tmp_path, bf16_model_dir, tiny_text_file):
    _fsdp_case(tmp_path, bf16_model_dir, tiny_text_file, ["--device", "cpu"])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (NCCL)")
def test_fsdp_on_cuda_nccl_equals_one_process(tmp_path, bf16_model_dir, tiny_text_file):
    # NCCL needs one device per rank: 2 ranks where 2 GPUs exist, else FSDP over 1 rank
    _fsdp_case(tmp_path, bf16_model_dir, tiny_text_file, ["--device", "cuda"], ranks=min(2, torch.cuda.device_count()))


# ---- GGUF decoder linears held compact (issue 30: a 1.5B GGUF under --max-memory 4GB) ----------------

def test_compact_plan_counts_materialised_weights_and_holds_more_in_the_rest_of_each_pass():
    from szoq_hub.masks.build_plan import plan_groups

    names = [f"model.layers.{i}.mlp.{p}.weight" for i in range(3) for p in ("up", "down")]
    numels = {n: 1000 for n in names}
    weights = {n: 2000 for n in names}  # bf16 once materialised
    reserve = 160 * 2**20
    transient = 1000 * (2 + 4 + 16) + 500
    room = 2 * (4000 + 2000) + 2000  # two tensors' accumulators + their weights, one more weight
    plan = plan_groups(names, numels, budget=reserve + transient + room, resident=0, activations=0, grad_bytes=2,
                       weights=weights, dequant_bytes=500)
    assert plan.compact and plan.groups == [names[0:2], names[2:4], names[4:6]]
    assert plan.accumulators == [8000, 8000, 8000]  # accumulators alone; the weights are in `materialised`
    # each pass holds its own two linears, then the first other one its backward reaches (a later layer first)
    assert plan.materialised == [names[0:2] + [names[2]], names[2:4] + [names[4]], names[4:6] + [names[0]]]
    assert plan.weight_bytes == [6000] * 3
    with pytest.raises(ConfigError, match="cannot hold"):  # one tensor's accumulator and weight must fit
        plan_groups(names, numels, budget=reserve + transient + 5999, resident=0, activations=0, grad_bytes=2,
                    weights=weights, dequant_bytes=500)


@pytest.mark.parametrize("arch,qtype,dtype", [("qwen2", "Q4_1", torch.bfloat16), ("llama", "Q8_0", torch.float32)])
def test_compact_gguf_linears_score_bit_for_bit_as_materialised_ones(tmp_path, arch, qtype, dtype):
    """Frozen compact linears dequantize in forward and backward; a pass scores its materialised ones.
    The scores equal those of the model loaded whole, bit for bit (q/k/v biases; llama's q/k fix-up)."""
    from szoq_hub.masks.sensitivity import CompactLinear, checkpointed_layers, compact_linears
    from tiny_gguf import write_tiny_gguf

    source = resolve_model(str(write_tiny_gguf(tmp_path / "m.gguf", arch=arch, qtype=qtype, hidden=128, ffn=256, layers=3)))
    whole = load_scoring_model(source, dtype=dtype)
    compact = load_scoring_model(source, dtype=dtype, compact=True)
    layers = compact_linears(compact)
    targets = target_parameter_names(whole)
    assert sorted(layers) == sorted(targets) and all(m.weight is None for m in layers.values())
    assert not any(isinstance(m, CompactLinear) for m in whole.modules())
    windows = torch.randint(0, 250, (3, 16), generator=torch.Generator().manual_seed(0))  # [N, L]
    want = fisher_scores(whole, targets, windows)
    with torch.no_grad():
        assert torch.equal(compact(input_ids=windows).logits, whole(input_ids=windows).logits)
    for group, ckpt in ((targets[8:12], False), (targets[:3], True), (targets[-2:], False)):
        for layer in layers.values():
            layer.compact()
        for name in group:
            layers[name].materialise()
        with checkpointed_layers(compact) if ckpt else contextlib.nullcontext():
            got = fisher_scores(compact, group, windows)
        for name in group:
            assert torch.equal(got[name], want[name]), name
        assert sum(m.weight is not None for m in layers.values()) == len(group)


def test_a_bound_only_compact_weights_fit_gives_the_unbounded_mask_and_scores(tmp_path, tiny_text_file, monkeypatch):
    from szoq_hub.data import gguf_file
    from szoq_hub.masks import build
    from tiny_gguf import write_tiny_gguf

    path = write_tiny_gguf(tmp_path / "m.gguf", arch="qwen2", qtype="Q8_0", hidden=128, ffn=384, layers=3)
    free, _ = build_mask(cfg(path, tiny_text_file, dtype="bf16", density=0.02), None)
    monkeypatch.setattr(build, "resident_bytes", lambda device: 0)  # the bound is about the build, not this test process
    monkeypatch.setattr(gguf_file, "SLAB_BYTES", 8 * 128 * 4)  # slabs of 8 rows: a dequantization's transient is small
    config = cfg(path, tiny_text_file, dtype="bf16", density=0.02)
    source = resolve_model(str(path))
    model = load_scoring_model(source, dtype=torch.bfloat16, compact=True)
    meta = build._meta_model(source)
    targets = target_parameter_names(meta)  # the compact model has no weight parameters to name
    numels = {n: meta.get_parameter(n).numel() for n in targets}

    def plan(budget):
        return build._plan(model, config, targets, numels, budget, 0, 12, torch.bfloat16)

    low, high = 1, 10**10  # the smallest bound that holds any plan
    while high - low > 1:
        mid = (low + high) // 2
        try:
            plan(mid)
            high = mid
        except ConfigError:
            low = mid
    tight = plan(high)
    assert tight.compact and len(tight.groups) > 1  # a model materialised whole would not fit
    figures: dict = {}
    bounded, _ = build_mask(cfg(path, tiny_text_file, dtype="bf16", density=0.02, max_memory=str(high)), None, plan_out=figures)
    assert figures["compact"] and figures["passes"] == len(tight.groups)
    assert_same_indices(bounded.indices, free.indices)  # Jaccard 1.0
    assert list(bounded.scores) == list(free.scores)
    assert all(torch.equal(bounded.scores[n], free.scores[n]) for n in free.scores)  # the kept Σg², bit for bit
    assert bounded.config.stats == free.config.stats


@pytest.mark.slow
def test_real_smollm2_gguf_scores_the_same_compact(real_model_available, tiny_text_file):
    from szoq_hub.data.models import ALIASES
    from szoq_hub.masks.sensitivity import compact_linears

    source = resolve_model(next(iter(ALIASES)))
    whole = load_scoring_model(source, dtype=torch.bfloat16)
    compact = load_scoring_model(source, dtype=torch.bfloat16, compact=True)
    targets = target_parameter_names(whole)
    layers = compact_linears(compact)
    group = targets[:2] + targets[-3:]  # a q/k fix-up pair at the bottom, the MLP at the top
    for name in group:
        layers[name].materialise()
    windows = torch.randint(0, 49152, (2, 12), generator=torch.Generator().manual_seed(0))  # [N, L]
    want, got = fisher_scores(whole, group, windows), fisher_scores(compact, group, windows)
    assert all(torch.equal(got[n], want[n]) for n in group)
