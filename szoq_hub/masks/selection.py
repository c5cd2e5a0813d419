"""Streaming top-k selection: the mask's indices from scores that arrive one tensor at a time.

A memory-bounded build scores one group of tensors per pass and must forget each group's
scores as soon as the pass ends, so selection consumes (name, scores) pairs in any order and
keeps only int32/int64 candidates (`select` is the one-shot form, for a dict of every score):

- per-matrix scope: each tensor's top-k is final the moment its scores arrive;
- global scope: a running top-k merge over (value, tensor position, flat index) holds at
  most k candidates (plus one tensor's k while merging): memory O(k), not O(weights).

Both use one total order: higher score first, then the earlier tensor in target order, then the
lower flat index. Any arrival order, and any split of a tensor into row shards (FSDP ranks),
therefore gives the same indices as one top-k over the whole score dict (tests/conftest.py's
`reference_select` is that slow reference).
"""

from __future__ import annotations

import math

import torch

from ..core.errors import ConfigError, MaskError
from .artifact import SCOPES, check_density, check_int32_range

_POS_SHIFT = 40  # flat indices stay below 2**40; (position << 40) | index orders by both
SELECT_CHUNK = 1 << 22  # elements per step of top-k selection: its transients stay ~16 B x this (64 MiB)


def top_k_flat(scores: torch.Tensor, k: int, chunk: int = SELECT_CHUNK) -> torch.Tensor:
    """Indices of the k largest entries of a flat tensor; ties go to the lowest index.

    Works chunk by chunk: `torch.topk` over n elements allocates ~16 bytes per element (0.7 GB
    for a Llama-2-7B MLP matrix), which a memory-bounded build cannot afford. The k-th largest
    value overall is among the chunks' own k largest, so the threshold, the entries above it
    and the lowest-index ties are exactly those of one call over the whole tensor.

    Args:
        scores: [n] scores (any float dtype, any device).
        k: How many to keep.
        chunk: Elements per chunk.

    Returns:
        Sorted int64 indices [k].
    """
    n = scores.numel()
    if k >= n:
        return torch.arange(n)
    starts = range(0, n, chunk)
    if n <= chunk:
        threshold = torch.topk(scores, k, sorted=False).values.min()
    else:
        cands = [scores[s : s + chunk] for s in starts]
        cands = [c if c.numel() <= k else torch.topk(c, k, sorted=False).values for c in cands]  # [<= k] each
        threshold = torch.topk(torch.cat(cands), k, sorted=False).values.min()
        del cands
    above = [(scores[s : s + chunk] > threshold).nonzero().flatten() + s for s in starts]  # strictly better: always kept
    room = k - sum(a.numel() for a in above)
    ties = []
    for s in starts:  # lowest index first
        if room <= 0:
            break
        t = (scores[s : s + chunk] == threshold).nonzero().flatten()[:room] + s
        ties.append(t)
        room -= t.numel()
    return torch.cat(above + ties).sort().values


class RunningTopK:
    """The k best (value, position, index) triples seen so far, under the mask's tie order.

    Args:
        k: How many to keep (>= 1).
    """

    def __init__(self, k: int) -> None:
        self.k = k
        self.values = torch.empty(0, dtype=torch.float32)  # [<=k]
        self.keys = torch.empty(0, dtype=torch.int64)  # [<=k] (position << 40) | flat index

    def push(self, values: torch.Tensor, position: int, index: torch.Tensor) -> None:
        """Merge candidates of one tensor (or one shard of it).

        Args:
            values: [m] scores (any float dtype; kept as fp32, which every score is).
            position: The tensor's position in target order.
            index: [m] flat indices into the full tensor.
        """
        keys = (index.to(torch.int64).cpu() | (position << _POS_SHIFT))  # [m]
        v = torch.cat([self.values, values.detach().float().cpu()])
        key = torch.cat([self.keys, keys])
        if v.numel() > self.k:
            threshold = torch.topk(v, self.k, sorted=False).values.min()
            keep = v > threshold
            ties = (v == threshold).nonzero().flatten()
            room = self.k - int(keep.sum())
            keep[ties[key[ties].argsort()[:room]]] = True  # lowest (position, index) first
            v, key = v[keep], key[keep]
        self.values, self.keys = v, key

    def by_position(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """The kept candidates grouped by tensor position.

        Returns:
            position -> (sorted int64 flat indices [n], their fp32 values [n]).
        """
        order = self.keys.argsort()
        keys, values = self.keys[order], self.values[order]
        positions = keys >> _POS_SHIFT
        out = {}
        for pos in positions.unique().tolist():
            sel = positions == pos
            out[pos] = (keys[sel] & ((1 << _POS_SHIFT) - 1), values[sel])
        return out


def per_matrix_k(numel: int, density: float) -> int:
    """How many weights per-matrix scope keeps in a tensor of `numel`: floor(numel * density), at least 1."""
    return max(1, math.floor(numel * density))


def check_finite(name: str, scores: torch.Tensor) -> None:
    """Raise MaskError for NaN or infinite scores (they would silently empty a selection)."""
    flat = scores.reshape(-1)
    bad = sum(int((~torch.isfinite(flat[s : s + SELECT_CHUNK])).sum()) for s in range(0, flat.numel(), SELECT_CHUNK))  # chunked: bounded transients
    if bad:
        raise MaskError(f"{bad} of {scores.numel()} scores of {name} are NaN or infinite",
                        hint="the calibration forward/backward overflowed: build in fp32 from a model whose weights are finite, or use shorter --seq-len")


class StreamingSelector:
    """Select a mask's indices from score tensors fed one at a time.

    Args:
        targets: Target parameter names in model order (ties go to earlier ones).
        numels: name -> number of weights of each target.
        density: Share of weights kept, in (0, 1).
        scope: `per-matrix` or `global`.

    Attributes:
        total_mass: name -> Σ score of the whole tensor (float64 sum, as `captured_share`).
        kept_scores: after `result()`: name -> fp32 scores of the selected weights [nnz_name],
            in the order of that tensor's indices (what a fisher mask stores beside them).
    """

    def __init__(self, targets: list[str], numels: dict[str, int], density: float, scope: str) -> None:
        check_density(density)
        if scope not in SCOPES:
            raise ConfigError(f"unknown scope {scope!r}", hint=f"choose one of: {', '.join(SCOPES)}")
        if not targets or all(numels[n] == 0 for n in targets):
            raise MaskError("no weights to score: the target selection is empty", hint="check --targets; by default every linear weight of the decoder is a target")
        for n in targets:  # before any scoring time is spent
            check_int32_range(n, numels[n])
        self.targets = list(targets)
        self.position = {n: i for i, n in enumerate(self.targets)}
        self.numels = dict(numels)
        self.density, self.scope = density, scope
        self.total_mass: dict[str, float] = {}
        self.kept_scores: dict[str, torch.Tensor] = {}
        if scope == "global":
            self.k = max(1, math.floor(sum(self.numels[n] for n in self.targets) * density))
            self._global = RunningTopK(self.k)
        self._picked: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # per-matrix: idx, values
        self._shards: dict[str, RunningTopK] = {}

    def k_for(self, name: str) -> int:
        """How many candidates a tensor (or any shard of it) must contribute."""
        if self.scope == "per-matrix":
            return per_matrix_k(self.numels[name], self.density)
        return min(self.k, self.numels[name])

    def add(self, name: str, scores: torch.Tensor) -> None:
        """Consume the complete scores of one target tensor (then free them)."""
        flat = scores.detach().reshape(-1)  # [numel]
        check_finite(name, flat)
        # float64 sums chunk by chunk (an fp64 copy of a 7B MLP matrix would be 0.36 GB)
        self.total_mass[name] = sum(float(flat[s : s + SELECT_CHUNK].double().sum()) for s in range(0, flat.numel(), SELECT_CHUNK))
        idx = top_k_flat(flat, min(self.k_for(name), flat.numel()))  # [k] sorted int64
        vals = flat[idx]
        if self.scope == "per-matrix":
            self._picked[name] = (idx.cpu(), vals.float().cpu())
        else:
            self._global.push(vals, self.position[name], idx)

    def add_candidates(self, name: str, values: torch.Tensor, index: torch.Tensor) -> None:
        """Consume pre-selected candidates of a part of one tensor (a shard's own top-k).

        The shard's top-k under the same order must contain the tensor's top-k from that
        shard, so merging every shard's candidates gives the whole tensor's selection. Mass
        is added with `add_mass`.
        """
        if self.scope == "global":
            self._global.push(values, self.position[name], index)
            return
        if name not in self._shards:
            self._shards[name] = RunningTopK(self.k_for(name))
        self._shards[name].push(values, self.position[name], index)

    def add_mass(self, name: str, mass: float) -> None:
        """Record the Σ score of a tensor computed elsewhere (e.g. summed over shards)."""
        self.total_mass[name] = mass

    def result(self) -> tuple[dict[str, torch.Tensor], float, dict[str, float]]:
        """The selection and its captured shares.

        Returns:
            (name -> sorted int32 flat indices in target order, in target order;
            share of the total score mass the selected weights hold, as `captured_share`;
            name -> share of its own mass, as `captured_share_per_tensor`).
        """
        for name, top in self._shards.items():
            pos = self.position[name]
            idx, vals = top.by_position().get(pos, (torch.empty(0, dtype=torch.int64), torch.empty(0)))
            self._picked[name] = (idx, vals)
        self._shards.clear()
        if self.scope == "global":
            groups = self._global.by_position()
            self._picked = {self.targets[pos]: iv for pos, iv in groups.items()}
        indices, kept, per_tensor = {}, 0.0, {}
        self.kept_scores = {}
        for name in self.targets:
            mine = 0.0
            if name in self._picked:
                idx, vals = self._picked[name]  # idx sorted; vals aligned with it
                if idx.numel() or self.scope == "per-matrix":
                    indices[name] = idx.to(torch.int32)
                    self.kept_scores[name] = vals.float().cpu()  # [nnz_name]
                    mine = float(vals.double().sum())
                    kept += mine
            own = self.total_mass.get(name, 0.0)
            per_tensor[name] = round(mine / own, 6) if own > 0 else 0.0
        total = sum(self.total_mass.get(n, 0.0) for n in self.targets)
        return indices, (kept / total if total > 0 else 0.0), per_tensor


def select(scores: dict[str, torch.Tensor], density: float, scope: str = "per-matrix") -> dict[str, torch.Tensor]:
    """Pick the top-scored weights of a dict holding every score (the one-shot `StreamingSelector`).

    Args:
        scores: name -> scores shaped like the parameter, in target order (ties go to earlier ones).
        density: Share of weights to keep, in (0, 1).
        scope: `per-matrix` keeps floor(numel * density) (at least 1) per tensor;
            `global` keeps floor(total * density) over all tensors together.

    Returns:
        name -> sorted int32 flat indices (tensors with no pick are left out in global scope).

    Raises:
        MaskError: a NaN or infinite score, or nothing to select from. ConfigError: bad density or scope.
    """
    selector = StreamingSelector(list(scores), {n: s.numel() for n, s in scores.items()}, density, scope)
    for name, s in scores.items():
        selector.add(name, s)
    return selector.result()[0]
