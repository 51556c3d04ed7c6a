"""The engine's learned step cost (engine/step_cost.py): seconds ≈ step_s + token_s × tokens."""

from __future__ import annotations

import pytest

from engine.step_cost import MIN_STEPS, StepCost


def test_fit_recovers_the_fixed_and_per_token_cost_of_steps_of_different_sizes():
    cost = StepCost()
    for i in range(40):
        tokens = (1, 4, 9, 30, 120)[i % 5]
        cost.observe(tokens, 0.030 + 0.004 * tokens)
    step_s, token_s = cost.estimate()
    assert step_s == pytest.approx(0.030, rel=1e-6)
    assert token_s == pytest.approx(0.004, rel=1e-6)
    assert cost.as_load() == {"step_s": 0.03, "token_s": 0.004}


def test_fit_says_nothing_from_few_steps_or_steps_of_one_size():
    cost = StepCost()
    for _ in range(MIN_STEPS - 1):
        cost.observe(8, 0.05)
    assert cost.estimate() is None
    for _ in range(50):
        cost.observe(8, 0.05)  # a slope from equal sizes would be noise
    assert cost.estimate() is None and cost.as_load() == {}


def test_fit_follows_the_machine_as_it_changes():
    cost = StepCost(memory=20)
    for i in range(60):
        tokens = (2, 40)[i % 2]
        cost.observe(tokens, 0.010 + 0.001 * tokens)
    for i in range(200):  # the host got slower: a second worker started beside this one
        tokens = (2, 40)[i % 2]
        cost.observe(tokens, 0.020 + 0.002 * tokens)
    step_s, token_s = cost.estimate()
    assert step_s == pytest.approx(0.020, rel=1e-3) and token_s == pytest.approx(0.002, rel=1e-3)
    for _ in range(500):
        cost.observe(6, 0.05)  # then only one size, slower again: the fit still predicts what it sees
    step_s, token_s = cost.estimate()
    assert step_s + 6 * token_s == pytest.approx(0.05, rel=0.02)
    settled = cost.estimate()
    for _ in range(100):
        cost.observe(6, 0.05)  # no spread left: no new slope from equal sizes
    assert cost.estimate() == settled


def test_fit_ignores_empty_steps_and_never_goes_negative():
    cost = StepCost()
    cost.observe(0, 0.1)
    cost.observe(5, 0.0)
    for i in range(20):
        tokens = (1, 50)[i % 2]
        cost.observe(tokens, 0.5 - 0.001 * tokens)  # bigger steps faster: nonsense, clamp the slope at 0
    step_s, token_s = cost.estimate()
    assert token_s == 0.0 and step_s > 0
