"""Bounded state in a real Redis: finished workflows' keys expire after the retention (and leave the
listings), KV event streams of models no live worker serves and consumer groups of gone replicas are
removed, and a password-protected Redis works through the gateway's own pool."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from redis.asyncio import Redis

from common.kvwire import WORKER_IDS, WorkerInfo, stream_key, worker_key
from common.redis_server import RedisServer
from gateway.janitor import group_marker, sweep_kv
from gateway.keys import REDIS
from tests.gateway.test_tenancy import auth, table


@pytest.mark.asyncio
async def test_finished_workflows_expire_after_the_retention_and_leave_the_listing(gateway, fake_workers):
    w, = await fake_workers(1)
    gw = await gateway([w.url], api_keys=table(), retention_s=2.0)
    external = {"nodes": [{"id": "ask", "messages": [{"role": "user", "content": "hi"}]},
                          {"id": "t", "type": "external"}], "edges": [{"from": "ask", "to": "t"}]}
    status, body, _ = await gw.call("POST", "/v1/workflows", external, headers=auth("a"))
    wf = body["id"]
    await gw.wait_node(wf, "t", "waiting", headers=auth("a"))
    redis, p = gw.app[REDIS], gw.config.key_prefix
    keys = [f"{p}:wf:{{{wf}}}", f"{p}:wf:{{{wf}}}:nodes", f"{p}:wf:{{{wf}}}:events"]
    assert [await redis.ttl(k) for k in keys] == [-1, -1, -1]  # a running workflow never expires
    await gw.call("POST", f"/v1/workflows/{wf}/nodes/t/result", {"output": "x"}, headers=auth("a"))
    assert (await gw.wait(wf, headers=auth("a")))["status"] == "finished"
    ttls = [await redis.ttl(k) for k in keys]
    assert all(0 < t <= 2 for t in ttls), ttls
    deadline = time.monotonic() + 15
    while await redis.exists(*keys) or (await gw.call("GET", "/v1/workflows", headers=auth("a")))[1]["total"]:
        assert time.monotonic() < deadline, "the finished workflow's keys or listing entry outlived the retention"
        await asyncio.sleep(0.2)
    status, err, _ = await gw.call("GET", f"/v1/workflows/{wf}", headers=auth("a"))
    assert status == 404
    assert await redis.zcard(f"{p}:workflows") == 0
    assert not [k async for k in redis.scan_iter(match=f"{p}:wf:*")]  # the 6,001 keys of the issue: none left


@pytest.mark.asyncio
async def test_kv_streams_and_groups_of_gone_workers_and_replicas_are_removed():
    with RedisServer() as server:
        redis = Redis.from_url(server.url, decode_responses=True)
        live, ghost = stream_key("live-model"), stream_key("ghost-model")
        info = WorkerInfo(url="http://127.0.0.1:9", model="live-model")
        await redis.set(worker_key(info.url), info.dumps(), ex=60)
        await redis.sadd(WORKER_IDS, info.url)
        for key in (live, ghost):
            await redis.xadd(key, {"batch": "1"})
        for group in ("gone-replica", "alive-replica", "mine"):
            await redis.xgroup_create(live, group, id="0")
            await redis.xreadgroup(group, "c", {live: ">"}, count=1)
        await redis.set(group_marker("alive-replica"), "1", ex=60)  # its replica's janitor renews this
        await asyncio.sleep(1.2)
        assert await sweep_kv(redis, 1.0, "mine") == (1, 1)
        assert not await redis.exists(ghost) and await redis.exists(live)
        assert sorted(g["name"] for g in await redis.xinfo_groups(live)) == ["alive-replica", "mine"]
        assert await sweep_kv(redis, 60.0, "mine") == (0, 0)
        await redis.aclose()


async def runs_a_workflow_and_is_ready(gw) -> None:
    status, body, _ = await gw.call("POST", "/v1/workflows", {"nodes": [
        {"id": "n", "messages": [{"role": "user", "content": "hi"}]}]})
    assert status == 202, body
    assert (await gw.wait(body["id"]))["status"] == "finished"
    assert (await gw.call("GET", "/health/ready"))[0] == 200
    await gw.stop()


@pytest.mark.asyncio
async def test_a_password_protected_redis_works_through_the_gateway(gateway, fake_workers):
    with RedisServer(password="s3cret pass") as server:
        assert server.url.startswith("redis://:s3cret pass@")
        locked = Redis.from_url(f"redis://127.0.0.1:{server.port}/0")
        with pytest.raises(Exception, match="(?i)auth"):
            await locked.ping()
        await locked.aclose()
        w, = await fake_workers(1)
        url = f"redis://:{'s3cret%20pass'}@127.0.0.1:{server.port}/0"
        gw = await gateway([w.url], redis_url=url)
        await runs_a_workflow_and_is_ready(gw)


@pytest.mark.asyncio
async def test_a_tls_redis_with_a_password_works_through_the_gateway(gateway, fake_workers):
    with RedisServer(password="pw", tls=True) as server:
        assert server.url.startswith("rediss://:pw@127.0.0.1:")
        plain = Redis.from_url(f"redis://:pw@127.0.0.1:{server.port}/0", socket_timeout=2)
        with pytest.raises(Exception):  # no TLS, no answer
            await plain.ping()
        await plain.aclose()
        w, = await fake_workers(1)
        gw = await gateway([w.url], redis_url=server.url)
        await runs_a_workflow_and_is_ready(gw)


def test_rediss_urls_give_tls_connections_with_their_options():
    from redis.asyncio.connection import SSLConnection

    from gateway.app import redis_pool
    from gateway.config import GatewayConfig

    pool = redis_pool(GatewayConfig(redis_url="rediss://user:pw@redis.example:6380/2?ssl_cert_reqs=required"))
    assert pool.connection_class is SSLConnection and pool.max_connections == 128
    kwargs = pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["db"], kwargs["ssl_cert_reqs"]) == (
        "user", "pw", 2, "required")
    assert orjson.dumps(kwargs["host"]) == b'"redis.example"'
