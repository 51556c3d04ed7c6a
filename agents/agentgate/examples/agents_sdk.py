"""The Nimbus support desk as an OpenAI Agents SDK program: a triage agent hands the customer
off to a billing agent, which calls function tools (search, calculator) and answers.

Plain Agents SDK code (PyPI openai-agents, import name `agents`, beside this SDK's
`agentgate`); what points it at agentgate is the model's client, the SDK's own
chat-completions model on the gateway's /v1:

    model = OpenAIChatCompletionsModel(model="default",
                                       openai_client=AsyncOpenAI(base_url=url + "/v1", api_key="none"))

For agent awareness each agent's ModelSettings also carries `extra_headers` = `hint_headers(...)`:
the gateway's x-agent-* headers {template, node_id: the agent, workflow_id: the run}, and the
agents' graph (each agent → its handoffs, an agent with tools → itself) is registered once as
a template (`handoff_graph`), so the gateway learns triage → billing → billing … and prepares
the next call while a tool runs.

The triage agent's only tools are its handoffs and its tool_choice is "required", so it
always hands off. The billing agent's calls are "required" too while it has tool calls left
(one in quick mode, else two), then "none", so it answers in text: the embedded 135M model
rarely calls a tool on its own, and under "auto" with a call in the conversation it tends to
call again and again. The switch is a run hook (`CallLog.on_tool_end`) that sets the agent's
`model_settings`; the agents are built for each run, so no other run sees it. Same tools and
questions as react.py.

    agentgate run agents/agentgate/examples/agents_sdk.py [--quick] [--input question="..."]
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from typing import Annotated

from agents import (Agent, ModelSettings, OpenAIChatCompletionsModel, RunHooks, Runner, function_tool,
                    set_tracing_disabled)
from openai import AsyncOpenAI

from pydantic import Field

from agentgate import transport
from agentgate.errors import NotFound
from agentgate.examples import tools as nimbus
from agentgate.examples.react import QUESTIONS
from agentgate.state import AgentRun, CallInfo

TEMPLATE = "nimbus-agents-sdk"
MAX_TURNS = 8

TRIAGE = ("You are the front desk of Nimbus Cloud support. Hand every customer to the agent who can answer: "
          "billing and pricing questions, quotas, regions and the SLA go to the Billing agent.")
BILLING = ("You are the Billing agent of Nimbus Cloud. Answer from the Nimbus documentation only: search it, "
           "compute every number with the calculator (a month is 730 hours, a year 8,760 hours), then answer "
           "the customer in one to three sentences with the numbers and their units.")


@function_tool
def search(query: Annotated[str, Field(max_length=nimbus.ARG_MAX_LENGTH)]) -> str:
    """Full-text search over the Nimbus Cloud documentation; returns the two most relevant paragraphs.

    Args:
        query: a few keywords, e.g. 'n1.large price per hour'.
    """
    return nimbus.run_tool("search", {"query": query})


@function_tool
def calculator(expression: Annotated[str, Field(max_length=nimbus.ARG_MAX_LENGTH)]) -> str:
    """Evaluates one arithmetic expression and returns the number.

    Args:
        expression: e.g. 'round(0.084 * 720 * 1.05, 2)'.
    """
    return nimbus.run_tool("calculator", {"expression": expression})


def hint_headers(workflow_id: str, node_id: str) -> dict[str, str]:
    """The gateway's agent_hints as x-agent-* headers, for ModelSettings.extra_headers."""
    return {"x-agent-template": TEMPLATE, "x-agent-node-id": node_id, "x-agent-workflow-id": workflow_id}


def build_agents(base_url: str, workflow_id: str, max_tokens: int) -> Agent:
    """The triage agent (handing off to the billing agent), both on the gateway at base_url."""
    model = OpenAIChatCompletionsModel(model="default", openai_client=AsyncOpenAI(
        base_url=transport.base_url(base_url) + "/v1", api_key="agentgate", max_retries=1))

    def settings(node: str) -> ModelSettings:
        return ModelSettings(tool_choice="required", temperature=0, max_tokens=max_tokens,
                             extra_headers=hint_headers(workflow_id, node))

    billing = Agent(name="Billing agent", instructions=BILLING, model=model, tools=[search, calculator],
                    model_settings=settings("billing"), reset_tool_choice=False)
    return Agent(name="Triage agent", instructions=TRIAGE, model=model, handoffs=[billing],
                 model_settings=settings("triage"))


def handoff_graph(start: Agent) -> tuple[list[str], list[dict]]:
    """(nodes, edges) of the agents reachable from `start` (their public `handoffs`), named as NODES names
    them: an edge to each handoff, and a loop on an agent with tools (it is called again after a tool)."""
    nodes, edges, todo = [], [], [start]
    while todo:
        agent = todo.pop()
        node = CallLog.NODES.get(agent.name, agent.name)
        if node in nodes:
            continue
        nodes.append(node)
        if agent.tools:
            edges.append({"source": node, "target": node})
        for target in agent.handoffs:
            edges.append({"source": node, "target": CallLog.NODES.get(target.name, target.name)})
            todo.append(target)
    return nodes, edges


class CallLog(RunHooks):
    """Each model call of a run, as CallInfo (the SDK's public on_llm_start / on_llm_end hooks)."""

    NODES = {"Triage agent": "triage", "Billing agent": "billing"}

    def __init__(self, tool_calls: int = 1):
        self.calls: list[CallInfo] = []
        self._started = (0.0, 0.0)
        self.tool_calls_left = tool_calls

    async def on_tool_end(self, context, agent, tool, result) -> None:
        self.tool_calls_left -= 1
        if self.tool_calls_left <= 0:  # answer from the results now
            agent.model_settings = dataclasses.replace(agent.model_settings, tool_choice="none")

    async def on_llm_start(self, context, agent, system_prompt, input_items) -> None:
        self._started = (time.time(), time.monotonic())

    async def on_llm_end(self, context, agent, response) -> None:
        usage = response.usage
        details = getattr(usage, "input_tokens_details", None)
        self.calls.append(CallInfo(self.NODES.get(agent.name, agent.name), usage.input_tokens,
                                   getattr(details, "cached_tokens", 0) or 0, usage.output_tokens,
                                   time.monotonic() - self._started[1], self._started[0]))


async def run(base_url: str, question: str, quick: bool = False) -> AgentRun:
    """One run of the desk against the gateway (or any OpenAI-compatible server) at base_url."""
    set_tracing_disabled(True)  # nothing leaves the machine
    workflow_id = "sdk-" + uuid.uuid4().hex[:16]
    log = CallLog(tool_calls=1 if quick else 2)
    agent = build_agents(base_url, workflow_id, nimbus.CALL_MAX_TOKENS if quick else 192)
    result = await Runner.run(agent, question, hooks=log, max_turns=MAX_TURNS)
    tools = [f"{i.raw_item.name}({i.raw_item.arguments})" for i in result.new_items if i.type == "tool_call_item"]
    return AgentRun(outputs={"question": question, "agents": " → ".join(a for a in _agents(result)),
                             "tool_calls": "\n".join(tools), "answer": str(result.final_output)},
                    calls=tuple(log.calls))


def _agents(result) -> list[str]:
    names = ["Triage agent"]
    for item in result.new_items:
        if item.type == "handoff_output_item":
            names.append(item.target_agent.name)
    return names


def run_agent(client, *, quick: bool = False, inputs: dict | None = None, variant: int = 0) -> AgentRun:
    """`agentgate run`'s entry point: one run against the gateway `client` talks to."""
    question = (inputs or {}).get("question") or QUESTIONS[variant % len(QUESTIONS)]
    try:
        client.register_template(TEMPLATE, *handoff_graph(build_agents(client.base_url, "", 1)))
    except NotFound:  # not a gateway (a worker or sglang-router has no /v1/templates): the agents run all the same
        pass
    return asyncio.run(run(client.base_url, question, quick))
