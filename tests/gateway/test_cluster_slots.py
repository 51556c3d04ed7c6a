"""Every multi-key operation keeps to one Redis Cluster hash slot.

The gateway's and the worker's Redis code runs against a real redis-server
with every command recorded: each MULTI/EXEC's commands together, and each
command sent on its own (EVAL, MGET, XREAD, XREADGROUP, RENAME, ...). The
server itself names each command's keys (COMMAND GETKEYS), and every
transaction's keys, and every single command's keys, must map to one slot
(redis-py's key_slot, CRC16 mod 16384 of the hash tag). Pipelines without a
transaction are exempt: redis-py's cluster client splits them by node. A new
key that a transaction or script touches without its workflow's (or stream's,
or registry's) hash tag fails here, before it would fail with CROSSSLOT on a
cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
import pytest
import redis
import redis.asyncio
from redis.crc import key_slot
from redis.exceptions import ResponseError

from engine.kvcache.events import EventLog
from engine.kvcache.publisher import EventPublisher
from common.kvwire import WORKER_IDS, WorkerInfo
from common.redis_server import RedisServer
from gateway.admission_shared import SharedLimits
from gateway.janitor import sweep_kv
from gateway.kvindex.consumer import KVIndexConsumer
from gateway.kvindex.index import KVIndex
from gateway.state.learning import LearningStore
from gateway.state.prefetch_log import PrefetchLog
from gateway.state.store import WorkflowStore
from gateway.state.template_store import TemplateStore
from gateway.workers.registry import read_registry, register, unregister


@pytest.fixture(scope="module")
def server():
    with RedisServer() as srv:
        yield srv


class Recorder:
    """Every transaction's and every lone command's argument lists, from the async and the sync client."""

    def __init__(self):
        self.transactions: list[list[tuple]] = []
        self.commands: list[tuple] = []

    @contextlib.contextmanager
    def installed(self, monkeypatch):
        rec = self
        a_exec, a_cmd = redis.asyncio.client.Pipeline.execute, redis.asyncio.client.Redis.execute_command
        s_exec, s_cmd = redis.client.Pipeline.execute, redis.client.Redis.execute_command

        async def async_execute(pipe, *args, **kwargs):
            if pipe.is_transaction or pipe.explicit_transaction:
                rec.transactions.append([c for c, _ in pipe.command_stack])
            return await a_exec(pipe, *args, **kwargs)

        async def async_command(client, *args, **options):
            rec.commands.append(args)
            return await a_cmd(client, *args, **options)

        def sync_execute(pipe, *args, **kwargs):
            if pipe.transaction or pipe.explicit_transaction:
                rec.transactions.append([c for c, _ in pipe.command_stack])
            return s_exec(pipe, *args, **kwargs)

        def sync_command(client, *args, **options):
            rec.commands.append(args)
            return s_cmd(client, *args, **options)

        with monkeypatch.context() as m:  # recording ends with the block
            m.setattr(redis.asyncio.client.Pipeline, "execute", async_execute)
            m.setattr(redis.asyncio.client.Redis, "execute_command", async_command)
            m.setattr(redis.client.Pipeline, "execute", sync_execute)
            m.setattr(redis.client.Redis, "execute_command", sync_command)
            yield self


def keys_of(probe: redis.Redis, args: tuple) -> list[bytes]:
    """The command's keys, as the server reads its arguments."""
    try:
        return probe.command_getkeys(*args)
    except ResponseError:  # no key arguments (PING, PUBLISH, XINFO's help, ...)
        return []


def slots(probe: redis.Redis, commands: list[tuple]) -> dict[int, list]:
    out: dict[int, list] = {}
    for args in commands:
        for key in keys_of(probe, args):
            out.setdefault(key_slot(key.encode() if isinstance(key, str) else key), []).append(key)
    return out


def cross_slot(probe: redis.Redis, recorder: Recorder) -> list:
    """The transactions and lone commands whose keys span more than one slot."""
    bad = [t for t in recorder.transactions if len(slots(probe, t)) > 1]
    return bad + [c for c in recorder.commands if len(slots(probe, [c])) > 1]


def multi_key_names(probe: redis.Redis, recorder: Recorder) -> set[str]:
    """The operations that touched more than one key: MULTI and the commands in such a transaction, and
    lone commands with several keys."""
    names = set()
    for t in recorder.transactions:
        if sum(len(v) for v in slots(probe, t).values()) > 1:
            names |= {"MULTI", *(str(c[0]).upper() for c in t)}
    return names | {str(c[0]).upper() for c in recorder.commands if len(keys_of(probe, c)) > 1}


async def exercise_gateway(url: str) -> None:
    """Each state operation the gateway has, on its own client (as app.py makes it)."""
    r = redis.asyncio.Redis.from_url(url, decode_responses=True)
    try:
        store = WorkflowStore(r, "ag", retention_s=60)
        wf = "wf-slots"
        await store.create(wf, {"nodes": []}, template="tpl", priority=1, tenant="acme")
        assert await store.claim(wf, "me", 30) and await store.refresh(wf, "me", 30)
        await store.save_node(wf, "a", {"status": "finished"}, lease=("me", 30))
        await store.append_event(wf, "workflow_started", {})
        await store.append_events(wf, [("token", {"t": "x"}), ("token", {"t": "y"})])
        await store.commit(wf, {"a": b'{"status": "running"}'}, [("node_started", {"node": "a"})], lease=("me", 30))
        assert len(await store.read_events(wf, block_ms=10)) == 4 and len(await store.read_events(wf)) == 4
        await store.requests.request_cancel(wf)
        assert await store.requests.post_to_inbox(wf, "b", "out")
        assert await store.requests.pending_requests([wf]) == ({wf}, {wf})
        assert await store.requests.take_inbox(wf) == {"b": "out"}
        await PrefetchLog(r).save(wf, {"a": {"predicted": True}})
        await store.commit(wf, {}, [("workflow_finished", {})], status="finished", error="none")
        await store.set_status(wf, "finished")
        await store.release(wf, "me")
        assert await store.active_ids() == [] and (await store.list(0, 10, "acme"))[0] == [wf]
        await store.sweep_listing(None)
        await register(r, "http://w:1", "ag")
        assert (await read_registry(r)).operator == ["http://w:1"]
        assert await unregister(r, "http://w:1", "ag") and not await unregister(r, "http://w:1", "ag")
        templates = TemplateStore(r)
        await templates.save("tpl", {"nodes": []})
        await templates.record_call("tpl", "agent", "a")
        await templates.record_call("tpl", "agent", "b")
        await templates.record_transitions("tpl", [("a", "b")])
        assert await templates.transitions("tpl") == {"a": {"b": 2}}
        learning = LearningStore(r)
        await learning.record_run("tpl", ["a", "b"], [("a", "b")], {"a": 0.5})
        assert (await learning.learned("tpl")).visits == {"a": 1, "b": 1}
        await learning.save_static_prefix("tpl", "a", [1, 2], 1)
        limits = SharedLimits(r, "ag", lease_s=60)
        assert await limits.take("acme", 60, 10) == 0.0
        place = await limits.enter("acme", 2)
        await limits.leave("acme", place)
        await r.sadd(WORKER_IDS, "http://gone:1")  # listed, its key expired: pruned by the script
        assert (await read_registry(r)).expired == ["http://gone:1"]
    finally:
        await r.aclose()


async def exercise_kv(url: str) -> None:
    """Two workers' publishers (sync client, a thread each) on two models' streams, and a gateway's KV index
    consumer (one XREADGROUP and one XREAD over both streams, one MGET over both registry keys) and janitor."""
    logs = [EventLog(), EventLog()]
    publishers = [EventPublisher(url, WorkerInfo(url=f"http://127.0.0.1:{9 + i}", model=f"m{i}", epoch="e1"), log,
                                 flush_interval_s=0.01).start() for i, log in enumerate(logs)]
    async with aiohttp.ClientSession() as session:
        consumer = await KVIndexConsumer(url, KVIndex(), session, registry_interval_s=0.05, block_ms=50).start()
        try:
            deadline = time.monotonic() + 20
            while consumer.entries < 4:  # more than one read: a later one acknowledges the first in its MULTI
                assert time.monotonic() < deadline, "the consumer read no stream entries"
                for log in logs:
                    log.record("stored", [time.monotonic_ns()])
                await asyncio.sleep(0.1)
            r = redis.asyncio.Redis.from_url(url)
            try:
                await sweep_kv(r, 60.0, consumer.group)
            finally:
                await r.aclose()
        finally:
            await consumer.stop()
    for publisher in publishers:
        publisher.stop()


def test_every_transaction_and_script_keeps_to_one_slot(server, monkeypatch):
    probe = redis.Redis.from_url(server.url)
    probe.flushall()
    with Recorder().installed(monkeypatch) as recorder:
        asyncio.run(exercise_gateway(server.url))
        asyncio.run(exercise_kv(server.url))
    assert cross_slot(probe, recorder) == []
    # the multi-key operations that are there today were all seen (a test that exercised none would pass)
    assert {"MULTI", "EVAL", "MGET", "XREAD", "XREADGROUP"} <= multi_key_names(probe, recorder)
    probe.close()


def test_the_check_sees_an_untagged_transaction(server, monkeypatch):
    """The same check fails a transaction over two untagged keys, and passes them tagged alike."""
    probe = redis.Redis.from_url(server.url)

    async def two_keys(a: str, b: str) -> None:
        r = redis.asyncio.Redis.from_url(server.url)
        async with r.pipeline(transaction=True) as pipe:
            pipe.set(a, 1)
            pipe.set(b, 2)
            await pipe.execute()
        await r.eval("return redis.call('get', KEYS[1])", 2, a, b)
        await r.aclose()

    with Recorder().installed(monkeypatch) as untagged:
        asyncio.run(two_keys("ag:wf:one", "ag:wf:one:nodes"))
    assert len(cross_slot(probe, untagged)) == 2
    with Recorder().installed(monkeypatch) as tagged:
        asyncio.run(two_keys("ag:wf:{one}", "ag:wf:{one}:nodes"))
    assert cross_slot(probe, tagged) == []
    probe.close()
