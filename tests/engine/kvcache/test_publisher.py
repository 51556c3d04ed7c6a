"""EventPublisher against a real redis-server: batches, seq, trimming, the
registry heartbeat, and a Redis that dies and comes back mid-run."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import pytest
import redis

from common.kvwire import (
    WORKER_IDS,
    EventBatch,
    WorkerInfo,
    stream_key,
    worker_key,
)
from common.redis_server import RedisServer, free_port
from engine.kvcache.events import EventLog
from engine.kvcache.publisher import EventPublisher, RedisUnavailableError, redact
from tests.support import REPO_ROOT


@pytest.fixture(scope="module")
def server():
    with RedisServer() as srv:
        yield srv


@pytest.fixture
def r(server):
    client = redis.Redis.from_url(server.url)
    client.flushall()
    yield client
    client.close()


def info(model: str = "m", url: str = "http://w1:1") -> WorkerInfo:
    return WorkerInfo(url=url, model=model, epoch="e1", l3="dir:/tmp/s")


def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def batches(r, model: str = "m") -> list[tuple[str, EventBatch]]:
    return [(i.decode(), EventBatch.from_fields(f)) for i, f in r.xrange(stream_key(model))]


def test_batches_arrive_in_order_with_counting_seq_and_no_token_ids(server, r):
    log = EventLog()
    pub = EventPublisher(server.url, info(), log, flush_interval_s=0.01).start()
    try:
        log.record("stored", [1, 2], None, token_ids=range(32))
        wait_for(lambda: pub.batches == 1, what="the first batch")
        log.record("removed", [2])
        log.record("stored", [7], 1, tier="l3")
        wait_for(lambda: pub.batches == 2, what="the second batch")
    finally:
        pub.stop()
    entries = batches(r)
    assert [b.seq for _, b in entries] == [0, 1]
    assert pub.last_id == entries[-1][0]
    first, second = entries[0][1], entries[1][1]
    assert (first.worker, first.model, first.epoch, first.l3) == ("http://w1:1", "m", "e1", "dir:/tmp/s")
    assert first.events == [{"op": "stored", "tier": "l1", "block_hashes": [1, 2], "parent_hash": None,
                             "ts": first.events[0]["ts"]}]
    assert [(e["op"], e["tier"], e["block_hashes"]) for e in second.events] == [("removed", "l1", [2]),
                                                                              ("stored", "l3", [7])]
    assert pub.published == 3 and pub.dropped == 0


def test_registry_heartbeat_keeps_the_key_alive_and_stop_deregisters(server, r):
    pub = EventPublisher(server.url, info(), EventLog(), heartbeat_ttl_s=0.6).start()
    try:
        assert WorkerInfo.loads(r.get(worker_key("http://w1:1"))) == info()
        assert 0 < r.pttl(worker_key("http://w1:1")) <= 600
        assert r.sismember(WORKER_IDS, "http://w1:1")
        time.sleep(1.5)  # several TTLs: only the heartbeat keeps it
        assert r.exists(worker_key("http://w1:1"))
    finally:
        pub.stop()
    assert not r.exists(worker_key("http://w1:1"))
    assert not r.sismember(WORKER_IDS, "http://w1:1")


def test_a_killed_worker_key_expires(server, r):
    """A worker that dies without stopping (SIGKILL) stops heartbeating: its key is gone after the TTL."""
    script = ("import sys, time; from engine.kvcache.events import EventLog; "
              "from engine.kvcache.publisher import EventPublisher; from common.kvwire import WorkerInfo; "
              "EventPublisher(sys.argv[1], WorkerInfo(url='http://dead:1', model='m', epoch='x'), EventLog(), "
              "heartbeat_ttl_s=0.5).start(); print('up', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", script, server.url], cwd=REPO_ROOT, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"up"
        time.sleep(0.8)
        assert r.exists(worker_key("http://dead:1")), "the heartbeat should keep the key past one TTL"
    finally:
        proc.kill()
        proc.wait()
    wait_for(lambda: not r.exists(worker_key("http://dead:1")), timeout=2.0, what="the key to expire")
    assert r.sismember(WORKER_IDS, "http://dead:1"), "the id stays until a reader prunes it"


def test_maxlen_trims_the_stream_approximately(server, r):
    log = EventLog()
    pub = EventPublisher(server.url, info(), log, flush_interval_s=0.01, maxlen=10, max_batch_events=1).start()
    try:
        log.record("removed", range(1000))  # one event...
        for i in range(600):
            log.record("removed", [i])  # ...and 600 more: 601 entries of one event each
        wait_for(lambda: pub.batches == 601, what="601 entries")
    finally:
        pub.stop()
    length = r.xlen(stream_key("m"))
    assert 10 <= length < 250, length  # approximate: whole radix nodes (100 entries) go at a time
    assert batches(r)[-1][1].seq == 600


def test_unreachable_redis_at_start_names_the_url():
    url = f"redis://user:secret@127.0.0.1:{free_port()}/0"
    with pytest.raises(RedisUnavailableError, match="REDIS_URL=redis://user:\\*\\*\\*@127.0.0.1"):
        EventPublisher(url, info(), EventLog()).start()
    assert redact("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        EventPublisher("redis://x", info(), EventLog(), flush_interval_s=0)
    with pytest.raises(ValueError):
        EventPublisher("redis://x", WorkerInfo(url="", model="m", epoch="e"), EventLog())


def test_redis_lost_and_back_never_blocks_the_worker_and_resyncs(caplog):
    caplog.set_level(logging.INFO, logger="agentgate.kvpublish")
    server = RedisServer().start()
    log = EventLog()
    pub = EventPublisher(server.url, info(), log, flush_interval_s=0.01, buffer_events=20, retry_max_s=0.2,
                         heartbeat_ttl_s=3.0)
    try:
        pub.start()
        log.record("stored", [1])
        wait_for(lambda: pub.batches == 1, what="the first batch")
        server.stop()
        wait_for(lambda: not pub.connected, what="the publisher to notice")
        slowest = 0.0
        for i in range(50):  # what the engine thread does meanwhile: never waits on Redis
            t0 = time.perf_counter()
            log.record("stored", [100 + i])
            slowest = max(slowest, time.perf_counter() - t0)
            time.sleep(0.005)
        assert slowest < 0.05, f"record() took {slowest * 1000:.1f} ms during the outage"
        wait_for(lambda: pub.dropped == 30, what="the buffer bound to drop the 30 oldest")
        server = RedisServer(port=server.port).start()  # a fresh, empty Redis on the same port
        wait_for(lambda: pub.connected and pub.batches >= 2, what="the publisher to reconnect")
        client = redis.Redis.from_url(server.url)
        assert client.exists(worker_key("http://w1:1")), "re-registered in the new Redis"
        (entry_id, batch), *_ = batches(client)
        assert batch.seq == 1 and batch.events[0]["op"] == "resync"
        assert [e["block_hashes"][0] for e in batch.events[1:]] == list(range(130, 150))  # the 20 newest
        log.record("stored", [999])
        wait_for(lambda: pub.batches == 3, what="the next batch")
        assert batches(client)[-1][1].seq == 2 and batches(client)[-1][1].events[0]["op"] == "stored"
        client.close()
        messages = [r.getMessage() for r in caplog.records]
        # Many retries, one line each way.
        assert sum("unreachable" in m for m in messages) == 1 and sum("is back" in m for m in messages) == 1
    finally:
        pub.stop()
        server.stop()
