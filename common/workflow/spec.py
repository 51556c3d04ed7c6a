"""A workflow as plain frozen data: what the planner and scheduler work on.

The HTTP edge (api/schemas.py) validates JSON with pydantic and converts it here;
Redis stores `spec_to_json(spec)` and a resumed workflow is rebuilt with
`spec_from_json`, so both paths produce the same objects.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Condition:
    """When an edge is taken, judged on its source node's output text.

    kind: "contains" | "regex" | "equals" | "json_path". For json_path, `value`
    is the path and `expected` (if set) the value it must equal; without
    `expected` the path must exist and be truthy. `negate` inverts the result.
    """

    kind: str
    value: str
    expected: Any = None
    has_expected: bool = False
    negate: bool = False


@dataclass(frozen=True)
class NodeSpec:
    id: str
    kind: str = "llm"  # "llm" | "external"
    messages: tuple[tuple[str, str], ...] = ()  # (role, content) with {{refs}}
    model: str | None = None
    params: dict = field(default_factory=dict)  # OpenAI call fields forwarded to the worker (sampling, tools, ...)
    max_tokens: int = 128
    max_retries: int = 2
    output: str = "text"  # "text" | "tool_call" (its first call's arguments, JSON) | "tool_calls" (JSON list)


@dataclass(frozen=True)
class EdgeSpec:
    source: str
    target: str
    condition: Condition | None = None


@dataclass(frozen=True)
class WorkflowSpec:
    nodes: tuple[NodeSpec, ...]
    edges: tuple[EdgeSpec, ...] = ()
    inputs: dict = field(default_factory=dict)
    template: str | None = None
    priority: int = 0
    options: dict = field(default_factory=dict)  # per-workflow switches, e.g. {"token_pipelining": true}

    def node(self, node_id: str) -> NodeSpec:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)


def spec_to_json(spec: WorkflowSpec) -> dict:
    return asdict(spec)


def spec_from_json(data: dict) -> WorkflowSpec:
    nodes = tuple(NodeSpec(**{**n, "messages": tuple(tuple(m) for m in n["messages"])}) for n in data["nodes"])
    edges = tuple(EdgeSpec(e["source"], e["target"], Condition(**e["condition"]) if e.get("condition") else None)
                  for e in data["edges"])
    return WorkflowSpec(nodes=nodes, edges=edges, inputs=data.get("inputs") or {}, template=data.get("template"),
                        priority=data.get("priority", 0), options=data.get("options") or {})
