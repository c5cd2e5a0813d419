"""`finetune`: ZO fine-tuning of the sparse values of a quantized model on a task.

Output folder (rank 0 writes; the run is complete once `delta.safetensors` exists, which is
written last):
- `finetune_config.json`  every setting and the seed (resume refuses a different one)
- `metrics.jsonl`         one line per step (step, seeds, g, losses, lr: a replayable log), per
                          dev evaluation, and the final evaluation
- `checkpoint.safetensors` latest values + optimizer state + step (atomic temp + rename)
- `best-dev.safetensors`  the delta with the best dev score so far (what the paper keeps)
- `README.md`             a model card
- `delta.safetensors`     the final (best-dev) delta: fp32 values per masked tensor, header
                          linking the mask sha256 and the base model fingerprint
With `dense=True` (the dense MeZO baseline, dense.py) the same loop trains every decoder linear
weight of the fp32 model; the run writes `checkpoint.safetensors` (trained weights + optimizer
state), `best-dev.safetensors` (trained weights) and, last, `dense.safetensors` (the best-dev
weights) instead of the delta files; a complete dense run removes its checkpoint and best-dev
copies (hundreds of MB each, only needed to resume).
Each step evaluates its 2q perturbed points (v +- eps z_i) in ONE forward over 2q copies of the
batch (`SparseModel.perturbed`), so every quantized base is dequantized once per step.
Under torchrun every rank computes the 2q losses on its shard of each batch with the same
perturbation seeds; losses are all-reduced (weighted by shard size) so all ranks apply the same
update.

`device` / `dtype` are resolved once (devices.py) and recorded in finetune_config.json as
`runtime`; --resume refuses another device type or compute dtype, because z is drawn from the
device's own generator and the losses depend on the compute dtype.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from ..core.version import __version__
from ..core import schema
from ..masks.build import init_distributed
from ..runtime.dense import DENSE_FILE
from ..runtime.delta import DELTA_CARD_TAGS, DELTA_FILE, delta_origin, load_delta, save_delta
from ..core.devices import check_device_spec, check_dtype_spec, dtype_name, resolve_device, resolve_dtype
from ..core.errors import ConfigError, DependencyError, Interrupted, TrainingError
from ..masks.artifact import MASK_FILE, SensitivityMask, card_base_model, file_sha256, load_mask
from ..data.models import DEFAULT_MODEL, ModelSource, fingerprint_from, parameter_layout, resolve_model
from ..core.paths import atomic_file
from ..hub.refs import pinned_mask_ref, resolve_mask_ref
from ..data.scoring import Encoded, encode, loss_sums, metric_value, pad_id_of, predict
from .tracking import check_report_to, open_tracker, scalars
from ..data.tasks import CustomTask, Sampling, custom_task_from, describe_split, load_task
from ..runtime.zo import StepRecord, ZOConfig, make_optimizer

log = logging.getLogger(__name__)

from ..core.defaults import DEFAULT_LR, DEFAULT_MASK  # noqa: E402  (one place; `szoq --help` reads them without torch)
CONFIG_FILE = "finetune_config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.safetensors"
BEST_FILE = "best-dev.safetensors"
REDONE_FILE = "metrics.redone.jsonl"  # log lines past the checkpoint, set aside on resume
CARD_FILE = "README.md"
# Settings that may differ when resuming (they do not change the trajectory; micro_batch_size changes
# float rounding only, so a run that ran out of memory can resume with smaller forwards). device and
# dtype are compared resolved (the `runtime` block), not as typed: `auto` and `cpu` can be the same.
_RESUME_FREE = ("out", "data_dir", "eval_batch_size", "micro_batch_size", "device", "dtype", "report_to")

ProgressFn = Callable[[dict], None]


@dataclass
class FinetuneConfig:
    """Every setting of a fine-tuning run (validated on creation; saved as finetune_config.json)."""

    model: str = field(default=DEFAULT_MODEL, metadata={"help": "model alias, Hub id, folder or .gguf"})
    mask: str | None = field(default=None, metadata={"help": "mask ref: folder, registry name, built-in, ORG/NAME (None: the built-in; not with dense)"})
    dense: bool = field(default=False, metadata={"help": "dense MeZO baseline: every decoder linear weight trains, fp32 model, no mask, no quantization"})
    task: str | None = field(default=None, metadata={"help": "built-in task (default sst2); `custom` with train_file/task_file"})
    train_file: str | None = field(default=None, metadata={"help": "custom task: train rows (jsonl/csv/tsv)"})
    eval_file: str | None = field(default=None, metadata={"help": "custom task: eval rows (default: held out from train_file)"})
    dev_file: str | None = field(default=None, metadata={"help": "custom task: dev rows (default: held out from train_file)"})
    template: str | None = field(default=None, metadata={"help": "custom task: Python format string over row fields"})
    labels: str | None = field(default=None, metadata={"help": "custom task: value=word,value=word"})
    label_field: str = field(default="label", metadata={"help": "custom task: the label field"})
    task_file: str | None = field(default=None, metadata={"help": "custom task as a JSON/YAML file"})
    encoding: str = field(default="utf-8", metadata={"help": "custom task: text encoding of the data files"})
    data_dir: str | None = field(default=None, metadata={"help": "GLUE/SuperGLUE folder (default SZOQ_DATA_DIR)"})
    revision: str | None = field(default=None, metadata={"help": "Hub revision of the model"})
    quant: str | None = field(default=None, metadata={"help": "nf4, fp4, int8 or none (None: nf4; none with dense)"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA when available), cpu, cuda or cuda:N"})
    dtype: str | None = field(default=None, metadata={"help": "compute dtype bf16, fp16 or fp32 (None: bf16 on CUDA, fp32 on CPU)"})
    steps: int = field(default=300, metadata={"help": "ZO steps"})
    batch_size: int = field(default=16, metadata={"help": "examples per step (all ranks together)"})
    micro_batch_size: int | None = field(default=None, metadata={"help": "examples per training forward, grouped by similar length "
                                                                          "(None: a rank's whole batch in one forward); less activation memory and padding"})
    lr: float = field(default=DEFAULT_LR, metadata={"help": "learning rate"})
    eps: float = field(default=1e-3, metadata={"help": "perturbation scale"})
    optimizer: str = field(default="zo-sgd", metadata={"help": "zo-sgd, zo-momentum or zo-adam"})
    zo_samples: int = field(default=1, metadata={"help": "SPSA estimates per step"})
    lr_schedule: str = field(default="constant", metadata={"help": "constant, linear or cosine"})
    warmup: int = field(default=0, metadata={"help": "warmup steps"})
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay"})
    eval_every: int = field(default=100, metadata={"help": "dev evaluation every K steps (0 = only at the end)"})
    save_every: int = field(default=100, metadata={"help": "checkpoint every K steps"})
    seed: int = field(default=0, metadata={"help": "seed of sampling, batches and perturbations"})
    train_samples: int = field(default=1000, metadata={"help": "train examples drawn"})
    dev_samples: int = field(default=500, metadata={"help": "dev examples drawn from the train split"})
    eval_samples: int = field(default=1000, metadata={"help": "eval examples drawn from validation"})
    eval_batch_size: int = field(default=32, metadata={"help": "batch size of evaluation"})
    out: str = field(default="runs/finetune", metadata={"help": "output folder"})
    report_to: str = field(default="none", metadata={"help": "also log metrics to: none, tensorboard, trackio or wandb"})

    def __post_init__(self) -> None:
        if self.steps <= 0:
            raise ConfigError(f"--steps must be > 0, got {self.steps}", hint="e.g. --steps 300")
        if self.batch_size <= 0:
            raise ConfigError(f"--batch-size must be > 0, got {self.batch_size}", hint="e.g. --batch-size 16")
        if self.micro_batch_size is not None and self.micro_batch_size <= 0:
            raise ConfigError(f"--micro-batch-size must be > 0, got {self.micro_batch_size}", hint="e.g. --micro-batch-size 4, or leave it out for one forward per step")
        if self.eval_batch_size <= 0:
            raise ConfigError(f"--eval-batch-size must be > 0, got {self.eval_batch_size}", hint="e.g. --eval-batch-size 32")
        if self.eval_every < 0 or self.save_every <= 0:
            raise ConfigError(f"need --eval-every >= 0 and --save-every > 0 (got {self.eval_every}, {self.save_every})", hint="e.g. --eval-every 100 --save-every 100")
        custom = self.custom_task()  # template, labels and files are checked here, before any model loads
        if custom is not None:
            if self.task not in (None, "custom"):
                raise ConfigError(f"--task {self.task} and a custom task (--train / --task-file) were both given", hint="drop --task for a custom task")
            if custom.train is None:
                raise ConfigError("fine-tuning a custom task needs --train FILE", hint="pass --train FILE (--eval FILE alone is for szoq eval)")
            self.task = "custom"
        elif self.task is None:
            self.task = "sst2"
        from ..runtime.sparse import QUANT_MODES

        if self.dense:
            self._check_dense()
        self.mask = self.mask or (None if self.dense else DEFAULT_MASK)
        self.quant = self.quant or ("none" if self.dense else "nf4")
        if self.quant not in QUANT_MODES:
            raise ConfigError(f"unknown quant {self.quant!r}", hint=f"choose one of: {', '.join(QUANT_MODES)}")
        check_device_spec(self.device)
        check_dtype_spec(self.dtype)
        self.zo_config()  # validates optimizer, lr, eps, schedule, ...
        from .tracking import REPORT_TO

        if self.report_to not in REPORT_TO:
            raise ConfigError(f"unknown --report-to {self.report_to!r}", hint=f"choose one of: {', '.join(REPORT_TO)}")

    def _check_dense(self) -> None:
        """Refuse the options that have no meaning for the dense baseline."""
        if self.mask is not None:
            raise ConfigError(f"--mask {self.mask} does not apply to --dense: every linear weight trains",
                              hint="drop --mask for the dense baseline, or drop --dense to train the masked weights")
        if self.quant not in (None, "none"):
            raise ConfigError(f"--quant {self.quant} does not apply to --dense: the dense baseline trains the fp32 weights themselves",
                              hint="drop --quant (--dense loads the model in fp32, unquantized)")
        if self.dtype in ("bf16", "fp16"):
            raise ConfigError(f"--dtype {self.dtype} does not apply to --dense: the weights train in place in fp32",
                              hint="drop --dtype (an update of lr 1e-6 x |g z| vanishes when rounded to bf16/fp16)")

    def zo_config(self) -> ZOConfig:
        """The optimizer part of the settings."""
        return ZOConfig(lr=self.lr, eps=self.eps, optimizer=self.optimizer, zo_samples=self.zo_samples, lr_schedule=self.lr_schedule,
                        warmup=self.warmup, weight_decay=self.weight_decay, total_steps=self.steps, seed=self.seed)

    def custom_task(self) -> CustomTask | None:
        """The custom task the settings describe, or None for a built-in task."""
        return custom_task_from(task_file=self.task_file, train_file=self.train_file, eval_file=self.eval_file, dev_file=self.dev_file,
                                template=self.template, labels=self.labels, label_field=self.label_field, encoding=self.encoding)

    def sampling(self) -> Sampling:
        return Sampling(self.train_samples, self.dev_samples, self.eval_samples, self.seed)


@dataclass
class FinetuneResult:
    """What a run produced."""

    out: Path
    steps: int
    metric: str
    best_step: int | None
    best_dev: float | None
    eval_metric: float
    seconds: float
    resumed_from: int = 0


# --- shared setup (also used by evaluate and merge) -----------------------------------------

def require_quant_backend(quant: str) -> None:
    """Raise DependencyError when a quantized mode lacks bitsandbytes (checked before loading)."""
    if quant != "none" and importlib.util.find_spec("bitsandbytes") is None:
        raise DependencyError(f"--quant {quant} needs bitsandbytes", hint="pip install bitsandbytes, or pass --quant none")


def open_model_and_mask(model: str, mask_ref: str, revision: str | None = None) -> tuple[ModelSource, str, SensitivityMask, str]:
    """Resolve the model and open its mask, checking the fingerprint before any weight loads.

    Returns:
        (source, fingerprint, mask, mask file sha256).

    Raises:
        ModelError, RegistryError, FingerprintMismatch.
        MaskError: a corrupt mask, or one whose recorded shapes are not the model's.
    """
    source = resolve_model(model, revision=revision)
    layout = parameter_layout(source)
    fingerprint = fingerprint_from(layout, source.identity)
    folder = resolve_mask_ref(mask_ref)
    mask = load_mask(folder, fingerprint=fingerprint, layout=layout)  # recorded shapes must be the model's
    return source, fingerprint, mask, file_sha256(folder / MASK_FILE)


def model_and_mask_for(delta: str | Path | None, model: str | None, mask: str | None) -> tuple[str, str]:
    """The model and mask to load for a delta: the ones given, else the ones it was trained with.

    Without a delta (or where its header records nothing), the built-in defaults.
    """
    if delta is not None and (model is None or mask is None):
        trained_model, trained_mask = delta_origin(delta)
        model, mask = model or trained_model, mask or trained_mask
    return model or DEFAULT_MODEL, mask or DEFAULT_MASK


def world() -> tuple[int, int]:
    """(rank, world size) under torch.distributed, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


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
    """The task metric of the model on encoded examples."""
    preds = distributed_predict(model, examples, pad_id, batch_size)
    return metric_value(metric, preds, [e.label for e in examples])


# --- the run ---------------------------------------------------------------------------------

def _batch_indices(n: int, batch_size: int, step: int, seed: int, cache: dict[int, list[int]]) -> list[int]:
    """Indices of the step's batch: epochs are seeded permutations, so any step is reproducible."""
    out = []
    for k in range(step * batch_size, (step + 1) * batch_size):
        epoch, i = divmod(k, n)
        if epoch not in cache:
            cache[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch)).tolist()
        out.append(cache[epoch][i])
    return out


def _identity(config: FinetuneConfig) -> dict:
    return {k: v for k, v in asdict(config).items() if k not in _RESUME_FREE}


def _saved_differences(saved: dict, config: FinetuneConfig) -> list[str]:
    """Settings (that shape the trajectory) in which a saved run differs from `config`."""
    defaults = {f.name: f.default for f in fields(FinetuneConfig)}
    now = _identity(config)
    # A setting added after the run was saved compares as its default.
    was = {k: saved.get(k, defaults.get(k)) for k in now}
    if was.get("task") == "sst2" and (was.get("train_file") or was.get("task_file")):
        was["task"] = "custom"  # runs saved before custom tasks were named `custom`
    return [f"{k} ({was[k]!r} -> {now[k]!r})" for k in sorted(now) if was[k] != now[k]]


def _check_out(config: FinetuneConfig, resume: bool | None) -> bool:
    """Validate the output folder; returns whether to continue the stopped run in it.

    Args:
        config: The run's settings.
        resume: True = there must be a stopped run to continue; False = the folder must be new or
            empty; None = continue a stopped run with the same settings, else start a new one.

    Raises:
        TrainingError: a file, a folder holding something else, a run with other settings, or a
            complete run.
    """
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise TrainingError(f"--out {out} is a file", hint="choose a folder for --out")
    has_files = out.is_dir() and any(out.iterdir())
    if resume is False or (resume is None and not has_files):
        if has_files:
            raise TrainingError(f"--out {out} already exists and is not empty", hint="choose another --out, or continue the run in it")
        return False
    flag = "--resume: " if resume else ""
    cfg_path = out / CONFIG_FILE
    if not cfg_path.is_file():
        if resume:
            raise TrainingError(f"--resume: {out} holds no {CONFIG_FILE}", hint="resume a folder written by szoq finetune, or drop --resume")
        raise TrainingError(f"--out {out} already exists and holds no szoq finetune run", hint="choose another --out folder")
    saved = schema.run_config(cfg_path, TrainingError, hint="the run folder is damaged; start a new run in another --out")  # types checked
    differ = _saved_differences({k: v for k, v in saved["settings"].items() if k not in _RESUME_FREE}, config)
    if differ:
        raise TrainingError(f"{flag}--out {out} holds a run with other settings: {', '.join(differ[:3])}",
                            hint="rerun with that run's options (see its finetune_config.json) to continue it, or choose another --out")
    if (out / DELTA_FILE).is_file() or (out / DENSE_FILE).is_file():
        raise TrainingError(f"{flag}the run in {out} is already complete",
                            hint=f"use it (szoq eval --delta {out}), or choose another --out for a new run")
    return True


def runtime_of(device: torch.device, dtype: torch.dtype) -> dict[str, str]:
    """The resolved device type and compute dtype a run records (what --resume must match)."""
    return {"device_type": device.type, "dtype": dtype_name(dtype)}


def _check_runtime(config: FinetuneConfig, runtime: dict[str, str]) -> None:
    """--resume: refuse another device type or compute dtype than the run was started with."""
    try:
        saved = json.loads((Path(config.out) / CONFIG_FILE).read_text()).get("runtime")
    except (OSError, ValueError):
        return  # _check_out already refused a missing or damaged config
    if saved is None:  # runs from before devices: CPU, fp32
        saved = {"device_type": "cpu", "dtype": "fp32"}
    if saved != runtime:
        raise TrainingError(
            f"--resume: {config.out} ran on {saved['device_type']} in {saved['dtype']}, this resume would run on "
            f"{runtime['device_type']} in {runtime['dtype']}",
            hint=f"resume with --device {saved['device_type']} --dtype {saved['dtype']} (z is drawn by the device's own generator)",
        )


def _load_checkpoint(out: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    from safetensors import SafetensorError, safe_open

    path = out / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            tensors, meta = {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise TrainingError(f"{path} is corrupt ({str(exc).splitlines()[0]})", hint="start a new run in another --out folder") from None
    try:
        float(meta.get("best_dev", "-inf"))
        ok = "values" in tensors and meta.get("step", "").isdigit() and (meta.get("best_step") or "0").isdigit()
    except ValueError:
        ok = False
    if not ok:
        raise TrainingError(f"{path} is corrupt (no values or no step)", hint="start a new run in another --out folder")
    return tensors, meta


def _save_checkpoint(out: Path, values: torch.Tensor, opt_state: dict[str, torch.Tensor], meta: dict[str, str],
                     best: torch.Tensor | None = None) -> None:
    """Write values, optimizer state and the best-dev values (so resume never trusts a newer best-dev file)."""
    from safetensors.torch import save_file

    tensors = {"values": values.detach().to("cpu", copy=True)}
    if best is not None:
        tensors["best"] = best.detach().to("cpu", copy=True)  # [nnz]
    for k, v in opt_state.items():
        tensors[f"opt.{k}"] = (v.reshape(-1) if v.dim() == 0 else v).cpu()
    with atomic_file(out / CHECKPOINT_FILE) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def _truncate_metrics(path: Path, step: int) -> int:
    """Set aside log lines past the checkpoint (their steps are redone, bit for bit, on resume).

    The lines are appended to `metrics.redone.jsonl` beside the log rather than lost.

    Returns:
        How many step lines were set aside.
    """
    if not path.is_file():
        return 0
    keep, drop, redone = [], [], 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
            kind = row.get("kind")
            kept = (kind == "step" and row["step"] < step) or (kind == "eval" and row["step"] <= step)
        except (ValueError, TypeError, KeyError, AttributeError):
            kind, kept = None, False  # a line cut by a crash, or not one szoq wrote
        (keep if kept else drop).append(line)
        redone += not kept and kind == "step"
    if drop:
        with open(path.with_name(REDONE_FILE), "a") as fh:
            fh.write("".join(d + "\n" for d in drop))
    with atomic_file(path) as tmp:
        tmp.write_text("".join(k + "\n" for k in keep))
    return redone


def _diverged_hint(config: FinetuneConfig, last_checkpoint: int | None) -> str:
    """A hint for a diverged run that works as written: --resume keeps --lr, so a lower --lr is a new run."""
    lower = DEFAULT_LR if config.lr > DEFAULT_LR else config.lr / 10
    kept = (f"the checkpoint at step {last_checkpoint} in {config.out} is intact, but --resume keeps --lr"
            if last_checkpoint else f"no checkpoint was written yet (every {config.save_every} steps)")
    return f"{kept}; lower --lr (e.g. --lr {lower:g}) or --eps and start a new run with a new --out, e.g. --out {config.out}-lr{lower:g}"


def _interrupted(config: FinetuneConfig, done: int, last_checkpoint: int | None) -> Interrupted:
    """What Ctrl-C leaves behind, and the command that continues from it."""
    if last_checkpoint:
        return Interrupted(f"interrupted at step {done} of {config.steps}; the checkpoint at step {last_checkpoint} is in {config.out}",
                           hint=f"run the same command again (same options, --out {config.out}) to continue from there; --resume insists on continuing")
    return Interrupted(f"interrupted at step {done} of {config.steps}, before the first checkpoint (every {config.save_every} steps)",
                       hint=f"run the same command again (or with --resume) to start it over in {config.out}; lower --save-every to checkpoint sooner")


def render_run_card(config: FinetuneConfig, base_model: str, mask_sha: str, result: dict) -> str:
    """Model card of a fine-tuned delta."""
    from huggingface_hub import ModelCardData

    data = ModelCardData(library_name="szoq", base_model=card_base_model(base_model), tags=DELTA_CARD_TAGS)
    task = config.task if not (config.train_file or config.task_file) else "custom"
    rows = [("base model", f"`{base_model}`"), ("mask", f"`{config.mask}` (sha256 {mask_sha[:12]})"), ("task", task),
            ("quant", config.quant), ("optimizer", f"{config.optimizer}, lr {config.lr:g}, eps {config.eps:g}, batch {config.batch_size}, {config.steps} steps"),
            ("best dev", f"{result.get('best_dev')} at step {result.get('best_step')}"), (f"eval {result.get('metric')}", result.get("eval_metric")),
            ("seed", config.seed), ("szoq version", __version__)]
    lines = ["---", data.to_yaml(), "---", "", f"# Sparse ZO delta for {base_model}", "",
             "Fine-tuned sparse values (fp32) over a sensitivity mask, trained with zeroth-order SPSA on a quantized base (SensZOQ).", "",
             "| fact | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], "", "## Use", "", "```",
             f"szoq eval --model {config.model} --mask {config.mask} --delta THIS_FOLDER --task {task}",
             f"szoq merge --model {config.model} --mask {config.mask} --delta THIS_FOLDER --out merged/", "```", ""]
    return "\n".join(lines)


def finetune(config: FinetuneConfig, *, resume: bool | None = None, progress: ProgressFn | None = None) -> FinetuneResult:
    """Fine-tune the sparse values of a quantized model (or, with `config.dense`, every linear
    weight of the fp32 model: the dense MeZO baseline, see dense.py) with ZO on a task.

    Args:
        config: The run's settings.
        resume: None (default): continue the stopped run in `config.out` when it has the same
            settings, else start a new run (a folder with another run is refused). True: there
            must be a stopped run to continue. False: `config.out` must be new or empty.
        progress: Called with dicts: {"kind": "start"|"step"|"eval"|"final", ...}; "start" carries
            "split" (a line on the data split), "start" (first step) and "resumed".

    Returns:
        The run's `FinetuneResult` (on every rank; only rank 0 writes files).

    Raises:
        ConfigError, TaskError, DependencyError: bad input (before anything is written).
        FingerprintMismatch: the mask does not fit the model (before weights load).
        TrainingError: output folder conflicts, non-finite loss (the last checkpoint stays).
    """
    from ..runtime.sparse import load_sparse_model

    started = time.perf_counter()
    init_distributed()
    rank, size = world()
    dense = config.dense
    if dense and size > 1:
        raise ConfigError("--dense runs in one process (no data-parallel path)", hint="run szoq finetune --dense without torchrun")
    emit = progress or (lambda _event: None)
    require_quant_backend(config.quant)
    check_report_to(config.report_to)
    device = resolve_device(config.device)
    dtype = torch.float32 if dense else resolve_dtype(config.dtype, device)
    runtime = runtime_of(device, dtype)
    resume = _check_out(config, resume)
    if resume:
        _check_runtime(config, runtime)
    # Data, template and labels are read and checked before anything loads (a bad row costs no model load).
    task = load_task(config.task, custom=config.custom_task(), data_dir=config.data_dir, sampling=config.sampling())
    if dense:
        from ..runtime.dense import DenseZO, load_dense_model

        source = resolve_model(config.model, revision=config.revision)
        fingerprint, mask, mask_sha, mask_ref = fingerprint_from(parameter_layout(source), source.identity), None, None, None
        trainable = load_dense_model(source, device=device)
        nnz = trainable.numel
        opt = DenseZO(trainable.weights, config.zo_config())
    else:
        source, fingerprint, mask, mask_sha = open_model_and_mask(config.model, config.mask, config.revision)
        trainable = sparse = load_sparse_model(source, mask, quant=config.quant, device=device, compute_dtype=dtype)
        nnz = mask.nnz
        mask_ref = pinned_mask_ref(config.mask, mask_sha)  # names this exact mask later (eval/merge defaults, messages)
        values = sparse.values
        opt = make_optimizer(values, config.zo_config())
    tok = trainable.tokenizer
    pad_id = pad_id_of(tok)
    train, dev, evals = (encode(tok, x) for x in (task.train, task.dev, task.eval))
    out = Path(config.out)
    settings = asdict(config)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            (out / CONFIG_FILE).write_text(json.dumps({"settings": settings, "task": {"name": task.name, "metric": task.metric, **task.info},
                                                        "base_model": source.base_model, "fingerprint": fingerprint, "mask_sha256": mask_sha, "mask_ref": mask_ref,
                                                        "nnz": nnz, "szoq_version": __version__, "world_size": size, "runtime": runtime}, indent=2) + "\n")

    start, best_dev, best_step = 0, -math.inf, None
    best_values: torch.Tensor | None = None
    if dense:
        ckpt = _load_dense_checkpoint(out, trainable, opt) if resume else None
        if ckpt is not None:
            start, best_step, best_dev = ckpt
    else:
        ckpt = _load_checkpoint(out) if resume else None
        if ckpt is not None:
            tensors, meta = ckpt
            values.copy_(tensors["values"])
            state = {k.removeprefix("opt."): v for k, v in tensors.items() if k.startswith("opt.")}
            if "t" in state:
                state["t"] = state["t"].reshape(())
            opt.load_state_dict(state)
            start, best_step = int(meta["step"]), (int(meta["best_step"]) if meta.get("best_step") else None)
            best_dev = float(meta["best_dev"])
            if best_step is not None and "best" in tensors:  # every rank holds the best values in memory
                best_values = tensors["best"]  # [nnz]
            elif best_step is not None:  # a checkpoint from before "best" was stored in it
                sparse_best = load_delta(out / BEST_FILE, mask=mask, mask_sha256=mask_sha, fingerprint=fingerprint, mask_ref=config.mask)
                best_values = torch.cat([sparse_best.tensors[name] for name, _, _ in sparse.segments])  # [nnz]
    redone = _truncate_metrics(out / METRICS_FILE, start) if rank == 0 and resume else 0
    if resume:
        log.info("resuming %s at step %d (%s)", out, start, "checkpoint" if ckpt is not None else "no checkpoint yet")
    metrics = open(out / METRICS_FILE, "a") if rank == 0 else None
    tracker = open_tracker(config.report_to, out=out, name=out.name, config=settings) if rank == 0 else None
    delta_meta = dict(mask_sha256=mask_sha, fingerprint=fingerprint, base_model=source.base_model)
    dense_meta = dict(fingerprint=fingerprint, base_model=source.base_model)

    def log_row(row: dict) -> None:
        if metrics is not None:
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()
        if tracker is not None:
            tracker.log(scalars(row), row["step"] + (row["kind"] == "step"))  # x axis: steps done

    def save_best(step: int, dev_score: float) -> None:
        nonlocal best_dev, best_step, best_values
        best_dev, best_step = dev_score, step
        if dense:  # written after the step's checkpoint (see _save_dense_best): no copy kept in memory
            return
        best_values = values.clone()
        if rank == 0:
            save_delta(out / BEST_FILE, sparse.delta_tensors(), **delta_meta, settings={**settings, "mask_ref": mask_ref, "step": step, "dev": dev_score})

    if resume and rank == 0 and dense:
        _dense_best_on_resume(out, trainable, start, best_step, best_dev, settings, dense_meta)
    elif resume and rank == 0:
        # best-dev.safetensors may be newer than the checkpoint (an eval after it improved, then
        # the run stopped): make it the checkpoint's best again, or drop it if there was none.
        if best_values is not None:
            best_tensors = {name: best_values[off : off + n].clone() for name, off, n in sparse.segments}
            save_delta(out / BEST_FILE, best_tensors, **delta_meta, settings={**settings, "mask_ref": mask_ref, "step": best_step, "dev": best_dev})
        else:
            (out / BEST_FILE).unlink(missing_ok=True)
    emit({"kind": "start", "steps": config.steps, "start": start, "task": task.name, "train": len(train), "dev": len(dev), "eval": len(evals), "nnz": nnz,
          "resumed": resume, "checkpoint": start if ckpt is not None else None, "redone": redone, "save_every": config.save_every,
          "split": describe_split(task, config.sampling()), "out": str(out)})
    last_checkpoint = start if ckpt is not None else None
    done = start
    perms: dict[int, list[int]] = {}
    try:
        for step in range(start, config.steps):
            t0 = time.perf_counter()
            batch = _batch_indices(len(train), config.batch_size, step, config.seed, perms)
            shard = [train[i] for i in batch[rank::size]]

            def closure(points) -> list[float]:  # sparse: [P = 2q, nnz] values; dense: P (seed, scale) pairs
                with trainable.perturbed(points) as parts:  # one forward over P copies of the shard
                    local = loss_sums(trainable.model, shard, pad_id, copies=parts, micro_batch_size=config.micro_batch_size) if shard else [0.0] * parts
                if size == 1:
                    return [x / len(batch) for x in local]
                total = torch.tensor([*local, float(len(shard))], dtype=torch.float64)  # [P + 1]
                dist.all_reduce(total)
                return [float(x / total[-1]) for x in total[:-1]]

            try:
                record: StepRecord = opt.step(closure, step)
            except TrainingError as exc:
                raise TrainingError(exc.message, hint=_diverged_hint(config, last_checkpoint)) from None
            done = step + 1
            log_row({"kind": "step", **record.to_dict(), "seconds": round(time.perf_counter() - t0, 4)})
            emit({"kind": "step", "step": done, "steps": config.steps, "loss": record.loss, "grad": record.grad_norm, "lr": record.lr})
            improved = False
            if dev and ((config.eval_every and done % config.eval_every == 0) or done == config.steps):
                dev_score = score(trainable.model, dev, task.metric, pad_id, config.eval_batch_size)
                log_row({"kind": "eval", "step": done, "split": "dev", task.metric: dev_score})
                emit({"kind": "eval", "step": done, "dev": dev_score, "metric": task.metric})
                if dev_score > best_dev:
                    save_best(done, dev_score)
                    improved = True
            meta = {"step": str(done), "best_dev": repr(best_dev), "best_step": str(best_step or "")}
            if rank == 0 and dense and (done % config.save_every == 0 or done == config.steps or improved):
                _save_dense_checkpoint(out, trainable, opt, meta)
                last_checkpoint = done
                if improved:  # after the checkpoint that names it: a best-dev file is never newer than the last checkpoint's best
                    _save_dense_best(out, trainable, done, best_dev, settings, dense_meta)
            elif rank == 0 and not dense and (done % config.save_every == 0 or done == config.steps):
                _save_checkpoint(out, values, opt.state_dict(), meta, best_values)
                last_checkpoint = done
    except KeyboardInterrupt:
        if tracker is not None:
            tracker.close()
        raise _interrupted(config, done, last_checkpoint) from None
    except BaseException:
        if tracker is not None:
            tracker.close()
        raise
    finally:
        if metrics is not None:
            metrics.close()

    # Keep the best-dev values (the paper's protocol); without a dev set, the final ones.
    if dense and best_step is not None and best_step != done:
        trainable.load_weights(out / BEST_FILE)
    elif best_values is not None:
        values.copy_(best_values)
    eval_score = score(trainable.model, evals, task.metric, pad_id, config.eval_batch_size)
    result = {"metric": task.metric, "eval_metric": eval_score, "best_dev": None if best_step is None else best_dev, "best_step": best_step}
    emit({"kind": "final", **result})
    if rank == 0:
        final = {"kind": "final", "split": "eval", **result}
        with open(out / METRICS_FILE, "a") as fh:
            fh.write(json.dumps(final) + "\n")
        if tracker is not None:
            tracker.log(scalars(final), config.steps)
            tracker.close()
        if dense:
            from ..runtime.dense import save_dense

            (out / CARD_FILE).write_text(render_dense_card(config, source.base_model, nnz, result))
            save_dense(out / DENSE_FILE, trainable, **dense_meta, settings={**settings, **result, "task": task.name})
            # dense.safetensors holds the best-dev weights: the checkpoint and best-dev copies
            # (hundreds of MB each) only served resuming.
            (out / CHECKPOINT_FILE).unlink(missing_ok=True)
            (out / BEST_FILE).unlink(missing_ok=True)
        else:
            (out / CARD_FILE).write_text(render_run_card(config, source.base_model, mask_sha, result))
            save_delta(out / DELTA_FILE, sparse.delta_tensors(), **delta_meta, settings={**settings, "mask_ref": mask_ref, **result, "task": task.name})
    if size > 1:
        dist.barrier()
    return FinetuneResult(out, config.steps, task.metric, best_step, result["best_dev"], eval_score, time.perf_counter() - started, start)


# --- the dense baseline's files (dense.py holds the model and optimizer) ----------------------

def _save_dense_checkpoint(out: Path, trainable, opt, meta: dict[str, str]) -> None:
    """The trained weights (by parameter name) and `opt.J.K` optimizer state, tensor by tensor."""
    from ..data.checkpoint import write_tensors

    write_tensors(out / CHECKPOINT_FILE, [*trainable.tensors(), *((f"opt.{k}", t) for k, t in opt.state_tensors())],
                  {"format": "szoq.dense-checkpoint", **meta})


def _load_dense_checkpoint(out: Path, trainable, opt) -> tuple[int, int | None, float] | None:
    """Load a dense checkpoint into the model and optimizer; returns (step, best step, best dev).

    Raises:
        TrainingError: a corrupt checkpoint.
    """
    path = out / CHECKPOINT_FILE
    if not path.is_file():
        return None
    meta = trainable.load_weights(path, other=lambda key, t: opt.load_state_tensor(key.removeprefix("opt."), t) if key.startswith("opt.") else None)
    try:
        ok = meta.get("format") == "szoq.dense-checkpoint" and meta.get("step", "").isdigit() and (meta.get("best_step") or "0").isdigit()
        best_dev = float(meta.get("best_dev", "-inf"))
    except ValueError:
        ok = False
    if not ok:
        raise TrainingError(f"{path} is corrupt (no step, or not a dense checkpoint)", hint="start a new run in another --out folder")
    return int(meta["step"]), (int(meta["best_step"]) if meta.get("best_step") else None), best_dev


def _save_dense_best(out: Path, trainable, step: int, dev_score: float, settings: dict, meta: dict) -> None:
    from ..runtime.dense import save_dense

    save_dense(out / BEST_FILE, trainable, **meta, settings={**settings, "step": step, "dev": dev_score}, step=str(step))


def _dense_best_on_resume(out: Path, trainable, start: int, best_step: int | None, best_dev: float, settings: dict, meta: dict) -> None:
    """Make best-dev.safetensors the checkpoint's best again (see the loop: a best-dev file is
    written only after the checkpoint that names its step).

    Raises:
        TrainingError: the checkpoint names an older best step that the best-dev file does not hold.
    """
    from ..runtime.dense import dense_metadata

    path = out / BEST_FILE
    if best_step is None:
        path.unlink(missing_ok=True)
        return
    held = dense_metadata(path).get("step") if path.is_file() else None
    if held == str(best_step):
        return
    if best_step == start:  # the checkpoint's weights are the best ones (it stopped before writing the file)
        _save_dense_best(out, trainable, best_step, best_dev, settings, meta)
        return
    raise TrainingError(f"{path} does not hold the best step {best_step} that the checkpoint names (it holds {held})",
                        hint="the run folder was changed by hand; start a new run in another --out folder")


def render_dense_card(config: FinetuneConfig, base_model: str, nnz: int, result: dict) -> str:
    """Model card of a dense MeZO run."""
    from huggingface_hub import ModelCardData

    data = ModelCardData(library_name="szoq", base_model=card_base_model(base_model), tags=["szoq", "zeroth-order", "mezo"])
    task = config.task if not (config.train_file or config.task_file) else "custom"
    rows = [("base model", f"`{base_model}`"), ("trained", f"every decoder linear weight ({nnz:,} values), fp32"), ("task", task),
            ("optimizer", f"{config.optimizer}, lr {config.lr:g}, eps {config.eps:g}, batch {config.batch_size}, {config.steps} steps"),
            ("best dev", f"{result.get('best_dev')} at step {result.get('best_step')}"), (f"eval {result.get('metric')}", result.get("eval_metric")),
            ("seed", config.seed), ("szoq version", __version__)]
    lines = ["---", data.to_yaml(), "---", "", f"# Dense MeZO weights for {base_model}", "",
             "The decoder's linear weights after zeroth-order SPSA over all of them (MeZO; the baseline of SensZOQ), in "
             "`dense.safetensors` under the model's parameter names. Embeddings, norms and lm_head are the base model's.", "",
             "| fact | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], "", "## Use", "", "```",
             f"szoq eval --model {config.model} --delta THIS_FOLDER --task {task}", "```", ""]
    return "\n".join(lines)
