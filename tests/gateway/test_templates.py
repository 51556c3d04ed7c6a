"""/v1/templates: registration (LangGraph shapes too), transitions learned from tagged calls
and from templated workflows, and the predictions they give."""

from __future__ import annotations

import pytest

from tests.gateway.support import llm

pytestmark = pytest.mark.asyncio

REACT = {"name": "react", "nodes": [{"id": "__start__", "type": "schema"}, {"id": "agent"}, {"id": "tools"},
                                    {"id": "__end__"}],
         "edges": [{"source": "__start__", "target": "agent"},
                   {"source": "agent", "target": "tools", "conditional": True},
                   {"source": "agent", "target": "__end__", "conditional": True},
                   {"source": "tools", "target": "agent"}]}


async def test_register_learn_from_tagged_calls_and_predict(gateway, fake_workers):
    (w,) = await fake_workers(1)
    gw = await gateway([w.url])
    status, body, _ = await gw.call("POST", "/v1/templates", REACT)
    assert status == 201 and body == {"name": "react", "nodes": 4, "edges": 4}
    status, err, _ = await gw.call("POST", "/v1/templates", {"name": "bad", "nodes": ["a"],
                                                             "edges": [{"from": "a", "to": "b"}]})
    assert status == 422 and "unknown node 'b'" in err["error"]["message"]
    # One agent's calls: agent → tools → agent → tools → agent (hints in the body and in headers).
    for i, node in enumerate(["agent", "tools", "agent", "tools", "agent"]):
        msg = {"messages": [{"role": "user", "content": f"step {i}"}]}
        if i % 2:
            await gw.call("POST", "/v1/chat/completions", msg, headers={
                "Content-Type": "application/json", "x-agent-template": "react", "x-agent-node-id": node,
                "x-agent-id": "agent-7"})
        else:
            await gw.call("POST", "/v1/chat/completions", {**msg, "agent_hints": {
                "template": "react", "node_id": node, "agent_id": "agent-7"}})
    status, tpl, _ = await gw.call("GET", "/v1/templates/react")
    assert status == 200
    assert tpl["transitions"] == {"agent": {"tools": 2}, "tools": {"agent": 2}}
    assert tpl["predictions"]["agent"] == [{"node": "tools", "p": 1.0}]
    assert tpl["predictions"]["__start__"] == [{"node": "agent", "p": 1.0}]  # from the template's edges
    _, names, _ = await gw.call("GET", "/v1/templates")
    assert names["data"] == ["react"]
    status, _, _ = await gw.call("GET", "/v1/templates/nope")
    assert status == 404


async def test_templated_workflows_teach_their_transitions(gateway, fake_workers):
    (w,) = await fake_workers(1, reply=lambda m: "yes")
    gw = await gateway([w.url])
    await gw.call("POST", "/v1/templates", {"name": "flow", "nodes": ["a", "b", "c"], "edges": [
        {"from": "a", "to": "b", "conditional": True}, {"from": "a", "to": "c", "conditional": True}]})
    wf = await gw.submit({"template": "flow", "nodes": [llm("a", "go"), llm("b", "{{a}}"), llm("c", "{{a}}")],
                          "edges": [{"from": "a", "to": "b", "condition": {"contains": "yes"}},
                                    {"from": "a", "to": "c", "condition": {"contains": "no"}}]})
    assert (await gw.wait(wf))["status"] == "finished"
    _, tpl, _ = await gw.call("GET", "/v1/templates/flow")
    assert tpl["transitions"] == {"a": {"b": 1}}
    assert tpl["predictions"]["a"] == [{"node": "b", "p": 1.0}]
