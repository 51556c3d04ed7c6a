"""External nodes run by Python callables: what a callable receives, and the bookkeeping of `run()`.

When an external node becomes ready the gateway emits `node_started` with
`external: true` and the node's messages rendered. `ToolRunner` follows the
event stream, keeps every finished node's output, and turns that event into a
`ToolCall`; the client then calls the node's callable with arguments bound by
parameter name (`bind`) and posts what it returns as the node's result:

- a parameter named like a finished node gets that node's output (str);
- `prompt` gets the node's rendered text (its messages' contents, joined),
  `messages` the rendered messages, `inputs` the workflow inputs, `outputs`
  every output so far, `call` the whole `ToolCall`;
- a parameter named like a workflow input gets that input;
- the first positional parameter left over gets `prompt`; `**kwargs` gets every output.

The return value is posted as is: a str, or anything JSON-serializable (stored
as its JSON text); None posts "".
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agentgate.events import Event, NodeFinished, NodeStarted
from common.workflow.templating import references

RESERVED = ("call", "prompt", "messages", "inputs", "outputs")


@dataclass(frozen=True)
class ToolCall:
    workflow_id: str
    node: str
    messages: tuple[dict, ...] = ()
    outputs: Mapping[str, str] = field(default_factory=dict)
    inputs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        return "\n\n".join(m.get("content", "") for m in self.messages)


async def call_tool(fn: Callable, call: ToolCall) -> Any:
    """Run a tool for an async caller: coroutine functions awaited, plain ones in a thread
    (so a blocking tool never stalls the event loop), an awaitable they return awaited too."""
    import asyncio

    args, kwargs = bind(fn, call)
    if inspect.iscoroutinefunction(fn):
        return await fn(*args, **kwargs)
    value = await asyncio.to_thread(fn, *args, **kwargs)
    return await value if inspect.isawaitable(value) else value


def bind(fn: Callable, call: ToolCall) -> tuple[list, dict]:
    """(args, kwargs) to call `fn` with for this call; TypeError names a parameter nothing fills."""
    named = {"call": call, "prompt": call.prompt, "messages": [dict(m) for m in call.messages],
             "inputs": dict(call.inputs), "outputs": dict(call.outputs)}
    args: list = []
    kwargs: dict = {}
    prompt_given = False
    for p in inspect.signature(fn).parameters.values():
        if p.kind is p.VAR_KEYWORD:
            kwargs.update({k: v for k, v in call.outputs.items() if k not in kwargs and k.isidentifier()})
            continue
        if p.kind is p.VAR_POSITIONAL:
            continue
        if p.name in call.outputs:
            value = call.outputs[p.name]
        elif p.name in named:
            value = named[p.name]
        elif p.name in call.inputs:
            value = call.inputs[p.name]
        elif not prompt_given and p.kind is not p.KEYWORD_ONLY and p.default is p.empty:
            value, prompt_given = call.prompt, True
        elif p.default is not p.empty:
            continue
        else:
            raise TypeError(f"tool for node '{call.node}': nothing to pass as parameter '{p.name}' "
                            f"(not a finished node, an input, or one of {', '.join(RESERVED)})")
        if p.kind is p.POSITIONAL_ONLY:
            args.append(value)
        else:
            kwargs[p.name] = value
    return args, kwargs


def result_payload(value: Any) -> Any:
    """What to post for a callable's return value."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def external_nodes(payload: dict) -> list[str]:
    return [n["id"] for n in payload.get("nodes", []) if n.get("type") == "external"]


def upstream_of(payload: dict) -> dict[str, set[str]]:
    """node → the nodes it waits for: explicit edges plus `{{ref}}`s in its messages."""
    ups: dict[str, set[str]] = {n["id"]: set() for n in payload.get("nodes", [])}
    for e in payload.get("edges", []):
        ups.setdefault(e.get("target", e.get("to")), set()).add(e.get("source", e.get("from")))
    for n in payload.get("nodes", []):
        for m in n.get("messages", []):
            ups[n["id"]] |= {r for r in references(m.get("content", ""))[0] if r in ups and r != n["id"]}
    return ups


def prepare(workflow, tools: Mapping[str, Callable] | None, inputs: Mapping[str, Any] | None
            ) -> tuple[dict, dict[str, Callable]]:
    """(REST payload, node → callable) for `run()`: a Workflow's own callables, overridden by `tools`.
    Every external node must have a callable, or nothing would ever post its result."""
    if hasattr(workflow, "to_dict"):
        payload, callables = workflow.to_dict(), dict(workflow.tools)
    elif isinstance(workflow, Mapping):
        payload, callables = dict(workflow), {}
    else:
        raise TypeError(f"a workflow is a Workflow or a dict, not {type(workflow).__name__}")
    callables.update(tools or {})
    if inputs:
        payload["inputs"] = {**payload.get("inputs", {}), **inputs}
    missing = [n for n in external_nodes(payload) if n not in callables]
    if missing:
        raise ValueError(f"external node(s) {', '.join(missing)} have no callable; pass tools={{node: fn}}")
    return payload, callables


class ToolRunner:
    """Follows one workflow's events; `on_event` returns the ToolCalls that are due.

    A call is due once its node has started *and* every upstream node's node_finished
    has been seen: when two results are posted at once the gateway may emit a
    downstream node_started before an upstream node_finished, and the callable must
    still see every upstream output."""

    def __init__(self, workflow_id: str, tools: Mapping[str, Callable], inputs: Mapping[str, Any],
                 upstream: Mapping[str, set[str]] | None = None):
        self.workflow_id = workflow_id
        self.tools = dict(tools)
        self.inputs = dict(inputs)
        self.upstream = dict(upstream or {})
        self.outputs: dict[str, str] = {}
        self.ended: set[str] = set()  # nodes whose node_finished was seen (any status)
        self.waiting: dict[str, tuple[dict, ...]] = {}  # started, some upstream event not seen yet
        self.called: set[str] = set()

    def on_event(self, event: Event) -> list[ToolCall]:
        if isinstance(event, NodeFinished):
            self.ended.add(event.node)
            if event.status == "finished":
                self.outputs[event.node] = event.output or ""
        elif (isinstance(event, NodeStarted) and event.external and event.node in self.tools
              and event.node not in self.called):  # a replay after a reconnect or takeover starts it again
            self.waiting[event.node] = tuple(event.messages)
        due = [n for n in self.waiting if self.upstream.get(n, set()) <= self.ended]
        calls = []
        for node in due:
            self.called.add(node)
            calls.append(ToolCall(self.workflow_id, node, self.waiting.pop(node), dict(self.outputs), self.inputs))
        return calls
