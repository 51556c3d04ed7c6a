"""The scheduler's writes to Redis, made to outlast a Redis outage.

Durable writes (node and workflow state, lifecycle events, leases) go through
`write`; a workflow's transition (its nodes' states, events and status) is one `commit`, one
round trip: a write that fails on the connection (Redis down, restarting, paused,
or its connection pool exhausted) is retried with exponential backoff, from
RETRY_FIRST_S doubling up to RETRY_MAX_S, until it lands or `retry_s` have
passed; then StateUnavailableError. The writer waits meanwhile, so store.py's
rule holds: nothing is acted on before it is written. A write may land twice
when its reply was lost; every durable write is idempotent except an event,
which then appears twice in the stream (at least once, never lost).

Token events (the SSE stream's text deltas) never wait for Redis: `token()`
queues them per workflow and one flusher task writes them in batches, so a
call streaming from a worker is never held up by Redis. While Redis is away
they stay queued — at most `max_buffered` in all; later ones are dropped and
counted, since each node's whole output is in its node_finished event anyway.
A workflow's durable event first writes that workflow's queued tokens, in the
same round trip, so the stream keeps its order.

Errors that are not about the connection (a wrong type, a script error) are
bugs: they propagate at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import orjson

from common.redis_client import OUTAGE
from gateway.errors import StateUnavailableError
from gateway.metrics import Metrics
from gateway.state.store import WorkflowStore
from gateway.tasks import cancel_and_wait

log = logging.getLogger("agentgate.gateway")
RETRY_FIRST_S = 0.05
RETRY_MAX_S = 1.0
T = TypeVar("T")


class Journal:
    def __init__(self, store: WorkflowStore, metrics: Metrics, *, retry_s: float, max_buffered: int,
                 lease: tuple[str, float] | None = None):
        self.store = store
        self.metrics = metrics
        self.retry_s = retry_s
        self.max_buffered = max_buffered
        self.lease = lease  # (owner, ttl_s): node writes fenced by the workflow's lease
        self.down_since: float | None = None  # monotonic: when the current outage began, None while Redis answers
        self._tokens: dict[str, list[tuple[str, dict]]] = {}  # workflow → token events not written yet, in order
        self._buffered = 0
        self._locks: dict[str, asyncio.Lock] = {}  # one writer of a workflow's events at a time: order
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task | None = None

    async def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_loop(), name="gateway-journal")

    async def stop(self) -> None:
        await cancel_and_wait([self._flusher])

    # -- durable writes ------------------------------------------------------------------------------
    async def write(self, op: Callable[..., Awaitable[T]], *args, **kwargs) -> T:
        """`await op(*args, **kwargs)`, retried through an outage of up to `retry_s`."""
        deadline, delay = time.monotonic() + self.retry_s, RETRY_FIRST_S
        while True:
            try:
                result = await op(*args, **kwargs)
            except OUTAGE as exc:
                if self.down_since is None:
                    self.down_since = time.monotonic()
                    log.warning("Redis unavailable (%s); state writes wait for it for up to %.0f s", exc, self.retry_s)
                if time.monotonic() + delay > deadline:
                    raise StateUnavailableError(f"Redis unavailable for over {self.retry_s:g} s: {exc}") from exc
                self.metrics.state_retries.inc()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            if self.down_since is not None:
                log.warning("Redis is back after %.1f s", time.monotonic() - self.down_since)
                self.down_since = None
                self._wake.set()  # tokens queued meanwhile can go now
            return result

    async def commit(self, wf_id: str, nodes: dict | None = None, events: list[tuple[str, dict]] = (),
                     status: str | None = None, error: str | None = None) -> None:
        """One transition of a workflow, in one round trip (store.commit): node states (id → NodeState or
        dict, taken as they are now; fenced by `lease`: store.LeaseLost once another replica took the
        workflow), the workflow's token events queued so far, then `events`, then its `status`. A workflow
        that ended is forgotten here."""
        states = {node: orjson.dumps(state) for node, state in (nodes or {}).items()}
        async with self._lock(wf_id):
            queued = self._tokens.get(wf_id)
            n = len(queued) if queued else 0
            await self.write(self.store.commit, wf_id, states, [*(queued or ()), *events], self.lease, status, error)
            if n and self._tokens.get(wf_id) is queued:  # written: out of the queue (as _taken)
                del queued[:n]
                self._buffered -= n
                if not queued:
                    del self._tokens[wf_id]
        if status is not None and status != "running":  # the workflow ended: nothing more to write (as forget)
            self._buffered -= len(self._tokens.pop(wf_id, ()))
            lock = self._locks.get(wf_id)
            if lock is not None and not lock.locked():
                del self._locks[wf_id]

    async def save_node(self, wf_id: str, node: str, state) -> None:
        await self.commit(wf_id, {node: state})

    async def event(self, wf_id: str, type_: str, data: dict) -> None:
        """Append a lifecycle event after the workflow's queued token events."""
        await self.commit(wf_id, events=[(type_, data)])

    # -- token events -------------------------------------------------------------------------------
    def token(self, wf_id: str, data: dict) -> None:
        """Queue a token event; it is written soon, never waited for."""
        if self._buffered >= self.max_buffered:
            self.metrics.events_dropped.inc()
            return
        self._tokens.setdefault(wf_id, []).append(("token", data))
        self._buffered += 1
        self._wake.set()

    def forget(self, wf_id: str) -> None:
        """The workflow is no longer run here: its queued tokens are of no use to anyone."""
        self._buffered -= len(self._tokens.pop(wf_id, ()))
        lock = self._locks.get(wf_id)
        if lock is not None and not lock.locked():
            del self._locks[wf_id]

    def _taken(self, wf_id: str, n: int) -> None:
        """The first `n` queued tokens of the workflow were written."""
        queued = self._tokens.get(wf_id)
        if queued is None:
            return
        del queued[:n]
        self._buffered -= n
        if not queued:
            del self._tokens[wf_id]

    def _lock(self, wf_id: str) -> asyncio.Lock:
        lock = self._locks.get(wf_id)
        if lock is None:
            lock = self._locks[wf_id] = asyncio.Lock()
        return lock

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            delay = RETRY_FIRST_S
            while self._tokens:
                wf_id = next(iter(self._tokens))
                try:
                    await self._flush(wf_id)
                except OUTAGE:  # durable writes report the outage; tokens just wait for its end
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
                except Exception:  # a bug: drop these events rather than retry them forever
                    log.exception("token events of workflow %s could not be written; dropped", wf_id)
                    self.metrics.events_dropped.inc(len(self._tokens.get(wf_id, ())))
                    self.forget(wf_id)

    async def _flush(self, wf_id: str) -> None:
        async with self._lock(wf_id):
            batch = list(self._tokens.get(wf_id, ()))
            if batch:
                await self.store.append_events(wf_id, batch)
                self._taken(wf_id, len(batch))
