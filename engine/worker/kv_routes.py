"""The worker's KV API (ours; docs/architecture.md §3.1 "Worker API"): GET /kv/stats, and POST /kv/prefetch,
/kv/pin and /kv/unpin over a prefix given as text or token ids (engine/runtime/kv_api.py does the work)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from common.errors import BadRequestError, NotFoundError
from common.http import json_response, read_json
from engine.runtime.engine import Engine
from engine.worker.bridge import ENGINE
from engine.worker.protocol import KVPrefix, PinRequest, PrefetchRequest, UnpinRequest, parse


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/kv/stats", kv_stats)
    r.add_post("/kv/prefetch", kv_prefetch)
    r.add_post("/kv/pin", kv_pin)
    r.add_post("/kv/unpin", kv_unpin)


async def kv_stats(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    return json_response(await asyncio.wrap_future(engine.call(engine.kv.stats)))


def _prefix_ids(engine: Engine, body: KVPrefix) -> list[int]:
    if (body.text is None) == (body.input_ids is None):
        raise BadRequestError("Either text or input_ids should be provided (exactly one).", param="text")
    ids = engine.tokenizer.encode(body.text) if body.text is not None else body.input_ids
    if not ids:
        raise BadRequestError("the prefix is empty", param="input_ids" if body.text is None else "text")
    engine.validate(ids, 0)
    return ids


async def kv_prefetch(request: web.Request) -> web.Response:
    """Make a prefix's full blocks resident in L1 (promote, load or compute at low
    priority); with pin_ttl_s, pin them. Cheap when they already are."""
    engine = request.app[ENGINE]
    body = parse(PrefetchRequest, await read_json(request))
    ids = _prefix_ids(engine, body)
    result = await asyncio.wrap_future(engine.kv.prefetch(ids, body.cache_salt, body.pin_ttl_s, body.priority))
    return json_response(result)


async def kv_pin(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    body = parse(PinRequest, await read_json(request))
    if body.pin_id is not None:  # a renewal: the pin's id, not its prefix again
        if body.text is not None or body.input_ids is not None:
            raise BadRequestError("give pin_id or the prefix, not both", param="pin_id")
        pin = await asyncio.wrap_future(engine.call(lambda: engine.kv.renew(body.pin_id, body.ttl_s)))
        if pin is None:
            raise NotFoundError(f"no such pin ({body.pin_id}); it may have expired", param="pin_id")
        return json_response(pin)
    ids = _prefix_ids(engine, body)
    pin = await asyncio.wrap_future(engine.call(lambda: engine.kv.pin(ids, body.cache_salt, body.ttl_s)))
    if pin is None:
        raise NotFoundError("no block of this prefix is resident in L1; prefetch it first "
                            "(POST /kv/prefetch with pin_ttl_s)", param="input_ids")
    return json_response(pin)


async def kv_unpin(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    body = parse(UnpinRequest, await read_json(request))
    if body.pin_id is not None:
        if body.text is not None or body.input_ids is not None:
            raise BadRequestError("give pin_id or the prefix, not both", param="pin_id")
        ids = None
    else:
        ids = _prefix_ids(engine, body)
    dropped = await asyncio.wrap_future(engine.call(lambda: engine.kv.unpin(body.pin_id, ids, body.cache_salt)))
    if dropped is None:
        raise NotFoundError(f"no such pin ({body.pin_id or 'for this prefix'}); it may have expired", param="pin_id")
    return json_response({"pin_id": dropped, "unpinned": True})
