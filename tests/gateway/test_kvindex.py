"""KVIndex (pure data) and its use as kv_aware's PrefixSource: events set holdings, lookups
count the leading run per worker and per tier, L3 stores are shared, credit is tier-weighted."""

from __future__ import annotations

import random

import pytest

from common.hashing import block_hashes
from gateway.router.prefix_source import IndexPrefixSource, TierCredit
from gateway.kvindex.index import KVIndex, PrefixMatch
from gateway.router.base import RouteRequest, WorkerView
from gateway.router.policies.kv_aware import KVAwarePolicy
from gateway.router.prefix_record import PrefixRecord

A, B, C = "http://a", "http://b", "http://c"


def index_with(*workers: tuple[str, str]) -> KVIndex:
    index = KVIndex()
    for url, store in workers:
        index.set_worker(url, store)
        index.set_covered(url, True)
    return index


def test_longest_prefix_counts_the_leading_run_per_worker():
    index = index_with((A, ""), (B, ""))
    index.apply(A, "", "stored", "l1", [1, 2, 3, 4])
    index.apply(B, "", "stored", "l1", [1, 2])
    index.apply(B, "", "stored", "l1", [4])  # a hole at 3: the run stops there
    assert index.longest_prefix([1, 2, 3, 4, 5]) == {A: PrefixMatch(4, 4, 0, 0), B: PrefixMatch(2, 2, 0, 0)}
    assert index.longest_prefix([9, 1, 2]) == {}
    index.apply(A, "", "removed", "l1", [2])
    assert index.longest_prefix([1, 2, 3])[A] == PrefixMatch(1, 1, 0, 0)
    index.apply(A, "", "cleared", "l1", [])
    assert A not in index.longest_prefix([1]) and index.worker_blocks(A, "l1") == set()
    assert index.worker_blocks(B, "l1") == {1, 2, 4}


def test_each_block_counts_in_its_fastest_tier():
    index = index_with((A, "dir:/s"))
    index.apply(A, "dir:/s", "stored", "l3", [1, 2, 3, 4])
    index.apply(A, "dir:/s", "stored", "l2", [2, 3])
    index.apply(A, "dir:/s", "stored", "l1", [1])
    assert index.longest_prefix([1, 2, 3, 4, 5])[A] == PrefixMatch(4, 1, 2, 1)
    index.apply(A, "dir:/s", "removed", "l2", [3])  # still in L3
    assert index.longest_prefix([1, 2, 3, 4])[A] == PrefixMatch(4, 1, 1, 2)
    index.apply(A, "dir:/s", "removed", "l3", [3])
    assert index.longest_prefix([1, 2, 3, 4])[A] == PrefixMatch(2, 1, 1, 0)


def test_an_l3_store_serves_every_live_worker_that_shares_it():
    index = index_with((A, "dir:/s"), (B, "dir:/s"), (C, "dir:/other"))
    index.apply(A, "dir:/s", "stored", "l3", [1, 2, 3])  # A wrote them; the store holds them
    index.apply(B, "dir:/s", "stored", "l1", [1])
    got = index.longest_prefix([1, 2, 3])
    assert got == {A: PrefixMatch(3, 0, 0, 3), B: PrefixMatch(3, 1, 0, 2)}
    assert index.worker_blocks(B, "l3") == {1, 2, 3} and index.worker_blocks(C, "l3") == set()
    index.drop_worker(A)  # the store stays while B shares it
    assert index.longest_prefix([1, 2, 3]) == {B: PrefixMatch(3, 1, 0, 2)}
    index.drop_worker(B)  # nobody shares it: forgotten
    assert index.store_blocks("dir:/s") == set() and index.longest_prefix([1]) == {}
    index.apply(C, "", "stored", "l3", [5])  # an L3 event without a store id means nothing
    assert index.longest_prefix([5]) == {}


def test_replace_worker_sets_holdings_exactly_and_drop_forgets():
    index = index_with((A, ""))
    index.apply(A, "", "stored", "l1", [1, 2, 3])
    index.replace_worker(A, [7, 8], [9])
    assert index.worker_blocks(A, "l1") == {7, 8} and index.worker_blocks(A, "l2") == {9}
    assert index.longest_prefix([1]) == {}
    assert index.covers(A)
    index.drop_worker(A)
    assert not index.covers(A) and index.longest_prefix([7]) == {} and index.stats()["blocks"] == 0
    index.apply(A, "", "stored", "l1", [1])  # events of a worker not (yet) known are not indexed
    assert index.longest_prefix([1]) == {}


def test_index_credit_and_fallback_in_kv_aware_routing():
    index = index_with((A, "dir:/s"), (B, "dir:/s"))
    policy = KVAwarePolicy()
    policy.use_prefix_source(IndexPrefixSource(index, policy.record, TierCredit(l2=0.5, l3=0.25)))
    ids = list(range(1000, 1160))  # 10 blocks
    hashes = block_hashes(ids, 16)
    req = RouteRequest(prompt_tokens=len(ids), block_hashes=tuple(hashes))
    index.apply(A, "dir:/s", "stored", "l3", hashes)
    index.apply(B, "dir:/s", "stored", "l2", hashes[:8])
    assert policy.prefix.matched_blocks(req.block_hashes, A) == pytest.approx(10 * 0.25)
    assert policy.prefix.matched_blocks(req.block_hashes, B) == pytest.approx(8 * 0.5 + 2 * 0.25)
    views = [WorkerView(A), WorkerView(B), WorkerView(C)]
    assert policy.choose(req, views) == B
    index.apply(A, "dir:/s", "stored", "l1", hashes)
    assert policy.choose(req, views) == A  # the cached lookup saw the index change
    # C publishes nothing: the gateway's own record of what it sent there decides for C.
    policy.record.add(hashes, C)
    assert not index.covers(C)
    assert policy.prefix.matched_blocks(req.block_hashes, C) == 10
    with pytest.raises(ValueError):
        TierCredit(l2=1.5)


def test_a_prefix_sent_moments_ago_counts_until_the_index_has_it():
    """The index learns a prefix once it is computed; meanwhile a second call sharing a prefix that is
    being prefilled on A goes to A too (computed once there), not to idle B."""
    index = index_with((A, ""), (B, ""))
    now = [100.0]
    policy = KVAwarePolicy()
    policy.record = PrefixRecord(clock=lambda: now[0])
    policy.use_prefix_source(IndexPrefixSource(index, policy.record, recent_s=30.0))
    hashes = block_hashes(list(range(3000, 3320)), 16)  # 20 blocks
    req = RouteRequest(prompt_tokens=320, block_hashes=tuple(hashes))
    policy.on_routed(req, A)
    assert index.longest_prefix(hashes) == {}
    assert policy.prefix.matched_blocks(req.block_hashes, A) == 20
    assert policy.choose(req, [WorkerView(A, in_flight=1), WorkerView(B)]) == A
    now[0] += 31  # long enough ago: only the index speaks, and it says nothing
    assert policy.prefix.matched_blocks(req.block_hashes, A) == 0
    assert policy.choose(req, [WorkerView(A, in_flight=1), WorkerView(B)]) == B
    index.apply(B, "", "stored", "l2", hashes[:10])  # where the index has more, the index wins
    policy.on_routed(RouteRequest(prompt_tokens=64, block_hashes=tuple(hashes[:4])), B)
    assert policy.prefix.matched_blocks(req.block_hashes, B) == pytest.approx(10 * 0.98)
    off = IndexPrefixSource(index, policy.record, recent_s=0)
    policy.on_routed(req, A)
    assert off.matched_blocks(req.block_hashes, A) == 0


def test_lookup_in_a_10k_block_index_finds_every_workers_run_by_tier():
    """125-block chains (2,000 tokens) against 8 workers holding 10k+ blocks between them; the odd ones
    share an L3 store. (How fast a look-up is: scripts/bench_kv.py, "index look-up".)"""
    rng = random.Random(0)
    index = index_with(*[(f"http://w{i}", "dir:/s" if i % 2 else "") for i in range(8)])
    chains = [[rng.getrandbits(63) for _ in range(125)] for _ in range(80)]
    for n, chain in enumerate(chains):
        url = f"http://w{n % 8}"
        index.apply(url, "", "stored", "l1", chain[:100])
        index.apply(url, "", "stored", "l2", chain[100:])
        index.apply(url, "dir:/s", "stored", "l3", chain[:50])
    assert index.stats()["blocks"] == 10_000
    for n, chain in enumerate(chains):
        owner = f"http://w{n % 8}"
        want = {f"http://w{i}": PrefixMatch(50, 0, 0, 50) for i in range(1, 8, 2)}  # the shared store's 50
        want[owner] = PrefixMatch(125, 100, 25, 0)  # its own copy in L1 and L2 comes first
        assert index.longest_prefix(chain) == want
    assert index.longest_prefix([rng.getrandbits(63)] + chains[0]) == {}  # a run starts at the first block