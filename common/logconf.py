"""Logging and HTTP request ids, shared by `agentgate worker` and `agentgate gateway`.

--log-format json writes one JSON object per line carrying the request id (X-Request-Id, taken from
the request or made up) and the workflow id of the code that logged it; --access-log adds one line
per HTTP request. Both ids live in context variables: a request's handler task and every task it
starts see its request id; the gateway sets the workflow id in each workflow's tasks.
"""

from __future__ import annotations

import argparse
import contextvars
import json
import logging
import re
import sys
import uuid

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("agentgate_request_id", default=None)
WORKFLOW_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("agentgate_workflow_id", default=None)
REQUEST_ID_HEADER = "X-Request-Id"
LEVELS = ("debug", "info", "warning", "error", "critical")
TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
_GOOD_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")  # a client's id is echoed and logged: printable, bounded
REQUEST_ID_KEY = web.RequestKey("agentgate_request_id", str)


def add_logging_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", type=str.lower, default="info", choices=LEVELS, help="least severe level logged")
    p.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="json: one JSON object per line, with request_id and workflow_id where known")
    p.add_argument("--access-log", action="store_true",
                   help="log one line per HTTP request: method, path, status, seconds, request id")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"time": round(record.created, 6), "level": record.levelname.lower(), "logger": record.name,
               "message": record.getMessage()}
        for key, var in (("request_id", REQUEST_ID), ("workflow_id", WORKFLOW_ID)):
            value = getattr(record, key, None) or var.get()
            if value:
                out[key] = value
        for key in ("method", "path", "status", "seconds"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


class AccessLogger(AbstractAccessLogger):
    """aiohttp's access log as one record per request, the request id and timing as fields."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        rid = response.headers.get(REQUEST_ID_HEADER, "-")
        self.logger.info("%s %s %d %.4fs %s", request.method, request.path_qs, response.status, time, rid,
                         extra={"request_id": rid, "method": request.method, "path": request.path_qs,
                                "status": response.status, "seconds": round(time, 6)})


def access_log_options(enabled: bool) -> dict:
    """web.run_app's keyword arguments for --access-log."""
    return {"access_log": logging.getLogger("agentgate.access") if enabled else None,
            "access_log_class": AccessLogger}


def request_id_of(request: web.BaseRequest) -> str:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    return given if _GOOD_ID.fullmatch(given) else uuid.uuid4().hex


@web.middleware
async def request_id_middleware(request: web.Request, handler):
    """Takes the client's X-Request-Id (or makes one), puts it in the logging context and the answer."""
    rid = request_id_of(request)
    request[REQUEST_ID_KEY] = rid
    token = REQUEST_ID.set(rid)
    try:
        return await handler(request)
    finally:
        REQUEST_ID.reset(token)


async def _echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    rid = request.get(REQUEST_ID_KEY)
    if rid is not None and REQUEST_ID_HEADER not in response.headers:
        response.headers[REQUEST_ID_HEADER] = rid


def install_request_ids(app: web.Application) -> None:
    """X-Request-Id on every answer of `app`, streamed ones included (set as their headers go out)."""
    app.middlewares.insert(0, request_id_middleware)
    app.on_response_prepare.append(_echo_request_id)
