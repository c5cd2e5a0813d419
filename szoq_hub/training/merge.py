"""`merge`: bake a fine-tuned sparse delta into a plain transformers model folder."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..runtime.delta import load_delta, write_into
from ..runtime.dense import is_dense_file, load_dense_result
from ..runtime.lora_file import is_lora_file
from ..core.devices import DTYPES, resolve_device
from ..core.files import atomic_dir, disk_errors
from ..core.errors import ConfigError, MaskError, TrainingError
from .config import MergeConfig, refuse_dense_options
from .setup import model_and_mask_for, open_model_and_mask
from ..data.models import DEFAULT_MODEL, load_model

log = logging.getLogger(__name__)

def merge(config: MergeConfig | None = None, /, **settings) -> Path:
    """Write `config.out` as a standard transformers folder whose masked weights hold the delta's values.

    The runtime keeps masked weights exactly as the fine-tuned fp32 values, so the merged
    weight is W with W.flatten()[M] = values (the quantized base is not involved: the merge is
    made on the original full-precision weights).

    A dense run (`finetune --dense`) is merged the same way: the base model with its trained
    linear weights. A LoRA run (`finetune --lora`) adds (alpha / r) B A to each adapted weight.

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
    if is_lora_file(delta):  # a `finetune --lora` run: W + (alpha / r) B A on the full-precision base
        loaded, nnz = _merge_lora(delta, model=model, mask_ref=mask_ref, revision=revision, target=target)
        source = loaded.source
    elif is_dense_file(delta):  # a `finetune --dense` run: its trained weights replace the base's
        refuse_dense_options(str(delta), mask=mask_ref)
        loaded = load_dense_result(delta, model=model, revision=revision, device=target)
        source, nnz = loaded.source, loaded.numel
    else:
        model, mask_ref = model_and_mask_for(delta, model, mask_ref)
        source, fingerprint, mask, mask_sha = open_model_and_mask(model, mask_ref, revision)
        loaded_delta = load_delta(delta, mask=mask, mask_sha256=mask_sha, fingerprint=fingerprint, mask_ref=mask_ref)
        loaded = load_model(source, dtype=torch.float32)
        loaded.model.to(target)
        write_into(loaded.model, loaded_delta, mask)  # W.flatten()[M] = values, in fp32 (what Delta.merge_into does)
        nnz = mask.nnz
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


def _merge_lora(delta: str | Path, *, model: str | None, mask_ref: str | None, revision: str | None, target: torch.device):
    """The fp32 base model with a LoRA run's (alpha / r) B A added to each adapted weight.

    Returns:
        (the loaded model, how many adapter values were merged).

    Raises:
        ConfigError: a --mask given. FingerprintMismatch: another base model. MaskError: a bad adapter file,
            or one naming a weight the model lacks.
    """
    from ..data.models import model_fingerprint, resolve_model
    from ..runtime.lora_file import load_lora

    if mask_ref is not None:
        raise ConfigError(f"--mask does not apply to {delta}: a LoRA run's adapters sit on the base model, no mask",
                          hint="drop --mask to merge a --lora run")
    adapter = load_lora(delta)
    source = resolve_model(model or adapter.model_ref or DEFAULT_MODEL, revision=revision)
    adapter.check_fingerprint(model_fingerprint(source))
    loaded = load_model(source, dtype=torch.float32)
    loaded.model.to(target)
    params = dict(loaded.model.named_parameters())
    with torch.no_grad():
        for name, update in adapter.weight_deltas().items():  # [out, in] fp32
            if name not in params or params[name].shape != update.shape:
                raise MaskError(f"the model has no weight {name} of shape {list(update.shape)}",
                                hint="merge into the base model the LoRA run was trained on")
            params[name].add_(update.to(params[name].device))
    return loaded, sum(t.numel() for t in adapter.tensors.values())
