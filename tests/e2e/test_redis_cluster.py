"""The gateway on a real 3-master Redis Cluster (redis+cluster:// URL): two gateway replicas and one
real engine worker that publishes its KV events and heartbeat to the cluster. Workflows with an
LLM node, a tool (external) node and a templated run end to end with the worker's exact greedy
outputs; a follower on the other replica streams every event over SSE; a tool result and a cancel
posted to the replica that does not own the workflow reach its owner (sharded pub/sub nudge); and
kv_aware routing follows the KV index fed from the cluster's streams."""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
import orjson
import pytest
import pytest_asyncio
from redis.asyncio.cluster import RedisCluster

from common.kvwire import WORKER_IDS, stream_key
from common.redis_client import async_client
from common.redis_server import RedisClusterServer
from gateway.janitor import sweep_kv
from gateway.keys import REDIS, SCHEDULER
from gateway.state.notify import nudge, subscription
from gateway.state.store import WorkflowStore
from gateway.workers.registry import read_registry
from tests.gateway.fake_worker import FakeWorker
from tests.gateway.support import GatewayHandle, assert_kv_aware_follows_the_index, fast_config, llm
from tests.support import start_worker, stop_worker

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]

SYSTEM = "You are a terse assistant for a travel agency. Reply in one short sentence, no lists. " * 4


@pytest.fixture(scope="module")
def cluster():
    with RedisClusterServer(3) as c:
        yield c


@pytest.fixture(scope="module")
def kv_worker(model_dir, tmp_path_factory, cluster):
    tmp = tmp_path_factory.mktemp("cluster-worker")
    worker = start_worker(model_dir, tmp, "--redis-url", cluster.url, "--worker-heartbeat-ttl", "3")
    yield worker.url
    stop_worker(worker)


@pytest_asyncio.fixture
async def replicas(cluster, kv_worker, model_dir):
    """Two gateway replicas sharing the cluster (and a key prefix of their own)."""
    config = fast_config(cluster.url, [kv_worker], key_prefix="cl" + uuid.uuid4().hex[:6], request_timeout_s=120,
                         tokenizer_path=str(model_dir), kvindex_registry_interval_s=0.2)
    a = await GatewayHandle(config).start()
    b = await GatewayHandle(config).start()
    yield a, b
    await b.stop()
    await a.stop()


async def direct(session: aiohttp.ClientSession, worker: str, content: str, max_tokens: int) -> str:
    """The worker's own greedy answer to one user message."""
    async with session.post(worker + "/v1/chat/completions", json={
            "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0}) as r:
        assert r.status == 200, await r.text()
        return (await r.json())["choices"][0]["message"]["content"]


async def follow(gw: GatewayHandle, wf: str) -> list[dict]:
    return await gw.events(wf)


async def test_the_gateway_uses_the_cluster_client_on_three_masters(replicas, cluster):
    a, _ = replicas
    redis = a.app[REDIS]
    assert isinstance(redis, RedisCluster)
    assert len({(n.host, n.port) for n in redis.get_primaries()}) == 3
    status, body, _ = await a.call("GET", "/health/ready")
    assert status == 200, body


async def test_a_templated_workflow_with_a_tool_runs_across_replicas(replicas, kv_worker):
    a, b = replicas
    tpl = "trip" + uuid.uuid4().hex[:4]
    status, _, _ = await a.call("POST", "/v1/templates", {"name": tpl, "nodes": ["plan", "lookup", "answer"], "edges": [
        {"from": "plan", "to": "lookup"}, {"from": "lookup", "to": "answer"}]})
    assert status == 201
    status, got, _ = await b.call("GET", f"/v1/templates/{tpl}")  # written through one replica, read on the other
    assert status == 200 and got["name"] == tpl
    wf = await a.submit({"template": tpl, "nodes": [
        llm("plan", "Name one city in Spain.", max_tokens=6, temperature=0),
        {"id": "lookup", "type": "external"},
        llm("answer", "{{plan}} weather: {{lookup}}. Say it in five words.", max_tokens=8, temperature=0)],
        "edges": [{"from": "plan", "to": "lookup"}, {"from": "lookup", "to": "answer"}]})
    followed = asyncio.create_task(follow(b, wf))  # SSE on the replica that does not run it
    await b.wait_node(wf, "lookup", "waiting", timeout=150)
    # the result is posted to b; a owns the workflow and takes it from its inbox on the nudge
    status, posted, _ = await b.call("POST", f"/v1/workflows/{wf}/nodes/lookup/result", {"output": "sunny, 21C"})
    assert (status, posted) == (200, {"id": wf, "node": "lookup", "status": "finished"})
    body = await b.wait(wf, timeout=150)
    assert body["status"] == "finished", body
    events = await asyncio.wait_for(followed, 60)
    async with aiohttp.ClientSession() as session:
        plan = await direct(session, kv_worker, "Name one city in Spain.", 6)
        answer = await direct(session, kv_worker, f"{plan} weather: sunny, 21C. Say it in five words.", 8)
    assert body["outputs"] == {"plan": plan, "lookup": "sunny, 21C", "answer": answer}
    assert events[-1]["event"] == "workflow_finished"
    finished = {e["data"]["node"]: e["data"]["output"] for e in events if e["event"] == "node_finished"}
    assert finished == body["outputs"]
    assert "".join(e["data"]["text"] for e in events if e["event"] == "token" and e["data"]["node"] == "plan") == plan
    ids = [e["id"] for e in events]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))  # stream order, nothing twice
    assert len(set(ids)) == len(ids)
    _, learned, _ = await a.call("GET", f"/v1/templates/{tpl}")
    assert learned["transitions"] == {"plan": {"lookup": 1, "answer": 1}, "lookup": {"answer": 1}}  # {{plan}} too


async def test_a_cancel_posted_to_the_other_replica_reaches_the_owner(replicas):
    a, b = replicas
    wf = await a.submit({"nodes": [llm("plan", "Say hi.", max_tokens=4, temperature=0),
                                   {"id": "tool", "type": "external"}, llm("after", "{{tool}}", max_tokens=4)],
                         "edges": [{"from": "plan", "to": "tool"}, {"from": "tool", "to": "after"}]})
    await a.wait_node(wf, "tool", "waiting", timeout=150)
    status, body, _ = await b.call("DELETE", f"/v1/workflows/{wf}")
    assert (status, body) == (200, {"id": wf, "status": "cancelled"})
    for gw in (a, b):
        state = await gw.wait(wf)
        assert state["status"] == "cancelled"
        assert state["nodes"]["after"]["status"] != "finished"
    assert wf not in a.app[SCHEDULER].runs


async def test_a_sharded_nudge_reaches_its_subscriber(cluster):
    redis = async_client(cluster.url, decode_responses=True)
    try:
        async with subscription(redis, "ag:control") as messages:
            got = asyncio.ensure_future(messages.__anext__())
            deadline = time.monotonic() + 10
            while not got.done():  # published until the subscription, made on first read, hears one
                assert time.monotonic() < deadline, "the sharded subscription heard nothing"
                await nudge(redis, "ag:control", orjson.dumps({"op": "cancel", "wf": "wf-x"}))
                await asyncio.sleep(0.05)
            assert orjson.loads(got.result()) == {"op": "cancel", "wf": "wf-x"}
    finally:
        await redis.aclose()


async def test_kv_aware_routing_follows_the_index_on_the_cluster(cluster, kv_worker, model_dir):
    fake = await FakeWorker().start()  # a plain worker that publishes nothing
    gw = await GatewayHandle(fast_config(cluster.url, [kv_worker, fake.url], key_prefix="clkv", request_timeout_s=120,
                                         tokenizer_path=str(model_dir), kvindex_registry_interval_s=0.2)).start()
    try:
        chat = {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi!"}],
                "max_tokens": 2, "temperature": 0}
        await assert_kv_aware_follows_the_index(gw, kv_worker, fake, [chat], sends_each=2)
    finally:
        await gw.stop()
        await fake.stop()


async def test_the_janitor_and_the_registry_prune_work_on_the_cluster(cluster):
    """The cross-node reads (SCAN over every master) and the registry's prune script, on the cluster."""
    redis = async_client(cluster.url, decode_responses=True)
    try:
        await redis.sadd(WORKER_IDS, "http://gone:1")  # listed, its key never written: pruned by the script
        assert (await read_registry(redis)).expired == ["http://gone:1"]
        assert not await redis.sismember(WORKER_IDS, "http://gone:1")
        old = f"{(time.time() - 3600) * 1000:.0f}-0"
        await redis.xadd(stream_key("gone-model"), {"worker": "w"}, id=old)  # nobody serves it, idle for an hour
        await redis.xgroup_create(stream_key("gone-model"), "kvindex:gone", id="0")
        assert await sweep_kv(redis, 60.0, "kvindex:mine") == (1, 0)
        assert not await redis.exists(stream_key("gone-model"))
        store = WorkflowStore(redis, "cljan", retention_s=60)
        tenants = [f"t{i}" for i in range(6)]  # listings spread over the masters
        for t in tenants:
            await store.create(f"wf-{t}", {"nodes": []}, template=None, priority=0, tenant=t)
            await redis.delete(f"cljan:wf:{{wf-{t}}}")  # as if its retention ran out
        assert sorted(await store.listed_tenants()) == tenants
        assert [await store.sweep_listing(t) for t in tenants] == [1] * len(tenants)
    finally:
        await redis.aclose()
