"""The KV index consumer against a real redis-server and stand-in workers (kv_worker.py)
that publish with the real EventPublisher: the index ends up holding what each worker
holds, through snapshots, events, trimming, lost entries, restarts and expiry.

A few tests block the event loop on purpose (plain time.sleep / sync Redis calls) so
that the consumer cannot read while the test does something to the stream."""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
import pytest
import pytest_asyncio
import redis
from redis.asyncio import Redis

from common.kvwire import WORKER_IDS, EventBatch, stream_key, worker_key
from common.redis_server import RedisServer
from gateway.config import GatewayConfig
from gateway.kvindex.consumer import KVIndexConsumer
from gateway.kvindex.index import KVIndex, PrefixMatch
from gateway.workers.pool import WorkerPool
from gateway.workers.registry import RegistryDiscovery, read_registry, register
from tests.gateway.kv_worker import KVWorker

pytestmark = pytest.mark.asyncio


@pytest.fixture(scope="module")
def server():
    with RedisServer() as srv:
        yield srv


class Env:
    """One consumer (started on demand) and the stand-in workers of a test."""

    def __init__(self, redis_url: str):
        self.redis_url = redis_url
        self.index = KVIndex()
        self.session = aiohttp.ClientSession()
        self.consumer = KVIndexConsumer(redis_url, self.index, self.session, registry_interval_s=0.1,
                                        snapshot_timeout_s=2.0, retry_max_s=0.2)
        self.workers: list[KVWorker] = []

    async def worker(self, **kwargs) -> KVWorker:
        w = await KVWorker(self.redis_url, **kwargs).start()
        self.workers.append(w)
        return w

    async def start(self) -> "Env":
        await self.consumer.start()
        return self

    async def close(self) -> None:
        for w in self.workers:
            await w.stop()
        await self.consumer.stop()
        await self.session.close()

    def in_sync(self, *workers: KVWorker) -> bool:
        return all(self.index.covers(w.url) and all(self.index.worker_blocks(w.url, t) == w.tiers[t]
                                                    for t in ("l1", "l2")) for w in workers)


@pytest_asyncio.fixture
async def env(server):
    client = redis.Redis.from_url(server.url)
    client.flushall()
    client.close()
    e = Env(server.url)
    yield e
    await e.close()


async def until(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def blocking_until(predicate, timeout: float = 5.0) -> None:
    """Wait without yielding to the event loop: the consumer cannot run meanwhile."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.005)


async def test_start_from_snapshot_then_follow_events(env):
    a = await env.worker()
    a.store([1, 2, 3], parent=None)
    a.store([4], tier="l2")
    await until(lambda: a.publisher.batches == 1, what="a's first batch")
    await env.start()  # the consumer starts after those events: only the snapshot can tell it
    await until(lambda: env.in_sync(a), what="a in the index")
    assert env.consumer.tracker.snapshots == 1
    a.store([5, 6], parent=3)
    a.remove([2])
    a.clear("l2")
    await until(lambda: env.in_sync(a) and 5 in env.index.worker_blocks(a.url, "l1"), what="a's events")
    assert env.index.longest_prefix([1, 2, 3]) == {a.url: PrefixMatch(1, 1, 0, 0)}
    assert env.consumer.tracker.snapshots == 1, "events alone kept it in sync"


async def test_l3_store_is_shared_and_lookups_count_per_tier(env):
    await env.start()
    a = await env.worker(l3="dir:/s")
    b = await env.worker(l3="dir:/s")
    c = await env.worker(l3="dir:/t")
    a.store([1, 2, 3], tier="l3")
    a.store([1])
    b.store([1], tier="l2")
    c.store([9], tier="l3")
    await until(lambda: env.in_sync(a, b, c) and env.index.store_blocks("dir:/s") == {1, 2, 3}
                and env.index.store_blocks("dir:/t") == {9}, what="three workers")
    assert env.index.longest_prefix([1, 2, 3, 4]) == {a.url: PrefixMatch(3, 1, 0, 2), b.url: PrefixMatch(3, 0, 1, 2)}
    assert env.index.worker_blocks(b.url, "l3") == {1, 2, 3} and env.index.worker_blocks(c.url, "l3") == {9}
    await a.stop()  # deregisters: a leaves, the store stays for b
    await until(lambda: a.url not in env.index.workers(), what="a to leave")
    assert env.index.longest_prefix([1, 2, 3]) == {b.url: PrefixMatch(3, 0, 1, 2)}
    b.remove([3], tier="l3")  # any sharer's removal changes the store
    await until(lambda: env.index.store_blocks("dir:/s") == {1, 2}, what="b's L3 removal")


async def test_an_expired_worker_drops_out_and_is_pruned(env):
    await env.start()
    w = await env.worker(publish=False)  # registers by hand, and then stops heartbeating
    w.tiers["l1"].update({7, 8})
    r = Redis.from_url(env.redis_url)
    await r.set(worker_key(w.url), w.info.dumps(), px=600)
    await r.sadd(WORKER_IDS, w.url)
    await until(lambda: env.in_sync(w), what="the snapshot of a worker that publishes nothing")
    await until(lambda: w.url not in env.index.workers(), timeout=5, what="the expired worker to drop out")
    assert not env.index.covers(w.url) and env.index.longest_prefix([7]) == {}
    assert not await r.sismember(WORKER_IDS, w.url)
    await r.aclose()


async def test_a_stream_trimmed_past_our_position_resyncs_from_snapshots(env):
    await env.start()
    a = await env.worker(l3="dir:/s")
    a.store([1, 2])
    await until(lambda: env.in_sync(a) and env.index.worker_blocks(a.url, "l1") == {1, 2}, what="a")
    sync = redis.Redis.from_url(env.redis_url)
    # The loop is blocked from here: a's next batch is appended and trimmed before the consumer can read it.
    batches = a.publisher.batches
    a.remove([1, 2])
    a.store([3, 4])
    blocking_until(lambda: a.publisher.batches > batches)
    sync.xtrim(stream_key("m"), maxlen=0, approximate=False)
    sync.close()
    await until(lambda: env.index.worker_blocks(a.url, "l1") == {3, 4}, what="the resync after the trim")
    assert env.consumer.tracker.resyncs >= 1 and env.consumer.tracker.snapshots == 2


async def test_a_lost_entry_shows_as_a_seq_gap_and_a_duplicate_is_skipped(env):
    await env.start()
    a = await env.worker()
    a.store([1])
    await until(lambda: env.index.worker_blocks(a.url, "l1") == {1}, what="a")
    sync = redis.Redis.from_url(env.redis_url)
    n = a.publisher.batches
    a.store([2])  # this entry is deleted before the consumer reads it...
    blocking_until(lambda: a.publisher.batches == n + 1)
    lost = a.publisher.last_id
    a.store([3])  # ...and this one arrives with a seq one too far
    blocking_until(lambda: a.publisher.batches == n + 2)
    sync.xdel(stream_key("m"), lost)
    await until(lambda: env.index.worker_blocks(a.url, "l1") == {1, 2, 3}, what="the resync after the gap")
    assert env.consumer.tracker.resyncs == 1
    # A batch sent twice (a lost XADD reply) must not undo what came after it.
    a.remove([3])
    await until(lambda: env.index.worker_blocks(a.url, "l1") == {1, 2}, what="the removal")
    stored_3 = next(f for _, f in reversed(sync.xrange(stream_key("m")))
                    if EventBatch.from_fields(f).events[0]["op"] == "stored")
    sync.xadd(stream_key("m"), stored_3)
    a.store([4])
    await until(lambda: 4 in env.index.worker_blocks(a.url, "l1"), what="the next batch")
    assert env.index.worker_blocks(a.url, "l1") == {1, 2, 4} and env.consumer.tracker.resyncs == 1
    sync.close()


async def test_malformed_entries_are_skipped_and_the_consumer_goes_on(env, caplog):
    await env.start()
    a = await env.worker()
    a.store([1])
    await until(lambda: env.index.worker_blocks(a.url, "l1") == {1}, what="a")
    r = Redis.from_url(env.redis_url)
    base = {"worker": a.url, "model": "m", "epoch": a.info.epoch, "seq": "99", "l3": ""}
    await r.xadd(stream_key("m"), {**base, "events": b"not json"})
    await r.xadd(stream_key("m"), {**base, "events": b'[{"op": "stored", "tier": "l1", "block_hashes": ["x"]}]'})
    await r.xadd(stream_key("m"), {**base, "seq": "x", "events": b"[]"})
    await r.aclose()
    a.store([2])
    await until(lambda: env.index.worker_blocks(a.url, "l1") == {1, 2}, what="the next real batch")
    assert sum("skipping" in rec.getMessage() for rec in caplog.records) == 3
    assert env.consumer.tracker.resyncs == 0


async def test_a_restarted_worker_starts_over(env):
    await env.start()
    a = await env.worker()
    a.store([1, 2])
    await until(lambda: env.index.worker_blocks(a.url, "l1") == {1, 2}, what="a")
    old_epoch = a.info.epoch
    await a.restart()
    a.store([5])
    await until(lambda: env.in_sync(a) and env.index.worker_blocks(a.url, "l1") == {5}, what="the new process")
    assert env.consumer.workers[a.url].epoch != old_epoch


async def test_a_worker_without_snapshots_is_indexed_from_its_first_batch(env):
    await env.start()
    w = await env.worker(snapshot_route=False)
    await until(lambda: w.url in env.consumer.workers and env.consumer.workers[w.url].no_snapshot,
                what="its snapshot to be found missing")
    assert not env.index.covers(w.url)
    w.store([1, 2])  # seq 0 of its epoch: everything it will ever cache is in front of us
    await until(lambda: env.in_sync(w), what="indexing from seq 0")


async def test_redis_restart_rebuilds_the_index():
    server = RedisServer().start()
    env = Env(server.url)
    try:
        await env.start()
        a = await env.worker(buffer_events=5, retry_max_s=0.2, heartbeat_ttl_s=1.0)
        a.store([1, 2])
        await until(lambda: env.in_sync(a) and env.index.worker_blocks(a.url, "l1") == {1, 2}, what="a")
        server.stop()
        await until(lambda: not a.publisher.connected, what="the outage")
        for h in range(10, 30):  # more than the publisher buffers: it will owe a resync
            a.store([h])
        a.remove([1])
        server = RedisServer(port=server.port).start()
        await until(lambda: env.in_sync(a) and env.index.worker_blocks(a.url, "l1") == {2, *range(10, 30)},
                    timeout=20, what="the rebuild after the restart")
        assert a.publisher.dropped > 0 and env.consumer.rebuilds >= 2
    finally:
        await env.close()
        server.stop()


async def test_registry_discovery_feeds_the_pool(env):
    r = Redis.from_url(env.redis_url, decode_responses=True)
    live = await env.worker(heartbeat_ttl_s=5.0)
    gone = await env.worker(publish=False)
    await r.set(worker_key(gone.url), gone.info.dumps(), px=300)
    await r.sadd(WORKER_IDS, gone.url)
    async with aiohttp.ClientSession() as session:
        pool = WorkerPool(GatewayConfig(), session)
        prefix = "t" + uuid.uuid4().hex[:8]  # the operator's entry, where only this test looks
        discovery = RegistryDiscovery(pool, static_urls=["http://static:1"], prefix=prefix)
        pool.sync(["http://static:1"])
        await register(r, "http://older:1", prefix)
        await discovery.sync(r)
        assert set(pool.workers) == {live.url, gone.url, "http://static:1", "http://older:1"}
        await asyncio.sleep(0.5)  # gone's key expires
        registry = await discovery.sync(r)
        assert registry.expired == [gone.url] and set(registry.live) == {live.url}
        assert set(pool.workers) == {live.url, "http://static:1", "http://older:1"}
        assert (await read_registry(r)).expired == [], "the expired id was pruned"
    await r.aclose()
