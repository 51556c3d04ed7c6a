"""Redis outages: a restart (AOF on) and a pause in the middle of a load of workflows. In-flight
calls go on, state writes wait for Redis, dispatch resumes when it is back, and every workflow
finishes with its right outputs; /health/ready says Redis is down while /health/live stays up.
Also: more Redis clients than the connection pool holds wait for a connection instead of failing."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

import aiohttp
import pytest
import pytest_asyncio

from gateway.keys import METRICS, POOL, SCHEDULER
from tests.gateway.redis_chaos import ChaosRedis
from tests.gateway.support import GatewayHandle, fast_config, llm

pytestmark = pytest.mark.asyncio
WORKFLOWS = 24


@pytest.fixture
def chaos_redis():
    server = ChaosRedis().start()
    yield server
    server.stop()


@pytest_asyncio.fixture
async def chaos_gateway(chaos_redis, fake_workers):
    workers = await fake_workers(2, token_delay_s=0.05)
    config = replace(fast_config(chaos_redis.url, [w.url for w in workers]), key_prefix="t" + uuid.uuid4().hex[:8])
    gw = await GatewayHandle(config).start()
    gw.fake_workers = workers
    yield gw
    await gw.stop()


def workflow(i: int) -> dict:
    return {"nodes": [llm("a", f"first {i} one two three"), llm("b", f"second {i} {{{{a}}}}"),
                      llm("c", f"third {i} {{{{b}}}}")],
            "edges": [{"from": "a", "to": "b"}, {"from": "b", "to": "c"}]}


async def get_while_up(gw, wf_id: str, rounds: int = 300) -> dict:
    """The workflow once it ended; reads during the outage may be refused (503) and are asked again."""
    for _ in range(rounds):
        status, body, _ = await gw.call("GET", f"/v1/workflows/{wf_id}")
        assert status in (200, 503), body
        if status == 503:
            assert body["error"]["type"] == "service_unavailable", body
        elif body["status"] != "running":
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"workflow {wf_id} still running")


async def run_through(gw, fault) -> None:
    ids = [await gw.submit(workflow(i)) for i in range(WORKFLOWS)]
    await asyncio.sleep(0.3)  # calls in flight, some workflows part-way
    assert any(w.running() for w in gw.fake_workers), "the load ended before the outage"
    await fault()
    for i, wf_id in enumerate(ids):
        body = await get_while_up(gw, wf_id)
        assert body["status"] == "finished", body
        a = f"echo: first {i} one two three"
        assert body["outputs"] == {"a": a, "b": f"echo: second {i} {a}", "c": f"echo: third {i} echo: second {i} {a}"}
    pool, scheduler = gw.app[POOL], gw.app[SCHEDULER]
    for _ in range(100):
        if not any(w.in_flight for w in pool.workers.values()) and not scheduler.runs:
            break
        await asyncio.sleep(0.02)
    assert all(w.in_flight == 0 for w in pool.workers.values()) and scheduler.runs == {}


async def probes(gw) -> tuple[int, int, dict]:
    live, _, _ = await gw.call("GET", "/health/live")
    ready, body, _ = await gw.call("GET", "/health/ready")
    return live, ready, body


async def test_every_workflow_finishes_after_a_redis_restart(chaos_gateway, chaos_redis):
    gw = chaos_gateway

    async def restart():
        chaos_redis.kill()
        try:
            await asyncio.sleep(1.0)
            live, ready, body = await probes(gw)
            assert live == 200 and ready == 503 and "redis" in body["error"]["message"].lower(), body
            await asyncio.sleep(2.0)  # about 3 s down in all
        finally:
            chaos_redis.start()

    await run_through(gw, restart)
    assert gw.app[METRICS].state_retries.values, "no state write was retried"
    live, ready, body = await probes(gw)
    assert (live, ready) == (200, 200), body


async def test_every_workflow_finishes_after_redis_is_paused(chaos_gateway, chaos_redis):
    gw = chaos_gateway

    async def pause():
        chaos_redis.pause()
        try:
            await asyncio.sleep(3.0)
            live, ready, body = await probes(gw)
            assert live == 200 and ready == 503, body
            await asyncio.sleep(5.0)  # about 8 s stalled in all
        finally:
            chaos_redis.resume()

    await run_through(gw, pause)


async def test_more_followers_than_redis_connections_wait_instead_of_failing(gateway, fake_workers):
    """Each SSE follower holds a Redis connection in a blocking read; with more followers than the
    pool holds, the others wait for one (no "Too many connections" 500), and all see the end."""
    (w,) = await fake_workers(1)
    gw = await gateway([w.url])
    wf = await gw.submit({"nodes": [llm("a", "one"), {"id": "tool", "type": "external"}],
                          "edges": [{"from": "a", "to": "tool"}]})
    await gw.wait_node(wf, "tool", "waiting")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        followers = [asyncio.create_task(follow(session, f"{gw.url}/v1/workflows/{wf}/events")) for _ in range(120)]
        await asyncio.sleep(1.5)  # every follower connected and blocked on Redis
        status, body, _ = await gw.call("POST", f"/v1/workflows/{wf}/nodes/tool/result", {"output": "done"})
        assert status == 200, body
        for status, text in await asyncio.gather(*followers):
            assert status == 200 and "event: workflow_finished" in text, text[-300:]


async def follow(session, url: str) -> tuple[int, str]:
    async with session.get(url) as r:
        return r.status, (await r.read()).decode()
