"""The OpenAI-compatible proxy, /generate passthrough, /v1/models, /health, /metrics, bad input."""

from __future__ import annotations

import orjson
import pytest

pytestmark = pytest.mark.asyncio

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hello world"}]}


async def sse_chunks(gw, path: str, body: dict) -> list:
    async with gw.session.post(gw.url + path, data=orjson.dumps(body),
                               headers={"Content-Type": "application/json"}) as r:
        assert r.status == 200 and r.content_type == "text/event-stream"
        raw = await r.read()
    lines = [ln[6:] for ln in raw.decode().split("\n") if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [orjson.loads(ln) for ln in lines[:-1]]


async def test_chat_passthrough_keeps_usage_and_strips_agent_hints(gateway, fake_workers):
    (w,) = await fake_workers(1)
    gw = await gateway([w.url], workflow_priority=1)
    status, body, _ = await gw.call("POST", "/v1/chat/completions", {**CHAT, "agent_hints": {
        "workflow_id": "wf-1", "node_id": "n", "priority": 3}}, headers={
        "Content-Type": "application/json", "x-agent-id": "planner", "x-agent-template": "react"})
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == "echo: hello world"
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    sent = w.calls[-1].body
    assert "agent_hints" not in sent and sent["messages"] == CHAT["messages"]
    assert sent["priority"] == 1 + 3  # an agent's call: GatewayConfig.workflow_priority + its hint
    status, body, _ = await gw.call("POST", "/v1/chat/completions", CHAT)
    assert "priority" not in w.calls[-1].body  # a plain call goes as sent
    await gw.call("POST", "/v1/chat/completions", {**CHAT, "priority": -2}, headers={
        "Content-Type": "application/json", "x-agent-template": "react"})
    assert w.calls[-1].body["priority"] == -2  # a call's own priority stands
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] > 0  # the worker's number, untouched
    status, err, _ = await gw.call("POST", "/v1/chat/completions", {**CHAT, "agent_hints": {"priority": "high"}})
    assert status == 400 and err["error"]["param"] == "agent_hints"


async def test_streaming_chat_completions_and_generate_pass_through(gateway, fake_workers):
    (w,) = await fake_workers(1)
    gw = await gateway([w.url])
    chunks = await sse_chunks(gw, "/v1/chat/completions", {**CHAT, "stream": True,
                                                           "stream_options": {"include_usage": True}})
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "echo: hello world"
    assert chunks[-1]["usage"]["prompt_tokens"] > 0
    chunks = await sse_chunks(gw, "/v1/completions", {"prompt": "once upon", "stream": True})
    assert "".join(c["choices"][0]["text"] for c in chunks) == "echo: once upon"
    status, body, _ = await gw.call("POST", "/v1/completions", {"prompt": "once upon"})
    assert status == 200 and body["choices"][0]["text"] == "echo: once upon" and "usage" in body
    status, body, _ = await gw.call("POST", "/generate", {"text": "abc", "sampling_params": {"max_new_tokens": 4}})
    assert status == 200 and body["text"] == "echo: abc" and body["meta_info"]["finish_reason"]["type"] == "stop"
    chunks = await sse_chunks(gw, "/generate", {"text": "a b", "stream": True})
    assert chunks[-1]["text"] == "echo: a b"  # SGLang streams cumulative text; relayed as is
    assert [c.path for c in w.calls] == ["/v1/chat/completions", "/v1/completions", "/v1/completions",
                                         "/generate", "/generate"]


async def test_single_calls_are_routed_by_prefix_and_retried_past_a_dead_worker(gateway, fake_workers):
    workers = await fake_workers(3)
    gw = await gateway([w.url for w in workers])  # kv_aware
    system = {"role": "system", "content": "You are a meticulous agent. " * 40}
    for question in ("first question", "second question", "third"):
        status, _, _ = await gw.call("POST", "/v1/chat/completions", {"messages": [
            system, {"role": "user", "content": question}]})
        assert status == 200
    holders = [w for w in workers if w.calls]
    assert len(holders) == 1 and len(holders[0].calls) == 3
    await holders[0].stop()  # the holder dies: the next call goes elsewhere, no error
    status, body, _ = await gw.call("POST", "/v1/chat/completions", {"messages": [system, {
        "role": "user", "content": "fourth"}]})
    assert status == 200 and body["choices"][0]["message"]["content"] == "echo: fourth"


async def test_models_health_and_metrics(gateway, fake_workers):
    workers = await fake_workers(2)
    gw = await gateway([w.url for w in workers])
    status, models, _ = await gw.call("GET", "/v1/models")
    assert status == 200 and [m["id"] for m in models["data"]] == ["fake-model"]
    status, health, _ = await gw.call("GET", "/health")
    assert status == 200 and health["redis"] and len(health["workers"]) == 2
    await gw.call("POST", "/v1/chat/completions", CHAT)
    await gw.call("POST", "/v1/chat/completions", CHAT)
    status, text, _ = await gw.call("GET", "/metrics")
    assert status == 200
    assert 'agentgate_gateway_requests_total{route="/v1/chat/completions",status="200"} 2.0' in text
    assert "agentgate_gateway_cached_tokens_total" in text and "agentgate_gateway_worker_in_flight{" in text
    assert 'agentgate_gateway_request_seconds_bucket{le="+Inf",route="/v1/chat/completions"} 2' in text


async def test_bad_input_is_refused_openai_shaped(gateway, fake_workers):
    (w,) = await fake_workers(1)
    gw = await gateway([w.url], max_body_bytes=4096)
    status, err, _ = await gw.call("POST", "/v1/chat/completions", raw=b'{"messages": [' + b"x" * 5000)
    assert status == 413 and err["error"]["code"] == 413
    status, err, _ = await gw.call("POST", "/v1/workflows", raw=b"x" * 5000)
    assert status == 413
    status, err, _ = await gw.call("POST", "/v1/chat/completions", raw=b'{"messages": [')
    assert status == 400 and "malformed JSON" in err["error"]["message"]
    status, err, _ = await gw.call("POST", "/v1/workflows", raw=b"{nope")
    assert status == 400 and err["error"]["type"] == "invalid_request_error"
    status, err, _ = await gw.call("POST", "/v1/chat/completions", raw=b"[1, 2]")
    assert status == 400
    status, err, _ = await gw.call("GET", "/v1/workflows?limit=0")
    assert status == 400 and err["error"]["param"] == "limit"
    status, err, _ = await gw.call("GET", "/v1/nothing-here")
    assert status == 404 and err["error"]["type"] == "not_found_error"
    assert w.calls == []


async def test_output_budget_reads_every_form_of_max_tokens():
    from gateway.admission import output_budget

    assert output_budget({"max_tokens": 24}) == 24
    assert output_budget({"max_completion_tokens": 30, "max_tokens": 24}) == 30
    assert output_budget({"sampling_params": {"max_new_tokens": 12}}) == 12
    assert output_budget({}) == 0
    assert output_budget({"max_tokens": True, "sampling_params": "x"}) == 0  # not a count: unknown
