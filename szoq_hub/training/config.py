"""The settings of the training layer's commands: a fine-tuning run (`FinetuneConfig`, nesting the
optimizer's `ZOConfig`), an evaluation (`EvalConfig`) and a merge (`MergeConfig`). Torch-free.

Every field carries its help and, where it is not `--name-with-dashes`, its command-line flag
in `metadata`; `szoq finetune`, `szoq eval` and `szoq merge` build their options from these
fields (cli/options.py), so an option, its default and its help are written once. Error
messages name flags through `_flag()`, so a message never names a flag that does not exist.

The run folder records the settings flat (`settings_of`): one key per option, the ZO fields
beside the others, as the command line spells them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from ..core.defaults import (DEFAULT_LR, DEFAULT_MASK, DEFAULT_MODEL, DENSE_LR, DTYPE_NAMES, LORA_LR, check_device_spec, check_dtype_spec,
                             default_lr)
from ..core.errors import ConfigError
from ..data.tasks import CustomTask, Sampling, custom_task_from
from ..runtime.lora_config import LoRASettings
from ..runtime.zo_config import ZOConfig

# ZOConfig fields a run derives from its own settings (steps, seed): not options of their own.
ZO_DERIVED = ("total_steps", "seed")
_LR_HELP = (f"Learning rate (peak, after warmup). Default: {DEFAULT_LR:g} with a mask, {DENSE_LR:g} with --dense, {LORA_LR:g} with "
            "--lora (each method's SST-2 dev sweep, README Results).")


def _opt(default, help: str, flag: str | None = None, **kw):
    """A config field with its help text (and its flag when it is not `--name-with-dashes`)."""
    meta = {"help": help, **({"flag": flag} if flag else {})}
    return field(default=default, metadata=meta, **kw)


def _flag(name: str, cls: type | None = None) -> str:
    """The command-line flag of a config field, as error messages name it.

    Args:
        name: The field name.
        cls: The dataclass (default: FinetuneConfig, then ZOConfig).

    Returns:
        e.g. `--train` for `train_file`, `--batch-size` for `batch_size`.
    """
    for c in ((cls,) if cls else (FinetuneConfig, ZOConfig)):
        for f in fields(c):
            if f.name == name:
                return f.metadata.get("flag") or "--" + name.replace("_", "-")
    raise KeyError(name)


def refuse_dense_options(target: str, *, mask: str | None = None, quant: str | None = None, dtype: str | None = None) -> None:
    """Refuse the options a dense run's weights cannot take (finetune --dense, eval and merge of one).

    A dense run trains every decoder linear weight of the unquantized fp32 model: no mask
    selects them, no quantized base holds them, and an update of lr x |g z| (~1e-6) vanishes
    when rounded to bf16/fp16.

    Args:
        target: What the options were given for, as the message names it (`--dense`, a run folder).
        mask, quant, dtype: The options as given (None = not given).

    Raises:
        ConfigError: `--mask` given, `--quant` other than none, or `--dtype` bf16/fp16.
    """
    why = {"--mask": (mask, mask is not None, "every linear weight trains, no mask selects them"),
           "--quant": (quant, quant not in (None, "none"), "the dense weights are the fp32 weights themselves, unquantized"),
           "--dtype": (dtype, dtype in ("bf16", "fp16"), "the dense weights train and score in fp32 (an update of lr 1e-6 x |g z| vanishes in bf16)")}
    for name, (value, refused, reason) in why.items():
        if refused:
            raise ConfigError(f"{name} {value} does not apply to {target}: {reason}",
                              hint=f"drop {name} for a dense run" + (", or drop --dense to train the masked weights" if target == "--dense" else ""))


@dataclass
class FinetuneConfig:
    """Every setting of a fine-tuning run (validated on creation; saved as the run folder's config)."""

    model: str = _opt(DEFAULT_MODEL, "Model alias, Hub id, local folder or .gguf file.")
    mask: str | None = _opt(None, f"Mask: folder, registry NAME[@VERSION], built-in name, or ORG/NAME[@REV] (default {DEFAULT_MASK}; not with --dense).")
    dense: bool = _opt(False, "Dense MeZO baseline: ZO over every linear weight of the decoder layers (attention and MLP projections; embeddings, "
                              "norms and lm_head stay frozen) of the fp32 model, unquantized, no mask. Writes dense.safetensors (the trained "
                              "weights) instead of a delta. Memory: the fp32 model + one weight.")
    lora: int = _opt(0, "ZO-LoRA rank R (0 = off): low-rank adapters on the frozen quantized base (--lora-targets), trained by the same "
                        "ZO estimator, no mask. Writes lora.safetensors instead of a delta. Not with --dense or --mask.")
    lora_alpha: float = _opt(16.0, "ZO-LoRA alpha: the update is (alpha / R) B A (with --lora).")
    lora_targets: str = _opt("q_proj,v_proj", "ZO-LoRA: comma-separated names of the linears to adapt (with --lora; MeZO's q_proj,v_proj).")
    task: str | None = _opt(None, "Built-in task: sst2, rte, cb, boolq, wic, wsc, copa or multirc (default sst2; not with a custom task).")
    train_file: str | None = _opt(None, "Custom task: train file (jsonl/csv/tsv).", flag="--train")
    eval_file: str | None = _opt(None, "Custom task: eval file (default: held out from --train).", flag="--eval")
    dev_file: str | None = _opt(None, "Custom task: dev file (default: held out from --train).", flag="--dev")
    template: str | None = _opt(None, "Custom task: format string over row fields, e.g. '{text} It was'.")
    labels: str | None = _opt(None, "Custom task: label=word pairs, e.g. '0=terrible,1=great'.")
    label_field: str = _opt("label", "Custom task: the row field holding the label.")
    task_file: str | None = _opt(None, "Custom task as a JSON/YAML file.")
    encoding: str = _opt("utf-8", "Custom task: text encoding of the data files, e.g. latin-1.")
    data_dir: str | None = _opt(None, "GLUE/SuperGLUE folder (default $SZOQ_DATA_DIR; else `datasets` online).")
    revision: str | None = _opt(None, "Hub revision of the model.")
    quant: str | None = _opt(None, "Base quantization: nf4, fp4, int8 or none (default nf4; not with --dense).")
    device: str = _opt("auto", "auto (CUDA when available), cpu, cuda or cuda:N.")
    dtype: str | None = _opt("auto", "Compute dtype: auto (bf16 on CUDA and on CPUs with native bf16, else fp32; a resumed run keeps "
                                     "its own), bf16, fp16 or fp32. Sparse values stay fp32 (--dense: fp32).")
    steps: int = _opt(300, "ZO steps.")
    batch_size: int = _opt(16, "Examples per step (all ranks together).")
    micro_batch_size: int | None = _opt(None, "Examples per training forward, grouped by similar length (default: automatic, forwards of "
                                              "up to 128 padded tokens on a CPU, the whole batch on CUDA; a resumed run keeps its choice). "
                                              "Same loss; less activation memory and padding (see bench/bench_micro_batch.py). May change on --resume.")
    # The ZO optimizer: its fields are options of their own (those a run derives left out), and --lr
    # left out means the method's own lr (`default_lr`). None: ZOConfig defaults with that lr.
    zo: ZOConfig | None = field(default=None, metadata={"help": "The ZO optimizer's settings.", "nested": True, "skip": ZO_DERIVED,
                                                        "overrides": {"lr": {"default": None, "help": _LR_HELP}}})
    eval_every: int = _opt(100, "Dev evaluation every K steps (0 = at the end).")
    save_every: int = _opt(100, "Checkpoint every K steps.")
    save_every_minutes: float = _opt(10.0, "Also checkpoint when this many minutes passed since the last checkpoint (0 = by steps only).")
    seed: int = _opt(0, "Seed of sampling, batches and perturbations.")
    train_samples: int = _opt(1000, "Train examples drawn.")
    dev_samples: int = _opt(500, "Dev examples drawn (from --dev, else held out from the train split).")
    eval_samples: int = _opt(1000, "Eval examples drawn (built-in task: from validation; custom: from --eval, else held out from --train).")
    eval_batch_size: int = _opt(32, "Examples per evaluation forward (dev and eval).")
    out: str = _opt("runs/finetune", "Output folder; a stopped run there with the same options is continued.")
    report_to: str = _opt("none", "Also log metrics to: none, tensorboard, trackio or wandb (offline modes honoured).")

    def __post_init__(self) -> None:
        for name, low, example in (("lora", 0, 8), ("steps", 1, 300), ("batch_size", 1, 16), ("eval_batch_size", 1, 32), ("eval_every", 0, 100), ("save_every", 1, 100)):
            if getattr(self, name) < low:
                raise ConfigError(f"{_flag(name)} must be >= {low}, got {getattr(self, name)}", hint=f"e.g. {_flag(name)} {example}")
        if self.micro_batch_size is not None and self.micro_batch_size <= 0:
            raise ConfigError(f"--micro-batch-size must be > 0, got {self.micro_batch_size}", hint="e.g. --micro-batch-size 4, or leave it out for one forward per step")
        if not self.save_every_minutes >= 0:  # also NaN
            raise ConfigError(f"--save-every-minutes must be >= 0, got {self.save_every_minutes}", hint="e.g. --save-every-minutes 10 (0: by steps only)")
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
            refuse_dense_options("--dense", mask=self.mask, quant=self.quant, dtype=self.dtype)
        if self.lora:
            self._check_lora()
        else:  # adapter settings without an adapter would be silently ignored
            given = [_flag(n) for n in ("lora_alpha", "lora_targets") if getattr(self, n) != FinetuneConfig.__dataclass_fields__[n].default]
            if given:
                raise ConfigError(f"{' and '.join(given)} only apply to a LoRA run, and --lora was not given",
                                  hint="add --lora 8 to train LoRA adapters, or drop " + " and ".join(given))
        self.mask = self.mask or (None if self.dense or self.lora else DEFAULT_MASK)
        self.quant = self.quant or ("none" if self.dense else "nf4")
        if self.quant not in QUANT_MODES:
            raise ConfigError(f"unknown quant {self.quant!r}", hint=f"choose one of: {', '.join(QUANT_MODES)}")
        check_device_spec(self.device)
        check_dtype_spec(self.dtype)
        # The optimizer's schedule and seeds follow the run's (validates lr, eps, optimizer, ...).
        if self.zo is None:
            self.zo = ZOConfig(lr=default_lr(dense=self.dense, lora=self.lora))
        self.zo = replace(self.zo, total_steps=self.steps, seed=self.seed)
        from .tracking import REPORT_TO

        if self.report_to not in REPORT_TO:
            raise ConfigError(f"unknown --report-to {self.report_to!r}", hint=f"choose one of: {', '.join(REPORT_TO)}")

    def _check_lora(self) -> None:
        """A LoRA run adapts the quantized base itself: no mask, no dense weights; its settings are valid."""
        if self.dense:
            raise ConfigError("--lora and --dense were both given", hint="drop --dense to train LoRA adapters, or drop --lora for dense MeZO")
        if self.mask is not None:
            raise ConfigError(f"--mask {self.mask} does not apply to --lora: the adapters train on the quantized base, no mask selects weights",
                              hint="drop --mask for a LoRA run, or drop --lora to train the masked weights")
        self.lora_settings()  # validates rank, alpha, targets

    def lora_settings(self) -> LoRASettings | None:
        """The adapter the settings ask for (None without --lora).

        Raises:
            ConfigError: a rank that is not positive, a bad alpha or empty target names.
        """
        if not self.lora:
            return None
        targets = tuple(t.strip() for t in self.lora_targets.split(","))
        return LoRASettings(rank=self.lora, alpha=self.lora_alpha, targets=targets)

    def custom_task(self) -> CustomTask | None:
        """The custom task the settings describe, or None for a built-in task."""
        return custom_task_from(task_file=self.task_file, train_file=self.train_file, eval_file=self.eval_file, dev_file=self.dev_file,
                                template=self.template, labels=self.labels, label_field=self.label_field, encoding=self.encoding)

    def sampling(self) -> Sampling:
        return Sampling(self.train_samples, self.dev_samples, self.eval_samples, self.seed)


def settings_of(config: FinetuneConfig) -> dict:
    """The settings as the run folder records them: flat, one key per option (ZO fields beside the rest)."""
    flat = {k: v for k, v in asdict(config).items() if k != "zo"}
    flat.update({k: v for k, v in asdict(config.zo).items() if k not in ZO_DERIVED})
    return flat


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
    dtype: str = "fp32"  # the compute dtype it ran in (resolved)
    micro_batch_size: int | None = None  # how a step's batch was split into forwards (see finetune.micro_batch_of)
    micro_batch_tokens: int | None = None


def shared_field(cls: type, name: str):
    """A field with the default, help and flag of `cls`'s field `name`: an option two commands share is written once."""
    f = cls.__dataclass_fields__[name]
    return field(default=f.default, metadata=f.metadata)


_DELTA_MODEL_HELP = "Model alias, Hub id, local folder or .gguf file (default: the one the delta was trained on, else the built-in)."
_DELTA_MASK_HELP = "Mask REF (default: the one the delta was trained with, else the built-in)."


@dataclass
class EvalConfig:
    """Settings of an evaluation (validated on creation)."""

    model: str | None = _opt(None, _DELTA_MODEL_HELP)
    mask: str | None = _opt(None, "Mask REF (default: the one the delta was trained with, else the built-in; zero-shot: the built-in "
                                  "where it fits the model, else none, the quantized base as it is).")
    task: str | None = shared_field(FinetuneConfig, "task")
    train_file: str | None = _opt(None, "Custom task: train file (jsonl/csv/tsv; eval takes ICL demonstrations from it).", flag="--train")
    eval_file: str | None = _opt(None, "Custom task: eval file (default: held out from --train; eval needs no --train for zero-shot).",
                                 flag="--eval")
    template: str | None = shared_field(FinetuneConfig, "template")
    labels: str | None = shared_field(FinetuneConfig, "labels")
    label_field: str = shared_field(FinetuneConfig, "label_field")
    task_file: str | None = shared_field(FinetuneConfig, "task_file")
    encoding: str = shared_field(FinetuneConfig, "encoding")
    delta: str | None = _opt(None, "Run folder, delta.safetensors or ORG/NAME[@REV] on the Hub (default: zero-shot); also a --dense or "
                                   "--lora run's folder.")
    icl_shots: int = _opt(0, "In-context demonstrations per example.")
    quant: str | None = _opt(None, "Base quantization: nf4, fp4, int8 or none (default nf4; a --dense run's weights: fp32, none).")
    device: str = shared_field(FinetuneConfig, "device")
    # None: the device type's default (`core.devices.DEFAULT_DTYPE`)
    dtype: str | None = _opt("auto", "Compute dtype: auto (bf16 on CUDA and on CPUs with native bf16, else fp32), bf16, fp16 or fp32. "
                                     "Sparse values stay fp32.")
    eval_samples: int = shared_field(FinetuneConfig, "eval_samples")
    batch_size: int = _opt(32, "Evaluation batch size.")
    seed: int = _opt(0, "Seed of sampling and demonstrations.")
    data_dir: str | None = shared_field(FinetuneConfig, "data_dir")
    revision: str | None = shared_field(FinetuneConfig, "revision")

    def __post_init__(self) -> None:
        for name, low, example in (("icl_shots", 0, 16), ("batch_size", 1, 32), ("eval_samples", 1, 1000)):
            if getattr(self, name) < low:
                option = _flag(name, EvalConfig)
                raise ConfigError(f"{option} must be >= {low}, got {getattr(self, name)}", hint=f"e.g. {option} {example}")
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
class MergeConfig:
    """Settings of a merge: a delta baked into its base model, written as a plain transformers folder (validated on creation)."""

    delta: str | Path = field(metadata={"help": "Run folder, delta.safetensors or ORG/NAME[@REV] on the Hub; also a --dense or --lora run's folder."})
    out: str | Path = field(metadata={"help": "Folder for the merged transformers model (must not exist or be empty)."})
    model: str | None = _opt(None, _DELTA_MODEL_HELP)
    mask_ref: str | None = _opt(None, _DELTA_MASK_HELP, flag="--mask")
    dtype: str = _opt("fp32", "dtype of the saved weights: fp32, bf16 or fp16.")
    device: str = _opt("auto", "Where the weights are patched: auto (CUDA when available), cpu, cuda or cuda:N; the folder written is "
                               "the same on every device.")
    revision: str | None = shared_field(FinetuneConfig, "revision")

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_NAMES:
            raise ConfigError(f"unknown --dtype {self.dtype!r}", hint=f"choose one of: {', '.join(DTYPE_NAMES)}")
        check_device_spec(self.device)
