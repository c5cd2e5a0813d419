"""What a delta repo on the Hub shows: the card pushed with a delta, and the run's config as published.

The delta's `Artifact` description for the transport (`hub/transport.py`), push and pull sit
with the `Delta` class in delta.py; a delta repo holds `delta.safetensors`,
`finetune_config.json`, `metrics.jsonl` and the card (never checkpoints).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from typing import TYPE_CHECKING

from ...core import schema
from ...core.public import local_paths, public, public_text
from ...hub.masks import text_or_none
from ...hub.transport import CARD_FILE
from ...masks.card import card_base_model
from .config import DELTA_CARD_TAGS

if TYPE_CHECKING:
    from .delta import Delta

RUN_CONFIG_FILE = "finetune_config.json"  # the names szoq finetune writes (szoq_hub.training.finetune)
RUN_METRICS_FILE = "metrics.jsonl"


def render_delta_card(folder: Path, delta: Delta, *, repo_id: str, tag: str | None) -> str:
    """The model card pushed with a delta: the run's own card, with Hub metadata and use lines.

    The body of the `README.md` that `szoq finetune` wrote is kept (its `THIS_FOLDER`
    placeholders become `ORG/NAME@TAG`); the front matter is rebuilt so that it always carries
    `library_name: szoq`, `base_model:` (when it is a Hub id) and the delta tags.

    Args:
        folder: The run folder.
        delta: The verified delta in it.
        repo_id: `ORG/NAME` it is pushed to.
        tag: The tag it gets (None for a pull request).

    Returns:
        The card text.
    """
    from huggingface_hub import ModelCardData

    ref = f"{repo_id}@{tag}" if tag else repo_id
    run = run_config_of(folder)
    settings = run["settings"] or delta.settings
    base_model = delta.meta.get("base_model", "")
    task = text_or_none(run["task"].get("name")) or text_or_none(settings.get("task")) or "TASK"
    quant = text_or_none(settings.get("quant"))
    szoq_meta = {"kind": "delta", "task": task, "mask_sha256": delta.mask_sha256, "fingerprint": delta.fingerprint,
                 "nnz": int(delta.meta.get("nnz", 0)), "quant": quant}
    data = ModelCardData(library_name="szoq", base_model=card_base_model(base_model), tags=DELTA_CARD_TAGS, szoq=szoq_meta)
    local = folder / CARD_FILE
    body = re.sub(r"\A---\n.*?\n---\n", "", local.read_text(errors="replace"), count=1, flags=re.S) if local.is_file() else \
        f"\n# Sparse ZO delta for {base_model}\n\nFine-tuned sparse values (fp32) over a sensitivity mask (SensZOQ).\n"
    body = public_text(body.replace("THIS_FOLDER", ref), local_paths(run))
    if f"--delta {ref}" not in body:  # a hand-written card: add the use lines
        body = body.rstrip("\n") + f"\n\n## Use\n\n```\nszoq eval --task {task} --delta {ref}\nszoq merge --delta {ref} --out merged/\n```\n"
    return "\n".join(["---", data.to_yaml(), "---", body if body.startswith("\n") else "\n" + body])


def publish_file(fname: str, data: bytes) -> bytes:
    """finetune_config.json goes out with local paths reduced to names; other files as they are."""
    if fname != RUN_CONFIG_FILE:
        return data
    try:
        config = json.loads(data)
    except (ValueError, RecursionError):
        return data  # verified before the push: not reached
    return (json.dumps(public(config), indent=2) + "\n").encode()


def run_config_of(folder: Path) -> dict:
    """The run's finetune_config.json (type-checked), or empty settings when there is none."""
    path = folder / RUN_CONFIG_FILE
    if not path.is_file():
        return {"settings": {}, "task": {}}
    return schema.run_config(path, hint="the run folder is damaged: restore finetune_config.json or fine-tune again")
