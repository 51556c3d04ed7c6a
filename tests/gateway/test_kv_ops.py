"""Prefetch / pin / unpin through KVOps: emulated on an SGLang-API worker that has no /kv/* routes,
delegated on an embedded engine. The kind comes from the worker's /get_server_info."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
import pytest_asyncio

from gateway.errors import WorkerCallError
from gateway.workers.breaker import CircuitBreaker
from gateway.workers.client import WorkerClient
from gateway.workers.kv_ops import PREFETCH_PRIORITY, KVOps, worker_kind
from gateway.workers.pool import WorkerState

pytestmark = pytest.mark.asyncio

PREFIX = list(range(300, 340))  # 40 tokens: two full blocks of 16


@pytest_asyncio.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


@pytest_asyncio.fixture
async def kv():
    ops = KVOps(touch_interval_s=0.1)
    yield ops
    await ops.close()


def state(worker, session) -> WorkerState:
    return WorkerState(WorkerClient(worker.url, session), CircuitBreaker(), capacity=4)


def calls(worker, path: str) -> list[dict]:
    return [c.body for c in worker.calls if c.path == path]


async def test_kind_discrimination():
    assert worker_kind({"backend": "agentgate-engine", "version": "0.1.0"}) == "agentgate"
    assert worker_kind({"agentgate_engine": True}) == "agentgate"
    # SGLang 0.5.23's server info: resolved server args, launch_command, version, internal_states, kv_events...
    assert worker_kind({"version": "0.5.23", "launch_command": "python -m sglang.launch_server", "page_size": 16,
                        "internal_states": [{}], "kv_events": None}) == "sglang"
    assert worker_kind({}) == "sglang"


async def test_sglang_prefetch_is_a_prefill_only_generate(fake_workers, session, kv):
    (w,) = await fake_workers(1, server_info={"page_size": 16, "enable_priority_scheduling": True})
    worker = state(w, session)
    assert await kv.kind(worker) == "sglang"
    first = await kv.prefetch(worker, PREFIX, cache_salt="tenant-a")
    assert first.emulated and first.pin_id is None
    assert first.resident_tokens == 32  # full pages only
    assert first.sources == {"l1": 0, "l2": 0, "l3": 0, "computed": 40}
    (body,) = calls(w, "/generate")
    assert body["input_ids"] == PREFIX and body["cache_salt"] == "tenant-a"
    assert body["sampling_params"]["max_new_tokens"] == 0
    assert body["priority"] == PREFETCH_PRIORITY and body["stream"] is False
    assert body["rid"].startswith("agentgate-prefetch-")
    again = await kv.prefetch(worker, PREFIX + [1, 2, 3], priority=5)
    assert again.sources == {"l1": 40, "l2": 0, "l3": 0, "computed": 3}
    assert calls(w, "/generate")[-1]["priority"] == 5
    assert not [c for c in w.calls if c.path.startswith("/kv/")]


async def test_priority_only_where_the_server_schedules_by_it(fake_workers, session, kv):
    low_first_info = {"page_size": 16, "enable_priority_scheduling": True, "schedule_low_priority_values_first": True}
    plain, low_first = await fake_workers(1), await fake_workers(1, server_info=low_first_info)
    await kv.prefetch(state(plain[0], session), text="You are a helpful agent.")
    assert "priority" not in calls(plain[0], "/generate")[0]  # SGLang may abort a request with one
    assert calls(plain[0], "/generate")[0]["text"] == "You are a helpful agent."
    await kv.prefetch(state(low_first[0], session), PREFIX)
    assert calls(low_first[0], "/generate")[0]["priority"] == -PREFETCH_PRIORITY  # "low" flips there


async def test_a_server_refusing_zero_tokens_gets_one(fake_workers, session, kv):
    (w,) = await fake_workers(1, reject_zero_max_new_tokens=True)
    worker = state(w, session)
    result = await kv.prefetch(worker, PREFIX)
    assert result.resident_tokens == 32
    assert [b["sampling_params"]["max_new_tokens"] for b in calls(w, "/generate")] == [0, 1]
    await kv.prefetch(worker, PREFIX)
    assert [b["sampling_params"]["max_new_tokens"] for b in calls(w, "/generate")] == [0, 1, 1]  # remembered


async def test_sglang_pin_retouches_until_unpinned(fake_workers, session, kv):
    (w,) = await fake_workers(1)
    worker = state(w, session)
    pin = await kv.pin(worker, PREFIX, ttl_s=30)
    assert pin.pin_id.startswith("sgl-pin-") and pin.pinned_tokens == 32 and pin.expires_in_s == 30
    await asyncio.sleep(0.45)
    touches = len(calls(w, "/generate"))
    assert touches >= 3, "the pinned prefix was not re-touched"
    assert all(b["input_ids"] == PREFIX for b in calls(w, "/generate"))
    assert await kv.unpin(worker, pin.pin_id) == 1
    await asyncio.sleep(0.3)
    assert len(calls(w, "/generate")) == touches, "touching went on after unpin"
    assert await kv.unpin(worker, pin.pin_id) == 0
    assert kv.pinned() == 0


async def test_sglang_pin_ends_at_its_ttl(fake_workers, session, kv):
    (w,) = await fake_workers(1)
    worker = state(w, session)
    result = await kv.prefetch(worker, PREFIX, pin_ttl_s=0.35)
    assert result.pin_id is not None and kv.pinned() == 1
    await asyncio.sleep(0.8)
    assert kv.pinned() == 0
    done = len(calls(w, "/generate"))
    assert 2 <= done <= 6
    await asyncio.sleep(0.3)
    assert len(calls(w, "/generate")) == done


async def test_pins_of_one_prefix_share_one_toucher(fake_workers, session, kv):
    (w,) = await fake_workers(1)
    worker = state(w, session)
    a = await kv.pin(worker, PREFIX, ttl_s=30)
    await kv.pin(worker, PREFIX, ttl_s=30)  # b: released below by prefix
    other = await kv.pin(worker, text="another prefix", ttl_s=30)
    w.calls.clear()
    await asyncio.sleep(0.35)
    prefix_touches = [c for c in calls(w, "/generate") if c.get("input_ids") == PREFIX]
    text_touches = [c for c in calls(w, "/generate") if c.get("text") == "another prefix"]
    assert 2 <= len(prefix_touches) <= 5 and text_touches  # one loop for a and b, not two
    assert await kv.unpin(worker, a.pin_id) == 1
    assert kv.pinned() == 2
    assert await kv.unpin(worker, input_ids=PREFIX) == 1  # by prefix: b
    assert await kv.unpin(worker, other.pin_id) == 1
    assert kv.pinned() == 0


async def test_a_pin_survives_failing_touches_until_its_ttl(fake_workers, session, kv):
    (w,) = await fake_workers(1)
    worker = state(w, session)
    pin = await kv.pin(worker, PREFIX, ttl_s=30)
    w.fail_with = "500"
    await asyncio.sleep(0.35)
    assert kv.pinned() == 1
    w.fail_with = None
    await kv.unpin(worker, pin.pin_id)


async def test_sglang_prefetch_errors_are_worker_call_errors(fake_workers, session, kv):
    (w,) = await fake_workers(1, fail_with="500")
    with pytest.raises(WorkerCallError) as err:
        await kv.prefetch(state(w, session), PREFIX)
    assert err.value.retryable
    with pytest.raises(ValueError):
        await kv.prefetch(state(w, session))


async def test_an_emulated_pin_is_renewed_by_its_id_and_a_lapsed_one_is_a_404(fake_workers, session, kv):
    (w,) = await fake_workers(1)
    worker = state(w, session)
    result = await kv.prefetch(worker, PREFIX, pin_ttl_s=0.3)
    renewed = await kv.renew(worker, result.pin_id, ttl_s=30)
    assert renewed.pin_id == result.pin_id
    await asyncio.sleep(0.6)  # past the first TTL: the renewal holds it
    assert kv.pinned() == 1
    assert await kv.unpin(worker, result.pin_id) == 1
    with pytest.raises(WorkerCallError) as err:
        await kv.renew(worker, result.pin_id, ttl_s=30)
    assert err.value.status == 404


async def test_embedded_engine_uses_its_kv_routes(fake_workers, session, kv):
    (w,) = await fake_workers(1, kv_api=True)
    worker = state(w, session)
    assert await kv.kind(worker) == "agentgate"
    result = await kv.prefetch(worker, PREFIX, cache_salt="s", pin_ttl_s=20, priority=-1)
    assert result == (32, {"l1": 0, "l2": 0, "l3": 0, "computed": 40}, "pin-0", False)
    assert calls(w, "/kv/prefetch") == [{"input_ids": PREFIX, "cache_salt": "s", "pin_ttl_s": 20, "priority": -1}]
    await kv.prefetch(worker, text="hello")
    assert calls(w, "/kv/prefetch")[-1] == {"text": "hello"}  # nothing the strict route would refuse
    pin = await kv.pin(worker, PREFIX, ttl_s=10)
    assert calls(w, "/kv/pin") == [{"input_ids": PREFIX, "ttl_s": 10}]
    assert (pin.pinned_tokens, pin.expires_in_s) == (32, 10.0)
    assert (await kv.renew(worker, pin.pin_id, ttl_s=40)).expires_in_s == 40.0
    assert calls(w, "/kv/pin")[-1] == {"pin_id": pin.pin_id, "ttl_s": 40}  # by its id: no prefix again
    assert await kv.unpin(worker, pin.pin_id) == 1
    assert calls(w, "/kv/unpin") == [{"pin_id": pin.pin_id}]
    assert await kv.unpin(worker, "pin-unknown") == 0  # 404: already gone
    assert not calls(w, "/generate")


async def test_forgetting_a_worker_ends_its_pins_and_rereads_its_kind(fake_workers, session, kv):
    (w,) = await fake_workers(1)
    worker = state(w, session)
    await kv.pin(worker, PREFIX, ttl_s=30)
    assert await kv.kind(worker) == "sglang" and kv.pinned() == 1
    kv.forget(w.url)
    assert kv.pinned() == 0
    w.calls.clear()
    await asyncio.sleep(0.25)
    assert not calls(w, "/generate")
    w.kv_api = True  # the same address now serves an embedded engine
    await w.stop()
    await w.start()
    assert await kv.kind(worker) == "agentgate"


async def test_a_workers_step_costs_reach_the_routing_view(fake_workers, session):
    """The embedded engine's /get_load carries its learned step costs; SGLang's does not (view: 0). A worker
    that publishes no row cost has a row cost what a prompt token does."""
    engine, sglang = await fake_workers(2)
    engine.load_extra = {"step_s": 0.031, "row_s": 0.0061, "token_s": 0.0042}
    views = []
    for w in (engine, sglang):
        worker = state(w, session)
        worker.load = await worker.client.get_load()
        views.append(worker.view())
    assert (views[0].step_s, views[0].per_row, views[0].token_s) == (0.031, 0.0061, 0.0042)
    assert (views[1].step_s, views[1].per_row, views[1].token_s) == (0.0, 0.0, 0.0)
    engine.load_extra = {"step_s": 0.031, "token_s": 0.0042}  # an embedded worker of an older release
    worker = state(engine, session)
    worker.load = await worker.client.get_load()
    assert worker.view().per_row == 0.0042
