"""The projections' backends: each mode gives the same product, and the start-up probe plans every bucket."""

from __future__ import annotations

import numpy as np
import torch

from engine.model.linear import _BUCKETS, Linear, MatmulPlan


def test_every_mode_gives_the_same_product_and_gemv_rows_equal_one_row_steps():
    torch.manual_seed(0)
    lin = Linear(torch.randn(300, 64))  # [out, in], fp32 on the CPU: kept as W.T for OpenBLAS
    x = torch.randn(3, 64)
    want = x @ lin.weight
    for mode in ("numpy", "gemv", "pad8", "torch"):
        assert torch.allclose(lin(x, mode), want, atol=1e-4)
    assert lin(torch.randn(13, 64), "pad8").shape == (13, 300)  # padded to 16 rows inside, 13 out
    # one GEMV per row: each row is exactly what a one-row (decode) step computes for it
    rows = lin(x, "gemv")
    for i in range(3):
        assert torch.equal(rows[i:i + 1], lin(x[i:i + 1], "numpy"))


def test_the_probe_times_and_plans_every_bucket():
    plan = MatmulPlan.probe(torch.float32, "cpu", threads=1)
    assert set(plan.choice) == set(plan.times) == set(_BUCKETS)
    for b, c in plan.choice.items():  # one GEMV per row only for a few rows; padding only where it adds rows
        assert c in ("numpy", "torch", *(("gemv",) if 1 < b <= 4 else ()), *(("pad8",) if b > 4 and b % 8 else ()))
    assert plan.backend(2) == plan.choice[2] and plan.backend(20) == plan.choice[32]
    assert plan.backend(10_000) == plan.choice[128]
    # a plan over fewer buckets (older callers, tests) looks up the nearest bucket at or above
    assert MatmulPlan({1: "numpy", 8: "torch"}, 1).backend(2) == "torch"
    assert np.isfinite(plan.relative_cost(9)) and plan.relative_cost(9) > 1.0
