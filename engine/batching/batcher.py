"""Continuous batching: every step, running requests decode one token each and
waiting requests are admitted and prefilled in chunks, bounded by
max_batch_tokens. Requests join and leave the batch at any step.

Admission (`can_admit` → `admit`) locks the longest cached prefix and
allocates blocks for the rest of the prompt up front, so a prefill never
stalls half-way for memory. A prefill's full blocks go to the cache chunk by
chunk, and a waiting request whose next uncached blocks another running
prefill is computing right now waits for them instead of computing them a
second time beside it (in-batch prefix sharing, as SGLang's scheduler does):
several calls that share a long system prompt arriving together cost one
prefill of it, not several. A call never waits for a prefetch: it takes the
shared blocks over, and the prefetch resumes from the cache afterwards.
Decode growth takes one block every block_size tokens; when none is left even
after evicting cached blocks, a running request is preempted — a prefetch
first, then the lowest priority, newest first (its computed blocks go to the
cache, it re-queues at the front of its priority and resumes by prefix match).
An admission that still finds no memory takes it from the prefixes that other
queued requests hold staged (engine/runtime/staging.py): they stay cached and
evictable, so queued requests never wait for each other's staged blocks.

Priorities (SGLang's `priority`: higher runs first, 0 by default): waiting
calls are admitted highest first, a call that finds no memory preempts running
calls of lower priority, and while any call of a higher priority is present,
lower ones prefill at most `low_priority_chunk` tokens per step between them,
so a latency-critical call (a workflow resuming after a tool) never waits
behind whole chunks of other tenants' long prompts, and its decode steps stay
short.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable
from itertools import chain
from typing import Any

from engine.kvcache.pool import KVPool
from engine.kvcache.radix import RadixCache
from engine.request import Request, Status
from engine.batching.batch import ScheduledBatch, forward_tensors
from engine.batching.sharing import SHARE_MIN_TOKENS, shared_blocks, shared_in_flight
from engine.spec.base import Speculator
from engine.spec.draft import DraftLength


class Batcher:
    def __init__(self, pool: KVPool, cache: RadixCache, max_batch_tokens: int, max_running: int,
                 speculator: Speculator | None = None, max_draft: int = 0, background_chunk: int = 128,
                 max_background: int = 2, row_cost: Callable[[int], float] | None = None,
                 low_priority_chunk: int = 128, solo_batch_tokens: int = 0,
                 make_forward: Callable[[list[Request], list[tuple[Request, int]]], Any] | None = None):
        self.speculator = speculator
        # what the model runner reads for a step: by default the packed tensors the model computes on;
        # a runner without a model (engine/sim) passes its own, lighter make-up
        self.make_forward = make_forward or functools.partial(forward_tensors, pool)
        # what a step of m rows costs against one row (MatmulPlan.relative_cost): the draft length
        # is chosen to give the most tokens per unit of that cost
        self.drafts = DraftLength(max_draft if speculator is not None else 0, row_cost)
        self.pool = pool
        self.cache = cache
        self.bs = pool.block_size
        self.max_batch_tokens = max_batch_tokens
        # A prefill with no other request in the engine (nothing to delay) may take steps this long.
        self.solo_batch_tokens = max(solo_batch_tokens, max_batch_tokens)
        self.max_running = max_running
        self.waiting: deque[Request] = deque()
        self.background: deque[Request] = deque()  # prefetches, highest priority first
        self.running: list[Request] = []  # admitted, in admission order
        self.resident: list[Request] = []  # queued prefetches whose prefix is wholly cached now (take_resident)
        self.num_preemptions = 0
        # Prefetch work never delays running requests by more than one small chunk per step.
        self.background_chunk = background_chunk
        self.max_background = max_background
        # Calls below the highest priority present prefill at most this many tokens per step between them.
        self.low_priority_chunk = low_priority_chunk

    # -- queue -------------------------------------------------------------------------
    def add(self, req: Request, *, front: bool = False) -> None:
        """Queue a request behind every one of a higher priority: among its own priority last (first come,
        first served), or first with `front` (a preempted request resumes before those that came after it)."""
        queue = self.background if req.background else self.waiting
        i = 0
        while i < len(queue) and (queue[i].priority > req.priority or not front and queue[i].priority == req.priority):
            i += 1
        queue.insert(i, req)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.background)

    def holds(self, req: Request) -> bool:
        """Whether req is queued or running here (identity, not equality)."""
        return any(r is req for r in self.running) or any(r is req for r in self.queued())

    def queued(self) -> list[Request]:
        return list(self.waiting) + list(self.background)

    def remove(self, req: Request) -> None:
        """Take a request out (finished or aborted) and free or cache its blocks."""
        if req.status is Status.WAITING:
            (self.background if req.background else self.waiting).remove(req)
            self.release_staged(req)
        else:
            self.running.remove(req)
            self._cache_computed(req)
            self.cache.release(req.blocks)
            req.blocks = []
        req.status = Status.FINISHED

    def release_staged(self, req: Request) -> None:
        if req.staged:
            self.cache.release(req.staged)
            req.staged = []

    # -- one step ----------------------------------------------------------------------
    def schedule(self) -> ScheduledBatch | None:
        decodes = self._schedule_decodes()
        alone = len(self.running) + len(self.waiting) + len(self.background) == 1 and not decodes
        budget = (self.solo_batch_tokens if alone else self.max_batch_tokens) - len(decodes)
        for req in decodes:  # drafts ride along while the step has room
            req.draft = req.draft[:max(0, budget)]
            budget -= len(req.draft)
        chunks: list[tuple[Request, int]] = []
        top = max((r.priority for r in chain(self.waiting, self.running) if not r.background), default=0)
        low = self.low_priority_chunk  # what calls below `top` may prefill this step, together

        def chunk(req: Request) -> int:
            nonlocal budget, low
            n = min(len(req.fill_ids) - req.num_computed, budget if req.priority >= top else min(budget, low))
            if req.priority < top:
                low -= n
            budget -= n
            return n

        prefilling = [r for r in self.running if r.in_prefill and r not in decodes and not r.background]
        for req in sorted(prefilling, key=lambda r: -r.priority):  # continue chunked prefills first, oldest first
            if budget <= 0:
                break
            n = chunk(req)
            if n:
                chunks.append((req, n))
        for req in list(self.waiting):
            if budget <= 0 or req.priority < top and low <= 0:
                break
            if len(self.running) >= self.max_running and not self._make_room(req, 0, decodes, chunks):
                break
            if self._shared_in_flight(req, foreground_only=True):
                continue  # its prefix is being computed: admit it once that is cached
            self._yield_shared_prefetches(req, chunks)
            if not self._admit(req, self.waiting, (decodes, chunks)):
                break  # no memory: first come, first served within a priority
            chunks.append((req, chunk(req)))
        self._schedule_background(chunks, budget, busy=bool(decodes or chunks or self.waiting))
        if not decodes and not chunks:
            return None
        return self._build(decodes, chunks)

    def _schedule_background(self, chunks: list[tuple[Request, int]], budget: int, busy: bool) -> None:
        """Prefetch prefills: the whole spare budget when nothing else runs, else one
        chunk of at most background_chunk tokens, so others wait one small chunk at most."""
        if busy:
            budget = min(budget, self.background_chunk)

        def take(req: Request) -> bool:
            """Give req a chunk; whether another background chunk may follow this step."""
            nonlocal budget
            left = len(req.fill_ids) - req.num_computed
            n = left if left <= budget else budget // self.bs * self.bs  # whole blocks: stepping aside loses none
            if n == 0:
                return False
            chunks.append((req, n))
            budget -= n
            return budget > 0 and not busy

        for req in [r for r in self.running if r.background and r.in_prefill]:
            if budget <= 0 or not take(req):
                return
        for req in list(self.background):
            if (budget <= 0 or len(self.running) >= self.max_running
                    or sum(r.background for r in self.running) >= self.max_background):
                return
            if self._shared_in_flight(req, foreground_only=False):
                continue
            if self.cache.match_prefix(req.fill_ids, req.salt).num_tokens >= len(req.fill_ids) // self.bs * self.bs:
                self.resident.append(req)  # others computed it meanwhile: done without a step
                continue
            if not self._admit(req, self.background) or not take(self.running[-1]):
                return

    def take_resident(self) -> list[Request]:
        """Queued prefetches found wholly cached while scheduling: the caller finishes them."""
        out, self.resident = self.resident, []
        return out

    # -- in-batch prefix sharing (engine/batching/sharing.py) ----------------------------------
    def _shared_in_flight(self, req: Request, *, foreground_only: bool) -> bool:
        others = [r for r in self.running if r.in_prefill
                  and (not foreground_only or not r.background and r.priority >= req.priority)]
        return shared_in_flight(req, others, self.cache, self.bs)

    def _yield_shared_prefetches(self, req: Request, chunks: list[tuple[Request, int]]) -> None:
        """A call about to be admitted takes over what running prefetches would compute of its prefix:
        they step aside (their computed blocks stay cached) and resume from the cache after it."""
        for r in [r for r in self.running if r.background and r.in_prefill]:
            if any(c is r for c, _ in chunks):
                continue  # already in this step's batch
            if shared_blocks(req, r, self.bs)[1] >= SHARE_MIN_TOKENS:
                self._preempt(r)

    def _schedule_decodes(self) -> list[Request]:
        decodes = []
        for req in list(self.running):
            if req.in_prefill or req.status is not Status.RUNNING:
                continue
            # the token fed this step is at position num_computed; it needs a slot
            while req.num_computed >= len(req.blocks) * self.bs:
                if self.cache.can_allocate(1):
                    req.blocks += self.cache.allocate(1)
                    continue
                victim = self._preempt_newest(exclude=req)
                if victim is None:
                    break
                if victim in decodes:
                    decodes.remove(victim)
            if req.num_computed < len(req.blocks) * self.bs:
                decodes.append(req)
                req.draft = self._propose(req)
        return decodes

    def _propose(self, req: Request) -> list[int]:
        """Draft tokens for this step, with slots for them; never preempts for a draft."""
        k = self.drafts.next_k(req)
        draft = self.speculator.propose(req.all_ids, k) if k > 0 else []
        if draft and req.grammar is not None:  # a token the grammar rejects is never worth a row
            draft = req.grammar.valid_prefix(draft)
        end = req.num_computed + 1 + len(draft)  # tokens whose slots this step writes
        while draft and end > len(req.blocks) * self.bs:
            if not self.cache.can_allocate(1):
                draft = draft[: len(req.blocks) * self.bs - req.num_computed - 1]
                break
            req.blocks += self.cache.allocate(1)
        return draft

    def after_verify(self, req: Request, accepted: int) -> None:
        """Account for one verify step whose tokens are appended (num_computed
        advanced with them): give back the blocks that only held rejected
        drafts, and adapt the next draft length (engine/spec/draft.py)."""
        need = req.num_computed // self.bs + 1  # the next step writes at position num_computed
        if not req.finished and len(req.blocks) > need:
            surplus, req.blocks = req.blocks[need:], req.blocks[:need]
            self.cache.release(surplus)  # never cached: beyond every computed full block
        self.drafts.observe(req, len(req.draft), accepted)
        req.draft = []

    def _victims(self) -> list[Request]:
        """Running requests in the order they give way: prefetches, then the lowest priority, newest first."""
        return sorted(reversed(self.running), key=lambda r: (not r.background, r.priority))  # stable

    def _preempt_newest(self, exclude: Request) -> Request | None:
        """For `exclude`'s decode: preempt a prefetch if one runs, else the newest request of the lowest
        priority, never one of a higher priority than `exclude`."""
        for victim in self._victims():
            if victim is exclude or not victim.background and victim.priority > exclude.priority:
                continue
            self._preempt(victim)
            self.num_preemptions += 1
            return victim
        return None

    def _make_room(self, req: Request, need: int, decodes: list[Request], chunks: list[tuple[Request, int]]) -> bool:
        """For req's admission: preempt running prefetches, then calls of a lower priority than req, lowest
        and newest first, until `need` blocks can be allocated and a running slot is free; whether that
        worked. A victim decoding this step leaves `decodes`; one in this step's `chunks` stays (its rows
        are planned)."""
        def fits() -> bool:
            return self.cache.can_allocate(need) and len(self.running) < self.max_running

        for victim in self._victims():
            if fits():
                return True
            if not victim.background and victim.priority >= req.priority or any(c is victim for c, _ in chunks):
                continue
            self._preempt(victim)
            self.num_preemptions += 1
            if victim in decodes:
                decodes.remove(victim)
        return fits()

    def _preempt(self, victim: Request) -> None:
        """Back to the front of its queue; its computed blocks stay in the cache for its resumption."""
        self.running.remove(victim)
        self._cache_computed(victim)
        self.cache.release(victim.blocks)
        victim.blocks = []
        # Resume later by prefilling everything it has (prompt + output so far).
        victim.fill_ids = victim.all_ids
        victim.num_computed = 0
        victim.draft = []
        victim.status = Status.WAITING
        victim.num_preemptions += 1
        self.add(victim, front=True)

    def _admit(self, req: Request, queue: deque[Request],
               step: tuple[list[Request], list[tuple[Request, int]]] | None = None) -> bool:
        """Lock req's cached prefix and allocate the rest of its prompt; with `step` (this step's decodes
        and chunks: a call's admission), lower-priority calls give way if memory is short."""
        # Match at most len-1 tokens: the last prompt token must run to give logits.
        match = self.cache.match_prefix(req.fill_ids[:-1], req.salt)
        need = -(-len(req.fill_ids) // self.bs) - len(match.blocks)
        self.cache.lock(match.blocks)  # lock first, so eviction below cannot take them
        if not self.cache.can_allocate(need) and (step is None or not self._make_room(req, need, *step)) \
                and not self._unstage_for(req, need):
            self.cache.release(match.blocks)
            return False
        req.blocks = match.blocks + self.cache.allocate(need)
        self.release_staged(req)  # the match holds them now
        req.num_computed = match.num_tokens
        if req.num_preemptions == 0:
            req.cached_tokens = match.num_tokens
        queue.remove(req)
        req.status = Status.RUNNING
        self.running.append(req)
        return True

    def _unstage_for(self, req: Request, need: int) -> bool:
        """For req's admission: let go of the prefixes that queued requests hold staged (prefetches, then
        the lowest priority, newest first) until `need` blocks can be allocated; whether they can. The
        blocks stay in the cache, evictable, and a request that let go matches what is left when admitted.
        Without this, queued requests whose staged prefixes fill the pool wait for each other forever."""
        queued = [*reversed(self.background), *sorted(reversed(self.waiting), key=lambda r: r.priority)]
        for other in queued:
            if self.cache.can_allocate(need):
                return True
            if other is not req and other.staged:
                self.release_staged(other)
        return self.cache.can_allocate(need)

    def _cache_computed(self, req: Request) -> None:
        """Give the cache every full block whose K/V is computed (the fill ids
        are a prefix of all_ids, so all_ids covers prefill and decode alike).
        insert() may swap duplicates in req.blocks for the cached blocks."""
        full = min(req.num_computed, len(req.all_ids)) // self.bs * self.bs
        if full:
            self.cache.insert(req.all_ids[:full], req.blocks, req.salt)

    def on_prefill_chunk(self, req: Request) -> None:
        """Another chunk of the prompt is computed: share its full blocks with later requests now
        (before the whole prompt is done, so requests waiting on a shared prefix can start)."""
        self._cache_computed(req)

    # -- batch construction ---------------------------------------------------------------
    def _build(self, decodes: list[Request], chunks: list[tuple[Request, int]]) -> ScheduledBatch:
        # a decode samples its last token's row, a verify every row (that token + its drafts); a prompt
        # chunk samples only when it is the prompt's last (its final row gives the next token)
        sampled = [(req, 1 + len(req.draft)) for req in decodes]
        sampled += [(req, 1) for req, n in chunks if req.num_computed + n == len(req.fill_ids)]
        return ScheduledBatch(self.make_forward(decodes, chunks), sampled, chunks, decodes)

    # -- accounting --------------------------------------------------------------------------
    def blocks_in_use(self) -> int:
        return self.pool.num_blocks - self.pool.num_free - self.cache.num_evictable()
