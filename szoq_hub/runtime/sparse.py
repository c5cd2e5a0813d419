"""The quantized dense-and-sparse runtime model that zeroth-order fine-tuning runs on.

For every masked weight W with index set M, the runtime keeps `values = W.flatten()[M]` in
fp32 as the only trainable state, zeroes those entries of W and quantizes the rest with
bitsandbytes. A masked layer computes `quantized_base(x) + sparse_part(x)`; the sensitive
weights are never rounded by the quantizer. Embeddings, norms and lm_head stay frozen in the
compute dtype. Weights stream tensor by tensor from the safetensors checkpoint or the GGUF file
(data/gguf_file.py), so the full-precision model is never resident at once.

How the sparse part is applied (measured in bench/bench_runtime.py and bench/bench_finetune.py):
- Column form, the general case: base(x), then `out += x[..., cols] @ S`, where `cols` are the
  few input columns the mask touches (precomputed) and S [n_cols, out] is filled from the fp32
  values on each forward. Sensitivity masks concentrate on a handful of input channels
  (SmolLM2: 1-27 of 576/1536 columns per layer), so this costs ~1-3% of the dense matmul. The
  correction is computed in fp32 from the fp32 values and added to the base output in fp32;
  the sum is rounded once to the compute dtype (as every layer output is).
- Scatter form, for masks that touch most input columns (random masks: S would be a dense fp32
  copy of the layer): `out[..., rows] += x[..., cols] * values` with one gather and one
  `index_add_`, N * nnz work. Chosen per layer at load (`SCATTER_ABOVE`).
- Fold, 4-bit with fp32 compute and one set of values: the freshly dequantized buffer's masked
  entries are exactly 0 (NF4 and FP4 both hold 0), so writing the values into it gives
  base + delta exactly at the cost of one nnz-sized scatter. With a bf16/fp16 buffer the fold
  would round the values, so those dtypes take the column form.
- Paired pass (`SparseModel.perturbed`): a ZO step evaluates 2q points (v + eps z_i, v - eps z_i)
  as ONE batch whose rows are P = 2q copies of the step's batch. Each layer dequantizes its
  base once, computes base(x) for all P*B rows, and adds part p's correction
  `x_p[..., cols] @ S_p` to its rows only (one batched matmul over the parts). On CUDA the same
  code runs on bitsandbytes' CUDA dequantize kernel; whether fold or column form is faster
  there for inference is a GPU-check item (bench/gpu_check.sh), not assumed here.

Device and dtype: every tensor of the runtime (base weights, 4-bit quant state, indices, the
fp32 values) is registered so that `model.to(device)` moves it; `model.to(dtype)` changes the
compute dtype but never the fp32 values or the quantization constants.

Nothing derived from `values` is cached across forwards: the ZO optimizer mutates `values`
in place between steps and every forward reads its current contents.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data.checkpoint import KeyMapper
from ..core.devices import require_quant_backend, resolve_device, resolve_dtype
from ..core.errors import ConfigError, FingerprintMismatch, MaskError, ModelError
from ..masks.artifact import MaskData
from ..data.footprint import decoder_linears
from ..data.models import ModelSource, model_fingerprint, resolve_model, set_module_tensor, source_tensors
from .sparse_linear import QUANT_MODES, SparseQuantLinear, SparseValues, contiguous_input

log = logging.getLogger(__name__)


@dataclass
class SparseModel:
    """A causal LM whose masked linears are quantized base + exact sparse fp32 values.

    Attributes:
        model: The transformers causal LM (eval mode, no trainable parameters).
        tokenizer: Its tokenizer (pad token set).
        source: Where the weights came from.
        mask: The sensitivity mask that selected the sparse weights.
        store: The `SparseValues` module registered on `model` (holds `values`).
        segments: (parameter name, offset, length) of each masked tensor inside `values`.
        quant: The quantization mode of the base (`nf4`, `fp4`, `int8`, `none`).
    """

    model: nn.Module
    tokenizer: Any
    source: ModelSource
    mask: MaskData
    store: SparseValues
    segments: list[tuple[str, int, int]]
    quant: str

    @property
    def values(self) -> torch.Tensor:
        """fp32 [nnz], the only trainable state: the masked weights, concatenated in mask tensor
        order, on the model's device. Mutate it in place only (`copy_`, `add_`); every forward
        reads it. `model.to(device)` replaces the tensor: take this property again afterwards."""
        return self.store.values

    @property
    def device(self) -> torch.device:
        """The device every runtime tensor lives on."""
        return self.store.values.device

    def perturbed(self, points: torch.Tensor) -> AbstractContextManager[int]:
        """Within the block, a forward over P row blocks uses value vector p for block p.

        The batch passed to the model must be P copies of one batch, stacked copy-major
        ([P * B, ...]); each masked layer computes its quantized base once for all rows and adds
        each block's own sparse part. `values` itself is not touched.

        Args:
            points: [P, nnz] fp32 value vectors (any device; moved to the model's).

        Yields:
            P, the number of row blocks the batch must have.

        Raises:
            ConfigError: `points` is not [P, nnz].
        """
        return self.store.perturbed(points)

    def delta_tensors(self) -> dict[str, torch.Tensor]:
        """The current sparse values per masked tensor.

        Returns:
            name -> fp32 [nnz_name] CPU copy of its slice of `values`, in mask order.
        """
        values = self.values.detach().to("cpu", copy=True)  # [nnz]
        return {name: values[off : off + n].clone() for name, off, n in self.segments}

    def load_delta(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy per-tensor sparse values into `values` (in place).

        Args:
            tensors: name -> [nnz_name] values, the form `delta_tensors` returns.

        Raises:
            MaskError: names missing or unexpected, a length that does not match the mask,
                or non-finite values.
        """
        expected = {name for name, _, _ in self.segments}
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        if missing or extra:
            raise MaskError(
                f"delta does not match the mask: {len(missing)} tensor(s) missing, {len(extra)} unexpected"
                + (f" (e.g. {(missing or extra)[0]})" if missing or extra else ""),
                hint="load a delta fine-tuned with this mask",
            )
        for name, off, n in self.segments:
            t = tensors[name]
            if t.dim() != 1 or t.numel() != n:
                raise MaskError(
                    f"delta tensor {name} has shape {list(t.shape)}, the mask selects {n} weights",
                    hint="load a delta fine-tuned with this mask",
                )
            if not torch.isfinite(t).all():
                raise MaskError(f"delta tensor {name} holds non-finite values", hint="the delta file is corrupt")
        with torch.no_grad():
            for name, off, n in self.segments:
                self.values[off : off + n].copy_(tensors[name].to(torch.float32))


def load_sparse_model(
    model: str | ModelSource,
    mask: MaskData | None,
    *,
    quant: str = "nf4",
    device: str | torch.device | None = "auto",
    compute_dtype: str | torch.dtype | None = None,
    revision: str | None = None,
) -> SparseModel:
    """Load a model as quantized base + exact sparse fp32 values over a mask, streaming weights.

    Args:
        model: A model reference (alias, Hub id, folder, .gguf) or a resolved `ModelSource`.
        mask: The sensitivity mask; its fingerprint must match the model's. None: no sparse
            values (the quantized base as it is, e.g. for a zero-shot score).
        quant: `nf4` (default), `fp4`, `int8` (bitsandbytes) or `none` (dense compute dtype).
        device: `auto` (CUDA when available), `cpu`, `cuda`, `cuda:N` or a torch.device: every
            runtime tensor is created there, tensor by tensor, as the checkpoint streams.
        compute_dtype: dtype of activations, embeddings, norms, lm_head and dequantized bases
            (`bf16`, `fp16`, `fp32` or a torch dtype); None = the device's default
            (`devices.DEFAULT_DTYPE`). The sparse values stay fp32 whatever this is.
        revision: Hub revision when `model` is a Hub id.

    Returns:
        The `SparseModel` (eval mode; `values` holds the original masked weights).

    Raises:
        ConfigError: unknown quant mode, device or dtype; CUDA asked for but unavailable.
        DependencyError: bitsandbytes missing for a quantized mode.
        FingerprintMismatch: the mask was built for another model (checked before any weight
            is read).
        MaskError: the mask names a parameter that is not a linear weight of the model.
        ModelError: the model cannot be resolved or its checkpoint is not safetensors; the
            machine clearly lacks the memory (checked before any weight is read).
    """
    if quant not in QUANT_MODES:
        raise ConfigError(f"unknown quant {quant!r}", hint=f"choose one of: {', '.join(QUANT_MODES)}")
    require_quant_backend(quant)
    device = resolve_device(device)
    compute_dtype = resolve_dtype(compute_dtype, device)
    source = model if isinstance(model, ModelSource) else resolve_model(model, revision=revision)
    fingerprint = model_fingerprint(source)
    if mask is not None and fingerprint != mask.config.fingerprint:
        raise FingerprintMismatch(
            f"the mask was built for {mask.config.base_model} (fingerprint {mask.config.fingerprint[:12]}), "
            f"not {source.ref} ({fingerprint[:12]})",
            hint=f"use a mask built for {source.ref}: szoq mask build {source.ref} ...",
        )

    from ..data.footprint import check_fits, format_gb, model_bytes

    dtype_name = str(compute_dtype).removeprefix("torch.")
    smallest = model_bytes(source, quant="nf4", dtype=torch.bfloat16)
    check_fits(model_bytes(source, quant=quant, dtype=compute_dtype), what=f"{source.ref} ({quant} base, {dtype_name} embeddings)",
               hint=("close other programs or use a machine with more memory" if (quant == "nf4" and compute_dtype == torch.bfloat16)
                     else f"--quant nf4 --dtype bf16 needs about {format_gb(smallest)}; else use a machine with more memory"))
    indices = mask.indices if mask is not None else {}
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(source.path)
    # Parameters on the meta device, buffers (rotary inv_freq) real: no weight memory yet.
    with init_empty_weights(include_buffers=False):
        lm = AutoModelForCausalLM.from_config(config, dtype=compute_dtype)
    lm.eval()

    # Which linears become SparseQuantLinear: every decoder linear (quantize all but the
    # mask), plus anything masked, which must be a linear weight. GPT-2's Conv1D is a linear
    # whose weight is stored transposed ([in, out]).
    out_emb = lm.get_output_embeddings()
    linears = decoder_linears(lm)  # weight name -> stored transposed (Conv1D)
    linear_names = set(linears)
    transposed = {n for n, t in linears.items() if t}
    for name in indices:
        if name not in linear_names:
            raise MaskError(
                f"the mask selects {name}, which is not a decoder linear weight",
                hint="the runtime fine-tunes linear weights only; build the mask with the default --targets",
            )
    if quant == "none":
        wanted = set(indices)  # only masked layers change form; the rest stay as they are
    else:
        wanted = linear_names

    segments: list[tuple[str, int, int]] = []
    offset = 0
    for name, idx in indices.items():
        segments.append((name, offset, int(idx.numel())))
        offset += int(idx.numel())
    store = SparseValues(offset, device)  # values [nnz] fp32 on the device
    values = store.values
    seg_of = {name: (off, n) for name, off, n in segments}

    pending_bias: dict[str, torch.Tensor] = {}
    pending_weight: dict[str, torch.Tensor] = {}

    def build(prefix: str, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        wname = f"{prefix}.weight"
        idx = indices.get(wname, torch.zeros(0, dtype=torch.int32)).long()  # flat, as the model stores it
        off, n = seg_of.get(wname, (0, 0))
        weight = weight.to(device)  # [out, in] (one full-precision tensor on the device at a time)
        with torch.no_grad():
            values[off : off + n].copy_(weight.reshape(-1)[idx.to(device)].to(torch.float32))  # mask order, as deltas store them
        if wname in transposed:  # Conv1D: [in, out] -> [out, in]; index i*out + o -> o*in + i
            n_in, n_out = weight.shape
            weight = weight.t().contiguous()
            idx = (idx % n_out) * n_in + idx // n_out  # same order as the values (no longer sorted)
        layer = SparseQuantLinear(weight, bias, idx, store, off, quant, compute_dtype)
        parent_name, _, leaf = prefix.rpartition(".")
        setattr(lm.get_submodule(parent_name), leaf, layer)

    if source.gguf is not None and device.type == "cpu":
        # The frozen input embedding stays in the GGUF file: a lookup dequantizes its tokens' rows
        # (`MappedEmbedding`; 467 MB of bf16 at Qwen2.5-1.5B). Its name then maps to no tensor.
        from ..data.models import gguf_model_file

        gfile = gguf_model_file(source)
        gfile.mapped_embedding(lm, gfile.hf_names(lm), compute_dtype)
    has_bias = {n: lm.get_submodule(n[: -len(".weight")]).bias is not None for n in wanted}
    to_model_name = KeyMapper(lm)  # before any module is replaced
    loaded: set[str] = set()
    ignored: list[str] = []
    # On the CPU the frozen input embedding stays a copy-on-write map of its checkpoint file
    # when no cast is needed: a lookup touches only its tokens' rows (see `iter_tensors`).
    in_emb = lm.get_input_embeddings()
    emb_name = next((f"{n}.weight" for n, m in lm.named_modules() if m is in_emb), None) if in_emb is not None else None

    def map_if(ckpt_key: str, dtype: torch.dtype) -> bool:
        return device.type == "cpu" and dtype == compute_dtype and emb_name is not None and to_model_name(ckpt_key) == emb_name

    def cast(name: str) -> torch.dtype | None:  # GGUF: what set_module_tensor casts anyway is dequantized into its dtype
        if name in wanted or (name.endswith(".bias") and f"{name[: -len('.bias')]}.weight" in wanted):
            return None  # exact fp32: the masked values and the quantizer's input, as from a safetensors copy
        return compute_dtype

    for ckpt_key, tensor in source_tensors(source, lm, map_if=map_if, cast=cast):
        key = to_model_name(ckpt_key)
        if key is None:
            ignored.append(ckpt_key)
        elif key in wanted:
            prefix = key[: -len(".weight")]
            if has_bias[key] and f"{prefix}.bias" not in pending_bias:
                pending_weight[key] = tensor  # wait for its bias (rare: Llama has none)
                continue
            build(prefix, tensor, pending_bias.pop(f"{prefix}.bias", None))
            loaded.add(key)
        elif key.endswith(".bias") and f"{key[: -len('.bias')]}.weight" in wanted:
            wkey = f"{key[: -len('.bias')]}.weight"
            if wkey in pending_weight:
                build(wkey[: -len(".weight")], pending_weight.pop(wkey), tensor)
                loaded.add(wkey)
            else:
                pending_bias[key] = tensor
            loaded.add(key)
        elif set_module_tensor(lm, key, tensor, compute_dtype, device):
            loaded.add(key)
        else:
            ignored.append(ckpt_key)
        del tensor  # streaming: nothing keeps the full-precision tensor past this point
    if ignored:
        log.warning("%d checkpoint tensor(s) have no place in the model and were ignored (e.g. %s)", len(ignored), ignored[0])

    if out_emb is not None and (getattr(config, "tie_word_embeddings", False) or out_emb.weight.device.type == "meta"):
        out_emb.weight = lm.get_input_embeddings().weight  # tied: one tensor, as transformers ties them
    missing = [n for n, p in lm.named_parameters() if p.device.type == "meta"]
    missing += [n for n in wanted if n not in loaded]
    if missing:
        raise ModelError(
            f"the checkpoint lacks {len(missing)} tensor(s) the model needs (e.g. {missing[0]})",
            hint="the weight files are incomplete or do not match config.json",
        )
    lm.szoq_sparse = store  # registered once: model.to(device) moves the values with the rest
    lm.to(device)  # what was created on the CPU outside the checkpoint (rotary inv_freq buffers)
    for p in lm.parameters():
        p.requires_grad_(False)
    if out_emb is not None:
        # `logits_to_keep` hands lm_head a strided slice [B, k, H]; with a weight that does
        # not require grad, torch.matmul then takes a batched (bmm, expanded weight) path that
        # cost ~9% of a SmolLM2 forward. A contiguous input folds to one mm.
        out_emb.register_forward_pre_hook(contiguous_input)

    tokenizer = AutoTokenizer.from_pretrained(source.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    log.info("loaded %s: %d masked tensors, nnz %d, quant %s, %s, %s", source.ref, len(segments), offset, quant, device, compute_dtype)
    return SparseModel(lm, tokenizer, source, mask, store, segments, quant)
