"""HTTP client for one worker speaking the SGLang native + OpenAI APIs.

Every call goes over the worker's keep-alive connection pool (http1.py; the
proxy's hot path cannot afford aiohttp's client). Every failure leaves as
WorkerCallError: retryable for what another worker may serve (connection
refused/reset, timeout, 5xx), not retryable for a 4xx (the request itself is
bad, and every worker would say so).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import orjson

from gateway.errors import WorkerCallError
from gateway.workers.http1 import ConnectionPool, Response

PROBE_TIMEOUT_S = 5.0
# /get_load and the info endpoints wait for the engine thread between two model steps, which on a
# loaded CPU worker takes seconds; hanging up early would only make the worker do the work for nobody.
INFO_TIMEOUT_S = 30.0


class WorkerClient:
    def __init__(self, url: str, session: aiohttp.ClientSession | None = None, request_timeout_s: float = 600.0):
        self.url = url.rstrip("/")
        self.session = session  # for callers that need aiohttp itself; this class does not use it
        self.request_timeout_s = request_timeout_s
        self.connections = ConnectionPool(self.url)

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
        total: dict[str, int] = {}
        for rank in ranks:
            for key in ("num_reqs", "num_waiting_reqs", "num_tokens", "num_prefetch_reqs"):
                total[key] = total.get(key, 0) + int(rank.get(key, 0) or 0)
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

    async def open(self, method: str, path: str, body: bytes | None = None) -> Response:
        """Send a request; the caller reads (or streams) and releases the response. Raises
        WorkerCallError for a failed connection or a 5xx, which are not the caller's fault;
        reading the body raises OSError if the reply breaks off."""
        try:
            resp = await self.connections.request(method, path, body, timeout_s=self.request_timeout_s)
        except OSError as exc:
            raise WorkerCallError(self.url, f"{method} {path}: {exc!r}") from exc
        if resp.status >= 500:
            try:
                payload = await resp.read()
            except OSError:
                payload = b""
            finally:
                resp.release()
            raise WorkerCallError(self.url, f"{method} {path} -> {resp.status}", status=resp.status, body=payload)
        return resp

    async def read(self, resp: Response, what: str) -> bytes:
        """The whole body of `resp`; a reply that breaks off is a retryable WorkerCallError."""
        try:
            return await resp.read()
        except OSError as exc:
            raise WorkerCallError(self.url, f"{what}: reply broken: {exc!r}") from exc

    async def stream_json(self, path: str, body: dict) -> AsyncIterator[dict]:
        """POST a streaming request and yield each SSE `data:` JSON object until [DONE]."""
        resp = await self.open("POST", path, orjson.dumps(body))
        try:
            if resp.status != 200:
                raise WorkerCallError(self.url, f"POST {path} -> {resp.status}", status=resp.status,
                                      retryable=False, body=await self.read(resp, f"POST {path}"))
            async for line in _sse_data(resp, self.url):
                if line == b"[DONE]":
                    return
                yield orjson.loads(line)
        finally:
            resp.release()


async def _sse_data(resp: Response, url: str) -> AsyncIterator[bytes]:
    """The payload of each `data:` line, however the chunks cut the lines."""
    pending = b""
    try:
        async for chunk in resp.iter_chunks():
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()  # an unfinished line waits for the next chunk
            for line in lines:
                if line.startswith(b"data:"):
                    yield line[5:].strip()
    except OSError as exc:
        raise WorkerCallError(url, f"stream broken: {exc!r}") from exc
    if pending.startswith(b"data:"):
        yield pending[5:].strip()
