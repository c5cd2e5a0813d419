"""Zeroth-order optimizers over one flat vector of trainable values (MeZO's SPSA, sparse).

The optimizers never see a model. One step, for each of q samples:

    seed_i = drawn from Generator(run seed, step)      # recorded, so the step can be replayed
    z_i    ~ N(0, I) from Generator(seed_i)            # regenerated on v's device, never stored
    L+     = L(v + eps z_i),  L- = L(v - eps z_i)
    g_i    = (L+ - L-) / (2 eps)                       # projected gradient
then  v <- v - lr (mean_i g_i z_i + wd v)  (SGD; momentum / Adam keep their state over the same
estimate).

The closure is *paired*: it receives all 2q points at once, as a [2q, nnz] fp32 tensor with rows
(v + eps z_1, v - eps z_1, v + eps z_2, ...), and returns the 2q losses in that order, so a
runtime can evaluate them as one batch (runtime.SparseModel.perturbed: one dequantization of the
base per step). `v` itself is never modified while the losses are computed, so there is no
perturb/restore drift. `in_place` adapts a closure that reads `v` in place (one forward per
point, v restored bitwise afterwards) for models that cannot batch the points.

z is drawn on the device of `v` from a generator of that device type: a run, its step-log
replay and --resume are exact on one device type (CPU and CUDA generators differ).

Curvature (issue 33): with `config.precondition`, every perturbation is D z instead of z, D a
diagonal preconditioner from the mask's scores or an online estimate; its derivation, its cost
and the per-value step sizes of zo-rmsprop are in zo_curvature.py's module doc.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch

from ..core.errors import ConfigError, TrainingError
from .zo_config import ZOConfig
from .zo_curvature import Preconditioner, curvature_samples

log = logging.getLogger(__name__)

_SEED_SPACE = 2**62

PairedClosure = Callable[[torch.Tensor], Sequence[float]]


@dataclass
class StepRecord:
    """What one step did: enough to replay the update without any forward pass."""

    step: int
    lr: float
    seeds: list[int]
    grads: list[float]
    loss_plus: list[float]
    loss_minus: list[float]
    loss_center: float | None = None  # L(v), only when the step took the extra forward (curvature "hessian")

    @property
    def loss(self) -> float:
        """Mean of the perturbed losses (an estimate of the loss at v)."""
        return (sum(self.loss_plus) + sum(self.loss_minus)) / (2 * len(self.seeds))

    @property
    def grad_norm(self) -> float:
        """|g| averaged over samples (the projected gradient's magnitude)."""
        return sum(abs(g) for g in self.grads) / len(self.grads)

    def to_dict(self) -> dict:
        out = asdict(self)
        if out["loss_center"] is None:  # step logs of two-forward runs read as before
            del out["loss_center"]
        return {**out, "loss": self.loss}

    @classmethod
    def from_dict(cls, data: dict) -> "StepRecord":
        return cls(**{k: data[k] for k in ("step", "lr", "seeds", "grads", "loss_plus", "loss_minus")}, loss_center=data.get("loss_center"))


def lr_at(config: ZOConfig, step: int) -> float:
    """Learning rate of 0-based `step`: linear warmup from 0, then constant/linear/cosine to 0.

    Args:
        config: The optimizer settings.
        step: 0-based step index.

    Returns:
        The learning rate.

    Raises:
        ConfigError: `lr` is still "auto" or "scores" (a run chooses it before the first step).
    """
    if isinstance(config.lr, str):
        raise ConfigError(f"--lr {config.lr} has no value before the run chose it", hint="finetune() chooses it; elsewhere pass a number")
    if step < config.warmup:
        return config.lr * step / config.warmup
    if config.lr_schedule == "constant":
        return config.lr
    span = max(1, config.total_steps - config.warmup)
    progress = min(1.0, (step - config.warmup) / span)
    if config.lr_schedule == "linear":
        return config.lr * (1.0 - progress)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def step_seeds(run_seed: int, step: int, samples: int) -> list[int]:
    """The perturbation seeds of one step, drawn from a generator seeded by (run seed, step)."""
    gen = torch.Generator().manual_seed((run_seed * 1_000_003 + step) % _SEED_SPACE)
    return [int(s) for s in torch.randint(0, _SEED_SPACE, (samples,), generator=gen)]


def perturbation(seed: int, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """z ~ N(0, I) [n] fp32 on `device`, a pure function of (seed, device type), drawn there
    from that device's generator (regenerated instead of stored or copied across devices)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(n, generator=gen, dtype=torch.float32, device=device)


def estimate(config: ZOConfig, step: int, closure: Callable[[Any], Sequence[float]], points_for: Callable[[list[int]], Any],
             *, center: bool = False) -> StepRecord:
    """The two-point SPSA estimate of one step, shared by the sparse and the dense optimizer.

    Args:
        config: The optimizer settings (seed, eps, q).
        step: 0-based step index (seeds and lr derive from it).
        closure: Maps the points to their 2q losses, in the order of the points.
        points_for: Builds the 2q points (v + eps z_1, v - eps z_1, ...) of the step's seeds in
            the form the closure takes ([2q, nnz] values for the sparse runtime; (seed, scale)
            pairs for the dense model, which perturbs its weights on the fly).
        center: The points end with v itself (2q + 1 of them); its loss goes to `loss_center`.

    Returns:
        The step's record (lr, seeds, projected gradients, losses).

    Raises:
        TrainingError: a non-finite loss, or a closure that returned the wrong count.
    """
    seeds = step_seeds(config.seed, step, config.zo_samples)
    points = points_for(seeds)
    losses = [float(x) for x in closure(points)]
    del points
    expected = 2 * len(seeds) + int(center)
    if len(losses) != expected:
        raise TrainingError(f"the loss closure returned {len(losses)} losses for {expected} points", hint="return one loss per row of points")
    loss_center = losses.pop() if center else None
    plus, minus = losses[0::2], losses[1::2]
    for lp, lm in zip(plus, minus):
        if not (math.isfinite(lp) and math.isfinite(lm)):
            raise TrainingError(
                f"non-finite loss at step {step} (L+={lp}, L-={lm})",
                hint="lower --lr or --eps; the last checkpoint is intact and --resume continues from it",
            )
    if loss_center is not None and not math.isfinite(loss_center):
        raise TrainingError(f"non-finite loss at step {step} (L0={loss_center})",
                            hint="lower --lr or --eps; the last checkpoint is intact and --resume continues from it")
    grads = [(lp - lm) / (2 * config.eps) for lp, lm in zip(plus, minus)]
    lr = lr_at(config, step) if step >= 0 else 0.0  # a negative step is a probe (--lr auto, training/lr_probe.py): no update, no lr
    return StepRecord(step, lr, seeds, grads, plus, minus, loss_center)


def all_finite(t: torch.Tensor) -> bool:
    """Whether every entry of `t` is finite: its min and max are (both propagate NaN). One fused
    reduction, ~5x faster on CPU than `isfinite(t).all()`, which dense ZO runs over 106M weights a step."""
    if t.numel() == 0:
        return True
    low, high = torch.aminmax(t)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def in_place(values: torch.Tensor, closure: Callable[[], float]) -> PairedClosure:
    """Adapt a closure that reads `values` in place to the paired form (one call per point).

    Args:
        values: The flat vector the closure reads.
        closure: Returns the loss at the current contents of `values`.

    Returns:
        A paired closure; `values` is restored bitwise after it ran (also on error).
    """

    def paired(points: torch.Tensor) -> list[float]:  # points [P, nnz]
        snapshot = values.clone()
        try:
            losses = []
            for point in points:
                values.copy_(point)
                losses.append(float(closure()))
            return losses
        finally:
            values.copy_(snapshot)

    return paired


def curvature_estimate(record: StepRecord, scale: torch.Tensor, curvature: str, eps: float) -> torch.Tensor:
    """One step's unbiased estimate of the diagonal: mean_i x_i (z_ij^2 - 1) / (2 d_j^2).

    Args:
        record: The step (its seeds and losses).
        scale: D [nnz], the preconditioner the step's points were made with.
        curvature: "fisher" (estimates (d_j L)^2) or "hessian" (estimates H_jj).
        eps: The perturbation scale.

    Returns:
        [nnz] fp32 on the device of `scale` (very noisy: see zo_curvature.py's module doc).
    """
    xs = curvature_samples(record, curvature, eps)
    n, q = scale.numel(), len(xs)
    est = torch.zeros(n, dtype=torch.float32, device=scale.device)  # [nnz]
    for seed, x in zip(record.seeds, xs):
        z = perturbation(seed, n, scale.device)  # [nnz]
        est.add_(z.square_().sub_(1.0), alpha=x / (2 * q))  # x (z^2 - 1) / 2, averaged over samples
    return est.div_(scale.square())  # / d_j^2: the unpreconditioned diagonal


class ZOSGD:
    """Two-point SPSA (MeZO) over a flat value vector, plain SGD update.

    With `config.precondition` other than "none", every perturbation is D z instead of z (see the
    module doc); the update rules below then follow D^2 grad L.

    Args:
        values: The flat fp32 trainable tensor [nnz]; mutated in place.
        config: Optimizer settings.
        scores: The mask's fisher scores [nnz] in the order of `values` (needed by
            `precondition="scores"`; the starting point of "online"; otherwise unused).

    Raises:
        ConfigError: values that are not a flat fp32 tensor; `precondition="scores"` without
            scores; scores that do not fit the values.

    Example:
        opt = ZOSGD(sparse.values, ZOConfig(lr=1e-4, total_steps=300))
        record = opt.step(lambda points: losses_at(points), step=0)  # points [2q, nnz]
    """

    def __init__(self, values: torch.Tensor, config: ZOConfig, scores: torch.Tensor | None = None) -> None:
        if values.dtype != torch.float32 or values.dim() != 1:
            raise ConfigError(f"ZO values must be a flat fp32 tensor, got {values.dtype} {tuple(values.shape)}", hint="pass SparseModel.values")
        self.values = values
        self.config = config
        self.precond = Preconditioner(values, config, scores)  # D (identity without --precondition)

    def step(self, closure: PairedClosure, step: int) -> StepRecord:
        """Estimate the gradient from 2 q losses and apply the update.

        Args:
            closure: Paired closure: [2q, nnz] points -> their 2q losses (see the module doc).
            step: 0-based step index (seeds and lr derive from it).

        Returns:
            The step's record.

        Raises:
            TrainingError: a non-finite loss or update; `values` is left as before the step.
        """
        record = self.estimate(closure, step)
        self.apply(record)
        return record

    def estimate(self, closure: PairedClosure, step: int) -> StepRecord:
        """Evaluate L(v +- eps z_i) for each sample in one closure call; `values` is untouched.

        Raises:
            TrainingError: a non-finite loss, or a closure that returned the wrong count.
        """
        return estimate(self.config, step, closure, self._points, center=self.precond.center)

    def noise(self, seed: int) -> torch.Tensor:
        """The perturbation direction of one seed: z, or D z with a preconditioner [nnz] fp32."""
        z = perturbation(seed, self.values.numel(), self.values.device)  # [nnz]
        return z if self.precond.scale is None else z.mul_(self.precond.scale)

    def _points(self, seeds: list[int]) -> torch.Tensor:
        """The 2q points (v + eps u_1, v - eps u_1, ...) as [2q, nnz] fp32 (u = z, or D z),
        then v itself when the online estimate needs L(v) ([2q + 1, nnz])."""
        eps, v = self.config.eps, self.values
        points = torch.empty(2 * len(seeds) + int(self.precond.center), v.numel(), dtype=torch.float32, device=v.device)  # [P, nnz]
        for i, seed in enumerate(seeds):
            u = self.noise(seed)  # [nnz]
            torch.add(v, u, alpha=eps, out=points[2 * i])
            torch.add(v, u, alpha=-eps, out=points[2 * i + 1])
            del u
        if self.precond.center:
            points[-1].copy_(v)
        return points

    def direction(self, record: StepRecord) -> torch.Tensor:
        """The gradient estimate mean_i g_i u_i [nnz] (u = z, or D z), rebuilt from the seeds."""
        n = self.values.numel()
        est = torch.zeros(n, dtype=torch.float32, device=self.values.device)
        for seed, g in zip(record.seeds, record.grads):
            est.add_(self.noise(seed), alpha=g / len(record.seeds))
        return est

    def apply(self, record: StepRecord) -> None:
        """Apply a recorded step (also used to replay a run from its step log).

        Raises:
            TrainingError: the update would make a value non-finite (nothing is changed).
        """
        snapshot, state = self.values.clone(), self.state_dict()  # state_dict() returns copies
        try:
            self._update(record)  # with the D that made this step's points
            self.precond.update(record, curvature_estimate)  # then (online) D for the next step
            finite = all_finite(self.values) and (self.precond.scale is None or all_finite(self.precond.scale))
        except (RuntimeError, OverflowError):  # a step size beyond fp32 range
            finite = False
        if not finite:
            self.values.copy_(snapshot)
            self.load_state_dict(state)  # momentum / Adam moments and step count as before the step
            raise TrainingError(
                f"the update at step {record.step} made values non-finite (lr {record.lr:g}, |g| {record.grad_norm:.3g})",
                hint="lower --lr; the last checkpoint is intact and --resume continues from it",
            )

    def _update(self, record: StepRecord) -> None:
        lr, wd, v = record.lr, self.config.weight_decay, self.values
        if wd:
            v.mul_(1.0 - lr * wd)  # v - lr wd v, using v before the gradient step
        for seed, g in zip(record.seeds, record.grads):
            v.add_(self.noise(seed), alpha=-lr * g / len(record.seeds))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Optimizer state beyond `values` (copies): none for plain SGD; the online estimate's
        with `precondition="online"` (`Preconditioner.state_dict`)."""
        return self.precond.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore state saved by `state_dict`.

        Raises:
            TrainingError: the online estimate's state is missing.
        """
        self.precond.load_state_dict(state)


class ZOMomentum(ZOSGD):
    """ZO-SGD with heavy-ball momentum: m <- mu m + (g_hat + wd v); v <- v - lr m."""

    def __init__(self, values: torch.Tensor, config: ZOConfig, scores: torch.Tensor | None = None) -> None:
        super().__init__(values, config, scores)
        self.m = torch.zeros_like(values)  # [nnz]

    def _update(self, record: StepRecord) -> None:
        grad = self.direction(record)  # [nnz]
        if self.config.weight_decay:
            grad.add_(self.values, alpha=self.config.weight_decay)
        self.m.mul_(self.config.momentum).add_(grad)
        self.values.add_(self.m, alpha=-record.lr)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**super().state_dict(), "m": self.m.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        super().load_state_dict(state)
        self.m.copy_(state["m"])


class ZOAdam(ZOSGD):
    """Adam over the ZO gradient estimate with decoupled weight decay (state: 2 x nnz floats)."""

    first_moment = True  # ZORMSProp: False (no m; the estimate itself is the step's direction)

    def __init__(self, values: torch.Tensor, config: ZOConfig, scores: torch.Tensor | None = None) -> None:
        super().__init__(values, config, scores)
        self.m = torch.zeros_like(values) if self.first_moment else None  # [nnz]
        self.s = torch.zeros_like(values)  # [nnz]
        self.t = 0

    def _update(self, record: StepRecord) -> None:
        c = self.config
        grad = self.direction(record)  # [nnz]
        self.t += 1
        self.s.mul_(c.beta2).addcmul_(grad, grad, value=1 - c.beta2)
        if self.m is not None:
            self.m.mul_(c.beta1).add_(grad, alpha=1 - c.beta1)
            grad = self.m / (1 - c.beta1**self.t)  # m_hat
        s_hat = self.s / (1 - c.beta2**self.t)  # [nnz]
        if c.weight_decay:
            self.values.mul_(1.0 - record.lr * c.weight_decay)
        self.values.addcdiv_(grad, s_hat.sqrt_().add_(c.adam_eps), value=-record.lr)

    def state_dict(self) -> dict[str, torch.Tensor]:
        moments = {"m": self.m.clone()} if self.m is not None else {}
        return {**super().state_dict(), **moments, "s": self.s.clone(), "t": torch.tensor(self.t)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        super().load_state_dict(state)
        if self.m is not None:
            self.m.copy_(state["m"])
        self.s.copy_(state["s"])
        self.t = int(state["t"])


class ZORMSProp(ZOAdam):
    """RMSProp over the ZO gradient estimate, bias-corrected, decoupled weight decay (state: nnz floats).

    s <- b2 s + (1 - b2) g_hat^2;  v <- v - lr g_hat / (sqrt(s / (1 - b2^t)) + adam_eps)
    (Adam without its first moment: what each value's step is divided by, see the module doc.)
    """

    first_moment = False


def make_optimizer(values: torch.Tensor, config: ZOConfig, scores: torch.Tensor | None = None) -> ZOSGD:
    """Build the optimizer named by `config.optimizer` over `values`.

    Args:
        values: The flat fp32 trainable tensor [nnz].
        config: Optimizer settings.
        scores: The mask's scores [nnz] in the order of `values` (see `ZOSGD`).

    Raises:
        ConfigError: as `ZOSGD`.
    """
    cls = {"zo-sgd": ZOSGD, "zo-momentum": ZOMomentum, "zo-adam": ZOAdam, "zo-rmsprop": ZORMSProp}[config.optimizer]
    return cls(values, config, scores)


def replay(values: torch.Tensor, config: ZOConfig, records: list[StepRecord], scores: torch.Tensor | None = None) -> torch.Tensor:
    """Re-apply a run's step log to initial values without any forward pass.

    Args:
        values: Initial values [nnz] (mutated in place).
        config: The run's optimizer settings.
        records: Step records in order.
        scores: The mask's scores [nnz] when the run was preconditioned by them.

    Returns:
        `values`, now equal to the run's final values.
    """
    opt = make_optimizer(values, config, scores)
    for record in records:
        opt.apply(record)
    return values
