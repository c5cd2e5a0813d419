"""Memory planning of a bounded mask build: which target tensors are scored in which pass.

A fisher pass holds the model, the activations of one window, an fp32 Σg² accumulator per
target tensor of its group, and the transients of one tensor at a time (its gradient, that
gradient in fp32, the top-k selection, done in chunks of `selection.SELECT_CHUNK`). The plan measures what the process holds
once the model is loaded, estimates activations from the config, and packs target tensors
in model order into groups whose accumulators fit the rest of `--max-memory`. Scores do not
depend on the grouping (each weight's gradient is the same whichever others are scored), so
the mask is the same for any plan; only time grows with the number of passes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..core.errors import ConfigError
from .selection import SELECT_CHUNK

_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9, "T": 10**12, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SAFETY = 1.10  # activations are estimated, not measured: keep 10% over the estimate
_RESERVE = 160 * 2**20  # allocator slack kept after the first backward (measured ~140 MB on 1.1B), tokenizer, windows


def parse_size(text: str) -> int:
    """Bytes of a size like `3.5GB`, `3500MB`, `3.5GiB` or `123456789` (GB = 10^9, GiB = 2^30).

    Raises:
        ConfigError: not a positive size.
    """
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text or "")
    unit = m.group(2).upper() if m else None
    if not m or unit not in _UNITS or float(m.group(1)) <= 0:
        raise ConfigError(f"--max-memory {text!r} is not a size", hint="e.g. --max-memory 3.5GB (GB = 10^9 bytes, GiB = 2^30)")
    return int(float(m.group(1)) * _UNITS[unit])


def format_size(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def resident_bytes(device: torch.device) -> int:
    """What the build holds now: process RSS on CPU, allocated memory on an accelerator."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def layer_of(name: str) -> int:
    """The decoder layer a parameter belongs to (`...layers.12...` -> 12; 0 when none)."""
    m = re.search(r"\.(\d+)\.", name)
    return int(m.group(1)) if m else 0


def activation_bytes(config, seq_len: int, dtype: torch.dtype, first_layer: int = 0, checkpointed: bool = False) -> int:
    """Upper estimate of what autograd keeps for one window of `seq_len` tokens.

    Per decoder layer from `first_layer` on (autograd saves nothing before the first layer
    whose output needs a gradient): the residual stream, norms, q/k/v/o, attention
    probabilities and the MLP's gate/up/act tensors; then the logits with their fp32 loss
    copies and gradient. With `checkpointed` decoder layers, only each layer's input is kept.
    """
    h = config.hidden_size
    inter = getattr(config, "intermediate_size", 4 * h)
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", heads) * (h // heads)
    vocab = config.vocab_size
    elt = torch.finfo(dtype).bits // 8
    per_layer = seq_len * (8 * h + 2 * kv + 5 * inter) * elt + 2 * heads * seq_len * seq_len * elt
    logits = seq_len * vocab * (elt + 3 * 4)
    layers = max(config.num_hidden_layers - first_layer, 1)
    if checkpointed:  # each layer keeps its input; one layer at a time is recomputed in full
        return int((layers * seq_len * h * elt + per_layer + logits) * _SAFETY)
    return int((layers * per_layer + logits) * _SAFETY)


def pass_cost(plan_groups_: list[list[str]], n_layers: int, checkpointed: bool,
              first_layer: Callable[[str], int] | None = None) -> float:
    """Relative compute of a plan, in forwards of the whole model per window.

    A pass runs the full forward and backpropagates down to its group's first layer (backward
    ~2x forward); checkpointing adds one more forward of those layers. `first_layer` says
    how deep backward goes for a group starting at a tensor (default: its own layer).
    """
    first_layer = first_layer or layer_of
    total = 0.0
    for group in plan_groups_:
        depth = (n_layers - first_layer(group[0])) / max(n_layers, 1)
        total += 1 + (3 if checkpointed else 2) * depth
    return total


@dataclass
class BuildPlan:
    """Groups of target tensors, one fisher pass each, and the figures behind them."""

    groups: list[list[str]]
    budget: int | None
    resident: int
    activations: int
    accumulators: list[int]
    checkpointed: bool = False

    def to_dict(self) -> dict:
        return {"passes": len(self.groups), "budget": self.budget, "checkpointed": self.checkpointed, "resident": self.resident,
                "activations": self.activations, "accumulator_bytes": self.accumulators}


def plan_groups(targets: list[str], numels: dict[str, int], *, budget: int | None, resident: int,
                activations: int | Callable[[str], int], grad_bytes: int) -> BuildPlan:
    """Pack targets in order into passes whose accumulators fit the budget.

    Args:
        targets: Target names in model order.
        numels: name -> weights the process holds accumulators for (a shard under FSDP).
        budget: `--max-memory` in bytes, or None for one pass over everything.
        resident: Bytes held before scoring (process, libraries, model).
        activations: Estimated activation bytes of one window, or a function giving them for
            a pass whose group starts at the named tensor (later layers keep less).
        grad_bytes: Bytes per element of a weight gradient (the scoring dtype).

    Raises:
        ConfigError: the budget cannot hold the model, activations and one tensor's pass.
    """
    act = activations if callable(activations) else (lambda name: activations)
    full = max(act(n) for n in targets)
    if budget is None:
        return BuildPlan([list(targets)], None, resident, full, [4 * sum(numels[n] for n in targets)])
    largest = max(numels[n] for n in targets)
    # one gradient and its fp32 copy; selection works in chunks (selection.SELECT_CHUNK, ~16 B each)
    transient = largest * (grad_bytes + 4) + 16 * min(largest, SELECT_CHUNK)

    def room(first: str) -> int:  # accumulator bytes a pass starting at `first` can hold
        return budget - resident - act(first) - transient - _RESERVE

    worst = min(targets, key=lambda n: room(n) - 4 * numels[n])
    if room(worst) < 4 * numels[worst]:
        need = resident + act(worst) + transient + _RESERVE + 4 * numels[worst]
        raise ConfigError(
            f"--max-memory {format_size(budget)} cannot hold this build: {format_size(resident)} resident with the model, "
            f"~{format_size(act(worst))} activations and {format_size(transient + 4 * numels[worst])} for one tensor's pass",
            hint=f"raise --max-memory to at least {format_size(need * 1.02)}, or shrink the resident model: --score-quant nf4, --dtype bfloat16, --seq-len",
        )
    groups: list[list[str]] = []
    sizes: list[int] = []
    for name in targets:
        cost = 4 * numels[name]
        if groups and sizes[-1] + cost <= room(groups[-1][0]):
            groups[-1].append(name)
            sizes[-1] += cost
        else:
            groups.append([name])
            sizes.append(cost)
    return BuildPlan(groups, budget, resident, full, sizes)
