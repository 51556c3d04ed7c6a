"""What the gateway keeps per workflow is compact and freed when the workflow ends (finished or
cancelled, with prefetches, pins and a tool wait on the way); a workflow waiting on a tool costs no
plan passes while nothing it holds needs renewing; its SSE stream waits on the bell, not in Redis:
the bounds on holding thousands of workflows in flight (scripts/bench_gateway_scale.py measures them)."""

from __future__ import annotations

import asyncio
from array import array

import pytest

from gateway.awareness.runs import PLAN_INTERVAL_S
from gateway.keys import AWARENESS, SCHEDULER
from tests.gateway.test_awareness import node, start, system, until  # noqa: F401 (start: a fixture)

pytestmark = pytest.mark.asyncio


def shape(i: int) -> dict:
    """A caller, a tool, a predicted successor; every other one branches on the tool's answer."""
    wf = {"nodes": [node("a", system(f"S{i % 2}"), f"Question {i}: which tool?"), {"id": "tool", "type": "external"},
                    node("d", system(f"S{i % 2}"), "Tool said {{tool}}. Summarize.")],
          "edges": [{"from": "a", "to": "tool"}]}
    if i % 2:
        wf["nodes"].append(node("e", system("E"), "Never: {{tool}}"))
        wf["edges"].append({"from": "tool", "to": "e", "condition": {"contains": "NEVER-THERE"}})
    return wf


def per_run_state(gw) -> dict:
    sched, aw = gw.app[SCHEDULER], gw.app[AWARENESS]
    pf = aw.prefetcher
    return {"runs": dict(sched.runs), "aware_runs": dict(aw.runs), "tasks": dict(sched.tasks),
            "ready": dict(sched.ready), "plans": dict(aw.plans),
            "slots": dict(pf.slots), "ledger": dict(pf.ledger), "queued": {u: q for u, q in pf.queues.items() if q},
            "inflight": {u: n for u, n in pf.inflight.items() if n}, "journal_tokens": dict(sched.journal._tokens),
            "journal_locks": dict(sched.journal._locks)}


async def test_nothing_of_a_run_lingers_after_it_ends(start, fake_workers):
    (w,) = await fake_workers(1, kv_api=True)
    gw = await start([w], default_tool_latency_s=30.0)
    ids = [await gw.submit(shape(i)) for i in range(6)]
    for wf in ids:
        await gw.wait_node(wf, "tool", "waiting")
    aw = gw.app[AWARENESS]
    await until(lambda: all((wf, "d") in aw.prefetcher.slots for wf in ids))
    held = per_run_state(gw)
    assert set(held["runs"]) == set(ids) and set(held["plans"]) == set(ids) and held["ledger"]
    # what a run keeps of its prefixes is compact: hashes of the texts and of the ids, never the ids
    kept = [v for plan in held["plans"].values() for v in plan.prefix_cache.values()]
    assert len(kept) >= len(ids) and all(isinstance(sig, int) and isinstance(n, int) and isinstance(d, int)
                                         for sig, (n, d) in kept)
    assert all(slot.sent_len >= 16 and not any(isinstance(v, (array, list)) for v in vars(slot).values())
               for slot in held["slots"].values())
    for wf in ids[:4]:  # two finish, two take the branch that skips `e`, two are cancelled
        await gw.call("POST", f"/v1/workflows/{wf}/nodes/tool/result", {"output": "ok"})
    for wf in ids[4:]:
        await gw.call("DELETE", f"/v1/workflows/{wf}")
    states = [(await gw.wait(wf))["status"] for wf in ids]
    assert states == ["finished"] * 4 + ["cancelled"] * 2
    await until(lambda: not any(per_run_state(gw).values()))


async def test_a_run_handed_back_is_forgotten_by_awareness_and_known_again_when_resumed(start, fake_workers):
    # awareness keeps its own table of runs (scheduler/hooks.py on_dropped), never the scheduler's dict
    (w,) = await fake_workers(1, kv_api=True)
    gw = await start([w], default_tool_latency_s=30.0)
    wf = await gw.submit(shape(0))
    await gw.wait_node(wf, "tool", "waiting")
    sched, aw = gw.app[SCHEDULER], gw.app[AWARENESS]
    await until(lambda: wf in aw.runs and (wf, "d") in aw.prefetcher.slots)
    old = sched.runs[wf]
    await sched.lifecycle.abandon(old, "handed back by the test")
    assert wf not in sched.runs and wf not in aw.runs
    # this replica's next lease round claims it again: a new run object, and awareness knows that one
    await until(lambda: wf in sched.runs and aw.runs.get(wf) is sched.runs[wf] and aw.runs[wf] is not old)
    await gw.call("POST", f"/v1/workflows/{wf}/nodes/tool/result", {"output": "ok"})
    assert (await gw.wait(wf))["status"] == "finished"
    await until(lambda: wf not in aw.runs and wf not in aw.plans)


async def test_a_workflow_waiting_on_a_tool_is_not_replanned_until_a_pin_needs_it(start, fake_workers):
    (w,) = await fake_workers(1, kv_api=True)
    gw = await start([w], default_tool_latency_s=60.0)  # its callers' pins last about a minute
    wf = await gw.submit(shape(0))
    await gw.wait_node(wf, "tool", "waiting")
    aw = gw.app[AWARENESS]
    await until(lambda: (wf, "d") in aw.prefetcher.slots and aw.prefetcher.slots[(wf, "d")].pin is not None)
    passes = []
    original = aw._plan

    async def counted(run, plan):
        passes.append(run.id)
        await original(run, plan)

    aw._plan = counted
    await asyncio.sleep(PLAN_INTERVAL_S * 4)  # four ticks: nothing due
    assert passes == [] and aw.prefetcher.due(2.5) == set()
    slot = aw.prefetcher.slots[(wf, "d")]
    slot.pin_expires -= 3600  # as if its pin were about to lapse: the next tick renews it
    await until(lambda: wf in passes)
    await until(lambda: aw.prefetcher.slots[(wf, "d")].prefetches >= 2)
    await gw.call("POST", f"/v1/workflows/{wf}/nodes/tool/result", {"output": "ok"})
    assert (await gw.wait(wf))["status"] == "finished"


async def test_the_bell_wakes_a_watcher_once_per_append_and_forgets_the_unwatched():
    from gateway.state.store import EventBell

    bell = EventBell()
    bell.ring("wf")  # nobody watches: nothing kept
    assert len(bell) == 0 and bell.rung("wf") == 0
    with bell.watching("wf"):
        since = bell.rung("wf")
        assert await bell.wait("wf", since, 0.01) is False
        waiter = asyncio.create_task(bell.wait("wf", since, 5.0))
        await asyncio.sleep(0)
        bell.ring("wf")
        assert await waiter is True
        assert await bell.wait("wf", since, 5.0) is True  # rang since `since`: at once
    assert len(bell) == 0


async def test_many_followers_of_local_workflows_share_one_redis_connection(gateway, fake_workers):
    """Followers of workflows this replica runs wait on its bell, not in a blocking Redis read: forty
    of them over one follower connection (a wait for it times out after 2 s) get every event, and
    none of them ever has to say it is waiting for Redis."""
    (w,) = await fake_workers(1)
    gw = await gateway([w.url], redis_follower_connections=1, redis_pool_timeout_s=2.0)
    ids = [await gw.submit({"nodes": [{"id": "a", "messages": [{"role": "user", "content": f"hi {i}"}]},
                                      {"id": "tool", "type": "external"}], "edges": [{"from": "a", "to": "tool"}]})
           for i in range(40)]

    async def follow(wf: str) -> tuple[list[str], str]:
        kinds, text = [], ""
        async with gw.session.get(f"{gw.url}/v1/workflows/{wf}/events") as r:
            assert r.status == 200
            async for raw in r.content:
                line = raw.decode()
                text += line
                if line.startswith("event: "):
                    kinds.append(line[7:].strip())
        return kinds, text

    streams = [asyncio.create_task(follow(wf)) for wf in ids]
    for wf in ids:
        await gw.wait_node(wf, "tool", "waiting")
    await asyncio.sleep(3.0)  # idle streams: keep-alives only (a blocking read each would queue 40 s here)
    for wf in ids:
        await gw.call("POST", f"/v1/workflows/{wf}/nodes/tool/result", {"output": "ok"})
    for kinds, text in await asyncio.gather(*streams):
        assert kinds[0] == "workflow_started" and kinds[-1] == "workflow_finished"
        assert kinds.count("node_started") == kinds.count("node_finished") == 2  # the call, then the tool
        assert "waiting for Redis" not in text


async def test_the_text_pool_keeps_one_copy_of_each_long_text_within_its_bounds():
    from common.workflow.texts import TextPool

    pool = TextPool(max_texts=2, max_chars=10_000, min_chars=8)
    a, a2 = "".join(["system prompt "] * 40), "".join(["system prompt "] * 40)
    assert a is not a2 and pool(a) is a and pool(a2) is a
    assert pool("short") == "short" and len(pool) == 1 and pool(None) is None
    b, c = "b" * 300, "c" * 300
    pool(b), pool(c)  # a is the oldest: it goes
    assert len(pool) == 2 and pool("".join(["system prompt "] * 40)) is not a
    big = TextPool(max_texts=10, max_chars=1000, min_chars=8)
    for ch in "xyz":
        big(ch * 400)
    assert big.chars <= 1000 and len(big) == 2


async def test_workflows_hold_one_copy_of_the_system_prompt_they_share(start, fake_workers):
    (w,) = await fake_workers(1, kv_api=True)
    gw = await start([w], default_tool_latency_s=30.0)
    sp = system("shared")
    wf = {"nodes": [node("a", sp, "Which tool?"), {"id": "tool", "type": "external"}, node("d", sp, "Said {{tool}}")],
          "edges": [{"from": "a", "to": "tool"}]}
    ids = [await gw.submit(wf) for _ in range(2)]  # each parsed from its own JSON body
    for wf in ids:
        await gw.wait_node(wf, "tool", "waiting")
    runs = gw.app[SCHEDULER].runs
    texts = [runs[wf].node_spec(n).messages[0][1] for wf in ids for n in ("a", "d")]
    assert len({id(t) for t in texts}) == 1
    for wf in ids:
        await gw.call("DELETE", f"/v1/workflows/{wf}")
