"""The workflow as a networkx DiGraph: validation and critical paths.

Edges are the spec's explicit edges plus one implicit edge per `{{node_id}}`
reference (a node cannot run before the outputs it quotes exist). `validate`
collects every problem — duplicate ids, edges or references to unknown nodes or
inputs, self-references, cycles, nodes no start node can reach — so a client
fixes its graph in one round trip. `critical_paths` gives, per node, the
longest chain of expected work from it to a sink (its own weight included):
the scheduler runs the longest remaining chain first.
"""

from __future__ import annotations

from collections import Counter
from itertools import islice

import networkx as nx

from common.workflow.spec import WorkflowSpec
from common.workflow.templating import references

# The weight of an external node (a tool call) in critical-path units (expected output tokens).
EXTERNAL_WEIGHT = 32
MAX_CYCLES_REPORTED = 5
MAX_SHAPES = 1024  # distinct workflow shapes whose graph is kept for the next run of that shape
_SHAPES: dict[tuple, nx.DiGraph] = {}


def build_graph(spec: WorkflowSpec, refs: dict[str, set[str]] | None = None) -> nx.DiGraph:
    """The workflow's shape: its node ids; edges carry `condition` (None for reference edges). The node
    specs are not on it (`WorkflowRun.node_spec`): every run of one shape — a template's or an agent's
    runs differ in their texts, not their graph — shares one frozen graph from a bounded cache. `refs`:
    each node's references to other nodes, when the caller has read them already."""
    key = (tuple(n.id for n in spec.nodes), tuple((e.source, e.target, e.condition) for e in spec.edges),
           tuple(tuple(sorted(refs[n.id] if refs is not None else _node_refs(n))) for n in spec.nodes))
    try:
        g = _SHAPES.pop(key, None)
    except TypeError:  # a condition expecting a JSON list or object cannot be a key: this run gets its own
        return _shape_graph(*key)
    g = g if g is not None else _shape_graph(*key)
    _SHAPES[key] = g  # most recently used last
    if len(_SHAPES) > MAX_SHAPES:
        del _SHAPES[next(iter(_SHAPES))]
    return g


def _shape_graph(ids: tuple, edges: tuple, refs: tuple) -> nx.DiGraph:
    g = nx.DiGraph()
    g.add_nodes_from(ids)
    for source, target, condition in edges:
        g.add_edge(source, target, condition=condition)
    for node_id, node_refs in zip(ids, refs):
        for ref in node_refs:
            if ref in g and not g.has_edge(ref, node_id):
                g.add_edge(ref, node_id, condition=None)
    return nx.freeze(g)


def _node_refs(node) -> set[str]:
    found: set[str] = set()
    for _, content in node.messages:
        found |= references(content)[0]
    return found


def validate(spec: WorkflowSpec) -> list[str]:
    """Every problem of the graph, as human-readable sentences; [] when valid."""
    return checked_graph(spec)[1]


def checked_graph(spec: WorkflowSpec) -> tuple[nx.DiGraph, list[str]]:
    """The workflow's graph (what WorkflowRun runs on, built once per run) and every problem of it."""
    problems: list[str] = []
    ids = [n.id for n in spec.nodes]
    for node_id, count in Counter(ids).items():
        if count > 1:
            problems.append(f"duplicate node id '{node_id}' ({count} nodes)")
    known = set(ids)
    for i, edge in enumerate(spec.edges):
        for end in ("source", "target"):
            name = getattr(edge, end)
            if name not in known:
                problems.append(f"edges[{i}].{end}: unknown node '{name}'")
        if edge.source == edge.target:
            problems.append(f"edges[{i}]: node '{edge.source}' depends on itself")
    refs: dict[str, set[str]] = {}
    for node in spec.nodes:
        if node.kind == "llm" and not node.messages:
            problems.append(f"node '{node.id}': an llm node needs messages")
        found = refs[node.id] = refs.get(node.id, set())
        for _, content in node.messages:
            node_refs, input_refs = references(content)
            found |= node_refs
            for ref in sorted(node_refs):
                if ref == node.id:
                    problems.append(f"node '{node.id}': references its own output {{{{{ref}}}}}")
                elif ref not in known:
                    problems.append(f"node '{node.id}': unknown node reference {{{{{ref}}}}}")
            for name in sorted(input_refs):
                if name not in spec.inputs:
                    problems.append(f"node '{node.id}': unknown input reference {{{{inputs.{name}}}}}")
    graph = g = build_graph(spec, refs)
    if any(True for _ in nx.selfloop_edges(g)):
        g = g.copy()
        g.remove_edges_from(list(nx.selfloop_edges(g)))  # reported above
    for cycle in islice(nx.simple_cycles(g), MAX_CYCLES_REPORTED):
        problems.append("cycle: " + " -> ".join([*cycle, cycle[0]]))
    roots = [n for n in g if g.in_degree(n) == 0]
    reachable = set(roots)
    for root in roots:
        reachable |= nx.descendants(g, root)
    unreachable = sorted(set(g) - reachable)
    if unreachable:
        problems.append("unreachable nodes (no path from any start node): " + ", ".join(unreachable))
    return graph, problems


def node_weight(node) -> int:
    return EXTERNAL_WEIGHT if node.kind == "external" else max(node.max_tokens, 1)


def critical_paths(g: nx.DiGraph, specs: dict) -> dict[str, int]:
    """node → weight of the heaviest path from it to any sink, itself included (`specs`: node id → its
    NodeSpec). `g` must be acyclic."""
    remaining: dict[str, int] = {}
    for node in reversed(list(nx.topological_sort(g))):
        tail = max((remaining[s] for s in g.successors(node)), default=0)
        remaining[node] = node_weight(specs[node]) + tail
    return remaining
