"""One real engine worker publishing its KV events to a real Redis: a KV index fed from
the stream ends up holding exactly the blocks the worker reports in /kv/snapshot, and
the gateway's kv_aware routing follows that index. One worker process for the module."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
import pytest_asyncio

from common.redis_server import RedisServer
from gateway.kvindex.consumer import KVIndexConsumer
from gateway.kvindex.index import KVIndex
from tests.gateway.fake_worker import FakeWorker
from tests.gateway.support import GatewayHandle, assert_kv_aware_follows_the_index, fast_config
from tests.support import start_worker, stop_worker

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]

SYSTEMS = ["You are a terse assistant for a travel agency. Reply in one short sentence, no lists. " * 4,
           "You are a code reviewer. Point out one bug at most, in plain words, and nothing else. " * 4]


@pytest.fixture(scope="module")
def redis_url():
    with RedisServer() as server:
        yield server.url


@pytest.fixture(scope="module")
def kv_worker(model_dir, tmp_path_factory, redis_url):
    tmp = tmp_path_factory.mktemp("kv-worker")
    worker = start_worker(model_dir, tmp, "--redis-url", redis_url, "--l3", f"dir:{tmp / 'l3'}",
                          "--worker-heartbeat-ttl", "3")
    yield worker.url
    stop_worker(worker)


@pytest_asyncio.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


async def get_json(session: aiohttp.ClientSession, url: str):
    async with session.get(url) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def post_json(session: aiohttp.ClientSession, url: str, body: dict):
    async with session.post(url, json=body) as r:
        assert r.status == 200, await r.text()
        return await r.json()


def snapshot_sets(snap: dict) -> dict[str, set[int]]:
    tiers = snap["tiers"]
    return {"l1": {h for h, _ in tiers["l1"]}, "l2": set(tiers["l2"]), "l3": set(tiers["l3"])}


async def until_index_matches(session, index: KVIndex, url: str, timeout: float = 30.0) -> dict[str, set[int]]:
    """Until the index holds what the worker's snapshot says, per tier; returns that."""
    deadline = time.monotonic() + timeout
    while True:
        want = snapshot_sets(await get_json(session, url + "/kv/snapshot"))
        got = {t: index.worker_blocks(url, t) for t in ("l1", "l2", "l3")}
        if index.covers(url) and got == want:
            return want
        assert time.monotonic() < deadline, f"index {({t: len(v) for t, v in got.items()})} != worker " \
                                            f"{({t: len(v) for t, v in want.items()})}"
        await asyncio.sleep(0.1)


async def test_the_index_holds_exactly_the_workers_blocks(kv_worker, redis_url, session):
    index = KVIndex()
    consumer = await KVIndexConsumer(redis_url, index, session, registry_interval_s=0.2).start()
    try:
        snap = await get_json(session, kv_worker + "/kv/snapshot")
        assert snap["worker"] == kv_worker and snap["l3"].startswith("dir:") and snap["upto_seq"] >= -1
        for i, system in enumerate(SYSTEMS):
            for question in ("Where to in May?", "And in June?"):
                await post_json(session, kv_worker + "/generate", {
                    "text": f"{system}\nQ{i}: {question}", "sampling_params": {"max_new_tokens": 2, "temperature": 0}})
        held = await until_index_matches(session, index, kv_worker)
        assert len(held["l1"]) >= 2 * 4, held  # each system prompt alone is 4+ blocks
        assert held["l3"], "L3 is written through, so the store has blocks too"
        assert consumer.tracker.snapshots >= 1 and consumer.entries >= 1
        async with session.post(kv_worker + "/flush_cache") as r:
            assert r.status == 200
        held = await until_index_matches(session, index, kv_worker)
        assert held["l1"] == set() and index.longest_prefix(list(held["l3"])[:1])  # the store survives a flush
    finally:
        await consumer.stop()


async def test_kv_aware_routing_follows_the_index(kv_worker, redis_url, model_dir):
    fake = await FakeWorker().start()  # a plain worker that publishes nothing
    gw = await GatewayHandle(fast_config(redis_url, [kv_worker, fake.url], key_prefix="kve2e",
                                         tokenizer_path=str(model_dir), request_timeout_s=120,
                                         kvindex_registry_interval_s=0.2)).start()
    try:
        chats = [{"messages": [{"role": "system", "content": s}, {"role": "user", "content": "Hi!"}],
                  "max_tokens": 2, "temperature": 0} for s in SYSTEMS]
        await assert_kv_aware_follows_the_index(gw, kv_worker, fake, chats)
    finally:
        await gw.stop()
        await fake.stop()
