"""The model card of a mask artifact (`README.md`): YAML front matter for the Hub, then a summary.

Split from `artifact.py` (the file format) because the card is presentation: nothing reads it
back, and the Hub's `szoq:` block in it serves search listings only.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ..core.files import path_exists

if TYPE_CHECKING:  # an annotation only: artifact.py imports this module
    from .artifact import MaskConfig

CARD_TAGS = ["szoq", "sensitivity-mask", "zeroth-order"]


def card_base_model(base_model: str | None) -> str | None:
    """The `base_model:` a card may carry: a Hub id links on the Hub; a local path stays out."""
    if base_model and re.fullmatch(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+", base_model) and not path_exists(base_model):
        return base_model
    return None


def render_card(config: MaskConfig, *, title: str | None = None, repo_id: str | None = None, tag: str | None = None) -> str:
    """Model card text: YAML front matter for the Hub, then a human summary."""
    from huggingface_hub import ModelCardData

    # The `szoq:` block lets `szoq mask search` show density and scorer from a listing alone.
    szoq_meta = {"density": config.density, "scope": config.scope, "scorer": config.scorer,
                 "nnz": config.stats.get("total_nnz"), "fingerprint": config.fingerprint}
    data = ModelCardData(library_name="szoq", base_model=card_base_model(config.base_model), tags=CARD_TAGS, szoq=szoq_meta)
    stats = config.stats
    calib = config.calibration or {}
    use_ref = f"{repo_id}@{tag}" if repo_id and tag else (repo_id or "PATH_OR_REF")
    lines = [
        "---",
        data.to_yaml(),
        "---",
        "",
        f"# {title or 'Sensitivity mask'} for {config.base_model}",
        "",
        "A static sparsity mask for zeroth-order fine-tuning of quantized LLMs (SensZOQ, ICLR 2025):",
        "the weights listed here stay in fp32 and are the only ones fine-tuned; the rest is quantized.",
        "",
        "| fact | value |",
        "|---|---|",
        f"| base model | `{config.base_model}` |",
        f"| scorer | {config.scorer} |",
        f"| density | {config.density:g} ({config.scope}) |",
        f"| selected weights (nnz) | {stats.get('total_nnz', 'n/a')} of {stats.get('total_numel', 'n/a')} |",
        f"| score mass captured | {stats.get('captured_share', 'n/a')} |",
        f"| calibration | {calib.get('source', 'none')}, {calib.get('samples', '-')} x {calib.get('seq_len', '-')} tokens, seed {calib.get('seed', '-')} |",
        f"| fingerprint | `{config.fingerprint[:16]}` |",
        f"| szoq version | {config.szoq_version} |",
        "",
        "## Build recipe",
        "",
        "```",
        config.command or "(not recorded)",
        "```",
        "",
        "## Use",
        "",
        "```",
        f"szoq finetune --model {config.base_model} --mask {use_ref}",
        "```",
        "",
    ]
    return "\n".join(lines)
