"""Request priorities in the scheduler (SGLang's `priority`: higher first): admission order, the
per-step prefill cap on lower priorities, preemption for memory, and what a worker does with
the field over HTTP. The scheduler runs on a real pool and radix cache; no model is needed to
see what each step would compute."""

from __future__ import annotations

import torch

from engine.kvcache.pool import KVPool
from engine.kvcache.radix import RadixCache
from engine.request import Request, SamplingParams, Status
from engine.batching.batcher import Batcher

BS = 16


def scheduler(blocks: int = 256, max_batch_tokens: int = 1024, low_chunk: int = 64, solo: int = 0) -> Batcher:
    pool = KVPool(blocks, BS, num_layers=1, num_kv_heads=1, head_dim=2, dtype=torch.float32, device="cpu")
    return Batcher(pool, RadixCache(pool), max_batch_tokens, max_running=64, low_priority_chunk=low_chunk,
                     solo_batch_tokens=solo)


def request(rid: str, n: int, priority: int = 0, first: int = 0) -> Request:
    return Request(rid=rid, prompt_ids=[first + i for i in range(n)], params=SamplingParams(max_new_tokens=4),
                   priority=priority)


def step(s: Batcher) -> list[tuple[str, int]]:
    """Schedule one step and account its prefill chunks as computed (a finished prefill samples a
    token, as the engine does); (rid, tokens) per chunk."""
    batch = s.schedule()
    if batch is None:
        return []
    for req, n in batch.chunks:
        req.num_computed += n
        s.on_prefill_chunk(req)
        if not req.in_prefill:
            req.output_ids.append(7)
    return [(r.rid, n) for r, n in batch.chunks]


def test_a_higher_priority_call_is_admitted_first_and_lower_ones_prefill_a_small_chunk_beside_it():
    s = scheduler()
    s.add(request("tenant-1", 800))
    s.add(request("tenant-2", 800, first=1000))
    s.add(request("workflow", 100, priority=1, first=5000))
    assert [r.rid for r in s.waiting] == ["workflow", "tenant-1", "tenant-2"]
    assert step(s) == [("workflow", 100), ("tenant-1", 64)]  # the tenants share 64 tokens, not 924
    # the workflow call decodes now (still present): the tenants stay capped
    assert step(s) == [("tenant-1", 64)]
    s.remove(s.running[0])  # the workflow call finished
    assert step(s) == [("tenant-1", 800 - 128), ("tenant-2", 1024 - 672)]  # alone again: the whole budget


def test_equal_priorities_keep_first_come_first_served_and_the_whole_budget():
    s = scheduler()
    for i, p in enumerate([2, 2, 2]):
        s.add(request(f"r{i}", 400, priority=p, first=1000 * i))
    assert step(s) == [("r0", 400), ("r1", 400), ("r2", 224)]


def test_a_call_that_finds_no_memory_preempts_the_newest_lower_priority_one():
    s = scheduler(blocks=64, max_batch_tokens=2048)  # 1024 tokens of KV
    s.add(request("old", 480))
    s.add(request("new", 480, first=1000))
    assert step(s) == [("old", 480), ("new", 480)]
    s.add(request("waiting", 300, first=3000))  # same priority as the running ones: waits for memory
    s.add(request("urgent", 300, priority=5, first=2000))
    assert step(s) == [("urgent", 300)]
    assert s.num_preemptions == 1 and [r.rid for r in s.running] == ["old", "urgent"]
    preempted = s.waiting[0]
    assert preempted.rid == "new" and preempted.status is Status.WAITING and preempted.num_preemptions == 1
    assert [r.rid for r in s.waiting] == ["new", "waiting"]  # back in front of its priority


def test_a_call_never_preempts_one_of_its_own_or_a_higher_priority_for_memory():
    s = scheduler(blocks=64, max_batch_tokens=2048)
    s.add(request("high", 960, priority=3))
    assert step(s) == [("high", 960)]
    s.add(request("low", 300, first=2000))
    s.add(request("same", 300, priority=3, first=4000))
    assert step(s) == [] and s.num_preemptions == 0
    assert [r.rid for r in s.running] == ["high"] and [r.rid for r in s.waiting] == ["same", "low"]


def test_decode_growth_preempts_a_lower_priority_request_not_a_higher_one():
    s = scheduler(blocks=4, max_batch_tokens=256)  # 64 tokens of KV
    s.add(request("high", BS * 2, priority=1))
    s.add(request("low", BS * 2, first=500))
    assert step(s) == [("high", 32), ("low", 32)]  # both prefilled, the pool full: each next token needs a block
    s.schedule()
    assert s.num_preemptions == 1 and [r.rid for r in s.running] == ["high"]
    assert [r.rid for r in s.waiting] == ["low"]


def test_a_lower_priority_decode_does_not_preempt_a_higher_one():
    s = scheduler(blocks=4, max_batch_tokens=256)
    s.add(request("high", BS * 2 - 1, priority=1))  # room for its first decode token in its last block
    s.add(request("low", BS * 2, first=500))
    step(s)
    batch = s.schedule()
    assert s.num_preemptions == 0 and [r.rid for r in batch.decodes] == ["high"]  # low waits for a block


def test_a_call_that_finds_no_memory_preempts_a_running_prefetch_whatever_its_own_priority():
    s = scheduler(blocks=64, max_batch_tokens=512)
    prefetch = Request(rid="prefetch", prompt_ids=list(range(960)), params=SamplingParams(max_new_tokens=0),
                       background=True, priority=-1)
    s.add(prefetch)
    assert step(s) == [("prefetch", 512)]  # nothing else runs: the whole budget; it holds 60 of 64 blocks
    s.add(request("call", 300, priority=-5, first=2000))
    assert step(s) == [("call", 300)]  # the prefetch gave way; its 32 computed blocks stay cached
    assert [r.rid for r in s.running] == ["call"] and list(s.background) == [prefetch]
    assert s.cache.match_prefix(prefetch.prompt_ids, None).num_tokens == 512


def test_a_call_waits_for_a_prefill_of_its_prefix_of_its_own_priority_but_not_for_a_lower_one():
    for priority, want in ((0, [("tenant", 188)]),  # shares the blocks being computed: waits a step
                           (1, [("tenant", 32), ("workflow", 88)])):  # the tenant crawls: computes them itself
        s = scheduler(max_batch_tokens=512, low_chunk=32)
        s.add(request("tenant", 700))
        assert step(s) == [("tenant", 512)]
        s.add(request("workflow", 600, priority=priority))  # the tenant's first 600 tokens
        assert step(s) == want, priority


def test_the_default_step_is_short_on_a_cpu_and_sglang_sized_on_a_gpu():
    from engine.config import default_batch_tokens

    assert default_batch_tokens("cpu", 1) == (256, 2048) and default_batch_tokens("cpu", 2) == (512, 2048)
    assert default_batch_tokens("cuda:0", 2) == (2048, 2048)


def test_a_prefill_alone_in_the_engine_takes_the_long_step_and_shortens_once_another_request_comes():
    s = scheduler(max_batch_tokens=256, solo=2048)
    s.add(request("long", 3000))
    assert step(s) == [("long", 2048)]  # nobody to delay
    s.add(request("short", 40, first=5000))
    assert step(s) == [("long", 256)]  # someone waits: short steps again


def test_with_no_chunk_for_busy_steps_a_prefetch_computes_only_in_steps_nothing_else_needs():
    pool = KVPool(256, BS, num_layers=1, num_kv_heads=1, head_dim=2, dtype=torch.float32, device="cpu")
    s = Batcher(pool, RadixCache(pool), 1024, max_running=64, background_chunk=0)  # the CPU default
    call = request("call", 40)
    s.add(call)
    s.add(Request(rid="prefetch", prompt_ids=list(range(1000, 1200)), params=SamplingParams(max_new_tokens=0),
                  background=True, priority=-1))
    assert step(s) == [("call", 40)]  # the call's prefill: the prefetch waits
    for _ in range(3):  # the call decodes: steps that carry no prefetch chunk at all
        batch = s.schedule()
        assert [r.rid for r in batch.decodes] == ["call"] and batch.chunks == []
        call.num_computed += 1
        call.output_ids.append(7)
    s.remove(call)
    assert step(s) == [("prefetch", 200)]  # idle: the whole budget


def staged(s: Batcher, req: Request, blocks: int) -> None:
    """What staging does for a request whose prefix comes up from L2/L3: the prefix's blocks are in the
    cache, locked by the request while it waits (req.staged)."""
    ids = req.fill_ids[:blocks * BS]
    table = s.cache.allocate(blocks)
    s.cache.insert(ids, table)
    s.cache.release(table)
    match = s.cache.match_prefix(ids)
    s.cache.lock(match.blocks)
    req.staged = list(match.blocks)


def test_queued_requests_whose_staged_prefixes_fill_the_pool_do_not_wait_for_each_other_forever():
    """Two calls wait with their prefixes staged, five of the pool's ten blocks each, nothing runs: the first
    needs three more blocks. The second lets go of its staged prefix (it stays cached, evictable), the first
    is admitted; the second is admitted once the first is done, recomputing what was evicted for it."""
    s = scheduler(blocks=10)
    first, second = request("first", 8 * BS - 1), request("second", 8 * BS - 1, first=1000)
    for req in (first, second):
        s.add(req)
        staged(s, req, 5)
    assert s.cache.available() == 0
    assert step(s) == [("first", 8 * BS - 1 - 5 * BS)]  # its staged five blocks matched, three allocated
    assert second.staged == [] and second.status is Status.WAITING and first.cached_tokens == 5 * BS
    s.remove(first)
    # the first's three blocks were evicted from the end of the second's prefix: two of its blocks are left
    assert step(s) == [("second", 8 * BS - 1 - 2 * BS)] and second.cached_tokens == 2 * BS
