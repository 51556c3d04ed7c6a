"""The workflow builder: an agent's DAG written as Python, sent as the gateway's REST JSON.

    wf = Workflow("triage", inputs={"ticket": "..."})
    kind = wf.llm("classify", "Classify: {{inputs.ticket}}. Answer BUG or QUESTION.", max_tokens=4)

    @wf.tool(after=kind)                      # an external node: the client runs it, posts its result
    def search(classify: str) -> str:         # parameters named after nodes get their outputs
        return lookup(classify)

    answer = wf.llm("answer", f"Using {search}, answer {{{{inputs.ticket}}}}")   # str(node) is "{{search}}"
    wf.edge(kind, search, when=contains("QUESTION"))

`to_dict()` is exactly the body of POST /v1/workflows; it validates first with
the gateway's own schema and DAG checks (so a bad graph raises ValidationFailed
with every problem, before any request), and `graph()` is a networkx view.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from agentgate.errors import ValidationFailed
from common.errors import ValidationProblems
from common.workflow.dag import validate as validate_spec
from common.workflow.schemas import NODE_FIELDS, WorkflowIn, parse_or_422
from common.workflow.templating import references


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


_UNSET = _Unset()


@dataclass(frozen=True)
class Condition:
    """An edge condition on the source node's output; `~cond` negates it."""

    kind: str  # contains | regex | equals | json_path
    pattern: str
    value: Any = _UNSET  # json_path only: what the value found must equal (unset: must be truthy)
    negate: bool = False

    def __invert__(self) -> "Condition":
        return Condition(self.kind, self.pattern, self.value, not self.negate)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {self.kind: self.pattern}
        if self.value is not _UNSET:
            out["value"] = self.value
        if self.negate:
            out["negate"] = True
        return out


def contains(text: str) -> Condition:
    return Condition("contains", text)


def regex(pattern: str) -> Condition:
    return Condition("regex", pattern)


def equals(text: str) -> Condition:
    """The output, stripped, equals `text` stripped."""
    return Condition("equals", text)


def json_path(path: str, value: Any = _UNSET) -> Condition:
    """The output parsed as JSON has `path` ('$.a.b[0]'), equal to `value` when given, else truthy."""
    return Condition("json_path", path, value)


def never() -> Condition:
    """A condition no output meets. An edge with it orders two nodes but never makes the target run
    (see `Workflow.only_if`). Every output contains "", so the negation holds for none (and needs
    no regex: the gateway runs regexes on RE2, which has no lookaround such as `(?!)`)."""
    return Condition("contains", "", negate=True)


@dataclass(frozen=True, eq=False)
class Node:
    """One node. `str(node)` is its reference `{{id}}`, so f-strings quote upstream outputs;
    a tool node is callable like the function behind it."""

    id: str
    type: str = "llm"
    messages: tuple[tuple[str, str], ...] = ()
    max_tokens: int | None = None
    max_retries: int | None = None
    model: str | None = None
    sampling: Mapping[str, Any] = field(default_factory=dict)
    fn: Callable | None = None

    def __str__(self) -> str:
        return "{{" + self.id + "}}"

    @property
    def ref(self) -> str:
        return str(self)

    def __call__(self, *args, **kwargs):
        if self.fn is None:
            raise TypeError(f"node '{self.id}' is an {self.type} node, not a callable tool")
        return self.fn(*args, **kwargs)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"id": self.id, "type": self.type}
        if self.messages:
            out["messages"] = [{"role": r, "content": c} for r, c in self.messages]
        for name in ("model", "max_tokens", "max_retries"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        out.update(self.sampling)
        return out


NodeLike = Node | str


def _id(node: NodeLike) -> str:
    return node.id if isinstance(node, Node) else str(node)


def _messages(prompt: str | None, messages, system: str | None) -> tuple[tuple[str, str], ...]:
    if prompt is not None and messages is not None:
        raise ValueError("give a prompt or messages, not both")
    out = [("system", system)] if system is not None else []
    if prompt is not None:
        out.append(("user", str(prompt)))
    for m in messages or ():
        role, content = (m["role"], m["content"]) if isinstance(m, Mapping) else m
        out.append((role, str(content)))
    return tuple(out)


class Workflow:
    def __init__(self, name: str | None = None, *, inputs: Mapping[str, Any] | None = None, priority: int = 0):
        """`name` becomes the workflow's template: runs of the same name teach the gateway its transitions."""
        self.name = name
        self.inputs = dict(inputs or {})
        self.priority = priority
        self.nodes: dict[str, Node] = {}
        self.edges: list[tuple[str, str, Condition | None]] = []

    # -- nodes -----------------------------------------------------------------------------------
    def llm(self, id: str, prompt: str | None = None, *, messages: Iterable | None = None,
            system: str | None = None, max_tokens: int | None = None, max_retries: int | None = None,
            model: str | None = None, after: NodeLike | Iterable[NodeLike] = (), **sampling) -> Node:
        """An LLM call. `prompt` is one user message (`system` adds a system message first), or give
        `messages` as dicts or (role, content) pairs. `{{node}}` and `{{inputs.name}}` are filled in
        by the gateway; `after` adds plain edges. Sampling fields (temperature, stop, ..., or SGLang's
        `sampling_params`), `tools`, `tool_choice`, `response_format` and `output` pass through."""
        unknown = sorted(set(sampling) - set(NODE_FIELDS) - {"output"})
        if unknown:
            raise TypeError(f"unknown node field(s) {unknown}; known: output, {', '.join(NODE_FIELDS)}")
        node = Node(id, "llm", _messages(prompt, messages, system), max_tokens, max_retries, model, dict(sampling))
        return self._add(node, after)

    def external(self, id: str, fn: Callable | None = None, *, prompt: str | None = None,
                 messages: Iterable | None = None, after: NodeLike | Iterable[NodeLike] = ()) -> Node:
        """A tool node whose result the client posts: `Client.run` calls `fn` (see agents/agentgate/tools.py for
        what it receives). `prompt`/`messages` are rendered by the gateway and handed to `fn`."""
        return self._add(Node(id, "external", _messages(prompt, messages, None), fn=fn), after)

    def tool(self, fn: Callable | None = None, *, id: str | None = None, prompt: str | None = None,
             after: NodeLike | Iterable[NodeLike] = ()):
        """Decorator form of `external`: `@wf.tool` or `@wf.tool(after=plan)`; the id is the function's name."""
        def register(f: Callable) -> Node:
            return self.external(id or f.__name__, f, prompt=prompt, after=after)

        return register(fn) if fn is not None else register

    def _add(self, node: Node, after) -> Node:
        if node.id in self.nodes:
            raise ValueError(f"the workflow already has a node '{node.id}'")
        self.nodes[node.id] = node
        for src in [after] if isinstance(after, (Node, str)) else after:
            self.edge(src, node)
        return node

    def edge(self, source: NodeLike, target: NodeLike, *, when: Condition | None = None) -> None:
        """`target` runs after `source`; with `when`, only if `source`'s output meets it (else it is skipped)."""
        self.edges.append((_id(source), _id(target), when))

    def only_if(self, source: NodeLike, target: NodeLike, when: Condition) -> None:
        """`target` runs only if `source`'s output meets `when`, however many other outputs it quotes.

        The gateway runs a node once any incoming edge is taken, and every `{{ref}}` is an edge: a
        node that quotes the whole conversation so far would run whenever any quoted node finished.
        This turns every other edge into `target` (its refs and edges added so far) into an ordering
        edge that is never taken, so `source` alone decides. Call it after `target` is defined."""
        src, dst = _id(source), _id(target)
        others = set(self.graph().predecessors(dst)) - {src} if dst in self.nodes else set()
        self.edges = [e for e in self.edges if e[1] != dst or e[0] not in others | {src}]
        self.edges += [(pred, dst, never()) for pred in sorted(others)]
        self.edges.append((src, dst, when))

    @property
    def tools(self) -> dict[str, Callable]:
        return {n.id: n.fn for n in self.nodes.values() if n.fn is not None}

    # -- views -----------------------------------------------------------------------------------
    def payload(self) -> dict:
        """The REST JSON, unvalidated."""
        out: dict[str, Any] = {"nodes": [n.to_dict() for n in self.nodes.values()],
                               "edges": [{"source": s, "target": t, **({"condition": c.to_dict()} if c else {})}
                                         for s, t, c in self.edges],
                               "inputs": dict(self.inputs)}
        if self.name is not None:
            out["template"] = self.name
        if self.priority:
            out["priority"] = self.priority
        return out

    def problems(self) -> list[str]:
        """What the gateway would answer with a 422, found locally with its own checks; [] if valid."""
        try:
            body = parse_or_422(WorkflowIn, self.payload())
        except ValidationProblems as exc:
            return exc.problems
        return validate_spec(body.to_spec(default_max_tokens=1))

    def validate(self) -> "Workflow":
        problems = self.problems()
        if problems:
            raise ValidationFailed("invalid workflow: " + "; ".join(problems), problems=problems, status=422,
                                   code="invalid_workflow")
        return self

    def to_dict(self) -> dict:
        """The body of POST /v1/workflows; raises ValidationFailed (every problem listed) if invalid."""
        return self.validate().payload()

    def graph(self) -> nx.DiGraph:
        """Nodes carry `node` (the Node); edges carry `condition` and `implicit` (True for an edge that
        only a `{{ref}}` in the target's messages implies)."""
        g = nx.DiGraph()
        for node in self.nodes.values():
            g.add_node(node.id, node=node, type=node.type)
        for s, t, c in self.edges:
            g.add_edge(s, t, condition=c, implicit=False)
        for node in self.nodes.values():
            for _, content in node.messages:
                for ref in references(content)[0]:
                    if ref in g and ref != node.id and not g.has_edge(ref, node.id):
                        g.add_edge(ref, node.id, condition=None, implicit=True)
        return g

    def __repr__(self) -> str:
        return f"Workflow({self.name!r}, {len(self.nodes)} nodes, {len(self.edges)} edges)"
