"""What the sync and async clients share: URLs, JSON bodies, error mapping, retry decisions.

Both clients build an `HttpRequest` with `request()`, send it their own way
(urllib in a thread-free blocking call, aiohttp on the caller's loop), and hand
the answer to `decode()`, which returns the JSON or raises the typed error of
agents/agentgate/errors.py. Between attempts they ask `RetryPolicy.delay()` how long to
wait, or whether to stop. What is retried:

- a 503 (no worker can take it now) or a 429 (the tenant's bounds): every method,
  since the gateway refused before doing anything; the wait honours its Retry-After;
- a connection that could not be opened: every method (nothing was sent);
- a connection lost or timed out after sending: GET only, since a POST may have
  taken effect (a retried submit would start a second workflow).
"""

from __future__ import annotations

import email.utils
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import orjson

from agentgate.errors import GatewayUnreachable, from_response
from agentgate.events import Event, SSEDecoder

DEFAULT_URL = "http://127.0.0.1:8000"
USER_AGENT = "agentgate-sdk/0.1"


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: backoff_s · 2^attempt (capped, ±jitter), never shorter than Retry-After."""

    max_retries: int = 3
    backoff_s: float = 0.2
    max_backoff_s: float = 10.0
    jitter: float = 0.1

    def delay(self, attempt: int, *, retry_after: float | None = None) -> float | None:
        """Seconds to wait before retry number attempt+1 (attempt counts from 0); None: give up."""
        if attempt >= self.max_retries:
            return None
        wait = min(self.backoff_s * (2 ** attempt), self.max_backoff_s)
        wait *= 1 + random.uniform(-self.jitter, self.jitter)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_backoff_s))
        return max(wait, 0.0)


@dataclass(frozen=True)
class HttpRequest:
    method: str
    url: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def idempotent(self) -> bool:
        return self.method in ("GET", "HEAD")


def base_url(url: str | None) -> str:
    url = (url or os.environ.get("AGENTGATE_URL") or DEFAULT_URL).rstrip("/")
    if not url.startswith(("http://", "https://")):
        url = "http://" + url
    return url


def request(base: str, method: str, path: str, *, json: Any = None, query: dict | None = None,
            headers: dict | None = None) -> HttpRequest:
    url = base + path
    query = {k: v for k, v in (query or {}).items() if v is not None}
    if query:
        url += "?" + urlencode(query)
    hdrs = {"Accept": "application/json", "User-Agent": USER_AGENT, **(headers or {})}
    body = None
    if json is not None:
        body = orjson.dumps(json, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
        hdrs["Content-Type"] = "application/json"
    return HttpRequest(method, url, body, hdrs)


def parse_body(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", errors="replace")


def retry_after(value: str | None) -> float | None:
    """The Retry-After header in seconds: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def decode(status: int, raw: bytes, headers) -> Any:
    """The parsed JSON of a 2xx answer; otherwise raise its typed error."""
    body = parse_body(raw)
    if 200 <= status < 300:
        return body
    raise from_response(status, body, retry_after(headers.get("Retry-After")))


def retryable_status(status: int) -> bool:
    return status in (429, 503)


API_KEY_ENV = "AGENTGATE_API_KEY"


def auth_headers(api_key: str | None, headers=None) -> dict[str, str]:
    """`headers` plus `Authorization: Bearer` with `api_key` (default: $AGENTGATE_API_KEY; none: no header)."""
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    return {**({"Authorization": f"Bearer {key}"} if key else {}), **dict(headers or {})}


def unreachable(req: HttpRequest, exc: BaseException, attempts: int) -> GatewayUnreachable:
    err = GatewayUnreachable(f"{req.method} {req.url}: no answer after {attempts} attempt(s): {exc!r}")
    err.__cause__ = exc
    return err


class EventResume:
    """What `events()` of both clients keeps across reconnects of one workflow's event stream: the last
    event id (sent back as Last-Event-ID, so no event is lost or repeated) and the failures in a row.
    Each connection: `headers()` for its request, `feed(line)` per line read (the event it completes,
    or None), and on a broken connection `backoff(req, exc)`, the pause before the next one (or
    GatewayUnreachable once the retry policy gives up)."""

    def __init__(self, workflow_id: str, last_event_id: str | None, retry: RetryPolicy):
        self.path = f"/v1/workflows/{workflow_id}/events"
        self.last, self.failures, self.retry = last_event_id, 0, retry
        self._decoder = SSEDecoder()

    def headers(self) -> dict[str, str]:
        self._decoder = SSEDecoder()  # a new connection: nothing half-read carries over
        return {"Accept": "text/event-stream", **({"Last-Event-ID": self.last} if self.last else {})}

    def feed(self, raw: bytes) -> Event | None:
        event = self._decoder.feed(raw.decode("utf-8"))
        if event is not None:
            self.last, self.failures = event.id or self.last, 0
        return event

    def backoff(self, req: HttpRequest, exc: BaseException) -> float:
        delay = self.retry.delay(self.failures)
        if delay is None:
            raise unreachable(req, exc, self.failures + 1) from exc
        self.failures += 1
        return delay


# -- OpenAI-style SSE (streamed chat completions) ------------------------------------------------------
DONE = "[DONE]"


def stream_data(line: bytes | str) -> dict | str | None:
    """The payload of one line of an OpenAI stream: the parsed JSON of a `data:` line, DONE at
    `data: [DONE]`, None for blank lines, comments and other fields. A `data:` line carrying
    {"error": ...} (a worker that broke mid-stream) raises its typed error."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    line = line.rstrip("\r\n")
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if data == DONE:
        return DONE
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if isinstance(chunk, dict) and isinstance(chunk.get("error"), dict):
        code = chunk["error"].get("code")
        raise from_response(code if isinstance(code, int) and code >= 400 else 500, chunk)
    return chunk if isinstance(chunk, dict) else None
