"""Training methods, one folder each, registered once in one table (the way PEFT registers its tuners).

A method is a unit: `methods/NAME/` holds its settings (`config.py`, a `MethodConfig`), its
runtime, its `Trainable` (what `finetune`'s loop trains, `trainable.py`) and its result artifact
(`result.py`, a `MethodResult`: load for `eval`, `merge`, `export peft`, Hub push). `finetune`,
`eval`, `merge`, `export peft`, `delta push/pull` and the CLI look a method up here and call it;
nothing outside a method's folder asks which method it is.

    register_method(name="sparse", config_cls=SparseConfig, trainable_cls=SparseTrainable, result_cls=SparseResult)

Adding a method is one new folder and one `register_method` line (below for a built-in method, or
in the code that defines it; tests/test_methods.py registers a fourth from the test file). The
shared parts a method builds on: `spec.MethodConfig`, `trainable.VectorTrainable` (a flat fp32
vector under a ZO optimizer) and `result.MethodResult`. The table itself is `registry.py`.
`trainable_cls` and `result_cls` may be given as `"module:Class"` (relative to this package),
imported on first use: the settings are read by `szoq --help`, which loads no torch.

The run folder's `finetune_config.json` and a delta's header record the method by name
(`settings["method"]`); a run written by 0.1.0 recorded `dense` / `lora` instead, which
`method_of_settings` reads as the method those options select.
"""

from __future__ import annotations

from .curvature.config import CURVATURE_METHOD, CurvatureConfig
from .dense.config import DenseConfig
from .lora.config import LoRAConfig
from .registry import (BUILTIN_METHODS, DEFAULT_METHOD, Method, get_method, method_names, method_of_result, method_of_settings, methods,
                       register_method, unregister_method)
from .sparse.config import SparseConfig

__all__ = ["BUILTIN_METHODS", "DEFAULT_METHOD", "Method", "get_method", "method_names", "method_of_result", "method_of_settings", "methods",
           "register_method", "unregister_method"]

# The built-in methods: one line each.
register_method(name="sparse", config_cls=SparseConfig, trainable_cls=".sparse.trainable:SparseTrainable", result_cls=".sparse.result:SparseResult")
# Curvature-aware SensZOQ trains and writes what SensZOQ does: only its optimizer settings differ.
register_method(name=CURVATURE_METHOD, config_cls=CurvatureConfig, trainable_cls=".sparse.trainable:SparseTrainable",
                result_cls=".sparse.result:SparseResult")
register_method(name="dense", config_cls=DenseConfig, trainable_cls=".dense.trainable:DenseTrainable", result_cls=".dense.result:DenseResult")
register_method(name="lora", config_cls=LoRAConfig, trainable_cls=".lora.trainable:LoRATrainable", result_cls=".lora.result:LoRAResult")
