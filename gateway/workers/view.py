"""What the router sees of a worker: a snapshot the pool makes of its load and step costs for each
routing decision (gateway/router/base.py gives it to the policies)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerView:
    url: str
    in_flight: int = 0  # calls this gateway has open on the worker
    num_reqs: int = 0  # running + waiting requests the worker reported in /get_load
    num_waiting: int = 0
    # what a step costs the worker (engine/step_cost.py, from its /get_load): seconds ≈ step_s + row_s ×
    # decode rows + token_s × prompt tokens in the step; 0 where the worker does not say, and a worker that
    # publishes no row_s (an older one) costs a row as a prompt token
    step_s: float = 0.0
    token_s: float = 0.0
    row_s: float | None = None

    @property
    def per_row(self) -> float:
        """What one decode row adds to a step."""
        return self.token_s if self.row_s is None else self.row_s

    @property
    def load(self) -> int:
        """Requests on the worker; max() because num_reqs already counts ours once polled."""
        return max(self.in_flight, self.num_reqs)
