"""ZO optimizers on small pure-torch objectives, against slow references on the same seeds."""

from __future__ import annotations

import math

import pytest
import torch

from szoq_hub.errors import ConfigError, TrainingError
from szoq_hub.zo import ZOConfig, ZOSGD, lr_at, make_optimizer, perturbation, replay, step_seeds


def quadratic(values: torch.Tensor, target: torch.Tensor):
    def closure() -> float:
        return float(((values.double() - target.double()) ** 2).sum())
    return closure


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
    opt.estimate(quadratic(values, target), step=0)
    assert torch.equal(values, before)  # bitwise, not approximately


def test_closure_sees_both_perturbations():
    values, _ = _problem(n=50)
    seen = []
    opt = ZOSGD(values, ZOConfig(eps=0.5, seed=3))
    opt.estimate(lambda: seen.append(values.clone()) or 0.0, step=0)
    z = perturbation(step_seeds(3, 0, 1)[0], 50)
    torch.testing.assert_close(seen[0], 0.5 * z)
    torch.testing.assert_close(seen[1], -0.5 * z)


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
    start = closure()
    for step in range(300):
        opt.step(closure, step)
    assert closure() < 0.5 * start


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
        opt.step(lambda: math.nan, 0)
    assert torch.equal(values, torch.ones(10))


def test_non_finite_update_raises_and_leaves_values():
    values, target = _problem(n=10)
    opt = ZOSGD(values, ZOConfig(lr=1e300, eps=1e-3))
    with pytest.raises(TrainingError, match="non-finite"):
        opt.step(quadratic(values, target), 0)
    assert torch.equal(values, torch.zeros(10))


@pytest.mark.parametrize("kwargs", [dict(optimizer="sgd"), dict(lr_schedule="step"), dict(eps=0.0), dict(lr=-1.0),
                                    dict(zo_samples=0), dict(warmup=-1), dict(weight_decay=-0.1), dict(lr=math.nan)])
def test_config_validation(kwargs):
    with pytest.raises(ConfigError):
        ZOConfig(**kwargs)


def test_rejects_non_flat_values():
    with pytest.raises(ConfigError):
        ZOSGD(torch.zeros(2, 2), ZOConfig())
