"""ZO steps that use curvature (runtime/zo.py's module doc): each against a hand-computed small case."""

from __future__ import annotations

import json
import math

import pytest
import torch

from szoq_hub.core.errors import ConfigError, MaskError, TrainingError
from szoq_hub.runtime.zo import StepRecord, ZOConfig, curvature_estimate, make_optimizer, perturbation, replay, step_seeds
from szoq_hub.runtime.zo_curvature import precond_scale

SCORES = torch.tensor([1.0, 2.0, 3.0, 6.0, 0.0, 0.5])  # mean 2.0


def _hand_scale(scores: list[float], alpha: float, lam: float) -> list[float]:
    mean = sum(scores) / len(scores)
    d = [(f / mean + lam) ** (-alpha / 2) for f in scores]
    rms = math.sqrt(sum(x * x for x in d) / len(d))
    return [x / rms for x in d]


def quadratic(H: torch.Tensor, target: torch.Tensor):
    """The paired closure of L(v) = 1/2 (v - t)^T H (v - t) (float64), one loss per row of the points."""
    def closure(points: torch.Tensor) -> list[float]:  # [P, n]
        r = points.double() - target.double()  # [P, n]
        return (0.5 * ((r @ H) * r).sum(dim=1)).tolist()
    return closure


def _spd(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=gen, dtype=torch.float64)
    return a @ a.T / n + torch.diag(torch.linspace(0.5, 3.0, n, dtype=torch.float64))  # [n, n] SPD, not diagonal


@pytest.mark.parametrize("alpha,lam", [(1.0, 0.1), (0.5, 1.0), (2.0, 0.01)])
def test_the_preconditioner_follows_its_formula(alpha, lam):
    d = precond_scale(SCORES, alpha, lam)
    torch.testing.assert_close(d, torch.tensor(_hand_scale(SCORES.tolist(), alpha, lam)), rtol=1e-6, atol=0)
    assert float(d.square().mean()) == pytest.approx(1.0, rel=1e-6)  # lr and eps keep their meaning
    assert bool((d[3] < d[0]) & (d[0] < d[4]))  # larger F, smaller steps
    assert torch.equal(precond_scale(SCORES, 0.0, lam), torch.ones(6))  # alpha 0: identity, exactly


def test_the_preconditioned_estimate_is_D2_times_the_gradient_on_average():
    """E[g_hat] = D E[z z^T] D grad L = D^2 grad L, on a non-diagonal quadratic (the estimate is exact there)."""
    n, samples = 6, 40_000
    H, target = _spd(n), torch.linspace(-1.0, 1.0, n)
    values = torch.zeros(n)
    opt = make_optimizer(values, ZOConfig(lr=0.0, eps=1e-2, precondition="scores", zo_samples=samples, seed=3), scores=SCORES)
    record = opt.estimate(quadratic(H, target), step=0)
    mean = opt.direction(record).double()  # [n], the mean of g_i D z_i over the samples
    grad = H @ (values.double() - target.double())  # [n]
    d = torch.tensor(_hand_scale(SCORES.tolist(), 1.0, 0.1), dtype=torch.float64)
    expected = d**2 * grad
    a = d * grad  # Var(g D_j z_j) = d_j^2 (|a|^2 + a_j^2)
    stderr = d * torch.sqrt((a.square().sum() + a.square()) / samples)
    assert bool((mean - expected).abs().le(5 * stderr).all()), (mean, expected, stderr)
    plain = make_optimizer(torch.zeros(n), ZOConfig(lr=0.0, eps=1e-2, zo_samples=samples, seed=3))
    off = (plain.direction(plain.estimate(quadratic(H, target), 0)).double() - expected).abs()
    assert bool((off > 5 * stderr).any())  # the plain estimate is grad L, which differs: the test can tell them apart


def test_alpha_zero_is_the_plain_run_bit_for_bit():
    n, H, target = 6, _spd(6), torch.linspace(-1.0, 1.0, 6)
    a, b = torch.zeros(n), torch.zeros(n)
    plain = make_optimizer(a, ZOConfig(lr=1e-2, optimizer="zo-adam", total_steps=5, seed=1))
    pre = make_optimizer(b, ZOConfig(lr=1e-2, optimizer="zo-adam", precondition="scores", precond_alpha=0.0, total_steps=5, seed=1), scores=SCORES)
    for step in range(5):
        assert plain.step(quadratic(H, target), step) == pre.step(quadratic(H, target), step)
    assert torch.equal(a, b)


def test_one_preconditioned_sgd_step_by_hand():
    n, lr, eps = 6, 1e-2, 1e-2
    H, target = _spd(n), torch.linspace(-1.0, 1.0, n)
    values = torch.zeros(n)
    opt = make_optimizer(values, ZOConfig(lr=lr, eps=eps, precondition="scores", precond_alpha=1.0, precond_lambda=0.1, seed=9), scores=SCORES)
    record = opt.step(quadratic(H, target), step=0)
    (seed,) = step_seeds(9, 0, 1)
    d = torch.tensor(_hand_scale(SCORES.tolist(), 1.0, 0.1))
    u = torch.randn(n, generator=torch.Generator().manual_seed(seed)) * d
    lp, lm = quadratic(H, target)(torch.stack([eps * u, -eps * u]))
    g = (lp - lm) / (2 * eps)
    assert record.grads[0] == pytest.approx(g, rel=1e-5)
    torch.testing.assert_close(values, -lr * g * u, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("curvature", ["fisher", "hessian"])
def test_the_online_estimate_is_unbiased_on_a_quadratic(curvature):
    """E[x (z_j^2 - 1) / (2 d_j^2)] is (d_j L)^2 (x = g^2) or H_jj (x = delta), the quadratic's exact values."""
    n, samples = 5, 60_000
    H, target = _spd(n, seed=1), torch.linspace(-1.0, 1.0, n)
    values = torch.zeros(n)
    scores = SCORES[:n]
    opt = make_optimizer(values, ZOConfig(lr=0.0, eps=1e-2, precondition="online", curvature=curvature, zo_samples=samples, seed=4),
                         scores=scores)
    record = opt.estimate(quadratic(H, target), step=0)
    assert (record.loss_center is not None) == (curvature == "hessian")
    est = curvature_estimate(record, opt.precond.scale, curvature, 1e-2).double()  # [n]
    grad = H @ (values.double() - target.double())
    expected = grad.square() if curvature == "fisher" else torch.diagonal(H)
    # the estimate's spread, from the samples themselves: x (z^2 - 1) / (2 d^2) per sample
    d = opt.precond.scale.double()
    zs = torch.stack([perturbation(s, n) for s in record.seeds]).double()  # [samples, n]
    xs = torch.tensor([g * g for g in record.grads] if curvature == "fisher" else
                      [(lp + lm - 2 * record.loss_center) / 1e-4 for lp, lm in zip(record.loss_plus, record.loss_minus)], dtype=torch.float64)
    per = xs[:, None] * (zs.square() - 1) / (2 * d.square())  # [samples, n]
    torch.testing.assert_close(est, per.mean(0), rtol=1e-4, atol=1e-6)  # the function computes that mean
    stderr = per.std(0) / math.sqrt(samples)
    assert bool((est - expected).abs().le(5 * stderr).all()), (est, expected, stderr)


def test_one_online_step_updates_h_and_D_by_hand():
    n, beta, eps = 6, 0.05, 1e-2
    H, target = _spd(n), torch.linspace(-1.0, 1.0, n)
    values = torch.zeros(n)
    config = ZOConfig(lr=0.0, eps=eps, precondition="online", curvature="fisher", curvature_beta=beta, zo_samples=2, seed=2)
    opt = make_optimizer(values, config, scores=SCORES)
    h0 = SCORES / SCORES.mean()
    torch.testing.assert_close(opt.precond.curvature, h0)
    d0 = opt.precond.scale.clone()
    record = opt.step(quadratic(H, target), 0)
    # hand: scale r = mean g^2 (first step), unit = r / n; h1 = (1 - beta) h0 + beta h_hat / unit
    r = sum(g * g for g in record.grads) / 2
    zs = [torch.randn(n, generator=torch.Generator().manual_seed(s)) for s in record.seeds]
    h_hat = sum(g * g * (z * z - 1) / 2 for g, z in zip(record.grads, zs)) / 2 / d0**2
    h1 = (1 - beta) * h0 + beta * h_hat / (r / n)
    torch.testing.assert_close(opt.precond.curvature, h1, rtol=1e-5, atol=1e-6)
    assert opt.precond.curvature_scale == pytest.approx(r)
    torch.testing.assert_close(opt.precond.scale, torch.tensor(_hand_scale(h1.clamp(min=0).tolist(), 1.0, 0.1)), rtol=1e-5, atol=1e-7)


def test_rmsprop_matches_a_hand_written_reference_over_steps():
    n, lr, eps, b2, aeps, wd = 6, 1e-2, 1e-2, 0.99, 1e-8, 0.05
    H, target = _spd(n), torch.linspace(-1.0, 1.0, n)
    values = torch.full((n,), 0.5)
    opt = make_optimizer(values, ZOConfig(lr=lr, eps=eps, optimizer="zo-rmsprop", beta2=b2, adam_eps=aeps, weight_decay=wd, seed=13, total_steps=4))
    v, s = torch.full((n,), 0.5, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    for step in range(4):
        record = opt.step(quadratic(H, target), step)
        z = torch.randn(n, generator=torch.Generator().manual_seed(record.seeds[0])).double()
        ghat = record.grads[0] * z
        s = b2 * s + (1 - b2) * ghat**2
        v = v * (1 - lr * wd) - lr * ghat / (torch.sqrt(s / (1 - b2 ** (step + 1))) + aeps)
        torch.testing.assert_close(values.double(), v, rtol=1e-4, atol=1e-6)
    assert opt.t == 4 and set(opt.state_dict()) == {"s", "t"}  # no first moment: nnz floats of state


CASES = [dict(precondition="scores"), dict(precondition="online", curvature="fisher", curvature_beta=0.1),
         dict(precondition="online", curvature="hessian", curvature_beta=0.1), dict(precondition="online", curvature_beta=0.1, no_scores=True)]


@pytest.mark.parametrize("optimizer", ["zo-sgd", "zo-adam", "zo-rmsprop"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_replay_and_resume_are_exact(optimizer, case):
    case = dict(case)
    scores = None if case.pop("no_scores", False) else SCORES
    n, H, target = 6, _spd(6), torch.linspace(-1.0, 1.0, 6)
    config = ZOConfig(lr=1e-2, eps=1e-2, optimizer=optimizer, zo_samples=2, total_steps=10, seed=5, **case)
    values = torch.zeros(n)
    opt = make_optimizer(values, config, scores=scores)
    records = [opt.step(quadratic(H, target), s) for s in range(10)]
    logged = [StepRecord.from_dict(json.loads(json.dumps(r.to_dict()))) for r in records]  # through the step log's JSON
    assert torch.equal(replay(torch.zeros(n), config, logged, scores=scores), values)
    if case.get("precondition") == "online":
        assert not torch.equal(opt.precond.curvature, (SCORES / SCORES.mean()) if scores is not None else torch.ones(n))  # it moved
    first = torch.zeros(n)
    opt1 = make_optimizer(first, config, scores=scores)
    for s in range(5):
        opt1.step(quadratic(H, target), s)
    second = first.clone()
    opt2 = make_optimizer(second, config, scores=scores)
    opt2.load_state_dict(opt1.state_dict())
    for s in range(5, 10):
        opt2.step(quadratic(H, target), s)
    assert torch.equal(second, values)


def test_a_non_finite_online_step_leaves_the_estimate_as_it_was():
    values = torch.zeros(6)
    opt = make_optimizer(values, ZOConfig(lr=1e-2, precondition="online", curvature_beta=0.1, seed=0), scores=SCORES)
    opt.step(quadratic(_spd(6), torch.ones(6)), 0)
    before = {k: v.clone() for k, v in opt.state_dict().items()}
    scale = opt.precond.scale.clone()
    with pytest.raises(TrainingError, match="non-finite"):
        opt.apply(StepRecord(step=1, lr=1e-2, seeds=[5], grads=[float("inf")], loss_plus=[1.0], loss_minus=[0.0]))
    assert all(torch.equal(opt.state_dict()[k], before[k]) for k in before) and torch.equal(opt.precond.scale, scale)


def test_two_forward_step_logs_read_as_before():
    record = StepRecord(step=0, lr=0.1, seeds=[1], grads=[0.5], loss_plus=[1.0], loss_minus=[0.9])
    assert "loss_center" not in record.to_dict()
    old = {"step": 0, "lr": 0.1, "seeds": [1], "grads": [0.5], "loss_plus": [1.0], "loss_minus": [0.9], "loss": 0.95}
    assert StepRecord.from_dict(old) == record


def test_precondition_settings_are_checked():
    for kwargs in (dict(precondition="newton"), dict(curvature="gauss"), dict(precond_lambda=0.0), dict(precond_alpha=-1.0),
                   dict(curvature_beta=1.0)):
        with pytest.raises(ConfigError):
            ZOConfig(**kwargs)
    with pytest.raises(ConfigError, match="needs the mask's scores"):
        make_optimizer(torch.zeros(6), ZOConfig(precondition="scores"))
    with pytest.raises(ConfigError, match="5 values for 6"):
        make_optimizer(torch.zeros(6), ZOConfig(precondition="scores"), scores=SCORES[:5])
    with pytest.raises(ConfigError, match="negative"):
        make_optimizer(torch.zeros(6), ZOConfig(precondition="online"), scores=-SCORES)


def test_each_method_checks_the_preconditioner_it_can_take():
    from szoq_hub.training.config import FinetuneConfig

    with pytest.raises(ConfigError, match="--precondition online does not apply to --dense"):
        FinetuneConfig(method="dense", zo=ZOConfig(precondition="online"))
    with pytest.raises(ConfigError, match="--precondition scores does not apply to --lora") as info:
        FinetuneConfig(method="lora", method_config={"lora": 8}, zo=ZOConfig(precondition="scores"))
    assert "online" in info.value.hint
    assert FinetuneConfig(method="lora", method_config={"lora": 8}, zo=ZOConfig(precondition="online")).zo.precondition == "online"
    assert FinetuneConfig(zo=ZOConfig(precondition="scores")).zo.precondition == "scores"  # sparse: checked against the mask when it opens


# ---- through the fine-tuning loop (tiny model; its fisher mask has scores) ------------------------

def test_finetune_preconditioned_by_the_mask_scores_replays(tiny_model_dir, tiny_mask, train_file, tmp_path):
    from safetensors.torch import load_file

    from szoq_hub import finetune
    from szoq_hub.hub.refs import open_mask
    from szoq_hub.runtime.sparse import load_sparse_model
    from conftest import tiny_finetune_config

    for case in (dict(precondition="scores", optimizer="zo-rmsprop"), dict(precondition="online", curvature="hessian", curvature_beta=0.1)):
        out = tmp_path / case["precondition"]
        config = tiny_finetune_config(tiny_model_dir, tiny_mask, train_file, out, lr=1e-3, eval_every=0, **case)
        finetune(config)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        records = [StepRecord.from_dict(r) for r in rows if r["kind"] == "step"]
        assert all((r.loss_center is not None) == (case.get("curvature") == "hessian") for r in records)
        sparse = load_sparse_model(str(tiny_model_dir), open_mask(str(tiny_mask)), quant="none")
        scores = open_mask(str(tiny_mask)).flat_scores([name for name, _, _ in sparse.segments])
        replayed = replay(sparse.values.clone(), config.zo, records, scores=scores)
        assert torch.equal(replayed, load_file(str(out / "checkpoint.safetensors"))["values"])


def test_finetune_refuses_scores_preconditioning_with_a_mask_without_scores(tiny_model_dir, train_file, tmp_path):
    from szoq_hub import finetune
    from szoq_hub.masks.build import MaskBuildConfig, build_mask
    from conftest import tiny_finetune_config

    _, folder = build_mask(MaskBuildConfig(model=str(tiny_model_dir), scorer="magnitude", density=0.01), tmp_path / "mag")
    with pytest.raises(MaskError, match="holds no scores") as info:
        finetune(tiny_finetune_config(tiny_model_dir, folder, train_file, tmp_path / "run", precondition="scores"))
    assert "szoq mask build" in info.value.hint
    finetune(tiny_finetune_config(tiny_model_dir, folder, train_file, tmp_path / "online", precondition="online", steps=2, eval_every=0))
    with pytest.raises(ConfigError, match="--dense"):
        tiny_finetune_config(tiny_model_dir, None, train_file, tmp_path / "dense", dense=True, quant=None, precondition="scores")
