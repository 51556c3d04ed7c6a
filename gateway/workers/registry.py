"""The worker registry in Redis (common/kvwire.py): who is alive now, and whom operators added.

One registry: wire.worker_ids() lists every registered URL, and each has its key
(wire.worker_key). A worker keeps its key alive with a TTL (heartbeat); a URL
whose key has expired belongs to a worker that stopped heartbeating, so readers
prune it. The prune is a script so that it removes a URL only while its key is
still missing: a worker that re-registers between our read and our prune is
never pruned. An operator's registration (POST /admin/workers, `register`) is
a key of kind wire.OPERATOR without a TTL, so it stays until `unregister` (or
until a worker at that URL deregisters itself on stop, taking the URL along).
A gateway whose key prefix is not the workers' keeps its operators' entries in
its own prefix's registry (same layout), so gateways sharing one Redis under
different prefixes do not see each other's.

`RegistryDiscovery` feeds the gateway's worker pool from it, beside the static
--worker-urls.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import NamedTuple

from redis.asyncio import Redis

from common.kvwire import OPERATOR, PREFIX, WorkerInfo, worker_ids, worker_key
from gateway.workers.pool import WorkerPool

log = logging.getLogger("agentgate.gateway")

# KEYS: the set, then the worker keys; ARGV: the URLs in the worker keys' order. All in the registry's
# hash slot (wire.py), so the script runs on a Redis Cluster too.
_PRUNE = """
local pruned = 0
for i, url in ipairs(ARGV) do
  if redis.call('exists', KEYS[i + 1]) == 0 then
    pruned = pruned + redis.call('srem', KEYS[1], url)
  end
end
return pruned
"""
# An operator's registration leaves: its key (never a live worker's) and its URL. KEYS: the set, the
# worker key; ARGV: the URL. 1 if the URL was registered (a live worker's stays: it registered itself).
_UNREGISTER = """
local raw = redis.call('get', KEYS[2])
if raw and cjson.decode(raw)['kind'] ~= ARGV[2] then return redis.call('sismember', KEYS[1], ARGV[1]) end
redis.call('del', KEYS[2])
return redis.call('srem', KEYS[1], ARGV[1])
"""


class Registry(NamedTuple):
    live: dict[str, WorkerInfo]  # url → what the worker registered
    expired: list[str]  # URLs listed whose key is gone (pruned when read with prune=True)
    operator: list[str] = []  # URLs an operator registered


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def read_registry(redis: Redis, *, prune: bool = True, prefix: str = PREFIX) -> Registry:
    """Live workers, operators' entries and expired URLs; one SMEMBERS and one MGET (plus the prune when
    something expired)."""
    ids = worker_ids(prefix)
    urls = sorted(_text(u) for u in await redis.smembers(ids))
    if not urls:
        return Registry({}, [])
    raws = await redis.mget([worker_key(u, prefix) for u in urls])
    live: dict[str, WorkerInfo] = {}
    expired: list[str] = []
    operator: list[str] = []
    for url, raw in zip(urls, raws):
        if raw is None:
            expired.append(url)
            continue
        try:
            info = WorkerInfo.loads(raw)
        except (ValueError, TypeError) as exc:  # a foreign or broken entry: not a worker we can use
            log.warning("ignoring the malformed registry entry %s: %s", worker_key(url, prefix), exc)
            continue
        if info.kind == OPERATOR:
            operator.append(url)
            continue
        if info.url != url:
            log.warning("registry entry %s names %r; using the key's URL", worker_key(url, prefix), info.url)
        live[url] = info
    if prune and expired:
        await redis.eval(_PRUNE, len(expired) + 1, ids, *[worker_key(u, prefix) for u in expired], *expired)
    return Registry(live, expired, operator)


async def register(redis: Redis, url: str, prefix: str = PREFIX) -> None:
    """An operator's registration of `url` (no TTL; a worker already registered there keeps its entry)."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(worker_key(url, prefix), WorkerInfo(url=url, model="", kind=OPERATOR).dumps(), nx=True)
        pipe.sadd(worker_ids(prefix), url)
        await pipe.execute()


async def unregister(redis: Redis, url: str, prefix: str = PREFIX) -> bool:
    """Drop an operator's registration of `url`; whether `url` was registered."""
    return bool(await redis.eval(_UNREGISTER, 2, worker_ids(prefix), worker_key(url, prefix), url, OPERATOR))


class RegistryDiscovery:
    """Adds registered workers to the pool and removes the ones whose registration lapsed.

    A URL leaves the pool only if it came from the TTL registry and is now in
    no source at all (not static, not an operator's entry): an operator's own
    list always wins.
    """

    def __init__(self, pool: WorkerPool, static_urls: Iterable[str] = (), prefix: str = PREFIX):
        self.pool = pool
        self.static = {u.rstrip("/") for u in static_urls}
        self.prefix = prefix  # the gateway's key prefix: where its operators' entries are
        self.registered: set[str] = set()  # URLs the TTL registry listed as live at the last sync

    async def sync(self, redis: Redis) -> Registry:
        registry = await read_registry(redis)
        live = {u.rstrip("/") for u in registry.live}
        own = registry if self.prefix == PREFIX else await read_registry(redis, prefix=self.prefix)
        added = {u.rstrip("/") for u in own.operator}
        self.pool.sync(live | added)
        for url in self.registered - live - added - self.static:
            log.info("worker %s left the registry (its heartbeat key expired)", url)
            self.pool.remove(url)
        self.registered = live
        return registry
