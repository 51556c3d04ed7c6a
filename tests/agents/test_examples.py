"""Every example agent completes with `agentgate run FILE --quick` against a real gateway in front of
the session's real engine worker (one gateway for the module: CPU is scarce), and streamed chat calls
with agent_hints reach that worker and come back with prefix-cache usage."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from agentgate import AsyncClient, Client
from agentgate.cli import main
from agentgate.examples import (
    agents_sdk,
    code_edit,
    map_reduce,
    multi_agent,
    react,
    react_langgraph,
)
from agentgate.examples.tools import run_tool
from agentgate.sequential import run_client_side

from tests.support import REPO_ROOT

pytestmark = pytest.mark.slow
EXAMPLES = REPO_ROOT / "agents" / "agentgate" / "examples"
TIMEOUT = "300"


@pytest.fixture(scope="module")
def real_gw(served, worker):
    return served.gateway([worker], request_timeout_s=300)


def run_example(name: str, url: str, capsys, *extra: str) -> str:
    """`agentgate run agents/agentgate/examples/NAME.py --quick`; its printed output (exit status 0 asserted)."""
    code = main(["run", str(EXAMPLES / f"{name}.py"), "--quick", "--gateway", url, "--timeout", TIMEOUT, *extra])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    return out


def finished_state(out: str, url: str):
    wf_id = re.search(r"workflow (wf-[0-9a-f]+): finished", out)
    assert wf_id, out[-2000:]
    with Client(url, timeout=60) as c:
        state = c.get(wf_id.group(1))
    assert state.status == "finished"
    for node in state.nodes.values():
        assert node.status in ("finished", "skipped"), (node.id, node.status, node.error)
    assert state.cache.prompt_tokens > 1000 and state.cache.cached_tokens > 0  # long shared system prompts
    return state


def test_react_calls_its_tools_and_answers(real_gw, capsys):
    state = finished_state(run_example("react", real_gw.url, capsys), real_gw.url)
    assert set(state.nodes) == {"think_1", "act_1", "answer", "finish"}
    # the step is a real tool call, decoded under the grammar of one call to one of its tools
    [step] = json.loads(state.outputs["think_1"])
    assert step["name"] in ("search", "calculator", "final_answer") and isinstance(step["arguments"], dict)
    if step["name"] != "final_answer":  # the client ran the call; its result is the next turn
        assert state.outputs["act_1"] == run_tool(step["name"], step["arguments"])
        think, answer = state.nodes["think_1"], state.nodes["answer"]
        # the answer's chat continues think_1's: its prompt, think_1's call as the assistant turn, the
        # result; so the cache covers all of think_1's prompt (bar the last partial block) and more
        assert answer.prompt_tokens > think.prompt_tokens + think.completion_tokens
        assert answer.cached_tokens >= think.prompt_tokens - 16
        assert state.outputs["finish"] == json.loads(state.outputs["answer"])["answer"].strip()
    else:
        assert state.nodes["act_1"].status == state.nodes["answer"].status == "skipped"
        assert state.outputs["finish"] == step["arguments"]["answer"].strip()
    assert state.outputs["finish"].strip()
    assert state.nodes["think_1"].prompt_tokens > 1000  # system prompt + tool schemas + examples


def test_a_client_driven_react_run_hands_on_the_tool_calls_as_the_gateway_does(real_gw, worker):
    """The client-driven loop (the baseline that drives agents through sglang-router in bench_workflows)
    shapes a node's output as the gateway does: think_1's tool calls as JSON, which act_1 runs. Against
    the same worker, greedy, its outputs are the gateway's exactly."""
    with Client(real_gw.url, timeout=300) as c:
        via_gateway = c.run(react.build(quick=True))
    state = asyncio.run(run_client_side(react.build(quick=True), worker))
    assert state.status == "finished", state.error
    assert json.loads(state.outputs["think_1"])[0]["name"] in ("search", "calculator", "final_answer")
    assert state.outputs == via_gateway.outputs


def test_map_reduce_maps_every_chunk_then_reduces(real_gw, capsys):
    state = finished_state(run_example("map_reduce", real_gw.url, capsys), real_gw.url)
    expected_maps = sum(len(map_reduce.chunks(text)) for _, text in map_reduce.documents()[:2])
    maps = [n for n in state.nodes if n.startswith("map_")]
    assert len(maps) == expected_maps >= 2
    assert state.outputs["digest"] and state.outputs["actions"]
    reduce_started = min(state.nodes[n].started for n in ("digest", "actions"))
    assert reduce_started >= max(state.nodes[m].finished for m in maps)
    assert state.nodes["digest"].cached_tokens > 0  # the shared style guide


def test_multi_agent_runs_executors_in_parallel_and_a_critic(real_gw, capsys):
    state = finished_state(run_example("multi_agent", real_gw.url, capsys), real_gw.url)
    market, engineering = state.nodes["market"], state.nodes["engineering"]
    assert market.started < engineering.finished and engineering.started < market.finished  # overlapped
    assert state.nodes["revise"].status == ("finished" if "VERDICT: REVISE" in state.outputs["critic"]
                                            else "skipped")
    assert state.outputs["brief"]
    assert all(state.nodes[n].cached_tokens > 0 for n in ("critic", "brief"))


def test_code_edit_checks_the_edit(real_gw, capsys):
    state = finished_state(run_example("code_edit", real_gw.url, capsys), real_gw.url)
    report = json.loads(state.outputs["check"])
    assert set(report) == {"parses", "error", "lines_changed", "diff"}
    assert report == code_edit.check_python(code_edit.source("ratelimit.py"), state.outputs["edit"])
    # each turn's prompt is the previous one plus its answer: a cache hit on the same worker
    assert state.nodes["edit"].cached_tokens >= 0.8 * state.nodes["edit"].prompt_tokens


def test_langgraph_prebuilt_react_agent_calls_tools_and_tags_its_calls(real_gw):
    with Client(real_gw.url, timeout=300) as c:
        run = react_langgraph.run_agent(c, quick=True, inputs={"question": react.QUESTIONS[1]})
        learned = c.template(react_langgraph.TEMPLATE)
    # one required call to search or calculator, then final_answer by name, whose result ends the run
    first, last = run.outputs["tool_calls"].splitlines()
    assert re.fullmatch(r"(search\(query|calculator\(expression)='.+'\)", first), first
    assert last.startswith("final_answer(answer=") and run.outputs["answer"].strip()
    assert [c.node for c in run.calls] == ["agent", "agent"]
    assert run.calls[1].cached_tokens >= run.calls[0].prompt_tokens - 16  # the conversation so far, cached
    assert {"agent", "tools"} <= set(learned["nodes"])  # create_react_agent's graph, from get_graph()
    assert learned["transitions"].get("agent", {}).get("agent") == 1, learned["transitions"]


def test_agents_sdk_hands_off_and_calls_a_function_tool(real_gw):
    with Client(real_gw.url, timeout=300) as c:
        run = agents_sdk.run_agent(c, quick=True, inputs={"question": react.QUESTIONS[1]})
        learned = c.template(agents_sdk.TEMPLATE)  # registered from the agents' handoffs
    assert run.outputs["agents"] == "Triage agent → Billing agent"
    first = run.outputs["tool_calls"].splitlines()[0]  # billing's first call is required
    assert re.fullmatch(r'(search\(\{"query"|calculator\(\{"expression"): ".+"\}\)', first), first
    assert run.outputs["answer"].strip()
    assert [c.node for c in run.calls][:3] == ["triage", "billing", "billing"]
    assert learned["nodes"] == ["triage", "billing"]
    assert learned["transitions"]["triage"] == {"billing": 1}, learned["transitions"]


def test_every_example_builds_realistic_prompts():
    from common.tokenizer import Tokenizer
    from engine.model.prepare import default_model_dir

    tok = Tokenizer(default_model_dir())
    for module in (react, map_reduce, multi_agent, code_edit):
        for quick in (True, False):
            nodes = module.build(quick=quick, variant=3).to_dict()["nodes"]
            systems = {m["content"] for n in nodes for m in n.get("messages", []) if m["role"] == "system"}
            assert len(systems) == 1, module.__name__  # one system prompt, shared by every call
            assert 500 <= len(tok.encode(systems.pop())) <= 2000, module.__name__
            assert all(n.get("max_tokens", 0) <= 320 for n in nodes if n["type"] == "llm")


def test_streamed_chat_with_hints_reaches_the_worker(real_gw):
    messages = [{"role": "system", "content": multi_agent.CHARTER},
                {"role": "user", "content": "You are the PLANNER. One line: what is workstream 1?"}]
    hints = {"workflow_id": "stream-e2e", "node_id": "plan", "template": "stream-e2e"}
    with Client(real_gw.url, timeout=300) as c:
        c.chat(messages, max_tokens=1, temperature=0)  # the charter is now cached on the worker
        chunks = list(c.chat_stream(messages, agent_hints=hints, max_tokens=6, temperature=0))
    text = "".join(ch.text for ch in chunks)
    assert text and 0 < chunks[-1].usage["completion_tokens"] <= 6
    assert chunks[-1].cached_tokens > 500


@pytest.mark.asyncio
async def test_async_streamed_chat_matches_the_sync_one(real_gw):
    messages = [{"role": "system", "content": multi_agent.CHARTER},
                {"role": "user", "content": "You are the PLANNER. One line: what is workstream 1?"}]
    with Client(real_gw.url, timeout=300) as c:
        expected = c.chat(messages, max_tokens=6, temperature=0).text
    async with AsyncClient(real_gw.url, timeout=300) as c:
        chunks = [ch async for ch in c.chat_stream(messages, agent_hints={"node_id": "plan"}, max_tokens=6,
                                                   temperature=0)]
    assert "".join(ch.text for ch in chunks) == expected  # greedy: the same tokens, streamed
    assert chunks[-1].cached_tokens > 500
