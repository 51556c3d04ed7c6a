"""Admin-only routes (a key with the admin scope; without keys, anyone on loopback): the worker
pool (list, add, remove) and flushing every worker's prefix cache."""

from __future__ import annotations

from urllib.parse import urlsplit

from aiohttp import web

from common.errors import BadRequestError, NotFoundError
from common.http import json_response
from gateway.api.http import read_json
from gateway.auth.middleware import require_admin
from gateway.errors import WorkerCallError
from gateway.keys import CONFIG, POOL, REDIS
from gateway.workers import registry


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/workers", list_workers)
    app.router.add_post("/admin/workers", add_worker)
    app.router.add_delete("/admin/workers", remove_worker)
    app.router.add_post("/admin/flush_cache", flush_cache)


def _url(value) -> str:
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequestError("url must be a worker's http(s) base URL", param="url")
    return value.rstrip("/")


async def list_workers(request: web.Request) -> web.Response:
    require_admin(request)
    data = [{"url": w.url, "healthy": w.healthy, "breaker": w.breaker.state, "in_flight": w.in_flight,
             "load": w.load} for w in request.app[POOL].workers.values()]
    return json_response({"object": "list", "data": data})


async def add_worker(request: web.Request) -> web.Response:
    """Register a worker (in Redis, so every replica finds it) and probe it now."""
    require_admin(request)
    body = await read_json(request)
    url = _url(body.get("url") if isinstance(body, dict) else None)
    await registry.register(request.app[REDIS], url, request.app[CONFIG].key_prefix)
    pool = request.app[POOL]
    await pool.probe(pool.add(url))
    return json_response({"url": url, "healthy": pool.workers[url].healthy}, status=201)


async def remove_worker(request: web.Request) -> web.Response:
    require_admin(request)
    url = _url(request.query.get("url"))
    registered = await registry.unregister(request.app[REDIS], url, request.app[CONFIG].key_prefix)
    pool = request.app[POOL]
    if not registered and url not in pool.workers:
        raise NotFoundError(f"worker {url} is not in the pool", param="url", code="worker_not_found")
    pool.remove(url)
    return json_response({"url": url, "removed": True})


async def flush_cache(request: web.Request) -> web.Response:
    """POST /flush_cache on every worker; the body says how each answered."""
    require_admin(request)
    out = {}
    for w in list(request.app[POOL].workers.values()):
        try:
            resp = await w.client.open("POST", "/flush_cache", b"")
            try:
                await w.client.read(resp, "POST /flush_cache")
            finally:
                resp.release()
            out[w.url] = resp.status
        except WorkerCallError as exc:
            out[w.url] = str(exc)
    return json_response({"flushed": out})
