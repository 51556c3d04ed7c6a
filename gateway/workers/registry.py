"""The worker registry in Redis (common/kvwire.py): who is alive now.

A worker keeps its key (wire.worker_key) alive with a TTL and lists its URL in
wire.WORKER_IDS; a URL whose key has expired belongs to a worker that stopped
heartbeating, so readers prune it (from WORKER_IDS, and from the older
WORKERS_SET that the worker also joined). The prune is a script so that
it removes a URL only while its key is still missing: a worker that
re-registers between our read and our prune is never pruned.

`RegistryDiscovery` feeds the gateway's worker pool from it, beside the static
--worker-urls and the older set, which keep working as before.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import NamedTuple

from redis.asyncio import Redis

from common.kvwire import WORKER_IDS, WORKERS_SET, WorkerInfo, worker_key
from gateway.workers.pool import WorkerPool

log = logging.getLogger("agentgate.gateway")

# KEYS: the two sets, then the worker keys; ARGV: the URLs in the worker keys' order. All in the registry's
# hash slot (wire.py), so the script runs on a Redis Cluster too.
_PRUNE = """
local pruned = 0
for i, url in ipairs(ARGV) do
  if redis.call('exists', KEYS[i + 2]) == 0 then
    pruned = pruned + redis.call('srem', KEYS[1], url)
    redis.call('srem', KEYS[2], url)
  end
end
return pruned
"""


class Registry(NamedTuple):
    live: dict[str, WorkerInfo]  # url → what the worker registered
    expired: list[str]  # URLs listed whose key is gone (pruned when read with prune=True)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def read_registry(redis: Redis, *, prune: bool = True) -> Registry:
    """Live workers and expired URLs; one SMEMBERS and one MGET (plus the prune when something expired)."""
    urls = sorted(_text(u) for u in await redis.smembers(WORKER_IDS))
    if not urls:
        return Registry({}, [])
    raws = await redis.mget([worker_key(u) for u in urls])
    live: dict[str, WorkerInfo] = {}
    expired: list[str] = []
    for url, raw in zip(urls, raws):
        if raw is None:
            expired.append(url)
            continue
        try:
            info = WorkerInfo.loads(raw)
        except (ValueError, TypeError) as exc:  # a foreign or broken entry: not a worker we can use
            log.warning("ignoring the malformed registry entry %s: %s", worker_key(url), exc)
            continue
        if info.url != url:
            log.warning("registry entry %s names %r; using the key's URL", worker_key(url), info.url)
        live[url] = info
    if prune and expired:
        await redis.eval(_PRUNE, len(expired) + 2, WORKER_IDS, WORKERS_SET, *[worker_key(u) for u in expired],
                         *expired)
    return Registry(live, expired)


class RegistryDiscovery:
    """Adds registered workers to the pool and removes the ones whose registration lapsed.

    A URL leaves the pool only if it came from the TTL registry and is now in
    no source at all (not static, not in the older set): an operator's own
    list always wins.
    """

    def __init__(self, pool: WorkerPool, static_urls: Iterable[str] = ()):
        self.pool = pool
        self.static = {u.rstrip("/") for u in static_urls}
        self.registered: set[str] = set()  # URLs the TTL registry listed as live at the last sync

    async def sync(self, redis: Redis, older_set: Iterable[str] = ()) -> Registry:
        registry = await read_registry(redis)
        live = {u.rstrip("/") for u in registry.live}
        older = {u.rstrip("/") for u in older_set} - {u.rstrip("/") for u in registry.expired}
        self.pool.sync(live | older)
        for url in self.registered - live - older - self.static:
            log.info("worker %s left the registry (its heartbeat key expired)", url)
            self.pool.remove(url)
        self.registered = live
        return registry
