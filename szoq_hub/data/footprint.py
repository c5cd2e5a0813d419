"""How much memory a model will take once opened, and whether this machine has it, before loading.

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
    from .models import _linear_weight_names, _skeleton, load_config

    model = _skeleton(load_config(source))
    linears = set(_linear_weight_names(model))
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
