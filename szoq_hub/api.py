"""The public Python API: Hub-mixin methods of `SensitivityMask` and `Delta`, and what they call.

`SensitivityMask` (mask.py) and `Delta` (delta.py) are data classes low in the module graph:
the registry, the Hub transport, refs and the runtime import them to load and verify. Their
Hugging-Face-style methods need exactly those higher layers (refs to resolve a REF, the Hub to
pull and push, the runtime to merge into a sparse model), so they are defined here and set on
the classes when this module is imported, which `import szoq_hub` (and any `szoq_hub.*`
import) does first. Imports keep pointing one way (tests/test_imports.py); each method is a
thin call into the library function the CLI uses too.
"""

from __future__ import annotations

import tempfile
from pathlib import Path


from .masks.build import MaskBuildConfig, build_mask
from .runtime.delta import DELTA_FILE, Delta, delta_path, load_delta, write_into
from .hub.deltas import push_delta
from .core.errors import FingerprintMismatch, MaskError, RegistryError, SzoqError
from .training.finetune import FinetuneConfig, FinetuneResult, finetune
from .runtime.zo import ZOConfig
from .hub.masks import push_mask
from .masks.artifact import MASK_FILE, MaskConfig, SensitivityMask, file_sha256, load_mask, save_mask
from .data.models import fingerprint_from, parameter_layout, resolve_model
from .hub.refs import resolve_delta_ref, resolve_mask_ref
from .masks.registry import Registry
from .runtime.sparse import SparseModel, load_sparse_model
from .hub.transport import PushResult

__all__ = ["SensitivityMask", "MaskConfig", "MaskBuildConfig", "build_mask", "load_sparse_model", "SparseModel",
           "FinetuneConfig", "FinetuneResult", "ZOConfig", "finetune", "Delta", "SzoqError"]


# -- SensitivityMask -------------------------------------------------------------------------
def _mask_from_pretrained(cls, ref: str | Path, *, model: str | None = None, offline: bool = False) -> SensitivityMask:
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


def _mask_push_to_hub(self: SensitivityMask, repo_id: str, *, tag: str | None = None, private: bool = False, token: str | None = None,
                      create_pr: bool = False, message: str | None = None) -> PushResult:
    """Publish the mask to a Hub model repo in one commit, then tag it (`hub.push_mask`).

    A mask loaded from the local registry pushes that entry (default tag: its version; the
    registry records the push); one loaded from a folder pushes that folder's files; a mask made
    in memory is written to a temporary folder first. Outside the registry `tag` is required.

    Returns:
        `PushResult` (URL, commit, tag; status `unchanged` when the tag already holds it).

    Raises:
        ConfigError, MaskError, RegistryError, HubError: see `hub.push_mask`.
    """
    kwargs = dict(repo_id=repo_id, tag=tag, private=private, token=token, create_pr=create_pr, message=message)
    if self.ref is not None and not Path(self.ref).expanduser().exists() and Registry().find(self.ref) is not None:
        return push_mask(self.ref, **kwargs)
    if self.path is not None:
        return push_mask(str(self.path), **kwargs)
    with tempfile.TemporaryDirectory(prefix="szoq-push-") as tmp:
        return push_mask(str(save_mask(self, Path(tmp) / "mask")), **kwargs)


# -- Delta -----------------------------------------------------------------------------------
def _delta_from_pretrained(cls, ref: str | Path, *, token: str | None = None, offline: bool = False) -> Delta:
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


def _delta_push_to_hub(self: Delta, repo_id: str, *, tag: str | None = None, private: bool = False, token: str | None = None,
                       create_pr: bool = False, message: str | None = None) -> PushResult:
    """Publish the delta to a Hub model repo in one commit, then tag it (`delta_hub.push_delta`).

    A delta loaded from a folder pushes that folder's files (never checkpoints); one made in
    memory is written to a temporary folder first. Default tag: `v1`, or the next `vN`.

    Returns:
        `PushResult`.

    Raises:
        ConfigError, MaskError, HubError: see `delta_hub.push_delta`.
    """
    kwargs = dict(repo_id=repo_id, tag=tag, private=private, token=token, create_pr=create_pr, message=message)
    if self.path is not None and (Path(self.path) / DELTA_FILE).is_file():
        return push_delta(self.path, **kwargs)
    with tempfile.TemporaryDirectory(prefix="szoq-push-") as tmp:
        return push_delta(self.save_pretrained(Path(tmp) / "delta"), **kwargs)


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


def _delta_merge_into(self: Delta, model, mask: SensitivityMask | None = None):
    """Write the fine-tuned values into a model's weights, in place.

    Args:
        model: The base model the delta was fine-tuned from: a transformers model (any dtype or
            device; `W.flatten()[mask] = values`, what `szoq merge` saves) or a `SparseModel`
            (its sparse value vector is replaced).
        mask: The mask it was fine-tuned with; default the SparseModel's own, else the mask its
            settings name. Either way it must be the file the delta was trained with (sha256).

    Returns:
        `model`.

    Raises:
        FingerprintMismatch: another mask. MaskError: names or sizes that do not fit the model.
    """
    if isinstance(model, SparseModel):
        self.check_mask(model.mask)
        model.load_delta(self.tensors)
        return model
    if mask is None:
        mask = _recorded_mask(self)
    else:
        self.check_mask(mask)
    return write_into(model, self, mask)


SensitivityMask.from_pretrained = classmethod(_mask_from_pretrained)
SensitivityMask.push_to_hub = _mask_push_to_hub
Delta.from_pretrained = classmethod(_delta_from_pretrained)
Delta.push_to_hub = _delta_push_to_hub
Delta.merge_into = _delta_merge_into
for _f, _name in ((_mask_from_pretrained, "from_pretrained"), (_mask_push_to_hub, "push_to_hub"), (_delta_from_pretrained, "from_pretrained"),
                  (_delta_push_to_hub, "push_to_hub"), (_delta_merge_into, "merge_into")):
    _f.__name__ = _f.__qualname__ = _name  # help() and tracebacks show the method names
