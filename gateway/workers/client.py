"""HTTP client for one worker speaking the SGLang native + OpenAI APIs.

Every failure leaves as WorkerCallError: retryable for what another worker may
serve (connection refused/reset, timeout, 5xx), not retryable for a 4xx (the
request itself is bad, and every worker would say so).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import orjson

from gateway.errors import WorkerCallError

PROBE_TIMEOUT = aiohttp.ClientTimeout(total=5)
# /get_load and the info endpoints wait for the engine thread between two model steps, which on a
# loaded CPU worker takes seconds; hanging up early would only make the worker do the work for nobody.
INFO_TIMEOUT = aiohttp.ClientTimeout(total=30)


class WorkerClient:
    def __init__(self, url: str, session: aiohttp.ClientSession, request_timeout_s: float = 600.0):
        self.url = url.rstrip("/")
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=request_timeout_s, sock_connect=5)

    async def health(self) -> bool:
        try:
            async with self.session.get(self.url + "/health", timeout=PROBE_TIMEOUT) as r:
                return r.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False

    async def get_json(self, path: str):
        try:
            async with self.session.get(self.url + path, timeout=INFO_TIMEOUT) as r:
                if r.status != 200:
                    raise WorkerCallError(self.url, f"GET {path} -> {r.status}", status=r.status)
                return orjson.loads(await r.read())
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, orjson.JSONDecodeError) as exc:
            raise WorkerCallError(self.url, f"GET {path}: {exc!r}") from exc

    async def get_load(self) -> dict:
        """The worker's /get_load summed over its data-parallel ranks."""
        data = await self.get_json("/get_load")
        ranks = data if isinstance(data, list) else [data]
        total: dict[str, int] = {}
        for rank in ranks:
            for key in ("num_reqs", "num_waiting_reqs", "num_tokens"):
                total[key] = total.get(key, 0) + int(rank.get(key, 0) or 0)
        return total

    async def abort(self, rid: str) -> None:
        try:
            async with self.session.post(self.url + "/abort_request", data=orjson.dumps({"rid": rid}),
                                         headers={"Content-Type": "application/json"}, timeout=PROBE_TIMEOUT):
                pass
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            pass  # the worker is gone; nothing left to abort

    async def open(self, method: str, path: str, body: bytes | None = None) -> aiohttp.ClientResponse:
        """Send a request; the caller reads (or streams) and releases the response.
        Raises WorkerCallError for a failed connection or a 5xx, which are not the caller's fault."""
        try:
            resp = await self.session.request(method, self.url + path, data=body, timeout=self.timeout,
                                              headers={"Content-Type": "application/json"} if body else None)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise WorkerCallError(self.url, f"{method} {path}: {exc!r}") from exc
        if resp.status >= 500:
            payload = await resp.read()
            resp.release()
            raise WorkerCallError(self.url, f"{method} {path} -> {resp.status}", status=resp.status, body=payload)
        return resp

    async def stream_json(self, path: str, body: dict) -> AsyncIterator[dict]:
        """POST a streaming request and yield each SSE `data:` JSON object until [DONE]."""
        resp = await self.open("POST", path, orjson.dumps(body))
        try:
            if resp.status != 200:
                raise WorkerCallError(self.url, f"POST {path} -> {resp.status}", status=resp.status,
                                      retryable=False, body=await resp.read())
            async for line in _sse_lines(resp, self.url):
                if line == b"[DONE]":
                    return
                yield orjson.loads(line)
        finally:
            resp.release()


async def _sse_lines(resp: aiohttp.ClientResponse, url: str) -> AsyncIterator[bytes]:
    try:
        async for raw in resp.content:
            line = raw.strip()
            if line.startswith(b"data:"):
                yield line[5:].strip()
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:  # ValueError: line too long
        raise WorkerCallError(url, f"stream broken: {exc!r}") from exc
