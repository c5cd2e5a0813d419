"""The fine-tuned delta artifact: fp32 values per masked tensor, linked to its mask and model.

`delta.safetensors` holds one fp32 [nnz_name] tensor per masked parameter (in mask order); its
header (string -> string) names the format, the mask's sha256, the base model fingerprint and
the run's settings as a JSON string (which name the method: `sparse`). Loading verifies all of it
against the mask in use.

`Delta` publishes itself (`HubMixin`, hub/mixin.py), so it sits above the Hub code and imports it
here: a delta is one `Artifact` description for the transport (`DELTA`); a delta repo holds
`delta.safetensors`, `finetune_config.json`, `metrics.jsonl` and the card (hub.py; never
checkpoints). Pulled deltas stay in the Hugging Face cache (verified), or are copied to `--out`.
Merging needs no Hub: the mask is checked by the sha256 of its bytes (masks/artifact.py).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...core import content, schema
from ...core.errors import ConfigError, FingerprintMismatch, HubError, MaskError, RegistryError, shorten
from ...core.files import atomic_dir, file_sha256, path_exists
from ...core.public import local_paths, public
from ...hub.mixin import HubMixin
from ...hub.refs import no_local_folder, resolve_mask_ref
from ...hub.transport import Artifact, PullResult, PushResult, check_repo_id, copy_out, evict, fetch_artifact, is_hub_ref, push_artifact
from ...masks.artifact import MASK_FILE, MaskData, load_mask, mask_sha256, write_safetensors
from ...masks.registry import mask_name_for_sha256, parse_ref
from ..registry import method_of_result
from .config import DELTA_FILE
from .hub import RUN_CONFIG_FILE, RUN_METRICS_FILE, publish_file, run_config_of, render_delta_card

FORMAT = "szoq.delta"
FORMAT_VERSION = "1"
RUN_FILES = (RUN_CONFIG_FILE, RUN_METRICS_FILE, "README.md")  # what a run folder shares besides the delta


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

    @classmethod
    def _from_pretrained(cls, ref: str | Path, *, offline: bool = False, token: str | None = None) -> Delta:
        """A run folder, a `delta.safetensors`, or `ORG/NAME[@REV]` on the Hub (pulled into the cache, verified)."""
        path = Path(ref).expanduser()
        if not path_exists(path):
            if not is_hub_ref(str(ref)):  # it looks like a path (see is_hub_ref): never asked of the Hub
                raise MaskError(f"no local folder {shorten(str(ref))}: {shorten(path)} not found",
                                hint=f"check the path (ls {shorten(path.parent)}/); a Hub ref is ORG/NAME[@REV]")
            repo_id, revision = parse_ref(str(ref))
            try:
                path = pull_delta(repo_id, revision=revision, token=token, offline=offline).path
            except HubError as exc:
                raise no_local_folder(str(ref), exc) from None
        path = delta_path(path)
        delta = load_delta(path)
        delta.path = path.parent
        return delta

    def _push_to_hub(self, repo_id: str, **kwargs) -> PushResult:
        """A delta loaded from a folder pushes that folder's files (never checkpoints); one made in
        memory is written to a temporary folder first. Default tag: `v1`, or the next `vN`."""
        if self.path is not None and (Path(self.path) / DELTA_FILE).is_file():
            return push_delta(self.path, repo_id=repo_id, **kwargs)
        with tempfile.TemporaryDirectory(prefix="szoq-push-") as tmp:
            return push_delta(self.save_pretrained(Path(tmp) / "delta"), repo_id=repo_id, **kwargs)

    def merge_into(self, model: torch.nn.Module, mask: MaskData | None = None) -> torch.nn.Module:
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
        from ...runtime.sparse import SparseModel

        if isinstance(model, SparseModel):
            self.check_mask(model.mask)
            model.load_delta(self.tensors)
            return model
        if mask is None:
            mask = _recorded_mask(self)
        else:
            self.check_mask(mask)
        return write_into(model, self, mask)

    def check_mask(self, mask: MaskData) -> None:
        """Refuse a mask other than the one the delta was trained with (by the sha256 of its file;
        a mask built in memory hashes as the bytes `save_mask` writes, computed without a file)."""
        sha = mask_sha256(mask)
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


def write_into(model: torch.nn.Module, delta: Delta, mask: MaskData) -> torch.nn.Module:
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
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path / DELTA_FILE
    values = {n: t.detach().to(torch.float32).contiguous() for n, t in tensors.items()}  # [nnz_name] each
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "mask_sha256": mask_sha256, "fingerprint": fingerprint,
            "base_model": base_model, "nnz": str(sum(int(t.numel()) for t in values.values())),
            "settings": json.dumps(public(settings or {}), sort_keys=True)}  # shared with the delta: no local paths
    meta = content.stamp(meta, values)  # over the header and the values: every load recomputes it
    # Sorted header keys and tensor names: the same run writes the same bytes (the file's sha256
    # names a delta on the Hub, and `save_file` orders its header through a hash map).
    write_safetensors(values, path, meta)
    return path


def delta_path(ref: str | Path) -> Path:
    """The delta file of a run folder, a checkpoint folder or a file path."""
    path = Path(ref).expanduser()
    return path if path.suffix == ".safetensors" else path / DELTA_FILE


def file_exists(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name no file system accepts
        return False


def load_delta(ref: str | Path, *, mask: MaskData | None = None, mask_sha256: str | None = None,
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
    if not file_exists(path):
        folder = path.parent
        other = method_of_result(folder)
        if other.result_cls.file != DELTA_FILE:  # another method's finished run: its own file, not a delta
            raise other.result_cls.not_a_delta(folder, "this")
        if file_exists(folder / "finetune_config.json"):  # a run folder without its last file: unfinished
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
    # A delta of szoq 0.1.0 without a hash loads with a warning; any other header or value edit is refused here.
    content.verify(meta, str(path), MaskError, tensors=tensors, hashless_ok=True, hint="the delta is corrupt: pull it again or fine-tune again")
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
    return mask_name_for_sha256(sha) or recorded_name(settings.get("mask_ref")) or recorded_name(settings.get("mask")) or f"sha256 {sha[:12]}"


def recorded_name(value: object) -> str | None:
    """A name recorded in a header, when it is a short string (headers come from strangers)."""
    return value if isinstance(value, str) and 0 < len(value) <= 1000 else None


def _recorded_mask(delta: Delta) -> MaskData:
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


def _verify_delta_folder(folder: Path) -> Delta:
    if not (folder / DELTA_FILE).is_file() and not (folder / "checkpoint.safetensors").is_file():
        raise ConfigError(f"{shorten(folder)} is not a szoq delta folder (no {DELTA_FILE})", hint="push the --out folder of a finished szoq finetune run")
    delta = load_delta(folder)  # raises on a corrupt or unfinished delta, with its own hint
    leaked = local_paths({"base_model": delta.meta.get("base_model", ""), "settings": delta.settings})
    if leaked:  # in delta.safetensors itself, whose bytes are pushed as they are
        raise MaskError(f"the delta records the local path {shorten(leaked[-1])}; pushing would publish it",
                        hint="fine-tune again with this szoq, which records only file and folder names in the delta, then push")
    run_config_of(folder)  # a damaged config is refused before it is published
    return delta


DELTA = Artifact("delta", DELTA_FILE, (DELTA_FILE, RUN_CONFIG_FILE, RUN_METRICS_FILE), _verify_delta_folder,
                 lambda folder, delta, repo_id, tag: render_delta_card(folder, delta, repo_id=repo_id, tag=tag),
                 "a delta repo holds delta.safetensors pushed by: szoq delta push RUN_FOLDER --repo ORG/NAME", publish_file)


def push_delta(folder: str | Path, *, repo_id: str, tag: str | None = None, private: bool = False, token: str | None = None,
               create_pr: bool = False, message: str | None = None) -> PushResult:
    """Publish a fine-tuned delta (a `szoq finetune` output folder) to a Hub repo, like a mask.

    The sparse method's side of `methods.sharing.push_delta` (`Delta.push_to_hub` calls it
    directly): the same arguments, return value and errors, documented there.
    """
    check_repo_id(repo_id)
    path = Path(folder).expanduser()
    if not path_exists(path):
        raise ConfigError(f"{shorten(path)} not found", hint="push the --out folder of a finished szoq finetune run")
    return push_artifact(DELTA, path.parent if path.name == DELTA_FILE else path, repo_id=repo_id, tag=tag, private=private, token=token,
                         create_pr=create_pr, message=message, ref=None)


def pull_delta(repo_id: str, *, revision: str | None = None, token: str | None = None, offline: bool = False,
               out: str | Path | None = None) -> PullResult:
    """Download a fine-tuned delta at a revision into the Hugging Face cache and verify it.

    The sparse method's side of `methods.sharing.pull_delta` (`Delta.from_pretrained` calls it
    directly): the same arguments, return value and errors, documented there.
    """
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    check_repo_id(repo_id)
    rev = revision or "main"
    snapshots = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model") / "snapshots"
    known = {p.name: None for p in snapshots.iterdir()} if snapshots.is_dir() else {}
    got = fetch_artifact(DELTA, repo_id, rev, token=token, offline=offline, known=known)
    folder = got.paths[DELTA_FILE].parent  # the snapshot of `commit`: all its files sit side by side
    try:
        load_delta(folder)  # never hand out a delta that does not verify
    except MaskError:
        evict(got.paths)  # nor keep it in the cache, where a retry would find it again
        raise
    if out is not None:
        folder = copy_out(got.paths, Path(out).expanduser())
    return PullResult(f"{repo_id}@{got.tag or got.commit[:7]}", folder, repo_id, rev, got.commit, got.tag,
                      file_sha256(got.paths[DELTA_FILE]), got.from_cache)
