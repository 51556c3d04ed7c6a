"""round_robin: the candidates in turn.

Keeps a counter over the sorted URLs of the whole pool seen so far and takes the
next candidate at or after it, so workers that are momentarily full are skipped
without breaking the rotation. Blind to prefixes and load: an ablation baseline.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.router.base import RouteRequest, RoutingPolicy, WorkerView


class RoundRobinPolicy(RoutingPolicy):
    name = "round_robin"

    def __init__(self):
        self._next = 0

    def choose(self, req: RouteRequest, workers: Sequence[WorkerView]) -> str:
        urls = sorted(w.url for w in workers)
        url = urls[self._next % len(urls)]
        self._next += 1
        return url
