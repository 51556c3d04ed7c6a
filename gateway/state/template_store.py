"""Templates and the transitions learned per template, in Redis.

  ag:tpl:{name}               the template graph (JSON)
  ag:tpls                     set of template names
  ag:tpl:{name}:transitions   hash "prev\\x1fnext" → count
  ag:tpl:{name}:last:{agent}  the agent's previous node (1 h TTL), to learn prev → next
({name} here stands for the name, no braces: no transaction or script spans these keys, so they need
no shared hash tag on a Redis Cluster.)
"""

from __future__ import annotations

import orjson
from redis.asyncio import Redis

SEP = "\x1f"
LAST_TTL_S = 3600


class TemplateStore:
    def __init__(self, redis: Redis, prefix: str = "ag"):
        self.r = redis
        self.p = prefix

    async def save(self, name: str, graph: dict) -> None:
        """The graph, then its name in the set (two slots on a Redis Cluster: two idempotent writes)."""
        await self.r.set(f"{self.p}:tpl:{name}", orjson.dumps(graph))
        await self.r.sadd(f"{self.p}:tpls", name)

    async def get(self, name: str) -> dict | None:
        raw = await self.r.get(f"{self.p}:tpl:{name}")
        return orjson.loads(raw) if raw else None

    async def names(self) -> list[str]:
        return sorted(await self.r.smembers(f"{self.p}:tpls"))

    async def record_call(self, name: str, agent: str, node: str) -> None:
        """A call tagged (template, node) by `agent`: learn the transition from its previous node."""
        prev = await self.r.set(f"{self.p}:tpl:{name}:last:{agent}", node, ex=LAST_TTL_S, get=True)
        if prev:
            await self.r.hincrby(f"{self.p}:tpl:{name}:transitions", f"{prev}{SEP}{node}", 1)

    async def record_transitions(self, name: str, pairs: list[tuple[str, str]]) -> None:
        if not pairs:
            return
        async with self.r.pipeline(transaction=False) as pipe:
            for prev, node in pairs:
                pipe.hincrby(f"{self.p}:tpl:{name}:transitions", f"{prev}{SEP}{node}", 1)
            await pipe.execute()

    async def transitions(self, name: str) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for key, count in (await self.r.hgetall(f"{self.p}:tpl:{name}:transitions")).items():
            prev, _, node = key.partition(SEP)
            out.setdefault(prev, {})[node] = int(count)
        return out
