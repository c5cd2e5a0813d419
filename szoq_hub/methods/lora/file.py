"""The ZO-LoRA artifact: `lora.safetensors`, the adapter of a `finetune --lora` run.

It holds `{module}.lora_A.weight` [r, in] and `{module}.lora_B.weight` [out, r] fp32 tensors
(the names PEFT uses below its `base_model.model.` prefix) and a header (string -> string, as
safetensors allows): the format, rank, alpha, targets, the base model and its fingerprint, and
the run's settings as a sorted JSON string, and a content hash over all of it (`core.content`,
scheme 2: every header field and every tensor's name, shape and bytes).

The loader trusts nothing it has not checked: the hash (a file without one is refused: the
format always had one), every number for type, range and finiteness (rank, alpha), the targets
against the adapted modules the file holds, and every A and B shape against its rank. Merge and
export then take the module list and each module's (in, out) from the *model* the adapter is
applied to (`module_shapes`), and `weight_deltas` checks every A and B against them before any
product is formed, so a file cut, forged or edited by hand is refused before it touches a model.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ...core import content, schema
from ...core.errors import ConfigError, FingerprintMismatch, MaskError
from ...core.public import public
from ...masks.artifact import write_safetensors
from .config import LORA_FILE, LoRASettings
from .runtime import _in_out, target_modules

LORA_FORMAT = "szoq.lora"
_SUFFIXES = (".lora_A.weight", ".lora_B.weight")
MAX_RANK = 65536  # far above any LoRA rank in use; bounds r before any shape is believed
MAX_ALPHA = 1e6  # PEFT's lora_alpha is 8-64 in practice; the update is (alpha / r) B A
_TARGET = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}")
_HINT = "the file is damaged or was edited; use the run's best-dev file or train again"


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
        """The run's settings as the header records them (model, quant, seed, ...); checked to be an object by `load_lora`."""
        return schema.settings_of(self.meta)

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

    def check_modules(self, shapes: dict[str, tuple[int, int]]) -> None:
        """Refuse an adapter whose modules or shapes are not the ones its targets select on this model.

        Args:
            shapes: `module_shapes` of the model: module name -> (in, out), for the modules the
                adapter's (verified) targets select.

        Raises:
            MaskError: a module the model's targets do not select, one missing, or an A / B of
                another shape than [r, in] / [out, r].
        """
        have, want = set(self.modules), set(shapes)
        if have != want:
            extra, missing = sorted(have - want), sorted(want - have)
            what = f"adapts {extra[0]}, which its targets ({','.join(self.settings.targets)}) do not select on this model" if extra else \
                f"lacks {missing[0]}, which its targets ({','.join(self.settings.targets)}) select on this model"
            raise MaskError(f"{self.path} {what}", hint="use the adapter with the base model it was trained on; " + _HINT)
        r = self.settings.rank
        for m, (n_in, n_out) in shapes.items():
            for ab, want_shape in (("A", (r, n_in)), ("B", (n_out, r))):
                got = tuple(self.tensors[f"{m}.lora_{ab}.weight"].shape)
                if got != want_shape:
                    raise MaskError(f"{self.path}: {m}.lora_{ab}.weight has shape {list(got)}, the model's {m} needs {list(want_shape)}",
                                    hint="use the adapter with the base model it was trained on; " + _HINT)

    def weight_deltas(self, shapes: dict[str, tuple[int, int]]) -> dict[str, torch.Tensor]:
        """`{module}.weight` -> (alpha / r) B A [out, in] fp32: what a merge adds to each base weight.

        Args:
            shapes: `module_shapes` of the model the update is for; every shape is checked
                (`check_modules`) before any product is formed.

        Raises:
            MaskError: modules or shapes that do not fit, or an update that is not finite.
        """
        self.check_modules(shapes)
        s, out = self.settings.scaling, {}
        for m in self.modules:
            update = s * (self.tensors[f"{m}.lora_B.weight"] @ self.tensors[f"{m}.lora_A.weight"])  # [out, r] @ [r, in] -> [out, in]
            if not bool(torch.isfinite(update).all()):
                raise MaskError(f"{self.path}: the update of {m} is not finite (alpha {self.settings.alpha:g}, rank {self.settings.rank})",
                                hint=_HINT)
            out[f"{m}.weight"] = update
        return out

    def check_fingerprint(self, fingerprint: str) -> None:
        """Refuse a base model other than the one the adapter was trained on.

        Raises:
            FingerprintMismatch: the fingerprints differ.
        """
        if fingerprint != self.fingerprint:
            raise FingerprintMismatch(f"{self.path} was trained on another model ({self.meta.get('base_model')}, fingerprint "
                                      f"{self.fingerprint[:12]}), not this one ({fingerprint[:12]})",
                                      hint="pass the --model the LoRA run was trained on (its finetune_config.json names it), or leave --model out")


def module_shapes(model: torch.nn.Module, settings: LoRASettings) -> dict[str, tuple[int, int]]:
    """module name -> (in, out) of every module `settings.targets` selects on `model` (any device, meta included).

    Raises:
        ConfigError: the targets select no linear layer of the model.
    """
    return {name: _in_out(module) for name, module in target_modules(model, settings.targets)}


def model_module_shapes(source, settings: LoRASettings) -> dict[str, tuple[int, int]]:
    """`module_shapes` of a resolved model without loading its weights (a meta-device skeleton)."""
    from transformers import AutoModelForCausalLM

    from ...data.footprint import load_config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(load_config(source), dtype=torch.float32)
    return module_shapes(model, settings)


def lora_path(ref: str | Path) -> Path:
    """`lora.safetensors` inside a run folder, or the file itself."""
    path = Path(ref)
    return path / LORA_FILE if path.is_dir() else path


def is_lora_file(ref: str | Path) -> bool:
    """Whether `ref` (a file, or a run folder) holds a szoq LoRA adapter, or a damaged file named
    `lora.safetensors` (so that `load_lora` says what is wrong with it)."""
    path = lora_path(ref)
    if not path.is_file():
        return False
    if path.name == LORA_FILE:
        return True
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
            "base_model": base_model, "fingerprint": fingerprint, "settings": json.dumps(public(run_settings), sort_keys=True, default=str)}  # shared: no local paths
    meta = content.stamp(meta, cpu)  # over every header field and tensor: every load recomputes it
    path = Path(path)
    write_safetensors(cpu, path, meta)  # sorted header and tensors, atomically: the same run writes the same bytes
    return path


def load_lora(ref: str | Path) -> LoRAFile:
    """Read and check an adapter file (or a run folder's `lora.safetensors`).

    Raises:
        ConfigError: no adapter file there.
        MaskError: not a szoq LoRA file, a bad header (a number out of range or not finite,
            settings not an object, targets that are not the modules it holds), no content hash
            or one that does not match, a module without its A or B, shapes that do not agree
            with the rank, or non-finite values.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = lora_path(ref)
    if not path.is_file():
        raise ConfigError(f"no {LORA_FILE} at {ref}", hint="pass the folder of a finished szoq finetune --lora run")
    meta = schema.read_header(path).metadata
    bad = lambda why: MaskError(f"{path} is not a valid szoq LoRA adapter: {why}", hint=_HINT)
    if meta.get("format") != LORA_FORMAT:
        raise bad(f"format {meta.get('format')!r:.40}, not {LORA_FORMAT}")
    settings = _header_settings(meta, bad)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise bad(str(exc).splitlines()[0]) from None
    _check_tensors(tensors, settings.rank, bad)
    content.verify(meta, str(path), MaskError, tensors=tensors, hashless_ok=False, hint=_HINT)  # a LoRA file always had one
    adapter = LoRAFile(tensors, settings, meta, path)
    for module in adapter.modules:  # the targets name exactly the modules it holds
        if not any(module == t or module.endswith(f".{t}") for t in settings.targets):
            raise bad(f"it adapts {module[:120]}, which its targets ({meta['targets'][:80]}) do not name")
    return adapter


def _header_settings(meta: dict[str, str], bad) -> LoRASettings:
    """Rank, alpha and targets from a header, every field type- and range-checked (before the hash: clearer messages)."""
    rank_text, alpha_text, targets_text = meta.get("rank", ""), meta.get("alpha", ""), meta.get("targets", "")
    if re.fullmatch(r"[0-9]{1,6}", rank_text) is None or not 1 <= int(rank_text) <= MAX_RANK:
        raise bad(f"rank {rank_text[:20]!r} is not an integer in [1, {MAX_RANK}]")
    try:
        alpha = float(alpha_text)
    except ValueError:
        alpha = math.nan
    if not (math.isfinite(alpha) and 0.0 < alpha <= MAX_ALPHA):
        raise bad(f"alpha {alpha_text[:20]!r} is not a number in (0, {MAX_ALPHA:g}]")
    targets = tuple(targets_text.split(","))
    if not targets_text or len(targets) > 64 or any(_TARGET.fullmatch(t) is None for t in targets) or len(set(targets)) != len(targets):
        raise bad(f"targets {targets_text[:80]!r} are not distinct module names")
    if not schema.HEX64.match(meta.get("fingerprint", "")):
        raise bad("fingerprint is not 64 hex digits")
    settings = schema.loads(meta.get("settings") or "{}", f"{meta.get('format')} header settings", MaskError, hint=_HINT)
    if not isinstance(settings, dict):
        raise bad("settings is not a JSON object")
    return LoRASettings(rank=int(rank_text), alpha=alpha, targets=targets)


def _check_tensors(tensors: dict[str, torch.Tensor], rank: int, bad) -> None:
    """Every module has A [r, in] and B [out, r], fp32 and finite."""
    if not tensors:
        raise bad("no tensors")
    for name, t in tensors.items():
        if not name.endswith(_SUFFIXES):
            raise bad(f"unexpected tensor {name[:120]}")
        if t.dtype != torch.float32 or t.dim() != 2 or not torch.isfinite(t).all():
            raise bad(f"{name[:120]} is not a finite fp32 matrix")
        module, ab = name[: -len(".lora_A.weight")], name[-len("A.weight")]
        other = tensors.get(f"{module}.lora_{'B' if ab == 'A' else 'A'}.weight")
        if other is None:
            raise bad(f"{name[:120]} has no lora_{'B' if ab == 'A' else 'A'} beside it")
        if (t.shape[0] if ab == "A" else t.shape[1]) != rank:
            raise bad(f"{name[:120]} has shape {list(t.shape)}, not rank {rank}")
