"""Running one LLM node on one worker: render its prompt, stream the call, collect the result.

The call is an OpenAI chat completion with stream=True and include_usage, so any
SGLang-API worker serves it; `rid` names it so a cancel can abort it on the
worker. Text deltas go to `on_delta` as they arrive (SSE token events). A stream
that ends without a finish_reason counts as a broken call (retryable), and so
does one that stops coming (client.py: first-token and inter-token timeouts).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from common.workflow import outputs
from common.workflow.spec import NodeSpec
from gateway.errors import WorkerCallError
from gateway.workers.client import StreamTimeouts, WorkerClient


@dataclass(frozen=True)
class CallResult:
    text: str
    usage: dict | None
    finish_reason: str | None
    tool_calls: tuple[dict, ...] = ()  # OpenAI's {id, type, function: {name, arguments}}, assembled from deltas


def node_output(spec: NodeSpec, result: CallResult, url: str) -> str:
    """What the node hands downstream (common/workflow/outputs.py); a missing tool call fails the node."""
    try:
        return outputs.node_output(spec, result.text, result.tool_calls, result.finish_reason)
    except outputs.NotAToolCall as exc:
        raise WorkerCallError(url, str(exc), retryable=False) from None


def with_priority(body: dict, priority: int) -> None:
    """Give a worker call SGLang's `priority` (GatewayConfig.workflow_priority + the workflow's or hint's own)
    unless the call sets its own; 0 is the workers' default, so it is not sent."""
    if priority:
        body.setdefault("priority", priority)


def chat_body(spec: NodeSpec, messages: list[dict], rid: str, model: str | None, priority: int = 0) -> dict:
    body = {**spec.params, "messages": messages, "max_tokens": spec.max_tokens, "stream": True,
            "stream_options": {"include_usage": True}, "rid": rid}
    with_priority(body, priority)
    if spec.params.get("temperature") is None:
        body["temperature"] = 0.0  # workflows are reproducible unless a node asks otherwise
    body["model"] = spec.model or model or "default"
    return body


async def run_chat(client: WorkerClient, body: dict, on_delta: Callable[[str], Awaitable[None]],
                   timeouts: StreamTimeouts, recorder=None) -> CallResult:
    """`recorder` (migration.py), if given, sees every chunk's text and token ids as they arrive."""
    text, usage, finish = [], None, None
    calls = outputs.ToolCallDeltas()
    async for chunk in client.stream_json("/v1/chat/completions", body, timeouts):
        if not isinstance(chunk, dict):
            raise WorkerCallError(client.url, f"a stream chunk is not a JSON object: {str(chunk)[:80]}")
        if "error" in chunk:
            err = chunk["error"]
            message = err.get("message", err) if isinstance(err, dict) else err
            raise WorkerCallError(client.url, f"error mid-stream: {message}", retryable=False)
        if recorder is not None:
            recorder.on_chunk(chunk, None, None)
        calls.add(chunk)
        for choice in chunk.get("choices") or ():
            delta = (choice.get("delta") or {}).get("content")
            if delta:
                text.append(delta)
                await on_delta(delta)
            if recorder is not None:
                recorder.on_chunk(chunk, delta, choice.get("token_ids"))
            finish = choice.get("finish_reason") or finish
        if chunk.get("usage"):
            usage = chunk["usage"]
    if finish is None:
        raise WorkerCallError(client.url, "the stream ended before the call finished")
    return CallResult("".join(text), usage, finish, calls.calls())
