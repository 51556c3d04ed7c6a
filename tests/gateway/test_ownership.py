"""Ownership that cannot leak: a fault at any await point of a node's lifecycle (a Redis write,
the worker call, mid-stream) leaves every worker slot free and the workflow ended (finished,
or failed with its reason), never stuck "running"."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.errors import WorkerCallError
from gateway.keys import POOL, SCHEDULER
from tests.gateway.support import llm

pytestmark = pytest.mark.asyncio

STORE_WRITES = ("create", "claim", "commit", "save_node", "append_event", "append_events", "set_status", "release")
WORKFLOW = {"nodes": [llm("a", "alpha beta gamma"), llm("b", "then {{a}}")], "edges": [{"from": "a", "to": "b"}]}
OUTPUTS = {"a": "echo: alpha beta gamma", "b": "echo: then echo: alpha beta gamma"}


class Faults:
    """Counts the scheduler's Redis writes and worker calls; the call numbered `at` raises `exc`."""

    def __init__(self, at: int | None, exc: BaseException | None):
        self.at, self.exc, self.points = at, exc, []

    def _hit(self, name: str) -> None:
        self.points.append(name)
        if len(self.points) == self.at:
            raise self.exc

    def store_method(self, name, method):
        async def faulty(*args, **kwargs):
            self._hit(name)
            return await method(*args, **kwargs)
        return faulty

    def stream(self, url, method):
        async def faulty(*args, **kwargs):
            self._hit(f"call {url}")
            n = 0
            async for chunk in method(*args, **kwargs):
                n += 1
                if n == 2:
                    self._hit(f"mid-stream {url}")
                yield chunk
        return faulty


async def run_with(gw, faults: Faults, monkeypatch) -> dict:
    scheduler, pool = gw.app[SCHEDULER], gw.app[POOL]
    with monkeypatch.context() as m:
        for name in STORE_WRITES:
            m.setattr(scheduler.store, name, faults.store_method(name, getattr(scheduler.store, name)))
        for url, w in pool.workers.items():
            m.setattr(w.client, "stream_json", faults.stream(url, w.client.stream_json))
        status, body, _ = await gw.call("POST", "/v1/workflows", WORKFLOW)
        if status != 202:  # only a bug before the workflow existed may refuse it, as an OpenAI-shaped 500
            assert status == 500 and faults.points == ["create"], (status, body)
            assert set(body["error"]) == {"message", "type", "code", "param"} and "injected" in body["error"]["message"]
            return {"status": "refused"}
        body = await gw.wait(body["id"], timeout=15)
    return body


def assert_nothing_held(gw) -> None:
    scheduler, pool = gw.app[SCHEDULER], gw.app[POOL]
    assert {url: w.in_flight for url, w in pool.workers.items()} == dict.fromkeys(pool.workers, 0)
    assert scheduler.tasks == {} and scheduler.ready == {} and scheduler.runs == {}


async def test_a_redis_fault_at_any_await_point_is_survived_and_nothing_leaks(gateway, fake_workers, monkeypatch):
    workers = await fake_workers(2)
    gw = await gateway([w.url for w in workers])
    clean = Faults(None, None)
    assert (await run_with(gw, clean, monkeypatch))["outputs"] == OUTPUTS
    writes = [i + 1 for i, p in enumerate(clean.points) if not p.startswith(("call", "mid-stream"))]
    # one write per transition: created (with its lease, started, a ready); a started; a finished (b
    # ready); b started; b finished; the workflow finished; its lease released
    assert [clean.points[i - 1] for i in writes] == ["create"] + ["commit"] * 5 + ["release"], clean.points
    for at in writes:
        faults = Faults(at, RedisConnectionError("injected: connection lost"))
        body = await run_with(gw, faults, monkeypatch)
        assert body["status"] == "finished" and body["outputs"] == OUTPUTS, (faults.points[at - 1], body)
        await wait_released(gw)
        assert_nothing_held(gw)


@pytest.mark.parametrize("kind", ["bug", "worker"])
async def test_any_other_fault_ends_the_workflow_with_its_reason_and_nothing_leaks(gateway, fake_workers,
                                                                                  monkeypatch, kind):
    workers = await fake_workers(2)
    gw = await gateway([w.url for w in workers], breaker_failures=100)
    clean = Faults(None, None)
    await run_with(gw, clean, monkeypatch)
    for at in range(1, len(clean.points) + 1):
        point = clean.points[at - 1]
        if kind == "worker" and not point.startswith(("call", "mid-stream")):
            continue
        url = point.split(" ", 1)[-1]
        exc = RuntimeError("injected bug") if kind == "bug" else WorkerCallError(url, "injected: reset")
        faults = Faults(at, exc)
        body = await run_with(gw, faults, monkeypatch)
        if body["status"] == "refused":
            continue
        if body["status"] == "failed":
            assert "injected" in body["error"], (point, body)
        else:
            assert body["status"] == "finished" and body["outputs"] == OUTPUTS, (point, body)
        if kind == "worker":  # a retryable worker failure is retried, never the workflow's end
            assert body["status"] == "finished", (point, body)
        await wait_released(gw)
        assert_nothing_held(gw)


async def wait_released(gw, rounds: int = 200) -> None:
    """The workflow's status is written before its last slot and task are let go: give them a moment."""
    scheduler, pool = gw.app[SCHEDULER], gw.app[POOL]
    for _ in range(rounds):
        if not scheduler.tasks and not scheduler.runs and not any(w.in_flight for w in pool.workers.values()):
            return
        await asyncio.sleep(0.01)


async def test_a_node_task_cancelled_before_it_ever_ran_still_gives_its_slot_back(gateway, fake_workers):
    """A cancel can reach a node's task before its first step (a workflow cancelled or dropped in the
    same loop turn as the dispatch): no `finally` inside the task runs then, the done callback does."""
    from common.workflow.run import WorkflowRun
    from common.workflow.spec import NodeSpec, WorkflowSpec
    from gateway.scheduler.ownership import NodeCall

    (w,) = await fake_workers(1)
    gw = await gateway([w.url])
    scheduler, pool = gw.app[SCHEDULER], gw.app[POOL]
    run = WorkflowRun("wf-never-ran", WorkflowSpec(nodes=(NodeSpec("a"),)), 0.0)
    call = NodeCall(pool, run, "a", w.url)
    assert pool.workers[w.url].in_flight == 1 and run.running == 1
    scheduler.lifecycle.track(run, "a", asyncio.sleep(30), call)
    scheduler.tasks[(run.id, "a")].cancel()
    for _ in range(10):
        await asyncio.sleep(0)
    assert pool.workers[w.url].in_flight == 0 and run.running == 0 and scheduler.tasks == {}


# -- SSE writes: a client that goes away mid-stream ------------------------------------------------------
class ClientGone:
    """Counts the gateway's SSE writes (StreamResponse.write on its own app); write number `at` raises as a
    client that hung up does."""

    def __init__(self, app, at: int | None):
        self.app, self.at, self.writes, self.hit_at = app, at, 0, None

    def patch(self, m) -> None:
        from aiohttp import web

        original = web.StreamResponse.write
        faults = self

        async def write(resp, data):
            if resp._req is not None and resp._req.app is faults.app:
                faults.writes += 1
                if faults.writes == faults.at:
                    faults.hit_at = time.monotonic()
                    raise ConnectionResetError("injected: the client went away")
            return await original(resp, data)

        m.setattr(web.StreamResponse, "write", write)


def follower_connections_in_use(gw) -> int:
    """Connections taken from the SSE followers' Redis pool (only followers use it)."""
    from gateway.keys import FOLLOWERS

    return len(gw.app[FOLLOWERS].r.connection_pool._in_use_connections)


async def follow_events(gw, wf_id: str) -> str:
    """Read a workflow's SSE stream to its end (or until the connection breaks); the text read."""
    try:
        async with gw.session.get(f"{gw.url}/v1/workflows/{wf_id}/events") as r:
            return (await r.read()).decode()
    except (OSError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
        return f"broken: {exc!r}"


async def test_a_follower_gone_at_any_sse_write_leaks_nothing_and_the_workflow_finishes(
        gateway, fake_workers, monkeypatch):
    workers = await fake_workers(2, token_delay_s=0.01)
    gw = await gateway([w.url for w in workers])
    clean = ClientGone(gw.app, None)
    with monkeypatch.context() as m:
        clean.patch(m)
        wf = await gw.submit(WORKFLOW)
        assert "workflow_finished" in await follow_events(gw, wf)
    assert clean.writes > 5
    for at in range(1, clean.writes + 1):
        faults = ClientGone(gw.app, at)
        with monkeypatch.context() as m:
            faults.patch(m)
            wf = await gw.submit(WORKFLOW)
            await follow_events(gw, wf)
            body = await gw.wait(wf, timeout=15)
        assert body["status"] == "finished" and body["outputs"] == OUTPUTS, (at, body)
        await wait_released(gw)
        assert_nothing_held(gw)
        for _ in range(100):  # the follower's handler unwinds after the client is gone
            if not follower_connections_in_use(gw):
                break
            await asyncio.sleep(0.01)
        assert follower_connections_in_use(gw) == 0, at  # its blocking read gave its connection back
        assert faults.writes >= at  # the fault was hit


async def test_a_proxied_stream_whose_client_goes_away_gives_its_slot_back_and_the_worker_aborts(
        gateway, fake_workers, monkeypatch):
    (w,) = await fake_workers(1, token_delay_s=0.05)
    gw = await gateway([w.url])
    body = {"messages": [{"role": "user", "content": "one two three four five six"}], "stream": True}
    clean = ClientGone(gw.app, None)
    with monkeypatch.context() as m:
        clean.patch(m)
        status, text, _ = await gw.call("POST", "/v1/chat/completions", body)
    assert status == 200 and "[DONE]" in text
    assert clean.writes > 3
    for at in range(1, clean.writes):  # the last write is the [DONE] after the worker finished
        faults = ClientGone(gw.app, at)
        calls = len(w.calls)
        with monkeypatch.context() as m:
            faults.patch(m)
            try:
                await gw.call("POST", "/v1/chat/completions", body)
            except (OSError, aiohttp.ClientError):  # the stream broke off where the fault hit
                pass
            pool = gw.app[POOL]
            for _ in range(200):  # the handler unwinds after the client is gone
                if pool.workers[w.url].in_flight == 0 and w.calls[calls].end is not None:
                    break
                await asyncio.sleep(0.01)
        assert pool.workers[w.url].in_flight == 0, at
        call = w.calls[calls]
        # the worker stopped generating for nobody, unless it had sent everything before the client left
        assert call.end is not None and (call.aborted or call.end <= faults.hit_at), at
    assert any(c.aborted for c in w.calls)
    assert pool.workers[w.url].breaker.state == "closed"  # a client leaving is not the worker's fault
