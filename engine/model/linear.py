"""Dense projections y = x @ W.T with the weight stored once, as W.T [in, out].

Why not F.linear: on the AVX2 machines this project runs on, torch's CPU GEMM
for the skinny shapes of decode (M = 1..32 rows) reached 2-3x less throughput
than numpy's OpenBLAS on the same [in, out] weights (measured: one batch-8
decode step's matmuls 196 ms with F.linear vs 80 ms with OpenBLAS), while
large prefill shapes run better on torch with all threads. The two cannot
share the cores: OpenMP and OpenBLAS workers spin against each other (a
batch-8 step took 495 ms with both at 2 threads, 159 ms with torch at 1).

So each forward step runs in one mode, chosen by its token count from a plan
that `MatmulPlan.probe` measures on this machine at start-up:
  numpy — projections on OpenBLAS (all threads), torch ops on 1 thread;
  torch — everything on torch with all threads.
Non-fp32 or non-CPU weights always use torch.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

_BUCKETS = (1, 8, 16, 32, 64, 128)  # a step with M rows uses the plan of the nearest bucket at or above M


class MatmulPlan:
    """Which backend each row-count bucket uses: 'numpy' or 'torch'."""

    def __init__(self, choice: dict[int, str] | None = None, threads: int | None = None,
                 times: dict[int, float] | None = None):
        self.choice = choice or {b: "torch" for b in _BUCKETS}
        self.threads = threads or torch.get_num_threads()
        self.times = times or {}  # bucket → seconds of one layer's projections in its chosen mode (probed)

    def relative_cost(self, m: int) -> float:
        """What a step of m rows costs against a step of one row, from the probe's timings
        (interpolated between buckets); without timings (GPU, a forced backend) rows are nearly free."""
        if m <= 1:
            return 1.0
        if 1 not in self.times:
            return 1.0 + 0.02 * (m - 1)
        points = sorted(self.times.items())
        base = self.times[1]
        for (m0, t0), (m1, t1) in zip(points, points[1:]):
            if m <= m1:
                return (t0 + (t1 - t0) * (m - m0) / (m1 - m0)) / base
        return points[-1][1] * m / points[-1][0] / base

    def backend(self, m: int) -> str:
        for b in _BUCKETS:
            if m <= b:
                return self.choice[b]
        return self.choice[_BUCKETS[-1]]

    def enter(self, m: int) -> str:
        """Set torch's thread count for a step of m rows and return its mode."""
        mode = self.backend(m)
        torch.set_num_threads(1 if mode == "numpy" else self.threads)
        return mode

    @classmethod
    def probe(cls, dtype: torch.dtype, device: str, threads: int, forced: str = "auto") -> "MatmulPlan":
        if dtype != torch.float32 or str(device) != "cpu":
            return cls(threads=threads)
        if forced in ("numpy", "torch"):
            return cls({b: forced for b in _BUCKETS}, threads)
        # the projection shapes of one SmolLM2 layer, [in, out]
        weights = [torch.randn(576, 960), torch.randn(576, 576), torch.randn(576, 3072), torch.randn(1536, 576)]
        choice, timings = {}, {}
        for m in _BUCKETS:
            xs = [torch.randn(m, w.shape[0]) for w in weights]
            pairs = [(x.numpy(), w.numpy()) for x, w in zip(xs, weights)]
            torch.set_num_threads(threads)
            t_torch = _time(lambda: [torch.mm(x, w) for x, w in zip(xs, weights)])
            torch.set_num_threads(1)
            t_numpy = _time(lambda: [x @ w for x, w in pairs])
            choice[m] = "numpy" if t_numpy < t_torch else "torch"
            timings[m] = {"numpy": t_numpy, "torch": t_torch}
        # numpy only below the first size where torch wins: one crossover, no flapping
        crossed = False
        for m in _BUCKETS:
            crossed = crossed or choice[m] == "torch"
            if crossed:
                choice[m] = "torch"
        return cls(choice, threads, {m: timings[m][choice[m]] for m in _BUCKETS})

    def describe(self) -> str:
        return ",".join(f"m<={b}:{c}" for b, c in self.choice.items())


def _time(fn, reps: int = 15) -> float:
    """The fastest of reps runs: the least disturbed by whatever else the machine does."""
    fn()
    samples = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return min(samples)


class Linear:
    """fp32 on the CPU: the weight kept as its transpose [in, out] (contiguous rows for OpenBLAS and for
    torch.mm). Other dtypes and devices: the checkpoint's [out, in] with F.linear, which oneDNN runs
    faster in bf16 on the wide LM head (measured at 2 threads: 2.4 vs 4.4 ms for one row of the
    [49152, 576] projection; the layer shapes time the same either way)."""

    def __init__(self, weight: torch.Tensor):
        # weight [out, in] as checkpoints store it
        transpose = weight.dtype == torch.float32 and weight.device.type == "cpu"
        self.wt = weight.t().contiguous() if transpose else None  # [in, out]
        self.w = None if transpose else weight.contiguous()  # [out, in]
        self.wt_np = self.wt.numpy() if transpose else None
        self.out_features = weight.shape[0]

    @property
    def weight(self) -> torch.Tensor:
        """The stored matrix, whichever layout it is kept in."""
        return self.w if self.w is not None else self.wt

    def __call__(self, x: torch.Tensor, mode: str = "torch") -> torch.Tensor:
        # x [M, in] -> [M, out]
        if self.w is not None:
            return F.linear(x, self.w)
        if mode == "numpy":
            return torch.from_numpy(np.matmul(x.contiguous().numpy(), self.wt_np))
        return torch.mm(x, self.wt)
