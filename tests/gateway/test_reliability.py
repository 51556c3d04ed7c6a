"""Faults: a worker killed mid-call, failures past max_retries, no worker at all, a
gateway restarted mid-workflow, the circuit breaker."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from gateway.keys import SCHEDULER
from gateway.workers.registry import register
from tests.gateway.support import llm

pytestmark = pytest.mark.asyncio


def rids(*workers) -> list[str]:
    return [c.body["rid"] for w in workers for c in w.calls if "rid" in c.body]


async def test_a_call_on_a_killed_worker_is_retried_on_another(gateway, fake_workers):
    workers = await fake_workers(2, token_delay_s=0.05)
    gw = await gateway([w.url for w in workers], policy="round_robin")
    wf = await gw.submit({"nodes": [llm("long", "x " * 20, max_retries=2)]})
    body = await gw.wait_node(wf, "long", "running")
    while not any(w.calls for w in workers):
        await asyncio.sleep(0.01)
    victim = next(w for w in workers if w.calls)
    await asyncio.sleep(0.1)  # a few tokens in
    await victim.stop()
    body = await gw.wait(wf)
    assert body["status"] == "finished", body
    survivor = next(w for w in workers if w is not victim)
    node = body["nodes"]["long"]
    assert node["attempts"] == 2 and node["worker"] == survivor.url
    assert node["output"] == "echo: " + "x " * 20
    events = await gw.events(wf)
    retry = [e for e in events if e["event"] == "node_retry"]
    assert len(retry) == 1 and retry[0]["data"]["worker"] == victim.url
    # Tokens of the failed attempt were streamed too; the final output is only the successful attempt's.
    _, health, _ = await gw.call("GET", "/health")
    assert health["workers"][victim.url]["healthy"] is False


async def test_a_node_failing_past_max_retries_fails_the_workflow_and_cancels_the_rest(gateway, fake_workers):
    doomed = lambda body: "doomed" in body["messages"][0]["content"]  # noqa: E731
    workers = await fake_workers(2, token_delay_s=0.1, fail_with="500", fail_when=doomed)
    gw = await gateway([w.url for w in workers], breaker_failures=100)
    wf = await gw.submit({"nodes": [llm("doomed", "doomed", max_retries=2), llm("slow", "s " * 30),
                                    llm("after", "{{doomed}}")]})
    body = await gw.wait(wf, timeout=20)
    assert body["status"] == "failed"
    assert "node 'doomed' failed after 3 attempt(s)" in body["error"]
    assert body["nodes"]["doomed"]["status"] == "failed" and body["nodes"]["doomed"]["attempts"] == 3
    assert body["nodes"]["after"]["status"] == "cancelled"
    assert body["nodes"]["slow"]["status"] == "cancelled"
    aborted = [rid for w in workers for rid in w.aborted]
    assert any(".slow." in rid for rid in aborted), aborted
    tried = [c.body["rid"] for w in workers for c in w.calls if ".doomed." in c.body["rid"]]
    assert len(tried) == 3


async def test_without_workers_workflows_wait_and_calls_get_503(gateway, fake_workers, redis_url):
    gw = await gateway([])
    wf = await gw.submit({"nodes": [llm("a", "hello")]})
    status, err, headers = await gw.call("POST", "/v1/chat/completions",
                                         {"messages": [{"role": "user", "content": "hi"}]})
    assert status == 503 and headers["Retry-After"] == "1" and err["error"]["type"] == "service_unavailable"
    status, _, _ = await gw.call("GET", "/health")
    assert status == 503
    await asyncio.sleep(0.5)
    _, body, _ = await gw.call("GET", f"/v1/workflows/{wf}")
    assert body["status"] == "running" and body["nodes"]["a"]["status"] == "ready"
    # A worker registers in Redis; the gateway discovers it and the workflow proceeds.
    (w,) = await fake_workers(1)
    redis = Redis.from_url(redis_url, decode_responses=True)
    await register(redis, w.url, gw.config.key_prefix)  # the registry's entry, as POST /admin/workers writes it
    await redis.aclose()
    body = await gw.wait(wf)
    assert body["status"] == "finished" and body["outputs"]["a"] == "echo: hello"


async def test_a_restarted_gateway_resumes_without_repeating_finished_nodes(gateway, fake_workers):
    (w,) = await fake_workers(1, token_delay_s=0.05)
    gw1 = await gateway([w.url])
    wf = await gw1.submit({"nodes": [llm("a", "first"), llm("b", "second " + "y " * 10 + "{{a}}"),
                                     {"id": "tool", "type": "external"}, llm("c", "{{b}} {{tool}}")],
                           "edges": [{"from": "a", "to": "tool"}]})
    await gw1.wait_node(wf, "b", "running")
    await gw1.wait_node(wf, "tool", "waiting")
    await asyncio.sleep(0.1)
    await gw1.stop()  # mid-call: b was streaming
    gw2 = await gateway([w.url])
    status, _, _ = await gw2.call("POST", f"/v1/workflows/{wf}/nodes/tool/result", {"output": "T"})
    assert status == 200
    body = await gw2.wait(wf)
    assert body["status"] == "finished", body
    names = [r.split(".")[1] for r in rids(w)]
    assert names.count("a") == 1, names  # finished before the restart: never re-run
    assert names.count("c") == 1
    assert names.count("b") == 2 and body["nodes"]["b"]["attempts"] == 2  # interrupted, so run again
    assert body["outputs"]["c"].endswith("T")
    kinds = [e["event"] for e in await gw2.events(wf)]
    assert "workflow_resumed" in kinds and kinds[-1] == "workflow_finished"


async def test_an_orphaned_workflow_is_taken_over_when_its_lease_expires(gateway, fake_workers, redis_url):
    (w,) = await fake_workers(1, token_delay_s=0.05)
    gw1 = await gateway([w.url], lease_ttl_s=0.6)
    wf = await gw1.submit({"nodes": [llm("a", "one"), {"id": "tool", "type": "external"}],
                           "edges": [{"from": "a", "to": "tool"}]})
    await gw1.wait_node(wf, "tool", "waiting")
    # A crash: the replica's loops die without releasing its lease.
    scheduler = gw1.app[SCHEDULER]
    for task in scheduler._loops:
        task.cancel()
    scheduler.runs.clear()
    gw2 = await gateway([w.url], lease_ttl_s=0.6)
    await asyncio.sleep(1.2)
    status, _, _ = await gw2.call("POST", f"/v1/workflows/{wf}/nodes/tool/result", {"output": "ok"})
    assert status == 200
    body = await gw2.wait(wf)
    assert body["status"] == "finished"
    assert [r.split(".")[1] for r in rids(w)] == ["a"]


async def test_a_workflow_ending_during_a_lease_round_is_not_taken_for_a_lost_lease(gateway, fake_workers):
    """The lease round refreshes a snapshot of the running workflows; one that finishes (and
    releases its lease) while the round awaits Redis must not be "lost" and dropped: dropping
    cancels its tasks, among them the one still finishing it."""
    (w,) = await fake_workers(1, token_delay_s=0.05)
    gw = await gateway([w.url], lease_ttl_s=0.6)
    scheduler = gw.app[SCHEDULER]
    wf = await gw.submit({"nodes": [llm("a", "one"), {"id": "tool", "type": "external"}],
                          "edges": [{"from": "a", "to": "tool"}]})
    await gw.wait_node(wf, "tool", "waiting")
    refresh, dropped = scheduler.store.refresh, []

    async def ends_meanwhile(wf_id, owner, ttl_s):
        if wf_id == wf:  # it ends while Redis answers: popped from runs, its lease released
            scheduler.runs.pop(wf_id, None)
            await scheduler.store.release(wf_id, owner)
        return await refresh(wf_id, owner, ttl_s)

    async def drop(wf_id):
        dropped.append(wf_id)

    scheduler.store.refresh, scheduler.lifecycle._drop = ends_meanwhile, drop
    await asyncio.sleep(0.5)  # two lease rounds
    assert dropped == []


async def test_the_breaker_takes_a_failing_worker_out_and_health_puts_it_back(gateway, fake_workers):
    (w,) = await fake_workers(1)
    gw = await gateway([w.url])
    _, health, _ = await gw.call("GET", "/health")
    assert health["workers"][w.url]["healthy"]
    port = w.port
    await w.stop()
    await asyncio.sleep(0.5)
    status, health, _ = await gw.call("GET", "/health")
    assert status == 503 and not health["workers"][w.url]["healthy"]
    w.port = port
    await w.start()
    await asyncio.sleep(0.8)
    status, health, _ = await gw.call("GET", "/health")
    assert status == 200 and health["workers"][w.url]["healthy"]
