"""The fine-tuned delta artifact: fp32 values per masked tensor, linked to its mask and model.

`delta.safetensors` holds one fp32 [nnz_name] tensor per masked parameter (in mask order); its
header (string -> string) names the format, the mask's sha256, the base model fingerprint and
the run's settings as a JSON string. Loading verifies all of it against the mask in use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..core import schema
from ..core.content import CONTENT_KEY, tensors_sha256
from ..core.errors import FingerprintMismatch, MaskError
from ..core.hub_mixin import HubMixin
from ..masks.artifact import SensitivityMask
from ..core.public import public
from ..masks.registry import mask_name_for_sha256

FORMAT = "szoq.delta"
FORMAT_VERSION = "1"
DELTA_FILE = "delta.safetensors"
DELTA_CARD_TAGS = ["szoq", "sparse-delta", "zeroth-order"]
RUN_FILES = ("finetune_config.json", "metrics.jsonl", "README.md")  # what a run folder shares besides the delta


@dataclass
class Delta(HubMixin):
    """A loaded, verified delta: the fine-tuned fp32 values of a mask's weights.

    Python API in the Hugging Face style (`HubMixin`): `save_pretrained`, `from_pretrained` (a
    run folder, a delta file or `ORG/NAME[@REV]` on the Hub, `token=`), `push_to_hub`, and
    `merge_into(model)`.

    Attributes:
        tensors: name -> fp32 values [nnz_name], in mask order.
        meta: The header (format, mask_sha256, fingerprint, base_model, nnz, settings JSON).
        path: The run folder it was read from or written to (None when there is none).
    """

    tensors: dict[str, torch.Tensor]
    meta: dict[str, str]
    path: Path | None = field(default=None, compare=False, repr=False)

    def _save_pretrained(self, folder: Path) -> Path:
        """Write the delta into a new folder: `delta.safetensors`, plus the run's
        `finetune_config.json`, `metrics.jsonl` and card when it was loaded from a run folder.

        Raises:
            ConfigError: `folder` exists and is not empty.
        """
        import shutil

        from ..core.errors import ConfigError
        from ..core.files import atomic_dir

        folder = Path(folder)
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise ConfigError(f"{folder} already exists and is not empty", hint="choose a new folder")
        with atomic_dir(folder) as tmp:
            save_delta(tmp, self.tensors, mask_sha256=self.mask_sha256, fingerprint=self.fingerprint,
                       base_model=self.meta.get("base_model", ""), settings=self.settings)
            for name in RUN_FILES if self.path is not None else ():
                if (self.path / name).is_file():
                    shutil.copyfile(self.path / name, tmp / name)
        self.path = folder
        return folder

    # The hooks below (and merge_into) resolve REFs, push and reach the SparseModel through the
    # layers above this one (hub, runtime.sparse): imported when called.
    @classmethod
    def _from_pretrained(cls, ref: str | Path, *, offline: bool = False, token: str | None = None) -> Delta:
        from ..hub.mixin_hooks import delta_from_pretrained

        return delta_from_pretrained(ref, token=token, offline=offline)

    def _push_to_hub(self, repo_id: str, **kwargs):
        from ..hub.mixin_hooks import push_delta_object

        return push_delta_object(self, repo_id, **kwargs)

    def merge_into(self, model: torch.nn.Module, mask: SensitivityMask | None = None) -> torch.nn.Module:
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
        from ..hub.mixin_hooks import merge_delta_into

        return merge_delta_into(self, model, mask)

    def check_mask(self, mask: SensitivityMask) -> None:
        """Refuse a mask other than the one the delta was trained with (by the sha256 of its file)."""
        import tempfile

        from ..masks.artifact import MASK_FILE, save_mask
        from ..core.files import file_sha256

        if mask.path is not None and (Path(mask.path) / MASK_FILE).is_file():
            sha = file_sha256(Path(mask.path) / MASK_FILE)
        else:  # built in memory: its file is written byte-reproducibly, so hash that
            with tempfile.TemporaryDirectory(prefix="szoq-mask-") as tmp:
                sha = file_sha256(save_mask(mask, Path(tmp) / "mask") / MASK_FILE)
        if sha != self.mask_sha256:
            raise FingerprintMismatch(f"delta was trained with mask {self.mask_sha256[:12]}, not {sha[:12]}",
                                      hint="pass the mask the delta was fine-tuned with (its finetune_config.json names it)")

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def mask_sha256(self) -> str:
        return self.meta["mask_sha256"]

    @property
    def settings(self) -> dict:
        return schema.settings_of(self.meta)


def write_into(model: torch.nn.Module, delta: Delta, mask: SensitivityMask) -> torch.nn.Module:
    """Set a model's masked weights to the delta's values in place: `W.flatten()[M] = values`.

    Args:
        model: A transformers model holding the mask's weights (any dtype or device).
        delta: Values fitting `mask` (checked by name and count here; by sha256 by the callers).
        mask: The mask the delta was trained with.

    Raises:
        MaskError: names or sizes that do not fit the mask or the model.
    """
    if {n: t.numel() for n, t in delta.tensors.items()} != {n: i.numel() for n, i in mask.indices.items()}:
        raise MaskError("the delta's tensors do not fit the mask", hint="pass the mask the delta was fine-tuned with")
    params = dict(model.named_parameters())
    for name in mask.indices:
        shape = list(mask.config.shapes[name])
        if name not in params or list(params[name].shape) != shape:
            raise MaskError(f"the model has no weight {name} of shape {shape}", hint="merge into the base model the delta was fine-tuned from")
    with torch.no_grad():
        for name, idx in mask.indices.items():
            weight = params[name]
            weight.view(-1)[idx.long().to(weight.device)] = delta.tensors[name].to(weight.device, weight.dtype)  # [nnz_name]
    return model


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
    from ..masks.artifact import write_safetensors

    path = Path(path)
    if path.suffix != ".safetensors":
        path = path / DELTA_FILE
    values = {n: t.detach().to(torch.float32).contiguous() for n, t in tensors.items()}  # [nnz_name] each
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "mask_sha256": mask_sha256, "fingerprint": fingerprint,
            "base_model": base_model, "nnz": str(sum(int(t.numel()) for t in values.values())),
            "settings": json.dumps(public(settings or {}), sort_keys=True),  # shared with the delta: no local paths
            CONTENT_KEY: tensors_sha256(values)}  # every load recomputes it: a flipped bit is refused
    # Sorted header keys and tensor names: the same run writes the same bytes (the file's sha256
    # names a delta on the Hub, and `save_file` orders its header through a hash map).
    write_safetensors(values, path, meta)
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
               fingerprint: str | None = None, mask_ref: str | None = None) -> Delta:
    """Load and verify a delta.

    Args:
        ref: A run folder (holding `delta.safetensors`) or the file.
        mask: When given, tensor names and lengths must match it.
        mask_sha256: When given, the delta must have been trained with this mask file.
        fingerprint: When given, the delta must have been trained on this base model.
        mask_ref: How the user named the mask in use (for messages).

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
        if _is_file(folder / "dense.safetensors"):  # a `finetune --dense` run (dense.py): weights, not a delta
            raise MaskError(f"{folder} is a --dense run: it holds trained weights (dense.safetensors), not a sparse delta",
                            hint=f"szoq eval / szoq merge --delta {folder} take it; pushing and PEFT export are for sparse deltas")
        if _is_file(folder / "lora.safetensors"):  # a `finetune --lora` run (lora_file.py): an adapter, not a delta
            raise MaskError(f"{folder} is a --lora run: it holds a LoRA adapter (lora.safetensors), not a sparse delta",
                            hint=f"szoq eval / szoq merge / szoq export peft --delta {folder} take it; pushing is for sparse deltas")
        if _is_file(folder / "finetune_config.json"):  # a run folder without its last file: unfinished
            raise MaskError(f"the run in {folder} is unfinished (no {DELTA_FILE} yet)",
                            hint=f"continue it: run the same szoq finetune command again (same options, --out {folder}); "
                                 "it resumes from its last checkpoint")
        raise MaskError(f"{path} not found", hint="pass the output folder of szoq finetune, its delta.safetensors, or ORG/NAME[@REV] on the Hub")
    header = schema.read_header(path)
    fields = schema.delta_fields(header, str(path), fmt=FORMAT, version=FORMAT_VERSION)  # types, counts, dtypes
    meta = header.metadata
    try:
        with safe_open(str(path), framework="pt") as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise MaskError(f"{path} is corrupt or truncated ({str(exc).splitlines()[0]})", hint="fine-tune again or restore the file") from None
    if fields["content_sha256"] and tensors_sha256(tensors) != fields["content_sha256"]:
        raise MaskError(f"{path}: its values do not match the content sha256 its header records (a flipped bit, or an edit)",
                        hint="the delta is corrupt: pull it again or fine-tune again")
    for name, t in tensors.items():
        if not bool(torch.isfinite(t).all()):
            raise MaskError(f"{path}: tensor {name} holds non-finite values", hint="the delta is corrupt")
    if fingerprint is not None and meta.get("fingerprint") != fingerprint:
        raise FingerprintMismatch(
            f"delta was trained on {meta.get('base_model')} (fingerprint {meta.get('fingerprint', '')[:12]}), not this model ({fingerprint[:12]})",
            hint="pass the --model the delta was fine-tuned from, or leave --model out: eval and merge use the delta's own",
        )
    if mask_sha256 is not None and meta.get("mask_sha256") != mask_sha256:
        trained = trained_mask_ref(meta)
        current = mask_ref or mask_name_for_sha256(mask_sha256) or f"sha256 {mask_sha256[:12]}"
        raise FingerprintMismatch(f"delta was trained with mask {trained}, not {current}",
                                  hint=f"pass --mask {trained}, or leave --mask out: eval and merge use the delta's own mask")
    if mask is not None:
        if set(tensors) != set(mask.indices):
            raise MaskError(f"{path}: tensor names do not match the mask", hint="pass the --mask the delta was fine-tuned with")
        for name, idx in mask.indices.items():
            if tensors[name].numel() != idx.numel():
                raise MaskError(f"{path}: {name} has {tensors[name].numel()} values, the mask selects {idx.numel()}", hint="pass the --mask the delta was fine-tuned with")
    return Delta(tensors, meta)


def trained_mask_ref(meta: dict[str, str]) -> str:
    """The mask a delta was trained with, named for a user: a local mask holding the same content
    (`NAME@vN` or a built-in name), else the ref recorded at training time, else its sha256."""
    sha = meta.get("mask_sha256", "")
    settings = schema.settings_of(meta)
    return mask_name_for_sha256(sha) or _text(settings.get("mask_ref")) or _text(settings.get("mask")) or f"sha256 {sha[:12]}"


def _text(value: object) -> str | None:
    """A name recorded in a header, when it is a short string (headers come from strangers)."""
    return value if isinstance(value, str) and 0 < len(value) <= 1000 else None


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
    if not _is_file(path):
        return None, None
    try:
        meta = schema.read_header(path).metadata
    except MaskError:
        return None, None
    if meta.get("format") != FORMAT:
        return None, None
    settings = schema.settings_of(meta)  # a hostile "[]" or deep nesting: no defaults, load_delta says why
    run_config = path.parent / "finetune_config.json"
    if _is_file(run_config):
        try:
            local = schema.run_config(run_config, MaskError)
        except MaskError:
            local = None
        if local is not None and local.get("fingerprint") == meta.get("fingerprint"):  # the config of this very run
            settings = {**settings, "model": local["settings"].get("model", settings.get("model")),
                        "mask_ref": local.get("mask_ref") or settings.get("mask_ref")}
    mask = mask_name_for_sha256(meta.get("mask_sha256", "")) or _text(settings.get("mask_ref")) or _text(settings.get("mask"))
    return _text(settings.get("model")), mask
