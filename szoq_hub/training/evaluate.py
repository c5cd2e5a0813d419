"""`evaluate`: task metric of zero-shot, in-context (K demonstrations) or fine-tuned sparse values."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

from ..runtime.delta import load_delta
from ..core.devices import check_device_spec, check_dtype_spec, dtype_name, require_quant_backend, resolve_device, resolve_dtype
from ..core.errors import ConfigError
from ..data.models import DEFAULT_MODEL
from .config import refuse_dense_options
from .setup import model_and_mask_for, open_model_and_fitting_mask, open_model_and_mask, score
from ..data.scoring import encode, pad_id_of
from ..data.tasks import CustomTask, Sampling, custom_task_from, load_task, with_demonstrations

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """Settings of an evaluation (validated on creation)."""

    model: str | None = field(default=None, metadata={"help": "model alias, Hub id, folder or .gguf (default: the delta's, else the built-in)"})
    mask: str | None = field(default=None, metadata={"help": "mask the runtime uses (default: the delta's; zero-shot: the built-in where it "
                                                             "fits the model, else none: the quantized base as it is)"})
    task: str | None = field(default=None, metadata={"help": "built-in task (default sst2); `custom` with train_file/eval_file/task_file"})
    train_file: str | None = field(default=None, metadata={"help": "custom task: ICL demonstrations (and eval held out, without eval_file)"})
    eval_file: str | None = field(default=None, metadata={"help": "custom task: eval rows (zero-shot needs no train_file)"})
    template: str | None = None
    labels: str | None = None
    label_field: str = "label"
    task_file: str | None = None
    encoding: str = field(default="utf-8", metadata={"help": "custom task: text encoding of the data files"})
    delta: str | None = field(default=None, metadata={"help": "run folder or delta file (or a dense run: folder or dense.safetensors); None = zero-shot"})
    icl_shots: int = field(default=0, metadata={"help": "in-context demonstrations per example"})
    quant: str | None = field(default=None, metadata={"help": "nf4, fp4, int8 or none (None: nf4; a dense run's weights: none)"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA when available), cpu, cuda or cuda:N"})
    dtype: str | None = field(default="auto", metadata={"help": "compute dtype auto, bf16, fp16 or fp32 (auto: bf16 on CUDA and on CPUs with "
                                                               "native bf16, else fp32; None: the device's default)"})
    eval_samples: int = 1000
    batch_size: int = 32
    seed: int = 0
    data_dir: str | None = None
    revision: str | None = None

    def __post_init__(self) -> None:
        for option, value, low, example in (("--icl-shots", self.icl_shots, 0, 16), ("--batch-size", self.batch_size, 1, 32),
                                             ("--eval-samples", self.eval_samples, 1, 1000)):
            if value < low:
                raise ConfigError(f"{option} must be >= {low}, got {value}", hint=f"e.g. {option} {example}")
        check_device_spec(self.device)
        check_dtype_spec(self.dtype)
        custom = self.custom_task()  # template, labels and files are checked here, before any model loads
        if custom is not None:
            if self.task not in (None, "custom"):
                raise ConfigError(f"--task {self.task} and a custom task (--train / --eval / --task-file) were both given", hint="drop --task for a custom task")
            if self.icl_shots and custom.train is None:
                raise ConfigError(f"--icl-shots {self.icl_shots} draws demonstrations from --train FILE, and none was given", hint="pass --train FILE, or drop --icl-shots")
            self.task = "custom"
        elif self.task is None:
            self.task = "sst2"

    def custom_task(self) -> CustomTask | None:
        return custom_task_from(task_file=self.task_file, train_file=self.train_file, eval_file=self.eval_file,
                                template=self.template, labels=self.labels, label_field=self.label_field, encoding=self.encoding)


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
    recorded = adapter.run_settings.get("quant")  # a header value: used only when it is a name
    quant = config.quant or (recorded if isinstance(recorded, str) else None) or "nf4"
    require_quant_backend(quant)
    dtype = resolve_dtype(config.dtype, device)
    base = load_sparse_model(source, None, quant=quant, device=device, compute_dtype=dtype)
    lora = attach_lora(base.model, base.tokenizer, adapter.settings, device=device)
    lora.load_adapter(adapter.tensors)
    pad_id = pad_id_of(lora.tokenizer)
    value = score(lora.model, encode(lora.tokenizer, examples), task.metric, pad_id, config.batch_size)
    mode = f"lora+icl-{config.icl_shots}" if config.icl_shots else "lora"
    return EvalResult(task.name, mode, task.metric, value, len(examples), config.delta, dtype_name(dtype))
