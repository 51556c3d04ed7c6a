"""The worker's published contract: GET /openapi.json, from the pydantic models its handlers validate
with (protocol.py). /kv/snapshot (kv_publish.py) is added later and listed all the same."""

from __future__ import annotations

from aiohttp import web

from common.openapi import Op, json_op, serve, text_op
from engine.worker.protocol import (
    AbortRequest,
    ChatCompletionRequest,
    CompletionRequest,
    GenerateRequest,
    PinRequest,
    PrefetchRequest,
    UnpinRequest,
)

VERSION = "0.1.0"

OPS: dict[tuple[str, str], Op] = {
    ("GET", "/health"): Op("200 while the engine runs, else 503", answers={200: ()}, errors=(503,)),
    ("GET", "/ping"): Op("As /health", answers={200: ()}, errors=(503,)),
    ("GET", "/health_generate"): Op("A one-token generation end to end", answers={200: ()}, errors=(503,)),
    ("GET", "/health/live"): json_op("Liveness: the process serves requests"),
    ("GET", "/health/ready"): json_op("Readiness: the engine runs (503 with the reason if not)", errors=(503,)),
    ("GET", "/get_server_info"): json_op("Flags and engine state (SGLang's shape)"),
    ("GET", "/server_info"): json_op("As /get_server_info"),
    ("GET", "/get_model_info"): json_op("The served model"),
    ("GET", "/model_info"): json_op("As /get_model_info"),
    ("GET", "/get_load"): json_op("Running and waiting requests, token usage"),
    ("POST", "/generate"): json_op("SGLang's native generation", GenerateRequest, stream=True, errors=(400,)),
    ("PUT", "/generate"): json_op("As POST /generate", GenerateRequest, stream=True, errors=(400,)),
    ("GET", "/flush_cache"): Op("Drop the prefix cache (400 while requests run)", answers={200: ("text/plain",)},
                                errors=(400,)),
    ("POST", "/flush_cache"): Op("As GET /flush_cache", answers={200: ("text/plain",)}, errors=(400,)),
    ("POST", "/abort_request"): Op("Abort requests by rid prefix, or all", AbortRequest, answers={200: ()},
                                   errors=(400,)),
    ("GET", "/metrics"): text_op("Prometheus metrics"),
    ("GET", "/kv/stats"): json_op("KV tiers' contents and counters"),
    ("POST", "/kv/prefetch"): json_op("Make a prefix resident in L1, optionally pinned", PrefetchRequest,
                                      errors=(400,)),
    ("POST", "/kv/pin"): json_op("Pin a resident prefix", PinRequest, errors=(400, 404)),
    ("POST", "/kv/unpin"): json_op("Drop a pin by id or prefix", UnpinRequest, errors=(400, 404)),
    ("GET", "/kv/snapshot"): json_op("The KV blocks this worker holds, for a gateway's index"),
    ("GET", "/v1/models"): json_op("The served model"),
    ("GET", "/v1/models/{model}"): json_op("One model card", errors=(404,)),
    ("POST", "/v1/completions"): json_op("OpenAI completion", CompletionRequest, stream=True, errors=(400,)),
    ("POST", "/v1/chat/completions"): json_op("OpenAI chat completion", ChatCompletionRequest, stream=True,
                                              errors=(400,)),
    ("GET", "/openapi.json"): json_op("This document"),
}


def add_routes(app: web.Application) -> None:
    serve(app, "agentgate worker", VERSION, OPS)
