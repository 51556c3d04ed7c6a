"""A real LangGraph graph, registered with the gateway and calling it through `chat_model`."""

from __future__ import annotations

from typing import TypedDict

import pytest

pytest.importorskip("langgraph")
pytest.importorskip("langchain_openai")

from langgraph.graph import END, START, StateGraph  # noqa: E402

from agentgate import Client  # noqa: E402
from agentgate.langgraph import chat_model, graph_template, register_graph, run_config  # noqa: E402


class State(TypedDict, total=False):
    question: str
    plan: str
    answer: str


def build(llm):
    def plan(state: State) -> State:
        return {"plan": llm.invoke(f"plan for {state['question']}").content}

    def act(state: State) -> State:
        return {"answer": llm.invoke(f"do {state['plan']}").content}

    g = StateGraph(State)
    g.add_node("plan", plan)
    g.add_node("act", act)
    g.add_edge(START, "plan")
    g.add_conditional_edges("plan", lambda s: "act" if "plan" in s["plan"] else END, ["act", END])
    g.add_edge("act", END)
    return g.compile()


def test_registered_graph_and_tagged_calls_reach_the_gateway(gw, fake):
    llm = chat_model(gw.url, template="lg-demo", max_tokens=8, max_retries=0)
    graph = build(llm)
    body = graph_template(graph, "lg-demo")
    assert {"plan", "act"} <= set(body["nodes"])
    assert {"source": "plan", "target": "act", "conditional": True} in body["edges"]

    with Client(gw.url, timeout=10) as c:
        assert register_graph(c, graph, "lg-demo")["name"] == "lg-demo"
        before = len(fake.calls)
        out = graph.invoke({"question": "tea"}, run_config("run-1"))
        assert out["answer"] == "echo: do echo: plan for tea"
        assert len(fake.calls) == before + 2
        assert all("agent_hints" not in call.body for call in fake.calls[before:])  # stripped by the gateway
        learned = c.template("lg-demo")
    # The gateway recorded the run's transition from its tagged calls, and predicts act after plan.
    assert learned["transitions"].get("plan", {}).get("act") == 1, learned["transitions"]
    assert learned["predictions"]["plan"][0]["node"] == "act"
