"""szoq: zeroth-order fine-tuning of quantized LLMs with transferable static sparsity masks.

The public Python API (the CLI is a thin layer over exactly these):

    from szoq_hub import SensitivityMask, Delta, build_mask, load_sparse_model, finetune

    mask = SensitivityMask.from_pretrained("smollm2-135m-instruct")   # any REF the CLI takes
    mask.save_pretrained("my-mask"); mask.push_to_hub("my-team/my-mask", tag="v1")
    sparse = load_sparse_model("smollm2-135m-instruct", mask, quant="nf4")
    result = finetune(FinetuneConfig(task="sst2", out="runs/sst2"))
    Delta.from_pretrained("runs/sst2").merge_into(model)

Names are imported on first use, so `import szoq_hub` stays cheap (no torch, no transformers).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "SensitivityMask": "mask",
    "MaskConfig": "mask",
    "MaskBuildConfig": "build",
    "build_mask": "build",
    "load_sparse_model": "runtime",
    "SparseModel": "runtime",
    "FinetuneConfig": "finetune",
    "FinetuneResult": "finetune",
    "finetune": "finetune",
    "Delta": "delta",
    "export_peft": "peft_export",
    "plot_runs": "plots",
    "plot_mask": "plots",
    "SzoqError": "errors",
}
__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time `__getattr__` imports lazily
    from .build import MaskBuildConfig, build_mask
    from .delta import Delta
    from .errors import SzoqError
    from .finetune import FinetuneConfig, FinetuneResult, finetune
    from .mask import MaskConfig, SensitivityMask
    from .peft_export import export_peft
    from .plots import plot_mask, plot_runs
    from .runtime import SparseModel, load_sparse_model


# `finetune` names both a submodule and its main function. The API promises the function, so
# the import system may not overwrite the package attribute with the submodule once it loads;
# reach the module itself with `importlib.import_module("szoq_hub.finetune")` or
# `from szoq_hub.finetune import ...`.
_FUNCTION_OVER_MODULE = {"finetune"}


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value) -> None:
        if name in _FUNCTION_OVER_MODULE and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'szoq_hub' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
