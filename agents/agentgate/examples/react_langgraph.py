"""The Nimbus support agent of react.py as LangGraph's prebuilt ReAct agent, on real tool calls.

`create_react_agent(model, tools)` is LangGraph's own graph (agent → tools → agent …);
here LangGraph runs it in the client and each `agent` step calls the gateway's
OpenAI-compatible chat API. The program is plain LangGraph + LangChain; for agent awareness
a user changes two lines:

    llm = chat_model(url, template=TEMPLATE)             # instead of ChatOpenAI(base_url=url + "/v1")
    register_graph(Client(url), agent, TEMPLATE)         # once, after create_react_agent

`chat_model` is a ChatOpenAI whose requests carry agent_hints {template, node_id: "agent",
workflow_id: the run}, read from LangGraph's public `get_config()`; `register_graph` sends
the graph's shape (its public `get_graph()`), so the gateway predicts the next `agent` call
while a tool runs and keeps its prefix in place.

The embedded 135M model rarely calls a tool on its own under tool_choice "auto", so the model
is picked per step (create_react_agent takes a callable): tool_choice "required" over search,
calculator and final_answer while steps are left, then final_answer by name. final_answer is
a `return_direct` tool, so calling it ends the run with the answer as its result. Same system
prompt, tools and questions as react.py.

    agentgate run agents/agentgate/examples/react_langgraph.py [--quick] [--input question="..."]
"""

from __future__ import annotations

import time
import warnings
from typing import Annotated

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import ToolMessage
from langchain_core.tools import tool
from pydantic import Field

from agentgate.errors import NotFound
from agentgate.examples import tools as nimbus
from agentgate.examples.react import QUESTIONS, SYSTEM
from agentgate.langgraph import chat_model, register_graph, run_config
from agentgate.state import AgentRun, CallInfo

TEMPLATE = "nimbus-react-langgraph"


@tool
def search(query: Annotated[str, Field(max_length=nimbus.ARG_MAX_LENGTH)]) -> str:
    """Full-text search over the Nimbus Cloud documentation; returns the two most relevant paragraphs."""
    return nimbus.run_tool("search", {"query": query})


@tool
def calculator(expression: Annotated[str, Field(max_length=nimbus.ARG_MAX_LENGTH)]) -> str:
    """Evaluates one arithmetic expression, e.g. 'round(0.084 * 720 * 1.05, 2)', and returns the number."""
    return nimbus.run_tool("calculator", {"expression": expression})


@tool(return_direct=True)
def final_answer(answer: Annotated[str, Field(max_length=nimbus.ANSWER_MAX_LENGTH)]) -> str:
    """Give the customer the final answer, in one to three sentences with numbers and units."""
    return answer


TOOLS = [search, calculator, final_answer]


class CallLog(BaseCallbackHandler):
    """Each chat-model call of a run, as CallInfo (LangChain's public callbacks: start, end, usage)."""

    def __init__(self, node: str = "agent"):
        self.node, self.calls, self._started = node, [], {}

    def on_chat_model_start(self, serialized, messages, *, run_id, **kwargs) -> None:
        self._started[run_id] = (time.time(), time.monotonic())

    def on_llm_end(self, response, *, run_id, **kwargs) -> None:
        wall, t0 = self._started.pop(run_id, (None, None))
        message = getattr(response.generations[0][0], "message", None)
        usage = getattr(message, "usage_metadata", None) or {}
        self.calls.append(CallInfo(self.node, usage.get("input_tokens", 0),
                                   (usage.get("input_token_details") or {}).get("cache_read", 0),
                                   usage.get("output_tokens", 0),
                                   time.monotonic() - t0 if t0 is not None else None, wall))


def build_agent(llm, max_steps: int):
    """create_react_agent over TOOLS: tool_choice "required" for the first max_steps calls, then final_answer."""

    def model(state, runtime):
        used = sum(isinstance(m, ToolMessage) for m in state["messages"])
        return llm.bind_tools(TOOLS, tool_choice="required" if used < max_steps else "final_answer")

    from langgraph.prebuilt import create_react_agent

    with warnings.catch_warnings():  # LangGraph 1.x points to langchain.agents.create_agent; both stay supported
        warnings.simplefilter("ignore", DeprecationWarning)
        return create_react_agent(model, TOOLS, prompt=SYSTEM)


def answer_of(messages) -> str:
    """The final_answer call's result, else the last message's text."""
    for m in reversed(messages):
        if isinstance(m, ToolMessage) and m.name == "final_answer":
            return str(m.content)
    return str(messages[-1].content) if messages else ""


def run_agent(client, *, quick: bool = False, inputs: dict | None = None, variant: int = 0) -> AgentRun:
    """Register the graph with the gateway `client` talks to, run it once, return its answer and calls.
    quick: one tool call before the answer."""
    max_steps = 1 if quick else 3
    question = (inputs or {}).get("question") or QUESTIONS[variant % len(QUESTIONS)]
    llm = chat_model(client.base_url, template=TEMPLATE, max_tokens=nimbus.CALL_MAX_TOKENS, temperature=0,
                     max_retries=1, timeout=client.timeout)
    agent = build_agent(llm, max_steps)
    try:
        register_graph(client, agent, TEMPLATE)
    except NotFound:  # not a gateway (a worker or sglang-router has no /v1/templates): the agent runs all the same
        pass
    log = CallLog()
    config = {**run_config(), "recursion_limit": 2 * max_steps + 6, "callbacks": [log]}  # one workflow id per run
    final = agent.invoke({"messages": [("user", question)]}, config)
    calls = [f"{c['name']}({', '.join(f'{k}={v!r}' for k, v in c['args'].items())})"
             for m in final["messages"] for c in (getattr(m, "tool_calls", None) or ())]
    return AgentRun(outputs={"question": question, "tool_calls": "\n".join(calls),
                             "answer": answer_of(final["messages"])}, calls=tuple(log.calls))
