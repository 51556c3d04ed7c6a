"""The gateway's bounded request reads (size, time) and its error middleware: common/http.py's OpenAI-shaped
errors, plus Retry-After for Redis outages and no-worker 503s, and request metrics."""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web
from redis.exceptions import RedisError

from common.http import error_response, json_response, parse_json
from gateway.errors import (
    NoWorkerError,
    PayloadTooLargeError,
    RequestTimeoutError,
    StateUnavailableError,
)
from gateway.keys import CONFIG, METRICS

log = logging.getLogger("agentgate.gateway")


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
    except RequestTimeoutError as exc:  # what is left of a trickled body is not waited for
        status = exc.status
        resp = error_response(request, exc)
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
        return error_response(request, exc)
    except (asyncio.CancelledError, ConnectionResetError):
        status = 499
        raise
    except Exception as exc:  # AgentGateErrors with their status; a bug as a 500 with a message
        resp = error_response(request, exc)
        status = resp.status
        return resp
    finally:
        metrics = request.app[METRICS]
        metrics.requests.inc(route=route, status=status)
        metrics.latency.observe(time.perf_counter() - t0, route=route)
