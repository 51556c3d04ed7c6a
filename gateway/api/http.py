"""JSON in, JSON and SSE out, and the error middleware that makes every error OpenAI-shaped."""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
from aiohttp import web
from redis.exceptions import RedisError

from engine.errors import AgentGateError, BadRequestError, error_body
from gateway.errors import NoWorkerError, PayloadTooLargeError, RequestTimeoutError, StateUnavailableError
from gateway.keys import CONFIG, METRICS

log = logging.getLogger("agentgate.gateway")


def json_response(data, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)


async def read_body(request: web.Request) -> bytes:
    """The body, read within body_timeout_s: a client trickling it is cut off with a 408."""
    config = request.app[CONFIG]
    limit = config.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLargeError(f"the request body is {request.content_length} bytes; the limit is {limit}")
    try:
        return await asyncio.wait_for(request.read(), config.body_timeout_s)
    except asyncio.TimeoutError:
        raise RequestTimeoutError(f"the request body did not arrive within {config.body_timeout_s:g} s") from None
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLargeError(f"the request body exceeds the limit of {limit} bytes") from None


async def read_json(request: web.Request):
    return parse_json(await read_body(request))


def parse_json(raw: bytes):
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"malformed JSON body: {exc}") from None


async def open_sse(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    return resp


@web.middleware
async def error_middleware(request: web.Request, handler):
    """Errors leave as {"error": {...}} with their status; every request is counted and timed."""
    t0 = time.perf_counter()
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except (NoWorkerError, StateUnavailableError) as exc:
        status = exc.status
        return json_response(exc.to_json(), status=exc.status, headers={"Retry-After": str(exc.retry_after)})
    except RedisError as exc:  # a read that Redis did not answer: the client may ask again
        log.warning("%s %s: Redis: %s", request.method, request.path, exc)
        err = StateUnavailableError(f"the state store (Redis) is unavailable: {exc}",
                                    retry_after=request.app[CONFIG].retry_after_s)
        status = err.status
        return json_response(err.to_json(), status=err.status, headers={"Retry-After": str(err.retry_after)})
    except AgentGateError as exc:
        status = exc.status
        retry = getattr(exc, "retry_after", None)  # 429s and 503s say when to come back
        resp = json_response(exc.to_json(), status=exc.status, headers={"Retry-After": str(retry)} if retry else None)
        if isinstance(exc, RequestTimeoutError):  # what is left of a trickled body is not waited for
            resp.force_close()
            await resp.prepare(request)
            await resp.write_eof()
            if request.transport is not None:
                request.transport.close()  # after what was written is flushed
        return resp
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        status = exc.status
        kind = "not_found_error" if exc.status == 404 else "invalid_request_error"
        return json_response(error_body(exc.reason or str(exc), kind, exc.status), status=exc.status)
    except (asyncio.CancelledError, ConnectionResetError):
        status = 499
        raise
    except Exception as exc:  # a bug: a 500 with a message, not a dropped connection
        log.exception("unhandled error on %s", request.path)
        return json_response(error_body(f"internal error: {exc}", "internal_error", 500), status=500)
    finally:
        metrics = request.app[METRICS]
        metrics.requests.inc(route=route, status=status)
        metrics.latency.observe(time.perf_counter() - t0, route=route)
