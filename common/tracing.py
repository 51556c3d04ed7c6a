"""OpenTelemetry tracing, optional (the `otel` extra) and off unless the standard OTEL_* variables ask.

`configure_from_env()` installs a TracerProvider when OTEL_TRACES_EXPORTER names an exporter
(console, otlp) or an OTLP endpoint is set (OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT), unless
OTEL_SDK_DISABLED=true; the service name and resource come from OTEL_SERVICE_NAME and
OTEL_RESOURCE_ATTRIBUTES as the SDK reads them. Without the packages, or with no provider set,
every helper here is a no-op. A provider a program (or a test) set itself is used as it is.

Context crosses processes as W3C `traceparent` headers: the gateway injects them into its calls to
workers (outgoing_headers), the worker's middleware continues the trace in a server span.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from aiohttp import web

from common.cliargs import fail
from common.logconf import (
    REQUEST_ID,
    REQUEST_ID_HEADER,
    install_request_ids,
    setup_logging,
)

try:
    from opentelemetry import propagate, trace
except ImportError:  # the `otel` extra is not installed: no tracing
    trace = propagate = None

TRACER_NAME = "agentgate"


def configure_from_env(service_name: str) -> bool:
    """Install the SDK's TracerProvider as the OTEL_* variables say; True when tracing is on."""
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not exporter and (env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        exporter = "otlp"
    if exporter in ("", "none"):
        return False
    if trace is None:
        raise RuntimeError("OTEL_TRACES_EXPORTER is set but OpenTelemetry is not installed "
                           "(pip install 'agentgate[otel]')")
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attrs = {} if env.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service_name}
    provider = TracerProvider(resource=Resource.create(attrs))
    for name in exporter.split(","):
        provider.add_span_processor(BatchSpanProcessor(_exporter(name.strip())))
    trace.set_tracer_provider(provider)
    return True


def configure_process(log_level: str, log_format: str, prog: str, service: str) -> int | None:
    """A server process's logging (its flags) and tracing (OTEL_*); an exit status if tracing cannot start."""
    setup_logging(log_level, log_format)
    try:
        configure_from_env(service)
    except RuntimeError as exc:
        return fail(prog, str(exc))
    return None


def _exporter(name: str):
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter,
            )
        except ImportError:
            raise RuntimeError("OTEL_TRACES_EXPORTER=otlp needs opentelemetry-exporter-otlp-proto-http") from None
        return OTLPSpanExporter()
    raise RuntimeError(f"OTEL_TRACES_EXPORTER={name!r} is not supported here (console, otlp or none)")


def tracer():
    return trace.get_tracer(TRACER_NAME) if trace is not None else None


def start_span(name: str, parent=None, **attributes):
    """A span to end by hand (a workflow's), child of `parent` (a span) or of the current one; None off."""
    t = tracer()
    if t is None:
        return None
    ctx = trace.set_span_in_context(parent) if parent is not None else None
    return t.start_span(name, context=ctx, attributes=_clean(attributes))


@contextmanager
def span(name: str, parent=None, kind: str = "internal", **attributes) -> Iterator[object]:
    """The current span for the block, child of `parent` (a span) or of the current one."""
    t = tracer()
    if t is None:
        yield None
        return
    ctx = trace.set_span_in_context(parent) if parent is not None else None
    with t.start_as_current_span(name, context=ctx, kind=getattr(trace.SpanKind, kind.upper()),
                                 attributes=_clean(attributes)) as current:
        yield current


def end_span(s, **attributes) -> None:
    if s is not None:
        s.set_attributes(_clean(attributes))
        s.end()


def _clean(attributes: dict) -> dict:
    return {k: v for k, v in attributes.items() if v is not None}


def outgoing_headers() -> dict[str, str]:
    """Headers a call to a worker carries: the trace context (traceparent) and the request id."""
    headers: dict[str, str] = {}
    if propagate is not None:
        propagate.inject(headers)
    rid = REQUEST_ID.get()
    if rid:
        headers[REQUEST_ID_HEADER] = rid
    return headers


UNTRACED = ("/health", "/metrics", "/get_load", "/ui/static")  # probes and scrapes: no spans


def server_span_middleware(component: str):
    """A middleware continuing the caller's trace (its traceparent) in a server span around the handler."""

    @web.middleware
    async def middleware(request: web.Request, handler):
        t = tracer()
        if t is None or request.path.startswith(UNTRACED):
            return await handler(request)
        attributes = {"http.request.method": request.method, "url.path": request.path,
                      "agentgate.component": component, "agentgate.request_id": REQUEST_ID.get()}
        with t.start_as_current_span(f"{request.method} {request.path}", context=propagate.extract(request.headers),
                                     kind=trace.SpanKind.SERVER, attributes=_clean(attributes)) as s:
            resp = await handler(request)
            s.set_attribute("http.response.status_code", resp.status)
            return resp

    return middleware


def observe_requests(app: web.Application, component: str) -> None:
    """Request ids on every answer, then a server span (continuing the caller's trace) around each call."""
    install_request_ids(app)
    app.middlewares.insert(1, server_span_middleware(component))
