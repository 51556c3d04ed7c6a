"""/health, the probes /health/live and /health/ready, and /metrics."""

from __future__ import annotations

import asyncio

from aiohttp import web
from redis.exceptions import RedisError

from common.errors import ServiceUnavailableError
from common.http import json_response
from common.prom import CONTENT_TYPE as PROM_CONTENT_TYPE
from gateway.keys import CONFIG, METRICS, POOL, REDIS, SCHEDULER

READY_PING_S = 1.0  # a Redis that takes longer to answer a PING is as good as down for serving


def add_routes(app: web.Application) -> None:
    app.router.add_get("/health", health)
    app.router.add_get("/health/live", live)
    app.router.add_get("/health/ready", ready)
    app.router.add_get("/metrics", metrics)


async def live(request: web.Request) -> web.Response:
    """The process serves requests: always 200 (a liveness probe restarts only what this fails)."""
    return json_response({"status": "live"})


async def ready(request: web.Request) -> web.Response:
    """200 when Redis answers and a worker is healthy; else a 503 saying which is missing. A gateway
    that is not ready keeps its calls in flight and its workflows; it only should get no new traffic."""
    reasons = []
    try:
        await asyncio.wait_for(request.app[REDIS].ping(), READY_PING_S)
    except (OSError, RedisError, asyncio.TimeoutError) as exc:
        reasons.append(f"Redis is unreachable ({type(exc).__name__}: {exc})")
    if not request.app[POOL].healthy():
        reasons.append("no healthy worker")
    if reasons:
        err = ServiceUnavailableError("not ready: " + "; ".join(reasons), code="not_ready")
        return json_response(err.to_json(), status=err.status,
                             headers={"Retry-After": str(request.app[CONFIG].retry_after_s)})
    return json_response({"status": "ready"})


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
    body = request.app[METRICS].render(request.app[POOL], len(request.app[SCHEDULER].runs))
    return web.Response(body=body, headers={"Content-Type": PROM_CONTENT_TYPE})
