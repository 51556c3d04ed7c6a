"""LangChain v1 and LangGraph building blocks, unchanged, against a real gateway in front of a
real worker: `create_agent` completes a two-tool task while the gateway learns its graph and
prefetches its next call (agentgate.langgraph: public APIs only); a hand-built graph of
`bind_tools` (a named tool_choice), `ToolNode` and `tools_condition` calls a tool and answers
from its result; and
`with_structured_output`, whose every seeded sample validates against its schema.

The embedded 135M model does not call tools on its own under tool_choice "auto", so the agent
picks tool_choice per model call with LangChain's own middleware (`wrap_model_call`)."""

from __future__ import annotations

import ast
import asyncio
import uuid
from typing import Literal

import jsonschema
import pytest
from pydantic import BaseModel, Field

from tests.e2e.framework_tools import weather_and_time_tools
from tests.support import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]





async def test_create_agent_completes_a_two_tool_task_and_its_next_call_is_prefetched(gw):
    from langchain.agents import create_agent
    from langchain.agents.middleware import wrap_model_call
    from langchain_core.messages import AIMessage, ToolMessage

    from agentgate import AsyncClient
    from agentgate.langgraph import chat_model, register_graph, run_config
    from gateway.keys import AWARENESS

    tools = weather_and_time_tools()
    template = "weather-agent-" + uuid.uuid4().hex[:6]
    llm = chat_model(gw.url, template=template, temperature=0, max_tokens=64)  # the one changed line

    @wrap_model_call
    async def one_tool_at_a_time(request, handler):  # each tool once, in order, then an answer
        done = {m.name for m in request.messages if isinstance(m, ToolMessage)}
        todo = [t.name for t in tools if t.name not in done]
        return await handler(request.override(tool_choice=todo[0] if todo else "none"))

    agent = create_agent(llm, tools, middleware=[one_tool_at_a_time])
    async with AsyncClient(gw.url, timeout=60) as client:
        await register_graph(client, agent, template)  # the one added line
        out = await agent.ainvoke({"messages": [("user", "What is the weather in Paris, and what time is it there?")]},
                                  run_config("run-1"))
        learned = await client.template(template)
    messages = out["messages"]
    calls = [c for m in messages if isinstance(m, AIMessage) for c in m.tool_calls]
    assert [(c["name"], c["args"]) for c in calls] == [("get_weather", {"city": "Paris"}),
                                                        ("get_time", {"city": "Paris"})]
    assert [m.content for m in messages if isinstance(m, ToolMessage)] == ["It is sunny and 21 degrees in Paris.",
                                                                           "It is 14:05 in Paris."]
    final = messages[-1]
    assert isinstance(final, AIMessage) and not final.tool_calls and final.content
    assert "<tool_call>" not in final.content

    # The gateway knows the graph (get_graph()) and learned the run from its tagged calls: three `model`
    # calls, the tools node between them making none; after each it predicted the next `model` call.
    assert {"model", "tools"} <= set(learned["nodes"])
    assert learned["transitions"] == {"model": {"model": 2}}, learned["transitions"]
    assert learned["predictions"]["model"][0]["node"] == "model"
    precision, _ = gw.app[AWARENESS].metrics.prediction_quality("client")
    assert precision == 1.0  # every prefetched next call came (the last one is still pending)
    # the second call reads the first's conversation from the cache (the third, tool_choice "none", is shown
    # no tools, so its prompt is another one)
    first, second = [m.usage_metadata for m in messages if isinstance(m, AIMessage)][:2]
    assert second["input_token_details"]["cache_read"] >= first["input_tokens"] - 16, (first, second)


async def test_bind_tools_and_tool_node_in_a_hand_built_graph(gw):
    """The classic LangGraph agent: a model node calling `bind_tools`, `ToolNode` and `tools_condition`."""
    from langchain_core.messages import AIMessage, ToolMessage
    from langchain_openai import ChatOpenAI
    from langgraph.graph import START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode, tools_condition

    tools = weather_and_time_tools()
    llm = ChatOpenAI(base_url=gw.url + "/v1", api_key="unused", model="default", temperature=0, max_tokens=48)

    async def agent(state: MessagesState):  # a named call first, then an answer from its result
        called = any(isinstance(m, ToolMessage) for m in state["messages"])
        return {"messages": [await llm.bind_tools(tools, tool_choice="none" if called else "get_time")
                             .ainvoke(state["messages"])]}

    g = StateGraph(MessagesState)
    g.add_node("agent", agent)
    g.add_node("tools", ToolNode(tools))
    g.add_edge(START, "agent")
    g.add_conditional_edges("agent", tools_condition)
    g.add_edge("tools", "agent")
    out = await g.compile().ainvoke({"messages": [("user", "What time is it in Tokyo?")]}, {"recursion_limit": 8})
    _, call, result, answer = out["messages"]
    [tc] = call.tool_calls
    assert tc["name"] == "get_time" and tc["args"] == {"city": "Tokyo"} and tc["id"].startswith("call_")
    tools[1].args_schema.model_validate(tc["args"])  # valid for the tool's own schema
    assert isinstance(result, ToolMessage) and result.tool_call_id == tc["id"]
    assert result.content == "It is 14:05 in Tokyo."
    assert isinstance(answer, AIMessage) and not answer.tool_calls and answer.content
    assert "<tool_call>" not in answer.content


class Pet(BaseModel):
    name: str = Field(max_length=16)
    species: Literal["cat", "dog", "bird"]
    age: int = Field(ge=0, le=30)


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
async def test_with_structured_output_validates_against_its_schema(gw, method):
    """Seeded samples at temperature 1 (response_format json_schema, or a forced tool call): every one
    parses into the pydantic model and validates against its JSON Schema."""
    from langchain_openai import ChatOpenAI

    def structured(seed: int):
        llm = ChatOpenAI(base_url=gw.url + "/v1", api_key="unused", model="default", temperature=1.0, seed=seed,
                         max_tokens=64)
        return llm.with_structured_output(Pet, method=method)

    pets = await asyncio.gather(*(structured(seed).ainvoke("Invent a pet and describe it.") for seed in range(8)))
    assert all(isinstance(p, Pet) for p in pets)
    for p in pets:
        jsonschema.validate(p.model_dump(), Pet.model_json_schema())
    assert len({p.model_dump_json() for p in pets}) > 3  # really sampled

    schema = {"title": "verdict", "description": "A yes/no answer", "type": "object",
              "properties": {"answer": {"enum": ["yes", "no"]}}, "required": ["answer"]}
    # room for the call's markup too (function_calling): a call cut off by max_tokens is no call
    llm = ChatOpenAI(base_url=gw.url + "/v1", api_key="unused", model="default", temperature=0, max_tokens=64)
    verdict = await llm.with_structured_output(schema, method=method).ainvoke("Is water wet?")
    jsonschema.validate(verdict, schema)


def test_the_adapter_uses_public_names_only():
    """agents/agentgate/langgraph.py imports no private name and reads no private attribute (it once
    overrode ChatOpenAI._get_request_payload and read langgraph's var_child_runnable_config)."""
    tree = ast.parse((REPO_ROOT / "agents" / "agentgate" / "langgraph.py").read_text())
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names]
    modules = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    attributes = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)]
    assert "get_config" in imported and "get_graph" in attributes  # what it does use
    def is_private(part: str) -> bool:  # _name, not a dunder such as __future__ or __name__
        return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))

    private = [x for x in imported + modules + attributes if x and any(is_private(p) for p in x.split("."))]
    assert private == []
