"""Export a fine-tuned delta as a PEFT SHiRA adapter (`pip install 'szoq[peft]'`).

PEFT's SHiRA adapter is a sparse additive update: per adapted linear, a flat trainable vector
`shira_weight` [K] and fixed `shira_indices` [2, K] (row, col), applied as W + sparse(indices,
weight). A szoq delta instead holds the fine-tuned *values* of the masked weights, so the
exported update is `values - W[mask]`, taken from the same full-precision weights `szoq merge`
writes into; `PeftModel.from_pretrained(base, DIR)` then computes the merged model's logits
(up to fp32 rounding of W + (v - W)).

SHiRA fixes K = r * (in + out) for every adapted layer, with one `r` for the whole adapter,
while a mask has its own nnz per matrix. The export picks the smallest r that holds every
layer's nnz and pads each layer with zero-update entries at positions outside the mask (the
first flat indices not selected): they add exactly 0. A per-matrix 0.1% mask on SmolLM2
(nnz 110-884 per matrix) needs r = 1, i.e. 768-2112 entries per matrix.

Only layers the mask touches are adapted (`target_modules` lists them by full name). The
safetensors header also carries szoq's link to the delta (mask sha256, base fingerprint).

A ZO-LoRA run (`finetune --lora R`) exports as what it is, a native PEFT LoRA adapter: its
`{module}.lora_A/B.weight` tensors under PEFT's `base_model.model.` prefix, with r, lora_alpha
and the adapted modules (by full name) in a `LoraConfig`; PEFT's update (alpha / r) B A is szoq's.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..core.errors import ConfigError, DependencyError, TrainingError
from ..core.files import atomic_dir, disk_errors
from .config import PeftExportConfig

ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
CARD_FILE = "README.md"
PEFT_FILES = (ADAPTER_FILE, ADAPTER_CONFIG_FILE)
PEFT_HINT = "pip install 'szoq[peft]'"
PEFT_TAGS = ["szoq", "peft", "shira", "sparse-delta", "zeroth-order"]


@dataclass
class PeftExport:
    """What `export_peft` wrote."""

    out: Path
    r: int
    layers: int
    nnz: int
    entries: int
    base_model: str
    peft_type: str = "SHIRA"  # LORA for a --lora run

    @property
    def padding(self) -> int:
        """Zero-update entries added so that every layer holds r * (in + out)."""
        return self.entries - self.nnz

    def to_dict(self) -> dict:
        return asdict(self) | {"out": str(self.out), "padding": self.padding}


def _require_peft():
    try:
        import peft
    except ImportError:
        raise DependencyError("exporting a PEFT adapter needs the `peft` package", hint=PEFT_HINT) from None
    if not hasattr(peft, "ShiraConfig"):
        raise DependencyError(f"peft {peft.__version__} has no SHiRA adapter", hint="pip install -U 'szoq[peft]'  (peft >= 0.21)")
    return peft


def shira_rank(shapes: dict[str, tuple[int, int]], nnz: dict[str, int]) -> int:
    """The smallest SHiRA r with r * (out + in) >= nnz for every layer.

    Args:
        shapes: name -> (out, in) of each adapted linear weight.
        nnz: name -> selected weights in it.

    Raises:
        ConfigError: some layer cannot hold r * (out + in) entries (a mask far denser than SHiRA allows).
    """
    r = max([1, *(math.ceil(nnz[n] / (o + i)) for n, (o, i) in shapes.items())])
    for name, (o, i) in shapes.items():
        if r * (o + i) > o * i:
            raise ConfigError(f"SHiRA cannot express this mask: r={r} needs {r * (o + i)} entries in {name}, which has {o * i} weights",
                              hint="export a sparser mask's delta (SHiRA holds r * (in + out) entries per layer, one r for all)")
    return r


def shira_entries(flat_idx: torch.Tensor, update: torch.Tensor, shape: tuple[int, int], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's SHiRA tensors: the mask's entries, then zero-update padding up to k.

    Args:
        flat_idx: sorted flat indices (row * in + col) of the masked weights, [nnz].
        update: values - base at those positions, fp32 [nnz].
        shape: (out, in) of the weight.
        k: entries the layer must hold (r * (out + in)), >= nnz.

    Returns:
        (indices int32 [2, k] as (row, col), weight fp32 [k]).
    """
    flat_idx = flat_idx.long()
    n_pad = k - flat_idx.numel()
    candidates = torch.arange(k, dtype=torch.long)  # [k]: at most nnz of them are in the mask
    pad = candidates[~torch.isin(candidates, flat_idx)][:n_pad]  # [n_pad]
    flat = torch.cat([flat_idx, pad])  # [k]
    cols = shape[1]
    indices = torch.stack([flat // cols, flat % cols]).to(torch.int32)  # [2, k]
    weight = torch.cat([update.to(torch.float32), torch.zeros(n_pad, dtype=torch.float32)])  # [k]
    return indices, weight


def _card(result: PeftExport, source_ref: str, base_model: str | None) -> str:
    from huggingface_hub import ModelCardData

    data = ModelCardData(library_name="peft", base_model=base_model, tags=PEFT_TAGS)
    return "\n".join([
        "---", data.to_yaml(), "---", "",
        f"# SHiRA adapter for {result.base_model} (exported from a szoq delta)", "",
        "A sparse update fine-tuned with zeroth-order SPSA on a quantized base (SensZOQ) and exported by `szoq export peft`.", "",
        "| fact | value |", "|---|---|",
        f"| adapted layers | {result.layers} |", f"| fine-tuned weights (nnz) | {result.nnz:,} |",
        f"| SHiRA r | {result.r} (entries {result.entries:,}; {result.padding:,} zero-update padding) |",
        f"| exported from | `{source_ref}` |", "",
        "## Use", "", "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM",
        f'base = AutoModelForCausalLM.from_pretrained("{result.base_model}", dtype="float32")',
        'model = PeftModel.from_pretrained(base, "THIS_REPO_OR_FOLDER")',
        "```", "",
    ])


def export_peft(config: PeftExportConfig | None = None, /, **settings) -> PeftExport:
    """Write a PEFT SHiRA adapter folder holding a fine-tuned delta as a sparse update (a LoRA
    run's folder: a PEFT LoRA adapter, see the module doc).

    Args:
        config: The settings (`PeftExportConfig`): `delta`, a run folder or delta file (local;
            resolve Hub refs first); `out`, the output folder (must not exist or be empty:
            `adapter_config.json`, `adapter_model.safetensors`, `README.md`); `model` and
            `mask_ref`, the base model and mask the delta was trained with (None: the ones the
            delta records, as for `merge` and `eval`; a LoRA run takes no mask); `revision`.
        **settings: Or the same settings as keywords, e.g. `export_peft(delta="runs/sst2", out="sst2-shira")`.

    Returns:
        What was written (r, layers, nnz, padded entries).

    Raises:
        DependencyError: peft is missing. TrainingError: `out` not empty.
        ConfigError: a mask SHiRA cannot express.
        FingerprintMismatch, MaskError: the delta does not fit the model/mask, or is corrupt.
    """
    peft = _require_peft()
    from safetensors.torch import save_file

    from ..runtime.delta import load_delta
    from ..training.setup import model_and_mask_for, open_model_and_mask
    from ..masks.card import card_base_model
    from ..data.models import load_model
    from ..runtime.lora_file import is_lora_file

    cfg = config if config is not None else PeftExportConfig(**settings)
    delta, model, mask_ref, revision = cfg.delta, cfg.model, cfg.mask_ref, cfg.revision
    out = Path(cfg.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TrainingError(f"--out {out} already exists and is not empty", hint="choose another --out folder or remove it")
    if is_lora_file(delta):
        return _export_lora(peft, model=model, mask_ref=mask_ref, delta=delta, out=out, revision=revision)
    load_delta(delta)  # a dense, unfinished or corrupt run is refused before the model loads (a GGUF converts for seconds)
    model, mask_ref = model_and_mask_for(delta, model, mask_ref)  # the delta's own, like merge and eval
    source, fingerprint, mask, mask_sha = open_model_and_mask(model, mask_ref, revision)
    loaded_delta = load_delta(delta, mask=mask, mask_sha256=mask_sha, fingerprint=fingerprint)
    params = dict(load_model(source, dtype=torch.float32).model.named_parameters())  # the weights merge writes into
    names = [n for n, idx in mask.indices.items() if idx.numel()]
    shapes = {n: tuple(params[n].shape) for n in names}
    for name, shape in shapes.items():
        if len(shape) != 2:
            raise ConfigError(f"{name} is not a linear weight {list(shape)}", hint="SHiRA adapts linear layers only")
    r = shira_rank(shapes, {n: int(mask.indices[n].numel()) for n in names})
    tensors: dict[str, torch.Tensor] = {}
    for name in names:
        idx = mask.indices[name].long()
        update = loaded_delta.tensors[name] - params[name].detach().reshape(-1)[idx]  # [nnz]: values - base
        o, i = shapes[name]
        indices, weight = shira_entries(idx, update, (o, i), r * (o + i))
        module = name.removesuffix(".weight")
        tensors[f"base_model.model.{module}.shira_indices"] = indices
        tensors[f"base_model.model.{module}.shira_weight"] = weight
    # The base as szoq names it (a Hub id, or a local folder's name: never an absolute path);
    # the exact weights are pinned by szoq_fingerprint in the safetensors header.
    base_name = source.base_model
    config = peft.ShiraConfig(r=r, target_modules=[n.removesuffix(".weight") for n in names], random_seed=0, inference_mode=True,
                              base_model_name_or_path=base_name, revision=source.revision if source.kind == "hub" else None)
    result = PeftExport(out, r, len(names), mask.nnz, sum(int(t.numel()) for k, t in tensors.items() if k.endswith("shira_weight")), base_name)
    meta = {"format": "pt", "szoq_format": "szoq.delta.shira", "szoq_mask_sha256": mask_sha, "szoq_fingerprint": fingerprint,
            "szoq_base_model": source.base_model, "szoq_nnz": str(mask.nnz)}
    with disk_errors(out), atomic_dir(out) as tmp:
        config.save_pretrained(str(tmp))
        save_file(tensors, str(tmp / ADAPTER_FILE), metadata=meta)
        (tmp / CARD_FILE).write_text(_card(result, Path(delta).name, card_base_model(source.base_model)))
    return result


def _lora_card(result: PeftExport, alpha: float, source_ref: str, base_model: str | None) -> str:
    from huggingface_hub import ModelCardData

    data = ModelCardData(library_name="peft", base_model=base_model, tags=["szoq", "peft", "lora", "zeroth-order"])
    use = _card(result, source_ref, base_model).split("## Use", 1)[1]  # the same PeftModel snippet
    return "\n".join([
        "---", data.to_yaml(), "---", "",
        f"# LoRA adapter for {result.base_model} (a szoq ZO-LoRA run)", "",
        f"Rank-{result.r} LoRA (alpha {alpha:g}) fine-tuned with zeroth-order SPSA on a quantized base (ZO-LoRA), exported by `szoq export peft`.", "",
        "| fact | value |", "|---|---|",
        f"| adapted layers | {result.layers} |", f"| adapter values | {result.nnz:,} |", f"| exported from | `{source_ref}` |", "",
    ]) + "## Use" + use


def _export_lora(peft, *, model: str | None, mask_ref: str | None, delta: str | Path, out: Path, revision: str | None) -> PeftExport:
    """A `finetune --lora` run as a native PEFT LoRA adapter folder (see the module doc)."""
    from safetensors.torch import save_file

    from ..data.models import DEFAULT_MODEL, model_fingerprint, parameter_layout, resolve_model
    from ..masks.card import card_base_model
    from ..runtime.lora_file import LORA_FORMAT, load_lora

    if mask_ref is not None:
        raise ConfigError(f"--mask does not apply to {delta}: a LoRA run's adapters sit on the base model, no mask",
                          hint="drop --mask to export a --lora run")
    adapter = load_lora(delta)
    source = resolve_model(model or adapter.model_ref or DEFAULT_MODEL, revision=revision)
    adapter.check_fingerprint(model_fingerprint(source))  # needs the config only, no weights
    shapes = {name: tuple(shape) for name, shape, _ in parameter_layout(source)}
    for name, update in adapter.weight_deltas().items():
        if shapes.get(name) != tuple(update.shape):
            raise ConfigError(f"the model has no weight {name} of shape {list(update.shape)}", hint="export against the base the LoRA run was trained on")
    modules, s = adapter.modules, adapter.settings
    tensors = {f"base_model.model.{k}": t.contiguous() for k, t in adapter.tensors.items()}
    config = peft.LoraConfig(r=s.rank, lora_alpha=s.alpha, target_modules=modules, lora_dropout=0.0, bias="none", inference_mode=True,
                             base_model_name_or_path=source.base_model, revision=source.revision if source.kind == "hub" else None)
    nnz = sum(int(t.numel()) for t in adapter.tensors.values())
    result = PeftExport(out, s.rank, len(modules), nnz, nnz, source.base_model, peft_type="LORA")
    meta = {"format": "pt", "szoq_format": f"{LORA_FORMAT}.peft", "szoq_fingerprint": adapter.fingerprint, "szoq_base_model": source.base_model}
    card = _lora_card(result, s.alpha, Path(delta).name, card_base_model(source.base_model))
    with atomic_dir(out) as tmp:
        config.save_pretrained(str(tmp))
        save_file(tensors, str(tmp / ADAPTER_FILE), metadata=meta)
        (tmp / CARD_FILE).write_text(card)
    return result


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
    shira = config.get("peft_type") == "SHIRA" and meta.get("szoq_format") == "szoq.delta.shira"
    lora = config.get("peft_type") == "LORA" and meta.get("szoq_format") == "szoq.lora.peft"
    n_weights = sum(1 for k in keys if k.endswith(".shira_weight" if shira else ".lora_A.weight"))
    if not (shira or lora) or n_weights != len(config.get("target_modules") or []):
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
