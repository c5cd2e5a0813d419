"""`build_mask`: model + calibration windows -> scores -> selection -> artifact folder."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.distributed as dist

from .calibration import load_windows
from .errors import ConfigError
from .mask import MaskConfig, SCOPES, SensitivityMask, captured_share, captured_share_per_tensor, check_density, mask_stats, save_mask, select
from .models import DEFAULT_MODEL, fingerprint_from, load_model, resolve_model, target_parameter_names
from .sensitivity import ProgressFn, check_scorer, fisher_scores, magnitude_scores, random_scores

log = logging.getLogger(__name__)

DEFAULT_CALIBRATION = "c4"


@dataclass
class MaskBuildConfig:
    """Options of `szoq mask build` (validated on creation)."""

    model: str = field(default=DEFAULT_MODEL, metadata={"help": "model alias, Hub id, folder or .gguf"})
    revision: str | None = field(default=None, metadata={"help": "Hub revision of the model"})
    calibration: str = field(default=DEFAULT_CALIBRATION, metadata={"help": "'c4' or a .jsonl(.gz)/.txt file"})
    samples: int = field(default=32, metadata={"help": "calibration windows N"})
    seq_len: int = field(default=256, metadata={"help": "tokens per window L"})
    density: float = field(default=1e-3, metadata={"help": "share of weights kept, in (0, 1)"})
    scope: str = field(default="per-matrix", metadata={"help": "per-matrix or global"})
    scorer: str = field(default="fisher", metadata={"help": "fisher, magnitude or random"})
    targets: str | None = field(default=None, metadata={"help": "regex over parameter names"})
    seed: int = field(default=0, metadata={"help": "seed of window order and random scores"})

    def __post_init__(self) -> None:
        check_density(self.density)
        check_scorer(self.scorer)
        if self.scope not in SCOPES:
            raise ConfigError(f"unknown scope {self.scope!r}", hint=f"choose one of: {', '.join(SCOPES)}")
        if self.samples < 1 or self.seq_len < 2:
            raise ConfigError(f"need --samples >= 1 and --seq-len >= 2 (got {self.samples}, {self.seq_len})", hint="e.g. --samples 32 --seq-len 256")


def _maybe_init_distributed() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")


def build_timestamp() -> str:
    """UTC build time; honours SOURCE_DATE_EPOCH so that rebuilds can be byte-identical."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = datetime.fromtimestamp(int(epoch), timezone.utc) if epoch else datetime.now(timezone.utc)
    return when.isoformat(timespec="seconds")


def is_main_process() -> bool:
    """True outside torch.distributed, or on rank 0."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def build_mask(config: MaskBuildConfig, out: Path | None, *, progress: ProgressFn | None = None, command: str | None = None) -> tuple[SensitivityMask, Path | None]:
    """Compute a sensitivity mask and write its artifact folder.

    Under torchrun (WORLD_SIZE > 1) every rank scores its shard of the windows, the scores are
    all-reduced, and only rank 0 writes.

    Args:
        config: Build options.
        out: Folder to write the artifact to (must not exist or be empty); None = do not write.
        progress: Optional progress callback (windows done, total, tokens).
        command: The command line to record as the build recipe.

    Returns:
        (mask, folder written or None on non-zero ranks / when out is None).
    """
    _maybe_init_distributed()
    source = resolve_model(config.model, revision=config.revision)
    loaded = load_model(source, dtype=torch.float32)
    model = loaded.model
    targets = target_parameter_names(model, config.targets)
    layout = [(n, tuple(p.shape), str(p.dtype).removeprefix("torch.")) for n, p in model.named_parameters()]
    fingerprint = fingerprint_from(layout, source.identity)

    calibration = None
    if config.scorer == "fisher":
        windows, info = load_windows(config.calibration, loaded.tokenizer, samples=config.samples, seq_len=config.seq_len, seed=config.seed)
        calibration = info.to_dict()
        scores = fisher_scores(model, targets, windows, progress=progress)
    elif config.scorer == "magnitude":
        scores = magnitude_scores(model, targets)
    else:
        scores = random_scores(model, targets, config.seed)

    params = dict(model.named_parameters())
    shapes = {n: list(params[n].shape) for n in targets}
    indices = select(scores, config.density, config.scope)
    stats = mask_stats(indices, shapes)
    stats["captured_share"] = round(captured_share(scores, indices), 6)
    stats["captured_share_per_tensor"] = captured_share_per_tensor(scores, indices)
    del scores
    mask_config = MaskConfig(
        base_model=source.base_model,
        base_revision=source.revision,
        fingerprint=fingerprint,
        density=config.density,
        scope=config.scope,
        scorer=config.scorer,
        shapes=shapes,
        calibration=calibration,
        targets=config.targets,
        seed=config.seed,
        command=command,
        created_at=build_timestamp(),
        stats=stats,
    )
    mask = SensitivityMask(indices, mask_config)
    if out is None or not is_main_process():
        return mask, None
    return mask, save_mask(mask, out)

