"""`run_sequential`: a workflow run node by node against a worker's OpenAI API, with the gateway's own
semantics (refs, conditions, skips, tools), so its outputs match what the gateway produces."""

from __future__ import annotations

import pytest

from agentgate import AsyncClient
from agentgate.sequential import run_sequential
from agentgate.workflow import Workflow, contains

pytestmark = pytest.mark.asyncio


def branching() -> Workflow:
    wf = Workflow("seq-demo", inputs={"topic": "tea"})
    a = wf.llm("a", "tell me about {{inputs.topic}}", max_tokens=9)
    b = wf.llm("b", f"expand {a}")
    c = wf.llm("c", f"never runs {a}")
    wf.only_if(a, c, when=contains("coffee"))

    @wf.tool(after=[b, c])
    def lookup(b, topic):
        return {"found": f"{topic}:{len(b)}"}

    wf.llm("d", f"final {lookup} / {c}")
    return wf


async def test_sequential_matches_the_gateway_and_runs_one_call_at_a_time(gw, fake):
    async with AsyncClient(gw.url, timeout=10) as c:
        via_gateway = await c.run(branching())
    before = len(fake.calls)
    state = await run_sequential(branching(), fake.url)
    assert state.status == "finished" and state.error is None
    assert state.outputs == via_gateway.outputs
    assert {n: i.status for n, i in state.nodes.items()} == {n: i.status for n, i in via_gateway.nodes.items()}
    assert state.nodes["c"].status == "skipped" and state.outputs["lookup"] == '{"found": "tea:36"}'
    assert state.outputs["d"] == 'echo: final {"found": "tea:36"} / '

    calls = fake.calls[before:]
    assert [call.body["messages"][-1]["content"] for call in calls] == [
        "tell me about tea", "expand echo: tell me about tea", 'final {"found": "tea:36"} / ']
    assert all(call.body["stream"] and call.body["temperature"] == 0.0 for call in calls)
    assert calls[0].body["max_tokens"] == 9 and calls[1].body["max_tokens"] == 128  # the gateway's default
    assert all(prev.end <= nxt.start for prev, nxt in zip(calls, calls[1:])), "calls overlapped"

    a, d = state.nodes["a"], state.nodes["d"]
    assert a.worker == fake.url and a.started <= d.started and a.finished <= d.started
    assert a.ttft_s is not None and a.completion_tokens > 0
    assert state.cache.prompt_tokens == sum(n.prompt_tokens for n in state.nodes.values()) > 0


async def test_a_failing_tool_or_call_ends_the_run_failed(fake, served):
    wf = Workflow()
    a = wf.llm("a", "hi")
    wf.external("boom", lambda a: 1 / 0, after=a)
    wf.llm("after", "never {{boom}}")
    state = await run_sequential(wf, fake.url)
    assert state.status == "failed" and "ZeroDivisionError" in state.error
    assert state.nodes["a"].status == "finished" and state.nodes["boom"].status == "failed"
    assert state.nodes["after"].status == "cancelled"

    broken = served.worker(fail_with="500")
    state = await run_sequential({"nodes": [{"id": "x", "messages": [{"role": "user", "content": "hi"}]}]},
                                 broken.url)
    assert state.status == "failed" and state.nodes["x"].status == "failed" and "node 'x' failed" in state.error
