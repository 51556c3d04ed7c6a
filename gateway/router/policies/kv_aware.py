"""kv_aware: the worker where the call is cheapest, counting its cached prefix.

cost(w) = uncached_prefill_tokens(w) × prefill_weight + load(w) × load_weight.
uncached_prefill_tokens = prompt tokens minus the tokens of the longest leading
run of the prompt's block hashes that `w` holds. Until the KV index (worker KV
events in Redis) exists, "holds" means "this gateway sent that prefix there"
(PrefixRecord); a KV index plugs in through the same `matched_blocks(hashes, url)`
look-up, tier credit included. load(w) is the requests on w, each worth
`load_weight` prefill tokens (a running decode slows a prefill by about that).
Ties go to the least-loaded worker, then rotate, so equal workers share the work.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gateway.router.base import RouteRequest, RoutingPolicy, WorkerView
from gateway.router.prefix_record import PrefixRecord


class PrefixSource(Protocol):
    def matched_blocks(self, hashes: Sequence[int], url: str) -> float: ...


class KVAwarePolicy(RoutingPolicy):
    name = "kv_aware"
    uses_prefix = True

    def __init__(self, prefix: PrefixSource | None = None, *, prefill_weight: float = 1.0,
                 load_weight: float = 64.0):
        self.record = PrefixRecord()
        self.prefix = prefix or self.record
        self.prefill_weight = prefill_weight
        self.load_weight = load_weight
        self._turn = 0

    def cost(self, req: RouteRequest, w: WorkerView) -> float:
        cached = self.prefix.matched_blocks(req.block_hashes, w.url) * req.block_size
        uncached = max(req.prompt_tokens - cached, 0)
        return uncached * self.prefill_weight + w.load * self.load_weight

    def choose(self, req: RouteRequest, workers: Sequence[WorkerView]) -> str:
        self._turn += 1
        ordered = sorted(workers, key=lambda w: w.url)
        n = len(ordered)
        best = min(range(n), key=lambda i: (self.cost(req, ordered[i]), ordered[i].load, (i - self._turn) % n))
        return ordered[best].url

    def on_routed(self, req: RouteRequest, url: str) -> None:
        self.record.add(req.block_hashes, url)

    def on_removed(self, url: str) -> None:
        self.record.forget_worker(url)
