"""Workflow execution through the HTTP API, on fake workers and a real Redis."""

from __future__ import annotations

import asyncio

import pytest

from gateway.keys import STORE
from tests.gateway.support import llm

pytestmark = pytest.mark.asyncio


def overlap(a, b) -> bool:
    return a.start < b.end and b.start < a.end


async def test_diamond_runs_both_branches_concurrently_on_two_workers(gateway, fake_workers):
    workers = await fake_workers(2, token_delay_s=0.03)
    gw = await gateway([w.url for w in workers])
    wf = await gw.submit({"nodes": [
        llm("plan", "plan {{inputs.task}}"),
        llm("left", "left side of {{plan}}"), llm("right", "right side of {{plan}}"),
        llm("join", "combine {{left}} | {{right}}")], "inputs": {"task": "T"}})
    body = await gw.wait(wf)
    assert body["status"] == "finished", body
    calls = {c.body["rid"].split(".")[1]: (w, c) for w in workers for c in w.calls}
    (lw, left), (rw, right) = calls["left"], calls["right"]
    assert lw is not rw, "the two branches went to the same worker"
    assert overlap(left, right), "the branches ran one after the other"
    assert calls["join"][1].start >= max(left.end, right.end)
    assert calls["left"][1].start >= calls["plan"][1].end
    join_prompt = calls["join"][1].body["messages"][0]["content"]
    assert body["outputs"]["left"] in join_prompt and body["outputs"]["right"] in join_prompt
    assert body["outputs"]["plan"] == "echo: plan T"


async def test_conditional_edges_skip_untaken_branches_and_their_descendants(gateway, fake_workers):
    (w,) = await fake_workers(1, reply=lambda m: '{"route": "search", "confidence": 0.9}')
    gw = await gateway([w.url])
    wf = await gw.submit({
        "nodes": [llm("decide", "route?"), llm("search", "search for {{decide}}"), llm("answer", "answer directly"),
                  llm("cite", "cite {{search}}"), llm("polish", "polish {{answer}}"),
                  llm("final", "{{cite}}{{polish}}"),
                  llm("regex_hit", "r"), llm("equals_miss", "e")],
        "edges": [{"from": "decide", "to": "search", "condition": {"json_path": "$.route", "value": "search"}},
                  {"from": "decide", "to": "answer", "condition": {"contains": "direct"}},
                  {"from": "answer", "to": "polish"}, {"from": "cite", "to": "final"},
                  {"from": "polish", "to": "final"},
                  {"from": "decide", "to": "regex_hit", "condition": {"regex": "confidence\": 0\\.[89]"}},
                  {"from": "decide", "to": "equals_miss", "condition": {"equals": "search"}}]})
    body = await gw.wait(wf)
    status = {k: v["status"] for k, v in body["nodes"].items()}
    assert status == {"decide": "finished", "search": "finished", "answer": "skipped", "cite": "finished",
                      "polish": "skipped", "final": "finished", "regex_hit": "finished", "equals_miss": "skipped"}
    assert body["status"] == "finished"
    ran = {c.body["rid"].split(".")[1] for c in w.calls}
    assert ran == {"decide", "search", "cite", "final", "regex_hit"}
    events = await gw.events(wf)
    skipped = {e["data"]["node"] for e in events if e["event"] == "node_finished" and e["data"]["status"] == "skipped"}
    assert skipped == {"answer", "polish", "equals_miss"}


async def test_external_node_round_trip_and_result_conflicts(gateway, fake_workers):
    (w,) = await fake_workers(1)
    gw = await gateway([w.url])
    wf = await gw.submit({"nodes": [llm("ask", "which tool?"), {"id": "tool", "type": "external"},
                                    llm("final", "tool said {{tool}}")],
                          "edges": [{"from": "ask", "to": "tool"}, {"from": "tool", "to": "final"}]})
    await gw.wait_node(wf, "tool", "waiting")
    status, err, _ = await gw.call("POST", f"/v1/workflows/{wf}/nodes/ask/result", {"output": "x"})
    assert status == 409 and "not an external node" in err["error"]["message"]
    status, err, _ = await gw.call("POST", f"/v1/workflows/{wf}/nodes/nope/result", {"output": "x"})
    assert status == 404
    status, ok, _ = await gw.call("POST", f"/v1/workflows/{wf}/nodes/tool/result", {"output": {"temp_c": 21}})
    assert status == 200, ok
    body = await gw.wait(wf)
    assert body["status"] == "finished"
    assert body["outputs"]["tool"] == '{"temp_c": 21}'
    assert body["outputs"]["final"] == 'echo: tool said {"temp_c": 21}'
    status, err, _ = await gw.call("POST", f"/v1/workflows/{wf}/nodes/tool/result", {"output": "again"})
    assert status == 409
    status, err, _ = await gw.call("POST", "/v1/workflows/wf-unknown/nodes/tool/result", {"output": "x"})
    assert status == 404 and err["error"]["type"] == "not_found_error"
    started = [e for e in await gw.events(wf) if e["event"] == "node_started" and e["data"]["node"] == "tool"]
    assert started[0]["data"]["external"] is True
    assert started[0]["data"]["messages"] == []


async def test_events_stream_and_replay_from_last_event_id(gateway, fake_workers):
    (w,) = await fake_workers(1, token_delay_s=0.01)
    gw = await gateway([w.url])
    wf = await gw.submit({"nodes": [llm("a", "one two three"), llm("b", "{{a}}")]})
    live = await gw.events(wf)  # connects while running, ends with workflow_finished
    kinds = [e["event"] for e in live]
    assert kinds[0] == "workflow_started" and kinds[-1] == "workflow_finished"
    assert kinds.count("node_started") == 2 and kinds.count("node_finished") == 2
    tokens_a = "".join(e["data"]["text"] for e in live if e["event"] == "token" and e["data"]["node"] == "a")
    assert tokens_a == "echo: one two three"
    replay = await gw.events(wf, last_event_id=live[4]["id"])
    assert replay == live[5:]
    assert await gw.events(wf) == live


async def test_list_get_and_cancel(gateway, fake_workers):
    (w,) = await fake_workers(1, token_delay_s=0.2)
    gw = await gateway([w.url])
    ids = [await gw.submit({"nodes": [llm("a", f"w{i} " + "x " * 30)]}) for i in range(3)]
    status, page, _ = await gw.call("GET", "/v1/workflows?limit=2")
    assert status == 200 and page["total"] == 3 and page["has_more"]
    assert [d["id"] for d in page["data"]] == ids[::-1][:2]
    _, page2, _ = await gw.call("GET", "/v1/workflows?limit=2&offset=2")
    assert [d["id"] for d in page2["data"]] == [ids[0]] and not page2["has_more"]
    await gw.wait_node(ids[0], "a", "running")
    await asyncio.sleep(0.3)
    status, body, _ = await gw.call("DELETE", f"/v1/workflows/{ids[0]}")
    assert status == 200 and body["status"] == "cancelled"
    body = await gw.wait(ids[0])
    assert body["status"] == "cancelled" and body["nodes"]["a"]["status"] == "cancelled"
    assert any(rid.startswith(ids[0]) for rid in w.aborted), w.aborted
    status, _, _ = await gw.call("DELETE", f"/v1/workflows/{ids[0]}")
    assert status == 409
    status, _, _ = await gw.call("DELETE", "/v1/workflows/wf-nope")
    assert status == 404
    for wf in ids[1:]:
        await gw.call("DELETE", f"/v1/workflows/{wf}")


async def test_invalid_workflows_get_one_422_naming_every_problem(gateway, fake_workers):
    (w,) = await fake_workers(1)
    gw = await gateway([w.url])
    status, err, _ = await gw.call("POST", "/v1/workflows", {
        "nodes": [llm("a", "{{b}}"), llm("b", "{{a}} {{ghost}} {{inputs.q}}"), llm("a", "dup")]})
    assert status == 422
    problems = err["error"]["problems"]
    text = " | ".join(problems)
    assert "cycle" in text and "{{ghost}}" in text and "{{inputs.q}}" in text and "duplicate node id 'a'" in text
    status, err, _ = await gw.call("POST", "/v1/workflows", {"nodes": [{"id": "x", "type": "bogus"}],
                                                            "edges": [{"from": "x"}], "extra": 1})
    assert status == 422 and len(err["error"]["problems"]) >= 3
    status, err, _ = await gw.call("POST", "/v1/workflows", {"nodes": [llm("a", "x")], "edges": [
        {"from": "a", "to": "a", "condition": {"contains": "x", "regex": "y"}}]})
    assert status == 422 and "exactly one of" in err["error"]["message"]
    status, _, _ = await gw.call("GET", "/v1/workflows/wf-missing")
    assert status == 404


async def test_a_stalled_sse_consumer_does_not_hold_the_workflow_back(gateway, fake_workers):
    (w,) = await fake_workers(1, reply=lambda m: "word " * 400)
    gw = await gateway([w.url])
    wf = await gw.submit({"nodes": [llm("a", "talk"), llm("b", "{{a}}"), llm("c", "{{b}}")]})
    async with gw.session.get(f"{gw.url}/v1/workflows/{wf}/events") as stalled:
        await stalled.content.readline()  # then never read again: 1,200 token events pile up
        body = await gw.wait(wf, timeout=20)
        assert body["status"] == "finished"
    status, text, _ = await gw.call("GET", "/metrics")
    assert 'agentgate_gateway_workflows_total{status="finished"} 1.0' in text
    assert "agentgate_gateway_workflows_running 0" in text


async def test_simultaneous_external_results_keep_the_event_stream_causal(gateway, fake_workers):
    """Three tool results posted at once: every node_started in the replayed stream comes after the
    node_finished of each node it depends on. Appending node_finished is made slow, so that a
    replica advancing the DAG before its own node_finished is written would show it here."""
    (w,) = await fake_workers(1)
    gw = await gateway([w.url])
    store = gw.app[STORE]
    append = store.append_event

    async def slow_finish(wf_id, type_, data):
        if type_ == "node_finished":
            await asyncio.sleep(0.02)
        return await append(wf_id, type_, data)

    store.append_event = slow_finish
    tools = ["t1", "t2", "t3"]
    wf = await gw.submit({
        "nodes": [*({"id": t, "type": "external"} for t in tools), llm("join", "{{t1}} {{t2}} {{t3}}"),
                  {"id": "gate", "type": "external"}, llm("last", "{{join}} {{gate}}")],
        "edges": [{"from": "t1", "to": "gate"}, {"from": "t2", "to": "gate"}]})
    for t in tools:
        await gw.wait_node(wf, t, "waiting")
    posted = await asyncio.gather(*(gw.call("POST", f"/v1/workflows/{wf}/nodes/{t}/result", {"output": t})
                                    for t in tools))
    assert [status for status, _, _ in posted] == [200, 200, 200], posted
    await gw.wait_node(wf, "gate", "waiting")
    status, _, _ = await gw.call("POST", f"/v1/workflows/{wf}/nodes/gate/result", {"output": "open"})
    assert status == 200
    body = await gw.wait(wf)
    assert body["status"] == "finished", body
    depends = {"join": tools, "gate": ["t1", "t2"], "last": ["join", "gate"]}
    events = await gw.events(wf)
    finished_at = {e["data"]["node"]: i for i, e in enumerate(events) if e["event"] == "node_finished"}
    for i, e in enumerate(events):
        if e["event"] == "node_started":
            node = e["data"]["node"]
            late = [p for p in depends.get(node, []) if finished_at[p] > i]
            assert not late, f"{node} started before {late} finished: {[x['event'] for x in events]}"
