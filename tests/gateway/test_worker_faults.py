"""Workers that hang or fail: time-to-first-token and inter-token timeouts move a hung call to
another worker; the breaker opens on the worker's faults, never on a request's own."""

from __future__ import annotations

import orjson
import pytest

from tests.gateway.support import llm

pytestmark = pytest.mark.asyncio

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hello there"}]}
# What a client may send by mistake; a worker that chokes on it (500) must not be blamed.
MALFORMED = [
    {"messages": [{"role": "user", "content": 5}]},
    {"messages": [{"content": "no role"}]},
    {"messages": "not a list"},
    {"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"},
]


async def test_a_worker_that_accepts_and_never_answers_times_out_and_the_workflow_completes(gateway, fake_workers):
    (hung,) = await fake_workers(1, fail_with="hang")
    (good,) = await fake_workers(1)
    gw = await gateway([hung.url, good.url], policy="round_robin", first_token_timeout_s=0.5)
    ids = [await gw.submit({"nodes": [llm("a", f"q{i}"), llm("b", "{{a}} more")],
                            "edges": [{"from": "a", "to": "b"}]}) for i in range(4)]
    for i, wf in enumerate(ids):
        body = await gw.wait(wf, timeout=30)
        assert body["status"] == "finished" and body["outputs"]["b"] == f"echo: echo: q{i} more", body
        assert all(n["worker"] == good.url for n in body["nodes"].values())
    assert hung.calls, "round robin sent none to the hung worker"
    timed_out = [n for wf in ids for n in (await gw.wait(wf))["nodes"].values() if n["attempts"] > 1]
    assert timed_out and all("timed out" in (n["error"] or "") or n["error"] is None for n in timed_out)


async def test_a_stream_that_stalls_after_its_first_token_is_retried_elsewhere(gateway, fake_workers):
    stalls = lambda body: "stall" in body["messages"][0]["content"]  # noqa: E731
    workers = await fake_workers(2, fail_with="stall", fail_when=stalls, reply=lambda m: "one two three four")
    gw = await gateway([w.url for w in workers], inter_token_timeout_s=0.5, first_token_timeout_s=5)
    wf = await gw.submit({"nodes": [llm("a", "a plain one")]})
    assert (await gw.wait(wf))["status"] == "finished"
    wf = await gw.submit({"nodes": [llm("s", "stall", max_retries=1)]})
    body = await gw.wait(wf, timeout=20)
    assert body["status"] == "failed" and body["nodes"]["s"]["attempts"] == 2, body
    assert "between tokens" in body["error"], body
    assert {c.body["rid"] for w in workers for c in w.calls if "stall" in c.body["messages"][0]["content"]} == {
        f"{wf}.s.1", f"{wf}.s.2"}
    stalled_on = [w for w in workers if any("stall" in c.body["messages"][0]["content"] for c in w.calls)]
    assert len(stalled_on) == 2  # the retry went to the other worker


async def test_malformed_requests_get_a_4xx_from_the_gateway_and_open_no_breaker(gateway, fake_workers):
    workers = await fake_workers(3)  # the fake worker answers 500 to bodies it cannot read
    gw = await gateway([w.url for w in workers], breaker_failures=1)
    for body in MALFORMED:
        status, err, _ = await gw.call("POST", "/v1/chat/completions", {**body, "agent_hints": {"node_id": "n"}})
        assert status == 400, (body, err)
        assert set(err["error"]) == {"message", "type", "code", "param"} and err["error"]["param"], err
    assert not any(w.calls for w in workers)  # refused before any worker saw it
    _, health, _ = await gw.call("GET", "/health")
    assert all(h["breaker"] == "closed" for h in health["workers"].values()), health
    for _ in range(3):
        status, body, _ = await gw.call("POST", "/v1/chat/completions", CHAT)
        assert status == 200 and body["choices"][0]["message"]["content"] == "echo: hello there"


async def test_a_hung_proxied_stream_is_cut_and_its_worker_blamed(gateway, fake_workers):
    (hung,) = await fake_workers(1, fail_with="hang")
    (good,) = await fake_workers(1)
    gw = await gateway([hung.url, good.url], policy="round_robin", first_token_timeout_s=0.5)
    for _ in range(2):  # round robin: one of them goes to the hung worker first and moves on
        async with gw.session.post(gw.url + "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
            assert r.status == 200
            lines = [ln[6:] for ln in (await r.read()).decode().split("\n") if ln.startswith("data: {")]
        chunks = [orjson.loads(ln) for ln in lines]
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == \
            "echo: hello there"
    _, health, _ = await gw.call("GET", "/health")
    assert health["workers"][hung.url]["in_flight"] == 0 and health["workers"][good.url]["in_flight"] == 0
    assert hung.calls and len(good.calls) == 2


async def test_stream_timeouts_default_by_worker_kind_unless_configured(gateway, fake_workers):
    from gateway.keys import POOL
    from gateway.workers.client import StreamTimeouts
    from gateway.workers.pool import STREAM_TIMEOUTS

    (engine,) = await fake_workers(1, kv_api=True)  # says "backend": "agentgate-engine", as the CPU engine does
    (other,) = await fake_workers(1)
    pool = (await gateway([engine.url, other.url])).app[POOL]
    assert pool.stream_timeouts(pool.workers[engine.url]) == STREAM_TIMEOUTS["agentgate-engine"]
    assert pool.stream_timeouts(pool.workers[other.url]) == STREAM_TIMEOUTS[None]
    assert STREAM_TIMEOUTS["agentgate-engine"].first_token_s > STREAM_TIMEOUTS[None].first_token_s
    pool = (await gateway([engine.url], first_token_timeout_s=2.0)).app[POOL]
    assert pool.stream_timeouts(pool.workers[engine.url]) == StreamTimeouts(2.0, 60.0)
