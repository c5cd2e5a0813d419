"""The hooks of the Hub-mixin methods of `SensitivityMask` and `Delta` (core/hub_mixin.py).

`SensitivityMask.from_pretrained`, `.push_to_hub`, `Delta.from_pretrained`, `.push_to_hub` and
`.merge_into` are defined on the classes; their hooks call these functions, imported when called,
because resolving a REF, pulling, pushing and merging into a `SparseModel` need the layers above
the classes (refs, the transport, the runtime). Each is a thin call into the library function the
CLI uses too.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..core.errors import FingerprintMismatch, MaskError, RegistryError
from ..data.models import fingerprint_from, parameter_layout, resolve_model
from ..masks.artifact import MASK_FILE, SensitivityMask, load_mask, save_mask
from ..core.files import file_sha256
from ..masks.registry import Registry
from ..runtime.delta import DELTA_FILE, Delta, delta_path, load_delta, write_into
from ..runtime.sparse import SparseModel
from .deltas import push_delta
from .masks import push_mask
from .refs import resolve_delta_ref, resolve_mask_ref
from .transport import PushResult


# -- SensitivityMask -------------------------------------------------------------------------
def mask_from_pretrained(ref: str | Path, *, model: str | None = None, offline: bool = False) -> SensitivityMask:
    """Resolve, load and verify a mask.

    Args:
        ref: An artifact folder (or its `mask.safetensors`), `NAME[@VERSION]` in the local
            registry, a built-in mask name, or `ORG/NAME[@REV]` on the Hub (pulled into the
            registry on first use).
        model: When given, the mask must have been built for this model (fingerprint and shapes).
        offline: Read Hub refs only from the local Hugging Face cache.

    Returns:
        The verified mask, with `ref` and `path` set.

    Raises:
        RegistryError: nothing by that name. HubError: a Hub ref that cannot be pulled.
        MaskError: a corrupt artifact. FingerprintMismatch: built for another model.
    """
    fingerprint, layout = None, None
    if model is not None:
        source = resolve_model(model)
        layout = parameter_layout(source)  # the recorded shapes must be this model's too
        fingerprint = fingerprint_from(layout, source.identity)
    folder = resolve_mask_ref(str(ref), offline=offline)
    mask = load_mask(folder, fingerprint=fingerprint, layout=layout)
    mask.ref, mask.path = str(ref), Path(folder)
    return mask


def push_mask_object(mask: SensitivityMask, repo_id: str, *, tag: str | None = None, private: bool = False, token: str | None = None,
                      create_pr: bool = False, message: str | None = None) -> PushResult:
    """Publish the mask to a Hub model repo in one commit, then tag it (`hub.masks.push_mask`).

    A mask loaded from the local registry pushes that entry (default tag: its version; the
    registry records the push); one loaded from a folder pushes that folder's files; a mask made
    in memory is written to a temporary folder first. Outside the registry `tag` is required.

    Returns:
        `PushResult` (URL, commit, tag; status `unchanged` when the tag already holds it).

    Raises:
        ConfigError, MaskError, RegistryError, HubError: see `hub.masks.push_mask`.
    """
    kwargs = dict(repo_id=repo_id, tag=tag, private=private, token=token, create_pr=create_pr, message=message)
    if mask.ref is not None and not Path(mask.ref).expanduser().exists() and Registry().find(mask.ref) is not None:
        return push_mask(mask.ref, **kwargs)
    if mask.path is not None:
        return push_mask(str(mask.path), **kwargs)
    with tempfile.TemporaryDirectory(prefix="szoq-push-") as tmp:
        return push_mask(str(save_mask(mask, Path(tmp) / "mask")), **kwargs)


# -- Delta -----------------------------------------------------------------------------------
def delta_from_pretrained(ref: str | Path, *, token: str | None = None, offline: bool = False) -> Delta:
    """Load and verify a delta.

    Args:
        ref: A `szoq finetune` output folder, a `delta.safetensors`, or `ORG/NAME[@REV]` on the
            Hub (downloaded into the Hugging Face cache and verified).
        token: Hub token; default `HF_TOKEN` or the login.
        offline: Read Hub refs only from the local cache.

    Returns:
        The verified delta, with `path` set to its folder.

    Raises:
        MaskError: missing, unfinished or corrupt. HubError: a Hub ref that cannot be pulled.
    """
    path = delta_path(resolve_delta_ref(ref, token=token, offline=offline))
    delta = load_delta(path)
    delta.path = path.parent
    return delta


def push_delta_object(delta: Delta, repo_id: str, *, tag: str | None = None, private: bool = False, token: str | None = None,
                       create_pr: bool = False, message: str | None = None) -> PushResult:
    """Publish the delta to a Hub model repo in one commit, then tag it (`hub.deltas.push_delta`).

    A delta loaded from a folder pushes that folder's files (never checkpoints); one made in
    memory is written to a temporary folder first. Default tag: `v1`, or the next `vN`.

    Returns:
        `PushResult`.

    Raises:
        ConfigError, MaskError, HubError: see `hub.deltas.push_delta`.
    """
    kwargs = dict(repo_id=repo_id, tag=tag, private=private, token=token, create_pr=create_pr, message=message)
    if delta.path is not None and (Path(delta.path) / DELTA_FILE).is_file():
        return push_delta(delta.path, **kwargs)
    with tempfile.TemporaryDirectory(prefix="szoq-push-") as tmp:
        return push_delta(delta.save_pretrained(Path(tmp) / "delta"), **kwargs)


def _recorded_mask(delta: Delta) -> SensitivityMask:
    """The mask a delta's settings name, refused unless it is the file it was trained with."""
    ref = delta.settings.get("mask")
    if not ref:
        raise MaskError("the delta does not name its mask", hint="pass mask=SensitivityMask.from_pretrained(REF)")
    try:
        folder = resolve_mask_ref(ref)
    except RegistryError:  # a local folder is recorded by its name only (deltas never carry local paths)
        raise MaskError(f"the delta names its mask {ref!r}, which is no mask folder, registry, built-in or Hub mask here",
                        hint="pass mask=SensitivityMask.from_pretrained(FOLDER) of the mask it was fine-tuned with") from None
    if file_sha256(folder / MASK_FILE) != delta.mask_sha256:
        raise FingerprintMismatch(f"the mask {ref} named by the delta is not the one it was fine-tuned with",
                                  hint="pass mask=SensitivityMask.from_pretrained(REF) of the mask it was trained with")
    mask = load_mask(folder)
    mask.ref, mask.path = ref, folder
    return mask


def merge_delta_into(delta: Delta, model, mask: SensitivityMask | None = None):
    """`Delta.merge_into` (its docstring says what it takes, returns and raises)."""
    if isinstance(model, SparseModel):
        delta.check_mask(model.mask)
        model.load_delta(delta.tensors)
        return model
    if mask is None:
        mask = _recorded_mask(delta)
    else:
        delta.check_mask(mask)
    return write_into(model, delta, mask)
