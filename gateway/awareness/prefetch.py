"""Prefetch and pin prompt prefixes on workers, bounded per worker: the executor of
agent awareness's intents (awareness.py decides what; this decides when and
where, and keeps the books).

One `Slot` per intent key — (workflow id, node), or a client-driven agent's
predicted call. A slot gets one worker when first wanted (the routing policy's
choice over every healthy worker: the same cost as dispatch) and keeps it;
`want()` hands it the newest prefix, and a prefetch is queued when that
prefix holds at least one more full block than the slot already sent, or when
its pin is about to lapse. Per worker at most `max_inflight` prefetches run at
once, nearest to execution first (steps, then age), and a worker with
`max_waiting` requests waiting (or twice `max_inflight` prefetches running, from
any replica) gets none until that drains (the next `pump_all` retries). A slot
never has two prefetches running: a newer prefix waits for the one in flight
and replaces any older one queued, so token pipelining sends its increments as
fast as the worker takes them and never builds a backlog. Every prefetch carries `-steps` as its priority.

Pins: a worker names a pin after its prefix's last block, so two slots with
the same prefix share one pin; the ledger counts holders per (worker, pin id)
and unpins when the last lets go. Renewals stop after `max_hold_s`. A slot's newer pin replaces its older one.
`release()` ends a slot: it unpins, drops what was queued, and a prefetch
still running is unpinned when it lands.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from gateway.awareness.slots import Intent, Slot, digest, token_array
from gateway.errors import WorkerCallError
from gateway.metrics import Metrics
from gateway.router.base import RoutingPolicy
from gateway.router.prompts import PromptHasher
from gateway.tasks import cancel_and_wait
from gateway.workers.kv_ops import TIERS, KVOps, PrefetchResult
from gateway.workers.pool import WorkerPool

log = logging.getLogger("agentgate.gateway.prefetch")
RENEW_BEFORE_S = 2.0  # a pin this close to lapsing on a slot still wanted is renewed
MAX_FAILURES = 3  # a slot whose prefetches failed this often stops asking


class Prefetcher:
    def __init__(self, pool: WorkerPool, policy: RoutingPolicy, hasher: PromptHasher, kv_ops: KVOps,
                 metrics: Metrics, *, max_inflight: int = 2, max_waiting: int = 4, max_hold_s: float = 600.0):
        self.pool = pool
        self.policy = policy
        self.hasher = hasher
        self.kv = kv_ops
        self.metrics = metrics
        self.max_inflight = max_inflight
        self.max_waiting = max_waiting
        self.max_hold_s = max_hold_s
        self.slots: dict[tuple[str, str], Slot] = {}
        self.inflight: dict[str, int] = {}  # url → prefetches running
        self.queues: dict[str, set[tuple[str, str]]] = {}  # url → slot keys with a wanted intent
        self.ledger: dict[tuple[str, str], set[tuple[str, str]]] = {}  # (url, pin id) → holding slots
        self.tasks: set[asyncio.Task] = set()
        self.closing = False
        self.on_change: Callable[[Slot, str, dict], None] | None = None  # (slot, "done"|"failed", detail)

    # -- intents -------------------------------------------------------------------------------
    def want(self, intent: Intent) -> Slot | None:
        """Make sure the worker of `intent.key` holds `intent.ids` (pinned for pin_ttl_s). None when
        there is no healthy worker or the prefix has no full block."""
        block = self.hasher.block_size
        if intent.ids is None:  # a renewal of what the slot sent: only a slot that holds it acts on one
            slot = self.slots.get(intent.key)
            if not self.holds(intent.key, intent.pin_ttl_s is not None):
                return slot
        elif len(intent.ids) < block:
            return self.slots.get(intent.key)
        else:
            intent = replace(intent, ids=token_array(intent.ids))
            slot = self.slots.get(intent.key)
        if slot is not None and slot.released:
            return slot
        if slot is None or not self._usable(slot.url) and not slot.running:
            url = intent.url or self._route(intent.ids, intent.salt, intent.max_tokens)
            if url is None:
                return slot
            if slot is not None:  # its worker went away: start over on the new one
                self._unhold(slot)
                self._dequeue(slot)
            slot = self.slots[intent.key] = Slot(intent.key, url)
            if intent.url is None:  # routed: the next call or prefetch with this prefix goes the same way
                self.policy.on_routed(self.hasher.route_for_ids(intent.ids, intent.salt), url)
        if not self._worth_sending(slot, intent):
            return slot
        if slot.wanted is None:
            slot.queued_at = time.monotonic()
        slot.wanted = intent
        if not slot.running:
            self.queues.setdefault(slot.url, set()).add(slot.key)
            self._pump(slot.url)
        return slot

    def holds(self, key: tuple[str, str], pinned: bool, sent: tuple[int, int] | None = None) -> bool:
        """Whether the slot of `key` can act on a renewal (an intent without ids, its prefix unchanged): it
        sent a prefix (`sent`: exactly that one, as (length, digest)) to a worker still usable and, where a pin
        is wanted, holds one, is sending, or was refused one. Otherwise the caller gives the ids again (a new
        slot, a new worker, a grown prefix, a pin to take again)."""
        slot = self.slots.get(key)
        return (slot is not None and not slot.released and slot.sent_len > 0 and self._usable(slot.url)
                and (sent is None or sent == (slot.sent_len, slot.sent_digest))
                and (not pinned or slot.pin is not None or slot.pending or slot.pin_refused))

    def _worth_sending(self, slot: Slot, intent: Intent) -> bool:
        if slot.failures >= MAX_FAILURES:
            return False
        if intent.ids is not None:
            block = self.hasher.block_size
            full = len(intent.ids) // block * block
            sent = slot.sent_len
            if len(intent.ids) < sent or digest(intent.ids[:sent]) != slot.sent_digest:
                return True  # not an extension of what was sent (rare): send it
            if full >= sent // block * block + intent.min_new_blocks * block:
                return True
        if intent.pin_ttl_s is None or slot.pin_refused:
            return False
        if slot.pin_since is not None and time.time() - slot.pin_since > self.max_hold_s:
            return False  # held long enough: let it lapse rather than hold memory for a call that never comes
        return slot.pin is None and not slot.pending or slot.pin is not None and \
            slot.pin_expires - time.monotonic() < min(RENEW_BEFORE_S, intent.pin_ttl_s / 4)

    def due(self, within_s: float) -> set[str]:
        """The workflows with a slot that wanting its prefix again would act on within `within_s`: a pin
        to renew before it lapses, or a pin to take again (a prefetch failed, or its pin lapsed). Every
        other slot waits for its prefix to grow, which only the workflow's own progress does."""
        now, wall, out = time.monotonic(), time.time(), set()
        for (owner, _), slot in self.slots.items():
            if slot.released or slot.pin_ttl_s is None or slot.pin_refused or slot.failures >= MAX_FAILURES:
                continue
            if slot.pin_since is not None and wall - slot.pin_since > self.max_hold_s:
                continue
            if slot.pin is not None and slot.pin_expires - now < within_s or slot.pin is None and not slot.pending:
                out.add(owner)
        return out

    def release(self, key: tuple[str, str]) -> Slot | None:
        """The slot's call started, or will never run: let go of its pin and queued work."""
        slot = self.slots.get(key)
        if slot is None or slot.released:
            return slot
        slot.released = True
        slot.wanted = None
        self._dequeue(slot)
        if not slot.running:
            self._unhold(slot)
        return slot

    def forget(self, key: tuple[str, str]) -> None:
        self.release(key)
        self.slots.pop(key, None)

    def forget_worker(self, url: str) -> None:
        """The worker left the pool: its pins are void (KVOps forgets them too)."""
        for (pin_url, pin_id) in [k for k in self.ledger if k[0] == url]:
            del self.ledger[(pin_url, pin_id)]
        for slot in self.slots.values():
            if slot.url == url:
                slot.pin = None
                self._dequeue(slot)
                slot.wanted = None
        self.queues.pop(url, None)
        self.kv.forget(url)

    def pump_all(self) -> None:
        """Start what waited for a busy worker to drain."""
        for url in list(self.queues):
            self._pump(url)

    async def close(self) -> None:
        self.closing = True
        await cancel_and_wait(list(self.tasks))
        unpins = [self._unpin(url, pin_id) for url, pin_id in list(self.ledger)]
        self.ledger.clear()
        await asyncio.gather(*unpins, return_exceptions=True)

    # -- routing and bounds ------------------------------------------------------------------------
    def _route(self, ids: list[int], salt: str | None = None, max_tokens: int = 0) -> str | None:
        """Where a new prefetch goes: the policy's choice, each worker's load counting the calls already
        headed there (a live slot's call follows its prefetch). Without that, the successors of one node all
        found the same idle worker, and once their prefixes sat there every later call of those roles did
        too: a whole stage of a workflow on one worker while the other idled."""
        expected: dict[str, int] = {}
        for slot in self.slots.values():
            if not slot.released:
                expected[slot.url] = expected.get(slot.url, 0) + 1
        req = replace(self.hasher.route_for_ids(ids, salt), max_tokens=max_tokens)
        views = [replace(v, in_flight=v.in_flight + expected.get(v.url, 0),
                         num_reqs=v.num_reqs + expected.get(v.url, 0))
                 for v in (w.view() for w in self.pool.healthy())]
        if not views:
            return None
        return self.policy.choose(req, views)

    def _usable(self, url: str) -> bool:
        w = self.pool.workers.get(url)
        return w is not None and w.healthy

    def _busy(self, url: str) -> bool:
        """Its queue is long, or prefetches pile up there (other replicas' too: /get_load counts them all;
        the reading is up to a health period old, hence the room above our own bound)."""
        load = self.pool.workers[url].load
        return (load.get("num_waiting_reqs", 0) >= self.max_waiting
                or load.get("num_prefetch_reqs", 0) >= 2 * self.max_inflight)

    def _dequeue(self, slot: Slot) -> None:
        queue = self.queues.get(slot.url)
        if queue is not None:
            queue.discard(slot.key)

    def _pump(self, url: str) -> None:
        queue = self.queues.get(url)
        while queue and self.inflight.get(url, 0) < self.max_inflight:
            if not self._usable(url):
                for key in queue:
                    self.slots[key].wanted = None
                queue.clear()
                return
            if self._busy(url):
                self.metrics.prefetch_deferred.inc()
                return
            key = min(queue, key=lambda k: (self.slots[k].wanted.steps, self.slots[k].queued_at))
            queue.discard(key)
            slot = self.slots[key]
            intent, slot.wanted = slot.wanted, None
            slot.running = True
            if intent.ids is not None:
                slot.sent_len, slot.sent_digest = len(intent.ids), digest(intent.ids)
            self.inflight[url] = self.inflight.get(url, 0) + 1
            task = asyncio.create_task(self._send(slot, intent), name=f"prefetch {url}")
            self.tasks.add(task)
            # The task's end — however it came, a cancel before it ran included — gives back what it held.
            task.add_done_callback(lambda t, slot=slot, url=url: self._sent(t, slot, url))

    # -- one prefetch --------------------------------------------------------------------------------
    async def _send(self, slot: Slot, intent: Intent) -> None:
        url = slot.url
        ttl = slot.pin_ttl_s = None if slot.pin_refused else intent.pin_ttl_s
        try:
            worker = self.pool.workers[url]
            if intent.ids is None:  # a renewal: the pin by its id, no prefix sent again
                if slot.pin is None or ttl is None:
                    return
                pin = await self.kv.renew(worker, slot.pin, ttl_s=ttl)
                result = PrefetchResult(slot.resident_tokens, {}, pin.pin_id)
            elif intent.pin_only:
                pin = await self.kv.pin(worker, intent.ids, ttl_s=ttl or 1.0, cache_salt=intent.salt)
                result = PrefetchResult(pin.pinned_tokens, {"l1": pin.pinned_tokens}, pin.pin_id)
            else:
                result = await self.kv.prefetch(worker, intent.ids, pin_ttl_s=ttl, priority=-intent.steps,
                                                cache_salt=intent.salt)
        except WorkerCallError as exc:
            if intent.ids is None and exc.status == 404:  # the pin lapsed there: the next pass takes it again
                self._unhold(slot)  # (its unpin finds it gone: a 404 counted as nothing released)
            else:
                self._failed(slot, intent, exc)
        except KeyError as exc:
            self._failed(slot, intent, exc)
        else:
            self._landed(slot, intent, result, ttl)

    def _sent(self, task: asyncio.Task, slot: Slot, url: str) -> None:
        self.tasks.discard(task)
        slot.running = False
        self.inflight[url] = max(self.inflight.get(url, 1) - 1, 0)
        if slot.released:
            self._unhold(slot)
        elif slot.wanted is not None:
            self.queues.setdefault(slot.url, set()).add(slot.key)
        if not task.cancelled() and task.exception() is not None:
            log.error("prefetch for %s on %s crashed", slot.key, url, exc_info=task.exception())
        if not self.closing:
            self._pump(url)

    def _landed(self, slot: Slot, intent: Intent, result: PrefetchResult, ttl: float | None) -> None:
        first = slot.prefetches == 0
        slot.prefetches += 1
        slot.resident_tokens = result.resident_tokens
        for tier in TIERS:  # later increments find the earlier ones in L1: count only what they added
            added = int(result.sources.get(tier, 0))
            if first or tier != "l1":
                slot.sources[tier] += added
                self.metrics.prefetch_tokens.inc(added, **{"from": tier})
        self.metrics.prefetches.inc(outcome="done")
        if result.pin_id is not None and ttl is not None:
            self._hold(slot, result.pin_id, result.resident_tokens, ttl)
        if not intent.pin_only and intent.ids is not None:  # a policy with a memory of what went where learns
            self.policy.on_routed(self.hasher.route_for_ids(intent.ids, intent.salt), slot.url)  # it is there now
        if self.on_change is not None:
            self.on_change(slot, "done", {"tokens": slot.sent_len, "resident_tokens": result.resident_tokens,
                                          "from": dict(result.sources), "pin_id": slot.pin,
                                          "pin_ttl_s": ttl if slot.pin else None})

    def _failed(self, slot: Slot, intent: Intent, exc: Exception) -> None:
        slot.failures += 1
        slot.error = str(exc)
        status = getattr(exc, "status", None)
        if status == 409 and intent.pin_ttl_s is not None:  # resident but the pinned share is full
            slot.pin_refused = True
        self.metrics.prefetches.inc(outcome="failed")
        log.info("prefetch for %s on %s failed: %s", slot.key, slot.url, exc)
        if self.on_change is not None:
            self.on_change(slot, "failed", {"error": str(exc), "status": status})

    # -- pins ------------------------------------------------------------------------------------------
    def _hold(self, slot: Slot, pin_id: str, tokens: int, ttl: float) -> None:
        old = slot.pin
        self.ledger.setdefault((slot.url, pin_id), set()).add(slot.key)
        slot.pin, slot.pinned_tokens = pin_id, max(tokens, 0)
        slot.pin_since = slot.pin_since or time.time()
        slot.pin_expires = time.monotonic() + ttl
        if old is not None and old != pin_id:
            self._let_go(slot.url, old, slot.key)

    def _unhold(self, slot: Slot) -> None:
        if slot.pin is None:
            return
        now = time.monotonic()
        lapsed_ago = max(now - slot.pin_expires, 0.0)  # a pin that lapsed was held only until then
        held = max(time.time() - lapsed_ago - (slot.pin_since or time.time()), 0.0)
        slot.pin_held_s += held
        self.metrics.pin_seconds.inc(held)
        self.metrics.pin_token_seconds.inc(held * slot.pinned_tokens)
        self._let_go(slot.url, slot.pin, slot.key)
        slot.pin, slot.pin_since = None, None

    def _let_go(self, url: str, pin_id: str, key: tuple[str, str]) -> None:
        holders = self.ledger.get((url, pin_id))
        if holders is None:
            return
        holders.discard(key)
        if holders:
            return
        del self.ledger[(url, pin_id)]
        task = asyncio.create_task(self._unpin(url, pin_id), name=f"unpin {url}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _unpin(self, url: str, pin_id: str) -> None:
        worker = self.pool.workers.get(url)
        if worker is None:
            return
        try:
            await self.kv.unpin(worker, pin_id)
        except WorkerCallError as exc:  # the worker's own TTL releases it anyway
            log.info("unpin %s on %s failed: %s", pin_id, url, exc)
