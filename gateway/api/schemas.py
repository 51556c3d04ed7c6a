"""Pydantic models for what enters over HTTP, and their conversion to the
planner's frozen dataclasses. Schema errors become one 422 listing every problem."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.api.forwarded import Sampling
from gateway.errors import ValidationProblems
from gateway.planner.conditions import RegexUnsupported, compile_regex
from gateway.planner.spec import Condition, EdgeSpec, NodeSpec, WorkflowSpec
from gateway.planner.templates import TemplateEdge, TemplateGraph

# Sampling fields of a node, forwarded to the worker's /v1/chat/completions as they are.
SAMPLING_FIELDS = tuple(Sampling.model_fields)
CONDITION_KINDS = ("contains", "regex", "equals", "json_path")


class ConditionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    contains: str | None = None
    regex: str | None = None
    equals: str | None = None
    json_path: str | None = None
    value: Any = None  # for json_path: what the path must equal
    negate: bool = False

    @model_validator(mode="after")
    def _exactly_one(self):
        given = [k for k in CONDITION_KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a condition needs exactly one of {', '.join(CONDITION_KINDS)}")
        if self.regex is not None:
            try:
                compile_regex(self.regex)
            except RegexUnsupported as exc:
                raise ValueError(str(exc)) from None
        return self

    def to_spec(self) -> Condition:
        kind = next(k for k in CONDITION_KINDS if getattr(self, k) is not None)
        return Condition(kind=kind, value=getattr(self, kind), expected=self.value,
                         has_expected="value" in self.model_fields_set, negate=self.negate)


class MessageIn(BaseModel):
    role: str
    content: str


class NodeIn(Sampling):
    """A node; its sampling fields (SAMPLING_FIELDS, checked as a forwarded call's are) go to the worker."""
    model_config = ConfigDict(extra="allow")
    id: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_\-]+$")
    type: Literal["llm", "external"] = "llm"
    model: str | None = None
    messages: list[MessageIn] = []
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    max_retries: int = Field(default=2, ge=0, le=10)

    def to_spec(self, default_max_tokens: int) -> NodeSpec:
        params = {k: getattr(self, k) for k in SAMPLING_FIELDS if k in self.model_fields_set}
        return NodeSpec(id=self.id, kind=self.type, messages=tuple((m.role, m.content) for m in self.messages),
                        model=self.model, params=params, max_tokens=self.max_tokens or default_max_tokens,
                        max_retries=self.max_retries)


class EdgeIn(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    source: str = Field(validation_alias=AliasChoices("source", "from"))
    target: str = Field(validation_alias=AliasChoices("target", "to"))
    condition: ConditionIn | None = None


class WorkflowOptionsIn(BaseModel):
    """Per-workflow switches (None: the gateway's default)."""
    model_config = ConfigDict(extra="forbid")
    token_pipelining: bool | None = None  # prefill downstream prompts while upstream nodes stream

    def to_spec(self) -> dict:
        return self.model_dump(exclude_none=True)


class WorkflowIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    nodes: list[NodeIn] = Field(min_length=1, max_length=10_000)
    edges: list[EdgeIn] = []
    inputs: dict[str, Any] = {}
    template: str | None = None
    priority: int = 0
    options: WorkflowOptionsIn = WorkflowOptionsIn()

    def to_spec(self, default_max_tokens: int) -> WorkflowSpec:
        return WorkflowSpec(nodes=tuple(n.to_spec(default_max_tokens) for n in self.nodes),
                            edges=tuple(EdgeSpec(e.source, e.target, e.condition.to_spec() if e.condition else None)
                                        for e in self.edges),
                            inputs=dict(self.inputs), template=self.template, priority=self.priority,
                            options=self.options.to_spec())


class NodeResultIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    output: Any  # a string, or any JSON (stored as its JSON text)


class AgentHints(BaseModel):
    """Optional hints on single OpenAI calls (body `agent_hints` or `x-agent-*` headers)."""
    model_config = ConfigDict(extra="ignore")
    workflow_id: str | None = None
    template: str | None = None
    node_id: str | None = None
    agent_id: str | None = None
    priority: int | None = None
    pin_ttl_s: float | None = None
    expected_output_tokens: int | None = None


def parse_or_422(model: type[BaseModel], body: Any) -> BaseModel:
    if not isinstance(body, dict):
        raise ValidationProblems(["the request body must be a JSON object"])
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "body"
            problems.append(f"{where}: {err['msg']}")
        raise ValidationProblems(problems) from None


class TemplateNodeIn(BaseModel):
    model_config = ConfigDict(extra="ignore")  # LangGraph's node JSON carries type/data too
    id: str = Field(min_length=1, max_length=200)


class TemplateEdgeIn(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    source: str = Field(validation_alias=AliasChoices("source", "from"))
    target: str = Field(validation_alias=AliasChoices("target", "to"))
    conditional: bool = False


class TemplateIn(BaseModel):
    """A graph by name; accepts LangGraph's `get_graph().to_json()` node/edge shapes."""
    model_config = ConfigDict(extra="ignore")
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.\-]+$")
    nodes: list[str | TemplateNodeIn] = Field(min_length=1, max_length=10_000)
    edges: list[TemplateEdgeIn] = []

    def to_graph(self) -> TemplateGraph:
        return TemplateGraph(self.name, tuple(n if isinstance(n, str) else n.id for n in self.nodes),
                             tuple(TemplateEdge(e.source, e.target, e.conditional) for e in self.edges))
