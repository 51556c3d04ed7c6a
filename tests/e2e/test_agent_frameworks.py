"""Agent frameworks, unchanged, against a real gateway in front of a real worker:
LangGraph's prebuilt ReAct agent completes a two-tool task, and an OpenAI Agents
SDK program hands off between agents and calls a function tool.

The embedded 135M model does not call tools on its own under tool_choice "auto",
so each program picks tool_choice per step with the framework's own public
means (a dynamic model for create_react_agent, ModelSettings for the Agents SDK);
every call, argument and answer is still the model's, decoded under the grammar
of the tool call the step asks for."""

from __future__ import annotations

import warnings

import pytest

from tests.e2e.framework_tools import weather_and_time_tools


pytestmark = [pytest.mark.slow, pytest.mark.asyncio]


async def test_langgraph_prebuilt_react_agent_completes_a_two_tool_task(gw):
    from langchain_core.messages import AIMessage, ToolMessage
    from langchain_openai import ChatOpenAI
    from langgraph.prebuilt import create_react_agent

    tools = weather_and_time_tools()
    llm = ChatOpenAI(base_url=gw.url + "/v1", api_key="unused", model="default", temperature=0, max_tokens=64)

    def model(state, runtime):  # each tool once, in order, then an answer
        done = {m.name for m in state["messages"] if isinstance(m, ToolMessage)}
        todo = [t.name for t in tools if t.name not in done]
        return llm.bind_tools(tools, tool_choice=todo[0] if todo else "none")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # create_react_agent's move to langchain.agents
        agent = create_react_agent(model, tools)
    out = await agent.ainvoke({"messages": [("user", "What is the weather in Paris, and what time is it there?")]},
                              {"recursion_limit": 10})
    messages = out["messages"]
    calls = [c for m in messages if isinstance(m, AIMessage) for c in m.tool_calls]
    assert [(c["name"], c["args"]) for c in calls] == [("get_weather", {"city": "Paris"}),
                                                        ("get_time", {"city": "Paris"})]
    results = [m.content for m in messages if isinstance(m, ToolMessage)]
    assert results == ["It is sunny and 21 degrees in Paris.", "It is 14:05 in Paris."]
    final = messages[-1]
    assert isinstance(final, AIMessage) and not final.tool_calls and final.content
    assert "<tool_call>" not in final.content


async def test_openai_agents_sdk_handoff_and_function_tool(gw):
    from openai import AsyncOpenAI

    from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled
    from agents.items import HandoffOutputItem, ToolCallItem

    set_tracing_disabled(True)
    model = OpenAIChatCompletionsModel(model="default",
                                       openai_client=AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused"))

    @function_tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        return f"It is sunny and 21 degrees in {city}."

    weather = Agent(name="Weather agent", instructions="You answer questions about the weather.", model=model,
                    tools=[get_weather], tool_use_behavior="stop_on_first_tool",
                    model_settings=ModelSettings(tool_choice="get_weather", temperature=0, max_tokens=64))
    triage = Agent(name="Triage agent", instructions="Hand the user to the right agent.", model=model,
                   handoffs=[weather], model_settings=ModelSettings(tool_choice="required", temperature=0,
                                                                    max_tokens=64))
    result = await Runner.run(triage, "What is the weather in Paris?")
    assert result.last_agent is weather
    assert any(isinstance(i, HandoffOutputItem) and i.target_agent is weather for i in result.new_items)
    [call] = [i for i in result.new_items if isinstance(i, ToolCallItem)]
    assert call.raw_item.name == "get_weather" and call.raw_item.arguments == '{"city": "Paris"}'
    assert result.final_output == "It is sunny and 21 degrees in Paris."
