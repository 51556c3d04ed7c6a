"""Run a workflow without the gateway: the agent's own loop against one OpenAI-compatible endpoint.

This is what an agent does today without agentgate: a loop in its own code that renders a
prompt, calls the model, waits for the whole answer, runs a tool, then moves on. Every call
goes to the one base URL the agent was given (a worker, a router such as sglang-router, or
any OpenAI-compatible server). Two loops:

- `run_sequential`: one node at a time, no call starts before the previous one ends (the
  simplest agent loop);
- `run_client_side`: every node as soon as its inputs exist, calls and tools of one ready set
  at once (an asyncio agent that knows its own graph, the way LangGraph runs parallel
  branches). Behind sglang-router's cache_aware policy this is the strongest client-driven
  peer: the router sees single requests and routes each by its prefix.

The workflow benchmark measures both as baselines; they also run a workflow against a bare
worker while debugging.

The semantics are the gateway's own, imported rather than re-implemented: the DAG with its
readiness and skip rules (common/workflow/run.py), `{{ref}}` rendering, edge conditions and a
node's output (its text, or its tool calls as JSON: common/workflow/outputs.py).
Among ready nodes the one that comes first in topological order runs first. The result is a
`WorkflowState` shaped like GET /v1/workflows/{id} (timings included), so a caller measures
both paths with the same code.

    state = await run_sequential(build(), "http://127.0.0.1:30000")
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from agentgate.async_client import AsyncClient
from agentgate.errors import AgentGateError
from agentgate.state import WorkflowState
from agentgate.tools import ToolCall, call_tool, prepare, result_payload
from common.workflow.outputs import NotAToolCall, ToolCallDeltas, node_output
from common.workflow.run import NodeState, WorkflowRun
from common.workflow.schemas import WorkflowIn
from common.workflow.templating import render

DEFAULT_MAX_TOKENS = 128  # the gateway's default for nodes that name none


async def run_sequential(workflow, base_url: str, **kwargs) -> WorkflowState:
    """Run every node of `workflow` in turn against `base_url`: `run_client_side` with one node at a time."""
    return await run_client_side(workflow, base_url, parallel=False, **kwargs)


async def run_client_side(workflow, base_url: str, *, parallel: bool = True,
                          tools: Mapping[str, Callable] | None = None, inputs: Mapping[str, Any] | None = None,
                          client: AsyncClient | None = None, default_max_tokens: int = DEFAULT_MAX_TOKENS,
                          model: str = "default", stream: bool = True) -> WorkflowState:
    """Run `workflow` against `base_url` (its /v1/chat/completions; streamed unless `stream` is False), the
    external nodes through their callables as `Client.run` would; the final state. With `parallel`, every
    ready node starts at once; without, one node at a time, the first in topological order first. A call or
    tool that fails ends the workflow "failed" with the cause in `error` (nothing is retried); calls still
    running then are cancelled."""
    payload, callables = prepare(workflow, tools, inputs)
    spec = WorkflowIn.model_validate(payload).to_spec(default_max_tokens)
    run = WorkflowRun(("par-" if parallel else "seq-") + uuid.uuid4().hex[:16], spec, time.time())
    own = client is None
    client = client or AsyncClient(base_url, timeout=600.0)
    position = {node: i for i, node in enumerate(run.order)}
    queue: list[str] = []
    running: dict[asyncio.Task, str] = {}
    error: str | None = None

    async def one(node: str) -> None:
        if run.node_spec(node).kind == "external":
            try:
                await _run_tool(run, node, callables[node])
            except Exception as exc:  # the user's code: the run ends and reports why
                raise _NodeFailed(f"tool for node '{node}' raised {exc!r}") from exc
        else:
            try:
                await _run_llm(run, node, client, model, stream)
            except (AgentGateError, aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                raise _NodeFailed(f"node '{node}' failed: {exc!r}") from exc

    try:
        while True:
            ready, _skipped = run.advance()
            queue = sorted(queue + ready, key=position.__getitem__)
            while queue and (parallel or not running):
                node = queue.pop(0)
                running[asyncio.create_task(one(node))] = node
            if not running:
                break
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(done, key=lambda t: position[running[t]]):
                node = running.pop(task)
                if task.exception() is not None and error is None:
                    error = str(task.exception())
                    run.nodes[node].status, run.nodes[node].error = "failed", error
                    run.nodes[node].finished = time.time()
            if error is not None:
                break
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        if own:
            await client.close()
    status = "finished" if error is None and run.is_complete() else "failed"
    if status == "failed":
        for state in run.nodes.values():
            if state.status in ("pending", "ready", "running", "waiting"):
                state.status = "cancelled"
    return WorkflowState.from_json(_state_json(run, status, error))


class _NodeFailed(Exception):
    """A node's call or tool failed; the message says which and why."""


async def _run_llm(run: WorkflowRun, node: str, client: AsyncClient, model: str, stream: bool = True) -> None:
    spec, state = run.node_spec(node), run.nodes[node]
    messages = [{"role": r, "content": render(c, run.outputs(), run.spec.inputs)} for r, c in spec.messages]
    sampling = {"temperature": 0.0, **spec.params, "max_tokens": spec.max_tokens}  # greedy unless asked, as the gateway
    state.status, state.attempts, state.worker = "running", state.attempts + 1, client.base_url
    state.started = time.time()
    if not stream:  # one answer: no first-token time to record
        result = await client.chat(messages, model=spec.model or model, **sampling)
        message = ((result.raw.get("choices") or [{}])[0].get("message") or {})
        state.output = _output(spec, result.text, message.get("tool_calls") or (), result.finish_reason)
        state.status, state.usage, state.finished = "finished", result.usage, time.time()
        return
    text, usage, finish, calls = [], None, None, ToolCallDeltas()
    async for chunk in client.chat_stream(messages, model=spec.model or model, **sampling):
        calls.add(chunk.raw)
        if (chunk.text or calls) and state.first_token is None:
            state.first_token = time.time()
        text.append(chunk.text)
        usage, finish = chunk.usage or usage, chunk.finish_reason or finish
    state.output = _output(spec, "".join(text), calls.calls(), finish)
    state.status, state.usage, state.finished = "finished", usage, time.time()


def _output(spec, text: str, tool_calls, finish_reason: str | None) -> str:
    """The node's output as the gateway shapes it (its text, or its tool calls as JSON)."""
    try:
        return node_output(spec, text, tuple(tool_calls), finish_reason)
    except NotAToolCall as exc:
        raise _NodeFailed(str(exc)) from None


async def _run_tool(run: WorkflowRun, node: str, fn: Callable) -> None:
    spec, state = run.node_spec(node), run.nodes[node]
    messages = tuple({"role": r, "content": render(c, run.outputs(), run.spec.inputs)} for r, c in spec.messages)
    state.status, state.started = "waiting", time.time()
    value = result_payload(await call_tool(fn, ToolCall(run.id, node, messages, run.outputs(), dict(run.spec.inputs))))
    state.output = value if isinstance(value, str) else json.dumps(value)  # stored as the gateway stores it
    state.status, state.finished = "finished", time.time()


def _node_json(kind: str, state: NodeState) -> dict:
    started, first, finished = state.started, state.first_token, state.finished
    return {"type": kind, "status": state.status, "output": state.output, "worker": state.worker,
            "attempts": state.attempts, "error": state.error, "usage": state.usage,
            "timings": {"started": started, "finished": finished,
                        "ttft_s": first - started if first and started else None,
                        "duration_s": finished - started if finished and started else None}}


def _state_json(run: WorkflowRun, status: str, error: str | None) -> dict:
    nodes = {n.id: _node_json(n.kind, run.nodes[n.id]) for n in run.spec.nodes}
    prompt = sum((s.usage or {}).get("prompt_tokens") or 0 for s in run.nodes.values())
    cached = sum(((s.usage or {}).get("prompt_tokens_details") or {}).get("cached_tokens") or 0
                 for s in run.nodes.values())
    return {"id": run.id, "status": status, "error": error, "template": run.spec.template,
            "priority": run.spec.priority, "created": run.created, "finished": time.time(), "nodes": nodes,
            "outputs": run.outputs(), "cache": {"prompt_tokens": prompt, "cached_tokens": cached,
                                                "hit_rate": cached / prompt if prompt else 0.0}}
