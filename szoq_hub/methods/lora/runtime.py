"""ZO-LoRA: low-rank adapters on the frozen quantized base, trained by the same ZO estimator.

The paper's equal-memory competitor (and one of MeZO's own variants): every target linear W
(`q_proj` and `v_proj` by default, MeZO's choice) gets `W x + (alpha / r) B A x` with A [r, in]
and B [out, r]. All adapter weights live in ONE flat fp32 vector `values`, exactly like the
sparse runtime's values, so the ZO optimizers, checkpoints and the paired pass work unchanged:

- layout: for each target module in model order, A row-major (r * in) then B row-major (out * r);
- init (as PEFT's default): A ~ U(-1/sqrt(in), 1/sqrt(in)) from a seeded generator, B = 0, so
  the adapted model starts as the base model;
- paired pass: during `perturbed(points)` the batch holds P copy-major row blocks and block p
  uses adapter vector p; each target computes `(x_p A_p^T) B_p^T` for all parts with two batched
  matmuls ([P, M, in] @ [P, in, r] -> [P, M, r] @ [P, r, out]). The correction is summed in fp32
  and the layer output rounded once to the compute dtype (as the sparse correction is);
- cost: 2 r (in + out) multiply-adds per row and target, ~1.4% of a q/v projection at r = 8 on
  SmolLM2-135M (in = 576, out = 576 / 192), against the dense matmul it sits beside.

The adapter is applied through forward hooks on the base linears, so it does not care whether a
target is a bitsandbytes-backed `SparseQuantLinear`, an int8 layer or a plain `nn.Linear`.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ...core.errors import ConfigError, MaskError
from ...runtime.sparse_linear import SparseValues as LoRAStore  # the same fp32 master vector + per-part views
from .config import LoRASettings


@dataclass(frozen=True)
class LoRASegment:
    """Where one target's A and B sit inside the flat vector."""

    module: str  # dotted module name, e.g. model.layers.0.self_attn.q_proj
    offset: int  # A starts here; B starts at offset + rank * in_features
    in_features: int
    out_features: int
    rank: int

    @property
    def numel(self) -> int:
        return self.rank * (self.in_features + self.out_features)

    def a(self, vals: torch.Tensor) -> torch.Tensor:
        """[P, n] -> A of every part, [P, r, in] (a view)."""
        return vals[:, self.offset : self.offset + self.rank * self.in_features].view(-1, self.rank, self.in_features)

    def b(self, vals: torch.Tensor) -> torch.Tensor:
        """[P, n] -> B of every part, [P, out, r] (a view)."""
        start = self.offset + self.rank * self.in_features
        return vals[:, start : start + self.out_features * self.rank].view(-1, self.out_features, self.rank)


def _in_out(module: nn.Module) -> tuple[int, int]:
    for a, b in (("in_features", "out_features"),):
        if hasattr(module, a) and hasattr(module, b):
            return int(getattr(module, a)), int(getattr(module, b))
    raise ConfigError(f"{type(module).__name__} is not a linear layer", hint="LoRA targets must name linear layers (q_proj, v_proj, ...)")


def _hook(store: LoRAStore, seg: LoRASegment, scaling: float):
    def forward_hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:  # out [N..., out]
        vals = store.values[None] if store.parts is None else store.parts  # [P, n]
        p = vals.shape[0]
        x = args[0]  # [N..., in], N = P * M rows
        if x.shape[0] % p:
            raise ConfigError(f"a paired forward needs {p} equal row blocks, got {x.shape[0]} rows", hint="repeat the batch once per perturbation")
        xs = x.reshape(p, -1, seg.in_features).to(torch.float32)  # [P, M, in]
        low = torch.bmm(xs, seg.a(vals).transpose(1, 2))  # [P, M, r]
        acc = out.reshape(p, -1, seg.out_features).to(torch.float32)  # [P, M, out]
        acc = acc.baddbmm(low, seg.b(vals).transpose(1, 2), alpha=scaling)  # + (alpha / r) (x A^T) B^T
        return acc.to(out.dtype).view(out.shape)

    return forward_hook


@dataclass
class LoRAModel:
    """A causal LM (usually a quantized sparse runtime with no mask) with ZO-trainable adapters.

    Attributes:
        model: The transformers causal LM, hooks attached.
        tokenizer: Its tokenizer.
        settings: Rank, alpha, targets.
        store: The `LoRAStore` registered on `model` (holds `values`).
        segments: One per adapted module, in model order.
        base: Whatever the base loader returned (kept for its metadata: source, quant).
    """

    model: nn.Module
    tokenizer: Any
    settings: LoRASettings
    store: LoRAStore
    segments: list[LoRASegment]
    base: Any = None
    handles: list = field(default_factory=list, repr=False)

    @property
    def values(self) -> torch.Tensor:
        """fp32 [n]: every A and B, flat (see the module doc). Mutate in place only."""
        return self.store.values

    @property
    def device(self) -> torch.device:
        return self.store.values.device

    def perturbed(self, points: torch.Tensor) -> AbstractContextManager[int]:
        """Within the block, row block p of a batch of P copy-major blocks uses adapter vector p.

        Args:
            points: [P, n] fp32 adapter vectors.

        Yields:
            P.

        Raises:
            ConfigError: `points` is not [P, n].
        """
        return self.store.perturbed(points)

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """The current adapter as `{module}.lora_A.weight` [r, in] / `{module}.lora_B.weight` [out, r] CPU fp32 copies."""
        vals = self.values.detach().to("cpu")[None]  # [1, n]
        out: dict[str, torch.Tensor] = {}
        for seg in self.segments:
            out[f"{seg.module}.lora_A.weight"] = seg.a(vals)[0].clone()
            out[f"{seg.module}.lora_B.weight"] = seg.b(vals)[0].clone()
        return out

    def load_adapter(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy `adapter_tensors()`-shaped tensors into `values` (in place).

        Raises:
            MaskError: names missing or unexpected, a shape that does not match, non-finite values.
        """
        expected = {f"{s.module}.lora_{ab}.weight" for s in self.segments for ab in "AB"}
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        if missing or extra:
            raise MaskError(f"adapter does not match the model: {len(missing)} tensor(s) missing, {len(extra)} unexpected (e.g. {(missing or extra)[0]})",
                            hint="load an adapter trained with the same --lora rank and targets on this model")
        staged = self.values.detach().clone()[None]  # [1, n]
        for seg in self.segments:
            for ab, view in (("A", seg.a(staged)[0]), ("B", seg.b(staged)[0])):
                t = tensors[f"{seg.module}.lora_{ab}.weight"]
                if tuple(t.shape) != tuple(view.shape):
                    raise MaskError(f"adapter tensor {seg.module}.lora_{ab}.weight has shape {list(t.shape)}, the model needs {list(view.shape)}",
                                    hint="load an adapter trained with the same --lora rank on this model")
                if not torch.isfinite(t).all():
                    raise MaskError(f"adapter tensor {seg.module}.lora_{ab}.weight holds non-finite values", hint="the adapter file is corrupt")
                view.copy_(t.to(torch.float32))
        with torch.no_grad():
            self.values.copy_(staged[0])

    def weight_deltas(self) -> dict[str, torch.Tensor]:
        """`{module}.weight` -> (alpha / r) B A, [out, in] fp32 CPU: what a merge adds to each base weight."""
        vals = self.values.detach().to("cpu")[None]  # [1, n]
        return {f"{s.module}.weight": self.settings.scaling * (s.b(vals)[0] @ s.a(vals)[0]) for s in self.segments}

    def remove(self) -> None:
        """Detach the hooks: the model computes the plain base again."""
        for h in self.handles:
            h.remove()
        self.handles.clear()


def target_modules(model: nn.Module, targets: tuple[str, ...]) -> list[tuple[str, nn.Module]]:
    """The modules whose dotted name ends in one of `targets` (as `.suffix` or the whole name), in model order.

    Raises:
        ConfigError: none matches.
    """
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    found = [(n, m) for n, m in model.named_modules()
             if n and m is not out_emb and any(n == t or n.endswith(f".{t}") for t in targets) and hasattr(m, "in_features")]
    if not found:
        raise ConfigError(f"no linear layer of the model is named {', '.join(targets)}",
                          hint="pass --lora-targets with names of the model's linear layers (Llama: q_proj,k_proj,v_proj,o_proj)")
    return found


def attach_lora(model: nn.Module, tokenizer: Any, settings: LoRASettings, *, seed: int = 0, device: torch.device | None = None,
                base: Any = None) -> LoRAModel:
    """Wrap the target linears of `model` with ZO-trainable adapters (A random, B = 0).

    Args:
        model: A causal LM (frozen; typically `load_sparse_model(...).model`).
        tokenizer: Its tokenizer.
        settings: Rank, alpha, targets.
        seed: Seeds A's init (a `torch.Generator` on the CPU: the same A on every device).
        device: Where `values` lives (default: the device of the model's first parameter or buffer).
        base: Kept on the result for the caller (e.g. the SparseModel the model came from).

    Returns:
        The `LoRAModel`; the model's outputs are unchanged until `values` moves B off zero.

    Raises:
        ConfigError: no target module, or a target that is not linear.
    """
    if device is None:
        first = next(iter(model.parameters()), None)
        if first is None:
            first = next(iter(model.buffers()))
        device = first.device
    found = target_modules(model, settings.targets)
    segments, offset = [], 0
    for name, module in found:
        n_in, n_out = _in_out(module)
        segments.append(LoRASegment(name, offset, n_in, n_out, settings.rank))
        offset += segments[-1].numel
    store = LoRAStore(offset, device)
    model.add_module("szoq_lora", store)
    gen = torch.Generator().manual_seed(int(seed))
    init = torch.zeros(offset, dtype=torch.float32)  # [n]
    for seg in segments:
        bound = 1.0 / math.sqrt(seg.in_features)  # kaiming_uniform(a=sqrt(5)), PEFT's default for A
        a = seg.a(init[None])[0]  # [r, in] view
        a.copy_(torch.rand(a.shape, generator=gen, dtype=torch.float32) * (2 * bound) - bound)
    store.values.copy_(init.to(device))
    modules = dict(found)
    handles = [modules[s.module].register_forward_hook(_hook(store, s, settings.scaling)) for s in segments]
    return LoRAModel(model, tokenizer, settings, store, segments, base, handles)
