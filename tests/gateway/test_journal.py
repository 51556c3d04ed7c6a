"""The journal: state writes wait out an outage (bounded), token events are buffered (bounded)
and land before the workflow's next lifecycle event, in order."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.errors import StateUnavailableError
from gateway.metrics import Metrics
from gateway.state.journal import Journal
from gateway.state.store import WorkflowStore

pytestmark = pytest.mark.asyncio


class Outage:
    """Makes the store's writes fail as an unreachable Redis does, while `down`."""

    def __init__(self, store: WorkflowStore):
        self.down = False
        for name in ("append_event", "append_events", "save_node", "commit"):
            setattr(store, name, self._gate(getattr(store, name)))

    def _gate(self, method):
        async def gated(*args, **kwargs):
            if self.down:
                raise RedisConnectionError("Error 111 connecting: Connection refused")
            return await method(*args, **kwargs)
        return gated


async def test_tokens_are_buffered_bounded_through_an_outage_and_land_in_order(redis_url):
    redis = Redis.from_url(redis_url, decode_responses=True)
    store = WorkflowStore(redis, "t" + uuid.uuid4().hex[:8])
    outage, metrics = Outage(store), Metrics()
    journal = Journal(store, metrics, retry_s=30, max_buffered=3)
    await journal.start()
    try:
        outage.down = True
        for i in range(5):
            journal.token("wf", {"text": f"t{i}"})
        assert metrics.events_dropped.values[()] == 2  # the buffer holds 3; the other 2 are counted out
        finished = asyncio.create_task(journal.event("wf", "node_finished", {"output": "t0t1t2t3t4"}))
        await asyncio.sleep(0.3)
        assert not finished.done()  # the lifecycle event waits for Redis...
        outage.down = False
        await finished  # ...and lands once it is back, after the tokens queued before it
        events = await store.read_events("wf")
        assert [(t, d.get("text", d.get("output"))) for _, t, d in events] == [
            ("token", "t0"), ("token", "t1"), ("token", "t2"), ("node_finished", "t0t1t2t3t4")]
        assert metrics.state_retries.values[()] >= 1
    finally:
        await journal.stop()
        await redis.aclose()


async def test_a_write_gives_up_after_the_retry_time(redis_url):
    redis = Redis.from_url(redis_url, decode_responses=True)
    store = WorkflowStore(redis, "t" + uuid.uuid4().hex[:8])
    outage = Outage(store)
    journal = Journal(store, Metrics(), retry_s=0.3, max_buffered=10)
    outage.down = True
    with pytest.raises(StateUnavailableError) as err:
        await journal.save_node("wf", "a", {"status": "running"})
    assert err.value.status == 503 and "Redis unavailable" in err.value.message
    await redis.aclose()
