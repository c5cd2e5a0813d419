"""`MethodConfig`: the settings of one training method, and the facts the loop and CLI read from it.

A method's config dataclass is small and torch-free (`szoq --help` builds `szoq finetune`'s
options from its fields without loading torch): each field carries its help text and, where it is
not `--name-with-dashes`, its flag in `metadata`, as `FinetuneConfig`'s fields do. The fields of
every registered method become `szoq finetune` options; a run records those of its own method.

A field whose metadata has `"selects": True` picks its method on the command line when given a
true value (`--dense`, `--lora R`), besides `--method NAME`.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

from ..core.errors import ConfigError

if TYPE_CHECKING:
    from ..masks.artifact import MaskData
    from ..training.config import FinetuneConfig


def opt(default: Any, help: str, flag: str | None = None, *, selects: bool = False, example: str | None = None, **kw: Any) -> Any:
    """A config field with its help text (and its flag when it is not `--name-with-dashes`).

    Args:
        default: The field's default.
        help: Its `--help` text.
        flag: The command-line flag, when it is not the field name with dashes.
        selects: A true value of this field picks the field's method on the command line.
        example: A value for messages that show the flag (`--lora 8`).

    Returns:
        A `dataclasses.field`.
    """
    meta = {"help": help, **({"flag": flag} if flag else {}), **({"selects": True} if selects else {}), **({"example": example} if example else {})}
    return field(default=default, metadata=meta, **kw)


def field_flag(f) -> str:
    """The command-line flag of a dataclass field (`--train` for `train_file` when its metadata says so)."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def field_default(f) -> Any:
    return f.default if f.default is not MISSING else f.default_factory()


@dataclass
class MethodConfig:
    """The settings of a training method (a subclass per method; validated on creation).

    Class attributes (facts about the method, not options):
        final_file: The run folder's last file: the run is complete once it exists.
        default_lr: The learning rate a run gets without `--lr`: a number, or "scores" (from the mask's
            Σg², `training/lr_scores.py`; `fixed_lr` when the mask has none).
        fixed_lr: The numeric lr "scores" falls back to; only a method whose `default_lr` is "scores"
            sets it (`numeric_lr()` reads the right one).
        takes_mask: Whether the method trains over a sensitivity mask (`--mask`).
        quantized: Whether it runs on the quantized base (`--quant`, `--dtype`); False: the fp32
            model, unquantized.
        data_parallel: Whether it runs under torchrun with more than one process.
        summary: One line for `--method`'s help.
        title: How messages name a run of the method ("a LoRA run"); default its registered name.
    """

    final_file: ClassVar[str] = ""
    default_lr: ClassVar[float | str] = 1e-4
    fixed_lr: ClassVar[float | None] = None
    takes_mask: ClassVar[bool] = False
    quantized: ClassVar[bool] = True
    data_parallel: ClassVar[bool] = True
    summary: ClassVar[str] = ""
    title: ClassVar[str] = ""  # how messages name a run of it ("a LoRA run"); default: its registered name

    @classmethod
    def numeric_lr(cls) -> float:
        """The method's numeric default lr: `default_lr`, or `fixed_lr` where `default_lr` is a rule ("scores")."""
        return cls.fixed_lr if isinstance(cls.default_lr, str) else cls.default_lr

    def check_run(self, run: FinetuneConfig) -> None:
        """Check the run's settings for this method (`FinetuneConfig` calls it once the method is chosen).

        Args:
            run: The run's settings (mask, quant, dtype, ... as given; None = not given; `zo`,
                the optimizer's settings, already set).

        Raises:
            ConfigError: a setting the method cannot run with.
        """

    def check_mask(self, run: FinetuneConfig, mask: MaskData) -> None:
        """Check the run's mask once it is open, before any weight loads (a method that `takes_mask`;
        its trainable calls it).

        Args:
            run: The run's settings (`run.mask` names the mask).
            mask: The opened mask.

        Raises:
            SzoqError: a mask the run's settings cannot train with (e.g. no scores to precondition by).
        """

    def record(self) -> dict:
        """The settings as the run folder records them (flat, by field name)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def refuse_unquantized_options(target: str, *, mask: str | None = None, quant: str | None = None, dtype: str | None = None,
                               drop: str = "") -> None:
    """Refuse the options that weights trained in fp32 on the unquantized model cannot take.

    A method that is not `quantized` (dense MeZO) trains weights of the fp32 model: no mask
    selects them, no quantized base holds them, and an update of lr x |g z| (~1e-6) vanishes when
    rounded to bf16/fp16.

    Args:
        target: What the options were given for, as the message names it (`--dense`, a run folder).
        mask, quant, dtype: The options as given (None = not given).
        drop: Added to the hint (e.g. how to train the masked weights instead).

    Raises:
        ConfigError: `--mask` given, `--quant` other than none, or `--dtype` bf16/fp16.
    """
    why = {"--mask": (mask, mask is not None, "every linear weight trains, no mask selects them"),
           "--quant": (quant, quant not in (None, "none"), "the dense weights are the fp32 weights themselves, unquantized"),
           "--dtype": (dtype, dtype in ("bf16", "fp16"), "the dense weights train and score in fp32 (an update of lr 1e-6 x |g z| vanishes in bf16)")}
    for name, (value, refused, reason) in why.items():
        if refused:
            raise ConfigError(f"{name} {value} does not apply to {target}: {reason}", hint=f"drop {name} for a dense run" + drop)


def refuse_mask(target: str, mask: str | None, *, why: str, hint: str) -> None:
    """Refuse `--mask` for a method that trains no masked weights.

    Raises:
        ConfigError: `mask` given.
    """
    if mask is not None:
        raise ConfigError(f"--mask {mask} does not apply to {target}: {why}", hint=hint)
