"""The quantized dense-and-sparse runtime model that zeroth-order fine-tuning runs on.

For every masked weight W with index set M, the runtime keeps `values = W.flatten()[M]` in
fp32 as the only trainable state, zeroes those entries of W and quantizes the rest with
bitsandbytes. A masked layer computes `quantized_base(x) + sparse_part(x)`; the sensitive
weights are never rounded by the quantizer. Embeddings, norms and lm_head stay frozen in the
compute dtype. Weights stream tensor by tensor from the safetensors checkpoint, so the
full-precision model is never resident at once.

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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ..data.checkpoint import KeyMapper, checkpoint_files, iter_tensors
from ..core.devices import require_quant_backend, resolve_device, resolve_dtype
from ..core.errors import ConfigError, FingerprintMismatch, MaskError, ModelError
from ..masks.artifact import SensitivityMask
from ..data.models import ModelSource, model_fingerprint, resolve_model, set_module_tensor

log = logging.getLogger(__name__)

QUANT_MODES = ("nf4", "fp4", "int8", "none")
BLOCKSIZE_4BIT = 64  # bitsandbytes' default for Linear4bit / BitsAndBytesConfig
SCATTER_ABOVE = 256  # a layer whose column form would cost > this x nnz uses the scatter form


class SparseValues(nn.Module):
    """The model-wide fp32 master vector of sparse values, registered once on the model.

    `values` [nnz] is a buffer, so `model.to(device)` moves it; `_apply` keeps it fp32 whatever
    dtype the model is cast to (the ZO update must not be rounded to the compute dtype).
    During a paired pass `parts` [P, nnz] holds the P value vectors of the batch's P row blocks.
    """

    def __init__(self, nnz: int, device: torch.device) -> None:
        super().__init__()
        self.register_buffer("values", torch.zeros(nnz, dtype=torch.float32, device=device), persistent=False)  # [nnz]
        self.parts: torch.Tensor | None = None  # [P, nnz] fp32 during a paired forward, else None

    def _apply(self, fn, recurse: bool = True):
        device = fn(torch.empty(0, device=self.values.device)).device  # follow the device only
        self.values = self.values.to(device)
        return self

    def extra_repr(self) -> str:
        return f"nnz={self.values.numel()}, fp32"


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
    mask: SensitivityMask
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

    @contextmanager
    def perturbed(self, points: torch.Tensor) -> Iterator[int]:
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
        if points.dim() != 2 or points.shape[1] != self.values.numel():
            raise ConfigError(f"perturbed values must be [P, {self.values.numel()}], got {list(points.shape)}", hint="pass one row per perturbation")
        self.store.parts = points.to(device=self.device, dtype=torch.float32)
        try:
            yield points.shape[0]
        finally:
            self.store.parts = None

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


QUANT_CHUNK = 1 << 22  # elements per quantization chunk (16 MiB of fp32); a multiple of 2 * blocksize


def quantize_4bit_masked(weight: torch.Tensor, flat_idx: torch.Tensor, quant: str, *, chunk: int = QUANT_CHUNK):
    """bitsandbytes 4-bit quantization of `weight` with the masked entries set to 0, in chunks.

    Blockwise quantization treats each block of BLOCKSIZE_4BIT consecutive (flat) elements on
    its own, so quantizing chunks whose length is a multiple of two blocks and concatenating
    gives bit for bit what one call on the whole weight gives. The only full-precision
    transient is one fp32 chunk, instead of an fp32 copy of the whole weight plus the
    quantizer's own temporaries (~6x the bf16 weight: 0.55 GB for a Llama-2-7B MLP matrix).

    Args:
        weight: [out, in] weight in any float dtype (not modified).
        flat_idx: int64 flat indices of the masked entries, [nnz], any order.
        quant: `nf4` or `fp4`.
        chunk: Elements per chunk (rounded down to a multiple of 2 * BLOCKSIZE_4BIT).

    Returns:
        (packed [(numel + 1) // 2, 1] uint8, bitsandbytes QuantState for the whole weight shape).
    """
    import bitsandbytes.functional as bnbf

    flat = weight.reshape(-1)
    n = flat.numel()
    chunk = max(2 * BLOCKSIZE_4BIT, chunk - chunk % (2 * BLOCKSIZE_4BIT))
    packed = torch.empty(((n + 1) // 2, 1), dtype=torch.uint8, device=weight.device)
    absmax = torch.empty((n + BLOCKSIZE_4BIT - 1) // BLOCKSIZE_4BIT, dtype=torch.float32, device=weight.device)
    state = None
    for start in range(0, n, chunk):
        w = flat[start : start + chunk].to(torch.float32, copy=True)  # [c] fresh copy (never a view of the weight)
        inside = flat_idx[(flat_idx >= start) & (flat_idx < start + w.numel())]
        w[inside - start] = 0.0  # the base never holds the sensitive weights
        # On CUDA this is bitsandbytes' CUDA kernel (w is on the GPU), on CPU its CPU one.
        part, state = bnbf.quantize_4bit(w, blocksize=BLOCKSIZE_4BIT, quant_type=quant)
        packed[start // 2 : start // 2 + part.shape[0]] = part.view(-1, 1)
        absmax[start // BLOCKSIZE_4BIT : start // BLOCKSIZE_4BIT + state.absmax.numel()] = state.absmax
        del w, part
    state.absmax, state.shape = absmax, weight.shape
    return packed, state


class SparseQuantLinear(nn.Module):
    """A linear layer = quantized base weight (masked entries zeroed) + exact sparse values.

    The sparse values live in a slice [offset, offset + nnz) of the model-wide `SparseValues`
    store; the layer reads the store on every forward, so in-place updates are seen and a
    `model.to(device)` that moves the store is followed.

    Args:
        weight: [out, in] full-precision weight on the target device (consumed: masked entries
            are zeroed in place).
        bias: [out] or None.
        flat_idx: sorted int flat indices (row * in + col) of the masked entries, [nnz].
        store: The model-wide `SparseValues` (already filled).
        offset: Start of this layer's values inside the store.
        quant: one of QUANT_MODES.
        compute_dtype: dtype of activations and of the dequantized base.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        flat_idx: torch.Tensor,
        store: SparseValues,
        offset: int,
        quant: str,
        compute_dtype: torch.dtype,
    ) -> None:
        super().__init__()
        out_features, in_features = weight.shape
        device = weight.device
        self.in_features, self.out_features = in_features, out_features
        self.quant = quant
        self.compute_dtype = compute_dtype
        # The store is shared by every layer and registered once on the model: a plain
        # reference here (object.__setattr__), not a submodule, so it is moved exactly once.
        object.__setattr__(self, "store", store)
        self.offset, self.nnz = offset, int(flat_idx.numel())
        flat_idx = flat_idx.to(device=device, dtype=torch.long)
        self.register_buffer("flat_idx", flat_idx, persistent=False)  # [nnz]
        # Column form: out += x[..., cols] @ S with S [n_cols, out].
        rows, cols = flat_idx // in_features, flat_idx % in_features
        ucols, col_rank = torch.unique(cols, return_inverse=True)  # [C], [nnz]
        self.register_buffer("cols", ucols, persistent=False)  # [C]
        s_pos = col_rank * out_features + rows  # [nnz] into S.flatten()
        # The column form costs N * C * out multiply-adds, the scatter form N * nnz (but as a
        # gather + index_add, ~tens of times slower per element than a GEMM). Sensitivity masks
        # touch few columns (SmolLM2's built-in mask: C * out / nnz <= 132 in every layer); a
        # random mask touches nearly all of them (C * out / nnz ~ 1 / density = 1000 at 1e-3),
        # where S [C, out] would be a dense fp32 copy of the layer.
        self.sparse_form = "column" if ucols.numel() * out_features <= SCATTER_ABOVE * max(self.nnz, 1) else "scatter"
        # Kept for the column form only (int64 per entry: 8 MB over a 1.1B random mask at 1e-3).
        self.register_buffer("s_pos", s_pos if self.sparse_form == "column" else s_pos.new_empty(0), persistent=False)
        del rows, cols, col_rank, s_pos

        with torch.no_grad():
            self.bias = None if bias is None else nn.Parameter(bias.detach().to(device=device, dtype=compute_dtype), requires_grad=False)
            self.base = None
            self.quant_state = None
            if quant in ("nf4", "fp4"):
                packed, state = quantize_4bit_masked(weight.detach(), flat_idx, quant)
                state.dtype = compute_dtype  # dequantize straight into the compute dtype
                self.register_buffer("qweight", packed)  # [(out*in)//2, 1] uint8
                self.quant_state = state  # fp32 absmax + code: moved by _apply, never cast
                return
            w = weight.detach().to(torch.float32).reshape(-1)
            w[flat_idx] = 0.0  # the base never holds the sensitive weights
            w = w.view(out_features, in_features)
            if quant == "int8":
                import bitsandbytes as bnb

                base = bnb.nn.Linear8bitLt(
                    in_features, out_features, bias=False, has_fp16_weights=False, threshold=0.0, device="meta"
                )
                # Int8Params quantizes when moved off the CPU-resident fp weight to `device`.
                base.weight = bnb.nn.Int8Params(w.to("cpu", compute_dtype), requires_grad=False, has_fp16_weights=False).to(device)
                self.base = base
            elif quant == "none":
                self.register_buffer("weight", w.to(compute_dtype))  # [out, in], zeros at the mask
            else:  # guarded by load_sparse_model
                raise ConfigError(f"unknown quant {quant!r}", hint=f"choose one of: {', '.join(QUANT_MODES)}")

    @property
    def values(self) -> torch.Tensor:
        """This layer's current values: fp32 [nnz] view into the store."""
        return self.store.values[self.offset : self.offset + self.nnz]

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        # The quant state is not a tensor attribute nn.Module knows: move it by device, and let
        # a cast of the model change the dtype the base is dequantized into (absmax stays fp32).
        probe = fn(torch.empty(0, dtype=self.compute_dtype, device=self.flat_idx.device))
        if probe.is_floating_point():
            self.compute_dtype = probe.dtype
        if self.quant_state is not None:
            self.quant_state.to(probe.device)
            self.quant_state.dtype = self.compute_dtype
        return self

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, quant={self.quant}, nnz={self.nnz}, cols={self.cols.numel()}, "
                f"sparse={self.sparse_form}")

    def _base_weight(self) -> torch.Tensor:
        """The dequantized base weight [out, in] (masked entries exactly 0)."""
        if self.quant in ("nf4", "fp4"):
            import bitsandbytes.functional as bnbf

            return bnbf.dequantize_4bit(self.qweight, self.quant_state)
        if self.quant == "int8":
            w = self.base.weight
            return (w.data.to(torch.float32) * (w.SCB.to(torch.float32)[:, None] / 127.0)).to(self.compute_dtype)
        return self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [..., in]
        x = x.to(self.compute_dtype)
        parts = self.store.parts  # [P, nnz_total] during a paired pass
        if self.quant in ("nf4", "fp4"):
            w = self._base_weight()  # [out, in], dequantized once for all rows and parts
            if parts is None and self.nnz and self.compute_dtype == torch.float32:
                # Fold: the buffer is fresh every call and its masked entries are exactly 0,
                # so writing the fp32 values gives base + delta exactly (nnz-sized scatter).
                w.view(-1).index_put_((self.flat_idx,), self.values)
                return nn.functional.linear(x, w, self.bias)  # [..., out]
            out = nn.functional.linear(x, w)  # [..., out]
        elif self.quant == "int8":
            out = self.base(x).to(self.compute_dtype)  # [..., out]
        else:
            out = nn.functional.linear(x, self.weight)  # [..., out]
        if self.nnz:
            out = self._add_sparse(x, out, parts)
        if self.bias is not None:
            out = out + self.bias
        return out

    def _add_sparse(self, x: torch.Tensor, out: torch.Tensor, parts: torch.Tensor | None) -> torch.Tensor:
        """out + x[..., cols] @ S_p for each row block p, computed and summed in fp32.

        Args:
            x: [N..., in] compute dtype; its leading dim holds P blocks of equal size.
            out: [N..., out] base output (contiguous, fresh).
            parts: [P, nnz_total] value vectors, or None for the store's `values` (P = 1).

        Returns:
            [N..., out] in the compute dtype.
        """
        vals = (self.values if parts is None else parts[:, self.offset : self.offset + self.nnz]).reshape(-1, self.nnz)  # [P, nnz]
        p, c, n_out = vals.shape[0], self.cols.numel(), self.out_features
        if x.shape[0] % p:
            raise ConfigError(f"a paired forward needs {p} equal row blocks, got {x.shape[0]} rows", hint="repeat the batch once per perturbation")
        acc = out.view(p, -1, n_out)  # [P, M, out]
        if acc.dtype != torch.float32:
            acc = acc.to(torch.float32)  # summed in fp32, rounded once below
        if self.sparse_form == "column":
            s = vals.new_zeros(p, c * n_out)  # [P, C * out] fp32
            s_pos = self.s_pos
            if s_pos.numel() != self.nnz:  # a scatter layer switched to the column form
                rows, cols = self.flat_idx // self.in_features, self.flat_idx % self.in_features
                s_pos = torch.searchsorted(self.cols, cols) * n_out + rows  # [nnz]
            s[:, s_pos] = vals
            xg = x[..., self.cols].reshape(p, -1, c).to(torch.float32)  # [P, M, C]
            acc.baddbmm_(xg, s.view(p, c, n_out))
        else:
            rows, cols = self.flat_idx // self.in_features, self.flat_idx % self.in_features  # [nnz], [nnz]
            xg = x.reshape(p, -1, self.in_features)[..., cols].to(torch.float32)  # [P, M, nnz]
            acc.index_add_(2, rows, xg.mul_(vals[:, None, :]))  # [P, M, out]
        return out if acc.dtype == out.dtype else acc.to(self.compute_dtype).view(out.shape)


def _contiguous_input(module: nn.Module, args: tuple) -> tuple:
    """Hand lm_head its input with row-major strides.

    `.contiguous()` is not enough: `hidden[:, -1:, :]` of one sequence ([1, 1, H], strides
    (T * H, H, 1)) counts as contiguous, and a bf16 linear on it copies the whole weight first
    (+0.19 GiB at a 49k x 2048 lm_head, measured; +0.39 GiB at Llama-2-7B's).
    """
    x = args[0]
    canonical, step = [], 1
    for size in reversed(x.shape):
        canonical.append(step)
        step *= size
    if not x.is_contiguous() or tuple(x.stride()) != tuple(reversed(canonical)):
        x = x.clone(memory_format=torch.contiguous_format)  # [B, k, H], small
    return (x, *args[1:])


def _conv1d_type() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return None
    return Conv1D


def load_sparse_model(
    model: str | ModelSource,
    mask: SensitivityMask | None,
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
        ModelError: the model cannot be resolved or its checkpoint is not safetensors.
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
    conv1d = _conv1d_type()
    linear_types = (nn.Linear,) if conv1d is None else (nn.Linear, conv1d)
    linear_names = {
        f"{n}.weight" for n, m in lm.named_modules() if isinstance(m, linear_types) and m is not out_emb
    }
    transposed = {f"{n}.weight" for n, m in lm.named_modules() if conv1d is not None and isinstance(m, conv1d)}
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

    for ckpt_key, tensor in iter_tensors(checkpoint_files(Path(source.path)), map_if=map_if):
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
        out_emb.register_forward_pre_hook(_contiguous_input)

    tokenizer = AutoTokenizer.from_pretrained(source.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    log.info("loaded %s: %d masked tensors, nnz %d, quant %s, %s, %s", source.ref, len(segments), offset, quant, device, compute_dtype)
    return SparseModel(lm, tokenizer, source, mask, store, segments, quant)
