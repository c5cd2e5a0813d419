"""The defaults a user sees in `--help` (model, mask, learning rate), in a module that imports nothing.

The CLI builds its options from them at import, so `szoq --help` must read them without
loading the model or training code (and torch).
"""

DEFAULT_MODEL = "smollm2-135m-instruct"  # the built-in model alias (data/models.py resolves it)
DEFAULT_MASK = "smollm2-135m-instruct"  # the built-in mask (masks/catalog.py)
# `szoq finetune`'s learning rate when --lr is not given, per method: each is its SST-2 dev sweep's choice
# (bench/quality.py --sweep, README "Results").
DEFAULT_LR = 1e-4  # a sparse mask (the built-in one or any other)
DENSE_LR = 1e-4  # --dense (the MeZO baseline)
LORA_LR = 1e-3  # --lora R (ZO-LoRA)


def default_lr(*, dense: bool = False, lora: int = 0) -> float:
    """The learning rate a run gets without --lr: DENSE_LR for --dense, LORA_LR for --lora, else DEFAULT_LR."""
    return DENSE_LR if dense else LORA_LR if lora else DEFAULT_LR
