"""The builder: JSON equal to the hand-written REST body, local validation as the gateway's, graph view."""

from __future__ import annotations

import pytest

from agentgate import Client
from agentgate.errors import ValidationFailed
from agentgate.workflow import Workflow, contains, equals, json_path, regex


def build() -> Workflow:
    wf = Workflow("triage", inputs={"ticket": "app crashes"}, priority=2)
    kind = wf.llm("classify", "Classify: {{inputs.ticket}}", system="Answer BUG or QUESTION.", max_tokens=4,
                  temperature=0, stop=["\n"])

    @wf.tool
    def search(classify):
        return "kb: " + classify

    fix = wf.llm("fix", messages=[("user", f"Fix it using {search}")], max_retries=1)
    wf.edge(kind, search, when=contains("QUESTION"))
    wf.edge(kind, fix, when=~regex("^QUESTION"))
    wf.edge(search, fix, when=json_path("$.ok", True))
    wf.llm("done", f"{fix}")
    wf.edge(fix, "done", when=equals("ok"))
    return wf


EXPECTED = {
    "nodes": [
        {"id": "classify", "type": "llm", "messages": [
            {"role": "system", "content": "Answer BUG or QUESTION."},
            {"role": "user", "content": "Classify: {{inputs.ticket}}"}], "max_tokens": 4, "temperature": 0,
         "stop": ["\n"]},
        {"id": "search", "type": "external"},
        {"id": "fix", "type": "llm", "messages": [{"role": "user", "content": "Fix it using {{search}}"}],
         "max_retries": 1},
        {"id": "done", "type": "llm", "messages": [{"role": "user", "content": "{{fix}}"}]},
    ],
    "edges": [
        {"source": "classify", "target": "search", "condition": {"contains": "QUESTION"}},
        {"source": "classify", "target": "fix", "condition": {"regex": "^QUESTION", "negate": True}},
        {"source": "search", "target": "fix", "condition": {"json_path": "$.ok", "value": True}},
        {"source": "fix", "target": "done", "condition": {"equals": "ok"}},
    ],
    "inputs": {"ticket": "app crashes"},
    "template": "triage",
    "priority": 2,
}


def test_to_dict_is_the_hand_written_rest_body():
    wf = build()
    assert wf.to_dict() == EXPECTED
    assert wf.tools["search"]("x") == "kb: x"  # the decorated function stays callable
    assert str(wf.nodes["fix"]) == "{{fix}}"


def test_the_gateway_accepts_what_the_builder_sends(gw):
    wf = Workflow(inputs={"q": "why"})
    a = wf.llm("a", "{{inputs.q}}", max_tokens=8, temperature=0.0, top_p=0.9, seed=1)
    wf.llm("b", f"{a}!", after=a)
    wf.edge(a, "b", when=~contains("never"))
    with Client(gw.url, timeout=10) as c:
        state = c.wait(c.submit(wf))
    assert state.status == "finished" and state.outputs["b"] == "echo: echo: why!"


def test_local_validation_raises_what_the_gateway_would(gw):
    wf = Workflow()
    wf.llm("a", "{{b}} and {{inputs.missing}}")
    wf.llm("b", "{{a}}")
    wf.edge("a", "ghost")
    with pytest.raises(ValidationFailed) as local:
        wf.to_dict()
    assert local.value.status == 422
    assert {"node 'a': unknown input reference {{inputs.missing}}", "edges[0].target: unknown node 'ghost'"} <= set(
        local.value.problems)
    assert any(p.startswith("cycle: ") for p in local.value.problems)
    with Client(gw.url, timeout=10) as c, pytest.raises(ValidationFailed) as remote:
        c.submit(wf.payload())  # skip local validation: the gateway finds the same problems
    assert remote.value.problems == local.value.problems


def test_builder_errors_at_the_line_that_makes_them():
    wf = Workflow()
    wf.llm("a", "x")
    with pytest.raises(ValueError, match="already has a node 'a'"):
        wf.llm("a", "y")
    with pytest.raises(TypeError, match="unknown node field"):
        wf.llm("b", "y", temprature=0.5)
    with pytest.raises(ValueError, match="not both"):
        wf.llm("c", "y", messages=[("user", "z")])
    empty = Workflow()
    empty.llm("empty", messages=[])
    with pytest.raises(ValidationFailed, match="needs messages"):
        empty.to_dict()


def test_graph_view_marks_implicit_reference_edges():
    g = build().graph()
    assert set(g.nodes) == {"classify", "search", "fix", "done"}
    assert g.edges["search", "fix"]["implicit"] is False  # explicit edge with a condition (plus the {{ref}})
    assert g.edges["classify", "fix"]["condition"].negate is True
    assert g.nodes["search"]["type"] == "external"
    wf = Workflow()
    a = wf.llm("a", "x")
    wf.llm("b", f"y {a}")
    assert wf.graph().edges["a", "b"]["implicit"] is True


def test_only_if_lets_one_edge_decide_for_a_node_that_quotes_many(gw):
    def build_it(b_says: str) -> Workflow:
        wf = Workflow()
        a = wf.llm("a", "first")
        b = wf.llm("b", b_says)
        review = wf.llm("review", f"{a} then {b}", after=a)
        wf.only_if(b, review, when=contains("go"))
        return wf

    wf = build_it("stop")
    edges = {(s, t): c for s, t, c in wf.edges}
    assert set(edges) == {("a", "review"), ("b", "review")}
    assert edges["a", "review"].to_dict() == {"contains": "", "negate": True}  # orders, never enables
    assert edges["b", "review"].to_dict() == {"contains": "go"}
    with Client(gw.url, timeout=10) as c:
        skipped = c.wait(c.submit(wf))
        ran = c.wait(c.submit(build_it("go")))
    # without only_if, the finished a → review edge alone would have run it
    assert skipped.nodes["review"].status == "skipped" and skipped.nodes["a"].status == "finished"
    assert ran.outputs["review"] == "echo: echo: first then echo: go"
