"""The gateway's published contract: GET /openapi.json, from the pydantic models its handlers validate with
(api/schemas.py for workflows and templates, api/forwarded.py for the calls it forwards)."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel

from common.openapi import Op, json_op, serve, sse_op, text_op
from common.workflow.sampling import ChatCall, CompletionCall, GenerateCall
from common.workflow.schemas import NodeResultIn, TemplateIn, WorkflowIn

VERSION = "0.1.0"


class WorkerIn(BaseModel):
    """POST /admin/workers (api/admin.py reads `url`: an http(s) base URL)."""
    url: str
_PAGE = {"offset": {"type": "integer", "minimum": 0}, "limit": {"type": "integer", "minimum": 1, "maximum": 200}}
_CALL_ERRORS = (400, 413, 503)  # 503: no worker could serve it (Retry-After)
_STATE_ERRORS = (503,)  # the state store (Redis) did not answer (Retry-After)

OPS: dict[tuple[str, str], Op] = {
    ("POST", "/v1/workflows"): json_op("Submit a workflow (a DAG of LLM and external nodes)", WorkflowIn,
                                       status=202, errors=(400, 413, 422, 503)),
    ("GET", "/v1/workflows"): json_op("List workflows, newest first", query=_PAGE, errors=(400, 503)),
    ("GET", "/v1/workflows/{id}"): json_op("A workflow's state, nodes, outputs and cache use",
                                           errors=(404, 503)),
    ("DELETE", "/v1/workflows/{id}"): json_op("Cancel a workflow (202: its replica has not confirmed yet)",
                                              errors=(404, 503)),
    ("GET", "/v1/workflows/{id}/events"): sse_op(
        "A workflow's events as SSE, resumable", query={"after": {"type": "string"}},
        headers={"Last-Event-ID": {"type": "string"}}, errors=(404, 503)),
    ("POST", "/v1/workflows/{id}/nodes/{node}/result"): json_op(
        "Post an external node's result", NodeResultIn, errors=(400, 404, 409, 413, 422, 503)),
    ("POST", "/v1/templates"): json_op("Register a workflow graph by name (LangGraph's JSON accepted)",
                                       TemplateIn, status=201, errors=(400, 413, 422) + _STATE_ERRORS),
    ("GET", "/v1/templates"): json_op("Template names", errors=_STATE_ERRORS),
    ("GET", "/v1/templates/{name}"): json_op("A template with its learned transitions and predictions",
                                             errors=(404,) + _STATE_ERRORS),
    ("POST", "/v1/chat/completions"): json_op("OpenAI chat completion, routed to a worker", ChatCall,
                                              stream=True, errors=_CALL_ERRORS),
    ("POST", "/v1/completions"): json_op("OpenAI completion, routed to a worker", CompletionCall,
                                         stream=True, errors=_CALL_ERRORS),
    ("POST", "/generate"): json_op("SGLang /generate, routed to a worker", GenerateCall, stream=True,
                                   errors=_CALL_ERRORS),
    ("GET", "/v1/models"): json_op("Models the healthy workers serve", errors=(503,)),
    ("GET", "/health"): json_op("Redis and worker health (503: degraded)", errors=(503,)),
    ("GET", "/health/live"): json_op("Liveness: the process serves requests"),
    ("GET", "/health/ready"): json_op("Readiness: Redis answers and a worker is healthy", errors=(503,)),
    ("GET", "/metrics"): text_op("Prometheus metrics"),
    ("GET", "/openapi.json"): json_op("This document"),
    # admin (an admin-scoped key when keys are configured)
    ("GET", "/admin/workers"): json_op("Every worker with its health, breaker and load", errors=(401, 403)),
    ("POST", "/admin/workers"): json_op("Register a worker (every replica finds it) and probe it", WorkerIn,
                                        status=201, errors=(400, 401, 403, 503)),
    ("DELETE", "/admin/workers"): json_op("Remove a worker", query={"url": {"type": "string"}},
                                          errors=(400, 401, 403, 404, 503)),
    ("POST", "/admin/flush_cache"): json_op("Flush every worker's prefix cache", errors=(401, 403)),
    # the console (gateway/console)
    ("GET", "/ui"): Op("The console page", answers={200: ("text/html",)}),
    ("GET", "/ui/"): Op("The console page", answers={200: ("text/html",)}),
    ("GET", "/ui/api/overview"): json_op("The console's view: workers, running workflows, awareness"),
}


def add_routes(app: web.Application) -> None:
    serve(app, "agentgate gateway", VERSION, OPS)
