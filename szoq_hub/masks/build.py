"""`build_mask`: model + calibration windows -> scores -> selection -> artifact folder.

Memory (see README "Building masks for large models"): the model is streamed from its
safetensors files into the scoring dtype (the checkpoint's own by default; `--score-quant nf4`
quantizes each decoder linear as it is read), scores are turned into a selection tensor by
tensor (`selection.StreamingSelector`), and `--max-memory` splits the fisher build into passes
over groups of target tensors (`build_plan`); a GGUF model on the CPU loads its decoder linears as
the file's bytes and materialises them all when the plan holds them, else only those each pass
needs (`sensitivity.CompactLinear`, same scores). Magnitude and random builds load no model.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from .build_plan import BuildPlan, MaskBuildConfig, format_size, layer_of, parse_size, plan_build, resident_bytes
from ..data.calibration import load_windows
from ..data.checkpoint import KeyMapper, checkpoint_files, iter_tensors, read_header
from ..core.devices import DTYPES as SHARED_DTYPES, import_bitsandbytes, init_distributed, is_main_process, resolve_device, world
from ..core.errors import ConfigError, DependencyError, MaskError, ModelError
from ..core.home import ensure_writable_dir, scratch_dir
from ..core.public import public_word
from .artifact import MaskConfig, MaskData, mask_stats, save_mask
from ..data.footprint import load_config
from ..data.models import ModelSource, model_fingerprint, resolve_model, source_dtype, source_tensors, target_parameter_names
from .registry import Registry, check_name, check_version, name_from
from .selection import StreamingSelector
from .sensitivity import (CompactLinear, Frozen4bitLinear, ProgressFn, checkpointed_layers, compact_linears, decoder_layers,
                          fisher_scores, shard_windows, stream_magnitude_scores, stream_random_scores)

log = logging.getLogger(__name__)

# `build_plan.SCORING_DTYPES` as torch dtypes (`auto` = the checkpoint's own: mask build scores in it)
DTYPES = {"auto": None, **SHARED_DTYPES, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_timestamp() -> str:
    """UTC build time; honours SOURCE_DATE_EPOCH so that rebuilds can be byte-identical."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = datetime.fromtimestamp(int(epoch), timezone.utc) if epoch else datetime.now(timezone.utc)
    return when.isoformat(timespec="seconds")


# ---- the checkpoint, read tensor by tensor -------------------------------------------------

def _iter_named(source: ModelSource, model: nn.Module, names: set[str]):
    """(model name, tensor) of just `names`, one at a time; shards holding none are not read."""
    to_name = KeyMapper(model)
    if source.gguf is not None:  # GGUF: one file, every tensor yields under its model name
        for name, tensor in source_tensors(source, model):
            if name in names:
                yield name, tensor
            del tensor
        return
    for path in checkpoint_files(Path(source.path)):
        if any(to_name(key) in names for key in read_header(path)):
            for key, tensor in iter_tensors([path]):
                name = to_name(key)
                if name in names:
                    yield name, tensor
                del tensor


def load_scoring_model(source: ModelSource, *, dtype: torch.dtype, quant: str = "none", device: torch.device | None = None,
                       compact: bool = False) -> nn.Module:
    """The causal LM for scoring, streamed from safetensors straight into `dtype` on `device`.

    Only one full-precision tensor is in flight at a time; with `quant="nf4"` every decoder
    linear becomes a `Frozen4bitLinear` as its weight is read. With `compact` (GGUF on the CPU,
    no `quant`), every decoder linear becomes a `CompactLinear` holding its file bytes: the build
    plan then materialises them all, or only those each pass needs (`plan_build`).

    Raises:
        DependencyError: `nf4` without bitsandbytes.
        ModelError: the checkpoint does not match its config, or (CPU) the machine lacks the memory.
    """
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    from ..data.models import set_module_tensor

    if quant == "nf4":
        try:
            import_bitsandbytes()  # no Hub kernel lookup, no trust_remote_code warning
        except ImportError:
            raise DependencyError("--score-quant nf4 needs bitsandbytes", hint="pip install 'bitsandbytes>=0.48'") from None
    device = device or torch.device("cpu")
    compact = compact and source.gguf is not None and device.type == "cpu" and quant == "none"
    config = load_config(source)
    with init_empty_weights(include_buffers=False):  # parameters on meta, buffers (rotary) real
        lm = AutoModelForCausalLM.from_config(config, dtype=dtype)
    lm.eval()
    out_emb = lm.get_output_embeddings()
    linears = {f"{n}.weight" for n, m in lm.named_modules() if type(m) is nn.Linear and m is not out_emb} if quant == "nf4" or compact else set()
    gfile = None
    if source.gguf is not None:
        from ..data.models import gguf_model_file

        gfile = gguf_model_file(source)
    by_model = {hf: g for g, hf in gfile.hf_names(lm).items()} if compact else {}
    if compact:
        linears = {n for n in linears if n in by_model}  # one the file lacks is reported missing below
    if device.type == "cpu":  # before any weight is read: a model that cannot fit says so instead of meeting the OOM killer
        from ..data.footprint import check_fits, model_bytes

        name = str(dtype).removeprefix("torch.")
        need = model_bytes(source, quant="nf4" if quant == "nf4" else "none", dtype=dtype)
        if compact:  # decoder linears as their file bytes
            params = dict(lm.named_parameters())
            need -= sum(params[n].numel() * params[n].element_size() - gfile.tensors[by_model[n]].n_bytes for n in linears)
        check_fits(need, what=f"{source.ref} scored in {name}",
                   hint="score in a smaller dtype (--dtype bf16), or run the build on a machine with more memory")
    if gfile is not None and device.type == "cpu":  # the frozen input embedding stays in the file (see runtime/sparse.py)
        gfile.mapped_embedding(lm, gfile.hf_names(lm), dtype)
    to_name = KeyMapper(lm)  # before any module is replaced
    loaded: set[str] = set()
    if compact:  # the decoder linears' file bytes in one buffer; the rest streamed as below
        names = gfile.hf_names(lm)
        raws = gfile.read_raw([by_model[n] for n in linears])
        for key in linears:
            prefix, g = key[: -len(".weight")], by_model[key]
            parent, _, leaf = prefix.rpartition(".")
            layer = CompactLinear(raws.pop(g), gfile.tensors[g], dtype, gfile.fixup(g), lm.get_submodule(prefix).bias, gfile.path.name)
            setattr(lm.get_submodule(parent), leaf, layer)
        loaded |= linears
        tensors = gfile.iter_tensors(names, cast=lambda name: dtype, skip=frozenset(linears))
    else:  # GGUF: nf4 input stays fp32, as from a safetensors copy
        tensors = source_tensors(source, lm, cast=lambda name: None if name in linears else dtype)
    for ckpt_key, tensor in tensors:
        key = to_name(ckpt_key)
        if key is None:
            log.warning("checkpoint tensor %s has no place in the model; ignored", ckpt_key)
        elif key in linears:
            prefix = key[: -len(".weight")]
            parent, _, leaf = prefix.rpartition(".")
            old = lm.get_submodule(prefix)
            if tuple(old.weight.shape) != tuple(tensor.shape):
                raise ModelError(f"checkpoint tensor {key} has shape {list(tensor.shape)}, the model expects {list(old.weight.shape)}", hint="the config and weights do not match")
            setattr(lm.get_submodule(parent), leaf, Frozen4bitLinear(tensor.to(device), old.bias, dtype))
            loaded.add(key)
        elif set_module_tensor(lm, key, tensor, dtype, device):
            loaded.add(key)
        else:
            log.warning("checkpoint tensor %s has no place in the model; ignored", key)
        del tensor
    if out_emb is not None and (getattr(config, "tie_word_embeddings", False) or out_emb.weight.device.type == "meta"):
        out_emb.weight = lm.get_input_embeddings().weight  # tied, as transformers ties them
    missing = [n for n, p in lm.named_parameters() if p.device.type == "meta"] + sorted(linears - loaded)
    if missing:
        raise ModelError(f"the checkpoint lacks {len(missing)} tensor(s) the model needs (e.g. {missing[0]})",
                         hint="the weight files are incomplete or do not match config.json")
    for p in lm.parameters():
        p.requires_grad_(False)
    return lm.to(device)  # buffers built on the CPU follow the weights


def _meta_model(source: ModelSource) -> nn.Module:
    """The model on the meta device: names and shapes from the config alone, no weights."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(load_config(source), dtype=torch.float32)


# ---- the build ---------------------------------------------------------------------------

# Options that say how the build ran, not what it computes: left out of the recipe, so a mask's
# bytes do not depend on the device, the sharding or where the result is written.
_RUN_OPTIONS = ("device", "fsdp")


def build_recipe(config: MaskBuildConfig) -> str:
    """The `szoq mask build` command line that rebuilds this mask, safe to publish.

    The model, then (fisher only) `--calibration`, `--samples` and `--seq-len`, then every other
    option that differs from its default, in `MaskBuildConfig` order; a local path becomes its
    file or folder name (the recipe is shared with the mask).
    """
    words = [public_word(config.model)]
    defaults = MaskBuildConfig.__dataclass_fields__
    for name, f in defaults.items():
        value = getattr(config, name)
        fisher_input = name in ("calibration", "samples", "seq_len")
        if name == "model" or name in _RUN_OPTIONS or (fisher_input and config.scorer != "fisher"):
            continue
        if not fisher_input and value == f.default:
            continue
        words += [f"--{name.replace('_', '-')}", public_word(str(value))]
    return "szoq mask build " + " ".join(shlex.quote(w) for w in words)


def default_mask_name(config: MaskBuildConfig) -> str:
    """The registry name of a build without a name: the model's name, `-SCORER` unless fisher."""
    model = Path(config.model).name
    base = name_from(model[:-5] if model.lower().endswith(".gguf") else model)
    return base if config.scorer == "fisher" else f"{base}-{config.scorer}"


def build_mask(config: MaskBuildConfig, out: Path | None = None, *, register: bool = False, name: str | None = None,
               version: str | None = None, progress: ProgressFn | None = None, command: str | None = None,
               plan_out: dict | None = None) -> tuple[MaskData, Path | None]:
    """Compute a sensitivity mask, write its artifact folder and (optionally) register it.

    Under torchrun (WORLD_SIZE > 1) every rank scores its shard of the windows and the scores
    are all-reduced; with `fsdp`, every rank scores every window on its shard of the weights
    instead. Only rank 0 writes and registers.

    Args:
        config: Build options.
        out: Folder to write the artifact to (must not exist or be empty); None = no folder of
            its own (with `register`, the registry entry is the only copy).
        register: Add the mask to the local registry (`szoq mask build` does): as `name`
            (default `default_mask_name(config)`) at `version` (default the next `vN`).
        name: Registry name (only with `register`).
        version: Registry version (only with `register`).
        progress: Optional progress callback (windows done, total, tokens); magnitude and random
            scores report tensors done, total, 0.
        command: The recipe to record; default `build_recipe(config)`.
        plan_out: If given, filled with the memory plan's figures (passes, budget, ...).

    Returns:
        (mask, folder or None on non-zero ranks / when neither `out` nor `register`). With
        `register`, the folder is the registry entry's and `mask.ref` is its `NAME@VERSION`.

    Raises:
        ConfigError: bad options, or a --max-memory the model cannot fit in.
        RegistryError: a bad name or version, or an unwritable registry (before any scoring).
        MaskError: `out` exists and is not empty (before any scoring).
        ModelError, CalibrationError, DependencyError: as the model and data loaders raise.
    """
    if register and is_main_process():  # refuse a bad name or an unwritable home before the long part
        check_name(name or default_mask_name(config))
        if version is not None:
            check_version(version)
        ensure_writable_dir(Registry().root, "SZOQ_HOME registry folder")
    if out is not None and Path(out).exists() and (not Path(out).is_dir() or any(Path(out).iterdir())):
        raise MaskError(f"{out} already exists and is not empty", hint="choose another --out folder or remove it")
    if not register:
        return _build(config, out, progress=progress, command=command, plan_out=plan_out)
    with scratch_dir("szoq-build") as tmp:  # a killed build leaves it to `szoq gc`
        mask, folder = _build(config, tmp / "mask", progress=progress, command=command, plan_out=plan_out)
        if folder is None:  # not rank 0
            return mask, None
        # `out` is written before the index names the mask: a failed copy registers nothing
        entry = Registry().add(folder, name or default_mask_name(config), version, source={"built_with": asdict(config)},
                               before_commit=None if out is None else lambda _: save_mask(mask, Path(out)))
    mask.ref, mask.path = entry.ref, entry.path
    return mask, entry.path


def _build(config: MaskBuildConfig, out: Path | None, *, progress: ProgressFn | None, command: str | None,
           plan_out: dict | None) -> tuple[MaskData, Path | None]:
    """Score, select and (rank 0, `out` given) write the artifact folder."""
    device = resolve_device(config.device)
    if config.fsdp:
        from .fsdp_scoring import init_fsdp

        device = init_fsdp(device)
    else:
        init_distributed(device)
    source = resolve_model(config.model, revision=config.revision)
    fingerprint = model_fingerprint(source)
    meta = _meta_model(source)
    params = dict(meta.named_parameters())
    shapes = {n: list(params[n].shape) for n in target_parameter_names(meta, config.targets)}
    targets = list(shapes)
    numels = {n: int(torch.Size(s).numel()) for n, s in shapes.items()}
    selector = StreamingSelector(targets, numels, config.density, config.scope)
    dtype = DTYPES[config.dtype] or source_dtype(source)

    calibration = None
    if config.scorer == "fisher":
        calibration = _fisher_select(config, source, targets, numels, dtype, device, selector, progress, plan_out)
    else:
        if config.scorer == "magnitude":
            scores = stream_magnitude_scores(_iter_named(source, meta, set(targets)))
        else:
            scores = stream_random_scores(shapes, config.seed)
        seen = set()
        for name, s in scores:
            selector.add(name, s)
            seen.add(name)
            del s
            if progress:  # tensors done (no tokens): the bar counts tensors instead of staying at 0/?
                progress(len(seen), len(targets), 0)
        if len(seen) != len(targets):
            missing = next(n for n in targets if n not in seen)
            raise ModelError(f"the checkpoint has no tensor {missing}", hint="the weight files do not match config.json")
    indices, share, per_tensor = selector.result()
    stats = mask_stats(indices, shapes)
    stats["captured_share"] = round(share, 6)
    stats["captured_share_per_tensor"] = per_tensor
    if config.scorer == "fisher" and dtype != torch.float32:
        stats["score_dtype"] = str(dtype).removeprefix("torch.")
    if config.scorer == "fisher" and config.score_quant != "none":
        stats["score_quant"] = config.score_quant
    mask_config = MaskConfig(
        base_model=source.base_model,
        base_revision=source.revision,
        fingerprint=fingerprint,
        density=config.density,
        scope=config.scope,
        scorer=config.scorer,
        shapes=shapes,
        calibration=calibration,
        targets=config.targets,
        seed=config.seed,
        command=command if command is not None else build_recipe(config),
        created_at=build_timestamp(),
        stats=stats,
    )
    # fisher scores travel with the mask (a preconditioned ZO step reads them); magnitude and
    # random scores say nothing about curvature and are not kept.
    mask = MaskData(indices, mask_config, scores=selector.kept_scores if config.scorer == "fisher" else None)
    if out is None or not is_main_process():
        return mask, None
    return mask, save_mask(mask, out)


def _fisher_select(config: MaskBuildConfig, source: ModelSource, targets: list[str], numels: dict[str, int],
                   dtype: torch.dtype, device: torch.device, selector: StreamingSelector, progress: ProgressFn | None,
                   plan_out: dict | None) -> dict:
    """Score with fisher in planned passes and feed each finished tensor to the selector."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    windows, info = load_windows(config.calibration, tokenizer, samples=config.samples, seq_len=config.seq_len, seed=config.seed)
    # GGUF on the CPU: decoder linears load as their file bytes; the plan materialises them all when they fit
    model = load_scoring_model(source, dtype=dtype, quant=config.score_quant, device=device, compact=not config.fsdp)
    shard_numels = numels
    if config.fsdp:
        from .fsdp_scoring import shard_model

        shard_numels = shard_model(model, numels)
    budget, available = (parse_size(config.max_memory), None) if config.max_memory else _default_budget(config, device)
    try:
        plan = _plan(model, config, targets, shard_numels, budget, resident_bytes(device), windows.shape[1], dtype)
    except ConfigError as exc:
        if available is None:
            raise
        raise ConfigError(f"this build does not fit the memory available ({format_size(available)}; no --max-memory given): "
                          + exc.message.split("cannot hold this build: ", 1)[-1], hint=exc.hint) from None
    if not plan.compact:  # the whole model in `dtype`, as from any checkpoint
        _materialise_all(model, source)
    if plan_out is not None:
        plan_out.update(plan.to_dict())
        if available is not None:
            plan_out.update(budget_picked=True, available=available)
    log.info("fisher build in %d pass(es)%s", len(plan.groups), ", decoder linears compact outside their passes" if plan.compact else "")
    per_pass = windows.shape[0]
    rank, size = world()
    if not config.fsdp and size > 1:  # data-parallel: this rank's share
        per_pass = len(shard_windows(windows.shape[0], rank, size))
    total = per_pass * len(plan.groups)
    with checkpointed_layers(model) if plan.checkpointed else contextlib.nullcontext():
        _run_passes(model, config, plan, windows, selector, progress, per_pass, total)
    return info.to_dict()


def _materialise_all(model: nn.Module, source: ModelSource) -> None:
    """Every `CompactLinear` of the model materialised for good. The buffer of file bytes goes first
    (the plan counted the model without it), then each weight is read and dequantized on its own."""
    from ..data.models import gguf_model_file

    layers = compact_linears(model)
    for layer in layers.values():
        layer.raw = None
    gfile = gguf_model_file(source) if layers else None
    for layer in layers.values():
        layer.raw = gfile.read_raw([layer.info.name])[layer.info.name]
        layer.materialise(keep_raw=False)


AUTO_BUDGET_SHARE = 0.8  # of the memory available once the model is loaded: room for the OS and other programs


def _default_budget(config: MaskBuildConfig, device: torch.device) -> tuple[int | None, int | None]:
    """(budget, available) of a build without --max-memory: what the process holds now plus
    `AUTO_BUDGET_SHARE` of what the machine has available. Passes only group tensors
    differently, so the mask is the unbounded build's; (None, None) on an accelerator, under
    FSDP or when the available memory is unknown (one pass, as before)."""
    from ..data.footprint import available_bytes

    if device.type != "cpu" or config.fsdp:
        return None, None
    available = available_bytes()
    if available is None:
        return None, None
    return resident_bytes(device) + int(AUTO_BUDGET_SHARE * available), available


def _plan(model: nn.Module, config: MaskBuildConfig, targets: list[str], numels: dict[str, int], budget: int | None,
          resident: int, seq_len: int, dtype: torch.dtype) -> BuildPlan:
    """`build_plan.plan_build` for this model (see there).

    Raises:
        ConfigError: no plan fits the budget.
    """
    # In 4-bit mode the embedded sequence needs a gradient, so every layer keeps activations.
    first = (lambda name: 0) if config.score_quant != "none" else layer_of
    layers = compact_linears(model)
    elt = torch.finfo(dtype).bits // 8
    weights = {n: m.in_features * m.out_features * elt for n, m in layers.items()}
    # one dequantization: the weight in `dtype` and an fp32 slab with gguf-py's temporaries (the whole fp32 tensor with a fix-up)
    from ..data.gguf_file import SLAB_BYTES

    dequant = max((weights[n] + 3 * (4 * m.in_features * m.out_features if m.fixup else max(SLAB_BYTES, 4 * m.in_features))
                   for n, m in layers.items()), default=0)
    return plan_build(model.config, targets, numels, budget=budget, resident=resident, seq_len=seq_len, dtype=dtype,
                      first_layer=first, checkpointable=bool(decoder_layers(model)) and not config.fsdp,
                      compact=weights, held=sum(m.compact_bytes for m in layers.values()), dequant_bytes=dequant)


def _run_passes(model: nn.Module, config: MaskBuildConfig, plan: BuildPlan, windows: torch.Tensor, selector: StreamingSelector,
                progress: ProgressFn | None, per_pass: int, total: int) -> None:
    layers = compact_linears(model) if plan.compact else {}
    for p, group in enumerate(plan.groups):
        if plan.compact:  # this pass's weights materialised; last pass's others dropped first
            held = set(plan.materialised[p])
            for name, layer in layers.items():
                if name not in held:
                    layer.compact()
            for name in plan.materialised[p]:
                layers[name].materialise()
        if config.fsdp:
            from .fsdp_scoring import fsdp_fisher_select

            fsdp_fisher_select(model, group, windows, selector, progress=progress, progress_offset=p * per_pass, progress_total=total)
            continue
        acc = fisher_scores(model, group, windows, progress=progress, progress_offset=p * per_pass, progress_total=total)
        for name in group:  # select as the pass ends; free each accumulator at once
            selector.add(name, acc.pop(name))
