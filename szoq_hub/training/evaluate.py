"""`evaluate`: task metric of zero-shot, in-context (K demonstrations) or fine-tuned sparse values."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from ..runtime.delta import load_delta
from ..core.devices import dtype_name, require_quant_backend, resolve_device, resolve_dtype
from ..core.errors import ConfigError
from ..data.models import DEFAULT_MODEL
from .config import EvalConfig, refuse_dense_options
from .setup import model_and_mask_for, open_model_and_fitting_mask, open_model_and_mask, score
from ..data.scoring import encode, pad_id_of
from ..data.tasks import Sampling, load_task, with_demonstrations

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """One evaluation."""

    task: str
    mode: str  # zero-shot | icl-K | delta
    metric: str
    value: float
    n: int
    delta: str | None = None
    dtype: str = "fp32"  # the compute dtype it ran in (resolved)

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(config: EvalConfig) -> EvalResult:
    """Score a model (optionally with a fine-tuned delta) on a task's eval split.

    Args:
        config: The evaluation settings.

    Returns:
        The `EvalResult`.

    Raises:
        TaskError, ConfigError, DependencyError: bad input (CUDA asked for but unavailable
            included), before weights load.
        FingerprintMismatch: mask or delta for another model / mask.
        MaskError: corrupt delta.
    """
    from ..runtime.dense import is_dense_file
    from ..runtime.lora_file import is_lora_file
    from ..runtime.sparse import load_sparse_model

    dense = bool(config.delta) and is_dense_file(config.delta)
    if dense:
        refuse_dense_options(str(config.delta), mask=config.mask, quant=config.quant, dtype=config.dtype)
    lora = bool(config.delta) and not dense and is_lora_file(config.delta)
    if lora and config.mask is not None:
        raise ConfigError(f"--mask does not apply to {config.delta}: a LoRA run's adapters sit on the quantized base, no mask",
                          hint="drop --mask to evaluate a --lora run")
    quant = config.quant or ("none" if dense else "nf4")
    require_quant_backend(quant)
    device = resolve_device(config.device)
    # Data, template and labels are read and checked before anything loads.
    task = load_task(config.task, custom=config.custom_task(), data_dir=config.data_dir,
                     sampling=Sampling(train_samples=1000, dev_samples=0, eval_samples=config.eval_samples, seed=config.seed))
    examples = with_demonstrations(task.eval, task.train, config.icl_shots, config.seed)
    if dense:
        return _evaluate_dense(config, task, examples, device)
    if lora:
        return _evaluate_lora(config, task, examples, device)
    model_ref, mask_ref = model_and_mask_for(config.delta, config.model, config.mask)
    delta = None
    if config.delta is None and config.mask is None:  # zero-shot: a mask only where one fits
        source, mask = open_model_and_fitting_mask(model_ref, mask_ref, config.revision)
    else:
        source, fingerprint, mask, mask_sha = open_model_and_mask(model_ref, mask_ref, config.revision)
        if config.delta:
            delta = load_delta(config.delta, mask=mask, mask_sha256=mask_sha, fingerprint=fingerprint, mask_ref=mask_ref)
    dtype = resolve_dtype(config.dtype, device)
    sparse = load_sparse_model(source, mask, quant=quant, device=device, compute_dtype=dtype)
    if delta is not None:
        sparse.load_delta(delta.tensors)
    tok = sparse.tokenizer
    pad_id = pad_id_of(tok)
    value = score(sparse.model, encode(tok, examples), task.metric, pad_id, config.batch_size)
    mode = "delta" if delta is not None else (f"icl-{config.icl_shots}" if config.icl_shots else "zero-shot")
    if delta is not None and config.icl_shots:
        mode = f"delta+icl-{config.icl_shots}"
    return EvalResult(task.name, mode, task.metric, value, len(examples), config.delta, dtype_name(dtype))


def _evaluate_dense(config: EvalConfig, task, examples, device) -> EvalResult:
    """Score the fp32 base model with a dense run's trained linear weights (dense.py)."""
    from ..runtime.dense import load_dense_result

    dense = load_dense_result(config.delta, model=config.model, revision=config.revision, device=device)
    tok = dense.tokenizer
    pad_id = pad_id_of(tok)
    value = score(dense.model, encode(tok, examples), task.metric, pad_id, config.batch_size)
    mode = f"dense+icl-{config.icl_shots}" if config.icl_shots else "dense"
    return EvalResult(task.name, mode, task.metric, value, len(examples), config.delta)


def _evaluate_lora(config: EvalConfig, task, examples, device) -> EvalResult:
    """Score the quantized base with a `finetune --lora` run's adapter on it (runtime/lora.py);
    without --quant, the base is quantized as the run's was."""
    from ..data.models import model_fingerprint, resolve_model
    from ..runtime.lora import attach_lora
    from ..runtime.lora_file import load_lora
    from ..runtime.sparse import load_sparse_model

    adapter = load_lora(config.delta)
    source = resolve_model(config.model or adapter.model_ref or DEFAULT_MODEL, revision=config.revision)
    adapter.check_fingerprint(model_fingerprint(source))  # before any weight loads
    quant = config.quant or adapter.run_settings.get("quant") or "nf4"
    require_quant_backend(quant)
    dtype = resolve_dtype(config.dtype, device)
    base = load_sparse_model(source, None, quant=quant, device=device, compute_dtype=dtype)
    lora = attach_lora(base.model, base.tokenizer, adapter.settings, device=device)
    lora.load_adapter(adapter.tensors)
    pad_id = pad_id_of(lora.tokenizer)
    value = score(lora.model, encode(lora.tokenizer, examples), task.metric, pad_id, config.batch_size)
    mode = f"lora+icl-{config.icl_shots}" if config.icl_shots else "lora"
    return EvalResult(task.name, mode, task.metric, value, len(examples), config.delta, dtype_name(dtype))
