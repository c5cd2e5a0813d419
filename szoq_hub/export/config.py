"""`PeftExportConfig`: the settings of `szoq export peft`, torch-free (`szoq export peft --help` reads them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..training.config import MergeConfig, shared_field


@dataclass
class PeftExportConfig:
    """Settings of a PEFT export: a fine-tuned delta written as a PEFT adapter folder."""

    # The library takes a local run folder or file; the CLI resolves a Hub ref first (`resolve_delta_ref`).
    delta: str | Path = field(metadata={"help": "Run folder, delta.safetensors, or ORG/NAME or ORG/NAME@REV on the Hub."})
    out: str | Path = field(metadata={"help": "New folder for the adapter (adapter_config.json, adapter_model.safetensors)."})
    model: str | None = shared_field(MergeConfig, "model")
    mask_ref: str | None = field(default=None, metadata={"flag": "--mask", "help": "Mask REF (default: the one the delta was trained "
                                                                                   "with, else the built-in; not for a --lora run)."})
    revision: str | None = shared_field(MergeConfig, "revision")
