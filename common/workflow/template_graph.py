"""Workflow templates: a graph registered by name (e.g. LangGraph's `get_graph()`), and
what it predicts about the next call.

A template may loop (a ReAct agent goes tool → model → tool ...), so unlike a
submitted workflow it is not required to be acyclic; its edges only need to join
known nodes. Prediction for a node: the transitions learned from tagged calls
(counts per `prev → next`, kept in Redis) when there are any, otherwise the
template's own edges — unconditional successors are all certain, conditional
ones share one unit of probability.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class TemplateEdge:
    source: str
    target: str
    conditional: bool = False


@dataclass(frozen=True)
class TemplateGraph:
    name: str
    nodes: tuple[str, ...]
    edges: tuple[TemplateEdge, ...]

    def to_json(self) -> dict:
        return {"name": self.name, "nodes": list(self.nodes),
                "edges": [{"source": e.source, "target": e.target, "conditional": e.conditional} for e in self.edges]}

    @classmethod
    def from_json(cls, data: dict) -> "TemplateGraph":
        return cls(data["name"], tuple(data["nodes"]), tuple(TemplateEdge(**e) for e in data["edges"]))


def validate_template(graph: TemplateGraph) -> list[str]:
    problems = [f"duplicate node id '{n}' ({c} nodes)" for n, c in Counter(graph.nodes).items() if c > 1]
    known = set(graph.nodes)
    for i, e in enumerate(graph.edges):
        problems += [f"edges[{i}].{end}: unknown node '{name}'" for end, name in (("source", e.source),
                                                                                    ("target", e.target))
                     if name not in known]
    return problems


def predict_next(graph: TemplateGraph, learned: dict[str, dict[str, int]], node: str) -> list[tuple[str, float]]:
    """(next node, probability) after `node`, most likely first."""
    counts = learned.get(node) or {}
    total = sum(counts.values())
    if total:
        return sorted(((n, c / total) for n, c in counts.items()), key=lambda x: (-x[1], x[0]))
    out = [e for e in graph.edges if e.source == node]
    conditional = [e for e in out if e.conditional]
    preds = [(e.target, 1.0) for e in out if not e.conditional]
    preds += [(e.target, 1.0 / len(conditional)) for e in conditional]
    return sorted(preds, key=lambda x: (-x[1], x[0]))
