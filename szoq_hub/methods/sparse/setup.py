"""Opening a model with its mask (the sparse method's training, eval, merge and PEFT export, and
zero-shot eval), and the model and mask a delta names."""

from __future__ import annotations

from pathlib import Path

from ...core.defaults import DEFAULT_MASK, DEFAULT_MODEL
from ...core.errors import FingerprintMismatch, MaskError
from ...core.files import file_sha256
from ...data.models import ModelSource, fingerprint_from, parameter_layout, resolve_model
from ...hub.refs import resolve_mask_ref
from ...masks.artifact import MASK_FILE, MaskData, load_mask
from ...core import schema
from ...masks.registry import mask_name_for_sha256
from .delta import FORMAT, delta_path, file_exists, recorded_name


def open_model_and_mask(model: str, mask_ref: str, revision: str | None = None) -> tuple[ModelSource, str, MaskData, str]:
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
    try:
        mask = load_mask(folder, fingerprint=fingerprint, layout=layout)  # recorded shapes must be the model's
    except FingerprintMismatch as exc:
        raise FingerprintMismatch(*_mismatch_with_values(exc, model, mask_ref)) from None
    return source, fingerprint, mask, file_sha256(folder / MASK_FILE)



def _mismatch_with_values(exc: FingerprintMismatch, model: str, mask_ref: str) -> tuple[str, str]:
    """The mismatch message and a hint naming the user's own model, and saying when the mask
    tried was the built-in default (a forgotten --mask on a new model)."""
    import shlex

    from ...masks.build import default_mask_name
    from ...masks.build_plan import MaskBuildConfig

    message = exc.message
    if mask_ref == DEFAULT_MASK:
        message += f"; the mask tried was the built-in default {DEFAULT_MASK} (no --mask given)"
    try:
        name = default_mask_name(MaskBuildConfig(model=model))  # the registry name the build below gets
    except Exception:  # a model name the registry would not accept: the build names it itself
        name = "NAME"
    return message, f"build a mask for {model} with: szoq mask build {shlex.quote(model)}, then pass --mask {name}"

def open_model_and_fitting_mask(model: str, mask_ref: str, revision: str | None = None) -> tuple[ModelSource, MaskData | None]:
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


def delta_origin(ref: str | Path) -> tuple[str | None, str | None]:
    """(model, mask) a delta was trained with.

    Used as the defaults of `eval --delta` and `merge --delta`: a delta is only valid with its
    own base and mask. The run folder's `finetune_config.json` names them as given on this
    machine (the delta header keeps only the last part of a local path: it is shared); else the
    header's names serve (aliases and Hub refs are whole there). The mask is a local one holding
    the same content when there is one (no download).

    Returns:
        (model ref or None, mask ref or None); (None, None) when the header cannot be read
        (`load_delta` then says why).
    """
    path = delta_path(ref)
    if not file_exists(path):
        return None, None
    try:
        meta = schema.read_header(path).metadata
    except MaskError:
        return None, None
    if meta.get("format") != FORMAT:
        return None, None
    settings = schema.settings_of(meta)  # a hostile "[]" or deep nesting: no defaults, load_delta says why
    run_config = path.parent / "finetune_config.json"
    if file_exists(run_config):
        try:
            local = schema.run_config(run_config, MaskError)
        except MaskError:
            local = None
        if local is not None and local.get("fingerprint") == meta.get("fingerprint"):  # the config of this very run
            settings = {**settings, "model": local["settings"].get("model", settings.get("model")),
                        "mask_ref": local.get("mask_ref") or settings.get("mask_ref")}
    mask = mask_name_for_sha256(meta.get("mask_sha256", "")) or recorded_name(settings.get("mask_ref")) or recorded_name(settings.get("mask"))
    return recorded_name(settings.get("model")), mask
