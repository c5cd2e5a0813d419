"""The defaults a user sees in `--help` (model, mask, learning rate), in a module that imports nothing.

The CLI builds its options from them at import, so `szoq --help` must read them without
loading the model or training code (and torch).
"""

DEFAULT_MODEL = "smollm2-135m-instruct"  # the built-in model alias (data/models.py resolves it)
DEFAULT_MASK = "smollm2-135m-instruct"  # the built-in mask (masks/catalog.py)
DEFAULT_LR = 1e-4  # SGD learning rate of `szoq finetune` (the README's SST-2 sweep)
