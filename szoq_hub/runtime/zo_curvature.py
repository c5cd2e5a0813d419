"""The curvature-aware parts of the ZO optimizers (runtime/zo.py; issue 33): `Preconditioner`.

One lr is too large for the values of largest diagonal Fisher and too small for the rest; a fisher mask stores F = Σg² of each kept value over its calibration windows
(`MaskData.scores`), and three options use it. Every one is a pure function of the step
records (and the scores), so runs still replay exactly.

Preconditioned perturbation (`precondition="scores"`). With a fixed diagonal D [nnz]:

    u_i = D z_i,  g_i = (L(v + eps u_i) - L(v - eps u_i)) / (2 eps) = z_i^T D grad L + O(eps^2)
    g_hat = mean_i g_i D z_i,   E[g_hat] = D E[z z^T] D grad L = D^2 grad L

so the update is SGD in the metric D^-2: a diagonal Newton step when D^2 ~ 1 / curvature.
D = c (F / mean F + lambda)^(-alpha/2), with c chosen so that mean(D^2) = 1: |eps D z| ~ |eps z|,
the expected step size stays that of plain SPSA, and --lr / --eps keep their meaning across
alpha; alpha = 0 gives D = 1 and the plain run bit for bit. lambda > 0 bounds D for values of
small F (D <= lambda^(-alpha/2) before c).

Online diagonal (`precondition="online"`, in the spirit of HiZOO). A state h [nnz] in mean-1
units starts at F / mean F (ones for a mask without scores); D_t is h_t mapped as above (with
h clamped at 0). For z ~ N(0, I), a vector a and a symmetric A:

    E[(z^T a)^2 (z_j^2 - 1)] = 2 a_j^2,        E[(z^T A z)(z_j^2 - 1)] = 2 A_jj

- `curvature="fisher"`, from the two forwards already taken: a = D grad L, so
  g_i^2 (z_ij^2 - 1) / (2 d_j^2) is unbiased for (d_j L)^2, the quantity F sums over windows;
- `curvature="hessian"`, one extra forward at v (the closure gets 2q + 1 points, v last):
  delta_i = (L+ + L- - 2 L0) / eps^2 = z_i^T D H D z_i + O(eps^2), and
  delta_i (z_ij^2 - 1) / (2 d_j^2) is unbiased for H_jj.
Each step's estimate h_hat (mean over the q samples) is divided by a running scale r / nnz
(r: EMA at rate 0.1 of mean_i g_i^2, resp. mean_i |delta_i|: E[g^2] = sum_j d_j^2 (d_j L)^2) so it
lives in h's units, then h <- (1 - beta) h + beta h_hat, and D is rebuilt.
Its cost: in those units one step's h_hat_j has mean O(1) but standard deviation O(nnz) (the
one scalar g carries the noise of all nnz directions), so after T steps the EMA's noise is about
beta sqrt(T) nnz. At nnz ~ 1e5 (SmolLM2, 0.1%) and T ~ 1e3 it stays below the prior's O(1) only
for beta <~ 3e-7: per-value curvature cannot be learned from SPSA within a run's budget, which is
why h starts from the scores and the default beta (1e-8) keeps it close to them.

Per-value step sizes (`optimizer="zo-rmsprop"`, or "zo-adam"): s <- b2 s + (1 - b2) g_hat^2 over
the nnz values only (zo-rmsprop: nnz floats of state; zo-adam adds m). Note
E[g_hat_j^2] = d_j^2 (|a|^2 + 2 a_j^2): the projection noise |a|^2 dominates, so s mostly
normalises the step by the running |g| (a step of ~lr per value whatever the loss scale, which
helps an lr carry across models) and adapts per value only through D and the 2 a_j^2 term.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

from ..core.errors import ConfigError, TrainingError
from .zo_config import ZOConfig

if TYPE_CHECKING:
    from .zo import StepRecord

SCALE_RATE = 0.1  # EMA rate of the online estimate's running scale (see the module doc)

# (record, D, curvature, eps) -> one step's estimate of the diagonal [nnz] (zo.curvature_estimate,
# which regenerates the step's z: handed in, so that this module sits below zo.py)
CurvatureEstimate = Callable[["StepRecord", torch.Tensor, str, float], torch.Tensor]


def precond_scale(curvature: torch.Tensor, alpha: float, lam: float) -> torch.Tensor:
    """The diagonal preconditioner D = c (h / mean h + lambda)^(-alpha/2), with mean(D^2) = 1.

    Args:
        curvature: h [nnz], a diagonal curvature (scores, or the online estimate); negative
            entries count as 0.
        alpha: Exponent (0: D = 1 exactly).
        lam: Damping > 0.

    Returns:
        D [nnz] fp32 on the device of `curvature`.
    """
    h = curvature.float().clamp(min=0.0)  # [nnz]
    mean = float(h.double().mean()) if h.numel() else 0.0
    ratio = h / mean if mean > 0 else torch.ones_like(h)  # [nnz], mean 1
    d = (ratio + lam).pow_(-alpha / 2)  # [nnz]
    rms = float(d.double().square().mean().sqrt())
    return d if rms == 1.0 else d.div_(rms)


def curvature_samples(record: StepRecord, curvature: str, eps: float) -> list[float]:
    """Per sample, the scalar the online estimate correlates with z^2: g_i^2 (fisher) or
    delta_i = (L+ + L- - 2 L0) / eps^2 (hessian).

    Raises:
        TrainingError: hessian, and the record has no loss at v.
    """
    if curvature == "hessian":
        if record.loss_center is None:
            raise TrainingError(f"step {record.step} has no loss at v, which curvature 'hessian' needs",
                                hint="replay with the settings the run was recorded with")
        return [(lp + lm - 2 * record.loss_center) / eps**2 for lp, lm in zip(record.loss_plus, record.loss_minus)]
    return [g * g for g in record.grads]


def check_scores(scores: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The scores [nnz] as fp32 on the device of `values`.

    Raises:
        ConfigError: scores that do not fit the values, or negative / non-finite ones.
    """
    if scores.dim() != 1 or scores.numel() != values.numel():
        raise ConfigError(f"the scores hold {scores.numel()} values for {values.numel()} trainable values",
                          hint="pass the mask's scores in the runtime's value order (MaskData.flat_scores)")
    scores = scores.detach().to(device=values.device, dtype=torch.float32)  # [nnz]
    if not bool(torch.isfinite(scores).all()) or bool((scores < 0).any()):
        raise ConfigError("the scores hold negative or non-finite values", hint="rebuild the mask: szoq mask build MODEL")
    return scores


class Preconditioner:
    """The diagonal D a ZO optimizer perturbs with (u = D z), and the online estimate D follows.

    Args:
        values: The optimizer's flat fp32 values [nnz] (size and device of D).
        config: The optimizer settings (`precondition`, `precond_alpha`, `precond_lambda`,
            `curvature`, `curvature_beta`, `eps`).
        scores: The mask's fisher scores [nnz] in the order of `values` (needed by
            `precondition="scores"`; the starting point of "online"; otherwise unused).

    Attributes:
        scale: D [nnz]; None = identity (plain SPSA, no multiply).
        curvature: h [nnz] of the online estimate in mean-1 units (None unless "online").
        curvature_scale: The online estimate's running r (0: no step seen yet).
        center: Whether each step also takes L(v) (online "hessian": 2q + 1 points).

    Raises:
        ConfigError: `precondition="scores"` without scores; scores that do not fit the values.
    """

    def __init__(self, values: torch.Tensor, config: ZOConfig, scores: torch.Tensor | None = None) -> None:
        self.config = config
        self.scale: torch.Tensor | None = None
        self.curvature: torch.Tensor | None = None
        self.curvature_scale = 0.0
        self.center = config.precondition == "online" and config.curvature == "hessian"
        if scores is not None:
            scores = check_scores(scores, values)
        if config.precondition == "scores":
            if scores is None:
                raise ConfigError("precondition 'scores' needs the mask's scores, and none were given",
                                  hint="build a fisher mask (szoq mask build MODEL stores its Σg²), or use --precondition online")
            self.scale = precond_scale(scores, config.precond_alpha, config.precond_lambda)
        elif config.precondition == "online":
            start = scores if scores is not None else torch.ones_like(values)  # [nnz]
            mean = float(start.double().mean())
            self.curvature = start / mean if mean > 0 else torch.ones_like(values)
            self.scale = precond_scale(self.curvature, config.precond_alpha, config.precond_lambda)

    def update(self, record: StepRecord, estimate: CurvatureEstimate) -> None:
        """(online only) h <- (1 - beta) h + beta h_hat / unit from this step's losses, then D from h
        (see the module doc); a no-op for a fixed D.

        Args:
            record: The step just applied (made with the current D).
            estimate: Computes that step's h_hat [nnz] (`zo.curvature_estimate`).
        """
        if self.curvature is None:
            return
        c = self.config
        xs = curvature_samples(record, c.curvature, c.eps)
        magnitude = sum(abs(x) for x in xs) / len(xs)
        self.curvature_scale = magnitude if self.curvature_scale == 0.0 else (1 - SCALE_RATE) * self.curvature_scale + SCALE_RATE * magnitude
        unit = self.curvature_scale / self.curvature.numel()  # per-value size of the estimate
        if not unit > 0 or c.curvature_beta == 0.0:
            return
        h_hat = estimate(record, self.scale, c.curvature, c.eps)  # [nnz]
        self.curvature.mul_(1 - c.curvature_beta).add_(h_hat, alpha=c.curvature_beta / unit)
        self.scale = precond_scale(self.curvature, c.precond_alpha, c.precond_lambda)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """State to checkpoint (copies): none for a fixed D; the online estimate's `curvature` [nnz]
        and `curvature_scale` [1] with `precondition="online"`."""
        if self.curvature is None:
            return {}
        return {"curvature": self.curvature.clone(), "curvature_scale": torch.tensor([self.curvature_scale], dtype=torch.float64)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore state saved by `state_dict` (and D from it).

        Raises:
            TrainingError: the online estimate's state is missing.
        """
        if self.curvature is None:
            return
        if "curvature" not in state or "curvature_scale" not in state:
            raise TrainingError("the saved optimizer state has no online curvature estimate", hint="start a new run in another --out folder")
        self.curvature.copy_(state["curvature"].reshape(-1))
        self.curvature_scale = float(state["curvature_scale"].reshape(-1)[0])
        self.scale = precond_scale(self.curvature, self.config.precond_alpha, self.config.precond_lambda)
