"""`merge`: bake a fine-tuned run (a sparse delta, dense weights, a LoRA adapter, ...) into a plain
transformers model folder; the run's method (szoq_hub/methods/) writes its result into the weights."""

from __future__ import annotations

import logging
from pathlib import Path

from ..core.devices import DTYPES, resolve_device
from ..core.files import atomic_dir, disk_errors
from ..core.errors import TrainingError
from ..methods import method_of_result
from .config import MergeConfig

log = logging.getLogger(__name__)


def merge(config: MergeConfig | None = None, /, **settings) -> Path:
    """Write `config.out` as a standard transformers folder whose masked weights hold the delta's values.

    The runtime keeps masked weights exactly as the fine-tuned fp32 values, so the merged
    weight is W with W.flatten()[M] = values (the quantized base is not involved: the merge is
    made on the original full-precision weights).

    Every method merges through its `MethodResult.merged`: a dense run (`finetune --dense`) is the
    base model with its trained linear weights; a LoRA run (`finetune --lora`) adds (alpha / r) B A
    to each adapted weight.

    Args:
        config: The settings (`MergeConfig`: delta, out, model, mask_ref, dtype, device, revision).
        **settings: Or the same settings as keywords, e.g. `merge(delta="runs/sst2", out="merged")`.

    Returns:
        The folder written.

    Raises:
        ConfigError: unknown dtype or device, CUDA unavailable. TrainingError: `out` not empty.
        FingerprintMismatch, MaskError: delta not fitting the model/mask, or corrupt.
    """
    config = config if config is not None else MergeConfig(**settings)
    delta, model, mask_ref, revision = config.delta, config.model, config.mask_ref, config.revision
    target = resolve_device(config.device)
    out = Path(config.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TrainingError(f"--out {out} already exists and is not empty", hint="choose another --out folder or remove it")
    method = method_of_result(delta)  # the run's method writes its result into the base weights
    loaded = method.result_cls.merged(delta, model=model, mask_ref=mask_ref, revision=revision, device=target)
    source, nnz = loaded.source, loaded.nnz
    loaded.model.to(DTYPES[config.dtype])
    # A model converted from GGUF carries the GGUF's internal name (e.g. "Smollm2 135M 8k Lc100K
    # Mix1 Ep2"); the merged folder is named after the base model it was trained on instead.
    vars(loaded.model.config).pop("_model_name_or_path", None)
    loaded.model.config.name_or_path = source.base_model
    with disk_errors(out), atomic_dir(out) as tmp:
        loaded.model.save_pretrained(tmp)
        loaded.tokenizer.save_pretrained(tmp)
    log.info("merged %d values into %s", nnz, out)
    return out
