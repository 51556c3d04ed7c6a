"""Pydantic models for what enters over HTTP, and their conversion to the
planner's frozen dataclasses. Schema errors become one 422 listing every problem."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from common.errors import ValidationProblems
from common.workflow.conditions import RegexUnsupported, compile_regex
from common.workflow.sampling import Sampling
from common.workflow.spec import Condition, EdgeSpec, NodeSpec, WorkflowSpec
from common.workflow.template_graph import TemplateEdge, TemplateGraph

# Sampling fields of a node, forwarded to the worker's /v1/chat/completions as they are: those checked as a
# forwarded call's are (common/workflow/sampling.py), and the others the worker takes (OpenAI's names, SGLang's
# regex / ebnf).
CHECKED_SAMPLING = tuple(Sampling.model_fields)
SAMPLING_FIELDS = CHECKED_SAMPLING + ("logit_bias", "skip_special_tokens", "no_stop_trim", "regex", "ebnf")
# Everything else a node may carry for its call: tools, and the output format.
CALL_FIELDS = ("tools", "tool_choice", "response_format", "cache_salt")
NODE_FIELDS = SAMPLING_FIELDS + CALL_FIELDS + ("sampling_params", "max_completion_tokens")
# SGLang's sampling_params keys, by the OpenAI field each becomes (json_schema: response_format).
SGLANG_SAMPLING = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens", "sampling_seed": "seed",
                   "json_schema": "response_format", **{k: k for k in SAMPLING_FIELDS if k != "min_tokens"}}
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


def _openai_params(extra: dict) -> tuple[dict, int | None]:
    """A node's call fields in OpenAI form, SGLang's sampling_params folded in; (params, max_tokens).
    Every field is either forwarded or refused: an unknown one is an error that names it."""
    unknown = sorted(set(extra) - set(NODE_FIELDS))
    if unknown:
        raise ValueError(f"unknown node field(s) {', '.join(unknown)}; a node takes id, type, model, messages, "
                         f"max_tokens, max_retries, output and {', '.join(NODE_FIELDS)}")
    params = {k: v for k, v in extra.items() if k not in ("sampling_params", "max_completion_tokens")}
    max_tokens = extra.get("max_completion_tokens")
    sp = extra.get("sampling_params") or {}
    if not isinstance(sp, dict):
        raise ValueError("sampling_params must be an object (SGLang's sampling parameters)")
    unknown = sorted(set(sp) - set(SGLANG_SAMPLING))
    if unknown:
        raise ValueError(f"sampling_params: unsupported key(s) {', '.join(unknown)} in a workflow node; "
                         f"supported: {', '.join(SGLANG_SAMPLING)}")
    for key, value in sp.items():
        name = SGLANG_SAMPLING[key]
        if key == "json_schema":
            schema = json.loads(value) if isinstance(value, str) else value
            value = {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
        if name == "max_tokens":
            max_tokens = value
            continue
        if name in params and params[name] != value:
            raise ValueError(f"{key} is set twice, differently: as sampling_params.{key} and as {name}")
        params[name] = value
    return params, max_tokens


class NodeIn(Sampling):
    """A node. Its sampling fields (checked as a forwarded call's are) and call fields (NODE_FIELDS) go to the
    worker; any other field is refused with the name of it."""
    model_config = ConfigDict(extra="allow")
    id: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_\-]+$")
    type: Literal["llm", "external"] = "llm"
    model: str | None = None
    messages: list[MessageIn] = []
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    max_retries: int = Field(default=2, ge=0, le=10)
    # what the node's output is: its text, its first tool call's arguments (JSON), or all its calls (JSON list)
    output: Literal["text", "tool_call", "tool_calls"] = "text"
    _params: dict = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _call_fields(self):
        given = {k: getattr(self, k) for k in CHECKED_SAMPLING if k in self.model_fields_set}
        params, max_tokens = _openai_params({**given, **(self.model_extra or {})})
        Sampling.model_validate({k: v for k, v in params.items() if k in CHECKED_SAMPLING})  # sampling_params too
        if max_tokens is not None:
            if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= 1_000_000:
                raise ValueError(f"max_new_tokens / max_completion_tokens must be an integer in [1, 1000000], "
                                 f"got {max_tokens!r}")
            if self.max_tokens is not None and self.max_tokens != max_tokens:
                raise ValueError(f"max_tokens is set twice, differently ({self.max_tokens} and {max_tokens})")
            self.max_tokens = max_tokens
        if not isinstance(params.get("cache_salt", ""), str):
            raise ValueError("cache_salt must be a string")
        if self.output != "text" and not params.get("tools"):
            raise ValueError(f"output {self.output!r} needs tools")
        self._params = params
        return self

    def to_spec(self, default_max_tokens: int) -> NodeSpec:
        return NodeSpec(id=self.id, kind=self.type, messages=tuple((m.role, m.content) for m in self.messages),
                        model=self.model, params=self._params, max_tokens=self.max_tokens or default_max_tokens,
                        max_retries=self.max_retries, output=self.output)


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
