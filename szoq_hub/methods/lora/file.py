"""The ZO-LoRA artifact: `lora.safetensors`, the adapter of a `finetune --lora` run.

It holds `{module}.lora_A.weight` [r, in] and `{module}.lora_B.weight` [out, r] fp32 tensors
(the names PEFT uses below its `base_model.model.` prefix) and a header (string -> string, as
safetensors allows): the format, rank, alpha, targets, the base model and its fingerprint, and
the run's settings as a sorted JSON string. The loader checks the header and every shape, so a
file cut or edited by hand is refused before it touches a model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ...core import schema
from ...core.content import CONTENT_KEY, tensors_sha256
from ...core.errors import ConfigError, FingerprintMismatch, MaskError
from ...core.public import public
from ...masks.artifact import write_safetensors
from .config import LORA_FILE, LoRASettings

LORA_FORMAT = "szoq.lora"
_SUFFIXES = (".lora_A.weight", ".lora_B.weight")


@dataclass
class LoRAFile:
    """A loaded, checked adapter.

    Attributes:
        tensors: `{module}.lora_A.weight` [r, in] / `{module}.lora_B.weight` [out, r], fp32.
        settings: Rank, alpha, targets.
        meta: The header (format, base_model, fingerprint, settings JSON, ...).
        path: The file read.
    """

    tensors: dict[str, torch.Tensor]
    settings: LoRASettings
    meta: dict[str, str]
    path: Path

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def run_settings(self) -> dict:
        """The run's settings as the header records them (model, quant, seed, ...)."""
        return json.loads(self.meta.get("settings") or "{}")

    @property
    def model_ref(self) -> str | None:
        """The model it was trained on: as the run folder's config names it on this machine (the
        header keeps only the last part of a local path), else as the header does."""
        config = self.path.parent / "finetune_config.json"
        if config.is_file():
            try:
                local = schema.run_config(config, MaskError)
            except MaskError:
                local = None
            if local is not None and local.get("fingerprint") == self.fingerprint:
                return local["settings"].get("model")
        return self.run_settings.get("model")

    @property
    def modules(self) -> list[str]:
        """The adapted modules, in the file's (sorted) order."""
        return sorted({k[: -len(_SUFFIXES[0])] for k in self.tensors if k.endswith(_SUFFIXES[0])})

    def weight_deltas(self) -> dict[str, torch.Tensor]:
        """`{module}.weight` -> (alpha / r) B A [out, in] fp32: what a merge adds to each base weight."""
        s = self.settings.scaling
        return {f"{m}.weight": s * (self.tensors[f"{m}.lora_B.weight"] @ self.tensors[f"{m}.lora_A.weight"]) for m in self.modules}

    def check_fingerprint(self, fingerprint: str) -> None:
        """Refuse a base model other than the one the adapter was trained on.

        Raises:
            FingerprintMismatch: the fingerprints differ.
        """
        if fingerprint != self.fingerprint:
            raise FingerprintMismatch(f"{self.path} was trained on another model ({self.meta.get('base_model')}, fingerprint "
                                      f"{self.fingerprint[:12]}), not this one ({fingerprint[:12]})",
                                      hint="pass the --model the LoRA run was trained on (its finetune_config.json names it), or leave --model out")


def lora_path(ref: str | Path) -> Path:
    """`lora.safetensors` inside a run folder, or the file itself."""
    path = Path(ref)
    return path / LORA_FILE if path.is_dir() else path


def is_lora_file(ref: str | Path) -> bool:
    """Whether `ref` (a file, or a run folder) holds a szoq LoRA adapter."""
    path = lora_path(ref)
    if not path.is_file():
        return False
    try:
        return schema.read_header(path).metadata.get("format") == LORA_FORMAT
    except MaskError:
        return False


def save_lora(path: str | Path, tensors: dict[str, torch.Tensor], *, settings: LoRASettings, fingerprint: str, base_model: str,
              run_settings: dict) -> Path:
    """Write an adapter file at once (atomic temp + rename).

    Args:
        path: The file to write.
        tensors: `LoRAModel.adapter_tensors()`-shaped tensors.
        settings: Rank, alpha, targets.
        fingerprint: The base model's fingerprint.
        base_model: The base model's name (as the card names it).
        run_settings: The run's settings (JSON-serialisable).

    Returns:
        The path written.
    """
    cpu = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
    meta = {"format": LORA_FORMAT, "rank": str(settings.rank), "alpha": repr(float(settings.alpha)), "targets": ",".join(settings.targets),
            "base_model": base_model, "fingerprint": fingerprint, "settings": json.dumps(public(run_settings), sort_keys=True, default=str),  # shared: no local paths
            CONTENT_KEY: tensors_sha256(cpu)}  # every load recomputes it: a flipped bit is refused
    path = Path(path)
    write_safetensors(cpu, path, meta)  # sorted header and tensors, atomically: the same run writes the same bytes
    return path


def load_lora(ref: str | Path) -> LoRAFile:
    """Read and check an adapter file (or a run folder's `lora.safetensors`).

    Raises:
        ConfigError: no adapter file there.
        MaskError: not a szoq LoRA file, a bad header, a module without its A or B, shapes that do
            not agree with the rank, or non-finite values.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = lora_path(ref)
    if not path.is_file():
        raise ConfigError(f"no {LORA_FILE} at {ref}", hint="pass the folder of a finished szoq finetune --lora run")
    meta = schema.read_header(path).metadata
    bad = lambda why: MaskError(f"{path} is not a valid szoq LoRA adapter: {why}", hint="the file is damaged; use the run's best-dev file or train again")
    if meta.get("format") != LORA_FORMAT:
        raise bad(f"format {meta.get('format')!r}, not {LORA_FORMAT}")
    try:
        alpha = float(meta["alpha"])
        settings = LoRASettings(rank=int(meta["rank"]), alpha=alpha, targets=tuple(meta["targets"].split(",")))
        json.loads(meta.get("settings") or "{}")
        if not meta.get("fingerprint"):
            raise KeyError("fingerprint")
    except (KeyError, ValueError, ConfigError) as exc:
        raise bad(f"header field {exc}") from None
    if not math.isfinite(alpha):
        raise bad("alpha is not finite")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise bad(str(exc).splitlines()[0]) from None
    _check_tensors(tensors, settings.rank, bad)
    if CONTENT_KEY in meta and tensors_sha256(tensors) != meta[CONTENT_KEY]:
        raise bad("its tensors do not match the content sha256 in its header")
    return LoRAFile(tensors, settings, meta, path)


def _check_tensors(tensors: dict[str, torch.Tensor], rank: int, bad) -> None:
    """Every module has A [r, in] and B [out, r], fp32 and finite."""
    if not tensors:
        raise bad("no tensors")
    for name, t in tensors.items():
        if not name.endswith(_SUFFIXES):
            raise bad(f"unexpected tensor {name}")
        if t.dtype != torch.float32 or t.dim() != 2 or not torch.isfinite(t).all():
            raise bad(f"{name} is not a finite fp32 matrix")
        module, ab = name[: -len(".lora_A.weight")], name[-len("A.weight")]
        other = tensors.get(f"{module}.lora_{'B' if ab == 'A' else 'A'}.weight")
        if other is None:
            raise bad(f"{name} has no lora_{'B' if ab == 'A' else 'A'} beside it")
        if (t.shape[0] if ab == "A" else t.shape[1]) != rank:
            raise bad(f"{name} has shape {list(t.shape)}, not rank {rank}")
