"""ZO optimizers on small pure-torch objectives, against slow references on the same seeds."""

from __future__ import annotations

import math

import pytest
import torch

from szoq_hub.core.errors import ConfigError, TrainingError
from szoq_hub.runtime.zo import ZOConfig, ZOSGD, in_place, lr_at, make_optimizer, perturbation, replay, step_seeds


def quadratic(values: torch.Tensor, target: torch.Tensor):
    """The paired closure of |v - target|^2: one loss per row of the points."""
    def closure(points: torch.Tensor) -> list[float]:  # [P, n]
        return [float(((p.double() - target.double()) ** 2).sum()) for p in points]
    return closure


def loss_at(values: torch.Tensor, target: torch.Tensor) -> float:
    return float(((values.double() - target.double()) ** 2).sum())


def _problem(n: int = 200, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    target = torch.randn(n, generator=gen)
    values = torch.zeros(n)
    return values, target


def test_one_step_matches_reference_formula():
    values, target = _problem()
    config = ZOConfig(lr=1e-2, eps=1e-3, weight_decay=0.1, total_steps=10, seed=7)
    opt = ZOSGD(values, config)
    before = values.clone()
    record = opt.step(quadratic(values, target), step=3)

    # Slow reference: recompute everything from the recorded seed by hand.
    (seed,) = step_seeds(7, 3, 1)
    assert record.seeds == [seed]
    z = torch.randn(200, generator=torch.Generator().manual_seed(seed))
    lp = float((((before + 1e-3 * z).double() - target.double()) ** 2).sum())
    lm = float((((before - 1e-3 * z).double() - target.double()) ** 2).sum())
    g = (lp - lm) / 2e-3
    assert record.grads[0] == pytest.approx(g, rel=1e-9)
    expected = before - 1e-2 * (g * z + 0.1 * before)
    torch.testing.assert_close(values, expected, rtol=0, atol=1e-6)


def test_values_restored_exactly_between_forwards():
    values, target = _problem()
    values.add_(torch.randn(200, generator=torch.Generator().manual_seed(1)) * 1e3)  # large values expose drift
    opt = ZOSGD(values, ZOConfig(lr=0.0, eps=1e-3))
    before = values.clone()
    seen = []
    opt.estimate(lambda points: [seen.append(values.clone()) or loss_at(values, target) for _ in points], step=0)
    assert all(torch.equal(v, before) for v in seen)  # the paired form never writes v
    opt.estimate(in_place(values, lambda: loss_at(values, target)), step=0)
    assert torch.equal(values, before)  # the in-place form restores bitwise, not approximately


def test_closure_sees_both_perturbations():
    values, _ = _problem(n=50)
    values.fill_(2.0)
    seen = []
    opt = ZOSGD(values, ZOConfig(eps=0.5, seed=3, zo_samples=2))
    opt.estimate(lambda points: seen.append(points.clone()) or [0.0] * len(points), step=0)
    (points,) = seen
    assert points.shape == (4, 50) and points.dtype == torch.float32
    for i, seed in enumerate(step_seeds(3, 0, 2)):  # rows: +z_1, -z_1, +z_2, -z_2
        z = perturbation(seed, 50)
        assert torch.equal(points[2 * i], torch.add(values, z, alpha=0.5))
        assert torch.equal(points[2 * i + 1], torch.add(values, z, alpha=-0.5))


def test_paired_and_in_place_forms_give_the_same_step():
    """The two closure forms evaluate the same points: same losses, same update, bit for bit."""
    _, target = _problem()
    config = ZOConfig(lr=1e-2, zo_samples=3, seed=4, total_steps=5)
    a, b = torch.zeros(200), torch.zeros(200)
    opt_a, opt_b = make_optimizer(a, config), make_optimizer(b, config)
    for s in range(5):
        ra = opt_a.step(quadratic(a, target), s)
        rb = opt_b.step(in_place(b, lambda: loss_at(b, target)), s)
        assert ra == rb
    assert torch.equal(a, b)


def test_closure_returning_the_wrong_count_is_refused():
    values = torch.zeros(8)
    opt = ZOSGD(values, ZOConfig(zo_samples=2))
    with pytest.raises(TrainingError, match="returned 1 losses for 4 points"):
        opt.step(lambda points: [0.0], 0)
    assert torch.equal(values, torch.zeros(8))


def test_zo_samples_average_q_estimates():
    values, target = _problem()
    config = ZOConfig(lr=1e-2, zo_samples=4, seed=2)
    opt = ZOSGD(values, config)
    record = opt.step(quadratic(values, target), step=0)
    assert len(record.seeds) == 4 and len(set(record.seeds)) == 4
    ref = torch.zeros(200)
    for seed, g in zip(record.seeds, record.grads):
        ref -= 1e-2 * g / 4 * perturbation(seed, 200)
    torch.testing.assert_close(values, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["zo-sgd", "zo-momentum", "zo-adam"])
def test_optimizers_descend_on_a_quadratic(name):
    values, target = _problem(n=100)
    lr = {"zo-sgd": 5e-3, "zo-momentum": 4e-4, "zo-adam": 2e-2}[name]
    opt = make_optimizer(values, ZOConfig(lr=lr, optimizer=name, total_steps=300, seed=0))
    closure = quadratic(values, target)
    start = loss_at(values, target)
    for step in range(300):
        opt.step(closure, step)
    assert loss_at(values, target) < 0.5 * start


@pytest.mark.parametrize("name", ["zo-sgd", "zo-momentum", "zo-adam"])
def test_replay_from_step_log_is_bit_identical(name):
    values, target = _problem(n=64)
    config = ZOConfig(lr=1e-3, optimizer=name, weight_decay=0.01, zo_samples=2, lr_schedule="cosine", warmup=3, total_steps=12, seed=5)
    opt = make_optimizer(values, config)
    records = [opt.step(quadratic(values, target), s) for s in range(12)]
    replayed = replay(torch.zeros(64), config, records)
    assert torch.equal(replayed, values)


def test_state_dict_resume_is_bit_identical():
    target = _problem(n=64)[1]
    config = ZOConfig(lr=1e-2, optimizer="zo-adam", total_steps=10, seed=1)
    straight = torch.zeros(64)
    opt = make_optimizer(straight, config)
    for s in range(10):
        opt.step(quadratic(straight, target), s)
    first = torch.zeros(64)
    opt1 = make_optimizer(first, config)
    for s in range(5):
        opt1.step(quadratic(first, target), s)
    state = opt1.state_dict()
    second = first.clone()
    opt2 = make_optimizer(second, config)
    opt2.load_state_dict(state)
    for s in range(5, 10):
        opt2.step(quadratic(second, target), s)
    assert torch.equal(second, straight)


def test_lr_schedules():
    c = ZOConfig(lr=1.0, warmup=10, total_steps=110, lr_schedule="linear")
    assert lr_at(c, 0) == 0.0 and lr_at(c, 5) == 0.5 and lr_at(c, 10) == 1.0
    assert lr_at(c, 60) == pytest.approx(0.5) and lr_at(c, 110) == 0.0
    c = ZOConfig(lr=1.0, total_steps=100, lr_schedule="cosine")
    assert lr_at(c, 0) == 1.0 and lr_at(c, 50) == pytest.approx(0.5) and lr_at(c, 100) == pytest.approx(0.0)
    assert lr_at(ZOConfig(lr=0.3, total_steps=5), 4) == 0.3


def test_seeds_depend_on_run_seed_and_step():
    assert step_seeds(0, 1, 1) == step_seeds(0, 1, 1)
    assert step_seeds(0, 1, 1) != step_seeds(0, 2, 1)
    assert step_seeds(0, 1, 1) != step_seeds(1, 1, 1)


def test_non_finite_loss_raises_and_leaves_values():
    values = torch.ones(10)
    opt = ZOSGD(values, ZOConfig())
    with pytest.raises(TrainingError, match="non-finite loss"):
        opt.step(lambda points: [math.nan] * len(points), 0)
    assert torch.equal(values, torch.ones(10))


def test_non_finite_update_raises_and_leaves_values():
    values, target = _problem(n=10)
    opt = ZOSGD(values, ZOConfig(lr=1e300, eps=1e-3))
    with pytest.raises(TrainingError, match="non-finite"):
        opt.step(quadratic(values, target), 0)
    assert torch.equal(values, torch.zeros(10))


# --- hand-written references: plain Python floats, no optimizer code --------------------------

def _f32(xs: list[float]) -> list[float]:
    """Round to fp32, as the optimizer's value and state vectors store them."""
    return torch.tensor(xs, dtype=torch.float32).tolist()


def _hand_estimate(v: list[float], target: list[float], seed: int, eps: float) -> tuple[list[float], float]:
    """z and the projected gradient g = (L(v + eps z) - L(v - eps z)) / (2 eps), by hand."""
    z = torch.randn(len(v), generator=torch.Generator().manual_seed(seed)).tolist()
    loss = lambda w: sum((wi - ti) ** 2 for wi, ti in zip(w, target))  # noqa: E731
    # The optimizer perturbs an fp32 vector; round the perturbed points to fp32 like it does.
    f32 = lambda xs: torch.tensor(xs, dtype=torch.float32).tolist()  # noqa: E731
    lp = loss(f32([vi + eps * zi for vi, zi in zip(v, z)]))
    lm = loss(f32([vi - eps * zi for vi, zi in zip(v, z)]))
    return z, (lp - lm) / (2 * eps)


def test_momentum_matches_a_hand_written_reference_over_steps():
    n, lr, eps, mu, wd = 16, 1e-2, 1e-3, 0.9, 0.05
    values, target = _problem(n=n)
    opt = make_optimizer(values, ZOConfig(lr=lr, eps=eps, optimizer="zo-momentum", momentum=mu, weight_decay=wd, total_steps=4, seed=11))
    v, m, t = [0.0] * n, [0.0] * n, target.tolist()
    for step in range(4):
        record = opt.step(quadratic(values, target), step)
        (seed,) = step_seeds(11, step, 1)
        z, g = _hand_estimate(v, t, seed, eps)
        assert record.grads[0] == pytest.approx(g, rel=1e-5)
        m = [mu * mi + (g * zi + wd * vi) for mi, zi, vi in zip(m, z, v)]  # m <- mu m + (g z + wd v)
        m = _f32(m)
        v = _f32([vi - lr * mi for vi, mi in zip(v, m)])  # v <- v - lr m
        torch.testing.assert_close(values, torch.tensor(v), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(opt.m, torch.tensor(m), rtol=1e-4, atol=1e-6)


def test_adam_matches_a_hand_written_reference_over_steps():
    n, lr, eps, b1, b2, aeps, wd = 16, 1e-2, 1e-3, 0.9, 0.999, 1e-8, 0.05
    values, target = _problem(n=n)
    values.add_(0.5)  # start away from 0 so that weight decay matters
    opt = make_optimizer(values, ZOConfig(lr=lr, eps=eps, optimizer="zo-adam", beta1=b1, beta2=b2, adam_eps=aeps, weight_decay=wd,
                                          total_steps=4, seed=13))
    v, m, s, t = [0.5] * n, [0.0] * n, [0.0] * n, target.tolist()
    for step in range(4):
        opt.step(quadratic(values, target), step)
        (seed,) = step_seeds(13, step, 1)
        z, g = _hand_estimate(v, t, seed, eps)
        k = step + 1
        m = [b1 * mi + (1 - b1) * g * zi for mi, zi in zip(m, z)]
        s = [b2 * si + (1 - b2) * (g * zi) ** 2 for si, zi in zip(s, z)]
        m, s = _f32(m), _f32(s)
        v = _f32([vi * (1 - lr * wd) - lr * (mi / (1 - b1**k)) / (math.sqrt(si / (1 - b2**k)) + aeps) for vi, mi, si in zip(v, m, s)])
        torch.testing.assert_close(values, torch.tensor(v), rtol=1e-4, atol=1e-6)
    assert opt.t == 4


def test_sgd_with_schedule_matches_a_hand_written_reference_over_steps():
    n, lr, eps = 16, 1e-2, 1e-3
    values, target = _problem(n=n)
    config = ZOConfig(lr=lr, eps=eps, lr_schedule="linear", warmup=1, total_steps=5, seed=17)
    opt = make_optimizer(values, config)
    v, t = [0.0] * n, target.tolist()
    for step in range(5):
        opt.step(quadratic(values, target), step)
        (seed,) = step_seeds(17, step, 1)
        z, g = _hand_estimate(v, t, seed, eps)
        lr_k = 0.0 if step == 0 else lr * (1 - (step - 1) / 4)  # warmup 1 step, then linear to 0 at step 5
        v = _f32([vi - lr_k * g * zi for vi, zi in zip(v, z)])
        torch.testing.assert_close(values, torch.tensor(v), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["zo-momentum", "zo-adam"])
def test_non_finite_update_leaves_optimizer_state_unchanged(name):
    from szoq_hub.runtime.zo import StepRecord

    values, target = _problem(n=10)
    opt = make_optimizer(values, ZOConfig(lr=1e-2, optimizer=name, total_steps=10, seed=0))
    opt.step(quadratic(values, target), 0)  # a normal step: non-zero state
    before_values, before_state = values.clone(), {k: v.clone() for k, v in opt.state_dict().items()}
    bad = StepRecord(step=1, lr=1e-2, seeds=[123], grads=[float("inf")], loss_plus=[1.0], loss_minus=[0.0])
    with pytest.raises(TrainingError, match="non-finite"):
        opt.apply(bad)
    assert torch.equal(values, before_values)
    after = opt.state_dict()
    assert after.keys() == before_state.keys() and all(torch.equal(after[k], before_state[k]) for k in after)
    opt.step(quadratic(values, target), 1)  # and it goes on as if the bad step never happened
    twin_values = _problem(n=10)[0]
    twin = make_optimizer(twin_values, ZOConfig(lr=1e-2, optimizer=name, total_steps=10, seed=0))
    for step in range(2):
        twin.step(quadratic(twin_values, target), step)
    assert torch.equal(values, twin_values)


@pytest.mark.parametrize("kwargs", [dict(optimizer="sgd"), dict(lr_schedule="step"), dict(eps=0.0), dict(lr=-1.0),
                                    dict(zo_samples=0), dict(warmup=-1), dict(weight_decay=-0.1), dict(lr=math.nan)])
def test_config_validation(kwargs):
    with pytest.raises(ConfigError):
        ZOConfig(**kwargs)


def test_rejects_non_flat_values():
    with pytest.raises(ConfigError):
        ZOSGD(torch.zeros(2, 2), ZOConfig())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_all_finite_finds_any_non_finite_entry(bad):
    from szoq_hub.runtime.zo import all_finite

    v = torch.randn(1000)
    assert all_finite(v) and all_finite(torch.empty(0))
    for pos in (0, 517, 999):
        w = v.clone()
        w[pos] = bad
        assert not all_finite(w), (bad, pos)
