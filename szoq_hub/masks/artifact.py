"""The sensitivity mask: selection of top-scored weights, the artifact on disk, verification.

Artifact layout (a folder; the same files go to the Hub):
- `mask.safetensors`: one int32 tensor of sorted, unique flat indices per target parameter,
  keyed by the parameter name; `__metadata__` holds the facts as strings (JSON for structure).
  Optionally (fisher builds since format_version 2), one fp32 tensor `scores/NAME` per index
  tensor: the kept weights' Σg², in the order of the indices. The content sha256 covers them;
  a mask with scores is written as format_version 2 (a reader that knows only 1 refuses it
  with "upgrade szoq" instead of misreading it), one without stays byte-identical to version 1.
- `mask_config.json`: the same facts as a typed config, plus stats.
- `README.md`: a model card.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..core.defaults import __version__
from ..core import schema
from ..core.errors import ConfigError, FingerprintMismatch, MaskError
from ..core import content
from ..core.content import CONTENT_KEY, SCHEME_KEY
from ..core.files import atomic_dir, file_sha256, path_exists
from .card import render_card

FORMAT = "szoq.mask"
FORMAT_VERSION = "1"  # a mask without scores
SCORES_FORMAT_VERSION = "2"  # a mask with `scores/NAME` tensors
FORMAT_VERSIONS = (FORMAT_VERSION, SCORES_FORMAT_VERSION)
MASK_FILE = "mask.safetensors"
CONFIG_FILE = "mask_config.json"
CARD_FILE = "README.md"
SCOPES = ("per-matrix", "global")


@dataclass
class MaskConfig:
    """Facts about a mask (what `mask_config.json` holds and the header mirrors)."""

    base_model: str
    base_revision: str | None
    fingerprint: str
    density: float
    scope: str
    scorer: str
    shapes: dict[str, list[int]]
    calibration: dict | None = None
    targets: str | None = None
    seed: int = 0
    command: str | None = None
    szoq_version: str = __version__
    created_at: str = ""
    format: str = FORMAT
    format_version: str = FORMAT_VERSION
    stats: dict = field(default_factory=dict)
    # sha256 over the header and the index tensors (`core.content`, scheme `hash_scheme`); "" for
    # masks written before it existed, and hash_scheme "" for masks hashed by scheme 1 (indices only).
    content_sha256: str = ""
    hash_scheme: str = ""

    def __post_init__(self) -> None:
        check_density(self.density)
        if self.scope not in SCOPES:
            raise ConfigError(f"unknown scope {self.scope!r}", hint=f"choose one of: {', '.join(SCOPES)}")

    def header(self) -> dict[str, str]:
        """The safetensors `__metadata__` (str -> str only; structure as JSON strings)."""
        return {
            "format": self.format,
            "format_version": self.format_version,
            "base_model": self.base_model,
            "base_revision": self.base_revision or "",
            "fingerprint": self.fingerprint,
            "density": repr(self.density),
            "scope": self.scope,
            "scorer": self.scorer,
            "shapes": json.dumps(self.shapes, sort_keys=True),
            "calibration": json.dumps(self.calibration, sort_keys=True),
            "szoq_version": self.szoq_version,
            "created_at": self.created_at,
            # The header is the artifact's single source of truth: mask_config.json mirrors it.
            "stats": json.dumps(self.stats, sort_keys=True),
            "command": self.command or "",
            "targets": self.targets or "",
            "seed": str(int(self.seed)),
            # Left out when not known, so that an older mask's header reads back unchanged.
            **({CONTENT_KEY: self.content_sha256} if self.content_sha256 else {}),
            **({SCHEME_KEY: self.hash_scheme} if self.hash_scheme else {}),
        }


@dataclass
class MaskData:
    """A loaded, verified mask: sorted unique int32 flat indices per parameter name (and, from
    a fisher build, the kept weights' scores).

    The mask's data, which the runtime, the registry and the Hub transport read. The public
    `SensitivityMask` (hub/sensitivity_mask.py) adds `from_pretrained` / `save_pretrained` /
    `push_to_hub` on top of it.

    Attributes:
        indices: name -> sorted unique int32 flat indices [nnz_name].
        config: The facts (base model, fingerprint, density, stats, ...).
        ref: The REF it was opened by (None for a mask built in memory).
        path: The artifact folder it was read from or written to (None when there is none).
        scores: name -> fp32 scores of the kept weights [nnz_name], in the order of `indices`
            (the fisher Σg² a build selected them by); None for masks without scores (magnitude,
            random, and masks written before szoq stored them).
    """

    indices: dict[str, torch.Tensor]
    config: MaskConfig
    ref: str | None = field(default=None, compare=False, repr=False)
    path: Path | None = field(default=None, compare=False, repr=False)
    scores: dict[str, torch.Tensor] | None = field(default=None, compare=False, repr=False)

    @property
    def nnz(self) -> int:
        return sum(int(t.numel()) for t in self.indices.values())

    def flat_scores(self, names: list[str]) -> torch.Tensor | None:
        """The scores concatenated in the order of `names` (the runtime's value order), or None.

        Args:
            names: Tensor names, each once, covering the mask (e.g. `SparseModel.segments`' names).

        Returns:
            fp32 [nnz] scores, or None when the mask has none.

        Raises:
            MaskError: `names` does not cover exactly the mask's tensors.
        """
        if self.scores is None:
            return None
        if sorted(names) != sorted(self.indices):
            raise MaskError("the tensor order given does not cover the mask's tensors", hint="pass the names of SparseModel.segments")
        return torch.cat([self.scores[n].float().reshape(-1) for n in names])  # [nnz]

    def score_summary(self) -> dict | None:
        """count, min / median / max and sum of the kept weights' scores (None when the mask has none); the lr `--lr scores`
        takes from them is `szoq_hub.training.lr_scores.lr_of_mask`."""
        if self.scores is None:
            return None
        flat = torch.cat([t.reshape(-1) for t in self.scores.values()])  # [nnz]
        return {"count": int(flat.numel()), "min": float(flat.min()), "median": float(flat.median()), "max": float(flat.max()),
                "sum": float(flat.double().sum())}


INT32_MAX = 2**31 - 1


def check_int32_range(name: str, numel: int) -> None:
    """Raise MaskError when a tensor is too large for int32 flat indices (they would wrap around)."""
    if numel - 1 > INT32_MAX:
        raise MaskError(f"{name} has {numel} elements: its flat indices do not fit the mask format's int32",
                        hint="leave this tensor out with --targets (masks store int32 flat indices)")


def check_density(density: float) -> None:
    """Raise ConfigError unless 0 < density < 1."""
    if not (isinstance(density, (int, float)) and 0.0 < density < 1.0 and math.isfinite(density)):
        raise ConfigError(f"density must be in (0, 1), got {density}", hint="the paper uses 1e-3 (0.1% of the weights)")


def captured_share(scores: dict[str, torch.Tensor], indices: dict[str, torch.Tensor]) -> float:
    """Share of the total score mass held by the selected weights."""
    total = sum(float(s.double().sum()) for s in scores.values())
    kept = sum(float(scores[n].flatten()[i.long()].double().sum()) for n, i in indices.items())
    return kept / total if total > 0 else 0.0


def captured_share_per_tensor(scores: dict[str, torch.Tensor], indices: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per tensor, the share of its own score mass held by its selected weights (0 when none)."""
    out = {}
    for name, s in scores.items():
        total = float(s.double().sum())
        kept = float(s.flatten()[indices[name].long()].double().sum()) if name in indices else 0.0
        out[name] = round(kept / total, 6) if total > 0 else 0.0
    return out


def mask_stats(indices: dict[str, torch.Tensor], shapes: dict[str, list[int]]) -> dict:
    """nnz per tensor and in total."""
    nnz = {n: int(indices[n].numel()) if n in indices else 0 for n in shapes}
    numel = sum(math.prod(s) for s in shapes.values())
    return {"nnz": nnz, "total_nnz": sum(nnz.values()), "total_numel": numel}


def config_json(config: MaskConfig) -> str:
    """The text of `mask_config.json`: the header's facts, readable (one canonical form)."""
    return json.dumps(asdict(config), indent=2, sort_keys=True) + "\n"


def _file_parts(mask: MaskData) -> tuple[dict[str, torch.Tensor], MaskConfig]:
    """The tensors `mask.safetensors` holds (the indices, then `scores/NAME` when the mask has scores)
    and the config whose header it carries (content hash and format_version set)."""
    tensors = {n: t.contiguous().to(torch.int32) for n, t in mask.indices.items()}
    if mask.scores is not None:
        check_scores(mask.scores, tensors, "mask")
        tensors.update({schema.SCORES_PREFIX + n: t.detach().float().contiguous().cpu() for n, t in mask.scores.items()})
    # A copy: the caller's config object may be shared with other masks. The hash covers every
    # header field, the indices and the scores (core.content, scheme 2); every load recomputes it.
    config = replace(mask.config, content_sha256="", hash_scheme=content.SCHEME,
                     format_version=SCORES_FORMAT_VERSION if mask.scores is not None else FORMAT_VERSION)
    return tensors, replace(config, content_sha256=content.stamp(config.header(), tensors)[CONTENT_KEY])


def mask_sha256(mask: MaskData) -> str:
    """The sha256 of the mask's `mask.safetensors`: its file's when it was read from one, else the
    bytes `save_mask` writes for it (byte-reproducible), hashed without writing a file.

    Deltas name their mask by this hash; a mask built in memory is checked against it as it is.
    """
    if mask.path is not None and path_exists(Path(mask.path) / MASK_FILE):
        return file_sha256(Path(mask.path) / MASK_FILE)
    from ..data.checkpoint import tensors_file_sha256

    tensors, config = _file_parts(mask)
    return tensors_file_sha256(*_canonical(tensors, config.header()))


def save_mask(mask: MaskData, folder: Path) -> Path:
    """Write the artifact folder atomically (a temp folder renamed into place).

    Returns:
        The folder.

    Raises:
        MaskError: when the target exists and is not empty, or the mask holds no weight.
    """
    folder = Path(folder)
    if mask.nnz == 0:
        raise MaskError("refusing to save a mask with 0 weights (fine-tuning it would train nothing)", hint="check the scores and --density")
    if folder.exists() and any(folder.iterdir()):
        raise MaskError(f"{folder} already exists and is not empty", hint="choose another --out folder or remove it")
    for n, shape in mask.config.shapes.items():
        check_int32_range(n, math.prod(shape))
        if schema.is_scores_name(n):
            raise MaskError(f"tensor name {n!r} starts with {schema.SCORES_PREFIX!r}, which the mask format reserves for scores",
                            hint="leave this tensor out with --targets")
    tensors, config = _file_parts(mask)
    with atomic_dir(folder) as tmp:
        write_safetensors(tensors, tmp / MASK_FILE, config.header())
        (tmp / CONFIG_FILE).write_text(config_json(config))
        (tmp / CARD_FILE).write_text(render_card(config))
    mask.config = config
    return folder


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write a safetensors file byte-reproducibly (sorted header keys, names in sorted order).

    `safetensors.torch.save_file` orders the header through a hash map, so the same content
    can hash differently between processes; masks are content-addressed, so they are written
    here with a canonical header instead (`checkpoint.write_tensors` in sorted order). Files
    stay readable by any safetensors reader.
    """
    from ..data.checkpoint import write_tensors

    write_tensors(path, *_canonical(tensors, metadata))


def _canonical(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[list[tuple[str, torch.Tensor]], dict[str, str]]:
    """Tensors in sorted name order and sorted header keys: the canonical file layout."""
    return [(name, tensors[name]) for name in sorted(tensors)], dict(sorted(metadata.items()))


def read_header(path: Path) -> dict[str, str]:
    """Parse only the safetensors header metadata of a mask file (cheap, no tensor data).

    Raises:
        MaskError: not a safetensors file, truncated, or not a szoq mask.
    """
    header = schema.read_header(path)
    meta = header.metadata
    if meta.get("format") != FORMAT:
        raise MaskError(f"{path} is not a szoq mask (format={meta.get('format')!r:.40})", hint="a szoq mask has format=szoq.mask in its safetensors header")
    return meta


def config_from_header(header: schema.Header, where: str, config_text: bytes | None = None, config_where: str = CONFIG_FILE) -> MaskConfig:
    """The mask's facts: the type-checked header, plus what only an older mask_config.json holds.

    Args:
        header: The parsed safetensors header.
        where: The file, for messages.
        config_text: The bytes of mask_config.json when there is one; it must agree with the header.
        config_where: The config file, for messages.

    Raises:
        MaskError: not a szoq mask, a field of the wrong type, or a config that disagrees.
    """
    fields = schema.mask_fields(header, where, scopes=SCOPES, fmt=FORMAT, version=FORMAT_VERSIONS, scores_version=SCORES_FORMAT_VERSION)
    formats = {"format": FORMAT, "format_version": header.metadata["format_version"]}  # checked by mask_fields
    extras = schema.mask_config_extras(config_text, fields, config_where, formats) if config_text is not None else {}
    return MaskConfig(**fields, **extras, format_version=formats["format_version"])


def check_scores(scores: dict[str, torch.Tensor], indices: dict[str, torch.Tensor], where: str = "mask") -> None:
    """Check that a mask's scores are one finite, non-negative fp32 value per kept weight.

    Raises:
        MaskError: naming the tensor and the problem.
    """
    if set(scores) != set(indices):
        raise MaskError(f"{where}: the scores do not cover the same tensors as the indices", hint="the artifact is inconsistent: rebuild it")
    for name, s in scores.items():
        if s.dim() != 1 or s.numel() != indices[name].numel():
            raise MaskError(f"{where}: the scores of {name!r} are not one value per kept weight", hint="the artifact is inconsistent: rebuild it")
        if s.numel() and not bool(torch.isfinite(s).all() and (s >= 0).all()):
            raise MaskError(f"{where}: the scores of {name!r} hold negative or non-finite values", hint="the artifact is corrupt: rebuild it")


def verify_indices(indices: dict[str, torch.Tensor], shapes: dict[str, list[int]], where: str = "mask") -> None:
    """Check dtype, sortedness, uniqueness and range of every index tensor.

    Raises:
        MaskError: naming the tensor and the problem.
    """
    for name, idx in indices.items():
        if name not in shapes:
            raise MaskError(f"{where}: tensor {name!r} has no recorded shape", hint="the artifact is inconsistent: rebuild it")
        if idx.dtype != torch.int32:
            raise MaskError(f"{where}: tensor {name!r} has dtype {idx.dtype}, expected int32", hint="the artifact is corrupt: rebuild it")
        if idx.dim() != 1:
            raise MaskError(f"{where}: tensor {name!r} is not 1-D", hint="the artifact is corrupt: rebuild it")
        numel = math.prod(shapes[name])
        if idx.numel() == 0:
            continue
        if int(idx.min()) < 0 or int(idx.max()) >= numel:
            raise MaskError(f"{where}: tensor {name!r} has indices out of range [0, {numel})", hint="the mask does not fit the recorded shape: rebuild it")
        diffs = idx[1:] - idx[:-1]
        if bool((diffs < 0).any()):
            raise MaskError(f"{where}: tensor {name!r} has unsorted indices", hint="the artifact is corrupt: rebuild it")
        if bool((diffs == 0).any()):
            raise MaskError(f"{where}: tensor {name!r} has duplicate indices", hint="the artifact is corrupt: rebuild it")


def _pinned_by_catalog(path: Path) -> bool:
    """Whether the file's sha256 is one that masks/catalog.json pins (the built-in masks predate content hashes)."""
    from .catalog import builtin_masks

    pins = {entry.sha256 for entry in builtin_masks()}
    return bool(pins) and file_sha256(path) in pins


def load_mask(folder: Path, *, fingerprint: str | None = None, layout: list[tuple[str, tuple[int, ...], str]] | None = None) -> MaskData:
    """Load and verify a mask artifact folder (or a `mask.safetensors` path).

    Args:
        folder: The artifact folder.
        fingerprint: When given, the mask must have been built for this model fingerprint.
        layout: When given (`models.parameter_layout`), every recorded tensor must be a
            parameter of that model with the recorded shape.

    Returns:
        The verified mask.

    Raises:
        MaskError: corrupt, truncated or inconsistent artifact, or shapes that do not fit `layout`.
        FingerprintMismatch: built for another model.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    path = folder if folder.name == MASK_FILE else folder / MASK_FILE
    if not path.is_file():
        raise MaskError(f"{path} not found", hint="a mask folder holds mask.safetensors; build one with szoq mask build")
    cfg_path = path.parent / CONFIG_FILE
    try:
        config_text = cfg_path.read_bytes() if cfg_path.is_file() else None
    except OSError as exc:
        raise MaskError(f"cannot read {cfg_path} ({exc.strerror})", hint="check the folder's permissions") from None
    header = schema.read_header(path)
    config = config_from_header(header, str(path), config_text, str(cfg_path))
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise MaskError(f"{path} is corrupt or truncated ({str(exc).splitlines()[0]})", hint="pull or build the mask again") from None
    indices = {n: t for n, t in tensors.items() if not schema.is_scores_name(n)}
    scores = {n.removeprefix(schema.SCORES_PREFIX): t for n, t in tensors.items() if schema.is_scores_name(n)} or None
    verify_indices(indices, config.shapes, where=str(path))
    if scores is not None:
        check_scores(scores, indices, where=str(path))
    if sum(int(t.numel()) for t in indices.values()) == 0:
        raise MaskError(f"{path} selects 0 weights (fine-tuning it would train nothing)", hint="rebuild the mask: szoq mask build MODEL")
    # After the structural checks (their messages say more), before any use: indices, scores or
    # header fields that still look valid (sorted, unique, in range) but are not the ones written
    # are refused here. A mask of szoq 0.1.0 without a hash loads with a warning (nothing to check).
    hashless = not ({CONTENT_KEY, SCHEME_KEY} & set(header.metadata))
    content.verify(header.metadata, str(path), MaskError, tensors=tensors, hashless_ok=True, hint="pull or build the mask again",
                   pinned=hashless and _pinned_by_catalog(path))
    if fingerprint is not None and fingerprint != config.fingerprint:
        raise FingerprintMismatch(
            f"mask was built for {config.base_model} (fingerprint {config.fingerprint[:12]}), not for this model ({fingerprint[:12]})",
            hint="build a mask for this model with: szoq mask build MODEL",
        )
    if layout is not None:
        schema.check_fits_model(config.shapes, layout, str(path))
    return MaskData(indices, config, path=path.parent, scores=scores)

