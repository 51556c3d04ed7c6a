"""The simulated GPU's clock: each step ends its predicted time (÷ speedup) after it could start,
and how far it actually ended behind that (lag) is recorded.

A step could start when the previous one ended or, after the engine idled, when the idle wait
ended (a request arrived). Host work between steps (scheduling, sampling, the HTTP edge) overlaps
the simulated GPU's work, as SGLang's overlap scheduler hides it; when the host cannot keep up
(its work, or the other workers of a sim-cluster sharing the cores, exceed the step) the step ends
late and the lag says by how much. A benchmark whose median lag exceeds 5% of the median step
time reports the run invalid (scripts/bench_scale.py).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque

RECENT_STEPS = 4096  # steps the medians are taken over


class IdleMark(threading.Event):
    """The engine loop's wake-up event, noting when the loop last returned from an idle wait."""

    def __init__(self) -> None:
        super().__init__()
        self.idle_end = 0.0

    def wait(self, timeout: float | None = None) -> bool:
        woke = super().wait(timeout)
        self.idle_end = time.monotonic()
        return woke


class SimClock:
    def __init__(self, speedup: float = 1.0, sleep=time.sleep, now=time.monotonic):
        if speedup <= 0:
            raise ValueError("--speedup must be positive")
        self.speedup = speedup
        self._sleep = sleep
        self._now = now
        self._last_end = 0.0
        self.lock = threading.Lock()
        self.steps = 0
        self.predicted_total = 0.0  # simulated seconds (the step model's), summed
        self.wall_total = 0.0  # wall seconds each step took from the moment it could start
        self.lag_total = 0.0
        self.lag_max = 0.0
        self._recent: deque[tuple[float, float]] = deque(maxlen=RECENT_STEPS)  # (step seconds, lag)

    def run_step(self, predicted: float, idle_end: float) -> float:
        """Sleep until the step's scheduled end; return its lag (seconds, wall)."""
        start = max(self._last_end, idle_end)
        due = start + predicted / self.speedup
        now = self._now()
        if due > now:
            self._sleep(due - now)
        end = self._now()
        lag = max(0.0, end - due)
        self._last_end = end
        with self.lock:
            self.steps += 1
            self.predicted_total += predicted
            self.wall_total += end - start
            self.lag_total += lag
            self.lag_max = max(self.lag_max, lag)
            self._recent.append((predicted / self.speedup, lag))
        return lag

    def snapshot(self) -> dict:
        with self.lock:
            recent = list(self._recent)
            out = {"steps": self.steps, "predicted_seconds": self.predicted_total, "wall_seconds": self.wall_total,
                   "lag_seconds": self.lag_total, "lag_max_seconds": self.lag_max, "speedup": self.speedup}
        out["median_step_seconds"] = statistics.median(s for s, _ in recent) if recent else 0.0
        out["median_lag_seconds"] = statistics.median(lag for _, lag in recent) if recent else 0.0
        return out
