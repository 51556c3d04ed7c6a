"""`Client`: the blocking SDK client (stdlib http.client over a keep-alive connection pool; no event loop,
safe in any thread).

Its twin `AsyncClient` (agents/agentgate/async_client.py) has the same methods as coroutines and async
iterators: the plain endpoints are written once in agents/agentgate/api.py, and both build requests and
read answers through agents/agentgate/transport.py, so they retry, time out and raise the same way.

    with Client("http://127.0.0.1:8000") as gw:
        state = gw.run(wf)               # submit, stream, run tool callables, return the final state
        print(state.outputs)
"""

from __future__ import annotations

import asyncio
import http.client
import inspect
import select
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from agentgate import transport
from agentgate.api import GatewayApi, chat_payload
from agentgate.errors import AgentGateError, ToolFailed, WorkflowFailed
from agentgate.events import Event, WorkflowFinished
from agentgate.state import ChatChunk, WorkflowState
from agentgate.tools import ToolRunner, bind, prepare, result_payload, upstream_of

# Errors from a connection that broke after the request was sent (it may have been acted on).
LOST = (OSError, http.client.HTTPException)


class Client(GatewayApi):
    def __init__(self, base_url: str | None = None, *, timeout: float = 60.0,
                 retry: transport.RetryPolicy | None = None, headers: Mapping[str, str] | None = None,
                 api_key: str | None = None, max_connections: int = 8):
        """`timeout`: seconds for each request (for event streams: the longest silence; the gateway
        sends a keep-alive every second). `retry`: how 503s and connection failures are retried.
        `max_connections`: idle connections kept for reuse (threads may share one Client)."""
        self.base_url = transport.base_url(base_url)
        self.timeout = timeout
        self.retry = retry or transport.RetryPolicy()
        self.headers = transport.auth_headers(api_key, headers)  # api_key: else $AGENTGATE_API_KEY
        self._pool = ConnectionPool(self.base_url, max_connections)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the kept-alive connections (the client stays usable: it opens new ones)."""
        self._pool.close()

    # -- what streams ------------------------------------------------------------------------------
    def events(self, workflow_id: str, last_event_id: str | None = None) -> Iterator[Event]:
        """Every event after `last_event_id` (from the start when None) until workflow_finished.
        A dropped stream reconnects with Last-Event-ID, so no event is lost or repeated."""
        resume = transport.EventResume(workflow_id, last_event_id, self.retry)
        while True:
            req = self._request("GET", resume.path, headers=resume.headers())
            stream = self._send(req, stream=True)
            try:
                for raw in stream:
                    event = resume.feed(raw)
                    if event is None:
                        continue
                    yield event
                    if isinstance(event, WorkflowFinished):
                        return
                return  # ended before this stream began, and everything was replayed
            except LOST as exc:
                time.sleep(resume.backoff(req, exc))
            finally:
                stream.close()

    def wait(self, workflow_id: str) -> WorkflowState:
        """Block until the workflow ends; its final state."""
        for _ in self.events(workflow_id):
            pass
        return self.get(workflow_id)

    def run(self, workflow, *, tools: Mapping[str, Callable] | None = None, inputs: Mapping[str, Any] | None = None,
            on_event: Callable[[Event], None] | None = None, raise_on_failure: bool = False) -> WorkflowState:
        """Submit, follow the events, call each external node's Python callable and post what it returns;
        the final state. A callable that raises cancels the workflow and raises ToolFailed."""
        payload, callables = prepare(workflow, tools, inputs)
        wf_id = self.submit(payload)
        runner = ToolRunner(wf_id, callables, payload.get("inputs", {}), upstream_of(payload))
        for event in self.events(wf_id):
            if on_event is not None:
                on_event(event)
            for call in runner.on_event(event):  # one at a time: AsyncClient runs them concurrently
                fn = runner.tools[call.node]
                try:
                    args, kwargs = bind(fn, call)
                    value = fn(*args, **kwargs)
                    if inspect.isawaitable(value):
                        value = asyncio.run(_await(value))
                except Exception as exc:  # the user's code: cancel the workflow, surface their error
                    self._cancel_quietly(wf_id)
                    raise ToolFailed(f"tool for node '{call.node}' raised {exc!r}", node=call.node,
                                     workflow_id=wf_id) from exc
                self.post_result(wf_id, call.node, result_payload(value))
        state = self.get(wf_id)
        if raise_on_failure and state.status != "finished":
            raise WorkflowFailed(f"workflow {wf_id} ended {state.status}: {state.error}", state=state)
        return state

    def _cancel_quietly(self, wf_id: str) -> None:
        try:
            self.cancel(wf_id)
        except AgentGateError:
            pass  # already ended: nothing left to stop

    def chat_stream(self, messages: list[dict] | str, *, model: str | None = None,
                    agent_hints: Mapping[str, Any] | None = None, **sampling) -> Iterator[ChatChunk]:
        """POST /v1/chat/completions with stream=True: its chunks as they arrive (the last one carries
        `usage`). Leaving the loop early closes the connection, which aborts the call on the worker.

            for chunk in gw.chat_stream("Hi", agent_hints={"workflow_id": "w1", "node_id": "greet"}):
                print(chunk.text, end="", flush=True)
        """
        req = self._request("POST", "/v1/chat/completions",
                            json=chat_payload(messages, model, agent_hints, sampling, stream=True),
                            headers={"Accept": "text/event-stream"})
        stream = self._send(req, stream=True)
        try:
            for line in stream:
                data = transport.stream_data(line)
                if data == transport.DONE:
                    return
                if data is not None:
                    yield ChatChunk.from_json(data)
        finally:
            stream.close()

    # -- HTTP ----------------------------------------------------------------------------------------
    def _call(self, method: str, path: str, *, then: Callable[[Any], Any] | None = None, **kwargs) -> Any:
        body = self._send(self._request(method, path, **kwargs))
        return then(body) if then is not None else body

    def _send(self, req: transport.HttpRequest, *, stream: bool = False):
        """The decoded JSON of the 2xx answer, or (stream) the open answer as a `Stream` of lines for the
        caller to close. Retries what transport says is safe."""
        attempt = 0
        while True:
            wait, error = None, None
            try:
                conn, resp = self._pool.exchange(req, self.timeout)
                if resp.status < 300 and stream:
                    return Stream(self._pool, conn, resp)
                raw = resp.read()
                self._pool.give_back(conn, resp)
                if not transport.retryable_status(resp.status):
                    return transport.decode(resp.status, raw, resp.headers)
                wait = self.retry.delay(attempt, retry_after=transport.retry_after(resp.headers.get("Retry-After")))
                if wait is None:
                    transport.decode(resp.status, raw, resp.headers)  # raises Unavailable
            except NotSent as exc:  # could not connect or send: never acted on
                wait, error = self.retry.delay(attempt), exc.__cause__
            except LOST as exc:  # lost after sending: only a GET may be repeated
                wait, error = (self.retry.delay(attempt) if req.idempotent else None), exc
            if wait is None:
                raise transport.unreachable(req, error, attempt + 1) from error
            attempt += 1
            time.sleep(wait)


class NotSent(Exception):
    """The request never reached the gateway whole (no connection, or the send failed)."""


class ConnectionPool:
    """Keep-alive HTTP/1.1 connections to one gateway, reused call after call; any thread may take one."""

    def __init__(self, base_url: str, size: int):
        parts = urlsplit(base_url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.https else 80)
        self.size = size
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def exchange(self, req: transport.HttpRequest, timeout: float):
        """Send req and read the answer's head: (connection, response). A kept-alive connection the
        gateway closed while it was idle is never reused (`_take` checks); one that fails the send is
        replaced by a fresh one once; NotSent when no connection takes the request."""
        target = urlsplit(req.url)
        path = (target.path or "/") + (f"?{target.query}" if target.query else "")
        while True:
            conn, reused = self._take(timeout)
            try:
                conn.request(req.method, path, body=req.body, headers=req.headers)
            except OSError as exc:  # the request did not get out whole: nothing was acted on
                conn.close()
                if reused:
                    continue
                raise NotSent(str(exc)) from exc
            try:
                return conn, conn.getresponse()
            except BaseException:  # lost after sending: the caller decides whether it may be repeated
                conn.close()
                raise

    def give_back(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> None:
        """The answer is read to its end: keep the connection for the next call, if the gateway will."""
        if resp.will_close or not resp.isclosed():
            conn.close()
            return
        with self._lock:
            if len(self._idle) < self.size:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _take(self, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                break
            if conn.sock is None or select.select([conn.sock], [], [], 0)[0]:
                conn.close()  # an idle connection with something to read has been closed by the gateway
                continue
            conn.timeout = timeout
            conn.sock.settimeout(timeout)
            return conn, True
        kind = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        return kind(self.host, self.port, timeout=timeout), False


class Stream:
    """An open 2xx answer read line by line; closing it early drops the connection (which aborts a streamed
    call on the worker), reading it to its end gives the connection back."""

    def __init__(self, pool: ConnectionPool, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse):
        self.pool, self.conn, self.resp = pool, conn, resp
        self.status, self.headers = resp.status, resp.headers

    def __iter__(self) -> Iterator[bytes]:
        while line := self.resp.readline():
            yield line

    def close(self) -> None:
        if self.conn is None:
            return
        if self.resp.isclosed():
            self.pool.give_back(self.conn, self.resp)
        else:
            self.resp.close()
            self.conn.close()
        self.conn = None


async def _await(awaitable):
    return await awaitable
