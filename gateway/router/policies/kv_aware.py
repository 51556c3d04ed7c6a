"""kv_aware: the worker that holds the call's prefix, unless that one is clearly busier;
else the worker where the call is cheapest.

1. Affinity. The worker whose own KV pool (L1) holds the longest leading run of the
   prompt's block hashes — or that was sent that prefix within the last few seconds,
   so it is being computed there — gets the call when that run covers at least
   `affinity_threshold` of the prompt, as long as it carries at most `balance_slack`
   requests more than the least-loaded candidate. Calls that share a prefix meet on
   one worker, where they batch together over one copy of it: one prefill, one block
   of memory per shared block, and one read of it per decode step for all of them
   (the engine's shared-prefix attention). Spread over workers by load alone, each
   worker loads its own copy (an L3 read or a recompute) and reads it once per call
   per step: more work for the same tokens. SGLang's cache_aware router does the same
   on an approximate tree of what it routed; here "holds" comes from the workers' KV
   events where they publish them.
2. Cost, when no worker has such affinity (or the holder is clearly busier):
   cost(w) = uncached_prefill_tokens(w) × prefill_weight + load(w) × load_weight.
   uncached = prompt tokens minus the tokens of the leading run of the prompt's block
   hashes that `w` can serve, each block credited by its tier (L1 whole, L2/L3 a
   little less: gateway/router/prefix_source.py); without a KV index, the gateway's record
   of what it sent where (PrefixRecord). load(w) is the requests on w, each worth
   `load_weight` prefill tokens (a running decode slows a prefill by about that).
   Ties go to the least-loaded worker, then rotate, so equal workers share the work.
3. Finish time, where the workers publish what their steps cost (engine/step_cost.py:
   seconds ≈ step_s + row_s × decode rows + token_s × prompt tokens) and the call's output
   budget is known. The call's cost on w is the seconds it adds to the completion times of
   all of w's requests, its own included:
     own(w)    = max_tokens × (step_s + (load(w) + 1) × row_s) + uncached(w) × token_s,
     others(w) = load(w) × (uncached(w) × token_s + max_tokens × row_s),
   the second being the delay its prompt tokens and decode rows put into the steps of the
   load(w) requests already there. The holder of step 1 keeps the call unless another
   worker's cost is more than `spread_margin` lower; without a holder the lowest cost wins.
   Where rows and tokens are cheap next to a step (a GPU reads its weights once per step for
   every row) both terms hardly grow with load and the holder keeps the call; where they are
   not (a CPU computes every row), a call's prefill would stall every decode on a busy
   holder, so an idle worker takes part of a stage — its copy of the shared prefix comes
   from L3. A worker that has not yet learned its step costs (it has run too few steps,
   say an idle one that has not been sent anything) is taken to cost what its peers do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from statistics import median
from typing import Protocol

from gateway.config import AFFINITY_THRESHOLD, BALANCE_SLACK, SPREAD_MARGIN
from gateway.router.base import RouteRequest, RoutingPolicy, WorkerView
from gateway.router.prefix_record import PrefixRecord

class PrefixSource(Protocol):
    def matched_blocks(self, hashes: Sequence[int], url: str) -> float: ...

    def resident_blocks(self, hashes: Sequence[int], url: str) -> int: ...


class KVAwarePolicy(RoutingPolicy):
    name = "kv_aware"
    uses_prefix = True

    def __init__(self, prefix: PrefixSource | None = None, *, prefill_weight: float = 1.0,
                 load_weight: float = 64.0, affinity_threshold: float = AFFINITY_THRESHOLD,
                 balance_slack: int = BALANCE_SLACK, spread_margin: float = SPREAD_MARGIN):
        self.record = PrefixRecord()
        self.prefix = prefix or self.record
        self.prefill_weight = prefill_weight
        self.load_weight = load_weight
        self.affinity_threshold = affinity_threshold
        self.balance_slack = balance_slack
        self.spread_margin = spread_margin
        self._turn = 0

    def use_prefix_source(self, prefix: PrefixSource) -> None:
        """Read what workers hold from `prefix` (the KV index) from now on; the record stays for the rest."""
        self.prefix = prefix

    @classmethod
    def from_config(cls, config=None) -> "KVAwarePolicy":
        if config is None:
            return cls()
        return cls(affinity_threshold=config.affinity_threshold, balance_slack=config.balance_slack,
                   spread_margin=config.spread_margin)

    def cost(self, req: RouteRequest, w: WorkerView) -> float:
        return self.uncached(req, w) * self.prefill_weight + w.load * self.load_weight

    def uncached(self, req: RouteRequest, w: WorkerView) -> float:
        return max(req.prompt_tokens - self.prefix.matched_blocks(req.block_hashes, w.url) * req.block_size, 0)

    def finish_s(self, req: RouteRequest, w: WorkerView) -> float | None:
        """Seconds until `req` would be done on `w` (own(w) in step 3 above), or None when that cannot be told."""
        if req.max_tokens <= 0 or w.step_s <= 0 and w.token_s <= 0 and w.per_row <= 0:
            return None
        return req.max_tokens * (w.step_s + (w.load + 1) * w.per_row) + self.uncached(req, w) * w.token_s

    def added_s(self, req: RouteRequest, w: WorkerView) -> float | None:
        """Seconds `req` adds to the completion times of w's requests and its own (step 3), or None."""
        own = self.finish_s(req, w)
        if own is None:
            return None
        return own + w.load * (self.uncached(req, w) * w.token_s + req.max_tokens * w.per_row)

    def holder(self, req: RouteRequest, workers: Sequence[WorkerView]) -> str | None:
        """The worker with affinity for `req` (step 1 above), or None."""
        if not req.block_hashes or req.prompt_tokens <= 0:
            return None
        resident = {w.url: self.prefix.resident_blocks(req.block_hashes, w.url) for w in workers}
        best = max(workers, key=lambda w: (resident[w.url], -w.load))
        if resident[best.url] * req.block_size < self.affinity_threshold * req.prompt_tokens:
            return None
        if best.load - min(w.load for w in workers) > self.balance_slack:
            return None
        return best.url

    @staticmethod
    def with_peer_costs(workers: Sequence[WorkerView]) -> list[WorkerView]:
        """`workers` by url, those that publish no step costs given their peers' (the median of each)."""
        ordered = sorted(workers, key=lambda w: w.url)
        known = {w.url: w for w in ordered if w.step_s > 0 or w.token_s > 0 or w.per_row > 0}
        if not known or len(known) == len(ordered):
            return ordered
        peers = known.values()
        peer = dict(step_s=median(w.step_s for w in peers), token_s=median(w.token_s for w in peers),
                    row_s=median(w.per_row for w in peers))
        return [w if w.url in known else replace(w, **peer) for w in ordered]

    def choose(self, req: RouteRequest, workers: Sequence[WorkerView]) -> str:
        self._turn += 1
        url = self.holder(req, workers) if len(workers) > 1 else None
        ordered = self.with_peer_costs(workers)
        n = len(ordered)
        added = {w.url: self.added_s(req, w) for w in ordered} if n > 1 else {}
        if added and all(a is not None for a in added.values()):
            best = min(range(n), key=lambda i: (added[ordered[i].url], ordered[i].load, (i - self._turn) % n))
            cheapest = ordered[best].url
            if url is None or added[cheapest] < added[url] * (1.0 - self.spread_margin):
                return cheapest
            return url
        if url is not None:
            return url
        best = min(range(n), key=lambda i: (self.cost(req, ordered[i]), ordered[i].load, (i - self._turn) % n))
        return ordered[best].url

    def on_routed(self, req: RouteRequest, url: str) -> None:
        self.record.add(req.block_hashes, url)

    def on_removed(self, url: str) -> None:
        self.record.forget_worker(url)
