"""Housekeeping in Redis that no request triggers (an aiohttp cleanup_ctx, every `janitor_interval`):

- listing entries (ag:workflows, per tenant) of workflows whose keys expired after --retention;
- KV event streams of a model that no live registered worker serves and that got nothing for kv_stale_s;
- consumer groups on those streams whose replica is gone: no live marker (ag:kv:group:{name}, which
  each replica's janitor renews for its own group) and no read by any of its consumers for kv_stale_s.
Each pass is bounded (store.SWEEP_BATCH ids per listing); a failed pass is logged and tried again.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from common.kvwire import PREFIX, stream_key
from gateway.keys import CONFIG, REDIS, STORE
from gateway.keys import KV_CONSUMER
from gateway.workers.registry import read_registry

log = logging.getLogger("agentgate.gateway.janitor")
MAX_INTERVAL_S = 300.0


def _ms(stream_id: str) -> float:
    return int(str(stream_id).split("-", 1)[0]) / 1000.0


def group_marker(group: str) -> str:
    return f"{PREFIX}:kv:group:{group}"


async def sweep_kv(redis: Redis, stale_s: float, own_group: str, now: float | None = None) -> tuple[int, int]:
    """Renew this replica's group marker, then remove what is gone; (streams deleted, groups destroyed)."""
    now = time.time() if now is None else now
    await redis.set(group_marker(own_group), "1", px=int(stale_s * 2000))
    live_models = {info.model for info in (await read_registry(redis, prune=False)).live.values()}
    prefix = stream_key("")
    streams = groups = 0
    async for key in redis.scan_iter(match=prefix + "*", count=200, _type="stream"):
        key = key.decode() if isinstance(key, bytes) else key
        info = await redis.xinfo_stream(key)
        last = info.get("last-generated-id") or info.get("last_generated_id") or "0-0"
        if key[len(prefix):] not in live_models and now - _ms(last) > stale_s:
            await redis.delete(key)
            streams += 1
            continue
        for group in await redis.xinfo_groups(key):
            name = group["name"].decode() if isinstance(group["name"], bytes) else group["name"]
            if name == own_group or await redis.exists(group_marker(name)):
                continue
            consumers = await redis.xinfo_consumers(key, name)
            idle_s = min((c["idle"] / 1000.0 for c in consumers), default=None)
            if idle_s is None:  # never read: as old as the last entry it was given
                idle_s = now - _ms(group.get("last-delivered-id") or "0-0")
            if idle_s > stale_s:
                await redis.xgroup_destroy(key, name)
                groups += 1
    return streams, groups


async def janitor_ctx(app: web.Application):
    config = app[CONFIG]
    periods = [p for p in (config.retention_s, config.kv_stale_s) if p]
    interval = min(max(min(periods) / 2, 0.5), MAX_INTERVAL_S) if periods else MAX_INTERVAL_S
    stopping = asyncio.Event()

    async def loop() -> None:
        while True:
            try:
                await asyncio.wait_for(stopping.wait(), interval)
                return
            except asyncio.TimeoutError:
                pass
            try:
                await run_once(app)
            except (OSError, RedisError) as exc:
                log.warning("janitor pass failed (Redis: %s); next in %.0f s", exc, interval)

    task = asyncio.create_task(loop(), name="gateway-janitor")
    yield
    stopping.set()
    await asyncio.gather(task, return_exceptions=True)


async def run_once(app: web.Application) -> None:
    config, store = app[CONFIG], app[STORE]
    if config.retention_s:
        older = time.time() - config.retention_s
        swept = await store.sweep_listing(None, older)
        for tenant in await store.listed_tenants():
            swept += await store.sweep_listing(tenant, older)
        if swept:
            log.info("janitor: %d expired workflows left the listings", swept)
    if config.kv_stale_s:
        streams, groups = await sweep_kv(app[REDIS], config.kv_stale_s, app[KV_CONSUMER].group)
        if streams or groups:
            log.info("janitor: removed %d KV event streams and %d consumer groups of gone workers/replicas",
                     streams, groups)
