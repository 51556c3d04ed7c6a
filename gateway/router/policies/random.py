"""random: a uniformly random candidate (seedable, for reproducible ablations)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from gateway.router.base import RouteRequest, RoutingPolicy, WorkerView


class RandomPolicy(RoutingPolicy):
    name = "random"

    def __init__(self, seed: int | None = None):
        self._rng = random.Random(seed)

    def choose(self, req: RouteRequest, workers: Sequence[WorkerView]) -> str:
        return self._rng.choice(sorted(w.url for w in workers))
