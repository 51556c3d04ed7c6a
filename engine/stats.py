"""Counters, gauges and histograms the engine keeps, rendered as Prometheus text
under SGLang's metric names (`sglang:*`) so dashboards built for SGLang work."""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from dataclasses import dataclass, field

TTFT_BUCKETS = (0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400)
E2E_BUCKETS = (0.1, 0.2, 0.4, 0.8, 1, 2, 5, 10, 20, 40, 60, 120, 300, 600, 1200, 2400)
ITL_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 8.0)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1


@dataclass
class EngineStats:
    prompt_tokens: int = 0
    generation_tokens: int = 0
    cached_tokens: int = 0
    num_requests: int = 0
    num_aborted: int = 0
    num_finished: int = 0
    spec_verifies: int = 0
    spec_proposed: int = 0
    spec_accepted: int = 0
    # the engine's work, step by step: what the forward passes computed and how long they took
    steps: int = 0
    forward_seconds: float = 0.0
    prefill_computed: int = 0  # prompt tokens run through the model for requests
    prefetch_computed: int = 0  # prompt tokens run through the model for background prefetches
    decode_rows: int = 0  # one per decoding request per step (plus its draft rows when speculating)
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    e2e: Histogram = field(default_factory=lambda: Histogram(E2E_BUCKETS))
    itl: Histogram = field(default_factory=lambda: Histogram(ITL_BUCKETS))
    _recent: deque = field(default_factory=lambda: deque(maxlen=256))  # (time, tokens generated) per step
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record_step(self, generated: int, duration: float, *, prefill: int = 0, prefetch: int = 0,
                    decode_rows: int = 0) -> None:
        with self.lock:
            self.generation_tokens += generated
            self.steps += 1
            self.forward_seconds += duration
            self.prefill_computed += prefill
            self.prefetch_computed += prefetch
            self.decode_rows += decode_rows
            self._recent.append((time.monotonic(), generated))
            if generated:
                self.itl.observe(duration)

    def gen_throughput(self, window_s: float = 10.0) -> float:
        """Tokens generated per second over the last window_s seconds."""
        now = time.monotonic()
        with self.lock:
            recent = [(t, n) for t, n in self._recent if now - t <= window_s]
        if not recent:
            return 0.0
        span = max(now - recent[0][0], 1e-3)
        return sum(n for _, n in recent) / span

    def spec_accept_rate(self) -> float:
        return self.spec_accepted / self.spec_proposed if self.spec_proposed else 0.0

    def spec_accept_length(self) -> float:
        """Tokens per verify step (accepted drafts + the model's own token)."""
        return (self.spec_accepted + self.spec_verifies) / self.spec_verifies if self.spec_verifies else 0.0
