"""What the gateway answers about workflows and chat calls, as frozen dataclasses.

Each keeps the parsed JSON it came from in `raw`, so a field the gateway adds
later is reachable before the SDK names it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TERMINAL = frozenset({"finished", "failed", "cancelled"})


@dataclass(frozen=True)
class NodeInfo:
    id: str
    type: str
    status: str
    output: str | None = None
    worker: str | None = None
    attempts: int = 0
    error: str | None = None
    usage: dict | None = None
    ttft_s: float | None = None
    duration_s: float | None = None
    started: float | None = None  # epoch seconds (the gateway's clock): dispatched / began waiting
    finished: float | None = None  # epoch seconds: finished, skipped, failed or cancelled

    @property
    def prompt_tokens(self) -> int:
        return (self.usage or {}).get("prompt_tokens") or 0

    @property
    def completion_tokens(self) -> int:
        return (self.usage or {}).get("completion_tokens") or 0

    @property
    def cached_tokens(self) -> int:
        return ((self.usage or {}).get("prompt_tokens_details") or {}).get("cached_tokens") or 0

    @classmethod
    def from_json(cls, node_id: str, d: dict) -> "NodeInfo":
        timings = d.get("timings") or {}
        return cls(id=node_id, type=d.get("type", "llm"), status=d.get("status", "pending"), output=d.get("output"),
                   worker=d.get("worker"), attempts=d.get("attempts", 0), error=d.get("error"), usage=d.get("usage"),
                   ttft_s=timings.get("ttft_s"), duration_s=timings.get("duration_s"),
                   started=timings.get("started"), finished=timings.get("finished"))


@dataclass(frozen=True)
class CacheStats:
    prompt_tokens: int = 0
    cached_tokens: int = 0
    hit_rate: float = 0.0


@dataclass(frozen=True)
class WorkflowState:
    """GET /v1/workflows/{id}: status, every node, the finished outputs, prefix-cache totals."""

    id: str
    status: str
    error: str | None
    template: str | None
    priority: int
    created: float | None
    finished: float | None
    nodes: dict[str, NodeInfo]
    outputs: dict[str, Any]
    cache: CacheStats
    raw: dict = field(repr=False, default_factory=dict)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def from_json(cls, d: dict) -> "WorkflowState":
        cache = d.get("cache") or {}
        return cls(id=d["id"], status=d["status"], error=d.get("error"), template=d.get("template"),
                   priority=d.get("priority", 0), created=d.get("created"), finished=d.get("finished"),
                   nodes={k: NodeInfo.from_json(k, v) for k, v in (d.get("nodes") or {}).items()},
                   outputs=dict(d.get("outputs") or {}),
                   cache=CacheStats(cache.get("prompt_tokens", 0), cache.get("cached_tokens", 0),
                                    cache.get("hit_rate", 0.0)), raw=d)


@dataclass(frozen=True)
class WorkflowSummary:
    id: str
    status: str
    created: float | None = None
    template: str | None = None
    priority: int = 0
    error: str | None = None

    @classmethod
    def from_json(cls, d: dict) -> "WorkflowSummary":
        return cls(id=d["id"], status=d["status"], created=d.get("created"), template=d.get("template"),
                   priority=d.get("priority", 0), error=d.get("error"))


@dataclass(frozen=True)
class WorkflowPage:
    """One page of GET /v1/workflows, newest first as the gateway orders them."""

    data: tuple[WorkflowSummary, ...]
    total: int
    offset: int
    limit: int
    has_more: bool

    @classmethod
    def from_json(cls, d: dict) -> "WorkflowPage":
        return cls(tuple(WorkflowSummary.from_json(x) for x in d.get("data", [])), d.get("total", 0),
                   d.get("offset", 0), d.get("limit", 0), bool(d.get("has_more")))


@dataclass(frozen=True)
class ChatResult:
    """A non-streamed /v1/chat/completions answer: the first choice's text, usage, and the raw body."""

    text: str
    finish_reason: str | None
    usage: dict
    raw: dict = field(repr=False, default_factory=dict)

    @property
    def cached_tokens(self) -> int:
        return ((self.usage or {}).get("prompt_tokens_details") or {}).get("cached_tokens") or 0

    @classmethod
    def from_json(cls, d: dict) -> "ChatResult":
        choice = (d.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        return cls(text=message.get("content") or choice.get("text") or "", finish_reason=choice.get("finish_reason"),
                   usage=d.get("usage") or {}, raw=d)


@dataclass(frozen=True)
class ChatChunk:
    """One chunk of a streamed /v1/chat/completions answer. `text` is the first choice's new content
    ("" for a role-only or usage-only chunk); the last chunk carries `usage` when include_usage is on."""

    text: str
    finish_reason: str | None
    usage: dict | None
    raw: dict = field(repr=False, default_factory=dict)

    @property
    def cached_tokens(self) -> int:
        return ((self.usage or {}).get("prompt_tokens_details") or {}).get("cached_tokens") or 0

    @classmethod
    def from_json(cls, d: dict) -> "ChatChunk":
        choice = (d.get("choices") or [{}])[0]
        delta = choice.get("delta") or {}
        return cls(text=delta.get("content") or choice.get("text") or "", finish_reason=choice.get("finish_reason"),
                   usage=d.get("usage") or None, raw=d)


@dataclass(frozen=True)
class CallInfo:
    """One LLM call a client-driven agent made (e.g. a LangGraph node through the gateway's chat API)."""

    node: str
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    duration_s: float | None = None
    started: float | None = None  # wall-clock time (time.time()) the call was sent


@dataclass(frozen=True)
class AgentRun:
    """What a client-driven agent (a file defining `run_agent`) hands `agentgate run`: its outputs by
    name, and every call it made, in order."""

    outputs: dict[str, str]
    calls: tuple[CallInfo, ...] = ()

    @property
    def prompt_tokens(self) -> int:
        return sum(c.prompt_tokens for c in self.calls)

    @property
    def cached_tokens(self) -> int:
        return sum(c.cached_tokens for c in self.calls)
