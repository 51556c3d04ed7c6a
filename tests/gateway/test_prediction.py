"""Prediction: steps-to-execution, the probability a node runs (priors, learned rates, decided
edges), the expected wait and the pin TTL it gives; the next calls of a client-driven agent."""

from __future__ import annotations

import pytest

from common.workflow.run import WorkflowRun
from common.workflow.spec import Condition, EdgeSpec, NodeSpec, WorkflowSpec
from common.workflow.template_graph import TemplateEdge, TemplateGraph
from gateway.planner.next_calls import next_calls
from gateway.planner.predict import Timing, edge_probability, forecast, pin_ttl
from gateway.state.learning import Learned

NEVER = Condition("contains", "NEVER-THERE")
NOT_NEVER = Condition("contains", "NEVER-THERE", negate=True)


def llm(node_id: str, content: str = "hi", max_tokens: int = 10) -> NodeSpec:
    return NodeSpec(id=node_id, messages=(("user", content),), max_tokens=max_tokens)


def make_run(*nodes, edges=()) -> WorkflowRun:
    return WorkflowRun("wf-test", WorkflowSpec(nodes=tuple(nodes), edges=tuple(edges)), created=0.0)


def test_steps_count_unresolved_predecessors():
    run = make_run(llm("a"), llm("b", "{{a}}"), llm("c", "{{b}}"), llm("d", "{{a}} {{c}}"), llm("e"))
    run.advance()  # a and e are ready
    fc = forecast(run, now=100.0)
    assert {n: f.steps for n, f in fc.items()} == {"a": 0, "e": 0, "b": 1, "c": 2, "d": 3}
    run.nodes["a"].status = "finished"
    run.nodes["a"].output = "x"
    run.advance()  # b becomes ready
    fc = forecast(run, now=100.0)
    assert "a" not in fc
    assert (fc["b"].steps, fc["c"].steps, fc["d"].steps) == (0, 1, 2)


def test_a_waiting_external_node_is_executing():
    run = make_run(llm("a"), NodeSpec(id="tool", kind="external"), llm("b", "{{tool}}"),
                   edges=[EdgeSpec("a", "tool")])
    run.nodes["a"].status, run.nodes["a"].output = "finished", "x"
    run.nodes["tool"].status, run.nodes["tool"].started = "waiting", 90.0
    fc = forecast(run, Learned(latency_s={"tool": 30.0}), now=100.0)
    assert fc["tool"].steps == 0 and fc["b"].steps == 1
    assert fc["b"].eta_s == pytest.approx(20.0)  # learned 30 s, 10 s of it gone


def test_eta_adds_up_the_chain_with_defaults():
    run = make_run(llm("a", max_tokens=10), NodeSpec(id="tool", kind="external"), llm("b", "{{tool}}"),
                   edges=[EdgeSpec("a", "tool")])
    run.advance()
    fc = forecast(run, timing=Timing(tool_latency_s=4.0, seconds_per_token=0.5), now=0.0)
    assert fc["tool"].eta_s == pytest.approx(5.0)  # a: 10 tokens × 0.5 s
    assert fc["b"].eta_s == pytest.approx(9.0)  # then the tool's default 4 s


def conditional_run() -> WorkflowRun:
    return make_run(llm("a"), llm("b", "B {{a}}"), llm("c", "C {{a}}"), llm("d", "{{b}}{{c}}"),
                    edges=[EdgeSpec("a", "b", NEVER), EdgeSpec("a", "c", NOT_NEVER)])


def test_conditional_branches_start_at_their_prior_and_learn():
    run = conditional_run()
    run.advance()
    fc = forecast(run)
    assert fc["b"].probability == pytest.approx(0.5) and fc["c"].probability == pytest.approx(0.5)
    assert fc["d"].probability == pytest.approx(0.75)  # runs unless both branches are skipped
    learned = Learned(visits={"a": 3}, taken={("a", "c"): 3})
    fc = forecast(run, learned)
    assert fc["b"].probability == pytest.approx(0.5 / 4)
    assert fc["c"].probability == pytest.approx(3.5 / 4)
    assert edge_probability(run, "a", "b", learned) < 0.5 <= edge_probability(run, "a", "c", learned)


def test_a_finished_source_decides_its_edges():
    run = conditional_run()
    run.nodes["a"].status, run.nodes["a"].output = "finished", "plain output"
    fc = forecast(run, Learned(visits={"a": 3}, taken={("a", "b"): 3}))  # learning says b; the output says c
    assert fc["b"].probability == 0.0 and fc["c"].probability == 1.0


def test_pin_ttl_is_bounded():
    assert pin_ttl(10.0, factor=1.5, margin_s=2.0, min_s=5.0, max_s=600.0) == 17.0
    assert pin_ttl(0.0, factor=1.5, margin_s=2.0, min_s=5.0, max_s=600.0) == 5.0
    assert pin_ttl(1e6, factor=1.5, margin_s=2.0, min_s=5.0, max_s=600.0) == 600.0
    assert pin_ttl(float("nan"), factor=1.5, margin_s=2.0, min_s=5.0, max_s=600.0) == 5.0


REACT = TemplateGraph("react", ("agent", "tools", "answer"), (
    TemplateEdge("agent", "tools", conditional=True), TemplateEdge("agent", "answer", conditional=True),
    TemplateEdge("tools", "agent")))


def test_client_calls_look_through_nodes_that_never_call():
    # Before anything is learned: agent → tools (never calls) → agent is the loop, half the time.
    assert next_calls(REACT, {}, "agent", called={"agent"}) == [("agent", 0.5)]
    # answer has called before, so it is a call of its own.
    assert next_calls(REACT, {}, "agent", called={"agent", "answer"}) == [("agent", 0.5), ("answer", 0.5)]


def test_learned_transitions_predict_the_self_loop():
    learned = {"agent": {"agent": 3, "answer": 1}}
    assert next_calls(REACT, learned, "agent", called={"agent", "answer"}) == [("agent", 0.75), ("answer", 0.25)]
