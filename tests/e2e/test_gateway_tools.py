"""Workflow nodes carry tools, tool_choice, response_format and sampling params
(OpenAI's and SGLang's forms) to a real worker: SGLang's max_new_tokens bounds
the node, a parsed tool call is the node's output and reaches a downstream
external node as JSON, and a field the gateway cannot use is a 422 naming it."""

from __future__ import annotations

import json

import pytest

from tests.gateway.support import llm

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24}},
                   "required": ["city"]}}}


async def test_sglang_max_new_tokens_bounds_the_node(gw):
    wf = await gw.submit({"nodes": [
        llm("sglang", "Tell me a long story about the sea.",
            sampling_params={"max_new_tokens": 24, "ignore_eos": True, "temperature": 0}),
        llm("openai", "Tell me a long story about the sea.", max_completion_tokens=10, ignore_eos=True)]})
    body = await gw.wait(wf, timeout=150)
    assert body["status"] == "finished", body
    assert body["nodes"]["sglang"]["usage"]["completion_tokens"] == 24  # not the default 16 (or 128)
    assert body["nodes"]["openai"]["usage"]["completion_tokens"] == 10


async def test_a_tool_call_is_the_node_output_and_reaches_an_external_node(gw):
    wf = await gw.submit({"nodes": [
        llm("pick", "What is the weather in Paris?", tools=[WEATHER], output="tool_call", max_tokens=48,
            tool_choice={"type": "function", "function": {"name": "get_weather"}}),
        {"id": "weather", "type": "external", "messages": [{"role": "user", "content": "{{pick}}"}]},
        llm("report", "Weather: {{weather}}. Say it in five words.", max_tokens=12)],
        "edges": [{"from": "pick", "to": "weather"}, {"from": "weather", "to": "report"}]})
    await gw.wait_node(wf, "weather", "waiting", timeout=150)
    started = [e for e in await _events_so_far(gw, wf) if e["event"] == "node_started" and
               e["data"]["node"] == "weather"]
    [message] = started[0]["data"]["messages"]
    assert json.loads(message["content"]) == {"city": "Paris"}  # the call's arguments, as JSON
    status, ok, _ = await gw.call("POST", f"/v1/workflows/{wf}/nodes/weather/result", {"output": "sunny, 21C"})
    assert status == 200, ok
    body = await gw.wait(wf, timeout=150)
    assert body["status"] == "finished", body
    assert json.loads(body["outputs"]["pick"]) == {"city": "Paris"}


async def test_response_format_in_sglang_form(gw):
    schema = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}}, "required": ["answer"]}
    wf = await gw.submit({"nodes": [llm("judge", "Is water wet?", max_tokens=24,
                                        sampling_params={"json_schema": json.dumps(schema)})]})
    body = await gw.wait(wf, timeout=150)
    assert json.loads(body["outputs"]["judge"])["answer"] in ("yes", "no")


@pytest.mark.parametrize("node, names", [
    ({"temprature": 0.5}, "temprature"),
    ({"sampling_params": {"max_new_tokens": 24, "n": 2}}, "n"),
    ({"max_tokens": 8, "sampling_params": {"max_new_tokens": 24}}, "max_tokens is set twice"),
    ({"output": "tool_call"}, "needs tools"),
])
async def test_a_field_the_gateway_cannot_use_is_a_422_naming_it(gw, node, names):
    status, body, _ = await gw.call("POST", "/v1/workflows", {"nodes": [llm("a", "hi", **node)]})
    assert status == 422
    assert names in body["error"]["message"]


async def _events_so_far(gw, wf: str) -> list[dict]:
    """The events stored so far (the stream stays open while the workflow waits on its external node)."""
    import asyncio

    out = []

    async def read():
        async with gw.session.get(f"{gw.url}/v1/workflows/{wf}/events") as r:
            current = {}
            async for raw in r.content:
                line = raw.decode().rstrip("\n")
                if not line and current:
                    out.append(current)
                    current = {}
                elif line.startswith("event: "):
                    current["event"] = line[7:]
                elif line.startswith("data: "):
                    current["data"] = json.loads(line[6:])

    try:
        await asyncio.wait_for(read(), timeout=2)
    except asyncio.TimeoutError:
        pass
    return out
