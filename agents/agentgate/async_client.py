"""`AsyncClient`: the asyncio twin of `Client` (aiohttp), same methods as coroutines (the plain
endpoints are written once, in agents/agentgate/api.py).

    async with AsyncClient(url) as gw:
        async for event in gw.events(wf_id):
            ...

One aiohttp session per client, opened on first use inside the running loop.
`run()` calls external nodes' callables concurrently (sync ones in a thread, so
a blocking tool never stalls the loop) while it keeps reading events.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp

from agentgate import transport
from agentgate.api import GatewayApi, chat_payload
from agentgate.errors import AgentGateError, ToolFailed, WorkflowFailed
from agentgate.events import Event, WorkflowFinished
from agentgate.state import ChatChunk, WorkflowState
from agentgate.tools import ToolCall, ToolRunner, call_tool, prepare, result_payload, upstream_of

# Errors from a connection that broke after the request was sent (it may have been acted on).
LOST = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


class AsyncClient(GatewayApi):
    def __init__(self, base_url: str | None = None, *, timeout: float = 60.0,
                 retry: transport.RetryPolicy | None = None, headers: Mapping[str, str] | None = None,
                 api_key: str | None = None):
        self.base_url = transport.base_url(base_url)
        self.timeout = timeout
        self.retry = retry or transport.RetryPolicy()
        self.headers = transport.auth_headers(api_key, headers)  # api_key: else $AGENTGATE_API_KEY
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    # -- workflows ---------------------------------------------------------------------------------
    async def events(self, workflow_id: str, last_event_id: str | None = None) -> AsyncIterator[Event]:
        """Every event after `last_event_id` until workflow_finished; reconnects with Last-Event-ID."""
        resume = transport.EventResume(workflow_id, last_event_id, self.retry)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=self.timeout)
        while True:
            req = self._request("GET", resume.path, headers=resume.headers())
            resp = await self._send(req, None, timeout=timeout)
            try:
                async for raw in resp.content:
                    event = resume.feed(raw)
                    if event is None:
                        continue
                    yield event
                    if isinstance(event, WorkflowFinished):
                        return
                return
            except LOST as exc:
                await asyncio.sleep(resume.backoff(req, exc))
            finally:
                resp.release()

    async def wait(self, workflow_id: str) -> WorkflowState:
        async for _ in self.events(workflow_id):
            pass
        return await self.get(workflow_id)

    async def run(self, workflow, *, tools: Mapping[str, Callable] | None = None,
                  inputs: Mapping[str, Any] | None = None, on_event: Callable[[Event], Any] | None = None,
                  raise_on_failure: bool = False) -> WorkflowState:
        """Submit, follow the events, run external nodes' callables (concurrently) and post their results;
        the final state. A callable that raises cancels the workflow and raises ToolFailed."""
        payload, callables = prepare(workflow, tools, inputs)
        wf_id = await self.submit(payload)
        runner = ToolRunner(wf_id, callables, payload.get("inputs", {}), upstream_of(payload))
        pending: set[asyncio.Task] = set()
        failed: list[tuple[str, BaseException]] = []
        try:
            async for event in self.events(wf_id):
                if on_event is not None and inspect.isawaitable(result := on_event(event)):
                    await result
                for call in runner.on_event(event):
                    task = asyncio.create_task(self._run_tool(runner.tools[call.node], call, failed))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
            await asyncio.gather(*pending)
        finally:
            for task in pending:
                task.cancel()
        if failed:
            node, exc = failed[0]
            raise ToolFailed(f"tool for node '{node}' raised {exc!r}", node=node, workflow_id=wf_id) from exc
        state = await self.get(wf_id)
        if raise_on_failure and state.status != "finished":
            raise WorkflowFailed(f"workflow {wf_id} ended {state.status}: {state.error}", state=state)
        return state

    async def _run_tool(self, fn: Callable, call: ToolCall, failed: list) -> None:
        try:
            value = await call_tool(fn, call)
        except Exception as exc:  # the user's code: cancel the workflow, so the event stream ends
            failed.append((call.node, exc))
            try:
                await self.cancel(call.workflow_id)
            except AgentGateError:
                pass  # already ended
            return
        await self.post_result(call.workflow_id, call.node, result_payload(value))

    # -- single calls ------------------------------------------------------------------------------
    async def chat_stream(self, messages: list[dict] | str, *, model: str | None = None,
                          agent_hints: Mapping[str, Any] | None = None, **sampling) -> AsyncIterator[ChatChunk]:
        """POST /v1/chat/completions with stream=True: its chunks as they arrive (the last one carries
        `usage`). Leaving the loop early closes the connection, which aborts the call on the worker."""
        req = self._request("POST", "/v1/chat/completions",
                            json=chat_payload(messages, model, agent_hints, sampling, stream=True),
                            headers={"Accept": "text/event-stream"})
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=self.timeout)
        resp = await self._send(req, None, timeout=timeout)
        finished = False
        try:
            async for line in resp.content:
                data = transport.stream_data(line)
                if data == transport.DONE:
                    finished = True
                    return
                if data is not None:
                    yield ChatChunk.from_json(data)
            finished = True
        finally:
            if finished:
                resp.release()
            else:  # the caller stopped early (or the stream broke): drop the connection, not reuse it
                resp.close()

    # -- HTTP ----------------------------------------------------------------------------------------
    async def _call(self, method: str, path: str, *, then: Callable[[Any], Any] | None = None, **kwargs) -> Any:
        body = await self._send(self._request(method, path, **kwargs), transport.decode)
        return then(body) if then is not None else body

    async def _send(self, req: transport.HttpRequest, decode: Callable | None, *,
                    timeout: aiohttp.ClientTimeout | None = None):
        """decode(status, raw, headers) of the 2xx answer, or (decode None) the open response for
        the caller to read and release. Retries what transport says is safe."""
        timeout = timeout or aiohttp.ClientTimeout(total=self.timeout)
        attempt = 0
        while True:
            wait, error = None, None
            try:
                resp = await self._client().request(req.method, req.url, data=req.body, headers=req.headers,
                                                    timeout=timeout)
                if resp.status < 300 and decode is None:
                    return resp
                async with resp:
                    raw = await resp.read()
                if not transport.retryable_status(resp.status):
                    return transport.decode(resp.status, raw, resp.headers)
                wait = self.retry.delay(attempt, retry_after=transport.retry_after(resp.headers.get("Retry-After")))
                if wait is None:
                    transport.decode(resp.status, raw, resp.headers)  # raises Unavailable
            except aiohttp.ClientConnectorError as exc:  # could not connect: never acted on
                wait, error = self.retry.delay(attempt), exc
            except LOST as exc:  # lost after sending: only a GET may be repeated
                wait, error = (self.retry.delay(attempt) if req.idempotent else None), exc
            if wait is None:
                raise transport.unreachable(req, error, attempt + 1) from error
            attempt += 1
            await asyncio.sleep(wait)
