"""HTTP client for one worker speaking the SGLang native + OpenAI APIs.

Every call goes over the worker's keep-alive connection pool (http1.py; the
proxy's hot path cannot afford aiohttp's client). Every failure leaves as
WorkerCallError: retryable for what another worker may serve (connection
refused/reset, timeout, 5xx), not retryable for a 4xx (the request itself is
bad, and every worker would say so), whose message keeps the worker's reason.

A streamed call has two deadlines instead of one for the whole call: its first
token within `first_token_s` of sending it (a worker that accepts and never
answers), then each next one within `inter_token_s` (a stream that stalls).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import NamedTuple

import aiohttp
import orjson

from common.sse import SSEParser
from common.tracing import outgoing_headers
from gateway.errors import WorkerCallError
from gateway.workers.http1 import ConnectionPool, Response

PROBE_TIMEOUT_S = 5.0
# /get_load and the info endpoints wait for the engine thread between two model steps, which on a
# loaded CPU worker takes seconds; hanging up early would only make the worker do the work for nobody.
INFO_TIMEOUT_S = 30.0


class StreamTimeouts(NamedTuple):
    first_token_s: float
    inter_token_s: float


class WorkerClient:
    def __init__(self, url: str, session: aiohttp.ClientSession | None = None, request_timeout_s: float = 600.0,
                 api_key: str | None = None):
        self.url = url.rstrip("/")
        self.session = session  # for callers that need aiohttp itself; this class does not use it
        self.request_timeout_s = request_timeout_s
        # the worker's --api-key, on every request (SGLang's Bearer auth)
        self.connections = ConnectionPool(self.url, headers={"Authorization": f"Bearer {api_key}"} if api_key else None)

    def close(self) -> None:
        """Close the idle connections (calls in flight close theirs when released)."""
        self.connections.close()

    async def health(self) -> bool:
        try:
            resp = await self.connections.request("GET", "/health", timeout_s=PROBE_TIMEOUT_S)
            try:
                await resp.read()
            finally:
                resp.release()
        except OSError:
            return False
        return resp.status == 200

    async def get_json(self, path: str):
        try:
            resp = await self.connections.request("GET", path, timeout_s=INFO_TIMEOUT_S)
            try:
                payload = await resp.read()
            finally:
                resp.release()
            if resp.status != 200:
                raise WorkerCallError(self.url, f"GET {path} -> {resp.status}", status=resp.status)
            return orjson.loads(payload)
        except (OSError, orjson.JSONDecodeError) as exc:
            raise WorkerCallError(self.url, f"GET {path}: {exc!r}") from exc

    async def get_load(self) -> dict:
        """The worker's /get_load summed over its data-parallel ranks."""
        data = await self.get_json("/get_load")
        ranks = data if isinstance(data, list) else [data]
        total: dict = {}
        for rank in ranks:
            for key in ("num_reqs", "num_waiting_reqs", "num_tokens", "num_prefetch_reqs"):
                total[key] = total.get(key, 0) + int(rank.get(key, 0) or 0)
            for key in ("step_s", "row_s", "token_s"):  # a rank's step costs (engine/step_cost.py): the slowest rank's
                value = rank.get(key)
                if isinstance(value, (int, float)) and value >= 0:
                    total[key] = max(total.get(key, 0.0), float(value))
        return total

    async def abort(self, rid: str) -> None:
        try:
            resp = await self.connections.request("POST", "/abort_request", orjson.dumps({"rid": rid}),
                                                  timeout_s=PROBE_TIMEOUT_S)
            try:
                await resp.read()
            finally:
                resp.release()
        except OSError:
            pass  # the worker is gone; nothing left to abort

    async def open(self, method: str, path: str, body: bytes | None = None, *,
                   timeout_s: float | None = None) -> Response:
        """Send a request; the caller reads (or streams) and releases the response. Raises
        WorkerCallError for a failed connection, no reply within `timeout_s` (default: the whole
        call's request_timeout_s) or a 5xx, which are not the caller's fault; reading the body
        raises OSError if the reply breaks off (TimeoutError once the deadline passes)."""
        timeout_s = self.request_timeout_s if timeout_s is None else timeout_s
        try:
            resp = await self.connections.request(method, path, body, timeout_s=timeout_s, headers=outgoing_headers())
        except TimeoutError as exc:
            raise WorkerCallError(self.url, f"{method} {path}: timed out: no reply within {timeout_s:g} s",
                                  timed_out=True) from exc
        except OSError as exc:
            raise WorkerCallError(self.url, f"{method} {path}: {exc!r}") from exc
        if resp.status >= 500:
            try:
                payload = await resp.read()
            except OSError:
                payload = b""
            finally:
                resp.release()
            raise WorkerCallError(self.url, f"{method} {path} -> {resp.status}{reason(payload)}", status=resp.status,
                                  body=payload)
        return resp

    async def read(self, resp: Response, what: str) -> bytes:
        """The whole body of `resp`; a reply that breaks off is a retryable WorkerCallError."""
        try:
            return await resp.read()
        except OSError as exc:
            raise WorkerCallError(self.url, f"{what}: reply broken: {exc!r}") from exc

    async def stream_json(self, path: str, body: dict, timeouts: StreamTimeouts) -> AsyncIterator[dict]:
        """POST a streaming request and yield each SSE `data:` JSON object until [DONE]."""
        resp = await self.open("POST", path, orjson.dumps(body), timeout_s=timeouts.first_token_s)
        try:
            if resp.status != 200:
                payload = await self.read(resp, f"POST {path}")
                raise WorkerCallError(self.url, f"POST {path} -> {resp.status}{reason(payload)}", status=resp.status,
                                      retryable=False, body=payload)
            started = False
            try:
                async for line in _sse_data(resp):
                    if line == "[DONE]":
                        return
                    started = True
                    resp.extend(timeouts.inter_token_s)
                    try:
                        yield orjson.loads(line)
                    except orjson.JSONDecodeError as exc:
                        raise WorkerCallError(self.url, f"POST {path}: malformed stream data {line[:80]!r}") from exc
            except TimeoutError as exc:
                what = f"no token for {timeouts.inter_token_s:g} s between tokens" if started else \
                    f"no first token within {timeouts.first_token_s:g} s"
                raise WorkerCallError(self.url, f"POST {path}: timed out: {what}", timed_out=True) from exc
            except OSError as exc:
                raise WorkerCallError(self.url, f"POST {path}: stream broken: {exc!r}") from exc
        finally:
            resp.release()


def reason(payload: bytes | None) -> str:
    """": <the worker's message>" from an error reply's body (OpenAI-shaped, or FastAPI's detail), or ""."""
    if not payload:
        return ""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return ": " + payload[:300].decode(errors="replace")
    if isinstance(data, dict):
        err = data.get("error")
        message = err.get("message") if isinstance(err, dict) else err if isinstance(err, str) else data.get("detail")
        if message:
            return f": {str(message)[:500]}"
    return ""


async def _sse_data(resp: Response) -> AsyncIterator[str]:
    """The data of each event, however the chunks cut the lines."""
    parser = SSEParser()
    async for chunk in resp.iter_chunks():
        for msg in parser.feed(chunk):
            yield msg.data
    last = parser.close()
    if last is not None:
        yield last.data
