"""The plan of a mask build: its settings (`MaskBuildConfig`) and, under `--max-memory`, which target
tensors are scored in which pass. Torch-free at import: `szoq mask build --help` reads the settings.

Memory planning of a bounded build:

A fisher pass holds the model, the activations of one window, an fp32 Σg² accumulator per
target tensor of its group, and the transients of one tensor at a time (its gradient, that
gradient in fp32, the top-k selection, done in chunks of `selection.SELECT_CHUNK`). The plan measures what the process holds
once the model is loaded, estimates activations from the config, and packs target tensors
in model order into groups whose accumulators fit the rest of `--max-memory`. Scores do not
depend on the grouping (each weight's gradient is the same whichever others are scored), so
the mask is the same for any plan; only time grows with the number of passes.

A GGUF model scored on the CPU is measured with its decoder linears still in their file bytes.
When no plan holds them all materialised, a pass materialises its group's linears (their bytes
count with its accumulators) and fills the rest of its room with others; the rest stay compact
and are dequantized at each use (`sensitivity.CompactLinear`): Qwen2.5-1.5B's linears take 0.79 GB
that way instead of 2.62 GB in bf16.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..core.defaults import DEFAULT_MODEL
from ..core.errors import ConfigError
from ..core.defaults import DTYPE_NAMES, check_device_spec

if TYPE_CHECKING:
    import torch

DEFAULT_CALIBRATION = "c4"
# `auto` = the checkpoint's own dtype (mask build scores in it); the rest as `--dtype` elsewhere, and torch's names
SCORING_DTYPES = ("auto", *DTYPE_NAMES, "float32", "bfloat16", "float16")

_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9, "T": 10**12, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SAFETY = 1.10  # activations are estimated, not measured: keep 10% over the estimate
_RESERVE = 160 * 2**20  # allocator slack kept after the first backward (measured ~140 MB on 1.1B), tokenizer, windows


def _opt(default, help: str, **meta):
    """A config field with its help text (and `argument` / `hidden` for the command line)."""
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class MaskBuildConfig:
    """Options of `szoq mask build` (validated on creation)."""

    # `argument`: the command's positional argument; `hidden`: an option `--help` does not list.
    model: str = _opt(DEFAULT_MODEL, "Model alias, Hub id, local folder or .gguf file.", argument=True)
    revision: str | None = _opt(None, "Hub revision of the model.")
    calibration: str = _opt(DEFAULT_CALIBRATION, "'c4' (needs datasets + network) or a .jsonl(.gz)/.txt file.")
    samples: int = _opt(32, "Calibration windows N.")
    seq_len: int = _opt(256, "Tokens per window L.")
    density: float = _opt(1e-3, "Share of weights kept, in (0, 1).")
    scope: str = _opt("per-matrix", "per-matrix or global.")
    scorer: str = _opt("fisher", "fisher, magnitude or random.")
    targets: str | None = _opt(None, "Regex over parameter names (default: decoder linear weights).")
    seed: int = _opt(0, "Seed of window order (and of random scores).")
    dtype: str = _opt("auto", "Scoring dtype: auto (the checkpoint's), bf16, fp16, fp32; Σg² is fp32.")
    max_memory: str | None = _opt(None, "Memory bound of a fisher build, e.g. 3.5GB: scores in passes over groups of tensors "
                                    "(default: what the process holds + 80% of the available memory; same mask).")
    # Experimental: on SmolLM2 an nf4-scored per-matrix mask keeps 90% (< 95%) of the fp32 mask's Σg² share (README).
    score_quant: str = _opt("none", "Frozen base while scoring: none or nf4 (bitsandbytes 4-bit, QLoRA-style).", hidden=True)
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N.")
    fsdp: bool = _opt(False, "Shard weights, gradients and scores with FSDP2 across torchrun ranks.")

    def __post_init__(self) -> None:
        from .artifact import SCOPES, check_density  # torch: loaded when a build is asked for, not by --help
        from .sensitivity import SCORE_QUANTS, check_scorer

        check_density(self.density)
        check_scorer(self.scorer)
        if self.scope not in SCOPES:
            raise ConfigError(f"unknown scope {self.scope!r}", hint=f"choose one of: {', '.join(SCOPES)}")
        if self.samples < 1 or self.seq_len < 2:
            raise ConfigError(f"need --samples >= 1 and --seq-len >= 2 (got {self.samples}, {self.seq_len})", hint="e.g. --samples 32 --seq-len 256")
        if self.dtype not in SCORING_DTYPES:
            raise ConfigError(f"unknown --dtype {self.dtype!r}", hint="choose one of: auto (the checkpoint's), bf16, fp16, fp32")
        if self.score_quant not in SCORE_QUANTS:
            raise ConfigError(f"unknown --score-quant {self.score_quant!r}", hint=f"choose one of: {', '.join(SCORE_QUANTS)}")
        if self.max_memory is not None:
            parse_size(self.max_memory)
        if self.score_quant != "none" and self.fsdp:
            raise ConfigError("--score-quant nf4 and --fsdp cannot be combined", hint="FSDP shards full-precision weights; use one or the other")
        check_device_spec(self.device)



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
    import torch

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
    import torch

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
    """Groups of target tensors, one fisher pass each, and the figures behind them.

    With `compact`, decoder linears stay in their GGUF bytes except those `materialised` lists
    for each pass (its group's own, then any the rest of the bound holds).
    """

    groups: list[list[str]]
    budget: int | None
    resident: int
    activations: int
    accumulators: list[int]
    checkpointed: bool = False
    compact: bool = False
    materialised: list[list[str]] = field(default_factory=list)
    weight_bytes: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = {"passes": len(self.groups), "budget": self.budget, "checkpointed": self.checkpointed, "resident": self.resident,
               "activations": self.activations, "accumulator_bytes": self.accumulators, "compact": self.compact}
        if self.compact:
            out["materialised_bytes"] = self.weight_bytes
        return out


def linear_of(name: str, weights: dict[str, int]) -> str | None:
    """The compact linear (`{module}.weight` in `weights`) a target belongs to: its weight or its bias."""
    weight = name[: -len(".bias")] + ".weight" if name.endswith(".bias") else name
    return weight if weight in weights else None


def plan_groups(targets: list[str], numels: dict[str, int], *, budget: int | None, resident: int,
                activations: int | Callable[[str], int], grad_bytes: int, weights: dict[str, int] | None = None,
                dequant_bytes: int = 0) -> BuildPlan:
    """Pack targets in order into passes whose accumulators fit the budget.

    Args:
        targets: Target names in model order.
        numels: name -> weights the process holds accumulators for (a shard under FSDP).
        budget: `--max-memory` in bytes, or None for one pass over everything.
        resident: Bytes held before scoring (process, libraries, model).
        activations: Estimated activation bytes of one window, or a function giving them for
            a pass whose group starts at the named tensor (later layers keep less).
        grad_bytes: Bytes per element of a weight gradient (the scoring dtype).
        weights: Compact mode: `{module}.weight` -> bytes of that linear once materialised, for
            every linear held in its file bytes (model order). A pass materialises its group's
            linears, then as many of the others as the rest of its room holds (first those its
            backward reaches: they are dequantized twice a window when compact).
        dequant_bytes: Compact mode: the transient of one dequantization (weight + slab temporaries).

    Raises:
        ConfigError: the budget cannot hold the model, activations and one tensor's pass.
    """
    act = activations if callable(activations) else (lambda name: activations)
    full = max(act(n) for n in targets)
    weights = weights or {}
    if budget is None:
        return BuildPlan([list(targets)], None, resident, full, [4 * sum(numels[n] for n in targets)], compact=bool(weights),
                         materialised=[list(weights)] if weights else [], weight_bytes=[sum(weights.values())] if weights else [])
    largest = max(numels[n] for n in targets)
    # one gradient and its fp32 copy; selection works in chunks (selection.SELECT_CHUNK, ~16 B each)
    from .selection import SELECT_CHUNK

    transient = largest * (grad_bytes + 4) + 16 * min(largest, SELECT_CHUNK) + dequant_bytes

    def room(first: str) -> int:  # accumulator (and materialised weight) bytes a pass starting at `first` can hold
        return budget - resident - act(first) - transient - _RESERVE

    def cost(name: str, group: list[str]) -> int:  # what scoring `name` adds to a pass over `group`
        linear = linear_of(name, weights)
        fresh = linear is not None and not any(linear_of(n, weights) == linear for n in group)
        return 4 * numels[name] + (weights[linear] if fresh else 0)

    worst = min(targets, key=lambda n: room(n) - cost(n, []))
    if room(worst) < cost(worst, []):
        need = resident + act(worst) + transient + _RESERVE + cost(worst, [])
        raise ConfigError(
            f"--max-memory {format_size(budget)} cannot hold this build: {format_size(resident)} resident with the model, "
            f"~{format_size(act(worst))} activations and {format_size(transient + cost(worst, []))} for one tensor's pass",
            hint=f"raise --max-memory to at least {format_size(need * 1.02)}, or shrink the resident model: --score-quant nf4, --dtype bfloat16, --seq-len",
        )
    groups: list[list[str]] = []
    sizes: list[int] = []
    for name in targets:
        if groups and sizes[-1] + cost(name, groups[-1]) <= room(groups[-1][0]):
            sizes[-1] += cost(name, groups[-1])
            groups[-1].append(name)
        else:
            groups.append([name])
            sizes.append(cost(name, []))
    accumulators = [4 * sum(numels[n] for n in g) for g in groups]
    plan = BuildPlan(groups, budget, resident, full, accumulators, compact=bool(weights))
    for group, size in zip(groups, sizes) if weights else ():  # the rest of each pass's room: more linears materialised
        own = list(dict.fromkeys(linear for n in group if (linear := linear_of(n, weights))))
        free = room(group[0]) - size
        start = layer_of(group[0])
        held = list(own)
        for linear in sorted((w for w in weights if w not in own), key=lambda w: layer_of(w) < start):  # stable: model order
            if weights[linear] <= free:
                held.append(linear)
                free -= weights[linear]
        plan.materialised.append(held)
        plan.weight_bytes.append(sum(weights[w] for w in held))
    return plan


def plan_build(model_config, targets: list[str], numels: dict[str, int], *, budget: int | None, resident: int, seq_len: int,
               dtype: torch.dtype, first_layer: Callable[[str], int], checkpointable: bool,
               compact: dict[str, int] | None = None, held: int = 0, dequant_bytes: int = 0) -> BuildPlan:
    """The plan of a fisher build: the cheapest (`pass_cost`) of those that fit, with and without
    checkpointed decoder layers; with every weight materialised when any such plan fits, else
    (a GGUF model on the CPU) with decoder linears held compact outside their passes.

    Compact plans come second because each use of a compact weight costs a dequantization
    (gguf-py: a 1.5B decoder's linears take ~5.5 s a thread on a quiet machine, per forward and
    again per backward), while a bound that holds the materialised model only adds passes.

    Args:
        model_config: The transformers config (for the activation estimate).
        targets, numels, budget, resident: As `plan_groups` (`resident` measured with the model loaded).
        seq_len: Tokens per window.
        dtype: The scoring dtype.
        first_layer: The first layer a pass starting at a tensor backpropagates to.
        checkpointable: The model has decoder blocks to checkpoint.
        compact: `{module}.weight` -> bytes once materialised, for every linear the model holds
            in its file bytes (none: the model is materialised already).
        held: Bytes of those file bytes (freed before every linear is materialised for good).
        dequant_bytes: The transient of one dequantization.

    Raises:
        ConfigError: no plan fits the budget (the error of the smallest need).
    """
    import torch

    compact = compact or {}
    n_layers = getattr(model_config, "num_hidden_layers", 1)
    options = [False] + ([True] if budget is not None and checkpointable else [])
    grad_bytes = torch.finfo(dtype).bits // 8
    errors: list[ConfigError] = []
    for keep_compact in ([False, True] if compact else [False]):
        plans = []
        for ckpt in options:
            try:
                plan = plan_groups(targets, numels, budget=budget, grad_bytes=grad_bytes,
                                   resident=resident if keep_compact else resident - held + sum(compact.values()),
                                   activations=lambda name, ckpt=ckpt: activation_bytes(model_config, seq_len, dtype, first_layer(name), ckpt),
                                   weights=compact if keep_compact else None, dequant_bytes=dequant_bytes if keep_compact else 0)
            except ConfigError as exc:
                errors.append(exc)
                continue
            plan.checkpointed = ckpt
            plans.append(plan)
        if plans:
            return min(plans, key=lambda p: pass_cost(p.groups, n_layers, p.checkpointed, first_layer))
    raise errors[-1]
