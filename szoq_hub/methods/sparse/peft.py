"""Export a fine-tuned delta as a PEFT SHiRA adapter (`pip install 'szoq[peft]'`).

PEFT's SHiRA adapter is a sparse additive update: per adapted linear, a flat trainable vector
`shira_weight` [K] and fixed `shira_indices` [2, K] (row, col), applied as W + sparse(indices,
weight). A szoq delta instead holds the fine-tuned *values* of the masked weights, so the
exported update is `values - W[mask]`, taken from the same full-precision weights `szoq merge`
writes into; `PeftModel.from_pretrained(base, DIR)` then computes the merged model's logits
(up to fp32 rounding of W + (v - W)).

SHiRA fixes K = r * (in + out) for every adapted layer, with one `r` for the whole adapter,
while a mask has its own nnz per matrix. The export picks the smallest r that holds every
layer's nnz and pads each layer with zero-update entries at positions outside the mask (the
first flat indices not selected): they add exactly 0. A per-matrix 0.1% mask on SmolLM2
(nnz 110-884 per matrix) needs r = 1, i.e. 768-2112 entries per matrix.

Only layers the mask touches are adapted (`target_modules` lists them by full name). The
safetensors header also carries szoq's link to the delta (mask sha256, base fingerprint).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ...core.errors import ConfigError
from ...core.files import atomic_dir, disk_errors
from ..peft import ADAPTER_FILE, CARD_FILE, PeftExport, use_lines

PEFT_TAGS = ["szoq", "peft", "shira", "sparse-delta", "zeroth-order"]


def shira_rank(shapes: dict[str, tuple[int, int]], nnz: dict[str, int]) -> int:
    """The smallest SHiRA r with r * (out + in) >= nnz for every layer.

    Args:
        shapes: name -> (out, in) of each adapted linear weight.
        nnz: name -> selected weights in it.

    Raises:
        ConfigError: some layer cannot hold r * (out + in) entries (a mask far denser than SHiRA allows).
    """
    r = max([1, *(math.ceil(nnz[n] / (o + i)) for n, (o, i) in shapes.items())])
    for name, (o, i) in shapes.items():
        if r * (o + i) > o * i:
            raise ConfigError(f"SHiRA cannot express this mask: r={r} needs {r * (o + i)} entries in {name}, which has {o * i} weights",
                              hint="export a sparser mask's delta (SHiRA holds r * (in + out) entries per layer, one r for all)")
    return r


def shira_entries(flat_idx: torch.Tensor, update: torch.Tensor, shape: tuple[int, int], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's SHiRA tensors: the mask's entries, then zero-update padding up to k.

    Args:
        flat_idx: sorted flat indices (row * in + col) of the masked weights, [nnz].
        update: values - base at those positions, fp32 [nnz].
        shape: (out, in) of the weight.
        k: entries the layer must hold (r * (out + in)), >= nnz.

    Returns:
        (indices int32 [2, k] as (row, col), weight fp32 [k]).
    """
    flat_idx = flat_idx.long()
    n_pad = k - flat_idx.numel()
    candidates = torch.arange(k, dtype=torch.long)  # [k]: at most nnz of them are in the mask
    pad = candidates[~torch.isin(candidates, flat_idx)][:n_pad]  # [n_pad]
    flat = torch.cat([flat_idx, pad])  # [k]
    cols = shape[1]
    indices = torch.stack([flat // cols, flat % cols]).to(torch.int32)  # [2, k]
    weight = torch.cat([update.to(torch.float32), torch.zeros(n_pad, dtype=torch.float32)])  # [k]
    return indices, weight


def _card(result: PeftExport, source_ref: str, base_model: str | None) -> str:
    from huggingface_hub import ModelCardData

    data = ModelCardData(library_name="peft", base_model=base_model, tags=PEFT_TAGS)
    return "\n".join([
        "---", data.to_yaml(), "---", "",
        f"# SHiRA adapter for {result.base_model} (exported from a szoq delta)", "",
        "A sparse update fine-tuned with zeroth-order SPSA on a quantized base (SensZOQ) and exported by `szoq export peft`.", "",
        "| fact | value |", "|---|---|",
        f"| adapted layers | {result.layers} |", f"| fine-tuned weights (nnz) | {result.nnz:,} |",
        f"| SHiRA r | {result.r} (entries {result.entries:,}; {result.padding:,} zero-update padding) |",
        f"| exported from | `{source_ref}` |", "",
        *use_lines(result.base_model),
    ])


def export_shira(peft, *, delta: str | Path, out: Path, model: str | None = None, mask_ref: str | None = None,
                 revision: str | None = None) -> PeftExport:
    """Write a PEFT SHiRA adapter folder holding a fine-tuned delta as a sparse update (see the module doc).

    Args:
        peft: The `peft` module (export/peft.py checked that it is installed and has SHiRA).
        delta: Run folder or delta file (local; resolve Hub refs first).
        out: Output folder, new or empty (export/peft.py checked it): `adapter_config.json`,
            `adapter_model.safetensors`, `README.md`.
        model: The base model the delta was trained on (alias, Hub id, folder, .gguf; default:
            the one the delta records, as for `merge` and `eval`).
        mask_ref: The mask the delta was trained with (default: the one the delta records).
        revision: Hub revision of the model.

    Returns:
        What was written (r, layers, nnz, padded entries).

    Raises:
        ConfigError: a mask SHiRA cannot express.
        FingerprintMismatch, MaskError: the delta does not fit the model/mask, or is corrupt.
    """
    from safetensors.torch import save_file

    from .delta import load_delta
    from .setup import model_and_mask_for, open_model_and_mask
    from ...masks.card import card_base_model
    from ...data.models import load_model

    load_delta(delta)  # a dense, unfinished or corrupt run is refused before the model loads (a GGUF converts for seconds)
    model, mask_ref = model_and_mask_for(delta, model, mask_ref)  # the delta's own, like merge and eval
    source, fingerprint, mask, mask_sha = open_model_and_mask(model, mask_ref, revision)
    loaded_delta = load_delta(delta, mask=mask, mask_sha256=mask_sha, fingerprint=fingerprint)
    params = dict(load_model(source, dtype=torch.float32).model.named_parameters())  # the weights merge writes into
    names = [n for n, idx in mask.indices.items() if idx.numel()]
    shapes = {n: tuple(params[n].shape) for n in names}
    for name, shape in shapes.items():
        if len(shape) != 2:
            raise ConfigError(f"{name} is not a linear weight {list(shape)}", hint="SHiRA adapts linear layers only")
    r = shira_rank(shapes, {n: int(mask.indices[n].numel()) for n in names})
    tensors: dict[str, torch.Tensor] = {}
    for name in names:
        idx = mask.indices[name].long()
        update = loaded_delta.tensors[name] - params[name].detach().reshape(-1)[idx]  # [nnz]: values - base
        o, i = shapes[name]
        indices, weight = shira_entries(idx, update, (o, i), r * (o + i))
        module = name.removesuffix(".weight")
        tensors[f"base_model.model.{module}.shira_indices"] = indices
        tensors[f"base_model.model.{module}.shira_weight"] = weight
    # The base as szoq names it (a Hub id, or a local folder's name: never an absolute path);
    # the exact weights are pinned by szoq_fingerprint in the safetensors header.
    base_name = source.base_model
    config = peft.ShiraConfig(r=r, target_modules=[n.removesuffix(".weight") for n in names], random_seed=0, inference_mode=True,
                              base_model_name_or_path=base_name, revision=source.revision if source.kind == "hub" else None)
    result = PeftExport(out, r, len(names), mask.nnz, sum(int(t.numel()) for k, t in tensors.items() if k.endswith("shira_weight")), base_name)
    meta = {"format": "pt", "szoq_format": "szoq.delta.shira", "szoq_mask_sha256": mask_sha, "szoq_fingerprint": fingerprint,
            "szoq_base_model": source.base_model, "szoq_nnz": str(mask.nnz)}
    with disk_errors(out), atomic_dir(out) as tmp:
        config.save_pretrained(str(tmp))
        save_file(tensors, str(tmp / ADAPTER_FILE), metadata=meta)
        (tmp / CARD_FILE).write_text(_card(result, Path(delta).name, card_base_model(source.base_model)))
    return result
