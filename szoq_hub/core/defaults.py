"""What `szoq --help` shows and checks without torch: the version, the defaults (model, mask,
learning rate) and the spellings of `--device` and `--dtype`.

The CLI builds its options from the library's configs at import, so `szoq --help` must read
these without loading the model or training code (and torch); `core.devices` turns the
spellings into torch devices and dtypes.
"""

from __future__ import annotations

from .errors import ConfigError

__version__ = "0.1.0"

DEFAULT_MODEL = "smollm2-135m-instruct"  # the built-in model alias (data/models.py resolves it)
DEFAULT_MASK = "smollm2-135m-instruct"  # the built-in mask (masks/catalog.py)
# `szoq finetune`'s learning rate when --lr is not given, per method: each is its SST-2 dev sweep's choice
# (bench/quality.py --sweep, README "Results").
# A sparse mask keeps 1e-4, not the grid's 3e-4: 3e-4 led on the SST-2 grid (66.0 +- 2.1 vs 63.5 +- 4.2, 3 seeds, inside
# one std) and tied on TREC (40.0 vs 39.4), but on the main command's own protocol it peaked at step 100 and fell (dev 68.4
# -> 58.4 -> 56.8; SST-2 validation 64.2% against 70.8% at 1e-4), and on Gemma-3-270M it diverged (README Results).
DEFAULT_LR = 1e-4  # a sparse mask
DENSE_LR = 1e-4  # --dense (the MeZO baseline): SST-2 dev 74.0%; 2e-4 falls to 55.5%
LORA_LR = 1e-3  # --lora R (ZO-LoRA, eps 1e-3): SST-2 dev 60.0% (the majority class; 1e-4 59.0%, 3e-3 44.0%, 1e-2 54.0%, 0.1 43.0%)


def default_lr(*, dense: bool = False, lora: int = 0) -> float:
    """The learning rate a run gets without --lr: DENSE_LR for --dense, LORA_LR for --lora, else DEFAULT_LR."""
    return DENSE_LR if dense else LORA_LR if lora else DEFAULT_LR


# -- spellings of --device and --dtype, checked without torch (config validation) --------------
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
DTYPE_NAMES = ("bf16", "fp16", "fp32")


def check_device_spec(spec: str) -> None:
    """Validate the spelling of a `--device` value without touching CUDA (for config checks).

    Raises:
        ConfigError: not `auto`, `cpu`, `cuda` or `cuda:N`.
    """
    kind, _, index = (spec or "").strip().lower().partition(":")
    if kind in ("auto", "cpu") and not index:
        return
    if kind == "cuda" and (not index or index.isdigit()):
        return
    raise ConfigError(f"unknown --device {spec!r}", hint=f"choose one of: {', '.join(DEVICE_CHOICES)}")


def check_dtype_spec(spec: str | None) -> None:
    """Validate a `--dtype` value (None = the device's default).

    Raises:
        ConfigError: not `auto`, `bf16`, `fp16` or `fp32`.
    """
    if spec is not None and spec != "auto" and spec not in DTYPE_NAMES:
        raise ConfigError(f"unknown --dtype {spec!r}", hint=f"choose one of: auto, {', '.join(DTYPE_NAMES)}")
