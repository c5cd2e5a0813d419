"""The settings of a fine-tuning run: `FinetuneConfig`, nesting the optimizer's `ZOConfig` and the
method's own settings (`method_config`, a `MethodConfig` of the method `method` names).

Every field carries its help and, where it is not `--name-with-dashes`, its command-line flag
in `metadata`; `szoq finetune` builds its options from these fields (cli/finetune.py), so an
option, its default and its help are written once. Error messages name flags through `flag()`,
so a message never names a flag that does not exist.

The run folder records the settings flat (`settings_of`): one key per option, the method's and
the ZO fields beside the others, as the command line spells them, and the method by name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..core.defaults import DEFAULT_MASK, DEFAULT_MODEL
from ..core.errors import ConfigError
from ..core.specs import check_device_spec, check_dtype_spec
from ..data.custom_tasks import CustomTask, custom_task_from
from ..data.tasks import Sampling
from ..methods import DEFAULT_METHOD, Method, get_method, methods
from ..methods.spec import MethodConfig, field_default, field_flag, opt
from ..runtime.zo_config import ZOConfig

# ZOConfig fields a run derives from its own settings (steps, seed): not options of their own.
ZO_DERIVED = ("total_steps", "seed")


def flag(name: str, cls: type | None = None) -> str:
    """The command-line flag of a `FinetuneConfig`, `ZOConfig` or method settings field.

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
    method: str | None = opt(None, "Training method: sparse (the default: the masked values), dense or lora (--dense and --lora R choose "
                                    "those too), or one registered with szoq_hub.register_method.")
    method_config: MethodConfig | None = field(default=None, metadata={"help": "the method's own settings (its fields are options of their own); "
                                                                              "None: its defaults"})
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
                                              "Same loss; less activation memory and padding (see bench/micro_batch.py). May change on --resume.")
    zo: ZOConfig | None = field(default=None, metadata={"help": "the ZO optimizer (its fields are options of their own); None: ZOConfig "
                                                                "defaults with the method's lr (`default_lr`)"})
    eval_every: int = opt(100, "Dev evaluation every K steps (0 = at the end).")
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
                raise ConfigError(f"{flag(name)} must be >= {low}, got {getattr(self, name)}", hint=f"e.g. {flag(name)} {example}")
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

        spec = get_method(self.method or DEFAULT_METHOD)
        self.method = spec.name
        self.method_config = _method_config(spec, self.method_config)
        self.method_config.check_run(self)
        self.mask = self.mask or (DEFAULT_MASK if spec.config_cls.takes_mask else None)
        self.quant = self.quant or ("nf4" if spec.config_cls.quantized else "none")
        if self.quant not in QUANT_MODES:
            raise ConfigError(f"unknown quant {self.quant!r}", hint=f"choose one of: {', '.join(QUANT_MODES)}")
        check_device_spec(self.device)
        check_dtype_spec(self.dtype)
        # The optimizer's schedule and seeds follow the run's (validates lr, eps, optimizer, ...).
        if self.zo is None:
            self.zo = ZOConfig(lr=spec.config_cls.default_lr)
        self.zo = replace(self.zo, total_steps=self.steps, seed=self.seed)
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


def _method_config(spec: Method, given: Any) -> MethodConfig:
    """The method's settings: as given (an instance, or a dict of its fields), else its defaults.

    Raises:
        ConfigError: settings of another method's type.
    """
    if given is None:
        return spec.config_cls()
    if isinstance(given, dict):
        return spec.config_cls(**given)
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


def option_fields() -> list[tuple[type, object]]:
    """(dataclass, field) of every option, in the order `szoq finetune --help` lists them: the
    run's fields with every registered method's fields in place of `method_config` and the ZO
    fields in place of `zo` (those a run derives left out)."""
    out: list[tuple[type, object]] = []
    for f in fields(FinetuneConfig):
        if f.name == "zo":
            out += [(ZOConfig, z) for z in fields(ZOConfig) if z.name not in ZO_DERIVED]
        elif f.name == "method_config":
            out += [(m.config_cls, mf) for m in methods() for mf in fields(m.config_cls)]
        else:
            out.append((FinetuneConfig, f))
    return out


def default_of(cls: type, f) -> object:
    """A field's default as `szoq finetune` shows it (lr: None, the method's own, see `help_of`)."""
    if cls is ZOConfig:
        return None if f.name == "lr" else getattr(ZOConfig(), f.name)
    return field_default(f)


def help_of(cls: type, f) -> str:
    """A field's `--help` text (lr: with the default of each method)."""
    if cls is ZOConfig and f.name == "lr":
        per = ", ".join(f"{m.config_cls.default_lr:g} with {m.flag if m.name != DEFAULT_METHOD else 'a mask'}" for m in methods())
        return f"Learning rate (peak, after warmup). Default: {per} (each method's SST-2 dev sweep, README Results)."
    if cls is FinetuneConfig and f.name == "method":
        return f.metadata["help"] + " " + "; ".join(f"{m.name}: {m.config_cls.summary}" for m in methods() if m.config_cls.summary) + "."
    return f.metadata["help"]


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


def config_from_options(options: dict) -> FinetuneConfig:
    """A FinetuneConfig from flat options (as `option_fields` lists them: the method's and the ZO
    fields beside the rest).

    The method is `options["method"]`, else the one whose selecting option is given (`dense` for
    --dense, `lora` for --lora R), else sparse. Options of another method are refused, not ignored.

    Raises:
        ConfigError: an invalid value (see FinetuneConfig, ZOConfig and the method's config), two
            methods chosen, or another method's options given.
        TypeError: an option that is no field.
    """
    zo_names = {f.name for f in fields(ZOConfig)} - set(ZO_DERIVED)
    owner = {f.name: m for m in methods() for f in fields(m.config_cls)}
    chosen = [m for m in methods() if m.selector and options.get(m.selector)]
    if options.get("method"):
        chosen = [get_method(options["method"]), *(m for m in chosen if m.name != options["method"])]
    if len(chosen) > 1:
        flags = [m.flag for m in chosen]
        raise ConfigError(f"{' and '.join(flags)} were both given", hint=f"choose one method: drop {' or '.join(flags)}")
    spec = chosen[0] if chosen else get_method(DEFAULT_METHOD)
    given = [f for m in methods() if m is not spec for f in fields(m.config_cls)
             if f.name in options and options[f.name] != field_default(f)]
    if given:
        names = [field_flag(f) for f in given]
        other = owner[given[0].name]
        raise ConfigError(f"{' and '.join(names)} only apply to a {other.config_cls.title or other.name} run, and {other.flag} was not given",
                          hint=f"add {other.choice} to train with it, or drop " + " and ".join(names))
    zo = {k: v for k, v in options.items() if k in zo_names}
    if zo.get("lr") is None:  # not given: the method's default
        zo["lr"] = spec.config_cls.default_lr
    own = {f.name: options[f.name] for f in fields(spec.config_cls) if f.name in options}
    rest = {k: v for k, v in options.items() if k not in zo_names and k not in owner and k != "method"}
    return FinetuneConfig(**rest, method=spec.name, method_config=spec.config_cls(**own), zo=ZOConfig(**zo))
