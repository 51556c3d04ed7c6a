"""Dense projections y = x @ W.T with the weight stored once, as W.T [in, out].

Why not F.linear: on the AVX2 machines this project runs on, torch's CPU GEMM
for the skinny shapes of decode (M = 1..32 rows) reached 2-3x less throughput
than numpy's OpenBLAS on the same [in, out] weights (measured: one batch-8
decode step's matmuls 196 ms with F.linear vs 80 ms with OpenBLAS), while
large prefill shapes run at par. So at start-up `MatmulPlan.probe` times both
backends on this machine for a few row counts and each call uses the faster
one for its size. Non-fp32 or non-CPU weights always use torch.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

_BUCKETS = (1, 8, 64, 512)  # a call with M rows uses the plan of the nearest bucket at or above M


class MatmulPlan:
    """Which backend each row-count bucket uses: 'numpy' or 'torch'."""

    def __init__(self, choice: dict[int, str] | None = None):
        self.choice = choice or {b: "torch" for b in _BUCKETS}

    def backend(self, m: int) -> str:
        for b in _BUCKETS:
            if m <= b:
                return self.choice[b]
        return self.choice[_BUCKETS[-1]]

    @classmethod
    def probe(cls, dtype: torch.dtype, device: str, forced: str = "auto") -> "MatmulPlan":
        if dtype != torch.float32 or str(device) != "cpu":
            return cls()
        if forced in ("numpy", "torch"):
            return cls({b: forced for b in _BUCKETS})
        w = torch.randn(576, 3072)  # a typical [in, out] projection
        wn = w.numpy()
        choice = {}
        for m in _BUCKETS:
            x = torch.randn(m, 576)
            xn = x.numpy()
            t_torch = _time(lambda: torch.mm(x, w))
            t_numpy = _time(lambda: xn @ wn)
            choice[m] = "numpy" if t_numpy < t_torch else "torch"
        return cls(choice)

    def describe(self) -> str:
        return ",".join(f"m<={b}:{c}" for b, c in self.choice.items())


def _time(fn, reps: int = 7) -> float:
    fn()
    samples = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


class Linear:
    def __init__(self, weight: torch.Tensor, plan: MatmulPlan):
        # weight [out, in] as checkpoints store it; kept as its transpose [in, out]
        self.wt = weight.t().contiguous()
        self.wt_np = self.wt.numpy() if self.wt.dtype == torch.float32 and self.wt.device.type == "cpu" else None
        self.plan = plan
        self.out_features = self.wt.shape[1]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # x [M, in] -> [M, out]
        if self.wt_np is not None and self.plan.backend(x.shape[0]) == "numpy":
            return torch.from_numpy(np.matmul(x.contiguous().numpy(), self.wt_np))
        return torch.mm(x, self.wt)
