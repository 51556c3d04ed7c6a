"""LangGraph on agentgate (optional extra `[langgraph]`): register a graph, tag its LLM calls.

    llm = chat_model(url, template="support-agent")            # instead of ChatOpenAI(base_url=url + "/v1")
    register_graph(Client(url), graph, "support-agent")        # once, after compiling the graph

`chat_model` returns a plain `ChatOpenAI`, so everything built on it works
unchanged: `bind_tools`, `with_structured_output`, LangGraph's prebuilt
`create_react_agent` and `ToolNode`, LangChain's `create_agent`. Only its HTTP
client differs: every request it sends carries `x-agent-*` headers
{template, node_id: the LangGraph node running it, workflow_id: the run's id},
read from `langgraph.config.get_config()` when the request leaves, so the
gateway learns the graph's transitions and can predict and prefetch the next
call. The run's id is `configurable.agentgate_workflow_id` when given (see
`run_config()`), else the LangGraph `thread_id`. Only public APIs are used: the
OpenAI client's `DefaultHttpxClient` event hooks, `get_config`, `get_graph()`.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import openai
from langchain_openai import ChatOpenAI
from langgraph.config import get_config

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
    """agent_hints for a call made now: the LangGraph node and run from the active runnable config
    (just the template outside a graph)."""
    try:
        config = get_config()
    except RuntimeError:  # not inside a runnable: a plain call
        config = {}
    metadata = config.get("metadata") or {}
    configurable = config.get("configurable") or {}
    hints = {"template": template, "node_id": metadata.get("langgraph_node"),
             "workflow_id": configurable.get(WORKFLOW_ID_KEY) or configurable.get("thread_id")
             or metadata.get("thread_id")}
    return {k: v for k, v in hints.items() if v is not None}


def hint_headers(template: str) -> dict[str, str]:
    """current_hints as the gateway's x-agent-* headers."""
    return {"x-agent-" + k.replace("_", "-"): str(v) for k, v in current_hints(template).items()}


def chat_model(gateway_url: str | None = None, *, template: str, model: str = "default", api_key: str | None = None,
               **kwargs) -> ChatOpenAI:
    """A ChatOpenAI on the gateway's /v1 whose requests are tagged for `template` (headers set per request).
    `api_key`: the gateway key (default: $AGENTGATE_API_KEY; a gateway without keys takes any)."""
    def tag(request) -> None:
        request.headers.update(hint_headers(template))

    async def tag_async(request) -> None:
        tag(request)

    # sent as the Bearer key; a gateway without keys ignores it (the OpenAI client wants one)
    kwargs.setdefault("api_key", api_key or os.environ.get(transport.API_KEY_ENV) or "agentgate")
    kwargs.setdefault("http_client", openai.DefaultHttpxClient(event_hooks={"request": [tag]}))
    kwargs.setdefault("http_async_client", openai.DefaultAsyncHttpxClient(event_hooks={"request": [tag_async]}))
    return ChatOpenAI(base_url=transport.base_url(gateway_url) + "/v1", model=model, **kwargs)
