"""Sensitivity scores per weight: squared gradients (fisher), |w| (magnitude), or random.

The fisher scorer accumulates, per calibration sequence, the squared gradient of the LM loss
into one fp32 buffer per target tensor as soon as each gradient arrives, and frees that
gradient at once, so a full set of `.grad` tensors never sits beside the accumulators.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from .errors import ConfigError

log = logging.getLogger(__name__)

SCORERS = ("fisher", "magnitude", "random")

ProgressFn = Callable[[int, int, int], None]
"""Called as progress(windows_done, windows_total, tokens_done)."""


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_windows(n: int, rank: int, world: int) -> range:
    """Contiguous share of window indices for one rank (ranks differ by at most one window)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


@torch.no_grad()
def _zero_like(params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    return {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}


def fisher_scores(
    model: nn.Module,
    targets: list[str],
    windows: torch.Tensor,
    *,
    progress: ProgressFn | None = None,
) -> dict[str, torch.Tensor]:
    """Sum over windows of the squared LM-loss gradient, per target weight.

    Under torch.distributed each rank takes a contiguous shard of the windows and the
    accumulators are summed with all_reduce, so every rank returns the same scores.

    Args:
        model: A causal LM in fp32 (weights are not changed).
        targets: Parameter names to score; all other parameters get no gradient.
        windows: [N, L] token ids.
        progress: Optional progress callback.

    Returns:
        name -> fp32 tensor shaped like the parameter.
    """
    params = dict(model.named_parameters())
    target_params = {n: params[n] for n in targets}
    acc = _zero_like(target_params)
    saved = {n: p.requires_grad for n, p in params.items()}
    hooks = []
    try:
        for n, p in params.items():
            p.requires_grad_(n in target_params)
        for n, p in target_params.items():
            buf = acc[n]

            def hook(param: torch.Tensor, buf: torch.Tensor = buf) -> None:
                buf.addcmul_(param.grad, param.grad)  # buf += g^2, in place
                param.grad = None  # free at once

            hooks.append(p.register_post_accumulate_grad_hook(hook))

        rank, world = _dist_info()
        mine = shard_windows(windows.shape[0], rank, world)
        seq_len = windows.shape[1]
        model.eval()  # no dropout: scores are a deterministic function of the windows
        for done, i in enumerate(mine, 1):
            ids = windows[i : i + 1]  # [1, L]: one sequence per backward = per-sequence g^2
            out = model(input_ids=ids, labels=ids, use_cache=False)
            out.loss.backward()
            if progress:
                progress(done, len(mine), done * seq_len)
        if world > 1:
            for n in targets:
                dist.all_reduce(acc[n], op=dist.ReduceOp.SUM)
    finally:
        for h in hooks:
            h.remove()
        for n, p in params.items():
            p.requires_grad_(saved[n])
            p.grad = None
    return acc


@torch.no_grad()
def magnitude_scores(model: nn.Module, targets: list[str]) -> dict[str, torch.Tensor]:
    """|w| per target weight."""
    params = dict(model.named_parameters())
    return {n: params[n].detach().abs().float() for n in targets}


@torch.no_grad()
def random_scores(model: nn.Module, targets: list[str], seed: int) -> dict[str, torch.Tensor]:
    """Seeded uniform scores per target weight (one generator per tensor, seeded by position)."""
    params = dict(model.named_parameters())
    out = {}
    for k, n in enumerate(targets):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + k)
        out[n] = torch.rand(params[n].shape, generator=gen)
    return out


def check_scorer(scorer: str) -> None:
    """Raise ConfigError for an unknown scorer name."""
    if scorer not in SCORERS:
        raise ConfigError(f"unknown scorer {scorer!r}", hint=f"choose one of: {', '.join(SCORERS)}")
