"""`SparseResult`: a finished sparse run (its delta) for `eval`, `merge`, `export peft` and `delta push`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ...core.devices import dtype_name, require_quant_backend, resolve_dtype
from ..result import Merged, MethodResult, Scorable
from .config import DELTA_FILE
from .delta import DELTA, load_delta, pull_delta, push_delta, write_into
from .setup import model_and_mask_for, open_model_and_mask


class SparseResult(MethodResult):
    """A delta: fp32 values over a mask, on the model it was trained on."""

    file = DELTA_FILE
    describes = "a sparse delta"
    flag = "--mask"
    peft_adapter = ("SHIRA", "szoq.delta.shira", ".shira_weight")
    hub = DELTA

    @classmethod
    def push(cls, folder: Path, **kwargs: Any):
        return push_delta(folder, **kwargs)

    @classmethod
    def pull(cls, repo_id: str, **kwargs: Any):
        return pull_delta(repo_id, **kwargs)

    @classmethod
    def check_eval(cls, ref: str | Path, *, mask: str | None, quant: str | None, dtype: str | None) -> None:
        require_quant_backend(quant or "nf4")

    @classmethod
    def for_eval(cls, ref: str | Path, *, model: str | None, mask: str | None, quant: str | None, dtype: str | None,
                 revision: str | None, device: Any) -> Scorable:
        """The quantized base with the delta's values in its masked weights (the mask and model the delta names by default)."""
        from ...runtime.sparse import load_sparse_model

        model_ref, mask_ref = model_and_mask_for(ref, model, mask)
        source, fingerprint, mask_obj, mask_sha = open_model_and_mask(model_ref, mask_ref, revision)
        delta = load_delta(ref, mask=mask_obj, mask_sha256=mask_sha, fingerprint=fingerprint, mask_ref=mask_ref)
        compute = resolve_dtype(dtype, device)
        sparse = load_sparse_model(source, mask_obj, quant=quant or "nf4", device=device, compute_dtype=compute)
        sparse.load_delta(delta.tensors)
        return Scorable(sparse.model, sparse.tokenizer, "delta", dtype_name(compute))

    @classmethod
    def merged(cls, ref: str | Path, *, model: str | None, mask_ref: str | None, revision: str | None, device: Any) -> Merged:
        """The fp32 base with W.flatten()[M] = values (the quantized base is not involved)."""
        from ...data.models import load_model

        model, mask_ref = model_and_mask_for(ref, model, mask_ref)
        source, fingerprint, mask, mask_sha = open_model_and_mask(model, mask_ref, revision)
        delta = load_delta(ref, mask=mask, mask_sha256=mask_sha, fingerprint=fingerprint, mask_ref=mask_ref)
        loaded = load_model(source, dtype=torch.float32)
        loaded.model.to(device)
        write_into(loaded.model, delta, mask)  # W.flatten()[M] = values, in fp32 (what Delta.merge_into does)
        return Merged(loaded.model, loaded.tokenizer, source, mask.nnz)

    @classmethod
    def export_peft(cls, peft: Any, ref: str | Path, out: Path, *, model: str | None, mask_ref: str | None, revision: str | None):
        from .peft import export_shira

        return export_shira(peft, delta=ref, out=out, model=model, mask_ref=mask_ref, revision=revision)
