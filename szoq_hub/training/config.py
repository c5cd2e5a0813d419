"""The settings of the training layer's commands: a fine-tuning run (`FinetuneConfig`, nesting the
optimizer's `ZOConfig` and the method's own settings: `method_config`, a `MethodConfig` of the
method `method` names), an evaluation (`EvalConfig`) and a merge (`MergeConfig`). Torch-free.

Every field carries its help and, where it is not `--name-with-dashes`, its command-line flag
in `metadata`; `szoq finetune`, `szoq eval` and `szoq merge` build their options from these
fields (cli/options.py), so an option, its default and its help are written once. Error
messages name flags through `_flag()`, so a message never names a flag that does not exist.

The run folder records the settings flat (`settings_of`): one key per option, the method's and
the ZO fields beside the others, as the command line spells them, and the method by name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..core.defaults import DEFAULT_MASK, DEFAULT_MODEL, DTYPE_NAMES, check_device_spec, check_dtype_spec
from ..core.errors import ConfigError
from ..data.custom_tasks import CustomTask, custom_task_from
from ..data.tasks import Sampling
from ..methods import DEFAULT_METHOD, Method, get_method, methods
from ..methods.spec import MethodConfig, field_default, field_flag, opt
from ..runtime.zo_config import AUTO_C, AUTO_PROBES, SCORES_C, ZOConfig

# ZOConfig fields a run derives from its own settings (steps, seed): not options of their own.
ZO_DERIVED = ("total_steps", "seed")


def _lr_help() -> str:
    """`--lr`'s help: the default of each registered method."""
    per = ", ".join(f"{_lr_text(m.config_cls)} with {m.flag if m.name != DEFAULT_METHOD else 'a mask'}" for m in methods())
    return (f"Learning rate (peak, after warmup); scores: {SCORES_C:g} / (the mask's Σg² / calibration windows), SmolLM2's and Qwen2.5-0.5B's "
            f"swept best from one constant, not Gemma-3's (a mask without scores: the method's fixed default); auto: {AUTO_C:g} / the median |g| of {AUTO_PROBES} "
            f"two-point estimates taken before the first step (recorded, --resume keeps it). Default: {per} (README Results).")


def _lr_text(cls: type[MethodConfig]) -> str:
    """A method's default lr as `--lr`'s help names it."""
    if isinstance(cls.default_lr, str):
        return f"{cls.default_lr} ({cls.numeric_lr():g} without scores)"
    return f"{cls.default_lr:g}"


def _method_help() -> str:
    """`--method`'s help: what each registered method trains."""
    return ("Training method: sparse (the default: the masked values), senszoq-curvature (the same values, a curvature-preconditioned "
            "step), dense or lora (--dense and --lora R choose those too), or one "
            "registered with szoq_hub.register_method. " + "; ".join(f"{m.name}: {m.config_cls.summary}" for m in methods() if m.config_cls.summary) + ".")


def _method_configs() -> list[type[MethodConfig]]:
    """The settings class of every registered method (each one's fields are `szoq finetune` options)."""
    return [m.config_cls for m in methods()]


def _flag(name: str, cls: type | None = None) -> str:
    """The command-line flag of a config field, as error messages name it.

    Args:
        name: The field name.
        cls: The dataclass (default: FinetuneConfig, then ZOConfig, then each method's config).

    Returns:
        e.g. `--train` for `train_file`, `--batch-size` for `batch_size`.
    """
    for c in ((cls,) if cls else (FinetuneConfig, ZOConfig, *(m.config_cls for m in methods()))):
        for f in fields(c):
            if f.name == name:
                return field_flag(f)
    raise KeyError(name)


@dataclass
class FinetuneConfig:
    """Every setting of a fine-tuning run (validated on creation; saved as the run folder's config)."""

    model: str = opt(DEFAULT_MODEL, "Model alias, Hub id, local folder or .gguf file.")
    mask: str | None = opt(None, f"Mask: folder, registry NAME[@VERSION], built-in name, or ORG/NAME[@REV] (default {DEFAULT_MASK}; not with --dense).")
    method: str | None = field(default=None, metadata={"help": _method_help})
    # The method's own settings: the fields of every registered method's config are options of their
    # own (`--dense`, `--lora R`, `--lora-alpha`, ...), and a true selecting one picks the method. Also
    # a dict of those fields, as the command line gives them (see `_method_config`). None: its defaults.
    method_config: MethodConfig | None = field(default=None, metadata={"help": "The method's own settings.", "variants": _method_configs})
    task: str | None = opt(None, "Built-in task: sst2, rte, cb, boolq, wic, wsc, copa or multirc (default sst2; not with a custom task).")
    train_file: str | None = opt(None, "Custom task: train file (jsonl/csv/tsv).", flag="--train")
    eval_file: str | None = opt(None, "Custom task: eval file (default: held out from --train).", flag="--eval")
    dev_file: str | None = opt(None, "Custom task: dev file (default: held out from --train).", flag="--dev")
    template: str | None = opt(None, "Custom task: format string over row fields, e.g. '{text} It was'.")
    labels: str | None = opt(None, "Custom task: label=word pairs, e.g. '0=terrible,1=great'.")
    label_field: str = opt("label", "Custom task: the row field holding the label.")
    task_file: str | None = opt(None, "Custom task as a JSON/YAML file.")
    encoding: str = opt("utf-8", "Custom task: text encoding of the data files, e.g. latin-1.")
    data_dir: str | None = opt(None, "GLUE/SuperGLUE folder (default $SZOQ_DATA_DIR; else `datasets` online).")
    revision: str | None = opt(None, "Hub revision of the model.")
    quant: str | None = opt(None, "Base quantization: nf4, fp4, int8 or none (default nf4; not with --dense).")
    device: str = opt("auto", "auto (CUDA when available), cpu, cuda or cuda:N.")
    dtype: str | None = opt("auto", "Compute dtype: auto (bf16 on CUDA and on CPUs with native bf16, else fp32; a resumed run keeps "
                                    "its own), bf16, fp16 or fp32. Sparse values stay fp32 (--dense: fp32).")
    steps: int = opt(300, "ZO steps.")
    batch_size: int = opt(16, "Examples per step (all ranks together).")
    micro_batch_size: int | None = opt(None, "Examples per training forward, grouped by similar length (default: automatic, forwards of "
                                             "up to 128 padded tokens on a CPU, the whole batch on CUDA; a resumed run keeps its choice). "
                                             "Same loss; less activation memory and padding (see bench/bench_micro_batch.py). May change on --resume.")
    # The ZO optimizer: its fields are options of their own (those a run derives left out), and --lr
    # left out means the method's own lr (`MethodConfig.default_lr`). None: ZOConfig defaults with that lr.
    zo: ZOConfig | None = field(default=None, metadata={"help": "The ZO optimizer's settings.", "nested": True, "skip": ZO_DERIVED,
                                                        "overrides": {"lr": {"default": None, "help": _lr_help}}})
    eval_every: int = opt(100, "Dev evaluation every K steps (0 = at the end).")
    dev_baseline: bool = opt(True, "Also score dev before the first step (step 0): the untouched model is a best-dev candidate, so a "
                                   "run that never beats it on dev ends with the model it started from. --no-dev-baseline: only the "
                                   "evaluations every --eval-every steps are candidates. Without a dev set the run keeps its last step either way.")
    save_every: int = opt(100, "Checkpoint every K steps.")
    save_every_minutes: float = opt(10.0, "Also checkpoint when this many minutes passed since the last checkpoint (0 = by steps only).")
    seed: int = opt(0, "Seed of sampling, batches and perturbations.")
    train_samples: int = opt(1000, "Train examples drawn.")
    dev_samples: int = opt(500, "Dev examples drawn (from --dev, else held out from the train split).")
    eval_samples: int = opt(1000, "Eval examples drawn (built-in task: from validation; custom: from --eval, else held out from --train).")
    eval_batch_size: int = opt(32, "Examples per evaluation forward (dev and eval).")
    out: str = opt("runs/finetune", "Output folder; a stopped run there with the same options is continued.")
    report_to: str = opt("none", "Also log metrics to: none, tensorboard, trackio or wandb (offline modes honoured).")

    def __post_init__(self) -> None:
        for name, low, example in (("steps", 1, 300), ("batch_size", 1, 16), ("eval_batch_size", 1, 32), ("eval_every", 0, 100), ("save_every", 1, 100)):
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

        spec = _chosen_method(self.method, self.method_config)
        self.method = spec.name
        self.method_config = _method_config(spec, self.method_config)
        # The optimizer's schedule and seeds follow the run's (validates lr, eps, optimizer, ...);
        # set before check_run, which may refuse optimizer options its method cannot use.
        if self.zo is None:
            self.zo = ZOConfig(lr=spec.config_cls.default_lr)
        elif isinstance(self.zo, dict):  # its fields as the command line gives them: lr None = the method's own
            self.zo = ZOConfig(**{**self.zo, "lr": spec.config_cls.default_lr if self.zo.get("lr") is None else self.zo["lr"]})
        self.zo = replace(self.zo, total_steps=self.steps, seed=self.seed)
        self.method_config.check_run(self)
        self.mask = self.mask or (DEFAULT_MASK if spec.config_cls.takes_mask else None)
        self.quant = self.quant or ("nf4" if spec.config_cls.quantized else "none")
        if self.quant not in QUANT_MODES:
            raise ConfigError(f"unknown quant {self.quant!r}", hint=f"choose one of: {', '.join(QUANT_MODES)}")
        check_device_spec(self.device)
        check_dtype_spec(self.dtype)
        from .tracking import REPORT_TO

        if self.report_to not in REPORT_TO:
            raise ConfigError(f"unknown --report-to {self.report_to!r}", hint=f"choose one of: {', '.join(REPORT_TO)}")

    @property
    def method_spec(self) -> Method:
        """The registered method the run trains with."""
        return get_method(self.method)

    def custom_task(self) -> CustomTask | None:
        """The custom task the settings describe, or None for a built-in task."""
        return custom_task_from(task_file=self.task_file, train_file=self.train_file, eval_file=self.eval_file, dev_file=self.dev_file,
                                template=self.template, labels=self.labels, label_field=self.label_field, encoding=self.encoding)

    def sampling(self) -> Sampling:
        return Sampling(self.train_samples, self.dev_samples, self.eval_samples, self.seed)


def _chosen_method(name: str | None, given: Any) -> Method:
    """The method a run trains with: `name`, else the one a true selecting field of `given` (a dict of
    settings fields, as `szoq finetune` gives them: `dense` for --dense, `lora` for --lora R) picks,
    else sparse.

    Raises:
        ConfigError: an unknown method, or two methods chosen.
    """
    if not isinstance(given, dict):
        return get_method(name or DEFAULT_METHOD)
    chosen = [m for m in methods() if m.selector and given.get(m.selector)]
    if name:
        chosen = [get_method(name), *(m for m in chosen if m.name != name)]
    if len(chosen) > 1:
        flags = [m.flag for m in chosen]
        raise ConfigError(f"{' and '.join(flags)} were both given", hint=f"choose one method: drop {' or '.join(flags)}")
    return chosen[0] if chosen else get_method(DEFAULT_METHOD)


def _method_config(spec: Method, given: Any) -> MethodConfig:
    """The method's settings: as given (an instance, or a dict of settings fields), else its defaults.

    A dict may hold the fields of every registered method (the command line's options): those of
    another method are refused unless they keep their defaults, never ignored.

    Raises:
        ConfigError: settings of another method's type, another method's options given, or a name
            that is no method's setting.
    """
    if given is None:
        return spec.config_cls()
    if isinstance(given, dict):
        owner = {f.name: m for m in methods() for f in fields(m.config_cls)}
        unknown = sorted(set(given) - set(owner))
        if unknown:
            raise ConfigError(f"no method has the settings {unknown}", hint="see szoq finetune --help for each method's options")
        others = [f for m in methods() if m is not spec for f in fields(m.config_cls) if f.name in given and given[f.name] != field_default(f)]
        if others:
            names = [field_flag(f) for f in others]
            other = owner[others[0].name]
            raise ConfigError(f"{' and '.join(names)} only apply to a {other.config_cls.title or other.name} run, and {other.flag} was not given",
                              hint=f"add {other.choice} to train with it, or drop " + " and ".join(names))
        return spec.config_cls(**{f.name: given[f.name] for f in fields(spec.config_cls) if f.name in given})
    if not isinstance(given, spec.config_cls):
        raise ConfigError(f"method {spec.name!r} takes {spec.config_cls.__name__} settings, not {type(given).__name__}",
                          hint=f"pass method_config={spec.config_cls.__name__}(...), or leave it out for its defaults")
    return given


def settings_of(config: FinetuneConfig) -> dict:
    """The settings as the run folder records them: flat, one key per option (the method's and the ZO
    fields beside the rest)."""
    flat = {f.name: getattr(config, f.name) for f in fields(config) if f.name not in ("zo", "method_config")}
    flat.update(config.method_config.record())
    flat.update({k: v for k, v in asdict(config.zo).items() if k not in ZO_DERIVED})
    return flat


@dataclass
class FinetuneResult:
    """What a run produced."""

    out: Path
    steps: int
    metric: str
    best_step: int | None  # the step whose state the run kept: 0 = the untouched model (`kept_start`); None: no dev set, the last step
    best_dev: float | None
    eval_metric: float
    seconds: float
    resumed_from: int = 0
    dtype: str = "fp32"  # the compute dtype it ran in (resolved)
    micro_batch_size: int | None = None  # how a step's batch was split into forwards (see finetune.micro_batch_of)
    micro_batch_tokens: int | None = None
    lr: float | None = None  # the base lr the run used (--lr auto: the probe's choice; --lr scores: the mask's)

    @property
    def kept_start(self) -> bool:
        """Whether no step beat the untouched model on dev, so the run ended with the model it started from."""
        return self.best_step == 0


def shared_field(cls: type, name: str):
    """A field with the default, help and flag of `cls`'s field `name`: an option two commands share is written once."""
    f = cls.__dataclass_fields__[name]
    return field(default=f.default, metadata=f.metadata)


_DELTA_MODEL_HELP = "Model alias, Hub id, local folder or .gguf file (default: the one the delta was trained on, else the built-in)."
_DELTA_MASK_HELP = "Mask REF (default: the one the delta was trained with, else the built-in)."


@dataclass
class EvalConfig:
    """Settings of an evaluation (validated on creation)."""

    model: str | None = opt(None, _DELTA_MODEL_HELP)
    mask: str | None = opt(None, "Mask REF (default: the one the delta was trained with, else the built-in; zero-shot: the built-in "
                                 "where it fits the model, else none, the quantized base as it is).")
    task: str | None = shared_field(FinetuneConfig, "task")
    train_file: str | None = opt(None, "Custom task: train file (jsonl/csv/tsv; eval takes ICL demonstrations from it).", flag="--train")
    eval_file: str | None = opt(None, "Custom task: eval file (default: held out from --train; eval needs no --train for zero-shot).",
                                flag="--eval")
    template: str | None = shared_field(FinetuneConfig, "template")
    labels: str | None = shared_field(FinetuneConfig, "labels")
    label_field: str = shared_field(FinetuneConfig, "label_field")
    task_file: str | None = shared_field(FinetuneConfig, "task_file")
    encoding: str = shared_field(FinetuneConfig, "encoding")
    delta: str | None = opt(None, "Run folder, delta.safetensors or ORG/NAME[@REV] on the Hub (default: zero-shot); also a --dense or "
                                  "--lora run's folder.")
    icl_shots: int = opt(0, "In-context demonstrations per example.")
    quant: str | None = opt(None, "Base quantization: nf4, fp4, int8 or none (default nf4; a --dense run's weights: fp32, none).")
    device: str = shared_field(FinetuneConfig, "device")
    # None: the device type's default (`core.devices.DEFAULT_DTYPE`)
    dtype: str | None = opt("auto", "Compute dtype: auto (bf16 on CUDA and on CPUs with native bf16, else fp32), bf16, fp16 or fp32. "
                                    "Sparse values stay fp32.")
    eval_samples: int = shared_field(FinetuneConfig, "eval_samples")
    batch_size: int = opt(32, "Evaluation batch size.")
    seed: int = opt(0, "Seed of sampling and demonstrations.")
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
    model: str | None = opt(None, _DELTA_MODEL_HELP)
    mask_ref: str | None = opt(None, _DELTA_MASK_HELP, flag="--mask")
    dtype: str = opt("fp32", "dtype of the saved weights: fp32, bf16 or fp16.")
    device: str = opt("auto", "Where the weights are patched: auto (CUDA when available), cpu, cuda or cuda:N; the folder written is "
                              "the same on every device.")
    revision: str | None = shared_field(FinetuneConfig, "revision")

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_NAMES:
            raise ConfigError(f"unknown --dtype {self.dtype!r}", hint=f"choose one of: {', '.join(DTYPE_NAMES)}")
        check_device_spec(self.device)
