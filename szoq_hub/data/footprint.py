"""A model before its weights: its config, a meta-device skeleton, its decoder linears, and how
much memory it will take once opened (and whether this machine has it), all before loading.

Loading a model that does not fit ends in the kernel's OOM killer (a bare `Killed`, no message)
or in swap, minutes in. The estimate below needs only the config (a meta-device skeleton) and is
deliberately simple: parameter bytes in the form the runtime keeps them, plus a fixed allowance
for the interpreter, torch and activations of a small batch. It is checked against the memory
the kernel reports as available (`MemAvailable`, which counts reclaimable page cache): only a
clear shortfall is refused, so an estimate that is somewhat off never blocks a run that fits.

Bytes per parameter, by form (measured on SmolLM2-135M and Qwen2.5-1.5B, README figures):
- nf4 / fp4 decoder linears: 0.5 (two codes a byte) + 4 / 64 (one fp32 absmax per 64-block).
- int8 decoder linears: 1 + 4 / out_features (row scales), rounded to 1.07.
- everything else (embeddings, norms, biases, an untied lm_head): the compute dtype's size.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from ..core.errors import ModelError

log = logging.getLogger(__name__)

OVERHEAD = 600 * 10**6  # interpreter, torch, tokenizer and a small batch's activations (SmolLM2 nf4 eval: ~0.6 GB)
_LINEAR_BYTES = {"nf4": 0.5 + 4 / 64, "fp4": 0.5 + 4 / 64, "int8": 1.07}


def available_bytes() -> int | None:
    """Memory the kernel can give this process now (`MemAvailable`), or None when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # psutil missing or unsupported platform: no check
        return None


def model_bytes(source, *, quant: str, dtype: torch.dtype, extra_linear_copies: int = 0) -> int:
    """Estimated resident bytes of a model opened in a given form (parameters + `OVERHEAD`).

    Args:
        source: A resolved `ModelSource` (only its config is read).
        quant: `nf4`, `fp4`, `int8` for a quantized base of decoder linears; `none` for every
            parameter in `dtype`.
        dtype: Compute dtype of what is not quantized.
        extra_linear_copies: fp32 copies of the decoder linears the method keeps besides the
            weights (dense ZO momentum: 1, Adam: 2).
    """
    model = skeleton(load_config(source))
    linears = set(decoder_linears(model))
    size = torch.finfo(dtype).bits // 8
    total = 0.0
    linear_numel = 0
    for name, p in model.named_parameters():  # tied parameters appear once
        if name in linears:
            linear_numel += p.numel()
            total += p.numel() * _LINEAR_BYTES.get(quant, size)
        else:
            total += p.numel() * size
    return int(total + 4 * linear_numel * extra_linear_copies + OVERHEAD)


def format_gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def check_fits(need: int, *, what: str, hint: str) -> None:
    """Refuse to load when the estimate clearly exceeds the memory available now.

    Args:
        need: Estimated bytes (`model_bytes`).
        what: What is being opened, for the message (`qwen.gguf as nf4 + bf16`).
        hint: What the user can do instead.

    Raises:
        ModelError: `need` exceeds the available memory.
    """
    avail = available_bytes()
    log.info("%s needs ~%s; %s available", what, format_gb(need), format_gb(avail) if avail is not None else "unknown")
    if avail is not None and need > avail:
        raise ModelError(f"not enough memory: {what} needs about {format_gb(need)}, this machine has {format_gb(avail)} available", hint=hint)


def load_config(source):
    """Load the transformers config of a resolved source (a `models.ModelSource`; no weights)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(source.path)


def skeleton(config, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The causal LM of `config` with every parameter on the meta device (no weight memory)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def decoder_linears(model: nn.Module) -> dict[str, bool]:
    """The weights of the model's linear layers (not embeddings or lm_head), in model order: the one place linears are found.

    GPT-2's `Conv1D` is a linear whose weight is stored transposed ([in, out]).

    Returns:
        `{module}.weight` -> True when the weight is stored transposed (Conv1D).
    """
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        Conv1D = None
    linear_types: tuple[type, ...] = (nn.Linear,) if Conv1D is None else (nn.Linear, Conv1D)
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {f"{name}.weight": Conv1D is not None and isinstance(module, Conv1D)
            for name, module in model.named_modules() if isinstance(module, linear_types) and module is not out_emb}
