"""HTTP helpers both servers use (aiohttp): JSON bodies, SSE responses, bearer tokens, and OpenAI-shaped
errors. The worker's error middleware is `error_middleware` itself; the gateway's adds its own cases
(Redis, Retry-After, metrics) around `error_response` (gateway/api/http.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from aiohttp import web

from common.errors import AgentGateError, BadRequestError, error_body

log = logging.getLogger("agentgate.http")


def json_response(data: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)


def parse_json(raw: bytes, *, required: bool = False) -> Any:
    """The JSON of a request body; None for an empty one unless `required` (then a 400)."""
    if not raw:
        if required:
            raise BadRequestError("the request body is empty; a JSON object is expected")
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"malformed JSON body: {exc}") from None


async def read_json(request: web.Request) -> Any:
    """A worker's request body as JSON: an empty or malformed body is a 400."""
    return parse_json(await request.read(), required=True)


async def open_sse(request: web.Request) -> web.StreamResponse:
    """A prepared event-stream response (write common/sse.py events to it)."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    return resp


def bearer_token(headers) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    scheme, _, token = (headers.get("Authorization") or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def error_response(request: web.Request, exc: BaseException) -> web.Response:
    """The OpenAI-shaped reply for an error a handler raised: its own status for AgentGateErrors and
    aiohttp's HTTP errors, a 500 that says what broke for anything else (a bug)."""
    if isinstance(exc, AgentGateError):
        retry = getattr(exc, "retry_after", None)  # 429s and 503s say when to come back
        return json_response(exc.to_json(), status=exc.status, headers={"Retry-After": str(retry)} if retry else None)
    if isinstance(exc, web.HTTPException):
        kind = "not_found_error" if exc.status == 404 else "invalid_request_error"
        return json_response(error_body(exc.reason or str(exc), kind, exc.status), status=exc.status)
    log.error("unhandled error on %s", request.path, exc_info=exc)
    return json_response(error_body(f"internal error: {exc}", "internal_error", 500), status=500)


@web.middleware
async def error_middleware(request: web.Request, handler):
    """Every error leaves as OpenAI-shaped JSON with its 4xx/5xx status."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(request, exc)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as exc:
        return error_response(request, exc)
