"""Sensitivity scores per weight: squared gradients (fisher), |w| (magnitude), or random.

Fisher: per calibration sequence, the squared gradient of the LM loss is added into one fp32
buffer per target tensor as soon as each gradient arrives, and that gradient is freed at once,
so a full set of `.grad` tensors never sits beside the accumulators. The model may be held in
its checkpoint dtype (bf16/fp16): gradients come in that dtype, Σg² still accumulates in fp32.

With `--score-quant nf4` the decoder linears are `Frozen4bitLinear`: the base weight is held
as bitsandbytes NF4 and dequantized on the fly, forward and backward, as QLoRA backpropagates
through its frozen 4-bit base. No weight is an autograd leaf; a scored layer keeps its input
and forms its weight gradient itself, g = grad_out^T @ x (fp32), one window at a time.

A GGUF model scored on the CPU under a tight `--max-memory` keeps its decoder linears as the
file's bytes (`CompactLinear`: Q4_K is 0.56 bytes a weight, bf16 2) except those a pass scores or
has room for: a frozen compact layer dequantizes its weight in forward and again in backward to
the very values the loader gives, and forms grad_x with the same product autograd's linear does,
so every gradient, and every score, is the materialised model's bit for bit. Its cost is those
dequantizations (gguf-py, one thread: ~5.5 s per forward of a 1.5B decoder on a quiet machine).

Magnitude and random scores need no model: they stream tensor by tensor (`stream_*`).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from ..core.devices import world
from ..core.errors import ConfigError

log = logging.getLogger(__name__)

SCORERS = ("fisher", "magnitude", "random")
SCORE_QUANTS = ("none", "nf4")
BLOCKSIZE_4BIT = 64

ProgressFn = Callable[[int, int, int], None]
"""Called as progress(windows_done, windows_total, tokens_done)."""


def shard_windows(n: int, rank: int, world: int) -> range:
    """Contiguous share of window indices for one rank (ranks differ by at most one window)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


class _Frozen4bitMatmul(torch.autograd.Function):
    """y = x @ W^T with W dequantized from NF4 in forward and again in backward (never saved)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: "Frozen4bitLinear") -> torch.Tensor:  # x [..., in]
        ctx.layer = layer
        ctx.scored = layer.score is not None
        ctx.save_for_backward(x if ctx.scored else None)
        return nn.functional.linear(x, layer.dequantized())  # [..., out]

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # grad_out [..., out]
        layer = ctx.layer
        grad_x = grad_out @ layer.dequantized() if ctx.needs_input_grad[0] else None  # [..., in]
        if ctx.scored:
            (x,) = ctx.saved_tensors
            g = grad_out.reshape(-1, grad_out.shape[-1]).float().t() @ x.reshape(-1, x.shape[-1]).float()  # [out, in]
            layer.score.addcmul_(g, g)  # Σg² of this window, fp32
        return grad_x, None


class Frozen4bitLinear(nn.Module):
    """A frozen NF4 linear that can accumulate Σg² of its own weight (see module docstring).

    Args:
        weight: [out, in] full-precision weight (read once, quantized on its device).
        bias: [out] bias parameter or None (kept frozen in the compute dtype).
        compute_dtype: dtype of activations and of the dequantized weight.
    """

    def __init__(self, weight: torch.Tensor, bias: nn.Parameter | None, compute_dtype: torch.dtype) -> None:
        super().__init__()
        import bitsandbytes.functional as bnbf

        self.out_features, self.in_features = weight.shape
        packed, state = bnbf.quantize_4bit(weight.detach().to(torch.float32), blocksize=BLOCKSIZE_4BIT, quant_type="nf4")
        state.dtype = compute_dtype
        self.register_buffer("qweight", packed)  # [(out*in)//2, 1] uint8
        self.quant_state = state
        self.compute_dtype = compute_dtype
        self.bias = bias
        self.score: torch.Tensor | None = None  # fp32 [out, in] while this layer is scored

    def dequantized(self) -> torch.Tensor:
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(self.qweight, self.quant_state)  # [out, in]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [..., in]
        out = _Frozen4bitMatmul.apply(x.to(self.compute_dtype), self)
        return out if self.bias is None else out + self.bias


class _CompactMatmul(torch.autograd.Function):
    """y = x @ W^T + b with W dequantized from its file bytes in forward and again in backward (never
    saved). grad_x is the product autograd's linear backward forms, so it is the same bit for bit."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: "CompactLinear") -> torch.Tensor:  # x [..., in]
        ctx.layer = layer
        return nn.functional.linear(x, layer.dequantized(), layer.bias)  # [..., out]: nn.Linear's own call

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # grad_out [..., out]
        if not ctx.needs_input_grad[0]:
            return None, None
        w = ctx.layer.dequantized()  # [out, in]
        grad_x = grad_out.reshape(-1, grad_out.shape[-1]).mm(w)  # [N, in], as mm's backward: grad @ (W^T)^T
        return grad_x.view(*grad_out.shape[:-1], w.shape[1]), None


class CompactLinear(nn.Module):
    """A frozen linear whose weight stays in its GGUF file bytes until it is materialised.

    Compact (`weight` is None), each forward and each backward dequantizes the weight again
    (`gguf_file.dequantize_cast`: the values the loader gives), and no weight gradient exists.
    Materialised, `weight` is a frozen parameter and the layer is `nn.Linear`'s F.linear, so a
    pass can score it; `compact()` drops that copy again. Costs one dequantization per use
    (gguf-py: ~240 Mparam/s a thread on a quiet machine) instead of the dtype's bytes per weight.

    Args:
        raw: uint8 [rows, row_bytes], the weight's bytes in the file (`GGUFModelFile.read_raw`).
        info: Its `GGUFTensorInfo` (shape [out, in], quant type).
        dtype: The compute dtype of the dequantized weight.
        fixup: `GGUFModelFile.fixup` of the weight, or None.
        bias: [out] frozen bias parameter or None.
        where: The file's name, for errors.
    """

    def __init__(self, raw: torch.Tensor, info, dtype: torch.dtype, fixup, bias: nn.Parameter | None, where: str) -> None:
        super().__init__()
        self.out_features, self.in_features = info.shape
        self.raw, self.info, self.dtype, self.fixup, self.where = raw, info, dtype, fixup, where
        self.register_parameter("weight", None)
        self.bias = bias

    @property
    def compact_bytes(self) -> int:
        return self.raw.numel() if self.raw is not None else 0

    def dequantized(self) -> torch.Tensor:  # [out, in] in dtype
        from ..data.gguf_file import dequantize_cast

        return dequantize_cast(self.raw, self.info, self.dtype, self.fixup, self.where)

    def materialise(self, keep_raw: bool = True) -> None:
        """Hold the weight as a frozen parameter (without `keep_raw`, for good: the bytes go)."""
        if self.weight is None:
            self.weight = nn.Parameter(self.dequantized(), requires_grad=False)
        if not keep_raw:
            self.raw = None

    def compact(self) -> None:
        """Drop the materialised weight (the file bytes stay)."""
        if self.raw is not None:
            self.weight = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [..., in] -> [..., out]
        if self.weight is not None:
            return nn.functional.linear(x, self.weight, self.bias)
        return _CompactMatmul.apply(x, self)

    def extra_repr(self) -> str:
        form = "materialised" if self.weight is not None else f"compact {getattr(self.info.qtype, 'name', '?')}"
        return f"in_features={self.in_features}, out_features={self.out_features}, {form}"


def compact_linears(model: nn.Module) -> dict[str, CompactLinear]:
    """`{module}.weight` -> its `CompactLinear`, in model order."""
    return {f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, CompactLinear)}


def _module_of(model: nn.Module, name: str) -> nn.Module | None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    return module if isinstance(module, Frozen4bitLinear) and leaf == "weight" else None


def add_square(buf: torch.Tensor, g: torch.Tensor) -> None:
    """buf += g², in fp32 whatever g's dtype."""
    if g.dtype != torch.float32:
        g = g.float()
    buf.addcmul_(g, g)


def _require_input_grad(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    # No weight is a leaf in 4-bit mode: make the embedded sequence the root of backward.
    return output.requires_grad_(True)


def fisher_scores(
    model: nn.Module,
    targets: list[str],
    windows: torch.Tensor,
    *,
    progress: ProgressFn | None = None,
    progress_offset: int = 0,
    progress_total: int | None = None,
) -> dict[str, torch.Tensor]:
    """Sum over windows of the squared LM-loss gradient, per target weight.

    Under torch.distributed each rank takes a contiguous shard of the windows and the
    accumulators are summed with all_reduce, so every rank returns the same scores.

    Args:
        model: A causal LM (fp32, bf16 or fp16; weights are not changed). Targets whose layer
            is a `Frozen4bitLinear` are scored through their input and output gradients.
        targets: Parameter names to score; all other parameters get no gradient.
        windows: [N, L] token ids.
        progress: Optional progress callback.
        progress_offset: Windows already done in earlier passes (for the callback).
        progress_total: Windows over all passes (default: this call's own).

    Returns:
        name -> fp32 tensor shaped like the parameter, on the model's device.
    """
    params = dict(model.named_parameters())
    quantized = {n: m for n in targets if (m := _module_of(model, n)) is not None}
    target_params = {n: params[n] for n in targets if n not in quantized}
    acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in target_params.items()}
    for n, m in quantized.items():
        acc[n] = torch.zeros(m.out_features, m.in_features, dtype=torch.float32, device=m.qweight.device)
        m.score = acc[n]
    saved = {n: p.requires_grad for n, p in params.items()}
    hooks = []
    try:
        for n, p in params.items():
            p.requires_grad_(n in target_params)
        for n, p in target_params.items():
            buf = acc[n]

            def hook(param: torch.Tensor, buf: torch.Tensor = buf) -> None:
                add_square(buf, param.grad)  # buf += g^2, in place
                param.grad = None  # free at once

            hooks.append(p.register_post_accumulate_grad_hook(hook))
        if quantized:
            hooks.append(model.get_input_embeddings().register_forward_hook(_require_input_grad))

        rank, size = world()
        mine = shard_windows(windows.shape[0], rank, size)
        seq_len = windows.shape[1]
        total = progress_total or len(mine)
        device = next(iter(acc.values())).device
        model.eval()  # no dropout: scores are a deterministic function of the windows
        for done, i in enumerate(mine, 1):
            ids = windows[i : i + 1].to(device)  # [1, L]: one sequence per backward = per-sequence g^2
            out = model(input_ids=ids, labels=ids, use_cache=False)
            out.loss.backward()
            if progress:
                progress(progress_offset + done, total, (progress_offset + done) * seq_len)
        if size > 1:
            for n in targets:
                dist.all_reduce(acc[n], op=dist.ReduceOp.SUM)
    finally:
        for h in hooks:
            h.remove()
        for m in quantized.values():
            m.score = None
        for n, p in params.items():
            p.requires_grad_(saved[n])
            p.grad = None
    return acc


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The model's decoder blocks (the classes transformers never splits across devices)."""
    kinds = set(getattr(model, "_no_split_modules", None) or ())
    return [m for m in model.modules() if type(m).__name__ in kinds]


@contextmanager
def checkpointed_layers(model: nn.Module):
    """Recompute each decoder block in backward instead of keeping its activations.

    Autograd then keeps one [1, L, hidden] input per block, plus one block's activations
    while it is recomputed; the recomputation runs the same kernels on the same inputs, so
    gradients are unchanged. Costs one more forward of the backpropagated layers per window.
    """
    from torch.utils.checkpoint import checkpoint

    patched = []
    for layer in decoder_layers(model):
        own = layer.__dict__.get("forward")
        original = layer.forward

        def forward(*args, _original=original, **kwargs):
            return checkpoint(_original, *args, use_reentrant=False, **kwargs)

        layer.forward = forward
        patched.append((layer, own))
    try:
        yield
    finally:
        for layer, own in patched:
            if own is None:
                del layer.forward
            else:
                layer.forward = own


def stream_magnitude_scores(tensors: Iterator[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """|w| (fp32) of each (name, weight) read from a checkpoint, one tensor at a time."""
    for name, weight in tensors:
        yield name, weight.abs().float()  # |w| of bf16/fp16 is exact in fp32


def stream_random_scores(shapes: dict[str, list[int]], seed: int) -> Iterator[tuple[str, torch.Tensor]]:
    """Seeded uniform scores per target (one generator per tensor, seeded by its position)."""
    for k, (name, shape) in enumerate(shapes.items()):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + k)
        yield name, torch.rand(shape, generator=gen)


def check_scorer(scorer: str) -> None:
    """Raise ConfigError for an unknown scorer name."""
    if scorer not in SCORERS:
        raise ConfigError(f"unknown scorer {scorer!r}", hint=f"choose one of: {', '.join(SCORERS)}")
