"""`Client`: the blocking SDK client (stdlib urllib; no event loop, safe in any thread).

Its twin `AsyncClient` (agents/agentgate/async_client.py) has the same methods as
coroutines and async iterators; both build requests and read answers through
agents/agentgate/transport.py, so they retry, time out and raise the same way.

    with Client("http://127.0.0.1:8000") as gw:
        state = gw.run(wf)               # submit, stream, run tool callables, return the final state
        print(state.outputs)
"""

from __future__ import annotations

import asyncio
import http.client
import inspect
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from agentgate import transport
from agentgate.errors import AgentGateError, ToolFailed, WorkflowFailed
from agentgate.events import Event, SSEDecoder, WorkflowFinished
from agentgate.state import ChatChunk, ChatResult, WorkflowPage, WorkflowState
from agentgate.tools import ToolRunner, bind, prepare, result_payload, upstream_of

# Errors from a connection that broke after the request was sent (it may have been acted on).
LOST = (OSError, http.client.HTTPException)


class Client:
    def __init__(self, base_url: str | None = None, *, timeout: float = 60.0,
                 retry: transport.RetryPolicy | None = None, headers: Mapping[str, str] | None = None,
                 api_key: str | None = None):
        """`timeout`: seconds for each request (for event streams: the longest silence; the gateway
        sends a keep-alive every second). `retry`: how 503s and connection failures are retried."""
        self.base_url = transport.base_url(base_url)
        self.timeout = timeout
        self.retry = retry or transport.RetryPolicy()
        self.headers = transport.auth_headers(api_key, headers)  # api_key: else $AGENTGATE_API_KEY
        self._opener = urllib.request.build_opener()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release: every request opens and closes its own connection."""

    # -- workflows ---------------------------------------------------------------------------------
    def submit(self, workflow, *, inputs: Mapping[str, Any] | None = None) -> str:
        """POST /v1/workflows; a Workflow is validated locally first. Returns the workflow id."""
        payload = workflow.to_dict() if hasattr(workflow, "to_dict") else dict(workflow)
        if inputs:
            payload["inputs"] = {**payload.get("inputs", {}), **inputs}
        return self._call("POST", "/v1/workflows", json=payload)["id"]

    def get(self, workflow_id: str) -> WorkflowState:
        return WorkflowState.from_json(self._call("GET", f"/v1/workflows/{workflow_id}"))

    def list(self, *, offset: int = 0, limit: int = 20) -> WorkflowPage:
        return WorkflowPage.from_json(self._call("GET", "/v1/workflows", query={"offset": offset, "limit": limit}))

    def cancel(self, workflow_id: str) -> str:
        return self._call("DELETE", f"/v1/workflows/{workflow_id}")["status"]

    def post_result(self, workflow_id: str, node: str, output: Any) -> dict:
        return self._call("POST", f"/v1/workflows/{workflow_id}/nodes/{node}/result", json={"output": output})

    def events(self, workflow_id: str, last_event_id: str | None = None) -> Iterator[Event]:
        """Every event after `last_event_id` (from the start when None) until workflow_finished.
        A dropped stream reconnects with Last-Event-ID, so no event is lost or repeated."""
        last, failures = last_event_id, 0
        while True:
            headers = {"Accept": "text/event-stream", **({"Last-Event-ID": last} if last else {})}
            resp = self._open(self._request("GET", f"/v1/workflows/{workflow_id}/events", headers=headers))
            try:
                with resp:
                    decoder = SSEDecoder()
                    for raw in resp:
                        event = decoder.feed(raw.decode("utf-8"))
                        if event is None:
                            continue
                        last, failures = event.id or last, 0
                        yield event
                        if isinstance(event, WorkflowFinished):
                            return
                return  # ended before this stream began, and everything was replayed
            except LOST as exc:
                delay = self.retry.delay(failures)
                if delay is None:
                    raise transport.unreachable(self._request("GET", f"/v1/workflows/{workflow_id}/events"),
                                                exc, failures + 1) from exc
                failures += 1
                time.sleep(delay)

    def wait(self, workflow_id: str) -> WorkflowState:
        """Block until the workflow ends; its final state."""
        for _ in self.events(workflow_id):
            pass
        return self.get(workflow_id)

    def run(self, workflow, *, tools: Mapping[str, Callable] | None = None, inputs: Mapping[str, Any] | None = None,
            on_event: Callable[[Event], None] | None = None, raise_on_failure: bool = False) -> WorkflowState:
        """Submit, follow the events, call each external node's Python callable and post what it returns;
        the final state. A callable that raises cancels the workflow and raises ToolFailed."""
        payload, callables = prepare(workflow, tools, inputs)
        wf_id = self.submit(payload)
        runner = ToolRunner(wf_id, callables, payload.get("inputs", {}), upstream_of(payload))
        for event in self.events(wf_id):
            if on_event is not None:
                on_event(event)
            for call in runner.on_event(event):  # one at a time: AsyncClient runs them concurrently
                fn = runner.tools[call.node]
                try:
                    args, kwargs = bind(fn, call)
                    value = fn(*args, **kwargs)
                    if inspect.isawaitable(value):
                        value = asyncio.run(_await(value))
                except Exception as exc:  # the user's code: cancel the workflow, surface their error
                    self._cancel_quietly(wf_id)
                    raise ToolFailed(f"tool for node '{call.node}' raised {exc!r}", node=call.node,
                                     workflow_id=wf_id) from exc
                self.post_result(wf_id, call.node, result_payload(value))
        state = self.get(wf_id)
        if raise_on_failure and state.status != "finished":
            raise WorkflowFailed(f"workflow {wf_id} ended {state.status}: {state.error}", state=state)
        return state

    def _cancel_quietly(self, wf_id: str) -> None:
        try:
            self.cancel(wf_id)
        except AgentGateError:
            pass  # already ended: nothing left to stop

    # -- single calls ------------------------------------------------------------------------------
    def chat(self, messages: list[dict] | str, *, model: str | None = None,
             agent_hints: Mapping[str, Any] | None = None, **sampling) -> ChatResult:
        """POST /v1/chat/completions, not streamed (chat_stream streams). `agent_hints` {workflow_id,
        template, node_id, ...} tell the gateway where this call sits in an agent's graph."""
        return ChatResult.from_json(self._call("POST", "/v1/chat/completions",
                                               json=chat_payload(messages, model, agent_hints, sampling)))

    def chat_stream(self, messages: list[dict] | str, *, model: str | None = None,
                    agent_hints: Mapping[str, Any] | None = None, **sampling) -> Iterator[ChatChunk]:
        """POST /v1/chat/completions with stream=True: its chunks as they arrive (the last one carries
        `usage`). Leaving the loop early closes the connection, which aborts the call on the worker.

            for chunk in gw.chat_stream("Hi", agent_hints={"workflow_id": "w1", "node_id": "greet"}):
                print(chunk.text, end="", flush=True)
        """
        req = self._request("POST", "/v1/chat/completions",
                            json=chat_payload(messages, model, agent_hints, sampling, stream=True),
                            headers={"Accept": "text/event-stream"})
        with self._open(req) as resp:
            for line in resp:
                data = transport.stream_data(line)
                if data == transport.DONE:
                    return
                if data is not None:
                    yield ChatChunk.from_json(data)

    def register_template(self, name: str, nodes: list, edges: list) -> dict:
        """POST /v1/templates: a graph by name, for calls tagged with agent_hints.template."""
        return self._call("POST", "/v1/templates", json={"name": name, "nodes": nodes, "edges": edges})

    def template(self, name: str) -> dict:
        return self._call("GET", f"/v1/templates/{name}")

    def health(self) -> dict:
        """GET /health. A gateway without healthy workers answers 503: raised as Unavailable after retries."""
        return self._call("GET", "/health")

    # -- HTTP ----------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs) -> transport.HttpRequest:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return transport.request(self.base_url, method, path, headers=headers, **kwargs)

    def _call(self, method: str, path: str, **kwargs) -> Any:
        req = self._request(method, path, **kwargs)
        return self._send(req, _read)

    def _open(self, req: transport.HttpRequest):
        return self._send(req, lambda resp: resp)

    def _send(self, req: transport.HttpRequest, use: Callable):
        """Open `req` and apply `use` to the 2xx response, retrying what transport says is safe."""
        attempt = 0
        while True:
            wait, error = None, None
            try:
                resp = self._opener.open(urllib.request.Request(req.url, data=req.body, headers=req.headers,
                                                                method=req.method), timeout=self.timeout)
                return use(resp)
            except urllib.error.HTTPError as exc:
                with exc:
                    status, raw, headers = exc.code, exc.read(), exc.headers
                if not transport.retryable_status(status):
                    transport.decode(status, raw, headers)  # raises its typed error
                wait = self.retry.delay(attempt, retry_after=transport.retry_after(headers.get("Retry-After")))
                if wait is None:
                    transport.decode(status, raw, headers)
            except urllib.error.URLError as exc:  # could not connect or send: never acted on
                wait, error = self.retry.delay(attempt), exc
            except LOST as exc:  # lost after sending: only a GET may be repeated
                wait, error = (self.retry.delay(attempt) if req.idempotent else None), exc
            if wait is None:
                raise transport.unreachable(req, error, attempt + 1) from error
            attempt += 1
            time.sleep(wait)


def _read(resp) -> Any:
    with resp:
        return transport.decode(resp.status, resp.read(), resp.headers)


def chat_payload(messages, model, agent_hints, sampling, *, stream: bool = False) -> dict:
    """The /v1/chat/completions body. Streamed calls ask for usage in the last chunk unless the caller
    set stream_options."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    body: dict[str, Any] = {"messages": list(messages), **sampling, "stream": stream}
    if stream:
        body.setdefault("stream_options", {"include_usage": True})
    if model is not None:
        body["model"] = model
    if agent_hints:
        body["agent_hints"] = {k: v for k, v in agent_hints.items() if v is not None}
    return body


async def _await(awaitable):
    return await awaitable
