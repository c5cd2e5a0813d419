"""szoq: zeroth-order fine-tuning of quantized LLMs with transferable static sparsity masks.

The public Python API (the CLI is a thin layer over exactly these calls; see README "Python API"):

    from szoq_hub import Delta, FinetuneConfig, SensitivityMask, finetune, load_sparse_model

    mask = SensitivityMask.from_pretrained("smollm2-135m-instruct")   # any REF the CLI takes
    mask.save_pretrained("my-mask"); mask.push_to_hub("my-team/my-mask", tag="v1")
    sparse = load_sparse_model("smollm2-135m-instruct", mask, quant="nf4")
    result = finetune(FinetuneConfig(task="sst2", out="runs/sst2"))
    Delta.from_pretrained("runs/sst2").merge_into(model)

Layers, each importing only from those before it: `core` (errors, paths, schema, devices),
`data` (checkpoints, models, calibration, tasks), `masks` (scoring, selection, the artifact, registry),
`runtime` (the quantized sparse model, dense trainable, ZO optimizers, delta), `hub` (transport, refs),
`training` (finetune, evaluate, merge), `export` (PEFT, plots).
"""

from .core.version import __version__

# Importing the API also sets the Hub methods on SensitivityMask and Delta (szoq_hub/api.py).
from .api import (  # noqa: E402
    Delta,
    FinetuneConfig,
    FinetuneResult,
    MaskBuildConfig,
    MaskConfig,
    SensitivityMask,
    SparseModel,
    SzoqError,
    ZOConfig,
    build_mask,
    finetune,
    load_sparse_model,
)
from .export.peft import export_peft  # noqa: E402
from .export.plots import plot_mask, plot_runs  # noqa: E402

__all__ = ["__version__", "SensitivityMask", "MaskConfig", "MaskBuildConfig", "build_mask", "load_sparse_model", "SparseModel",
           "FinetuneConfig", "FinetuneResult", "ZOConfig", "finetune", "Delta", "SzoqError", "export_peft", "plot_runs", "plot_mask"]
