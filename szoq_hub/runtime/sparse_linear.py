"""The layer of the quantized sparse runtime: `SparseQuantLinear` and the values it reads.

`SparseValues` holds the model-wide fp32 value vector (the only trainable state);
`SparseQuantLinear` is one masked linear: the quantized base with the masked entries zeroed,
plus the sparse correction from its slice of the values (column, scatter or fold form; the
design and its measurements are in runtime/sparse.py's opening docstring).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from ..core.errors import ConfigError

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

    @contextmanager
    def perturbed(self, points: torch.Tensor) -> Iterator[int]:
        """Within the block, row block p of a forward over P copy-major blocks reads value vector p.

        Args:
            points: [P, nnz] value vectors (any device and float dtype; held as fp32 on the store's).

        Yields:
            P, the number of row blocks the batch must have.

        Raises:
            ConfigError: `points` is not [P, nnz].
        """
        if points.dim() != 2 or points.shape[1] != self.values.numel():
            raise ConfigError(f"perturbed values must be [P, {self.values.numel()}], got {list(points.shape)}", hint="pass one row per perturbation")
        self.parts = points.to(device=self.values.device, dtype=torch.float32)
        try:
            yield points.shape[0]
        finally:
            self.parts = None



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


def contiguous_input(module: nn.Module, args: tuple) -> tuple:
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


