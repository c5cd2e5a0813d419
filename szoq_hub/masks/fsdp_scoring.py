"""Fisher scoring across processes with PyTorch FSDP2 (`fully_shard`): `mask build --fsdp`.

Every rank runs every calibration window (the same window at the same time); FSDP2 shards
parameters, gathers each decoder layer for its forward and backward, and reduce-scatters
the gradient, so each rank holds, and squares into its fp32 accumulator, only its dim-0
shard of every target. Per-window g² needs the gradient of that window alone, which is
why windows are not split across ranks here: the reduce-scatter averages `world` identical
copies of the one window's gradient. It reduces in float64, where the sum of `world` equal
values and the division by `world` are exact, so each shard equals the single-process
gradient bit for bit (the forward and backward run the same kernels on the same weights).

Selection: each rank takes the top-k of its shard of each tensor under the mask's order
(higher score, earlier tensor, lower flat index; flat indices are global, shard row offset
included), the candidates are all-gathered and merged by every rank in the same way
(`selection.StreamingSelector.add_candidates`), which gives the single-process selection,
ties included. Only the captured-mass figure sums shard totals in a different order (float64,
rounded to 6 digits in the stats).

Memory: each rank loads the model before sharding it (peak = one full copy per rank during
load); after `fully_shard`, parameters, gradients and accumulators are 1/world per rank.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

from ..core.errors import ConfigError
from .selection import StreamingSelector, check_finite, top_k_flat
from .sensitivity import ProgressFn, add_square


def init_fsdp(device: torch.device) -> torch.device:
    """Join the torchrun process group (gloo on CPU, NCCL on CUDA); returns this rank's device.

    Raises:
        ConfigError: not started by torchrun.
    """
    if not dist.is_initialized():
        if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
            raise ConfigError("--fsdp needs processes started by torchrun",
                              hint="torchrun --nproc_per_node 2 -m szoq_cli mask build MODEL --fsdp ...")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    elif device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def _row_offset(full_rows: int, local_rows: int, rank: int, world: int) -> int:
    """First row of this rank's dim-0 shard (FSDP2 shards like torch.chunk)."""
    chunk = -(-full_rows // world)
    start = min(rank * chunk, full_rows)
    if local_rows != max(0, min(chunk, full_rows - start)):
        raise RuntimeError(f"unexpected FSDP shard: {local_rows} rows at rank {rank} of {full_rows}")
    return start


def shard_model(model: nn.Module, numels: dict[str, int]) -> dict[str, int]:
    """Apply `fully_shard` to each decoder layer and to the root.

    Args:
        model: The scoring model (all ranks hold the same weights).
        numels: Target name -> numel of the full tensor.

    Returns:
        Target name -> numel of this rank's shard (what its accumulator holds).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    device = next(model.parameters()).device
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(reduce_dtype=torch.float64)  # exact average of equal copies
    layer_types = tuple(getattr(model, "_no_split_modules", None) or ())
    for module in model.modules():
        if type(module).__name__ in layer_types:
            fully_shard(module, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    params = dict(model.named_parameters())
    return {n: int(params[n].to_local().numel()) for n in numels}


def fsdp_fisher_select(
    model: nn.Module,
    group: list[str],
    windows: torch.Tensor,
    selector: StreamingSelector,
    *,
    progress: ProgressFn | None = None,
    progress_offset: int = 0,
    progress_total: int | None = None,
) -> None:
    """Score one group of targets over all windows on this rank's shards; feed the selector.

    Args:
        model: A model sharded by `shard_model`.
        group: Target names scored in this pass.
        windows: [N, L] token ids (the same on every rank).
        selector: Receives every rank's candidates and the tensors' score mass.
        progress: Optional progress callback.
        progress_offset: Windows done in earlier passes.
        progress_total: Windows over all passes.
    """
    params = dict(model.named_parameters())
    rank, world = dist.get_rank(), dist.get_world_size()
    acc = {n: torch.zeros_like(params[n].to_local(), dtype=torch.float32) for n in group}  # local shards
    saved = {n: p.requires_grad for n, p in params.items()}
    device = next(iter(acc.values())).device
    try:
        for n, p in params.items():
            p.requires_grad_(n in acc)
        model.eval()
        seq_len = windows.shape[1]
        for i in range(windows.shape[0]):
            ids = windows[i : i + 1].to(device)  # [1, L]
            model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
            for n in group:
                grad = params[n].grad
                if grad is not None:
                    add_square(acc[n], grad.to_local())
                params[n].grad = None
            if progress:
                done = progress_offset + i + 1
                progress(done, progress_total or windows.shape[0], done * seq_len)
    finally:
        for n, p in params.items():
            p.requires_grad_(saved[n])
            p.grad = None
    for n in group:
        local = acc.pop(n)  # [rows_local, ...]
        full_shape = params[n].shape
        row_numel = int(torch.Size(full_shape[1:]).numel())
        offset = _row_offset(full_shape[0], local.shape[0], rank, world) * row_numel
        flat = local.reshape(-1)
        check_finite(n, flat)
        idx = top_k_flat(flat, min(selector.k_for(n), flat.numel())) if flat.numel() else torch.empty(0, dtype=torch.int64)
        mine = (flat[idx].float().cpu(), (idx + offset).cpu())
        mass = torch.tensor([float(flat.double().sum())], dtype=torch.float64, device=device)
        dist.all_reduce(mass, op=dist.ReduceOp.SUM)
        gathered: list = [None] * world
        dist.all_gather_object(gathered, mine)
        for values, index in gathered:  # rank order; the merge itself is order-free
            selector.add_candidates(n, values, index)
        selector.add_mass(n, float(mass.item()))
        del local, flat
