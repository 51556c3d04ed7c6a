"""The blocking `Client` against an in-process gateway with a fake worker and real Redis."""

from __future__ import annotations

import threading
import time

import pytest
from agentgate import Client
from agentgate.errors import (
    Conflict,
    NotFound,
    ToolFailed,
    Unavailable,
    ValidationFailed,
)
from agentgate.events import (
    NodeFinished,
    NodeStarted,
    Token,
    WorkflowFinished,
    WorkflowStarted,
)
from agentgate.transport import RetryPolicy
from agentgate.workflow import Workflow, contains

FAST_RETRY = RetryPolicy(max_retries=3, backoff_s=0.05, max_backoff_s=2.0)


def two_step() -> dict:
    return {"nodes": [{"id": "a", "messages": [{"role": "user", "content": "hello {{inputs.who}}"}]},
                      {"id": "b", "messages": [{"role": "user", "content": "then {{a}}"}]}],
            "inputs": {"who": "world"}}


@pytest.fixture
def client(gw):
    with Client(gw.url, timeout=10, retry=FAST_RETRY) as c:
        yield c


def test_submit_get_list_and_stream(client):
    wf_id = client.submit(two_step())
    events = list(client.events(wf_id))
    types = [e.type for e in events]
    assert isinstance(events[0], WorkflowStarted) and isinstance(events[-1], WorkflowFinished)
    assert types.count("node_finished") == 2 and "token" in types
    tokens = "".join(e.text for e in events if isinstance(e, Token) and e.node == "a")
    assert tokens == "echo: hello world"
    assert events[-1].outputs == {"a": "echo: hello world", "b": "echo: then echo: hello world"}

    state = client.get(wf_id)
    assert state.status == "finished" and state.done
    assert state.outputs["b"] == "echo: then echo: hello world"
    assert state.nodes["a"].status == "finished" and state.nodes["a"].completion_tokens > 0
    assert state.cache.prompt_tokens > 0
    assert wf_id in [w.id for w in client.list(limit=200).data]

    # Resuming after an event replays only what came after it.
    later = list(client.events(wf_id, last_event_id=events[2].id))
    assert [e.id for e in later] == [e.id for e in events[3:]]


def test_cancel_a_workflow_waiting_on_a_tool(client):
    wf_id = client.submit({"nodes": [{"id": "tool", "type": "external"}]})
    for event in client.events(wf_id):
        if isinstance(event, NodeStarted) and event.external:
            break
    assert client.cancel(wf_id) == "cancelled"
    state = client.get(wf_id)
    assert state.status == "cancelled" and state.nodes["tool"].status == "cancelled"
    with pytest.raises(Conflict) as info:
        client.post_result(wf_id, "tool", "too late")
    assert info.value.status == 409


def test_run_calls_tool_callables_and_posts_their_results(client):
    wf = Workflow("sdk-tools", inputs={"city": "Paris"})
    plan = wf.llm("plan", "weather in {{inputs.city}}?")
    seen = {}

    @wf.tool(after=plan)
    def weather(plan, city, call):
        seen.update(plan=plan, city=city, node=call.node)
        return {"temp_c": 21}

    wf.llm("report", f"report: {weather}")
    state = client.run(wf)
    assert state.status == "finished"
    assert seen == {"plan": "echo: weather in Paris?", "city": "Paris", "node": "weather"}
    assert state.outputs["weather"] == '{"temp_c": 21}'
    assert state.outputs["report"] == 'echo: report: {"temp_c": 21}'


def test_run_skips_a_tool_behind_a_false_condition_and_renders_its_prompt(client):
    wf = Workflow()
    a = wf.llm("a", "say hi")
    called = []
    wf.external("never", lambda prompt: called.append(prompt) or "x", after=())
    wf.edge(a, "never", when=contains("bye"))
    wf.external("echo_tool", lambda prompt: prompt.upper(), prompt=f"got {a}")
    events = []
    state = client.run(wf, on_event=events.append)
    assert state.status == "finished" and not called
    assert state.nodes["never"].status == "skipped"
    assert state.outputs["echo_tool"] == "GOT ECHO: SAY HI"
    assert any(isinstance(e, NodeFinished) and e.node == "never" and e.status == "skipped" for e in events)


def test_a_raising_tool_cancels_the_workflow(client):
    def broken(prompt):
        raise RuntimeError("no network")

    wf = {"nodes": [{"id": "t", "type": "external"}]}
    with pytest.raises(ToolFailed) as info:
        client.run(wf, tools={"t": broken})
    assert isinstance(info.value.__cause__, RuntimeError) and info.value.node == "t"
    assert client.get(info.value.workflow_id).status == "cancelled"


def test_run_refuses_an_external_node_without_a_callable(client):
    with pytest.raises(ValueError, match="no callable"):
        client.run({"nodes": [{"id": "t", "type": "external"}]})


def test_typed_errors(client):
    with pytest.raises(NotFound) as info:
        client.get("wf-does-not-exist")
    assert info.value.status == 404 and info.value.code == "workflow_not_found"

    cyclic = {"nodes": [{"id": "a", "messages": [{"role": "user", "content": "{{b}}"}]},
                        {"id": "b", "messages": [{"role": "user", "content": "{{a}}"}]}]}
    with pytest.raises(ValidationFailed) as info:
        client.submit(cyclic)
    assert info.value.status == 422 and any(p.startswith("cycle:") for p in info.value.problems)

    wf_id = client.submit(two_step())
    client.wait(wf_id)
    with pytest.raises(Conflict):
        client.post_result(wf_id, "a", "late")


def test_chat_passes_agent_hints_and_sampling(client, fake):
    result = client.chat("hi there", agent_hints={"template": "t1", "node_id": "n1"}, max_tokens=5, temperature=0)
    assert result.text == "echo: hi there" and result.usage["prompt_tokens"] > 0
    body = fake.calls[-1].body
    assert "agent_hints" not in body and body["max_tokens"] == 5 and body["temperature"] == 0


def test_503_is_retried_until_a_worker_appears(served):
    worker = served.worker()
    served.run(worker.stop())  # its port is known but nothing listens yet
    gw = served.gateway([worker.url])
    with Client(gw.url, timeout=10, retry=RetryPolicy(max_retries=1, backoff_s=0.01)) as c:
        t0 = time.monotonic()
        with pytest.raises(Unavailable) as info:
            c.chat("anyone?")
        assert info.value.retry_after == 1.0 and time.monotonic() - t0 >= 0.9  # waited Retry-After once

    threading.Timer(0.3, lambda: served.run(worker.start())).start()
    with Client(gw.url, timeout=10, retry=RetryPolicy(max_retries=6, backoff_s=0.1)) as c:
        assert c.chat("now?").text == "echo: now?"


def test_an_unreachable_gateway_raises_after_retries():
    from agentgate.errors import GatewayUnreachable

    from common.redis_server import free_port

    with Client(f"http://127.0.0.1:{free_port()}", retry=RetryPolicy(max_retries=2, backoff_s=0.01)) as c:
        with pytest.raises(GatewayUnreachable, match="3 attempt"):
            c.get("wf-x")


def test_calls_share_a_kept_alive_connection_and_one_the_server_closed_is_not_reused():
    # a stdlib HTTP/1.1 server that keeps connections alive but closes one idle for 0.2 s (as aiohttp's
    # keep-alive timeout does); every request and connection is counted
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen = {"connections": 0, "posts": 0}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 0.2

        def setup(self):
            super().setup()
            seen["connections"] += 1

        def _reply(self, body: bytes):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self._reply(b'{"status": "ok"}')

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            seen["posts"] += 1
            self._reply(b'{"id": "wf-1"}')

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with Client(f"http://127.0.0.1:{server.server_port}", timeout=5, retry=FAST_RETRY) as c:
            assert [c.health() for _ in range(3)] == [{"status": "ok"}] * 3
            assert seen["connections"] == 1  # one connection, kept alive
            time.sleep(0.5)  # the server closes it
            assert c.submit({"nodes": []}) == "wf-1"
            assert seen["connections"] == 2 and seen["posts"] == 1  # a fresh one; the POST sent once
    finally:
        server.shutdown()
        server.server_close()
