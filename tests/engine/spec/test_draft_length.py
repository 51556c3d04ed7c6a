"""How long a draft the scheduler proposes (engine/spec/draft.py): the most expected tokens per unit of step cost, from the
per-token acceptance recent verifies suggest and what extra rows cost on this machine."""

from __future__ import annotations

import pytest

from engine.model.linear import MatmulPlan
from engine.spec.draft import DraftLength


def scheduler(row_cost, max_draft: int = 8) -> DraftLength:
    return DraftLength(max_draft, row_cost)


def test_free_rows_take_the_longest_draft_and_costly_rows_a_short_one():
    assert scheduler(lambda m: 1.0).best(0.5) == (8, pytest.approx(sum(0.5 ** i for i in range(9))))
    # rows cost as on an AVX2 CPU (a 9-row verify ~1.8x a decode step): code-edit-like acceptance wants 2
    cpu = MatmulPlan({1: "numpy", 8: "torch", 16: "torch"}, 2, {1: 0.364, 8: 0.598, 16: 0.997}).relative_cost
    assert cpu(1) == 1.0 and cpu(8) == pytest.approx(0.598 / 0.364) and cpu(9) == pytest.approx(1.78, abs=0.01)
    k, gain = scheduler(cpu).best(0.48)
    assert k == 2 and gain == pytest.approx((1 + 0.48 + 0.48 ** 2) / cpu(3))
    assert scheduler(cpu).best(0.95)[0] == 8  # copying verbatim: the whole draft
    # rows that cost as much as a step each never pay
    assert scheduler(lambda m: float(m)).best(0.6)[1] < 1.0


def test_relative_cost_without_timings_is_nearly_flat_and_beyond_the_buckets_linear():
    assert MatmulPlan().relative_cost(9) == pytest.approx(1.16)
    plan = MatmulPlan({1: "numpy", 8: "torch"}, 2, {1: 1.0, 8: 2.0})
    assert plan.relative_cost(16) == pytest.approx(4.0)


def test_extra_rows_are_weighed_against_a_measured_one_row_step():
    plan = MatmulPlan({1: "numpy", 8: "numpy"}, 2, {1: 1e-4, 8: 4e-4})
    plan.layers = 38.0
    assert plan.relative_cost(8) == pytest.approx(4.0)  # no step timed yet: the projections alone
    k_projections = scheduler(plan.relative_cost).best(0.48)[0]
    plan.observe_step(0.019)
    # a whole step is 19 ms, of which 38 layer-sized projections of 0.1 ms: 7 more rows add 38 × 0.3 ms
    assert plan.relative_cost(8) == pytest.approx(1 + 38 * 3e-4 / 0.019)
    plan.observe_step(0.029)  # a moving average of one-row steps
    assert plan.step_s == pytest.approx(0.9 * 0.019 + 0.1 * 0.029)
    # rows that cost less than the projections alone suggested make longer drafts pay
    assert scheduler(plan.relative_cost).best(0.48)[0] > k_projections
