"""`merge`: bake a fine-tuned run (a sparse delta, dense weights, a LoRA adapter, ...) into a plain
transformers model folder; the run's method (szoq_hub/methods/) writes its result into the weights."""

from __future__ import annotations

import logging
from pathlib import Path

from ..core.devices import DTYPES, resolve_device
from ..core.errors import ConfigError, TrainingError
from ..core.paths import atomic_dir, disk_errors
from ..methods import method_of_result

log = logging.getLogger(__name__)

def merge(*, delta: str | Path, out: str | Path, model: str | None = None, mask_ref: str | None = None, dtype: str = "fp32",
          device: str = "auto", revision: str | None = None) -> Path:
    """Write `out` as a standard transformers folder whose masked weights hold the delta's values.

    The runtime keeps masked weights exactly as the fine-tuned fp32 values, so the merged
    weight is W with W.flatten()[M] = values (the quantized base is not involved: the merge is
    made on the original full-precision weights).

    Every method merges through its `MethodResult.merged`: a dense run (`finetune --dense`) is the
    base model with its trained linear weights; a LoRA run (`finetune --lora`) adds (alpha / r) B A
    to each adapted weight.

    Args:
        delta: Run folder or delta file (or a dense run's folder / dense.safetensors).
        out: Output folder (must not exist or be empty).
        model: The base model the delta was trained on (default: the one its header records).
        mask_ref: The mask the delta was trained with (default: the one its header records).
        dtype: fp32, bf16 or fp16 for the saved weights.
        device: Where the weights are patched (`auto`, `cpu`, `cuda`, `cuda:N`); the folder
            written is the same on every device.
        revision: Hub revision of the model.

    Returns:
        The folder written.

    Raises:
        ConfigError: unknown dtype or device, CUDA unavailable. TrainingError: `out` not empty.
        FingerprintMismatch, MaskError: delta not fitting the model/mask, or corrupt.
    """
    if dtype not in DTYPES:
        raise ConfigError(f"unknown --dtype {dtype!r}", hint=f"choose one of: {', '.join(DTYPES)}")
    target = resolve_device(device)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TrainingError(f"--out {out} already exists and is not empty", hint="choose another --out folder or remove it")
    method = method_of_result(delta)  # the run's method writes its result into the base weights
    loaded = method.result_cls.merged(delta, model=model, mask_ref=mask_ref, revision=revision, device=target)
    source, nnz = loaded.source, loaded.nnz
    loaded.model.to(DTYPES[dtype])
    # A model converted from GGUF carries the GGUF's internal name (e.g. "Smollm2 135M 8k Lc100K
    # Mix1 Ep2"); the merged folder is named after the base model it was trained on instead.
    vars(loaded.model.config).pop("_model_name_or_path", None)
    loaded.model.config.name_or_path = source.base_model
    with disk_errors(out), atomic_dir(out) as tmp:
        loaded.model.save_pretrained(tmp)
        loaded.tokenizer.save_pretrained(tmp)
    log.info("merged %d values into %s", nnz, out)
    return out
