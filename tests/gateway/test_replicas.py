"""Two gateway replicas sharing one redis-server: DELETE and external results sent to the
replica that does not own the workflow reach the one that does."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from gateway.keys import SCHEDULER
from tests.gateway.support import llm

pytestmark = pytest.mark.asyncio


def stop_loop(gw, name: str) -> None:
    """Stop one of a replica's background loops: "gateway-leases" or "gateway-control"."""
    next(t for t in gw.app[SCHEDULER]._loops if t.get_name() == name).cancel()


def finished_events(events: list[dict]) -> list[dict]:
    return [e for e in events if e["event"] == "workflow_finished"]


async def start_running(owner, worker) -> str:
    """A workflow on `owner` whose first node is streaming on `worker`."""
    wf = await owner.submit({"nodes": [llm("a", "x " * 40), llm("b", "{{a}}")]})
    await owner.wait_node(wf, "a", "running")
    while not worker.calls:
        await asyncio.sleep(0.01)
    return wf


async def test_delete_on_another_replica_cancels_the_owners_calls_on_the_workers(gateway, fake_workers):
    (w,) = await fake_workers(1, token_delay_s=0.2)
    owner = await gateway([w.url], lease_ttl_s=5)
    other = await gateway([w.url], lease_ttl_s=5)
    wf = await start_running(owner, w)
    stop_loop(owner, "gateway-leases")  # no lease rounds: only the published nudge can reach the owner
    assert wf in owner.app[SCHEDULER].runs and wf not in other.app[SCHEDULER].runs
    status, body, _ = await other.call("DELETE", f"/v1/workflows/{wf}")
    assert status == 200 and body["status"] == "cancelled", body
    assert any(rid.startswith(wf) for rid in w.aborted), w.aborted  # the owner aborted its call
    assert wf not in owner.app[SCHEDULER].runs
    state = await owner.wait(wf)
    assert state["status"] == "cancelled" and state["error"] == "cancelled by the client"
    assert {n["status"] for n in state["nodes"].values()} == {"cancelled"}
    ended = finished_events(await other.events(wf))
    assert len(ended) == 1 and ended[0]["data"]["status"] == "cancelled"
    status, _, _ = await other.call("DELETE", f"/v1/workflows/{wf}")
    assert status == 409


async def test_a_missed_cancel_nudge_is_caught_on_the_owners_next_lease_round(gateway, fake_workers):
    (w,) = await fake_workers(1, token_delay_s=0.2)
    owner = await gateway([w.url], lease_ttl_s=0.9)
    other = await gateway([w.url], lease_ttl_s=0.9)
    wf = await start_running(owner, w)
    stop_loop(owner, "gateway-control")  # the owner hears no nudge now
    status, body, _ = await other.call("DELETE", f"/v1/workflows/{wf}")
    assert status == 200 and body["status"] == "cancelled", body
    assert any(rid.startswith(wf) for rid in w.aborted), w.aborted
    assert len(finished_events(await other.events(wf))) == 1


async def test_delete_of_a_workflow_whose_owner_died_ends_it_on_the_replica_asked(gateway, fake_workers,
                                                                                  redis_url):
    (w,) = await fake_workers(1)
    owner = await gateway([w.url])
    wf = await owner.submit({"nodes": [{"id": "tool", "type": "external"}, llm("after", "{{tool}}")]})
    await owner.wait_node(wf, "tool", "waiting")
    other = await gateway([w.url])  # starts while the owner still holds the lease: it claims nothing
    stop_loop(other, "gateway-leases")  # and it will not claim the orphan on its own
    crashed = owner.app[SCHEDULER]
    for task in crashed._loops:
        task.cancel()
    crashed.runs.clear()
    redis = Redis.from_url(redis_url, decode_responses=True)
    await redis.delete(f"{owner.config.key_prefix}:wf:{{{wf}}}:owner")  # its lease ran out
    await redis.aclose()
    status, body, _ = await other.call("DELETE", f"/v1/workflows/{wf}")
    assert status == 200 and body["status"] == "cancelled", body
    state = await other.wait(wf)
    assert state["status"] == "cancelled" and state["nodes"]["tool"]["status"] == "cancelled"
    assert len(finished_events(await other.events(wf))) == 1
    assert [c for c in w.calls if ".after." in c.body.get("rid", "")] == []


async def test_a_result_posted_on_another_replica_reaches_the_owner(gateway, fake_workers):
    (w,) = await fake_workers(1)
    owner = await gateway([w.url], lease_ttl_s=5)
    other = await gateway([w.url], lease_ttl_s=5)
    wf = await owner.submit({"nodes": [llm("ask", "which tool?"), {"id": "tool", "type": "external"},
                                       llm("final", "tool said {{tool}}")],
                             "edges": [{"from": "ask", "to": "tool"}, {"from": "tool", "to": "final"}]})
    await owner.wait_node(wf, "tool", "waiting")
    stop_loop(owner, "gateway-leases")  # the nudge, not a lease round, brings the result over
    status, err, _ = await other.call("POST", f"/v1/workflows/{wf}/nodes/ask/result", {"output": "x"})
    assert status == 409 and "not an external node" in err["error"]["message"]
    status, err, _ = await other.call("POST", f"/v1/workflows/{wf}/nodes/nope/result", {"output": "x"})
    assert status == 404
    status, body, _ = await other.call("POST", f"/v1/workflows/{wf}/nodes/tool/result", {"output": {"t": 1}})
    assert status == 200 and body["status"] == "finished", body
    state = await owner.wait(wf)
    assert state["status"] == "finished" and state["outputs"]["final"] == 'echo: tool said {"t": 1}'
    assert wf not in other.app[SCHEDULER].runs  # the owner ran it to the end
    status, err, _ = await other.call("POST", f"/v1/workflows/{wf}/nodes/tool/result", {"output": "again"})
    assert status == 409


async def test_a_replica_whose_lease_was_taken_cannot_record_a_result_the_new_owner_runs_again(
        gateway, fake_workers, redis_url):
    """A Redis pause longer than the lease lets another replica take a workflow while its old owner still
    streams a node: the old owner's result is refused (fenced by the lease), it drops the workflow and
    gives its slot back, and the node is recorded once, by the new owner."""
    from gateway.keys import POOL

    (w,) = await fake_workers(1, token_delay_s=0.05)
    a = await gateway([w.url], lease_ttl_s=60)  # its lease loop does not notice in this test's time
    wf = await start_running(a, w)
    scheduler = a.app[SCHEDULER]
    r = Redis.from_url(redis_url, decode_responses=True)
    try:
        owner_key = f"{scheduler.store.p}:wf:{{{wf}}}:owner"
        assert await r.get(owner_key) == scheduler.owner
        await r.set(owner_key, "gw-another-replica", px=60_000)  # taken over while `a` streams node a
        for _ in range(400):  # the workflow is dropped, then its node task ends and gives its slot back
            if wf not in scheduler.runs and not scheduler.tasks and not a.app[POOL].workers[w.url].in_flight:
                break
            await asyncio.sleep(0.025)
        assert wf not in scheduler.runs and scheduler.tasks == {}
        assert a.app[POOL].workers[w.url].in_flight == 0
        status, body, _ = await a.call("GET", f"/v1/workflows/{wf}")
        assert body["status"] == "running" and body["nodes"]["a"]["status"] == "running", body  # not recorded
        assert await r.get(owner_key) == "gw-another-replica"
    finally:
        await r.aclose()


async def test_a_worker_an_operator_registers_is_found_by_every_replica_of_its_prefix_only(
        gateway, fake_workers, redis_url):
    """One registry (gateway/workers/registry.py): an operator's entry sits beside the workers' own, under
    the gateway's key prefix, until it is removed."""
    from gateway.keys import POOL
    from tests.gateway.support import GatewayHandle, fast_config

    w1, w2 = await fake_workers(2)
    a, b = await gateway([w1.url]), await gateway([w1.url])
    other = await GatewayHandle(fast_config(redis_url, [w1.url], key_prefix="o" + a.config.key_prefix)).start()
    try:
        status, body, _ = await a.call("POST", "/admin/workers", {"url": w2.url})
        assert status == 201 and body == {"url": w2.url, "healthy": True}
        for _ in range(100):  # b's next health round reads the registry
            if w2.url in b.app[POOL].workers:
                break
            await asyncio.sleep(0.05)
        assert w2.url in b.app[POOL].workers
        assert w2.url not in other.app[POOL].workers  # another prefix: another gateway's registry
        status, body, _ = await b.call("DELETE", f"/admin/workers?url={w2.url}")
        assert status == 200 and body == {"url": w2.url, "removed": True} and w2.url not in b.app[POOL].workers
        status, body, _ = await b.call("DELETE", f"/admin/workers?url={w2.url}")
        assert status == 404 and body["error"]["code"] == "worker_not_found"
        await asyncio.sleep(0.5)  # health rounds: the entry is gone from the registry, b does not find it again
        assert w2.url not in b.app[POOL].workers
    finally:
        await other.stop()
