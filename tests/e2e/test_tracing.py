"""OpenTelemetry: a 4-node workflow is one trace, exported to an in-memory exporter, with a span per
node and per worker call, and the worker (its app over real HTTP, the real model) continuing the
trace from the traceparent header the gateway sent."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import pytest_asyncio
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from common import tracing
from engine.config import EngineConfig
from engine.runtime.engine import Engine
from engine.worker.server import create_app
from tests.gateway.support import GatewayHandle, fast_config, llm
from tests.support import ENGINE_DEFAULTS, free_port

pytestmark = [pytest.mark.slow]

NODES = ("topic", "color", "taste", "summary")


@pytest.fixture
def exporter(monkeypatch):
    """Spans of this test only: a provider of its own behind common.tracing (no global provider set)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    monkeypatch.setattr(tracing, "tracer", lambda: provider.get_tracer(tracing.TRACER_NAME))
    yield memory
    provider.shutdown()


@pytest_asyncio.fixture
async def worker_app(model_dir):
    """The worker's app in this process (so its spans reach the same exporter), served over HTTP."""
    engine = Engine(EngineConfig(model_path=str(model_dir), **ENGINE_DEFAULTS))
    app = create_app(engine, {"model_path": str(model_dir), "served_model_name": engine.cfg.served_model_name,
                              "page_size": engine.cfg.block_size})
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()  # starts the engine; cleanup stops it
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def _finished_spans(exporter, wanted, timeout: float = 30.0):
    """The exported spans once `wanted(spans)` holds (the last spans end just after the status is saved)."""
    deadline = time.monotonic() + timeout
    while True:
        spans = exporter.get_finished_spans()
        if wanted(spans):
            return spans
        assert time.monotonic() < deadline, [s.name for s in spans]
        await asyncio.sleep(0.05)


@pytest.mark.asyncio
async def test_a_four_node_workflow_is_one_trace_across_gateway_and_worker(exporter, worker_app, redis_url):
    gw = await GatewayHandle(fast_config(redis_url, [worker_app], key_prefix="tr" + uuid.uuid4().hex[:6],
                                         request_timeout_s=120)).start()
    try:
        wf = await gw.submit({"nodes": [
            llm("topic", "Name one fruit.", max_tokens=4, temperature=0),
            llm("color", "What color is {{topic}}?", max_tokens=4, temperature=0),
            llm("taste", "How does {{topic}} taste?", max_tokens=4, temperature=0),
            llm("summary", "Combine: {{color}} / {{taste}}", max_tokens=4, temperature=0)]})
        body = await gw.wait(wf, timeout=150)
        assert body["status"] == "finished", body

        def complete(spans) -> bool:
            names = [s.name for s in spans]
            return "workflow" in names and all(f"node {n}" in names for n in NODES) and \
                sum(s.attributes.get("agentgate.component") == "worker" and s.name == "POST /v1/chat/completions"
                    for s in spans) == 4
        spans = await _finished_spans(exporter, complete)
    finally:
        await gw.stop()

    (workflow,) = [s for s in spans if s.name == "workflow" and s.attributes["agentgate.workflow"] == wf]
    trace_id = workflow.context.trace_id
    (submit,) = [s for s in spans if s.context.span_id == workflow.parent.span_id]
    assert submit.name == "POST /v1/workflows" and submit.kind == SpanKind.SERVER
    assert submit.attributes["agentgate.component"] == "gateway" and submit.parent is None  # the trace's root
    assert workflow.attributes["agentgate.status"] == "finished"
    in_trace = [s for s in spans if s.context.trace_id == trace_id]
    for node in NODES:
        (node_span,) = [s for s in in_trace if s.name == f"node {node}"]
        assert node_span.parent.span_id == workflow.context.span_id
        assert node_span.attributes["agentgate.worker"] == worker_app
        (call,) = [s for s in in_trace if s.parent is not None and s.parent.span_id == node_span.context.span_id
                   and s.name == "worker call"]
        assert call.kind == SpanKind.CLIENT and call.attributes["agentgate.rid"] == f"{wf}.{node}.1"
        # the worker's side: a server span whose parent is the gateway's call, from the traceparent header
        children = [s for s in in_trace if s.parent is not None and s.parent.span_id == call.context.span_id]
        (served,) = [s for s in children if s.name == "POST /v1/chat/completions"]
        # besides it, only the pin releases awareness sends once the call has started
        assert {s.name for s in children} - {served.name} <= {"POST /kv/unpin"}
        assert served.name == "POST /v1/chat/completions" and served.kind == SpanKind.SERVER
        assert served.attributes["agentgate.component"] == "worker" and served.parent.is_remote
        assert served.attributes["http.response.status_code"] == 200
        assert node_span.start_time <= call.start_time <= served.start_time <= served.end_time <= call.end_time
    # every worker chat call of the run belongs to the workflow's trace
    chats = [s for s in spans if s.attributes.get("agentgate.component") == "worker"
             and s.name == "POST /v1/chat/completions"]
    assert len(chats) == 4 and {s.context.trace_id for s in chats} == {trace_id}


CONFIGURE = """
import json, sys
from opentelemetry import trace
from common.tracing import configure_from_env
try:
    on = configure_from_env("agentgate-gateway")
except RuntimeError as exc:
    print(json.dumps({"error": str(exc)}))
    sys.exit(0)
provider = trace.get_tracer_provider()
print(json.dumps({"on": on, "service": getattr(provider, "resource", None) and
                  provider.resource.attributes.get("service.name")}))
"""


@pytest.mark.parametrize("env, expected", [
    ({}, {"on": False, "service": None}),
    ({"OTEL_TRACES_EXPORTER": "console"}, {"on": True, "service": "agentgate-gateway"}),
    ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "gw-eu-1"}, {"on": True, "service": "gw-eu-1"}),
    ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}, {"on": False, "service": None}),
    ({"OTEL_TRACES_EXPORTER": "none"}, {"on": False, "service": None}),
    ({"OTEL_TRACES_EXPORTER": "zipkin"},
     {"error": "OTEL_TRACES_EXPORTER='zipkin' is not supported here (console, otlp or none)"}),
])
def test_the_standard_otel_variables_switch_tracing_on(env, expected):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proc = subprocess.run([sys.executable, "-c", CONFIGURE], cwd=root, capture_output=True, text=True, timeout=60,
                          env={**clean, **env, "PYTHONPATH": str(root)})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == expected
