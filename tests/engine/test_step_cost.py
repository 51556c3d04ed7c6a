"""The engine's learned step cost (engine/step_cost.py):
seconds ≈ step_s + row_s × decode rows + token_s × prompt tokens."""

from __future__ import annotations

import pytest

from engine.step_cost import MIN_STEPS, Costs, StepCost


def test_fit_recovers_the_fixed_per_row_and_per_prompt_token_cost_of_mixed_steps():
    """CPU-like: a decode row (one token over its whole context) costs three prompt tokens."""
    cost = StepCost()
    for i in range(60):
        rows, prompt = (1, 6, 12, 3, 20)[i % 5], (0, 0, 256, 170, 0, 64)[i % 6]
        cost.observe(rows, prompt, 0.050 + 0.006 * rows + 0.002 * prompt)
    fit = cost.estimate()
    assert fit.step_s == pytest.approx(0.050, rel=1e-6)
    assert fit.row_s == pytest.approx(0.006, rel=1e-6)
    assert fit.token_s == pytest.approx(0.002, rel=1e-6)
    assert cost.as_load() == {"step_s": 0.05, "row_s": 0.006, "token_s": 0.002}


def test_fit_shares_one_slope_while_rows_and_prompt_tokens_cannot_be_told_apart():
    """Decode-only steps of different sizes: one slope, over all the step's tokens, serves both."""
    cost = StepCost()
    for i in range(40):
        rows = (1, 4, 9, 30, 120)[i % 5]
        cost.observe(rows, 0, 0.030 + 0.004 * rows)
    assert cost.estimate() == pytest.approx(Costs(0.030, 0.004, 0.004), rel=1e-6)
    cost = StepCost()
    for i in range(40):  # rows and prompt tokens always in the same proportion
        rows = (1, 4, 9, 30, 120)[i % 5]
        cost.observe(rows, 2 * rows, 0.030 + 0.004 * 3 * rows)
    assert cost.estimate() == pytest.approx(Costs(0.030, 0.004, 0.004), rel=1e-6)


def test_fit_says_nothing_from_few_steps_or_steps_of_one_size():
    cost = StepCost()
    for _ in range(MIN_STEPS - 1):
        cost.observe(8, 0, 0.05)
    assert cost.estimate() is None
    for _ in range(50):
        cost.observe(8, 0, 0.05)  # a slope from equal sizes would be noise
    assert cost.estimate() is None and cost.as_load() == {}


def test_fit_follows_the_machine_as_it_changes():
    cost = StepCost(memory=20)
    for i in range(60):
        rows = (2, 40)[i % 2]
        cost.observe(rows, 0, 0.010 + 0.001 * rows)
    for i in range(200):  # the host got slower: a second worker started beside this one
        rows = (2, 40)[i % 2]
        cost.observe(rows, 0, 0.020 + 0.002 * rows)
    fit = cost.estimate()
    assert fit.step_s == pytest.approx(0.020, rel=1e-3) and fit.row_s == pytest.approx(0.002, rel=1e-3)
    for _ in range(500):
        cost.observe(6, 0, 0.05)  # then only one size, slower again: the fit still predicts what it sees
    fit = cost.estimate()
    assert fit.step_s + 6 * fit.row_s == pytest.approx(0.05, rel=0.02)
    for _ in range(100):
        cost.observe(6, 0, 0.05)  # no spread left: no new slope from equal sizes
    assert cost.estimate() == fit


def test_fit_ignores_empty_steps_and_never_goes_negative():
    cost = StepCost()
    cost.observe(0, 0, 0.1)
    cost.observe(5, 0, 0.0)
    for i in range(20):
        rows = (1, 50)[i % 2]
        cost.observe(rows, 0, 0.5 - 0.001 * rows)  # bigger steps faster: nonsense, clamp the slope at 0
    fit = cost.estimate()
    assert fit.row_s == 0.0 and fit.token_s == 0.0 and fit.step_s > 0
