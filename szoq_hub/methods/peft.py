"""What every method's PEFT export shares: the adapter folder's file names and `PeftExport`, the report.

`szoq export peft` (export/peft.py) finds the run's method and calls its `MethodResult.export_peft`:
a sparse delta becomes a SHiRA adapter (sparse/peft.py), a ZO-LoRA run a LoRA adapter (lora/result.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
CARD_FILE = "README.md"
PEFT_FILES = (ADAPTER_FILE, ADAPTER_CONFIG_FILE)


@dataclass
class PeftExport:
    """What `export_peft` wrote."""

    out: Path
    r: int
    layers: int
    nnz: int
    entries: int
    base_model: str
    peft_type: str = "SHIRA"  # LORA for a --lora run

    @property
    def padding(self) -> int:
        """Zero-update entries added so that every layer holds r * (in + out)."""
        return self.entries - self.nnz

    def summary(self) -> str:
        """One line on what was written (the CLI's note)."""
        name = {"SHIRA": "SHiRA", "LORA": "LoRA"}.get(self.peft_type, self.peft_type)
        padding = f" + {self.padding:,} zero-update padding entries" if self.padding else ""
        return f"{name} r={self.r}: {self.layers} layers, {self.nnz:,} trained values{padding}"

    def to_dict(self) -> dict:
        return asdict(self) | {"out": str(self.out), "padding": self.padding}


def use_lines(base_model: str) -> list[str]:
    """The card's `## Use` block: load the base in fp32, then the adapter with PEFT."""
    return ["## Use", "", "```python",
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM",
            f'base = AutoModelForCausalLM.from_pretrained("{base_model}", dtype="float32")',
            'model = PeftModel.from_pretrained(base, "THIS_REPO_OR_FOLDER")',
            "```", ""]
