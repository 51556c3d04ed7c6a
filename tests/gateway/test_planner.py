"""The planner: DAG validation names every problem; critical paths; templating; edge conditions."""

from __future__ import annotations

import networkx as nx
import pytest

from common.workflow.conditions import evaluate, parse_json_path
from common.workflow.run import WorkflowRun
from common.workflow.dag import build_graph, critical_paths, validate
from common.workflow.spec import (
    Condition,
    EdgeSpec,
    NodeSpec,
    WorkflowSpec,
    spec_from_json,
    spec_to_json,
)
from common.workflow.template_graph import (
    TemplateEdge,
    TemplateGraph,
    predict_next,
    validate_template,
)
from common.workflow.templating import references, render


def node(node_id: str, content: str = "hi", **kw) -> NodeSpec:
    return NodeSpec(id=node_id, messages=(("user", content),), **kw)


def test_a_valid_diamond_has_no_problems():
    spec = WorkflowSpec(nodes=(node("a"), node("b", "{{a}}"), node("c", "{{a}}"), node("d", "{{b}} {{c}}")))
    assert validate(spec) == []
    assert set(build_graph(spec).edges) == {("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")}


def test_every_problem_is_listed_at_once():
    spec = WorkflowSpec(
        nodes=(node("a", "{{ghost}} and {{inputs.missing}}"), node("a"), node("b", "{{c}}"), node("c", "{{b}}"),
               node("x", "x"), node("y", "{{y}}"), NodeSpec(id="empty")),
        edges=(EdgeSpec("a", "nowhere"), EdgeSpec("x", "x")),
        inputs={"present": 1})
    problems = validate(spec)
    text = "\n".join(problems)
    assert "duplicate node id 'a'" in text
    assert "unknown node reference {{ghost}}" in text
    assert "unknown input reference {{inputs.missing}}" in text
    assert "edges[0].target: unknown node 'nowhere'" in text
    assert "edges[1]: node 'x' depends on itself" in text
    assert "node 'y': references its own output {{y}}" in text
    assert "node 'empty': an llm node needs messages" in text
    assert any(p.startswith("cycle: ") and "b" in p and "c" in p for p in problems)
    assert any(p.startswith("unreachable nodes") and "b" in p and "c" in p for p in problems)


def test_critical_path_counts_expected_tokens_to_the_sink():
    spec = WorkflowSpec(nodes=(node("a", max_tokens=10), node("long", "{{a}}", max_tokens=100),
                               node("short", "{{a}}", max_tokens=5), node("end", "{{long}}{{short}}", max_tokens=1)))
    cp = critical_paths(build_graph(spec), {n.id: n for n in spec.nodes})
    assert cp == {"a": 111, "long": 101, "short": 6, "end": 1}


def test_runs_of_one_shape_share_one_frozen_graph_and_keep_their_own_node_specs():
    a = WorkflowSpec(nodes=(node("a", "first text", max_tokens=10), node("b", "{{a}} then", max_tokens=20)))
    b = WorkflowSpec(nodes=(node("a", "other text", max_tokens=30), node("b", "{{a}} again", max_tokens=5)))
    other = WorkflowSpec(nodes=(node("a", "first text"), node("b", "no reference")))
    ra, rb = WorkflowRun("wf-a", a, 0.0), WorkflowRun("wf-b", b, 0.0)
    assert ra.graph is rb.graph and nx.is_frozen(ra.graph) and list(ra.graph.edges) == [("a", "b")]
    assert build_graph(other) is not ra.graph and not build_graph(other).edges
    assert ra.node_spec("a").messages != rb.node_spec("a").messages  # the texts stay each run's own
    assert ra.remaining == {"a": 30, "b": 20} and rb.remaining == {"a": 35, "b": 5}
    listy = WorkflowSpec(nodes=(node("a", "x"), node("b", "y")),  # an unhashable condition: a graph of its own
                         edges=(EdgeSpec("a", "b", Condition("json_path", "$.k", ["v"], True)),))
    assert build_graph(listy).edges["a", "b"]["condition"].expected == ["v"]


def test_spec_survives_its_json_round_trip():
    spec = WorkflowSpec(nodes=(node("a", params={"temperature": 0.5}), NodeSpec(id="t", kind="external")),
                        edges=(EdgeSpec("a", "t", Condition("json_path", "$.x", 3, True)),), inputs={"k": [1]},
                        template="tpl", priority=2)
    assert spec_from_json(spec_to_json(spec)) == spec


def test_templating_renders_outputs_and_inputs():
    assert references("{{a}} {{ inputs.q }} {{b}}") == ({"a", "b"}, {"q"})
    assert render("{{a}}/{{inputs.q}}/{{inputs.n}}/{{skipped}}", {"a": "A"}, {"q": "Q", "n": {"k": 1}}) == \
        'A/Q/{"k": 1}/'


@pytest.mark.parametrize("cond,output,expected", [
    (Condition("contains", "yes"), "oh yes indeed", True),
    (Condition("contains", "yes", negate=True), "oh yes indeed", False),
    (Condition("regex", r"score: \d{2}"), "score: 42", True),
    (Condition("regex", r"^no"), "yes", False),
    (Condition("equals", "DONE"), "  DONE\n", True),
    (Condition("equals", "DONE"), "DONE!", False),
    (Condition("json_path", "$.action"), '{"action": "search"}', True),
    (Condition("json_path", "$.items[1].ok", True, True), 'Sure: {"items": [{}, {"ok": true}]} hope it helps', True),
    (Condition("json_path", "$.items[5]"), '{"items": []}', False),
    (Condition("json_path", "$.a"), "not json", False),
])
def test_conditions(cond, output, expected):
    assert evaluate(cond, output) is expected


def test_json_path_parsing():
    assert parse_json_path("$.a.b[2].c") == ["a", "b", 2, "c"]
    assert parse_json_path("a[0]") == ["a", 0]


def test_template_prediction_falls_back_to_edges_then_learns():
    g = TemplateGraph("t", ("a", "b", "c"), (TemplateEdge("a", "b", True), TemplateEdge("a", "c", True),
                                               TemplateEdge("b", "a")))
    assert validate_template(g) == []  # cycles are fine in a template
    assert predict_next(g, {}, "a") == [("b", 0.5), ("c", 0.5)]
    assert predict_next(g, {"a": {"c": 3, "b": 1}}, "a") == [("c", 0.75), ("b", 0.25)]
    bad = TemplateGraph("t", ("a", "a"), (TemplateEdge("a", "z"),))
    assert validate_template(bad) == ["duplicate node id 'a' (2 nodes)", "edges[0].target: unknown node 'z'"]
