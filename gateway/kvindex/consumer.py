"""Feeds the KV index from the workers' Redis streams (wire: common/kvwire.py).

One asyncio task per gateway replica. Each step:
1. (re)build if needed: on start, and when Redis lost our consumer group
   (NOGROUP / no such key: Redis restarted), create the group on each model's
   stream at `$` and mark every worker pending;
2. poll the registry (SMEMBERS + MGET): new workers join pending, workers
   whose key expired leave the index (read_registry prunes them), a changed
   epoch means a restarted worker;
3. start GET /kv/snapshot for pending workers; a snapshot is applied the
   moment it arrives (the snapshot, then the worker's entries after
   `upto` that we already read; tracker.py decides what entries and
   snapshots mean for the index);
4. read: one MULTI with XACK of the last batch, XINFO STREAM and a
   non-blocking XREADGROUP, so that the stream's counters describe exactly the
   moment of the read: if more entries were added after our position than the
   stream still holds past it, trimming took entries we never saw, and every
   worker of that model re-syncs. Per worker, an epoch change, a seq gap or a
   `resync` event also sends it back to pending;
5. nothing read: XREAD BLOCK on our positions until something arrives.

Every stream key shares the `{kv}` hash tag (wire.py), so on a Redis Cluster
the MULTI of step 4 and the XREAD of step 5 stay in one slot.

Redis unreachable: the index keeps what it had (routing goes on with it), the
task retries with capped exponential backoff and logs once per outage.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from functools import partial

import aiohttp
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from common.kvwire import HEARTBEAT_TTL_S, EventBatch, stream_key
from common.redis_client import async_client
from common.redis_server import redact
from gateway.kvindex.index import KVIndex
from gateway.kvindex.snapshot import SnapshotError, StreamId, fetch_snapshot, parse_id
from gateway.kvindex.tracker import FETCHING, PENDING, WorkerSync, WorkerTracker
from gateway.workers.registry import read_registry

log = logging.getLogger("agentgate.kvindex")

MISSING_SNAPSHOT_RETRY_S = 60.0  # a worker without /kv/snapshot (404) is asked again this rarely


@dataclass
class _StreamPos:
    last: StreamId  # the last entry id delivered to us
    added: int | None  # the stream's entries-added counter as of `last` (None: Redis < 7 does not say)


def _lost_state(exc: ResponseError) -> bool:
    text = str(exc)
    return "NOGROUP" in text or "no such key" in text.lower()


def _id_text(i: StreamId) -> str:
    return f"{i[0]}-{i[1]}"


def _well_formed(events) -> bool:
    """Events as wire.py defines them (unknown ops/tiers pass: a newer worker may send more)."""
    return isinstance(events, list) and all(
        isinstance(e, dict) and isinstance(e.get("op"), str) and isinstance(e.get("tier"), str)
        and isinstance(e.get("block_hashes", []), list)
        and all(isinstance(h, int) and not isinstance(h, bool) for h in e.get("block_hashes", []))
        for e in events)


class KVIndexConsumer:
    def __init__(self, redis_url: str, index: KVIndex, session: aiohttp.ClientSession, *, group: str = "",
                 registry_interval_s: float = 1.0, snapshot_timeout_s: float = 5.0, read_count: int = 500,
                 block_ms: int = 1000, retry_max_s: float = 5.0):
        if registry_interval_s <= 0 or snapshot_timeout_s <= 0 or read_count < 1 or block_ms < 1:
            raise ValueError("registry_interval_s and snapshot_timeout_s must be positive, read_count and "
                             "block_ms at least 1")
        self.redis_url = redis_url
        self.index = index
        self.session = session
        # An unnamed group is this process's alone: destroyed on stop, so restarts leave nothing behind.
        self.auto_group = not group
        self.group = group or f"kvindex:{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.consumer = f"{socket.gethostname()}:{os.getpid()}"
        self.registry_interval_s = registry_interval_s
        self.snapshot_timeout_s = snapshot_timeout_s
        self.read_count = read_count
        self.block_ms = block_ms
        self.retry_max_s = retry_max_s
        self.tracker = WorkerTracker(index)
        self.workers = self.tracker.workers
        self.redis: Redis | None = None
        self._streams: dict[str, _StreamPos] = {}
        self._acks: dict[str, list] = {}
        self._rebuild = True
        self._next_poll = 0.0
        self._outage_since: float | None = None
        self._backoff = 0.0
        self._task: asyncio.Task | None = None
        self.entries = 0  # stream entries read
        self.rebuilds = 0  # consumer groups (re)created from scratch

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> "KVIndexConsumer":
        """Start the task; Redis need not be up yet (the task waits for it, and says so once)."""
        self.redis = async_client(self.redis_url, socket_connect_timeout=2.0,
                                  socket_timeout=self.block_ms / 1000 + 5.0, retry=Retry(NoBackoff(), 0))
        self._task = asyncio.create_task(self._run(), name="kvindex-consumer")
        return self

    async def stop(self) -> None:
        """Stop the task and its fetches; every wait is bounded, so a stuck Redis cannot hold up shutdown."""
        tasks = [w.fetch for w in self.workers.values() if w.fetch is not None]
        if self._task is not None:
            tasks.append(self._task)
            self._task = None
        for w in self.workers.values():
            w.mark_pending()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        if self.redis is None:
            return
        try:
            async with asyncio.timeout(2.0):
                if self.auto_group and self._streams:
                    async with self.redis.pipeline(transaction=False) as pipe:
                        for key in self._streams:
                            pipe.xgroup_destroy(key, self.group)
                        await pipe.execute(raise_on_error=False)
                await self.redis.aclose()
        except (RedisError, OSError, TimeoutError) as exc:
            log.info("KV index: could not remove consumer group %s on stop: %s", self.group, exc)
        self.redis = None

    # -- the task ----------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            try:
                await self._step()
            except ResponseError as exc:
                if _lost_state(exc):
                    log.warning("KV index: Redis lost consumer group %s (%s); rebuilding from worker snapshots",
                                self.group, exc)
                    self._rebuild = True
                else:
                    await self._failed(exc)
            except (RedisError, OSError) as exc:
                await self._failed(exc)
            except Exception:  # a bug: say so loudly, but keep the index alive rather than frozen
                log.exception("KV index: consumer step failed")
                await asyncio.sleep(self.retry_max_s)

    async def _step(self) -> None:
        if self._rebuild:
            await self._reset()
        if time.monotonic() >= self._next_poll:
            await self._poll_registry()
            self._next_poll = time.monotonic() + self.registry_interval_s
        self._start_fetches()
        got = await self._read()
        self._recovered()
        if not got:
            await self._wait()

    async def _failed(self, exc: Exception) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning("KV index: Redis at %s unreachable (%s); routing keeps the last known index meanwhile",
                        redact(self.redis_url), exc)
        self._backoff = min(self._backoff * 2 if self._backoff else 0.1, self.retry_max_s)
        await asyncio.sleep(self._backoff)

    def _recovered(self) -> None:
        self._backoff = 0.0
        if self._outage_since is not None:
            log.warning("KV index: Redis at %s is back after %.1fs", redact(self.redis_url),
                        time.monotonic() - self._outage_since)
            self._outage_since = None

    # -- groups and the registry --------------------------------------------------------------
    async def _reset(self) -> None:
        self._streams.clear()
        self._acks.clear()
        for model in sorted({w.model for w in self.workers.values() if w.model}):
            await self._ensure_stream(model)
        for w in self.workers.values():
            w.mark_pending()
        self._rebuild = False
        self.rebuilds += 1

    async def _ensure_stream(self, model: str) -> None:
        """Read `model`'s stream from now on: a fresh group at `$` (a leftover one of ours is replaced)."""
        key = stream_key(model)
        if key in self._streams:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xgroup_destroy(key, self.group)
            pipe.xgroup_create(key, self.group, id="$", mkstream=True)
            pipe.xinfo_stream(key)
            _, created, info = await pipe.execute(raise_on_error=False)
        for result in (created, info):
            if isinstance(result, Exception):
                raise result
        self._streams[key] = _StreamPos(parse_id(info["last-generated-id"]), info.get("entries-added"))

    async def _poll_registry(self) -> None:
        registry = await read_registry(self.redis)
        for url, info in registry.live.items():
            w = self.workers.get(url)
            if w is None:
                w = self.tracker.add(url, info.model, info.epoch, info.l3, registered=True)
            else:
                self.tracker.seen_in_registry(w, info.epoch, info.l3)
            if info.model:
                w.model = info.model
                await self._ensure_stream(info.model)
        now = time.monotonic()
        for url, w in list(self.workers.items()):
            # A worker seen only in its stream gets one TTL to show up in the registry (after a Redis
            # restart its events can come back before its heartbeat does).
            if url not in registry.live and (w.registered or now - w.first_seen > HEARTBEAT_TTL_S):
                log.info("KV index: worker %s left the registry; dropping its blocks", url)
                self.tracker.drop(url)

    # -- snapshots ---------------------------------------------------------------------------
    def _start_fetches(self) -> None:
        now = time.monotonic()
        for w in self.workers.values():
            if w.state == PENDING and now >= w.retry_at and stream_key(w.model) in self._streams:
                w.state = FETCHING
                w.fetch = asyncio.create_task(fetch_snapshot(self.session, w.url, self.snapshot_timeout_s),
                                              name=f"kv-snapshot {w.url}")
                w.fetch.add_done_callback(partial(self._fetched, w))

    def _fetched(self, w: WorkerSync, task: asyncio.Task) -> None:
        """Runs on the loop when a fetch ends: applied at once, between two stream reads."""
        if task.cancelled() or self.workers.get(w.url) is not w or w.fetch is not task:
            return
        w.fetch = None
        exc = task.exception()
        if exc is None:
            snap = task.result()
            if snap.worker.rstrip("/") == w.url:
                try:
                    self.tracker.apply_snapshot(w, snap)
                    return
                except Exception as err:  # a bug; the worker must not stay stuck in FETCHING
                    log.exception("KV index: applying the snapshot of %s failed", w.url)
                    exc = err
            else:
                exc = SnapshotError(f"{w.url}/kv/snapshot describes worker {snap.worker!r}")
        elif not isinstance(exc, SnapshotError):
            log.error("KV index: fetching the snapshot of %s failed", w.url, exc_info=exc)
        w.state = PENDING
        w.failures += 1
        w.no_snapshot = isinstance(exc, SnapshotError) and exc.missing
        delay = MISSING_SNAPSHOT_RETRY_S if w.no_snapshot else min(0.2 * 2 ** w.failures, self.retry_max_s)
        w.retry_at = time.monotonic() + delay
        (log.warning if w.failures == 1 else log.debug)(
            "KV index: no snapshot from %s (%s); the router uses its own record for it; retry in %.1fs",
            w.url, exc, delay)

    # -- the stream ----------------------------------------------------------------------------
    async def _read(self) -> bool:
        if not self._streams:
            return False
        keys = list(self._streams)
        acks, self._acks = self._acks, {}
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                for key, ids in acks.items():
                    pipe.xack(key, self.group, *ids)
                for key in keys:
                    pipe.xinfo_stream(key)
                pipe.xreadgroup(self.group, self.consumer, {k: ">" for k in keys}, count=self.read_count)
                results = await pipe.execute(raise_on_error=False)
        except BaseException:
            for key, ids in acks.items():  # not acknowledged: try again with the next read
                self._acks.setdefault(key, []).extend(ids)
            raise
        for result in results:
            if isinstance(result, Exception):
                raise result
        infos = results[len(acks):len(acks) + len(keys)]
        got = {(k.decode() if isinstance(k, bytes) else k): entries for k, entries in results[-1] or []}
        for key, info in zip(keys, infos):
            entries = got.get(key, [])
            if self._missed(self._streams[key], info, len(entries)):
                log.warning("KV index: %s was trimmed past this gateway's position; re-syncing its workers", key)
                self.tracker.resync_stream(key)
            for raw_id, fields in entries:
                self._process(parse_id(raw_id), fields)
            if entries:
                self._streams[key].last = parse_id(entries[-1][0])
                self._acks.setdefault(key, []).extend(raw_id for raw_id, _ in entries)
                self.entries += len(entries)
        return bool(got)

    @staticmethod
    def _missed(pos: _StreamPos, info: dict, n_read: int) -> bool:
        """Whether entries after our position were trimmed before we read them (see the module doc)."""
        added, length = info.get("entries-added"), info.get("length", 0)
        if added is None or pos.added is None:
            return False
        first = info.get("first-entry")
        if first is not None and parse_id(first[0]) <= pos.last:
            pos.added += n_read  # the stream still reaches back to us: nothing can be missing
            return False
        missed = added - pos.added > length
        pos.added = added - length + n_read
        return missed

    async def _wait(self) -> None:
        fetching = any(w.state == FETCHING for w in self.workers.values())
        until_poll = max(self._next_poll - time.monotonic(), 0.001)
        if not self._streams:
            await asyncio.sleep(min(until_poll, 0.05 if fetching else until_poll))
            return
        block_ms = min(self.block_ms, 100 if fetching else self.block_ms, max(int(until_poll * 1000), 1))
        await self.redis.xread({k: _id_text(p.last) for k, p in self._streams.items()}, count=1, block=block_ms)

    def _process(self, entry_id: StreamId, fields: dict) -> None:
        try:
            batch = EventBatch.from_fields(fields)
        except (ValueError, TypeError) as exc:
            log.warning("KV index: skipping malformed stream entry %s: %s", _id_text(entry_id), exc)
            return
        if not _well_formed(batch.events):
            # Skipped whole: the worker's next entry then shows a seq gap, and it re-syncs.
            log.warning("KV index: skipping stream entry %s of %s: its events do not follow the wire contract",
                        _id_text(entry_id), batch.worker)
            return
        self.tracker.process(entry_id, batch)
