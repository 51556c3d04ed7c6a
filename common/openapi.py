"""The published contract of an aiohttp app: /openapi.json, built from the app's own routes and the
pydantic models its handlers validate bodies with.

Each service names, per (method, path), an `Op`: what it does, the model of its JSON body, its query
parameters and what it answers. Every route the app serves appears in the document, so a route added
without an `Op` is still listed (with no body schema) rather than missing; `undocumented()` names those
for the tests. Errors are documented once, as the OpenAI error shape every error leaves in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

REF = "#/components/schemas/{model}"
ERROR_SCHEMA = {
    "type": "object", "required": ["error"],
    "properties": {"error": {
        "type": "object", "required": ["message", "type", "code"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]}, "code": {"type": ["integer", "string", "null"]}}}},
}
_JSON = "application/json"
_SSE = "text/event-stream"
_TEXT = "text/plain"


@dataclass(frozen=True)
class Op:
    """One operation: `body` is the pydantic model of its JSON body (None: it takes none); `query` maps a
    query parameter to its JSON schema; `answers` maps a success status to its media types; `errors` lists
    the error statuses it documents (the OpenAI error shape)."""
    summary: str
    body: type[BaseModel] | None = None
    query: dict[str, dict] = field(default_factory=dict)
    answers: dict[int, tuple[str, ...]] = field(default_factory=lambda: {200: (_JSON,)})
    errors: tuple[int, ...] = ()
    headers: dict[str, dict] = field(default_factory=dict)


def json_op(summary: str, body: type[BaseModel] | None = None, *, status: int = 200, stream: bool = False,
            errors: tuple[int, ...] = (), query: dict[str, dict] | None = None,
            headers: dict[str, dict] | None = None) -> Op:
    """An operation answering JSON (and SSE too when `stream`)."""
    return Op(summary, body, query or {}, {status: (_JSON, _SSE) if stream else (_JSON,)}, errors, headers or {})


def sse_op(summary: str, *, errors: tuple[int, ...] = (), query: dict[str, dict] | None = None,
           headers: dict[str, dict] | None = None) -> Op:
    return Op(summary, None, query or {}, {200: (_SSE,)}, errors, headers or {})


def text_op(summary: str, *, status: int = 200, errors: tuple[int, ...] = ()) -> Op:
    return Op(summary, None, {}, {status: (_TEXT,)}, errors)


def routes_of(app: web.Application) -> list[tuple[str, str]]:
    """(METHOD, path) of every route the app serves; a '*' route counts as GET and POST, HEAD is left out."""
    out = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if path is None or route.method == "HEAD":
            continue
        for method in (("GET", "POST") if route.method == "*" else (route.method,)):
            if (method, path) not in out:
                out.append((method, path))
    return out


def undocumented(app: web.Application, ops: dict[tuple[str, str], Op]) -> list[tuple[str, str]]:
    return [key for key in routes_of(app) if key not in ops]


def build(app: web.Application, title: str, version: str, ops: dict[tuple[str, str], Op]) -> dict[str, Any]:
    models = sorted({op.body for op in ops.values() if op.body is not None}, key=lambda m: m.__name__)
    refs, defs = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    schemas = dict(defs.get("$defs", {}))
    schemas["Error"] = ERROR_SCHEMA
    paths: dict[str, dict] = {}
    for method, path in routes_of(app):
        op = ops.get((method, path)) or Op(f"{method} {path}")
        paths.setdefault(path, {})[method.lower()] = _operation(method, path, op, refs)
    return {"openapi": "3.1.0", "info": {"title": title, "version": version},
            "paths": paths, "components": {"schemas": schemas}}


def _operation(method: str, path: str, op: Op, refs: dict) -> dict:
    params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
              for name in _path_params(path)]
    params += [{"name": name, "in": "query", "required": False, "schema": schema} for name, schema in op.query.items()]
    params += [{"name": name, "in": "header", "required": False, "schema": schema}
               for name, schema in op.headers.items()]
    out: dict[str, Any] = {"summary": op.summary,
                           "operationId": f"{method.lower()}_{path.strip('/').replace('/', '_') or 'root'}"
                           .replace("{", "").replace("}", "").replace(".", "_").replace("-", "_")}
    if params:
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {"required": True,
                              "content": {_JSON: {"schema": refs[(op.body, "validation")]}}}
    responses: dict[str, Any] = {}
    for status, media in op.answers.items():
        responses[str(status)] = {"description": "OK", "content": {m: {} for m in media}}
    for status in sorted(set(op.errors)):
        responses[str(status)] = {"description": "error (OpenAI shape)",
                                  "content": {_JSON: {"schema": {"$ref": REF.format(model="Error")}}}}
    out["responses"] = responses
    return out


def _path_params(path: str) -> list[str]:
    return [part[1:-1].split(":")[0] for part in path.split("/") if part.startswith("{") and part.endswith("}")]


def serve(app: web.Application, title: str, version: str, ops: dict[tuple[str, str], Op]) -> None:
    """Add GET /openapi.json (built once, on first request: after every route is in place)."""
    cached: dict[str, dict] = {}

    async def openapi(request: web.Request) -> web.Response:
        if "doc" not in cached:
            cached["doc"] = build(request.app, title, version, ops)
        return web.json_response(cached["doc"])

    app.router.add_get("/openapi.json", openapi)
