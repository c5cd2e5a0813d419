"""`SensitivityMask`: a mask that loads any REF and publishes itself (`HubMixin`, mixin.py).

The mask's data (`MaskData`: indices + `MaskConfig`, masks/artifact.py) is what the runtime,
the registry and the transport read; this class adds the Hugging Face style methods on top, so it
sits with the Hub code and imports the refs and the transport at the top of the module, the way
huggingface_hub keeps its mixin above its client.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..data.models import fingerprint_from, parameter_layout, resolve_model
from ..masks.artifact import MaskData, load_mask, save_mask
from ..masks.registry import Registry
from .masks import push_mask
from .mixin import HubMixin
from .refs import resolve_mask_ref
from .transport import PushResult


class SensitivityMask(MaskData, HubMixin):
    """A loaded, verified mask: sorted unique int32 flat indices per parameter name (and, from
    a fisher build, the kept weights' scores).

    The Python API follows the Hugging Face mixins (`HubMixin`): `save_pretrained(folder)` writes
    the artifact; `from_pretrained(ref, model=None)` takes any REF the CLI takes;
    `push_to_hub(repo_id)` publishes it (a registry entry by its version).

    Attributes:
        indices: name -> sorted unique int32 flat indices [nnz_name].
        config: The facts (base model, fingerprint, density, stats, ...).
        ref: The REF `from_pretrained` was given (None for a mask built in memory).
        path: The artifact folder it was read from or written to (None when there is none).
        scores: name -> fp32 scores of the kept weights [nnz_name], or None (see `MaskData`).
    """

    @classmethod
    def of(cls, mask: MaskData) -> SensitivityMask:
        """The same mask (indices, config, ref, path, scores shared) with the Hub methods."""
        return mask if isinstance(mask, cls) else cls(mask.indices, mask.config, ref=mask.ref, path=mask.path, scores=mask.scores)

    def _save_pretrained(self, folder: Path) -> Path:
        """Write the artifact folder (`mask.safetensors`, `mask_config.json`, card) atomically."""
        self.path = save_mask(self, folder)
        return self.path

    @classmethod
    def _from_pretrained(cls, ref: str | Path, *, offline: bool = False, model: str | None = None) -> SensitivityMask:
        """Resolve, load and verify a mask.

        Args:
            ref: An artifact folder (or its `mask.safetensors`), `NAME[@VERSION]` in the local
                registry, a built-in mask name, or `ORG/NAME[@REV]` on the Hub (pulled into the
                registry on first use).
            model: When given, the mask must have been built for this model (fingerprint and shapes).
            offline: Read Hub refs only from the local Hugging Face cache.

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
        mask = cls.of(load_mask(folder, fingerprint=fingerprint, layout=layout))
        mask.ref, mask.path = str(ref), Path(folder)
        return mask

    def _push_to_hub(self, repo_id: str, *, tag: str | None = None, private: bool = False, token: str | None = None,
                     create_pr: bool = False, message: str | None = None) -> PushResult:
        """Publish the mask in one commit, then tag it (`hub.masks.push_mask`).

        A mask loaded from the local registry pushes that entry (default tag: its version; the
        registry records the push); one loaded from a folder pushes that folder's files; a mask made
        in memory is written to a temporary folder first. Outside the registry `tag` is required.
        """
        kwargs = dict(repo_id=repo_id, tag=tag, private=private, token=token, create_pr=create_pr, message=message)
        if self.ref is not None and not Path(self.ref).expanduser().exists() and Registry().find(self.ref) is not None:
            return push_mask(self.ref, **kwargs)
        if self.path is not None:
            return push_mask(str(self.path), **kwargs)
        with tempfile.TemporaryDirectory(prefix="szoq-push-") as tmp:
            return push_mask(str(save_mask(self, Path(tmp) / "mask")), **kwargs)
