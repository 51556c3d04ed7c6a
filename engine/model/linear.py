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
  gemv  — the same, one OpenBLAS matrix-vector product per row: OpenBLAS
          leaves its GEMV kernel for a packing GEMM at two rows, which made a
          2–4-row speculative verify cost about twice a decode step; as rows of
          GEMVs it costs a fraction more than one;
  pad8  — numpy with the rows padded by zeros to a multiple of eight: the same
          OpenBLAS ran six rows slower than eight, so a batch of 5–7 decodes
          ran at half speed;
(the timings behind both are in BENCHMARKS.md "Design measurements")
  torch — everything on torch with all threads.
Non-fp32 or non-CPU weights always use torch.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

# A step with M rows uses the plan of the nearest bucket at or above M: every row count up to 16 (OpenBLAS's
# speed jumps between neighbours there), then powers of two.
_BUCKETS = (*range(1, 17), 32, 64, 128)
_GEMV_MAX_ROWS = 4  # beyond this many rows a GEMM beats one GEMV per row wherever measured


class MatmulPlan:
    """Which backend each row-count bucket uses: 'numpy', 'gemv', 'pad8' or 'torch'."""

    def __init__(self, choice: dict[int, str] | None = None, threads: int | None = None,
                 times: dict[int, float] | None = None):
        self.choice = choice or {b: "torch" for b in _BUCKETS}
        self.threads = threads or torch.get_num_threads()
        self.times = times or {}  # bucket → seconds of one layer's projections in its chosen mode (probed)
        # The projections are a small part of a decode step on a CPU (attention, norms, the LM head and Python
        # are the rest: 2.4 of 17 ms in fp32 at 2 threads), so a row's cost is weighed against a whole step:
        # `layers` = how many layer-sized projections a step runs (its layers + the LM head in layer units),
        # `step_s` = what a one-row step really takes (the engine measures it, see observe_step).
        self.layers = 0.0
        self.step_s: float | None = None

    def observe_step(self, seconds: float) -> None:
        """A one-row step's forward time: the baseline extra rows are weighed against (a moving average)."""
        self.step_s = seconds if self.step_s is None else 0.9 * self.step_s + 0.1 * seconds

    def projection_time(self, m: int) -> float:
        """One layer's projections for m rows, from the probe (interpolated between buckets)."""
        points = sorted(self.times.items())
        for (m0, t0), (m1, t1) in zip(points, points[1:]):
            if m <= m1:
                return t0 + (t1 - t0) * (m - m0) / (m1 - m0)
        return points[-1][1] * m / points[-1][0]

    def relative_cost(self, m: int) -> float:
        """What a step of m rows costs against a step of one row: one row's step plus the extra rows'
        projections (the probe's timings × layers), over one row's step. Before a one-row step has been
        timed (or without `layers`), the projections alone; without timings (GPU, a forced backend) rows
        are nearly free."""
        if m <= 1:
            return 1.0
        if 1 not in self.times:
            return 1.0 + 0.02 * (m - 1)
        extra = self.projection_time(m) - self.times[1]
        if self.step_s is None or not self.layers:
            return 1.0 + extra / self.times[1]
        return 1.0 + self.layers * extra / self.step_s

    def backend(self, m: int) -> str:
        buckets = sorted(self.choice)
        for b in buckets:
            if m <= b:
                return self.choice[b]
        return self.choice[buckets[-1]]

    def enter(self, m: int) -> str:
        """Set torch's thread count for a step of m rows and return its mode."""
        mode = self.backend(m)
        torch.set_num_threads(1 if mode in _OPENBLAS else self.threads)
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
            timings[m] = {"torch": _time(lambda: [torch.mm(x, w) for x, w in zip(xs, weights)])}
            torch.set_num_threads(1)
            modes = ["numpy", *(["gemv"] if 1 < m <= _GEMV_MAX_ROWS else []),
                     *(["pad8"] if m > _GEMV_MAX_ROWS and m % 8 else [])]
            for mode in modes:
                timings[m][mode] = _time(lambda: [_OPENBLAS[mode](x, w) for x, w in pairs])
            choice[m] = min(timings[m], key=timings[m].get)
        # past the GEMV sizes, OpenBLAS only below the first size where torch wins: one crossover, no flapping
        crossed = False
        for m in (b for b in _BUCKETS if b > _GEMV_MAX_ROWS):
            crossed = crossed or choice[m] == "torch"
            if crossed:
                choice[m] = "torch"
        return cls(choice, threads, {m: timings[m][choice[m]] for m in _BUCKETS})

    def describe(self) -> str:
        return ",".join(f"m<={b}:{c}" for b, c in self.choice.items())


def _padded(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x [M, in] @ w [in, out] with M padded by zero rows to a multiple of 8; the first M rows of the product."""
    m = x.shape[0]
    rows = np.zeros((-(-m // 8) * 8, x.shape[1]), dtype=x.dtype)
    rows[:m] = x
    return (rows @ w)[:m]


def _gemv_rows(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x [M, in] @ w [in, out] as M matrix-vector products (OpenBLAS's GEMV kernel for each row)."""
    out = np.empty((x.shape[0], w.shape[1]), dtype=np.result_type(x, w))
    for i in range(x.shape[0]):
        np.matmul(x[i], w, out=out[i])
    return out


# the modes whose projections run on OpenBLAS (torch on 1 thread beside them): x [M, in] @ w [in, out]
_OPENBLAS = {"numpy": np.matmul, "gemv": _gemv_rows, "pad8": _padded}


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
        if mode in _OPENBLAS:
            return torch.from_numpy(_OPENBLAS[mode](x.contiguous().numpy(), self.wt_np))
        return torch.mm(x, self.wt)
