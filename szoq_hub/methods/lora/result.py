"""`LoRAResult`: a finished ZO-LoRA run (`lora.safetensors`) for `eval`, `merge` and `export peft`.

A LoRA run exports as what it is, a native PEFT LoRA adapter: its `{module}.lora_A/B.weight`
tensors under PEFT's `base_model.model.` prefix, with r, lora_alpha and the adapted modules (by
full name) in a `LoraConfig`; PEFT's update (alpha / r) B A is szoq's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ...core.defaults import DEFAULT_MODEL
from ...core.devices import dtype_name, require_quant_backend, resolve_dtype
from ...core.errors import ConfigError, MaskError
from ...core.files import atomic_dir
from ...data.models import model_fingerprint, resolve_model
from ..peft import ADAPTER_FILE, CARD_FILE, PeftExport, use_lines
from ..result import Merged, MethodResult, Scorable, refuse_mask_for
from .config import LORA_FILE
from .file import LORA_FORMAT, is_lora_file, load_lora, model_module_shapes

PEFT_LORA_TAGS = ["szoq", "peft", "lora", "zeroth-order"]


class LoRAResult(MethodResult):
    """LoRA adapters on the base model the run was trained on."""

    file = LORA_FILE
    describes = "a LoRA adapter"
    flag = "--lora"
    peft_adapter = ("LORA", "szoq.lora.peft", ".lora_A.weight")

    @classmethod
    def holds(cls, ref: str | Path) -> bool:
        return is_lora_file(ref)

    @classmethod
    def check_eval(cls, ref: str | Path, *, mask: str | None, quant: str | None, dtype: str | None) -> None:
        if mask is not None:
            raise ConfigError(f"--mask does not apply to {ref}: a LoRA run's adapters sit on the quantized base, no mask",
                              hint="drop --mask to evaluate a --lora run")
        require_quant_backend(quant or "nf4")

    @classmethod
    def for_eval(cls, ref: str | Path, *, model: str | None, mask: str | None, quant: str | None, dtype: str | None,
                 revision: str | None, device: Any) -> Scorable:
        """The quantized base with the adapter on it; without --quant, quantized as the run's was."""
        from ...runtime.sparse import load_sparse_model
        from .runtime import attach_lora

        adapter = load_lora(ref)
        source = resolve_model(model or adapter.model_ref or DEFAULT_MODEL, revision=revision)
        adapter.check_fingerprint(model_fingerprint(source))  # before any weight loads
        recorded = adapter.run_settings.get("quant")  # a header value: used only when it is a name
        quant = quant or (recorded if isinstance(recorded, str) else None) or "nf4"
        require_quant_backend(quant)
        compute = resolve_dtype(dtype, device)
        base = load_sparse_model(source, None, quant=quant, device=device, compute_dtype=compute)
        lora = attach_lora(base.model, base.tokenizer, adapter.settings, device=device)
        lora.load_adapter(adapter.tensors)
        return Scorable(lora.model, lora.tokenizer, "lora", dtype_name(compute))

    @classmethod
    def merged(cls, ref: str | Path, *, model: str | None, mask_ref: str | None, revision: str | None, device: Any) -> Merged:
        """The fp32 base model with (alpha / r) B A added to each adapted weight.

        Raises:
            ConfigError: a --mask given. FingerprintMismatch: another base model. MaskError: a bad adapter file,
                or one naming a weight the model lacks.
        """
        from ...data.models import load_model

        refuse_mask_for(ref, mask_ref, what="a LoRA run's adapters sit on the base model, no mask", action="drop --mask to merge a --lora run")
        adapter = load_lora(ref)  # hash, ranges and targets verified
        source = resolve_model(model or adapter.model_ref or DEFAULT_MODEL, revision=revision)
        adapter.check_fingerprint(model_fingerprint(source))
        updates = adapter.weight_deltas(model_module_shapes(source, adapter.settings))  # shapes checked against the model's before any product
        loaded = load_model(source, dtype=torch.float32)
        loaded.model.to(device)
        params = dict(loaded.model.named_parameters())
        with torch.no_grad():
            for name, update in updates.items():  # [out, in] fp32
                if name not in params or params[name].shape != update.shape:
                    raise MaskError(f"the model has no weight {name} of shape {list(update.shape)}",
                                    hint="merge into the base model the LoRA run was trained on")
                params[name].add_(update.to(params[name].device))
        return Merged(loaded.model, loaded.tokenizer, loaded.source, sum(t.numel() for t in adapter.tensors.values()))

    @classmethod
    def export_peft(cls, peft: Any, ref: str | Path, out: Path, *, model: str | None, mask_ref: str | None, revision: str | None):
        """The run as a native PEFT LoRA adapter folder (see the module doc)."""
        from safetensors.torch import save_file

        from ...masks.card import card_base_model

        refuse_mask_for(ref, mask_ref, what="a LoRA run's adapters sit on the base model, no mask", action="drop --mask to export a --lora run")
        adapter = load_lora(ref)  # hash, ranges and targets verified
        source = resolve_model(model or adapter.model_ref or DEFAULT_MODEL, revision=revision)
        adapter.check_fingerprint(model_fingerprint(source))  # needs the config only, no weights
        adapter.check_modules(model_module_shapes(source, adapter.settings))  # the modules and shapes its targets select on the model
        modules, s = adapter.modules, adapter.settings
        tensors = {f"base_model.model.{k}": t.contiguous() for k, t in adapter.tensors.items()}
        config = peft.LoraConfig(r=s.rank, lora_alpha=s.alpha, target_modules=modules, lora_dropout=0.0, bias="none", inference_mode=True,
                                 base_model_name_or_path=source.base_model, revision=source.revision if source.kind == "hub" else None)
        nnz = sum(int(t.numel()) for t in adapter.tensors.values())
        result = PeftExport(out, s.rank, len(modules), nnz, nnz, source.base_model, peft_type="LORA")
        meta = {"format": "pt", "szoq_format": f"{LORA_FORMAT}.peft", "szoq_fingerprint": adapter.fingerprint, "szoq_base_model": source.base_model}
        card = _card(result, s.alpha, Path(ref).name, card_base_model(source.base_model))
        with atomic_dir(out) as tmp:
            config.save_pretrained(str(tmp))
            save_file(tensors, str(tmp / ADAPTER_FILE), metadata=meta)
            (tmp / CARD_FILE).write_text(card)
        return result


def _card(result: PeftExport, alpha: float, source_ref: str, base_model: str | None) -> str:
    from huggingface_hub import ModelCardData

    data = ModelCardData(library_name="peft", base_model=base_model, tags=PEFT_LORA_TAGS)
    return "\n".join([
        "---", data.to_yaml(), "---", "",
        f"# LoRA adapter for {result.base_model} (a szoq ZO-LoRA run)", "",
        f"Rank-{result.r} LoRA (alpha {alpha:g}) fine-tuned with zeroth-order SPSA on a quantized base (ZO-LoRA), exported by `szoq export peft`.", "",
        "| fact | value |", "|---|---|",
        f"| adapted layers | {result.layers} |", f"| adapter values | {result.nnz:,} |", f"| exported from | `{source_ref}` |", "",
        *use_lines(result.base_model),
    ])
