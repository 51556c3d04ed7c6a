"""/health and /metrics."""

from __future__ import annotations

from aiohttp import web
from redis.exceptions import RedisError

from gateway.api.http import json_response
from gateway.keys import METRICS, POOL, REDIS, SCHEDULER


def add_routes(app: web.Application) -> None:
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)


async def health(request: web.Request) -> web.Response:
    """200 when Redis answers and at least one worker is healthy; the body says which."""
    pool = request.app[POOL]
    try:
        redis_ok = bool(await request.app[REDIS].ping())
    except (OSError, RedisError):
        redis_ok = False
    workers = {w.url: {"healthy": w.healthy, "breaker": w.breaker.state, "in_flight": w.in_flight,
                       "load": w.load} for w in pool.workers.values()}
    ok = redis_ok and any(w.healthy for w in pool.workers.values())
    return json_response({"status": "ok" if ok else "degraded", "redis": redis_ok, "workers": workers},
                         status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    text = request.app[METRICS].render(request.app[POOL], len(request.app[SCHEDULER].runs))
    return web.Response(text=text, content_type="text/plain", charset="utf-8")
