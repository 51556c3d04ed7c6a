"""`AsyncClient`, the twin of `Client`: the same calls as coroutines and async iterators."""

from __future__ import annotations

import asyncio

import pytest

from agentgate import AsyncClient
from agentgate.errors import Conflict, NotFound, Unavailable, ValidationFailed
from agentgate.events import NodeStarted, Token, WorkflowFinished
from agentgate.transport import RetryPolicy
from agentgate.workflow import Workflow

pytestmark = pytest.mark.asyncio
FAST_RETRY = RetryPolicy(max_retries=3, backoff_s=0.05, max_backoff_s=2.0)


async def test_submit_stream_get_list_cancel(gw):
    async with AsyncClient(gw.url, timeout=10, retry=FAST_RETRY) as c:
        wf_id = await c.submit({"nodes": [{"id": "a", "messages": [{"role": "user", "content": "ping"}]}]})
        events = [e async for e in c.events(wf_id)]
        assert isinstance(events[-1], WorkflowFinished) and events[-1].status == "finished"
        assert "".join(e.text for e in events if isinstance(e, Token)) == "echo: ping"
        state = await c.get(wf_id)
        assert state.outputs == {"a": "echo: ping"}
        assert wf_id in [w.id for w in (await c.list(limit=200)).data]

        waiting = await c.submit({"nodes": [{"id": "t", "type": "external"}]})
        async for event in c.events(waiting):
            if isinstance(event, NodeStarted):
                break
        assert await c.cancel(waiting) == "cancelled"
        assert (await c.get(waiting)).status == "cancelled"
        with pytest.raises(Conflict):
            await c.post_result(waiting, "t", "late")


async def test_run_runs_sync_and_async_tools_concurrently(gw):
    wf = Workflow(inputs={"n": "3"})
    start = wf.llm("start", "count to {{inputs.n}}")
    both_running = asyncio.Event()
    running = []

    @wf.tool(after=start)
    async def left(start):
        running.append("left")
        if len(running) == 2:
            both_running.set()
        await asyncio.wait_for(both_running.wait(), 5)
        return "L:" + start

    @wf.tool(after=start)
    async def right(n):
        running.append("right")
        if len(running) == 2:
            both_running.set()
        await asyncio.wait_for(both_running.wait(), 5)
        return int(n) * 2

    wf.external("blocking", lambda left, right: f"{left}|{right}", after=[left, right])
    async with AsyncClient(gw.url, timeout=10, retry=FAST_RETRY) as c:
        state = await c.run(wf)
    assert state.status == "finished"
    assert state.outputs["blocking"] == "L:echo: count to 3|6"


async def test_typed_errors_and_503(gw, served):
    async with AsyncClient(gw.url, timeout=10, retry=FAST_RETRY) as c:
        with pytest.raises(NotFound):
            await c.get("wf-nope")
        with pytest.raises(ValidationFailed) as info:
            await c.submit({"nodes": [{"id": "a", "messages": [{"role": "user", "content": "{{a}} {{zz}}"}]}]})
        assert len(info.value.problems) == 2
    nobody = served.gateway([])
    async with AsyncClient(nobody.url, timeout=10, retry=RetryPolicy(max_retries=1, backoff_s=0.01)) as c:
        with pytest.raises(Unavailable) as info:
            await c.chat("hi")
        assert info.value.status == 503 and info.value.retry_after == 1.0
