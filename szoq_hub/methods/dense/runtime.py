"""Dense MeZO: zeroth-order fine-tuning of every linear weight of an fp32 model (the baseline).

SensZOQ trains a sparse 0.1% of the weights on a quantized base; the baseline it should beat is
MeZO over all weights. `szoq finetune --dense` runs that baseline through the same loop
(training/finetune.py over a `DenseTrainable`, trainable.py: batches, seeds, step
log, dev evaluation, best-dev, checkpoints, --resume) and the same update rules (zo.py), over
the decoder's linear weights (`target_parameter_names`: attention and MLP projections;
embeddings, norms and lm_head stay frozen) of the model loaded in fp32, unquantized.

The perturbation, and why it differs from MeZO's in-place form: MeZO adds eps z to every
weight, runs a forward, subtracts 2 eps z, runs a forward, adds eps z back. In fp32,
w + eps z - 2 eps z + eps z is not w: every step leaves a rounding drift that no step log
records. Here the weights are never modified while the losses are computed: inside
`DenseModel.perturbed`, each target linear builds W +- eps z on the fly (z regenerated from the
seed, one layer at a time) for its row block of the paired batch (P = 2q copies of the step's
batch in one forward, as the sparse runtime does). Memory stays model + O(q * largest weight),
and a run is a pure function of its step log: replaying (seed, g, lr) from the base weights
gives the trained weights bit for bit, and --resume from a checkpoint is exact. Cost per step:
q z draws per layer in the forward plus q per weight for the update (MeZO in place: 4 q).

z of weight j at sample seed s is drawn from its own seed `tensor_seed(s, j)` (random access
in any order: the forward visits layers in model order, the update in any order), with
`zo.perturbation`, so the update uses exactly the z of the forward.

The update is the sparse path's optimizer (ZO-SGD, momentum or Adam, zo.py) applied to each
weight as a flat view, so the formulas are shared, not copied. Momentum keeps one fp32 copy of
the trained weights, Adam two (memory 2x / 3x the linear weights).

Files a dense run writes (trainable.py; its final file named in config.py):
`checkpoint.safetensors` (the trained weights by parameter name + `opt.J.K` optimizer state), `best-dev.safetensors` and the final
`dense.safetensors` (the trained weights, fp32, header linking the base model fingerprint), both
written tensor by tensor (`checkpoint.write_tensors`). The delta format (values over a mask)
does not apply: every weight of the targets is trained.
"""

from __future__ import annotations

import json
import logging
import types
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ...core import content, schema
from ...data.checkpoint import iter_tensors, read_header, write_tensors
from ...core.errors import ConfigError, ModelError, TrainingError
from ...data.models import ModelSource, load_model, target_parameter_names
from ...runtime.zo import PairedClosure, StepRecord, ZOConfig, ZOSGD, estimate, make_optimizer, perturbation
from .config import DENSE_FILE

log = logging.getLogger(__name__)

DENSE_FORMAT = "szoq.dense"
_GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment: spreads consecutive weight indices over the seed space


def tensor_seed(seed: int, index: int) -> int:
    """The seed of z for trained weight `index` at sample seed `seed` (a 64-bit value)."""
    return (seed + (index + 1) * _GOLDEN) % 2**64


Points = list[tuple[int, float]]  # per row block: (sample seed, scale): weights W + scale * z(seed)


@dataclass
class DenseModel:
    """An fp32 causal LM whose decoder linear weights all train by ZO.

    Attributes:
        model: The transformers causal LM (eval mode, no autograd).
        tokenizer: Its tokenizer (pad token set).
        source: Where the weights came from.
        names: Parameter names of the trained weights, in model order.
        modules: The nn.Linear (or Conv1D) that owns each trained weight.
    """

    model: nn.Module
    tokenizer: Any
    source: ModelSource
    names: list[str]
    modules: list[nn.Module]

    @property
    def weights(self) -> list[torch.Tensor]:
        """The trained weights (the live parameter tensors; mutate in place only)."""
        return [m.weight.data for m in self.modules]

    @property
    def numel(self) -> int:
        """How many weights train."""
        return sum(w.numel() for w in self.weights)

    @contextmanager
    def perturbed(self, points: Points) -> Iterator[int]:
        """Within the block, a forward over P row blocks uses W + scale_p z(seed_p) for block p.

        The batch passed to the model must be P copies of one batch stacked copy-major
        ([P * B, ...]). The stored weights are not touched; z is regenerated per layer.

        Args:
            points: P (seed, scale) pairs.

        Yields:
            P, the number of row blocks the batch must have.
        """
        if not points:
            raise ConfigError("perturbed needs at least one point", hint="pass one (seed, scale) per row block")
        for j, module in enumerate(self.modules):
            module.forward = types.MethodType(_perturbed_forward(j, points), module)  # instance attribute: removed below
        try:
            yield len(points)
        finally:
            for module in self.modules:
                del module.forward

    def tensors(self) -> list[tuple[str, torch.Tensor]]:
        """(name, live weight) of every trained weight, for writing."""
        return list(zip(self.names, self.weights))

    def load_weights(self, path: Path, other: Callable[[str, torch.Tensor], None] | None = None, *, dense_file: bool = False) -> dict[str, str]:
        """Copy trained weights from a dense file or checkpoint into the model, one tensor at a time.

        Args:
            path: A dense file (`save_dense`) or a dense checkpoint.
            other: Called with (key, tensor) for each tensor that is not a trained weight.
            dense_file: `path` must be a dense file, and its content hash is checked (a dense
                file of szoq 0.1.0 has none: it loads with a warning). A checkpoint has no hash.

        Returns:
            The file's header metadata.

        Raises:
            TrainingError: the file lacks one of the trained weights or has another shape; a dense
                file whose format, header or weights do not match its content hash.
        """
        wanted = dict(zip(self.names, self.weights))
        seen = set()
        meta = dense_metadata(path)
        if dense_file and meta.get("format") != DENSE_FORMAT:
            raise TrainingError(f"{path} is not a szoq dense file (format {meta.get('format')!r:.40})", hint="pass the folder of a szoq finetune --dense run")
        # A dense file carries a content hash (and any file that records one is checked); checkpoints do not.
        hashed = dense_file or content.CONTENT_KEY in meta or content.SCHEME_KEY in meta
        digests: list[tuple[str, str]] | None = [] if hashed else None
        try:
            for key, tensor in iter_tensors([path]):
                if digests is not None:
                    digests.append((key, content.tensor_digest(key, tensor)))
                if key in wanted:
                    if tensor.shape != wanted[key].shape:
                        raise TrainingError(f"{path}: {key} has shape {list(tensor.shape)}, the model's is {list(wanted[key].shape)}",
                                            hint="the file belongs to another model; start a new run in another --out")
                    if not bool(torch.isfinite(tensor).all()):
                        raise TrainingError(f"{path}: {key} holds non-finite weights", hint="the file is damaged: train again")
                    wanted[key].copy_(tensor)
                    seen.add(key)
                elif other is not None:
                    other(key, tensor)
        except ModelError as exc:
            raise TrainingError(f"{path} is corrupt ({exc.message})", hint="start a new run in another --out folder") from None
        missing = [n for n in self.names if n not in seen]
        if missing:
            raise TrainingError(f"{path} holds no {missing[0]} ({len(missing)} trained weights missing)", hint="start a new run in another --out folder")
        if digests is not None:  # dense files of szoq 0.1.0 had no hash: they load with a warning
            content.verify(meta, str(path), TrainingError, digests=digests, hashless_ok=True,
                           hint="the file is damaged or was edited: train again (its weights are not used)")
        return meta


def _perturbed_forward(index: int, points: Points):
    """forward(x) of trained linear `index` inside `DenseModel.perturbed`."""

    def forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:  # x [P * B, ..., in]
        w = module.weight  # [out, in] (Conv1D: [in, out])
        blocks = x.chunk(len(points))  # P x [B, ..., in]
        zs: dict[int, torch.Tensor] = {}  # one z per sample seed, shared by its +eps and -eps blocks
        outs = []
        for (seed, scale), xb in zip(points, blocks):
            if seed not in zs:
                zs[seed] = perturbation(tensor_seed(seed, index), w.numel(), w.device).view_as(w)  # [out, in]
            wp = torch.add(w, zs[seed], alpha=scale)  # W + scale z, never stored
            if isinstance(module, nn.Linear):
                outs.append(F.linear(xb, wp, module.bias))
            else:  # transformers' Conv1D (GPT-2): x @ W + b
                outs.append(torch.addmm(module.bias, xb.reshape(-1, xb.shape[-1]), wp).view(*xb.shape[:-1], wp.shape[-1]))
            del wp
        return torch.cat(outs)  # [P * B, ..., out]

    return forward


def load_dense_model(source: ModelSource, *, device: torch.device) -> DenseModel:
    """Load the model in fp32 on `device` with every decoder linear weight trainable by ZO.

    Raises:
        ModelError: transformers cannot load it, or a target weight is not contiguous fp32.
    """
    loaded = load_model(source, dtype=torch.float32)
    model = loaded.model.to(device)
    model.requires_grad_(False)  # ZO: forwards only; the weights change in place
    names = target_parameter_names(model, None)
    modules = [model.get_submodule(n.removesuffix(".weight")) for n in names]
    for name, module in zip(names, modules):
        if module.weight.dtype != torch.float32 or not module.weight.is_contiguous():
            raise ModelError(f"{name} is not a contiguous fp32 weight", hint="dense ZO needs the model in fp32")
    log.info("dense ZO over %d linear weights (%d values)", len(names), sum(m.weight.numel() for m in modules))
    return DenseModel(model, loaded.tokenizer, source, names, modules)


class DenseZO:
    """The ZO optimizer over every trained weight: shared SPSA estimate, per-weight updates.

    Each weight is a flat view updated by the optimizer zo.py builds for `config.optimizer`,
    with z from `tensor_seed(seed, j)`; momentum/Adam state lives per weight.

    Args:
        weights: The trained fp32 weights (mutated in place).
        config: Optimizer settings.
    """

    def __init__(self, weights: list[torch.Tensor], config: ZOConfig) -> None:
        if config.precondition != "none":  # the dense model perturbs its weights itself, with plain z
            raise ConfigError(f"--precondition {config.precondition} applies to the sparse values of a mask, not to a dense run",
                              hint="drop --precondition, or train a mask's values (--mask)")
        self.config = config
        self.parts: list[ZOSGD] = [make_optimizer(w.view(-1), config) for w in weights]

    def step(self, closure: PairedClosure, step: int) -> StepRecord:
        """Estimate from 2q losses (one closure call over (seed, +-eps) points), then update."""
        record = self.estimate(closure, step)
        self.apply(record)
        return record

    def estimate(self, closure, step: int) -> StepRecord:
        """L(W +- eps z_i) for each sample, with the points as (seed, scale) pairs; weights untouched."""
        eps = self.config.eps
        return estimate(self.config, step, closure, lambda seeds: [(s, sign * eps) for s in seeds for sign in (1.0, -1.0)])

    def apply(self, record: StepRecord) -> None:
        """Apply a recorded step to every weight (also replays a run from its step log).

        Raises:
            TrainingError: the update would make a weight non-finite. That weight and its state
                are as before; weights updated before it keep the step (restoring them would
                need a copy of the model). The run stops; its last checkpoint is intact.
        """
        for j, part in enumerate(self.parts):
            part.apply(replace(record, seeds=[tensor_seed(s, j) for s in record.seeds]))

    def state_tensors(self) -> list[tuple[str, torch.Tensor]]:
        """(`J.K`, tensor) of the optimizer state of weight J (live tensors, for writing)."""
        out = []
        for j, part in enumerate(self.parts):
            for key in ("m", "s"):
                if hasattr(part, key):
                    out.append((f"{j}.{key}", getattr(part, key)))
            if hasattr(part, "t"):
                out.append((f"{j}.t", torch.tensor([part.t])))
        return out

    def load_state_tensor(self, key: str, tensor: torch.Tensor) -> None:
        """Restore one entry written by `state_tensors`.

        Raises:
            TrainingError: a key this optimizer does not have.
        """
        j, _, name = key.partition(".")
        part = self.parts[int(j)] if j.isdigit() and int(j) < len(self.parts) else None
        if part is None or not hasattr(part, name):
            raise TrainingError(f"the checkpoint holds optimizer state {key!r} that {self.config.optimizer} does not have",
                                hint="start a new run in another --out folder")
        if name == "t":
            part.t = int(tensor.reshape(-1)[0])
        else:
            getattr(part, name).copy_(tensor.reshape(-1))


def save_dense(path: Path, model: DenseModel, **meta: Any) -> None:
    """Write the trained weights as a dense file (fp32 safetensors, one tensor at a time).

    Args:
        path: Where to write.
        model: The dense model.
        **meta: Header facts (base_model, fingerprint, settings, ...); non-strings as JSON.
    """
    header = {"format": DENSE_FORMAT, **{k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}}
    tensors = model.tensors()
    header = content.stamp(header, digests=[(n, content.tensor_digest(n, t)) for n, t in tensors])  # over every field and weight
    write_tensors(path, tensors, header)


def dense_metadata(path: Path) -> dict[str, str]:
    """The header metadata of a dense file or checkpoint (no tensor data read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types
        raise TrainingError(f"{path} is not a readable safetensors file ({str(exc).splitlines()[0]})", hint="start a new run in another --out folder") from None


def is_dense_file(path: str | Path) -> bool:
    """Whether `path` (a file, or a run folder) holds a dense run's weights."""
    path = Path(path)
    if path.is_dir():
        path = path / DENSE_FILE
    if not path.is_file():
        return False
    if path.name == DENSE_FILE:  # a damaged dense file is still one: its loader says what is wrong
        return True
    try:
        read_header(path)
        return dense_metadata(path).get("format") == DENSE_FORMAT
    except (ModelError, TrainingError):
        return False


def load_dense_result(ref: str | Path, *, model: str | None = None, revision: str | None = None, device: torch.device) -> DenseModel:
    """The fp32 base model with a dense run's trained weights (for eval and merge).

    Args:
        ref: A dense run folder or its `dense.safetensors`.
        model: The base model (default: the one the run recorded, else the built-in).
        revision: Hub revision of the model.
        device: Where the model is loaded.

    Raises:
        FingerprintMismatch: `model` is not the model the run trained.
        TrainingError: a corrupt or incomplete file.
    """
    from ...core.defaults import DEFAULT_MODEL
    from ...core.errors import FingerprintMismatch
    from ...data.models import fingerprint_from, parameter_layout, resolve_model

    path = Path(ref)
    path = path / DENSE_FILE if path.is_dir() else path
    meta = dense_metadata(path)
    if meta.get("format") != DENSE_FORMAT:
        raise TrainingError(f"{path} is not a szoq dense file (format {meta.get('format')!r:.40})", hint="pass the folder of a szoq finetune --dense run")
    settings = schema.json_field(meta, "settings", str(path), error=TrainingError, default={})
    if not isinstance(settings, dict):
        raise TrainingError(f"{path}: header settings must be a JSON object", hint="the file is damaged or was edited: train again")
    trained_on = settings.get("model") if isinstance(settings.get("model"), str) else None
    source = resolve_model(model or trained_on or DEFAULT_MODEL, revision=revision)
    if meta.get("fingerprint") not in (None, fingerprint_from(parameter_layout(source), source.identity)):
        raise FingerprintMismatch(f"{path} was trained on another model than {source.ref}",
                                  hint=f"use the model it was trained on ({trained_on}): drop --model")
    dense = load_dense_model(source, device=device)
    dense.load_weights(path, dense_file=True)
    return dense
