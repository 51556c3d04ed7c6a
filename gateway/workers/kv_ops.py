"""Prefetch and pin a prompt prefix's KV on one worker, whatever its kind.

The gateway's prefetch/pin logic calls KVOps; KVOps finds the worker's kind
from its /get_server_info (never from configuration) and does it that kind's
way:
- an embedded agentgate engine has the /kv/* extensions (docs/architecture.md §3.1): prefetch,
  pin and unpin are one POST each, and pins live in the worker;
- an SGLang worker has none. Prefetch is a prefill-only /generate
  (max_new_tokens 0: SGLang runs the prompt and caches its pages without
  decoding) sent below normal priority where the server schedules by
  priority. SGLang has no pins: a pin here is a background task that re-sends
  that prefill every `touch_interval_s` until the pin's TTL, so the prefix
  stays most recently used and LRU eviction takes other blocks first (with
  HiCache, a prefix already demoted to host memory is loaded back). unpin
  cancels it. Pins of the same prefix on the same worker share one task.

Kind: an embedded engine says so in /get_server_info ("backend":
"agentgate-engine", or "agentgate_engine": true); anything else that serves
the SGLang API is treated as SGLang, which needs nothing beyond /generate.

Priorities follow SGLang's default reading: a larger number runs sooner.
PREFETCH_PRIORITY sits below the 0 that `agentgate worker --backend sglang`
gives every call without one.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import aiohttp
import orjson

from gateway.errors import WorkerCallError
from gateway.workers.client import WorkerClient

log = logging.getLogger("agentgate.gateway.kv")

PREFETCH_PRIORITY = -1
TIERS = ("l1", "l2", "l3", "computed")


class PrefetchResult(NamedTuple):
    resident_tokens: int  # tokens of the prefix now in the worker's L1 (full blocks only)
    sources: dict  # {l1, l2, l3, computed}: where those tokens came from
    pin_id: str | None = None  # when pin_ttl_s was given
    emulated: bool = False  # True on SGLang (a prefill-only request, not a /kv/* call)


class PinResult(NamedTuple):
    pin_id: str
    pinned_tokens: int
    expires_in_s: float


def worker_kind(server_info: dict) -> str:
    """'agentgate' for our embedded engine, 'sglang' for any other SGLang-API server."""
    if server_info.get("agentgate_engine") is True or server_info.get("backend") == "agentgate-engine":
        return "agentgate"
    return "sglang"


def prefix_body(input_ids, text, cache_salt) -> dict:
    if (input_ids is None) == (text is None):
        raise ValueError("give exactly one of input_ids and text")
    body = {"input_ids": list(input_ids)} if input_ids is not None else {"text": text}
    if cache_salt is not None:
        body["cache_salt"] = cache_salt
    return body


async def post_json(client: WorkerClient, path: str, body: dict) -> dict:
    """POST and parse; a 4xx or an unreadable reply raises a non-retryable WorkerCallError
    (5xx/connection: retryable)."""
    resp = await client.open("POST", path, orjson.dumps(body))
    try:
        payload = await resp.read()
        if resp.status != 200:
            raise WorkerCallError(client.url, f"POST {path} -> {resp.status}", status=resp.status,
                                  retryable=False, body=payload)
        out = orjson.loads(payload)
        if not isinstance(out, dict):
            raise ValueError("not a JSON object")
        return out
    except ValueError as exc:  # orjson.JSONDecodeError included
        raise WorkerCallError(client.url, f"POST {path}: unreadable reply ({exc})", status=resp.status,
                              retryable=False) from exc
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:  # the reply broke off
        raise WorkerCallError(client.url, f"POST {path}: {exc!r}") from exc
    finally:
        resp.release()


@dataclass
class _Toucher:
    """The re-touch task of one (worker, prefix) and the pins it serves: pin_id -> deadline."""

    task: asyncio.Task | None = None
    pins: dict[str, float] = field(default_factory=dict)


class KVOps:
    def __init__(self, touch_interval_s: float = 5.0, max_pins: int = 4096):
        self.touch_interval_s = touch_interval_s
        self.max_pins = max_pins
        self._infos: dict[str, dict] = {}  # url -> its /get_server_info
        self._zero_rejected: set[str] = set()  # SGLang urls that refused max_new_tokens 0
        self._touchers: dict[tuple, _Toucher] = {}  # (url, prefix key) -> toucher
        self._pin_keys: dict[str, tuple] = {}  # pin_id -> (url, prefix key)

    async def server_info(self, worker) -> dict:
        url = worker.client.url
        if url not in self._infos:
            self._infos[url] = worker.server_info or await worker.client.get_json("/get_server_info")
        return self._infos[url]

    async def kind(self, worker) -> str:
        return worker_kind(await self.server_info(worker))

    def forget(self, url: str) -> None:
        """The worker at `url` went away or restarted: its kind may change, its pins are void."""
        self._infos.pop(url, None)
        self._zero_rejected.discard(url)
        for key in [k for k in self._touchers if k[0] == url]:
            self._drop_toucher(key)

    # -- the three verbs -----------------------------------------------------------------------
    async def prefetch(self, worker, input_ids=None, *, text=None, cache_salt=None, pin_ttl_s: float | None = None,
                       priority: int | None = None) -> PrefetchResult:
        body = prefix_body(input_ids, text, cache_salt)
        if await self.kind(worker) == "agentgate":
            if pin_ttl_s is not None:
                body["pin_ttl_s"] = pin_ttl_s
            if priority is not None:
                body["priority"] = priority
            out = await post_json(worker.client, "/kv/prefetch", body)
            with _reply_of(worker, "/kv/prefetch"):
                sources = out.get("from") or {}
                return PrefetchResult(int(out["resident_tokens"]), {t: int(sources.get(t, 0)) for t in TIERS},
                                      out.get("pin_id"))
        result = await self._touch(worker, body, priority)
        if pin_ttl_s is not None:
            pin = self._start_pin(worker, body, pin_ttl_s, priority)
            result = result._replace(pin_id=pin)
        return result

    async def pin(self, worker, input_ids=None, *, text=None, cache_salt=None, ttl_s: float,
                  priority: int | None = None) -> PinResult:
        body = prefix_body(input_ids, text, cache_salt)
        if await self.kind(worker) == "agentgate":
            out = await post_json(worker.client, "/kv/pin", {**body, "ttl_s": ttl_s})
            with _reply_of(worker, "/kv/pin"):
                return PinResult(str(out["pin_id"]), int(out["pinned_tokens"]), float(out["expires_in_s"]))
        touched = await self._touch(worker, body, priority)
        return PinResult(self._start_pin(worker, body, ttl_s, priority), touched.resident_tokens, ttl_s)

    async def renew(self, worker, pin_id: str, *, ttl_s: float) -> PinResult:
        """Extend a live pin by its id, sending no prefix; a pin that lapsed raises a 404 WorkerCallError."""
        if await self.kind(worker) == "agentgate":
            out = await post_json(worker.client, "/kv/pin", {"pin_id": pin_id, "ttl_s": ttl_s})
            with _reply_of(worker, "/kv/pin"):
                return PinResult(str(out["pin_id"]), int(out["pinned_tokens"]), float(out["expires_in_s"]))
        key = self._pin_keys.get(pin_id)
        toucher = self._touchers.get(key) if key is not None else None
        if toucher is None or pin_id not in toucher.pins:
            raise WorkerCallError(worker.client.url, f"no such pin ({pin_id}); it may have expired", status=404,
                                  retryable=False)
        toucher.pins[pin_id] = max(toucher.pins[pin_id], time.monotonic() + ttl_s)
        return PinResult(pin_id, 0, ttl_s)

    async def unpin(self, worker, pin_id: str | None = None, *, input_ids=None, text=None,
                    cache_salt=None) -> int:
        """Release one pin, or every pin of a prefix; returns how many were released."""
        if await self.kind(worker) == "agentgate":
            body = {"pin_id": pin_id} if pin_id is not None else prefix_body(input_ids, text, cache_salt)
            try:
                await post_json(worker.client, "/kv/unpin", body)
            except WorkerCallError as exc:
                if exc.status == 404:  # expired or unknown: nothing to release
                    return 0
                raise
            return 1
        if pin_id is not None:
            key = self._pin_keys.pop(pin_id, None)
            toucher = self._touchers.get(key) if key is not None else None
            if toucher is None:
                return 0
            toucher.pins.pop(pin_id, None)
            if not toucher.pins:
                self._drop_toucher(key)
            return 1
        key = (worker.client.url, _prefix_key(prefix_body(input_ids, text, cache_salt)))
        toucher = self._touchers.get(key)
        count = len(toucher.pins) if toucher is not None else 0
        self._drop_toucher(key)
        return count

    async def close(self) -> None:
        for key in list(self._touchers):
            self._drop_toucher(key)
        await asyncio.sleep(0)  # let the cancellations land

    def pinned(self) -> int:
        """Emulated pins alive now."""
        return len(self._pin_keys)

    # -- SGLang emulation ----------------------------------------------------------------------
    async def _touch(self, worker, body: dict, priority: int | None) -> PrefetchResult:
        """One prefill-only /generate of the prefix."""
        url, info = worker.client.url, await self.server_info(worker)
        req = {**body, "rid": f"agentgate-prefetch-{uuid.uuid4().hex}", "stream": False,
               "sampling_params": {"max_new_tokens": 1 if url in self._zero_rejected else 0, "temperature": 0.0}}
        if info.get("enable_priority_scheduling"):
            value = PREFETCH_PRIORITY if priority is None else priority
            req["priority"] = -value if info.get("schedule_low_priority_values_first") else value
        try:
            out = await post_json(worker.client, "/generate", req)
        except WorkerCallError as exc:
            if exc.status != 400 or url in self._zero_rejected:
                raise
            # A server that refuses a zero-token request still caches the prompt of a one-token one.
            log.info("%s refused max_new_tokens 0 (%s); prefetching with 1", url, exc.body)
            self._zero_rejected.add(url)
            req["sampling_params"]["max_new_tokens"] = 1
            out = await post_json(worker.client, "/generate", req)
        with _reply_of(worker, "/generate"):
            meta = out.get("meta_info") or {}
            prompt = int(meta.get("prompt_tokens", 0))
            cached = int(meta.get("cached_tokens", 0))
            details = meta.get("cached_tokens_details") or {"device": cached}
            sources = {"l1": int(details.get("device", 0)), "l2": int(details.get("host", 0)),
                       "l3": int(details.get("storage", 0)), "computed": max(prompt - cached, 0)}
        page = int(info.get("page_size") or 1)
        resident = 0 if info.get("disable_radix_cache") else prompt // page * page
        return PrefetchResult(resident, sources, emulated=True)

    def _start_pin(self, worker, body: dict, ttl_s: float, priority: int | None) -> str:
        if ttl_s <= 0:
            raise ValueError("a pin needs a positive TTL")
        if len(self._pin_keys) >= self.max_pins:
            raise WorkerCallError(worker.client.url, f"too many emulated pins ({self.max_pins})", status=409,
                                  retryable=False)
        key = (worker.client.url, _prefix_key(body))
        pin_id = f"sgl-pin-{uuid.uuid4().hex}"
        toucher = self._touchers.setdefault(key, _Toucher())
        toucher.pins[pin_id] = time.monotonic() + ttl_s
        self._pin_keys[pin_id] = key
        if toucher.task is None or toucher.task.done():
            toucher.task = asyncio.create_task(self._keep_touching(key, worker, body, priority),
                                               name=f"kv-pin {worker.client.url}")
        return pin_id

    async def _keep_touching(self, key: tuple, worker, body: dict, priority: int | None) -> None:
        toucher = self._touchers[key]
        while True:
            now = time.monotonic()
            for pin_id in [p for p, deadline in toucher.pins.items() if deadline <= now]:
                del toucher.pins[pin_id]
                self._pin_keys.pop(pin_id, None)
            if not toucher.pins:
                break
            await asyncio.sleep(min(self.touch_interval_s, max(min(toucher.pins.values()) - now, 0.0)))
            if any(deadline > time.monotonic() for deadline in toucher.pins.values()):
                try:
                    await self._touch(worker, body, priority)
                except WorkerCallError as exc:  # the next touch may land; the pin ends at its TTL anyway
                    log.info("re-touching a pinned prefix on %s failed: %s", worker.client.url, exc)
        if self._touchers.get(key) is toucher:
            del self._touchers[key]

    def _drop_toucher(self, key: tuple) -> None:
        toucher = self._touchers.pop(key, None)
        if toucher is None:
            return
        for pin_id in toucher.pins:
            self._pin_keys.pop(pin_id, None)
        if toucher.task is not None:
            toucher.task.cancel()


@contextmanager
def _reply_of(worker, path: str):
    """A reply missing what its contract promises is the worker's fault: a WorkerCallError."""
    try:
        yield
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise WorkerCallError(worker.client.url, f"{path}: unexpected reply ({exc!r})", retryable=False) from exc


def _prefix_key(body: dict) -> tuple:
    ids = body.get("input_ids")
    return (tuple(ids) if ids is not None else body.get("text"), body.get("cache_salt"))
