"""Ships a worker's KV events to Redis and keeps its registry entry alive
(the wire contract is common/kvwire.py).

One daemon thread with a synchronous Redis client does all the talking, so the
engine thread only ever appends to its EventLog (a list append under a lock)
and never waits on Redis. Every `flush_interval_s` the thread drains the log
into its own buffer and XADDs one EventBatch (seq 0, 1, 2, ... per epoch);
every TTL/3 it refreshes its registry key (wire.worker_key).

Redis lost while running: the worker keeps serving; events wait in the buffer
(at most `buffer_events`; beyond that the oldest are dropped and counted, and
the next batch that reaches Redis opens with a `resync` event so that readers
re-fetch the worker's snapshot). Retries back off exponentially up to
`retry_max_s`; an outage is logged once when it starts and once when it ends.
A batch that failed is re-sent with the same seq, so a reply lost after Redis
applied the XADD shows up as a duplicate seq, which readers skip.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import RedisError
from redis.retry import Retry

from common.kvwire import (
    DEFAULT_STREAM_MAXLEN,
    HEARTBEAT_TTL_S,
    WORKER_IDS,
    EventBatch,
    WorkerInfo,
    event,
    stream_key,
    worker_key,
)
from common.redis_client import sync_client
from common.redis_server import redact
from engine.kvcache.events import EventLog, KVEvent

log = logging.getLogger("agentgate.kvpublish")

# Events per stream entry. A backlog after an outage goes out as several entries
# rather than one multi-megabyte one that a reader must parse in a single go.
MAX_BATCH_EVENTS = 5_000
CONNECT_TIMEOUT_S = 1.0
SOCKET_TIMEOUT_S = 2.0
FIRST_RETRY_S = 0.1


class RedisUnavailableError(RuntimeError):
    """Redis could not be reached when publishing was asked for (a start-up error)."""


def connect(redis_url: str) -> redis.Redis | RedisCluster:
    """A client that fails fast (no retries of its own: callers decide when to retry), PING'ed once;
    a redis+cluster:// URL gives redis-py's cluster client (common/redis_client.py)."""
    try:
        client = sync_client(redis_url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=SOCKET_TIMEOUT_S,
                             retry=Retry(NoBackoff(), 0))
        client.ping()
    except (RedisError, OSError, ValueError) as exc:
        raise RedisUnavailableError(f"cannot reach Redis at REDIS_URL={redact(redis_url)}: {exc}") from exc
    return client


def wire_event(e: KVEvent) -> dict:
    """A KVEvent as the stream carries it: token ids stay in the worker."""
    return event(e.op, e.tier, e.block_hashes, e.parent_hash, e.ts)


class EventPublisher:
    def __init__(self, redis_url: str, info: WorkerInfo, events: EventLog, *, flush_interval_s: float = 0.05,
                 maxlen: int = DEFAULT_STREAM_MAXLEN, buffer_events: int = 50_000,
                 heartbeat_ttl_s: float = HEARTBEAT_TTL_S, retry_max_s: float = 5.0,
                 max_batch_events: int = MAX_BATCH_EVENTS):
        if flush_interval_s <= 0 or heartbeat_ttl_s <= 0 or retry_max_s <= 0:
            raise ValueError("flush_interval_s, heartbeat_ttl_s and retry_max_s must be positive")
        if maxlen < 1 or buffer_events < 1 or max_batch_events < 1:
            raise ValueError("maxlen, buffer_events and max_batch_events must be at least 1")
        if not info.url or not info.model or not info.epoch:
            raise ValueError(f"WorkerInfo needs url, model and epoch to publish, got {info}")
        self.redis_url = redis_url
        self.info = info
        self.events = events
        self.flush_interval_s = flush_interval_s
        self.maxlen = maxlen
        self.buffer_events = buffer_events
        self.heartbeat_ttl_s = heartbeat_ttl_s
        self.retry_max_s = retry_max_s
        self.max_batch_events = max_batch_events
        self.stream = stream_key(info.model)
        self.key = worker_key(info.url)
        self._last: tuple[str, int] = ("0-0", -1)  # (id, seq) of the last entry appended, swapped as one
        self.dropped = 0  # events lost before reaching Redis (our buffer's and the EventLog's overflow)
        self.published = 0  # events appended
        self.batches = 0  # entries appended
        self.connected = False
        self._client: redis.Redis | RedisCluster | None = None
        self._buffer: deque[dict] = deque()
        self._seq = 0
        self._resync = False
        self._log_dropped = events.dropped
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._retry_at = 0.0
        self._backoff = 0.0
        self._outage_since: float | None = None
        self._next_beat = 0.0

    @property
    def last_id(self) -> str:
        """Id of the last entry appended ("0-0" if none); /kv/snapshot reports it as `upto`."""
        return self._last[0]

    @property
    def last_entry(self) -> tuple[str, int]:
        """(id, seq) of the last entry appended, read together (/kv/snapshot's upto and upto_seq)."""
        return self._last

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "EventPublisher":
        """Connect, register, start the thread; RedisUnavailableError if Redis is not there now."""
        assert self._thread is None, "start() twice"
        self._client = connect(self.redis_url)
        try:
            self._heartbeat()
        except (RedisError, OSError) as exc:
            raise RedisUnavailableError(f"cannot register with Redis at REDIS_URL={redact(self.redis_url)}: "
                                        f"{exc}") from exc
        self.connected = True
        self._thread = threading.Thread(target=self._run, name="kv-publisher", daemon=True)
        self._thread.start()
        log.info("publishing KV events of %s to %s on %s", self.info.url, self.stream, redact(self.redis_url))
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Flush what can be flushed, deregister, stop the thread. Blocks up to about timeout_s."""
        if self._thread is None:
            return
        self._stopping.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("the KV publisher thread did not stop within %.0fs", timeout_s)
        self._thread = None

    # -- the thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping.wait(self.flush_interval_s):
            self._drain()
            now = time.monotonic()
            if now < self._retry_at:
                continue
            try:
                self._flush()
                if now >= self._next_beat:
                    self._heartbeat()
            except (RedisError, OSError) as exc:
                self._failed(exc)
            except Exception:  # a bug must not end the thread: the worker would fall out of the registry
                log.exception("publishing KV events failed; dropping %d buffered events", len(self._buffer))
                self.dropped += len(self._buffer)
                self._buffer.clear()
                self._resync = True
                self._failed(RuntimeError("publisher error"))
            else:
                self._recovered()
        self._finish()

    def _finish(self) -> None:
        """Last drain and flush (one try, whatever the backoff), then deregister."""
        self._drain()
        try:
            self._flush()
            with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(self.key)
                pipe.srem(WORKER_IDS, self.info.url)
                pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("could not flush %d KV events / deregister from Redis at %s on stop: %s",
                        len(self._buffer), redact(self.redis_url), exc)
        finally:
            self.connected = False
            self._client.close()

    def _drain(self) -> None:
        """Move the EventLog's events into our buffer; past the bound the oldest go, and a resync is owed."""
        taken = self.events.take_events()
        lost = self.events.dropped - self._log_dropped
        if lost:
            self._log_dropped += lost
            self.dropped += lost
            self._resync = True
        self._buffer.extend(wire_event(e) for e in taken)
        excess = len(self._buffer) - self.buffer_events
        if excess > 0:
            for _ in range(excess):
                self._buffer.popleft()
            self.dropped += excess
            self._resync = True

    def _flush(self) -> None:
        while self._buffer or self._resync:
            n = min(len(self._buffer), self.max_batch_events)
            events = [self._buffer[i] for i in range(n)]
            if self._resync:
                events.insert(0, event("resync", "l1", [], None, time.time()))
            batch = EventBatch(self.info.url, self.info.model, self.info.epoch, self._seq, self.info.l3, events)
            with self._client.pipeline(transaction=False) as pipe:
                # Re-register first if our key is gone (Redis restarted, or we stalled past the TTL), so a
                # reader never sees entries of a worker the registry does not know. NX: the TTL stays the
                # heartbeat's business.
                pipe.set(self.key, self.info.dumps(), px=int(self.heartbeat_ttl_s * 1000), nx=True)
                pipe.sadd(WORKER_IDS, self.info.url)
                pipe.xadd(self.stream, batch.fields(), maxlen=self.maxlen, approximate=True)
                entry_id = pipe.execute()[-1]
            self._last = (entry_id.decode() if isinstance(entry_id, bytes) else entry_id, self._seq)
            for _ in range(n):
                self._buffer.popleft()
            self._seq += 1
            self._resync = False
            self.published += n
            self.batches += 1

    def _heartbeat(self) -> None:
        with self._client.pipeline(transaction=True) as pipe:
            pipe.set(self.key, self.info.dumps(), px=int(self.heartbeat_ttl_s * 1000))
            pipe.sadd(WORKER_IDS, self.info.url)
            pipe.execute()
        self._next_beat = time.monotonic() + self.heartbeat_ttl_s / 3

    def _failed(self, exc: Exception) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning("Redis at %s unreachable (%s): the worker keeps serving; up to %d KV events wait for it",
                        redact(self.redis_url), exc, self.buffer_events)
        self.connected = False
        self._backoff = min(self._backoff * 2 if self._backoff else FIRST_RETRY_S, self.retry_max_s)
        self._retry_at = time.monotonic() + self._backoff
        self._next_beat = 0.0  # refresh the registry as soon as Redis answers again

    def _recovered(self) -> None:
        self.connected = True
        self._backoff = 0.0
        if self._outage_since is not None:
            log.warning("Redis at %s is back after %.1fs; %d KV events dropped so far", redact(self.redis_url),
                        time.monotonic() - self._outage_since, self.dropped)
            self._outage_since = None
