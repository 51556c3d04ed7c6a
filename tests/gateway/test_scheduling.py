"""Dispatch order under a full worker: critical path first, then fair share across workflows."""

from __future__ import annotations

import asyncio

import pytest

from tests.gateway.support import llm

pytestmark = pytest.mark.asyncio


def order(worker) -> list[str]:
    return [c.body["rid"].split(".")[1] for c in sorted(worker.calls, key=lambda c: c.start)]


async def test_the_longest_remaining_critical_path_goes_first(gateway, fake_workers):
    (w,) = await fake_workers(1, token_delay_s=0.01)
    gw = await gateway([w.url], worker_concurrency=1)
    wf = await gw.submit({"nodes": [
        llm("short", "s", max_tokens=1), llm("mid", "m", max_tokens=20), llm("long", "l", max_tokens=30),
        llm("long2", "{{long}}", max_tokens=30)]})
    body = await gw.wait(wf)
    assert body["status"] == "finished"
    assert order(w) == ["long", "long2", "mid", "short"]


async def test_workflow_calls_carry_the_worker_priority_of_their_workflow(gateway, fake_workers):
    (w,) = await fake_workers(1)
    gw = await gateway([w.url], workflow_priority=1)
    runs = [await gw.submit({"priority": p, "nodes": [llm("a", f"p {p}", max_tokens=2)]}) for p in (0, 4)]
    for wf in runs:
        assert (await gw.wait(wf))["status"] == "finished"
    assert sorted(c.body["priority"] for c in w.calls) == [1, 5]  # GatewayConfig.workflow_priority + the workflow's
    await gw.stop()
    gw = await gateway([w.url])  # the default: 0
    assert (await gw.wait(await gw.submit({"nodes": [llm("a", "p 0", max_tokens=2)]})))["status"] == "finished"
    assert "priority" not in w.calls[-1].body  # no precedence: sent as a plain call


async def test_equal_work_interleaves_across_workflows(gateway, fake_workers):
    (w,) = await fake_workers(1, token_delay_s=0.02)
    gw = await gateway([w.url], worker_concurrency=1)
    nodes = lambda tag: [llm(f"{tag}{i}", f"{tag} {i}", max_tokens=8) for i in range(3)]  # noqa: E731
    a = await gw.submit({"nodes": nodes("a")})
    b = await gw.submit({"nodes": nodes("b")})
    await asyncio.gather(gw.wait(a), gw.wait(b))
    seq = [name[0] for name in order(w)]
    assert seq == ["a", "b", "a", "b", "a", "b"], seq
