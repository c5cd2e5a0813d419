"""`HubMixin`: `from_pretrained` / `save_pretrained` / `push_to_hub` on the artifact classes.

The shape of huggingface_hub's `ModelHubMixin`: the public methods live here, on the class, where
`help()`, IDEs and type checkers see them; each calls a hook its subclass implements
(`_from_pretrained`, `_save_pretrained`, `_push_to_hub`). The mixin lives with the Hub code;
the artifacts that publish themselves sit above it and import it, and the Hub functions they
call, at the top of their module: `SensitivityMask` (hub/sensitivity_mask.py, over the mask's
data in masks/artifact.py) and `Delta` (methods/sparse/delta.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # annotations only
    from .transport import PushResult

T = TypeVar("T", bound="HubMixin")


class HubMixin:
    """Hugging-Face-style save / load / share for a szoq artifact (a mask or a delta)."""

    @classmethod
    def from_pretrained(cls: type[T], ref: str | Path, *, offline: bool = False, **kwargs: Any) -> T:
        """Resolve, load and verify an artifact.

        Args:
            ref: What the CLI takes for this artifact: a local folder (or its `.safetensors`
                file), a registry or built-in name (masks), or `ORG/NAME[@REV]` on the Hub.
            offline: Read Hub refs only from the local Hugging Face cache.
            **kwargs: The artifact's own options: `model=` (masks: must fit this model),
                `token=` (deltas: Hub token).

        Returns:
            The verified artifact, its `path` set to the folder it was read from.

        Raises:
            RegistryError, HubError, MaskError, FingerprintMismatch: see the subclass hook.
        """
        return cls._from_pretrained(ref, offline=offline, **kwargs)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the artifact into a new folder, atomically.

        Args:
            folder: Must not exist, or be an empty folder.

        Returns:
            The folder written (it loads and pushes like any artifact folder).

        Raises:
            MaskError, ConfigError: `folder` exists and is not empty.
        """
        return self._save_pretrained(Path(folder))

    def push_to_hub(self, repo_id: str, *, tag: str | None = None, private: bool = False, token: str | None = None,
                    create_pr: bool = False, message: str | None = None) -> PushResult:
        """Publish the artifact to a Hub model repo in one commit, then tag it.

        Args:
            repo_id: `ORG/NAME` (created if missing).
            tag: Tag of this version (default: a mask's registry version, a delta's next `vN`).
            private: Create the repo as private.
            token: Hub token; default `HF_TOKEN` or the login.
            create_pr: Open a pull request instead of committing to main.
            message: Commit title.

        Returns:
            `PushResult` (URL, commit, tag; status `unchanged` when the tag already holds it).

        Raises:
            ConfigError, MaskError, RegistryError, HubError: see `push_mask` / `push_delta`.
        """
        return self._push_to_hub(repo_id, tag=tag, private=private, token=token, create_pr=create_pr, message=message)

    # -- hooks a subclass implements -------------------------------------------------------
    @classmethod
    def _from_pretrained(cls: type[T], ref: str | Path, *, offline: bool, **kwargs: Any) -> T:
        raise NotImplementedError

    def _save_pretrained(self, folder: Path) -> Path:
        raise NotImplementedError

    def _push_to_hub(self, repo_id: str, *, tag: str | None, private: bool, token: str | None, create_pr: bool,
                     message: str | None) -> PushResult:
        raise NotImplementedError
