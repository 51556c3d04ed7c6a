"""The ReAct agent of react.py as a LangGraph graph that runs in the client.

Here the loop is not a workflow the gateway runs: LangGraph runs it, and each `agent` step
calls the gateway's OpenAI-compatible chat API through `agentgate.langgraph.chat_model`, the
one line a LangGraph user changes. That model tags every call with agent_hints
{template, node_id, workflow_id}, and the graph's shape is registered as a template first,
so the gateway learns which call follows which and can prepare the next one.

    START → agent ─(no Final Answer)→ tools ─(steps left)→ agent …
              │                          └─(step budget spent)→ answer → END
              └─(Final Answer)→ done → END

Same system prompt, tools and questions as react.py.

    agentgate run agents/agentgate/examples/react_langgraph.py [--quick] [--input question="..."]
"""

from __future__ import annotations

import time
from typing import TypedDict

from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.graph import END, START, StateGraph

from agentgate.examples.react import QUESTIONS, SYSTEM
from agentgate.examples.tools import final_answer, observe
from agentgate.langgraph import chat_model, register_graph, run_config
from agentgate.state import AgentRun, CallInfo

TEMPLATE = "nimbus-react-langgraph"


class State(TypedDict, total=False):
    question: str
    transcript: str  # Thought / Action / Observation lines so far
    last: str  # the latest agent step
    steps: int  # tool calls made
    answer: str


def build_graph(llm, calls: list[CallInfo], max_steps: int):
    """The compiled graph; every LLM call it makes is appended to `calls`."""

    def ask(node: str, prompt: str) -> str:
        t0 = time.monotonic()
        reply = llm.invoke([SystemMessage(SYSTEM), HumanMessage(prompt)])
        usage = reply.usage_metadata or {}
        calls.append(CallInfo(node, usage.get("input_tokens", 0),
                              (usage.get("input_token_details") or {}).get("cache_read", 0),
                              usage.get("output_tokens", 0), time.monotonic() - t0))
        return reply.content

    def agent(state: State) -> State:
        prompt = f"Question: {state['question']}\n\n{state.get('transcript', '')}Continue with your next Thought."
        return {"last": ask("agent", prompt)}

    def tools(state: State) -> State:
        step = state["last"].strip()
        transcript = f"{state.get('transcript', '')}{step}\nObservation: {observe(step, state['question'])}\n"
        return {"transcript": transcript, "steps": state.get("steps", 0) + 1}

    def answer(state: State) -> State:
        prompt = (f"Question: {state['question']}\n\n{state.get('transcript', '')}You have used all your tool "
                  "calls. Write your Final Answer now.")
        text = ask("answer", prompt)
        return {"answer": final_answer(text) or text.strip()}

    def after_agent(state: State) -> str:
        return "done" if final_answer(state["last"]) is not None else "tools"

    def after_tools(state: State) -> str:
        return "answer" if state["steps"] >= max_steps else "agent"

    def done(state: State) -> State:
        return {"answer": final_answer(state["last"]) or ""}

    g = StateGraph(State)
    g.add_node("agent", agent)
    g.add_node("tools", tools)
    g.add_node("answer", answer)
    g.add_node("done", done)
    g.add_edge(START, "agent")
    g.add_conditional_edges("agent", after_agent, ["tools", "done"])
    g.add_conditional_edges("tools", after_tools, ["agent", "answer"])
    g.add_edge("answer", END)
    g.add_edge("done", END)
    return g.compile()


def run_agent(client, *, quick: bool = False, inputs: dict | None = None, variant: int = 0) -> AgentRun:
    """Register the graph with the gateway `client` talks to, run it once, return its answer and calls.
    quick: one tool call and short answers."""
    max_steps, max_tokens = (1, 24) if quick else (3, 64)
    question = (inputs or {}).get("question") or QUESTIONS[variant % len(QUESTIONS)]
    calls: list[CallInfo] = []
    llm = chat_model(client.base_url, template=TEMPLATE, max_tokens=max_tokens, temperature=0,
                     stop=["\nObservation:"], max_retries=1, timeout=client.timeout)
    graph = build_graph(llm, calls, max_steps)
    register_graph(client, graph, TEMPLATE)
    config = {**run_config(), "recursion_limit": 4 * max_steps + 8}  # one workflow id per run of the graph
    final = graph.invoke({"question": question}, config)
    return AgentRun(outputs={"question": question, "transcript": final.get("transcript", ""),
                             "answer": final.get("answer", "")}, calls=tuple(calls))
