"""`evaluate`: task metric of zero-shot, in-context (K demonstrations) or fine-tuned (any method's run,
loaded by its `MethodResult`); `score`, the metric of a model on encoded examples (sharded under torchrun)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch.distributed as dist

from ..core.devices import dtype_name, require_quant_backend, resolve_device, resolve_dtype, world
from ..data.scoring import Encoded, encode, metric_value, pad_id_of, predict
from ..data.tasks import Sampling, load_task, with_demonstrations
from ..methods import method_of_result
from ..methods.sparse.setup import model_and_mask_for, open_model_and_fitting_mask, open_model_and_mask
from .config import EvalConfig

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
    from ..runtime.sparse import load_sparse_model

    method = method_of_result(config.delta).result_cls if config.delta else None  # the run's method loads its result
    if method is not None:
        method.check_eval(config.delta, mask=config.mask, quant=config.quant, dtype=config.dtype)
    else:
        require_quant_backend(config.quant or "nf4")
    device = resolve_device(config.device)
    # Data, template and labels are read and checked before anything loads.
    task = load_task(config.task, custom=config.custom_task(), data_dir=config.data_dir,
                     sampling=Sampling(train_samples=1000, dev_samples=0, eval_samples=config.eval_samples, seed=config.seed))
    examples = with_demonstrations(task.eval, task.train, config.icl_shots, config.seed)
    if method is not None:
        scorable = method.for_eval(config.delta, model=config.model, mask=config.mask, quant=config.quant, dtype=config.dtype,
                                   revision=config.revision, device=device)
        model, tok, mode, dtype = scorable.model, scorable.tokenizer, scorable.mode, scorable.dtype
    else:  # zero-shot / ICL: the quantized base, with the mask where one is given or fits
        model_ref, mask_ref = model_and_mask_for(None, config.model, config.mask)
        if config.mask is None:
            source, mask = open_model_and_fitting_mask(model_ref, mask_ref, config.revision)
        else:
            source, _, mask, _ = open_model_and_mask(model_ref, mask_ref, config.revision)
        compute = resolve_dtype(config.dtype, device)
        sparse = load_sparse_model(source, mask, quant=config.quant or "nf4", device=device, compute_dtype=compute)
        model, tok, mode, dtype = sparse.model, sparse.tokenizer, "zero-shot", dtype_name(compute)
    value = score(model, encode(tok, examples), task.metric, pad_id_of(tok), config.batch_size)
    if config.icl_shots:
        mode = f"icl-{config.icl_shots}" if method is None else f"{mode}+icl-{config.icl_shots}"
    return EvalResult(task.name, mode, task.metric, value, len(examples), config.delta, dtype)


def distributed_predict(model, examples: list[Encoded], pad_id: int, batch_size: int) -> list[int]:
    """Predictions for all examples; under torchrun each rank scores a shard and they are gathered."""
    rank, size = world()
    if size == 1:
        return predict(model, examples, pad_id, batch_size)
    mine = predict(model, examples[rank::size], pad_id, batch_size) if examples[rank::size] else []
    gathered: list[list[int]] = [None] * size  # type: ignore[list-item]
    dist.all_gather_object(gathered, mine)
    preds = [0] * len(examples)
    for r, part in enumerate(gathered):
        preds[r::size] = part
    return preds


def score(model, examples: list[Encoded], metric: str, pad_id: int, batch_size: int) -> float:
    """The task metric of the model on encoded examples (sharded over ranks under torchrun)."""
    preds = distributed_predict(model, examples, pad_id, batch_size)
    return metric_value(metric, preds, [e.label for e in examples])
