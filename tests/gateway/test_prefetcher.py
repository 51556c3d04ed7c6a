"""The prefetcher on its own, against a stub KVOps: the per-worker bound and its order, a newer
prefix replacing a queued one, busy workers, pins shared by two slots, release while in flight."""

from __future__ import annotations

import asyncio

import pytest

from gateway.config import GatewayConfig
from gateway.errors import WorkerCallError
from gateway.metrics import Metrics
from gateway.router.policies.least_load import LeastLoadPolicy
from gateway.router.prompts import PromptHasher
from gateway.awareness.prefetch import Intent, Prefetcher
from gateway.workers.kv_ops import PinResult, PrefetchResult
from gateway.workers.pool import WorkerPool

pytestmark = pytest.mark.asyncio
URL = "http://worker-a"


class StubKV:
    """Prefetches wait for `gate`; every pin is named `pin_id`."""

    def __init__(self, pin_id: str = "p1"):
        self.gate = asyncio.Event()
        self.sent: list[tuple[int, int]] = []  # (tokens, priority)
        self.unpinned: list[str] = []
        self.pin_id = pin_id
        self.salts: list[str | None] = []
        self.renewed: list[tuple[str, float]] = []
        self.lapsed: set[str] = set()  # pins the worker let go: a renewal of one is a 404

    async def prefetch(self, worker, ids, *, pin_ttl_s=None, priority=None, cache_salt=None):
        self.sent.append((len(ids), priority))
        self.salts.append(cache_salt)
        await self.gate.wait()
        return PrefetchResult(len(ids) // 16 * 16, {"l1": 0, "l2": 0, "l3": 0, "computed": len(ids)},
                              self.pin_id if pin_ttl_s else None)

    async def renew(self, worker, pin_id, *, ttl_s):
        self.renewed.append((pin_id, ttl_s))
        if pin_id in self.lapsed:
            raise WorkerCallError(URL, "no such pin", status=404, retryable=False)
        return PinResult(pin_id, 32, ttl_s)

    async def unpin(self, worker, pin_id=None, **_):
        self.unpinned.append(pin_id)
        return 1

    def forget(self, url):
        pass


def make(kv: StubKV, *, max_inflight: int = 1, max_waiting: int = 4) -> tuple[Prefetcher, WorkerPool]:
    pool = WorkerPool(GatewayConfig(), session=None)
    w = pool.add(URL)
    w.breaker.record_success()
    return Prefetcher(pool, LeastLoadPolicy(), PromptHasher(None), kv, Metrics(), max_inflight=max_inflight,
                      max_waiting=max_waiting), pool


def ids(n: int) -> list[int]:
    return list(range(100, 100 + n))


async def settle():
    for _ in range(5):
        await asyncio.sleep(0)


async def test_one_worker_runs_its_bound_nearest_first_and_the_newest_prefix_wins():
    kv = StubKV()
    pf, _ = make(kv, max_inflight=1)
    pf.want(Intent(("wf", "far"), ids(64), steps=2))
    await settle()
    pf.want(Intent(("wf", "later"), ids(48), steps=2))
    pf.want(Intent(("wf", "near"), ids(32), steps=1))
    pf.want(Intent(("wf", "near"), ids(40), steps=1))  # replaces the queued 32 (same block count: still queued)
    pf.want(Intent(("wf", "near"), ids(50), steps=1))  # ...and this one, a block longer, replaces it
    await settle()
    assert kv.sent == [(64, -2)]  # the bound: one at a time
    kv.gate.set()
    await settle()
    await settle()
    assert kv.sent == [(64, -2), (50, -1), (48, -2)]  # nearest first; only the newest prefix of "near"
    assert pf.slots[("wf", "near")].resident_tokens == 48 and pf.inflight[URL] == 0


async def test_a_prefetch_carries_the_salt_of_the_calls_it_serves():
    kv = StubKV()
    kv.gate.set()
    pf, _ = make(kv, max_inflight=2)
    pf.want(Intent(("wf", "a"), ids(32), salt="tenant:a"))
    pf.want(Intent(("wf", "open"), ids(48)))
    await settle()
    assert sorted(kv.salts, key=str) == [None, "tenant:a"]


async def test_a_prefix_without_a_new_full_block_is_not_sent_again():
    kv = StubKV()
    kv.gate.set()
    pf, _ = make(kv)
    pf.want(Intent(("wf", "n"), ids(40)))
    await settle()
    pf.want(Intent(("wf", "n"), ids(47)))  # still two full blocks
    pf.want(Intent(("wf", "n"), ids(10)))  # no full block at all
    await settle()
    assert kv.sent == [(40, -1)]
    pf.want(Intent(("wf", "n"), ids(48)))
    await settle()
    assert kv.sent == [(40, -1), (48, -1)]


async def test_a_busy_worker_gets_nothing_until_its_queue_drains():
    kv = StubKV()
    kv.gate.set()
    pf, pool = make(kv, max_waiting=2)
    pool.workers[URL].load = {"num_waiting_reqs": 2}
    pf.want(Intent(("wf", "n"), ids(32)))
    await settle()
    assert kv.sent == [] and pf.metrics.prefetch_deferred.values
    pool.workers[URL].load = {"num_waiting_reqs": 0}
    pf.pump_all()
    await settle()
    assert kv.sent == [(32, -1)]


async def test_a_pin_two_slots_share_is_unpinned_when_the_last_lets_go():
    kv = StubKV(pin_id="shared")
    kv.gate.set()
    pf, _ = make(kv, max_inflight=2)
    pf.want(Intent(("wf", "b"), ids(32), pin_ttl_s=30))
    pf.want(Intent(("wf", "c"), ids(32), pin_ttl_s=30))
    await settle()
    assert pf.slots[("wf", "b")].pin == pf.slots[("wf", "c")].pin == "shared"
    pf.release(("wf", "b"))
    await settle()
    assert kv.unpinned == []  # c still holds it
    pf.release(("wf", "c"))
    await settle()
    assert kv.unpinned == ["shared"]
    assert pf.slots[("wf", "c")].pin_held_s > 0


async def test_a_slot_released_while_its_prefetch_runs_drops_the_pin_when_it_lands():
    kv = StubKV(pin_id="late")
    pf, _ = make(kv)
    pf.want(Intent(("wf", "n"), ids(32), pin_ttl_s=30))
    await settle()
    pf.release(("wf", "n"))
    assert kv.unpinned == []
    kv.gate.set()
    await settle()
    await settle()
    assert kv.unpinned == ["late"] and pf.slots[("wf", "n")].pin is None


async def test_prefetches_of_one_node_s_successors_spread_over_idle_workers():
    """A prefetch's call will follow it: placing the next ones counts it as that worker's load, so four
    successors of one node do not all land on the one idle worker (and with them a whole stage)."""
    from gateway.router.policies.kv_aware import KVAwarePolicy

    kv = StubKV()
    pool = WorkerPool(GatewayConfig(), session=None)
    for url in (URL, "http://worker-b"):
        pool.add(url).breaker.record_success()
    pool.reserve(URL)  # the node whose successors these are runs on worker a
    pf = Prefetcher(pool, KVAwarePolicy(), PromptHasher(None), kv, Metrics(), max_inflight=4, max_waiting=4)
    slots = [pf.want(Intent(("wf", f"role{i}"), list(range(1000 * i, 1000 * i + 64)))) for i in range(4)]
    # a has its node's call, b nothing: the first goes to b; then each counts the prefetches already placed,
    # so they alternate (without counting them, each saw b idle and a busy: all four went to b)
    assert [s.url for s in slots] == ["http://worker-b", URL, "http://worker-b", URL]
    kv.gate.set()
    await pf.close()


async def test_due_names_the_workflows_whose_pins_need_a_pass_and_no_other():
    """The awareness tick plans only these: a pin about to lapse, or a pinned prefix whose prefetch
    failed (to retry); an unpinned prefix or a pin far from lapsing needs nothing until its prefix grows."""
    kv = StubKV(pin_id="p")
    kv.gate.set()
    pf, _ = make(kv, max_inflight=4)
    pf.want(Intent(("wf-static", "n"), ids(32)))  # unpinned
    pf.want(Intent(("wf-long", "n"), ids(32), pin_ttl_s=60))
    pf.want(Intent(("wf-short", "n"), ids(32), pin_ttl_s=1))
    await settle()
    assert pf.slots[("wf-long", "n")].pin == pf.slots[("wf-short", "n")].pin == "p"
    assert pf.due(2.5) == {"wf-short"}
    assert pf.due(61) == {"wf-short", "wf-long"}
    failing = StubKV()
    pf.kv = failing

    async def refuse(*a, **k):
        raise WorkerCallError(URL, "no")

    failing.prefetch = refuse
    pf.want(Intent(("wf-failed", "n"), ids(32), pin_ttl_s=60))
    await settle()
    assert pf.slots[("wf-failed", "n")].failures == 1
    assert pf.due(2.5) == {"wf-short", "wf-failed"}
    pf.release(("wf-short", "n"))
    assert pf.due(2.5) == {"wf-failed"}


async def test_an_unchanged_prefix_renews_its_pin_by_id_and_a_lapsed_one_is_taken_again_with_the_prefix():
    kv = StubKV(pin_id="p")
    kv.gate.set()
    pf, _ = make(kv)
    key = ("wf", "n")
    assert not pf.holds(key, True)  # nothing sent yet: the caller gives the ids
    pf.want(Intent(key, ids(40), pin_ttl_s=1))
    await settle()
    slot = pf.slots[key]
    assert kv.sent == [(40, -1)] and slot.pin == "p" and slot.sent_len == 40
    assert pf.holds(key, True) and pf.holds(key, True, (40, slot.sent_digest)) and not pf.holds(key, True, (41, 0))
    pf.want(Intent(key, None, pin_ttl_s=30))  # about to lapse (1 s TTL): renewed by its id, no prefix sent
    await settle()
    assert kv.renewed == [("p", 30)] and kv.sent == [(40, -1)] and slot.pin == "p" and slot.pinned_tokens == 40 // 16 * 16
    kv.lapsed.add("p")
    slot.pin_expires = 0.0  # due again; the worker let it go meanwhile
    pf.want(Intent(key, None, pin_ttl_s=30))
    await settle()
    assert kv.renewed == [("p", 30), ("p", 30)] and slot.pin is None and slot.failures == 0
    assert not pf.holds(key, True)  # so the next pass gives the ids again, and the pin is taken again
    pf.want(Intent(key, ids(40), pin_ttl_s=30))
    await settle()
    assert kv.sent == [(40, -1), (40, -1)] and slot.pin == "p"
