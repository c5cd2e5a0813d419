"""`szoq export peft`: a fine-tuned run as a PEFT adapter folder, and pushing that folder to the Hub.

The run's method (szoq_hub/methods/) writes the adapter: a sparse delta becomes a SHiRA adapter
(methods/sparse/peft.py: a sparse additive update equal to `szoq merge`), a ZO-LoRA run a native
PEFT LoRA adapter (methods/lora/result.py); a method without a PEFT form refuses. Here: the
dependency check, the output folder, the dispatch, and the checks before a push.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..core.errors import ConfigError, DependencyError, TrainingError
from ..methods import method_of_result, methods
from ..methods.peft import ADAPTER_CONFIG_FILE, ADAPTER_FILE, CARD_FILE, PEFT_FILES, PeftExport
from ..methods.sparse.peft import PEFT_TAGS
from .config import PeftExportConfig

PEFT_HINT = "pip install 'szoq[peft]'"


def require_peft():
    try:
        import peft
    except ImportError:
        raise DependencyError("exporting a PEFT adapter needs the `peft` package", hint=PEFT_HINT) from None
    if not hasattr(peft, "ShiraConfig"):
        raise DependencyError(f"peft {peft.__version__} has no SHiRA adapter", hint="pip install -U 'szoq[peft]'  (peft >= 0.21)")
    return peft


def export_peft(config: PeftExportConfig | None = None, /, **settings) -> PeftExport:
    """Write a PEFT adapter folder holding a fine-tuned run: a sparse delta as a SHiRA adapter, a
    LoRA run as a LoRA adapter (the run's method writes it).

    Args:
        config: The settings (`PeftExportConfig`): `delta`, the run folder or its final file (local;
            resolve Hub refs first); `out`, the output folder (must not exist or be empty:
            `adapter_config.json`, `adapter_model.safetensors`, `README.md`); `model`, the base
            model the run was trained on (default: the one the run records, as for `merge` and
            `eval`); `mask_ref`, the mask a sparse delta was trained with (default: the one it
            records); `revision`, the model's Hub revision.
        **settings: Or the same settings as keywords, e.g. `export_peft(delta="runs/sst2", out="sst2-shira")`.

    Returns:
        What was written (r, layers, nnz, padded entries).

    Raises:
        DependencyError: peft is missing. TrainingError: `out` not empty.
        ConfigError: a mask SHiRA cannot express, or options the run cannot take.
        FingerprintMismatch, MaskError: the run does not fit the model/mask, is corrupt, or its
            method has no PEFT form.
    """
    cfg = config if config is not None else PeftExportConfig(**settings)
    peft = require_peft()
    delta, out = cfg.delta, Path(cfg.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TrainingError(f"--out {out} already exists and is not empty", hint="choose another --out folder or remove it")
    method = method_of_result(delta)
    return method.result_cls.export_peft(peft, delta, out, model=cfg.model, mask_ref=cfg.mask_ref, revision=cfg.revision)


def verify_adapter(folder: Path) -> dict:
    """Check an exported adapter folder before it is published.

    Returns:
        Its adapter_config.json.

    Raises:
        ConfigError: files missing or unreadable, not a SHiRA or LoRA adapter written by szoq, or a
            local path as base model (pushing would publish it).
    """
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    try:
        config = json.loads((folder / ADAPTER_CONFIG_FILE).read_text())
        with safe_open(str(folder / ADAPTER_FILE), framework="pt") as fh:
            meta = fh.metadata() or {}
            keys = list(fh.keys())
    except (OSError, ValueError, SafetensorError) as exc:
        raise ConfigError(f"{folder} is not a complete adapter folder ({str(exc).splitlines()[0]})", hint="export it again with szoq export peft") from None
    kinds = [m.result_cls.peft_adapter for m in methods() if m.result_cls.peft_adapter]  # (peft_type, szoq_format, weight suffix)
    kind = next((k for k in kinds if config.get("peft_type") == k[0] and meta.get("szoq_format") == k[1]), None)
    n_weights = sum(1 for k in keys if kind and k.endswith(kind[2]))
    if kind is None or n_weights != len(config.get("target_modules") or []):
        raise ConfigError(f"{folder} is not a SHiRA or LoRA adapter written by szoq export peft", hint="export it again with szoq export peft")
    base = str(config.get("base_model_name_or_path") or "")
    if os.path.isabs(base) or base.startswith("~"):
        raise ConfigError(f"the adapter names the local path {base} as its base model; pushing would publish it",
                          hint="export it again with this szoq, which records only the model folder's name")
    return config


def _hub_card(folder: Path, config: dict, repo_id: str, tag: str | None) -> str:
    text = (folder / CARD_FILE).read_text() if (folder / CARD_FILE).is_file() else ""
    return text.replace("THIS_REPO_OR_FOLDER", repo_id) if text else f"---\nlibrary_name: peft\ntags: {PEFT_TAGS}\n---\n\n# SHiRA adapter\n"


def push_peft(folder: str | Path, *, repo_id: str, tag: str | None = None, private: bool = False, token: str | None = None,
              create_pr: bool = False, message: str | None = None):
    """Publish an exported adapter folder to a Hub model repo: one commit, then a tag (like deltas).

    `PeftModel.from_pretrained(base, repo_id, revision=tag)` then loads it from the Hub.

    Args:
        folder: The `export_peft` output folder.
        repo_id: `ORG/NAME` (created if missing).
        tag: Tag to create; default `v1`, or the next `vN`.
        private, token, create_pr, message: As for `szoq delta push`.

    Returns:
        `transport.PushResult`.

    Raises:
        ConfigError: not an adapter folder, or it names a local path. HubError: auth, race, tag taken.
    """
    from ..hub.transport import Artifact, check_repo_id, push_artifact

    check_repo_id(repo_id)
    art = Artifact("peft adapter", ADAPTER_FILE, PEFT_FILES, verify_adapter, _hub_card,
                   "a SHiRA adapter repo holds adapter_model.safetensors pushed by: szoq export peft --push ORG/NAME")
    return push_artifact(art, Path(folder).expanduser(), repo_id=repo_id, tag=tag, private=private, token=token, create_pr=create_pr,
                         message=message, ref=None)
