"""Per-node record of what agent awareness did for a workflow, in Redis (read by
GET /v1/workflows/{id} on any replica).

  ag:wf:{id}:prefetch   hash node → JSON:
     predicted      its whole knowable prefix was prefetched: P(it runs) reached the threshold
     static_only    only its static prefix was (P under the threshold; no pin)
     probability    P(node runs) when it was last planned; steps: steps-to-execution then
     worker         where its prefix was prefetched (and the call asked to go)
     prefix_tokens  tokens of the prefix sent; resident_tokens: full blocks the worker holds now
     from           {l1, l2, l3, computed}: where those tokens came from, summed over the prefetches
     prefetches     prefetch requests sent (token pipelining sends one per few grown blocks;
                    pin renewals count too); pipelined: one carried a still-streaming output
     pinned_tokens  tokens pinned; pin_held_s: how long pins were held, summed
     dispatched_to  the worker the call went to; late: its prefetch had not finished by then
     cached_tokens  cached_tokens the worker reported for the call: the tokens it did not prefill
     hit            cached_tokens covered the prefetched prefix
     outcome        "used" (the call ran), "wasted" (it did not: branch skipped, workflow ended),
                    "pending"
     caller_pins    for an external node: the upstream conversations pinned while it ran
                    [{node, worker, pinned_tokens, pin_held_s}]
     error          the last prefetch failure, if any
"""

from __future__ import annotations

import orjson
from redis.asyncio import Redis


class PrefetchLog:
    def __init__(self, redis: Redis, prefix: str = "ag"):
        self.r = redis
        self.p = prefix

    def _key(self, wf_id: str) -> str:
        return f"{self.p}:wf:{wf_id}:prefetch"

    async def save(self, wf_id: str, records: dict[str, dict]) -> None:
        if records:
            await self.r.hset(self._key(wf_id), mapping={k: orjson.dumps(v) for k, v in records.items()})

    async def all(self, wf_id: str) -> dict[str, dict]:
        raw = await self.r.hgetall(self._key(wf_id))
        return {k: orjson.loads(v) for k, v in raw.items()}


def summarize(records: dict[str, dict]) -> dict:
    """Workflow-level totals of the per-node records."""
    predicted = [r for r in records.values() if r.get("predicted")]
    used = sum(r.get("outcome") == "used" for r in predicted)
    wasted = sum(r.get("outcome") == "wasted" for r in predicted)
    hits = [r for r in records.values() if r.get("hit") is not None]
    return {
        "predicted": len(predicted), "used": used, "wasted": wasted,
        "precision": used / (used + wasted) if used + wasted else None,
        "hit_rate": sum(bool(r["hit"]) for r in hits) / len(hits) if hits else None,
        "prefetched_tokens": sum(sum((r.get("from") or {}).values()) for r in records.values()),
        "computed_tokens": sum((r.get("from") or {}).get("computed", 0) for r in records.values()),
        "wasted_tokens": sum((r.get("from") or {}).get("computed", 0) for r in records.values()
                             if r.get("outcome") == "wasted"),
        "saved_tokens": sum(r.get("cached_tokens") or 0 for r in records.values() if r.get("prefix_tokens")),
        "pin_seconds": round(sum(r.get("pin_held_s") or 0.0 for r in records.values()), 3),
    }
