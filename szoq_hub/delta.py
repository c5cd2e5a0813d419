"""The fine-tuned delta artifact: fp32 values per masked tensor, linked to its mask and model.

`delta.safetensors` holds one fp32 [nnz_name] tensor per masked parameter (in mask order); its
header (string -> string) names the format, the mask's sha256, the base model fingerprint and
the run's settings as a JSON string. Loading verifies all of it against the mask in use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from . import schema
from .errors import FingerprintMismatch, MaskError
from .mask import SensitivityMask
from .paths import atomic_file

FORMAT = "szoq.delta"
FORMAT_VERSION = "1"
DELTA_FILE = "delta.safetensors"
DELTA_CARD_TAGS = ["szoq", "sparse-delta", "zeroth-order"]


@dataclass
class Delta:
    """A loaded, verified delta."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, str]

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def mask_sha256(self) -> str:
        return self.meta["mask_sha256"]

    @property
    def settings(self) -> dict:
        return json.loads(self.meta.get("settings") or "{}")


def save_delta(path: Path, tensors: dict[str, torch.Tensor], *, mask_sha256: str, fingerprint: str,
               base_model: str, settings: dict | None = None) -> Path:
    """Write `delta.safetensors` atomically (temp file + rename in the same folder).

    Args:
        path: Target file (or a folder, which gets `delta.safetensors`).
        tensors: name -> fp32 [nnz_name] values.
        mask_sha256: sha256 of the mask's `mask.safetensors`.
        fingerprint: Base model fingerprint.
        base_model: Base model id (for humans).
        settings: JSON-able run settings recorded in the header.

    Returns:
        The file written.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        path = path / DELTA_FILE
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "mask_sha256": mask_sha256, "fingerprint": fingerprint,
            "base_model": base_model, "nnz": str(sum(int(t.numel()) for t in tensors.values())),
            "settings": json.dumps(settings or {}, sort_keys=True)}
    with atomic_file(path) as tmp:
        save_file({n: t.detach().to(torch.float32).contiguous() for n, t in tensors.items()}, str(tmp), metadata=meta)
    return path


def delta_path(ref: str | Path) -> Path:
    """The delta file of a run folder, a checkpoint folder or a file path."""
    path = Path(ref).expanduser()
    return path if path.suffix == ".safetensors" else path / DELTA_FILE


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name no file system accepts
        return False


def load_delta(ref: str | Path, *, mask: SensitivityMask | None = None, mask_sha256: str | None = None,
               fingerprint: str | None = None) -> Delta:
    """Load and verify a delta.

    Args:
        ref: A run folder (holding `delta.safetensors`) or the file.
        mask: When given, tensor names and lengths must match it.
        mask_sha256: When given, the delta must have been trained with this mask file.
        fingerprint: When given, the delta must have been trained on this base model.

    Returns:
        The verified `Delta`.

    Raises:
        MaskError: missing, corrupt, truncated, not a delta, or not fitting the mask.
        FingerprintMismatch: trained with another mask or base model.
    """
    from safetensors import SafetensorError, safe_open

    path = delta_path(ref)
    if not _is_file(path):
        folder = path.parent
        hint = ("the run did not finish: continue it with szoq finetune --resume --out " + str(folder)
                if (folder / "checkpoint").is_dir() or (folder / "checkpoint.safetensors").is_file() else "pass the output folder of szoq finetune")
        raise MaskError(f"{path} not found", hint=hint)
    header = schema.read_header(path)
    schema.delta_fields(header, str(path), fmt=FORMAT, version=FORMAT_VERSION)  # types, counts, dtypes
    meta = header.metadata
    try:
        with safe_open(str(path), framework="pt") as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise MaskError(f"{path} is corrupt or truncated ({str(exc).splitlines()[0]})", hint="fine-tune again or restore the file") from None
    for name, t in tensors.items():
        if not bool(torch.isfinite(t).all()):
            raise MaskError(f"{path}: tensor {name} holds non-finite values", hint="the delta is corrupt")
    if fingerprint is not None and meta.get("fingerprint") != fingerprint:
        raise FingerprintMismatch(
            f"delta was trained on {meta.get('base_model')} (fingerprint {meta.get('fingerprint', '')[:12]}), not this model ({fingerprint[:12]})",
            hint="pass the --model the delta was fine-tuned from",
        )
    if mask_sha256 is not None and meta.get("mask_sha256") != mask_sha256:
        raise FingerprintMismatch(
            f"delta was trained with mask {meta.get('mask_sha256', '')[:12]}, not {mask_sha256[:12]}",
            hint="pass the --mask the delta was fine-tuned with (see its finetune_config.json)",
        )
    if mask is not None:
        if set(tensors) != set(mask.indices):
            raise MaskError(f"{path}: tensor names do not match the mask", hint="pass the --mask the delta was fine-tuned with")
        for name, idx in mask.indices.items():
            if tensors[name].numel() != idx.numel():
                raise MaskError(f"{path}: {name} has {tensors[name].numel()} values, the mask selects {idx.numel()}", hint="pass the --mask the delta was fine-tuned with")
    return Delta(tensors, meta)
