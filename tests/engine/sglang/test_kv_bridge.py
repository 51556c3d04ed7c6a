"""The bridge fed by a real ZMQ publisher sending SGLang-format batches, shipped to a real Redis
by the worker's EventPublisher; what the gateway reads back from the stream is checked."""

from __future__ import annotations

import time

import pytest
import redis

from common.hashing import block_hashes
from common.kvwire import WORKER_IDS, EventBatch, WorkerInfo, stream_key, worker_key
from engine.kvcache.events import EventLog
from engine.kvcache.publisher import EventPublisher
from engine.sglang.cli import free_port_range
from engine.sglang.kv_bridge import KVBridge
from tests.engine.sglang.sglang_format import (
    AllBlocksCleared,
    BlockRemoved,
    SGLangPublisher,
    StorageMedium,
    stored_chain,
)

TOPIC = "agentgate-kv"
PROMPT = [int(x) for x in range(5000, 5000 + 64)]
OURS = block_hashes(PROMPT, 16)


def wait_until(cond, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def endpoints():
    base = free_port_range(2)
    return f"tcp://127.0.0.1:{base}", f"tcp://127.0.0.1:{base + 1}"


@pytest.fixture
def rig(endpoints):
    """(publisher, bridge, event log) wired like the launcher wires them; all closed after."""
    live, replay = endpoints
    made = []

    def make(replay_buffer: int = 10_000, with_replay: bool = True, **bridge_kw):
        pub = SGLangPublisher(live, replay if with_replay else None, topic=TOPIC, buffer_steps=replay_buffer)
        log = EventLog()
        bridge = KVBridge([live], log, replay_endpoints=[replay] if with_replay else [], topic=TOPIC,
                          replay_timeout_s=1.0, **bridge_kw).start()
        made.append((pub, bridge))
        bridge.subscribed.wait(5)
        time.sleep(0.3)  # the SUB subscription reaching the PUB socket (ZMQ's slow joiner)
        return pub, bridge, log

    yield make
    for pub, bridge in made:
        bridge.stop()
        pub.close()


def ops(log: EventLog) -> list[tuple]:
    return [(e.op, e.tier, list(e.block_hashes), e.parent_hash) for e in log.take_events()]


def test_stream_entries_carry_our_hashes(rig, redis_url):
    pub, bridge, log = rig()
    info = WorkerInfo(url="http://gpu-1:30000", model="llama-8b", kind="sglang", epoch="e1", block_size=16)
    publisher = EventPublisher(redis_url, info, log, flush_interval_s=0.02).start()
    r = redis.Redis.from_url(redis_url)
    try:
        chain = stored_chain(PROMPT, medium=StorageMedium.GPU)
        pub.publish(chain)
        pub.publish(stored_chain(PROMPT[:32], medium=StorageMedium.CPU))  # HiCache backed two blocks up
        pub.publish(BlockRemoved(block_hashes=chain.block_hashes[2:], medium=StorageMedium.GPU))
        wait_until(lambda: publisher.published >= 3, what="three events in Redis")
        entries = r.xrange(stream_key("llama-8b"))
        batches = [EventBatch.from_fields(fields) for _, fields in entries]
        assert {(b.worker, b.model, b.epoch) for b in batches} == {("http://gpu-1:30000", "llama-8b", "e1")}
        assert [b.seq for b in batches] == list(range(len(batches)))
        events = [(e["op"], e["tier"], e["block_hashes"], e["parent_hash"]) for b in batches for e in b.events]
        assert events == [("stored", "l1", OURS, None), ("stored", "l2", OURS[:2], None),
                          ("removed", "l1", OURS[2:], None)]
        registered = WorkerInfo.loads(r.get(worker_key(info.url)))
        assert registered.kind == "sglang" and registered.model == "llama-8b"
        assert r.sismember(WORKER_IDS, info.url)
    finally:
        publisher.stop()
        r.close()
    assert bridge.stats.batches == 3 and bridge.stats.gaps == 0


def test_a_lost_batch_is_replayed(rig):
    pub, bridge, log = rig()
    first = stored_chain(PROMPT[:32])
    pub.publish(first)
    pub.publish(stored_chain(PROMPT[32:48], parent=first.block_hashes[-1]), send=False)  # lost on the way
    pub.publish(BlockRemoved(block_hashes=first.block_hashes[:1]))
    wait_until(lambda: bridge.stats.batches == 3, what="three batches applied")
    assert pub.replay_requests == [1]
    assert (bridge.stats.gaps, bridge.stats.replayed, bridge.stats.resets) == (1, 1, 0)
    assert ops(log) == [("stored", "l1", OURS[:2], None), ("stored", "l1", OURS[2:3], OURS[1]),
                        ("removed", "l1", OURS[:1], None)]


def test_a_gap_beyond_the_replay_buffer_resets_the_worker(rig):
    pub, bridge, log = rig(replay_buffer=1)
    pub.publish(stored_chain(PROMPT[:32]))
    wait_until(lambda: bridge.stats.batches == 1)
    pub.publish(stored_chain(PROMPT[32:48]), send=False)
    pub.publish(stored_chain(PROMPT[:16], cache_salt="t2"), send=False)  # the buffer keeps only the last one
    other = list(range(16))
    pub.publish(stored_chain(other))
    wait_until(lambda: bridge.stats.batches == 2)
    assert (bridge.stats.gaps, bridge.stats.resets) == (1, 1)
    assert ops(log) == [("stored", "l1", OURS[:2], None), ("cleared", "l1", [], None),
                        ("stored", "l1", block_hashes(other, 16), None)]


def test_without_a_replay_endpoint_a_gap_resets(rig):
    pub, bridge, log = rig(with_replay=False)
    pub.publish(stored_chain(PROMPT[:16]))
    wait_until(lambda: bridge.stats.batches == 1)
    pub.publish(AllBlocksCleared(), send=False)
    pub.publish(stored_chain(PROMPT[16:32]))  # no parent: a new root chain after the lost clear
    wait_until(lambda: bridge.stats.batches == 2)
    assert ops(log) == [("stored", "l1", OURS[:1], None), ("cleared", "l1", [], None),
                        ("stored", "l1", block_hashes(PROMPT[16:32], 16), None)]


def test_a_restarted_publisher_resets_and_is_followed(rig, endpoints):
    pub, bridge, log = rig()
    for i in range(3):
        pub.publish(stored_chain(PROMPT[16 * i:16 * (i + 1)]))
    wait_until(lambda: bridge.stats.batches == 3)
    pub.close()  # SGLang restarted: a new publisher counts from 0 again
    live, replay = endpoints
    new = SGLangPublisher(live, replay, topic=TOPIC)
    try:
        first = stored_chain(PROMPT[:32])
        new.publish(first)  # may go out before the SUB has reconnected...
        time.sleep(0.5)
        new.publish(BlockRemoved(block_hashes=first.block_hashes[1:]))  # ...the next one shows the restart
        wait_until(lambda: bridge.stats.batches == 5, what="the new publisher's batches")
        assert bridge.stats.resets == 1
        assert ops(log)[3:] == [("cleared", "l1", [], None), ("stored", "l1", OURS[:2], None),
                                ("removed", "l1", OURS[1:2], None)]
    finally:
        new.close()


def test_garbage_is_counted_and_the_stream_goes_on(rig):
    pub, bridge, log = rig()
    pub.publish_raw(b"\xc1not msgpack")
    pub.publish(stored_chain(PROMPT[:16]))
    wait_until(lambda: bridge.stats.batches == 1 and bridge.stats.bad_messages == 1)
    assert ops(log)[-1] == ("stored", "l1", OURS[:1], None)


def test_topics_other_than_ours_are_not_read(rig, endpoints):
    pub, bridge, log = rig()
    pub.topic = b"someone-else"
    pub.publish(stored_chain(PROMPT[:16]))
    time.sleep(0.3)
    assert bridge.stats.batches == 0 and ops(log) == []
    assert bridge.alive
