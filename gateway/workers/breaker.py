"""A per-worker circuit breaker.

closed → calls flow. `failure_threshold` consecutive failures (or one hard
failure: connection refused, worker gone) open it: no calls for `cooldown_s`.
After the cooldown it is half-open: the health probe (or one call) may go
through; a success closes it, a failure opens it again for another cooldown.
"""

from __future__ import annotations

import time
from collections.abc import Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    def __init__(self, failure_threshold: int = 3, cooldown_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic):
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return CLOSED
        return HALF_OPEN if self.clock() - self.opened_at >= self.cooldown_s else OPEN

    def allows_calls(self) -> bool:
        return self.state == CLOSED

    def may_probe(self) -> bool:
        return self.state != OPEN

    def record_success(self) -> None:
        self.failures = 0
        self.opened_at = None

    def record_failure(self, hard: bool = False) -> None:
        self.failures += 1
        if hard or self.failures >= self.failure_threshold or self.opened_at is not None:
            self.opened_at = self.clock()
