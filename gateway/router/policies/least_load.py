"""least_load: the candidate with the fewest requests on it.

Load is max(calls this gateway has open there, running + waiting requests the
worker last reported in /get_load); ties go to the URL that sorts first among
those with the fewest waiting requests. Ignores prefixes.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.router.base import RouteRequest, RoutingPolicy, WorkerView


class LeastLoadPolicy(RoutingPolicy):
    name = "least_load"

    def choose(self, req: RouteRequest, workers: Sequence[WorkerView]) -> str:
        return min(workers, key=lambda w: (w.load, w.num_waiting, w.url)).url
