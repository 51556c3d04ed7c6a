"""RadixCache over a tiny KVPool (no model): match, insert, lock/release,
LRU eviction leaves-first, events, flush and allocation accounting."""

from __future__ import annotations

import pytest
import torch

import engine.kvcache.radix as radix_module
from common.hashing import block_hashes
from engine.kvcache.pool import KVPool
from engine.kvcache.radix import OutOfBlocks, RadixCache

BS = 4


def make_cache(num_blocks: int = 12, enabled: bool = True) -> RadixCache:
    pool = KVPool(num_blocks, BS, num_layers=1, num_kv_heads=1, head_dim=2, dtype=torch.float32)
    return RadixCache(pool, enabled=enabled)


def blocks_for(n_tokens: int) -> int:
    return -(-n_tokens // BS)


def compute(cache: RadixCache, tokens: list[int], salt: str | None = None) -> list[int]:
    """What a request does: allocate its blocks, compute KV (nothing here), insert.
    The blocks stay referenced, as a running request's are."""
    blocks = cache.allocate(blocks_for(len(tokens)))
    cache.insert(tokens, blocks, salt)
    return blocks


def cache_sequence(cache: RadixCache, tokens: list[int], salt: str | None = None) -> list[int]:
    """A request that ran and finished: its full blocks stay cached, unreferenced."""
    blocks = compute(cache, tokens, salt)
    cache.release(blocks)
    return blocks


def seq(first: int, n_blocks: int, extra: int = 0) -> list[int]:
    return list(range(first, first + n_blocks * BS + extra))


# -- match / insert ------------------------------------------------------------------------------
def test_empty_cache_matches_nothing():
    cache = make_cache()
    m = cache.match_prefix(seq(0, 3))
    assert (m.blocks, m.hashes, m.num_tokens) == ([], [], 0)


def test_insert_then_match_longest_block_aligned_prefix():
    cache = make_cache()
    tokens = seq(100, 2, extra=2)  # two full blocks and a partial one
    blocks = cache.allocate(3)
    assert cache.insert(tokens, blocks) == 2  # the partial block is not cached
    assert cache.num_cached_blocks == 2
    m = cache.match_prefix(tokens)
    assert m.blocks == blocks[:2]
    assert m.hashes == block_hashes(tokens, BS)
    assert m.num_tokens == 2 * BS
    assert cache.match_prefix(tokens[:2 * BS - 1]).blocks == blocks[:1]  # block 2 not complete in the query
    diverged = tokens[:BS] + [0] * BS
    assert cache.match_prefix(diverged).blocks == blocks[:1]
    assert cache.match_prefix([0] + tokens[1:]).blocks == []  # first block differs: nothing
    assert cache.insert(tokens, blocks) == 0  # already cached
    assert cache.is_cached(blocks[0]) and not cache.is_cached(blocks[2])


def test_salt_isolates_tenants():
    cache = make_cache()
    tokens = seq(0, 2)
    blocks = compute(cache, tokens, salt="tenant-a")
    assert cache.match_prefix(tokens, salt="tenant-a").blocks == blocks
    assert cache.match_prefix(tokens, salt="tenant-b").blocks == []
    assert cache.match_prefix(tokens).blocks == []


def test_disabled_cache_never_matches_and_frees_on_release():
    cache = make_cache(num_blocks=4, enabled=False)
    tokens = seq(0, 2)
    blocks = cache.allocate(2)
    assert cache.insert(tokens, blocks) == 0
    assert cache.match_prefix(tokens).num_tokens == 0
    cache.release(blocks)
    assert cache.pool.num_free == 4
    assert cache.num_evictable() == 0


def test_a_hash_collision_is_never_served(monkeypatch):
    # Force every block at position i of any sequence to share one hash.
    monkeypatch.setattr(radix_module, "block_hashes",
                        lambda ids, bs, salt=None: list(range(1, len(ids) // bs + 1)))
    cache = make_cache()
    first = compute(cache, seq(0, 2))
    other = seq(50, 2)
    assert cache.match_prefix(other).blocks == []
    assert cache.match_prefix(seq(0, 2)).blocks == first
    second = cache.allocate(2)
    assert cache.insert(other, second) == 0  # the colliding blocks are not adopted


# -- reference counting ------------------------------------------------------------------------
def test_release_makes_cached_blocks_evictable_and_frees_uncached_ones():
    cache = make_cache(num_blocks=12)
    tokens = seq(0, 2, extra=1)
    blocks = compute(cache, tokens)  # 3 blocks, 2 cached
    assert cache.num_evictable() == 0
    assert cache.available() == 9
    cache.release(blocks)
    assert cache.num_evictable() == 2
    assert cache.pool.num_free == 10  # the partial block went back to the free list
    assert cache.available() == 12


def test_lock_pins_matched_blocks_until_release():
    cache = make_cache(num_blocks=12)
    tokens = seq(0, 2)
    cache_sequence(cache, tokens)
    m = cache.match_prefix(tokens)
    cache.lock(m.blocks)
    assert cache.num_evictable() == 0
    assert all(cache.pool.ref[b] == 1 for b in m.blocks)
    assert cache.evict(5) == 0
    cache.lock(m.blocks)  # a second request shares them
    cache.release(m.blocks)
    assert cache.num_evictable() == 0  # still held by one request
    cache.release(m.blocks)
    assert cache.num_evictable() == 2
    assert cache.match_prefix(tokens).blocks == m.blocks


# -- eviction ------------------------------------------------------------------------------------
def _drain_removed(cache: RadixCache) -> list[int]:
    return [h for e in cache.events.take_events() if e.op == "removed" for h in e.block_hashes]


def test_evict_takes_least_recently_released_leaves_first():
    cache = make_cache()
    a, b, c = seq(0, 1), seq(100, 1), seq(200, 1)
    for tokens in (b, a, c):
        cache_sequence(cache, tokens)
    # A request reuses b: it becomes the most recently used.
    m = cache.match_prefix(b)
    cache.lock(m.blocks)
    cache.release(m.blocks)
    cache.events.take_events()
    order = []
    for _ in range(3):
        assert cache.evict(1) == 1
        order += _drain_removed(cache)
    assert order == [block_hashes(t, BS)[0] for t in (a, c, b)]
    assert cache.evict(1) == 0
    assert cache.num_cached_blocks == 0
    assert cache.pool.num_free == cache.pool.num_blocks


def test_a_parent_is_evicted_only_after_its_children():
    cache = make_cache()
    chain = seq(0, 3)
    cache_sequence(cache, chain)
    hashes = block_hashes(chain, BS)
    assert cache.num_evictable() == 3  # reclaimable by evicting leaves repeatedly
    cache.events.take_events()
    for expected in reversed(hashes):
        assert cache.evict(1) == 1
        assert _drain_removed(cache) == [expected]


def test_a_shared_parent_outlives_both_branches():
    cache = make_cache()
    shared = seq(0, 1)
    left, right = shared + [1] * BS, shared + [2] * BS
    cache_sequence(cache, left)
    cache_sequence(cache, right)
    assert cache.num_cached_blocks == 3
    cache.events.take_events()
    assert cache.evict(2) == 2
    removed = _drain_removed(cache)
    assert set(removed) == {block_hashes(left, BS)[1], block_hashes(right, BS)[1]}
    assert cache.match_prefix(shared).num_tokens == BS  # the parent is still there
    assert cache.evict(1) == 1
    assert _drain_removed(cache) == block_hashes(shared, BS)


def test_an_orphaned_parent_goes_before_younger_leaves():
    cache = make_cache()
    old, young = seq(0, 2), seq(100, 1)
    cache_sequence(cache, old)
    cache_sequence(cache, young)
    cache.events.take_events()
    for _ in range(3):
        cache.evict(1)
    assert _drain_removed(cache) == block_hashes(old, BS)[::-1] + block_hashes(young, BS)


def test_allocate_evicts_cached_blocks_when_the_free_list_runs_short():
    cache = make_cache(num_blocks=4)
    chain = seq(0, 3)
    cache_sequence(cache, chain)
    assert cache.pool.num_free == 1 and cache.available() == 4
    got = cache.allocate(3)
    assert len(got) == 3
    # The two deepest blocks were evicted; the chain's root block survives.
    assert cache.match_prefix(chain).num_tokens == BS
    assert cache.num_cached_blocks == 1
    assert cache.available() == 1


def test_allocate_raises_out_of_blocks_when_nothing_is_evictable():
    cache = make_cache(num_blocks=4)
    held = compute(cache, seq(0, 3))  # cached but still referenced
    assert cache.available() == 1
    with pytest.raises(OutOfBlocks):
        cache.allocate(2)
    assert cache.pool.num_free == 1  # nothing was taken or evicted by the failed call
    assert cache.num_cached_blocks == 3
    assert not cache.can_allocate(2)
    cache.release(held)
    assert cache.can_allocate(4)
    assert len(cache.allocate(4)) == 4


def test_available_blocks_can_all_be_allocated_after_duplicate_prefix_inserts():
    # Two requests sharing a prefix are admitted in the same step, so neither
    # matches the other in the cache: both compute the prefix into their own
    # blocks. The first to insert owns the prefix nodes; the second's diverging
    # block is inserted as a child of the first's last prefix node while the
    # second still holds it. Then the first finishes.
    cache = make_cache(num_blocks=10)
    prefix = seq(0, 2)
    first = compute(cache, prefix + [1] * BS)
    second = compute(cache, prefix + [2] * BS)
    cache.release(first)
    promised = cache.available()
    # Everything available() promises must be allocatable: the scheduler
    # checks can_allocate() and then calls allocate() without a fallback.
    assert cache.can_allocate(promised)
    got = cache.allocate(promised)
    assert len(got) == promised
    cache.release(second)


# -- events --------------------------------------------------------------------------------------
def test_events_record_stores_with_parent_removals_and_clears():
    cache = make_cache()
    base = seq(0, 2)
    blocks = compute(cache, base)
    longer = base + list(range(500, 500 + BS))
    cache.release(blocks)
    m = cache.match_prefix(longer)
    cache.lock(m.blocks)
    extra = cache.allocate(1)
    cache.insert(longer, m.blocks + extra)
    cache.release(m.blocks + extra)
    h = block_hashes(longer, BS)

    events = cache.events.take_events()
    assert [e.op for e in events] == ["stored", "stored"]
    assert events[0].block_hashes == tuple(h[:2]) and events[0].parent_hash is None
    assert events[0].token_ids == tuple(base)
    assert events[1].block_hashes == (h[2],) and events[1].parent_hash == h[1]
    assert events[1].token_ids == tuple(longer[2 * BS:])
    assert cache.events.take_events() == []  # drained

    cache.evict(1)
    (removed,) = cache.events.take_events()
    assert removed.op == "removed" and removed.block_hashes == (h[2],)

    assert cache.flush()
    (cleared,) = cache.events.take_events()
    assert cleared.op == "cleared" and cleared.block_hashes == ()


def test_salted_store_event_carries_salted_hashes():
    cache = make_cache()
    tokens = seq(0, 2)
    compute(cache, tokens, salt="t")
    (event,) = cache.events.take_events()
    assert list(event.block_hashes) == block_hashes(tokens, BS, salt="t")


# -- maintenance ---------------------------------------------------------------------------------
def test_flush_is_refused_while_blocks_are_referenced():
    cache = make_cache(num_blocks=6)
    tokens = seq(0, 2)
    blocks = compute(cache, tokens)
    assert cache.flush() is False
    assert cache.num_cached_blocks == 2
    assert cache.match_prefix(tokens).blocks == blocks
    assert all(e.op != "cleared" for e in cache.events.take_events())
    cache.release(blocks)
    assert cache.flush() is True
    assert cache.num_cached_blocks == 0
    assert cache.num_evictable() == 0
    assert cache.pool.num_free == 6
    assert cache.match_prefix(tokens).num_tokens == 0


def test_snapshot_lists_parents_before_children():
    cache = make_cache()
    shared = seq(0, 1)
    cache_sequence(cache, shared + [1] * BS + [3] * BS)
    cache_sequence(cache, shared + [2] * BS)
    snap = cache.snapshot()
    assert len(snap) == 4
    seen = set()
    for h, parent in snap:
        assert parent is None or parent in seen
        seen.add(h)
