"""LangGraph on agentgate (optional extra `[langgraph]`): register a graph, tag its LLM calls.

    register_graph(Client(url), graph, "support-agent")        # once: nodes + edges → POST /v1/templates
    llm = chat_model(url, template="support-agent")            # the one line a LangGraph user changes

Every call `llm` makes inside a graph node carries agent_hints
{template, node_id: the LangGraph node running it, workflow_id: the run's id},
so the gateway learns the graph's transitions and can predict and prefetch the
next call. The run's id is `configurable.agentgate_workflow_id` when given (see
`run_config()`), else the LangGraph `thread_id`.
"""

from __future__ import annotations

import uuid
from typing import Any

from langchain_core.runnables.config import var_child_runnable_config
from langchain_openai import ChatOpenAI

from agentgate import transport

WORKFLOW_ID_KEY = "agentgate_workflow_id"


def graph_template(graph, name: str) -> dict:
    """The POST /v1/templates body for a compiled graph (or anything with get_graph()), conditional
    edges marked; LangGraph's __start__/__end__ nodes are kept, as the gateway accepts them."""
    g = graph.get_graph() if hasattr(graph, "get_graph") else graph
    nodes = list(g.nodes)
    edges = [{"source": e.source, "target": e.target, "conditional": bool(e.conditional)} for e in g.edges]
    return {"name": name, "nodes": nodes, "edges": edges}


def register_graph(client, graph, name: str):
    """Register `graph` under `name` with a Client (returns the answer) or an AsyncClient (a coroutine)."""
    body = graph_template(graph, name)
    return client.register_template(body["name"], body["nodes"], body["edges"])


def run_config(workflow_id: str | None = None, **configurable: Any) -> dict:
    """A RunnableConfig giving one graph run its own workflow id: graph.invoke(state, run_config())."""
    return {"configurable": {WORKFLOW_ID_KEY: workflow_id or "lg-" + uuid.uuid4().hex[:16], **configurable}}


def current_hints(template: str) -> dict:
    """agent_hints for a call made now: the LangGraph node and run from the active runnable config."""
    config = var_child_runnable_config.get() or {}
    metadata = config.get("metadata") or {}
    configurable = config.get("configurable") or {}
    hints = {"template": template, "node_id": metadata.get("langgraph_node"),
             "workflow_id": configurable.get(WORKFLOW_ID_KEY) or configurable.get("thread_id")
             or metadata.get("thread_id")}
    return {k: v for k, v in hints.items() if v is not None}


class GatewayChatOpenAI(ChatOpenAI):
    """ChatOpenAI whose every request carries agent_hints for `agentgate_template`."""

    agentgate_template: str

    def _get_request_payload(self, input_, *, stop=None, **kwargs) -> dict:
        payload = super()._get_request_payload(input_, stop=stop, **kwargs)
        extra = dict(payload.get("extra_body") or {})
        extra["agent_hints"] = {**current_hints(self.agentgate_template), **(extra.get("agent_hints") or {})}
        payload["extra_body"] = extra
        # Plain chat-completions workers take max_tokens; newer OpenAI models' max_completion_tokens is not theirs.
        if "max_completion_tokens" in payload and "max_tokens" not in payload:
            payload["max_tokens"] = payload.pop("max_completion_tokens")
        return payload


def chat_model(gateway_url: str | None = None, *, template: str, model: str = "default", **kwargs) -> ChatOpenAI:
    """A LangChain chat model that talks to the gateway's /v1/chat/completions and tags its calls."""
    kwargs.setdefault("api_key", "agentgate")  # the gateway does not check it; the OpenAI client wants one
    return GatewayChatOpenAI(base_url=transport.base_url(gateway_url) + "/v1", model=model,
                             agentgate_template=template, **kwargs)
