"""Setup shared by finetune, evaluate, merge and the PEFT export: opening a model with its mask,
the model and mask a delta names, and scoring a model on encoded examples (sharded under torchrun)."""

from __future__ import annotations

from pathlib import Path

import torch.distributed as dist

from ..core.devices import world
from ..core.errors import FingerprintMismatch
from ..data.models import DEFAULT_MODEL, ModelSource, fingerprint_from, parameter_layout, resolve_model
from ..data.scoring import Encoded, metric_value, predict
from ..hub.refs import resolve_mask_ref
from ..masks.artifact import MASK_FILE, SensitivityMask, load_mask
from ..core.files import file_sha256
from ..runtime.delta import delta_origin
from ..core.defaults import DEFAULT_MASK


def open_model_and_mask(model: str, mask_ref: str, revision: str | None = None) -> tuple[ModelSource, str, SensitivityMask, str]:
    """Resolve the model and open its mask, checking the fingerprint before any weight loads.

    Args:
        model: Model alias, Hub id, folder or .gguf file.
        mask_ref: Mask folder, registry name, built-in name or Hub ref.
        revision: Hub revision of the model.

    Returns:
        (source, fingerprint, mask, mask file sha256).

    Raises:
        ModelError, RegistryError, FingerprintMismatch.
        MaskError: a corrupt mask, or one whose recorded shapes are not the model's.
    """
    source = resolve_model(model, revision=revision)
    layout = parameter_layout(source)
    fingerprint = fingerprint_from(layout, source.identity)
    folder = resolve_mask_ref(mask_ref)
    mask = load_mask(folder, fingerprint=fingerprint, layout=layout)  # recorded shapes must be the model's
    return source, fingerprint, mask, file_sha256(folder / MASK_FILE)


def open_model_and_fitting_mask(model: str, mask_ref: str, revision: str | None = None) -> tuple[ModelSource, SensitivityMask | None]:
    """The model and, when it was built for this model, the mask: a score with no delta needs no mask.

    The built-in model keeps its built-in mask (its masked weights stay exact fp32, so zero-shot
    scores are what they always were); any other model runs as its quantized base, no mask.

    Returns:
        (source, the mask or None).

    Raises:
        ModelError, RegistryError: the model or mask cannot be opened.
        MaskError: a corrupt mask.
    """
    try:
        source, _, mask, _ = open_model_and_mask(model, mask_ref, revision)
    except FingerprintMismatch:
        return resolve_model(model, revision=revision), None
    return source, mask


def model_and_mask_for(delta: str | Path | None, model: str | None, mask: str | None) -> tuple[str, str]:
    """The model and mask to load for a delta: the ones given, else the ones it was trained with.

    Without a delta (or where its header records nothing), the built-in defaults.

    Returns:
        (model ref, mask ref).
    """
    if delta is not None and (model is None or mask is None):
        trained_model, trained_mask = delta_origin(delta)
        model, mask = model or trained_model, mask or trained_mask
    return model or DEFAULT_MODEL, mask or DEFAULT_MASK


def distributed_predict(model, examples: list[Encoded], pad_id: int, batch_size: int) -> list[int]:
    """Predictions for all examples; under torchrun each rank scores a shard and they are gathered."""
    rank, size = world()
    if size == 1:
        return predict(model, examples, pad_id, batch_size)
    mine = predict(model, examples[rank::size], pad_id, batch_size) if examples[rank::size] else []
    gathered: list[list[int]] = [None] * size  # type: ignore[list-item]
    dist.all_gather_object(gathered, mine)
    preds = [0] * len(examples)
    for r, part in enumerate(gathered):
        preds[r::size] = part
    return preds


def score(model, examples: list[Encoded], metric: str, pad_id: int, batch_size: int) -> float:
    """The task metric of the model on encoded examples (sharded over ranks under torchrun)."""
    preds = distributed_predict(model, examples, pad_id, batch_size)
    return metric_value(metric, preds, [e.label for e in examples])
