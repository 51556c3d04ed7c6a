"""What the gateway learns per template to predict the next calls, in Redis.

  ag:tpl:{name}:visits          hash node → finished runs in which the node finished
  ag:tpl:{name}:edges           hash "source\\x1ftarget" → finished runs that took that edge
  ag:tpl:{name}:latency         hash node → {"s": mean seconds, "n": samples} (EWMA): an LLM node's
                                call, an external node's tool time, and "gap:{node}" — the time
                                a client-driven agent spends between a call for that node and its next
  ag:tpl:{name}:prefix:{node}   {"ids": token ids, "n": calls}: the longest prefix every tagged call
                                for that node shared so far, cut after a special token
Transition counts between tagged calls stay in state/template_store.py. Reads are
cached for `cache_s` per template, so planning on every node event costs no
round trip.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import orjson
from redis.asyncio import Redis

SEP = "\x1f"
EWMA_WEIGHT = 0.3  # weight of a new sample once there are a few
PREFIX_TTL_S = 7 * 24 * 3600


@dataclass(frozen=True)
class Learned:
    """What finished runs of one template taught (LearningStore keeps it in Redis; gateway/planner/predict.py
    reads it)."""

    visits: dict[str, int] = field(default_factory=dict)  # node → runs in which it finished
    taken: dict[tuple[str, str], int] = field(default_factory=dict)  # (source, target) → runs that took the edge
    latency_s: dict[str, float] = field(default_factory=dict)  # node → mean duration (an external node: tool time)


class LearningStore:
    def __init__(self, redis: Redis, prefix: str = "ag", cache_s: float = 2.0):
        self.r = redis
        self.p = prefix
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, Learned]] = {}

    def _k(self, name: str, suffix: str) -> str:
        return f"{self.p}:tpl:{name}:{suffix}"

    # -- workflow runs ---------------------------------------------------------------------------
    async def learned(self, name: str | None) -> Learned:
        if not name:
            return Learned()
        hit = self._cache.get(name)
        if hit is not None and time.monotonic() - hit[0] < self.cache_s:
            return hit[1]
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._k(name, "visits"))
            pipe.hgetall(self._k(name, "edges"))
            pipe.hgetall(self._k(name, "latency"))
            visits, edges, latency = await pipe.execute()
        taken = {}
        for key, count in edges.items():
            source, _, target = key.partition(SEP)
            taken[(source, target)] = int(count)
        learned = Learned(visits={k: int(v) for k, v in visits.items()}, taken=taken,
                          latency_s={k: orjson.loads(v)["s"] for k, v in latency.items()})
        self._cache[name] = (time.monotonic(), learned)
        return learned

    async def record_run(self, name: str, finished: list[str], taken: list[tuple[str, str]],
                         durations: dict[str, float]) -> None:
        """One finished run: the nodes that finished, the edges it took, how long its nodes took."""
        async with self.r.pipeline(transaction=False) as pipe:
            for node in finished:
                pipe.hincrby(self._k(name, "visits"), node, 1)
            for source, target in taken:
                pipe.hincrby(self._k(name, "edges"), f"{source}{SEP}{target}", 1)
            await pipe.execute()
        await self.record_latencies(name, durations)
        self._cache.pop(name, None)

    async def record_latencies(self, name: str, durations: dict[str, float]) -> None:
        if not durations:
            return
        key = self._k(name, "latency")
        old = await self.r.hmget(key, list(durations))
        fresh = {}
        for (node, seconds), raw in zip(durations.items(), old):
            prev = orjson.loads(raw) if raw else {"s": seconds, "n": 0}
            weight = max(EWMA_WEIGHT, 1.0 / (prev["n"] + 1))  # a plain mean for the first few samples
            fresh[node] = orjson.dumps({"s": prev["s"] + weight * (seconds - prev["s"]), "n": prev["n"] + 1})
        await self.r.hset(key, mapping=fresh)
        self._cache.pop(name, None)

    async def latency(self, name: str, node: str) -> float | None:
        raw = await self.r.hget(self._k(name, "latency"), node)
        return orjson.loads(raw)["s"] if raw else None

    # -- client-driven calls ------------------------------------------------------------------------
    async def static_prefix(self, name: str, node: str) -> tuple[list[int], int]:
        """(the prefix tagged calls for `node` shared so far, how many calls taught it)."""
        raw = await self.r.get(self._k(name, f"prefix:{node}"))
        if not raw:
            return [], 0
        data = orjson.loads(raw)
        return data["ids"], data["n"]

    async def save_static_prefix(self, name: str, node: str, ids: list[int], calls: int) -> None:
        await self.r.set(self._k(name, f"prefix:{node}"), orjson.dumps({"ids": ids, "n": calls}), ex=PREFIX_TTL_S)
