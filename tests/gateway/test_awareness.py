"""Agent awareness against fake workers that serve the embedded engine's /kv/* API (the real
tokenizer and chat template, so prefixes are real token ids): what gets prefetched, where, with
which pin and priority; where the call then goes; what is released when; what GET, the SSE
events and /metrics report; the ablation switches."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from gateway.keys import HASHER, POLICY
from gateway.main import add_gateway_args, awareness_options
from gateway.keys import AWARENESS
from gateway.keys import TAGGED
from tests.gateway.support import llm

pytestmark = pytest.mark.asyncio

NEVER = {"contains": "NEVER-THERE"}
NOT_NEVER = {"contains": "NEVER-THERE", "negate": True}


def system(tag: str) -> str:
    return f"[{tag} {uuid.uuid4().hex}] You are a meticulous assistant in a pipeline. Reply briefly. " * 3


def node(node_id: str, sys_prompt: str, user: str, **extra) -> dict:
    return {"id": node_id, "messages": [{"role": "system", "content": sys_prompt}, {"role": "user", "content": user}],
            **extra}


def kv_calls(*workers, path: str = "/kv/prefetch") -> list[tuple[str, dict]]:
    calls = sorted(((c.start, w.url, c) for w in workers for c in w.calls if c.path == path), key=lambda x: x[0])
    return [(url, c.body) for _, url, c in calls]


def ran_on(workers, wf: str, node_id: str) -> str:
    for w in workers:
        for c in w.calls:
            if c.path == "/v1/chat/completions" and c.body.get("rid", "").startswith(f"{wf}.{node_id}."):
                return w.url
    raise AssertionError(f"{node_id} never ran")


async def until(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


@pytest.fixture
def start(gateway, model_dir):
    async def go(workers, **overrides):
        return await gateway([w.url for w in workers], tokenizer_path=str(model_dir), **overrides)
    return go


async def test_a_predicted_call_is_prefetched_pinned_routed_and_released(start, fake_workers):
    workers = await fake_workers(3, kv_api=True, token_delay_s=0.03)
    gw = await start(workers, policy="round_robin")
    sys_b = system("B")
    wf = await gw.submit({"nodes": [llm("a", "one two three four five six seven eight"),
                                    node("b", sys_b, "Summarize this: {{a}}")]})
    body = await gw.wait(wf)
    assert body["status"] == "finished"
    prefetches = [(url, b) for url, b in kv_calls(*workers) if len(b["input_ids"]) > 40]
    assert len(prefetches) == 1, prefetches
    url, sent = prefetches[0]
    hasher = gw.app[HASHER]
    final = hasher.chat_ids([{"role": "system", "content": sys_b},
                             {"role": "user", "content": "Summarize this: " + body["outputs"]["a"]}])
    assert final[:len(sent["input_ids"])] == sent["input_ids"]  # a token prefix of the prompt that came
    assert sent["priority"] == -1 and sent["pin_ttl_s"] > 0  # one step away; pinned
    # Round robin would have sent b to the third worker; it went where its prefix was.
    assert ran_on(workers, wf, "b") == url
    record = body["nodes"]["b"]["prefetch"]
    assert record["predicted"] and record["outcome"] == "used" and record["worker"] == url
    assert record["dispatched_to"] == url and record["pinned_tokens"] > 0 and record["pin_held_s"] > 0
    assert record["prefix_tokens"] == len(sent["input_ids"]) and record["from"]["computed"] > 0
    pin_id = next(e for e in await gw.events(wf) if e["event"] == "prefetch" and e["data"]["phase"] == "done")[
        "data"]["pin_id"]
    assert any(b.get("pin_id") == pin_id for _, b in kv_calls(*workers, path="/kv/unpin"))
    assert all(not w.pins for w in workers)
    events = [e["event"] for e in await gw.events(wf)]
    assert "prefetch" in events and events[-1] == "workflow_finished"
    assert body["prefetch"]["predicted"] == 1 and body["prefetch"]["precision"] == 1.0


async def test_a_branch_not_taken_releases_its_pins_at_once(start, fake_workers):
    (w,) = await fake_workers(1, kv_api=True, token_delay_s=0.03)
    gw = await start([w])
    wf = await gw.submit({
        "nodes": [llm("a", "alpha beta gamma delta epsilon zeta eta theta"), node("b", system("B"), "Then {{a}}"),
                  {"id": "tool", "type": "external"}, node("d", system("D"), "Tool said {{tool}}")],
        "edges": [{"from": "a", "to": "b", "condition": NEVER}, {"from": "a", "to": "tool", "condition": NOT_NEVER},
                  {"from": "tool", "to": "d"}]})
    await gw.wait_node(wf, "tool", "waiting")
    aw = gw.app[AWARENESS]
    await until(lambda: (wf, "d") in aw.prefetcher.slots and aw.prefetcher.slots[(wf, "d")].pin is not None)
    b_slot = aw.prefetcher.slots[(wf, "b")]
    assert b_slot.released and b_slot.pin is None and b_slot.pin_held_s > 0
    b_pins = [e["data"]["pin_id"] for e in await _events_so_far(gw, wf)
              if e["event"] == "prefetch" and e["data"]["node"] == "b" and e["data"]["phase"] == "done"]
    assert b_pins and all(p not in w.pins for p in b_pins)  # unpinned while the workflow still runs
    assert aw.prefetcher.slots[(wf, "d")].pin in w.pins  # d (after the tool) is still held...
    caller = aw.prefetcher.slots[(wf, "tool<a")]
    assert caller.pin in w.pins and caller.url == w.url  # ...and so is a's conversation, during the tool call
    status, _, _ = await gw.call("POST", f"/v1/workflows/{wf}/nodes/tool/result", {"output": "42 degrees"})
    assert status == 200
    body = await gw.wait(wf)
    assert body["status"] == "finished" and not w.pins
    assert body["nodes"]["b"]["prefetch"]["outcome"] == "wasted"
    assert body["nodes"]["d"]["prefetch"]["outcome"] == "used"
    assert body["nodes"]["tool"]["prefetch"]["caller_pins"][0]["node"] == "a"


async def test_an_overdue_tool_call_lets_its_callers_pins_lapse(start, fake_workers):
    (w,) = await fake_workers(1, kv_api=True)
    gw = await start([w], default_tool_latency_s=0.0, pin_margin_s=0.0)  # every tool call is overdue at once
    wf = await gw.submit({"nodes": [node("a", system("A"), "Which tool?"), {"id": "tool", "type": "external"},
                                    node("d", system("D"), "Tool said {{tool}}")],
                          "edges": [{"from": "a", "to": "tool"}]})
    await gw.wait_node(wf, "tool", "waiting")
    aw = gw.app[AWARENESS]
    await until(lambda: (wf, "d") in aw.prefetcher.slots and aw.prefetcher.slots[(wf, "d")].prefetches)
    assert (wf, "tool<a") not in aw.prefetcher.slots and not kv_calls(w, path="/kv/pin")
    await gw.call("POST", f"/v1/workflows/{wf}/nodes/tool/result", {"output": "ok"})
    assert (await gw.wait(wf))["status"] == "finished"


async def _events_so_far(gw, wf: str) -> list[dict]:
    store = gw.app[AWARENESS].store
    return [{"event": t, "data": d} for _, t, d in await store.read_events(wf)]


async def test_learned_transitions_raise_precision(start, fake_workers):
    (w,) = await fake_workers(1, kv_api=True, token_delay_s=0.02)
    gw = await start([w])
    template = "tpl-" + uuid.uuid4().hex[:8]
    sys_b, sys_c = system("B"), system("C")
    summaries = []
    for _ in range(3):
        wf = await gw.submit({
            "template": template,
            "nodes": [llm("a", "one two three four five six seven eight nine ten"), node("b", sys_b, "B: {{a}}"),
                      node("c", sys_c, "C: {{a}}")],
            "edges": [{"from": "a", "to": "b", "condition": NEVER}, {"from": "a", "to": "c", "condition": NOT_NEVER}]})
        body = await gw.wait(wf)
        assert body["status"] == "finished"
        summaries.append((body["prefetch"], body["nodes"]["b"]["prefetch"]))
    (first, b_first), (_, _), (last, b_last) = summaries
    assert first["precision"] == 0.5 and b_first["predicted"]  # the prior: both branches look even
    assert last["precision"] == 1.0 and not b_last["predicted"] and b_last["static_only"]
    assert b_last["probability"] < 0.5
    status, text, _ = await gw.call("GET", "/metrics")
    assert 'agentgate_gateway_predictions_total{outcome="wasted",source="workflow"} 1.0' in text
    assert 'agentgate_gateway_prediction_precision{source="workflow"}' in text


async def test_token_pipelining_prefills_the_growing_prompt(start, fake_workers):
    (w,) = await fake_workers(1, kv_api=True, token_delay_s=0.02)
    gw = await start([w])
    words = " ".join(f"word{i}" for i in range(60))
    sys_b = system("B")

    async def run(option: bool) -> list[list[int]]:
        before = len(kv_calls(w))
        wf = await gw.submit({"options": {"token_pipelining": option},
                              "nodes": [llm("a", words, max_tokens=100), node("b", sys_b, "Summarize: {{a}}")]})
        body = await gw.wait(wf)
        assert body["status"] == "finished"
        final = gw.app[HASHER].chat_ids([{"role": "system", "content": sys_b},
                                         {"role": "user", "content": "Summarize: " + body["outputs"]["a"]}])
        sent = [b["input_ids"] for _, b in kv_calls(w)[before:]]
        assert all(final[:len(ids)] == ids for ids in sent)  # every increment is a token prefix of the prompt
        return sent, final, body

    sent, final, body = await run(True)
    assert len(sent) >= 3 and all(len(x) < len(y) for x, y in zip(sent, sent[1:]))
    assert body["nodes"]["b"]["prefetch"]["pipelined"]
    prefetcher = gw.app[AWARENESS].prefetcher
    await until(lambda: not any(s.pending for s in prefetcher.slots.values()))  # the last increment has landed
    off, off_final, _ = await run(False)
    # Off: only the static prefix is sent (a pin renewal on a slow machine resends the same ids), never a's tokens.
    static = len(off[0])
    assert all(ids == off[0] for ids in off) and len(off_final) - static > 100
    # On: by the time a finished, most of its output in b's prompt was prefilled. Not all: increments go
    # every few blocks, one in flight per node, and b's dispatch drops one still queued behind it.
    assert len(sent[-1]) - static >= (len(final) - static) / 2


async def test_pipelining_off_overrides_the_workflow(start, fake_workers):
    (w,) = await fake_workers(1, kv_api=True, token_delay_s=0.01)
    gw = await start([w], token_pipelining="off")
    wf = await gw.submit({"options": {"token_pipelining": True},
                          "nodes": [llm("a", " ".join(["x"] * 60), max_tokens=80), node("b", system("B"), "S: {{a}}")]})
    assert (await gw.wait(wf))["status"] == "finished"
    assert len(kv_calls(w)) == 1


async def test_no_prediction_sends_nothing_and_no_pinning_sends_no_pins(start, fake_workers):
    (w,) = await fake_workers(1, kv_api=True, token_delay_s=0.02)
    spec = lambda: {"nodes": [llm("a", "one two three four five"), {"id": "tool", "type": "external"},  # noqa: E731
                              node("b", system("B"), "{{tool}}")], "edges": [{"from": "a", "to": "tool"}]}
    gw = await start([w], prediction=False)
    wf = await gw.submit(spec())
    await gw.wait_node(wf, "tool", "waiting")
    await gw.call("POST", f"/v1/workflows/{wf}/nodes/tool/result", {"output": "ok"})
    body = await gw.wait(wf)
    assert body["status"] == "finished" and not kv_calls(w) and body["nodes"]["b"]["prefetch"] is None
    await gw.stop()
    gw = await start([w], pinning=False)
    wf = await gw.submit(spec())
    await gw.wait_node(wf, "tool", "waiting")
    await until(lambda: kv_calls(w))
    await gw.call("POST", f"/v1/workflows/{wf}/nodes/tool/result", {"output": "ok"})
    body = await gw.wait(wf)
    assert body["status"] == "finished"
    assert kv_calls(w) and all("pin_ttl_s" not in b for _, b in kv_calls(w))
    assert not kv_calls(w, path="/kv/pin") and body["nodes"]["b"]["prefetch"]["outcome"] == "used"


async def test_tagged_client_calls_get_their_next_call_prefetched(start, fake_workers):
    workers = await fake_workers(3, kv_api=True)
    gw = await start(workers, policy="round_robin")
    template = "agent-" + uuid.uuid4().hex[:8]
    status, _, _ = await gw.call("POST", "/v1/templates", {"name": template, "nodes": ["plan", "act"],
                                                           "edges": [{"source": "plan", "target": "act"},
                                                                     {"source": "act", "target": "plan"}]})
    assert status == 201
    prompts = {"plan": system("PLAN"), "act": system("ACT")}
    tagged = gw.app[TAGGED]

    async def call(agent: str, node_id: str, question: str):
        body = {"messages": [{"role": "system", "content": prompts[node_id]}, {"role": "user", "content": question}],
                "max_tokens": 4, "agent_hints": {"template": template, "node_id": node_id, "agent_id": agent}}
        status, out, _ = await gw.call("POST", "/v1/chat/completions", body)
        assert status == 200, out
        await until(lambda: not tagged._tasks)  # what the gateway does after the call

    for q in ("first question", "second question"):  # teaches plan → act → plan and both static prefixes
        await call("a1", "plan", q)
        await call("a1", "act", q)
    before = len(kv_calls(*workers))
    await call("a2", "plan", "third question")
    assert len(kv_calls(*workers)) > before
    url, sent = kv_calls(*workers)[-1]
    act_ids = gw.app[HASHER].chat_ids([{"role": "system", "content": prompts["act"]},
                                       {"role": "user", "content": "third question"}])
    assert act_ids[:len(sent["input_ids"])] == sent["input_ids"] and len(sent["input_ids"]) > 40
    assert sent["pin_ttl_s"] > 0
    pin = gw.app[AWARENESS].prefetcher.slots[(f"agent:{template}:a2", "act")].pin
    assert any(pin in w.pins for w in workers)
    policy, urls = gw.app[POLICY], sorted(w.url for w in workers)
    if urls[policy._next % len(urls)] == url:  # make round robin's own pick another worker
        policy._next += 1
    await call("a2", "act", "third question")
    assert _last_chat_worker(workers) == url  # the call went where its prefix was prefetched
    assert not any(pin in w.pins for w in workers)  # and the prediction's pin is gone
    status, text, _ = await gw.call("GET", "/metrics")
    assert 'agentgate_gateway_predictions_total{outcome="used",source="client"}' in text


def _last_chat_worker(workers) -> str:
    calls = [(c.start, w.url) for w in workers for c in w.calls if c.path == "/v1/chat/completions"]
    return max(calls)[1]


async def test_the_ablation_flags():
    import argparse

    parser = argparse.ArgumentParser()
    add_gateway_args(parser)
    full = awareness_options(parser.parse_args([]))
    assert full["prediction"] and full["pinning"] and full["token_pipelining"] == "auto"
    off = awareness_options(parser.parse_args(["--no-prediction", "--no-pinning", "--no-token-pipelining"]))
    assert not off["prediction"] and not off["pinning"] and off["token_pipelining"] == "off"
    assert awareness_options(parser.parse_args(["--token-pipelining", "on"]))["token_pipelining"] == "on"
