"""szoq: zeroth-order fine-tuning of quantized LLMs with transferable static sparsity masks.

The public Python API (the CLI is a thin layer over exactly these names; see README "Python API"):

    from szoq_hub import Delta, FinetuneConfig, SensitivityMask, finetune, load_sparse_model

    mask = SensitivityMask.from_pretrained("smollm2-135m-instruct")   # any REF the CLI takes
    mask.save_pretrained("my-mask"); mask.push_to_hub("my-team/my-mask", tag="v1")
    sparse = load_sparse_model("smollm2-135m-instruct", mask, quant="nf4")
    result = finetune(FinetuneConfig(task="sst2", out="runs/sst2"))
    Delta.from_pretrained("runs/sst2").merge_into(model)

Layers, each importing only from those before it: `core` (errors, defaults, home, files, schema, devices),
`data` (checkpoints, models, calibration, tasks), `masks` (scoring, selection, the mask's data, registry),
`runtime` (the quantized sparse model, ZO optimizers), `hub` (transport, refs, the Hub mixin, `SensitivityMask`),
`methods` (one folder per training method, registered in one table: sparse, dense, lora), `training`
(finetune, evaluate, merge), `export` (PEFT, plots).

Names are imported on first use (PEP 562): `import szoq_hub`, `szoq --version` and `szoq --help`
load no torch; `from szoq_hub import finetune` loads what `finetune` needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .core.defaults import __version__

# name -> the module that defines it (relative to this package); the one list of the public API
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("SzoqError", "ModelError", "DependencyError", "CalibrationError", "ConfigError", "MaskError", "FingerprintMismatch",
                     "RegistryError", "HubError", "TaskError", "TrainingError", "Interrupted"), ".core.errors"),
    "use_predictable_malloc": ".core.memory",
    **dict.fromkeys(("remember", "scrub", "scrub_logging"), ".hub.scrub"),
    "set_progress_listener": ".core.progress",
    "describe_content_hash": ".core.content",
    **dict.fromkeys(("DEFAULT_MODEL", "DEFAULT_MASK", "DEFAULT_LR", "DENSE_LR", "LORA_LR", "default_lr"), ".core.defaults"),
    **dict.fromkeys(("resolve_model", "load_model"), ".data.models"),
    "MaskConfig": ".masks.artifact",
    "SensitivityMask": ".hub.sensitivity_mask",
    **dict.fromkeys(("diff_masks", "layer_order"), ".masks.diff"),
    "MaskBuildConfig": ".masks.build_plan",
    "build_mask": ".masks.build",
    "is_main_process": ".core.devices",
    "builtin_masks": ".masks.catalog",
    **dict.fromkeys(("Registry", "parse_ref"), ".masks.registry"),
    "collect_garbage": ".masks.cleanup",
    **dict.fromkeys(("SparseModel", "load_sparse_model"), ".runtime.sparse"),
    "Delta": ".methods.sparse.delta",
    **dict.fromkeys(("PushResult", "PullResult", "check_repo_id"), ".hub.transport"),
    **dict.fromkeys(("push_mask", "pull_mask", "mask_info", "search_masks"), ".hub.masks"),
    **dict.fromkeys(("push_delta", "pull_delta", "resolve_delta_ref"), ".methods.sharing"),
    "resolve_mask_ref": ".hub.refs",
    **dict.fromkeys(("register_method", "unregister_method", "get_method", "method_names"), ".methods.registry"),
    "ZOConfig": ".runtime.zo_config",
    **dict.fromkeys(("FinetuneConfig", "FinetuneResult", "EvalConfig", "MergeConfig"), ".training.config"),
    "finetune": ".training.finetune",
    "lr_of_mask": ".training.lr_scores",
    "model_and_mask_for": ".methods.sparse.setup",
    **dict.fromkeys(("EvalResult", "evaluate"), ".training.evaluate"),
    "merge": ".training.merge",
    "PeftExportConfig": ".export.config",
    **dict.fromkeys(("export_peft", "push_peft"), ".export.peft"),
    **dict.fromkeys(("plot_mask", "plot_runs"), ".export.plots"),
    "as_user_error": ".api",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # what IDEs and type checkers read; at run time __getattr__ imports on first use
    from .api import as_user_error
    from .core.errors import (CalibrationError, ConfigError, DependencyError, FingerprintMismatch, HubError, Interrupted, MaskError,
                              ModelError, RegistryError, SzoqError, TaskError, TrainingError)
    from .core.memory import use_predictable_malloc
    from .hub.scrub import remember, scrub, scrub_logging
    from .core.progress import set_progress_listener
    from .core.content import describe_content_hash
    from .core.defaults import DEFAULT_LR, DEFAULT_MASK, DEFAULT_MODEL, DENSE_LR, LORA_LR, default_lr
    from .training.lr_scores import lr_of_mask
    from .export.config import PeftExportConfig
    from .export.peft import export_peft, push_peft
    from .export.plots import plot_mask, plot_runs
    from .methods.registry import get_method, method_names, register_method, unregister_method
    from .methods.sharing import pull_delta, push_delta, resolve_delta_ref
    from .hub.masks import mask_info, pull_mask, push_mask, search_masks
    from .hub.refs import resolve_mask_ref
    from .hub.transport import PullResult, PushResult, check_repo_id
    from .masks.artifact import MaskConfig
    from .hub.sensitivity_mask import SensitivityMask
    from .masks.diff import diff_masks, layer_order
    from .core.devices import is_main_process
    from .data.models import load_model, resolve_model
    from .masks.build import build_mask
    from .masks.build_plan import MaskBuildConfig
    from .masks.catalog import builtin_masks
    from .masks.cleanup import collect_garbage
    from .masks.registry import Registry, parse_ref
    from .methods.sparse.delta import Delta
    from .runtime.sparse import SparseModel, load_sparse_model
    from .training.evaluate import EvalResult, evaluate
    from .runtime.zo_config import ZOConfig
    from .training.config import EvalConfig, FinetuneConfig, FinetuneResult, MergeConfig
    from .training.finetune import finetune
    from .methods.sparse.setup import model_and_mask_for
    from .training.merge import merge


def __getattr__(name: str):
    """Import a public name on first use and keep it (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
