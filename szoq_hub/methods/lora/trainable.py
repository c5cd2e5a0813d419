"""`LoRATrainable` (`finetune --lora R`): adapters on the frozen quantized base, no mask (runtime.py).

The adapter's one flat fp32 vector is a `VectorTrainable`'s values, so the checkpoint (values,
best values, optimizer state), restore and best-dev logic are the shared ones; its best-dev and
final files are szoq LoRA adapters (file.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ...data.models import fingerprint_from, parameter_layout, resolve_model
from ..trainable import VectorTrainable, card_task
from .config import LORA_FILE
from .file import save_lora

if TYPE_CHECKING:
    from ...training.config import FinetuneConfig
    from ...training.run_folder import RunFolder

LORA_CARD_TAGS = ["szoq", "lora", "zeroth-order"]


class LoRATrainable(VectorTrainable):
    """ZO-LoRA: the adapters' A and B, flat, on the frozen quantized base."""

    final_file = LORA_FILE

    def __init__(self, config: FinetuneConfig, device: torch.device, dtype: torch.dtype, settings: dict, writer: bool) -> None:
        from ...runtime.sparse import load_sparse_model
        from .runtime import attach_lora

        self.source = resolve_model(config.model, revision=config.revision)
        self.fingerprint = fingerprint_from(parameter_layout(self.source), self.source.identity)
        base = load_sparse_model(self.source, None, quant=config.quant, device=device, compute_dtype=dtype)
        self.lora_settings = config.method_config.settings()
        self.lora = attach_lora(base.model, base.tokenizer, self.lora_settings, seed=config.seed, device=device, base=base)
        self.model, self.tokenizer = self.lora.model, self.lora.tokenizer
        super().__init__(self.lora.values, config, settings, writer)  # values [n] fp32: every A and B, flat
        self.perturbed = self.lora.perturbed

    def record(self) -> dict:
        s = self.lora_settings
        return {"nnz": self.nnz, "mask_sha256": None, "mask_ref": None,
                "lora": {"rank": s.rank, "alpha": s.alpha, "targets": list(s.targets), "modules": len(self.lora.segments)}}

    def _tensors(self, values: torch.Tensor) -> dict[str, torch.Tensor]:
        """`adapter_tensors()` of a given flat vector [n] (e.g. the kept best values)."""
        vals = values.detach().to("cpu")[None]  # [1, n]
        out = {}
        for seg in self.lora.segments:
            out[f"{seg.module}.lora_A.weight"] = seg.a(vals)[0].clone()  # [r, in]
            out[f"{seg.module}.lora_B.weight"] = seg.b(vals)[0].clone()  # [out, r]
        return out

    def save_values(self, path: Path, values: torch.Tensor, **facts) -> None:
        save_lora(path, self._tensors(values), settings=self.lora_settings, fingerprint=self.fingerprint,
                  base_model=self.source.base_model, run_settings={**self.settings, **facts})

    def write_final(self, run: RunFolder, config: FinetuneConfig, result: dict) -> None:
        s = self.lora_settings
        run.write_card(title=f"# ZO-LoRA adapter for {self.source.base_model}",
                       summary="Low-rank adapters (fp32) on the frozen quantized base, trained with zeroth-order SPSA (ZO-LoRA, the "
                               "equal-memory baseline of SensZOQ). `lora.safetensors` holds `{module}.lora_A.weight` / `lora_B.weight`.",
                       rows=[("adapter", f"rank {s.rank}, alpha {s.alpha:g}, on {', '.join(s.targets)} ({self.nnz:,} values)"),
                             ("quant", config.quant)], config=config,
                       result={**result, "base_model": self.source.base_model}, tags=LORA_CARD_TAGS,
                       use=[f"szoq eval --delta THIS_FOLDER --task {card_task(config)}",
                            "szoq merge --delta THIS_FOLDER --out merged/"])
        self.save_values(run.file(self.final_file), self.values, **result)
