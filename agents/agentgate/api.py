"""The gateway's API as both clients call it: each plain endpoint is written once here.

A method builds its request and names what turns the answer into a result (`then`); the client's
`_call` sends it. `Client._call` returns the result, `AsyncClient._call` is a coroutine, so the same
method is a blocking call on one and an awaitable on the other (`await gw.get(wf_id)`). What differs
by nature (event streams, streamed chat, running tools) stays in each client.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

from agentgate import transport
from agentgate.state import ChatResult, WorkflowPage, WorkflowState


class GatewayApi(ABC):
    base_url: str
    headers: dict[str, str]

    @abstractmethod
    def _call(self, method: str, path: str, *, then: Callable[[Any], Any] | None = None, **kwargs) -> Any:
        """Send the request; `then(json)` of the answer (the JSON itself without `then`): the value itself
        (Client) or a coroutine (AsyncClient)."""

    # -- workflows ---------------------------------------------------------------------------------
    def submit(self, workflow, *, inputs: Mapping[str, Any] | None = None):
        """POST /v1/workflows; a Workflow is validated locally first. Returns the workflow id."""
        payload = workflow.to_dict() if hasattr(workflow, "to_dict") else dict(workflow)
        if inputs:
            payload["inputs"] = {**payload.get("inputs", {}), **inputs}
        return self._call("POST", "/v1/workflows", json=payload, then=lambda body: body["id"])

    def get(self, workflow_id: str):
        """GET /v1/workflows/{id}: a WorkflowState."""
        return self._call("GET", f"/v1/workflows/{workflow_id}", then=WorkflowState.from_json)

    def list(self, *, offset: int = 0, limit: int = 20):
        """GET /v1/workflows: a WorkflowPage, newest first."""
        return self._call("GET", "/v1/workflows", query={"offset": offset, "limit": limit},
                          then=WorkflowPage.from_json)

    def cancel(self, workflow_id: str):
        """DELETE /v1/workflows/{id}: the status it ended with."""
        return self._call("DELETE", f"/v1/workflows/{workflow_id}", then=lambda body: body["status"])

    def post_result(self, workflow_id: str, node: str, output: Any):
        """POST an external node's result."""
        return self._call("POST", f"/v1/workflows/{workflow_id}/nodes/{node}/result", json={"output": output})

    # -- single calls ------------------------------------------------------------------------------
    def chat(self, messages: list[dict] | str, *, model: str | None = None,
             agent_hints: Mapping[str, Any] | None = None, **sampling):
        """POST /v1/chat/completions, not streamed (chat_stream streams): a ChatResult. `agent_hints`
        {workflow_id, template, node_id, ...} tell the gateway where this call sits in an agent's graph."""
        return self._call("POST", "/v1/chat/completions", json=chat_payload(messages, model, agent_hints, sampling),
                          then=ChatResult.from_json)

    def register_template(self, name: str, nodes: list, edges: list):
        """POST /v1/templates: a graph by name, for calls tagged with agent_hints.template."""
        return self._call("POST", "/v1/templates", json={"name": name, "nodes": nodes, "edges": edges})

    def template(self, name: str):
        return self._call("GET", f"/v1/templates/{name}")

    def health(self):
        """GET /health. A gateway without healthy workers answers 503: raised as Unavailable after retries."""
        return self._call("GET", "/health")

    def _request(self, method: str, path: str, **kwargs) -> transport.HttpRequest:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return transport.request(self.base_url, method, path, headers=headers, **kwargs)


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
