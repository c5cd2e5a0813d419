"""`--transfer`: how much of a task's own sensitivity (Σg² over its train text) the C4 mask holds.

For each task, fisher scores on 16 windows of the task's train text; the share of their mass that the built-in C4 mask
selects, beside the share of a mask selected from those same scores (the most any mask of that density can hold) and
of a random mask. This is the only part of the study that runs in this process instead of through the CLI: szoq's public
API builds masks but does not return the scores it ranked, so the scorer and the selection are szoq internals.
"""

from __future__ import annotations

import os
import time

from . import records, settings, szoq_process
from .run import calibration_file
from .settings import DENSITY


def transfer(task: str) -> dict:
    """Share of the task's Σg² that the C4 mask captures, beside the task mask's own share (and a random mask's)."""
    import torch

    from szoq_hub import SensitivityMask, builtin_masks
    from szoq_hub.data.calibration import load_windows  # internals: see the module docstring
    from szoq_hub.data.models import load_model, resolve_model, target_parameter_names
    from szoq_hub.masks.artifact import captured_share
    from szoq_hub.masks.selection import select
    from szoq_hub.masks.sensitivity import fisher_scores, stream_random_scores

    os.environ.update({k: v for k, v in szoq_process.child_env().items() if k.startswith("SZOQ_")})
    t0 = time.perf_counter()
    loaded = load_model(resolve_model(settings.MODEL), dtype=torch.float32)
    targets = target_parameter_names(loaded.model, None)
    windows, info = load_windows(str(calibration_file(task)), loaded.tokenizer, samples=16, seq_len=256, seed=0)
    scores = fisher_scores(loaded.model, targets, windows)
    c4 = SensitivityMask.from_pretrained(next(m for m in builtin_masks() if m.name == settings.MODEL).path)
    own = select(scores, DENSITY, "per-matrix")
    rand = select(dict(stream_random_scores({n: list(scores[n].shape) for n in targets}, 0)), DENSITY, "per-matrix")
    return {"task": task, "density": DENSITY, "windows": 16, "seq_len": 256, "c4_share": captured_share(scores, c4.indices),
            "task_share": captured_share(scores, own), "random_share": captured_share(scores, rand),
            "wall_s": round(time.perf_counter() - t0, 1), "git_sha": records.git_sha()}
