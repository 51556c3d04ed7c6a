"""KV tiers inside the running engine (fp32, greedy): a prefix evicted from L1
comes back from L2, a prefix one engine computed comes back from L3 in
another, both with exactly the tokens of a plain run; pins hold blocks under
memory pressure and lapse with their TTL; tenants' salts keep their caches
apart; prefetch computes, promotes and is idempotent; nothing leaks."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from common.errors import ConflictError
from common.hashing import block_hashes
from engine.kvcache.store import decode_block
from tests.support import generate, greedy, submit, wait_idle

pytestmark = pytest.mark.slow

POOL_TOKENS = 1024  # 64 blocks: three ~360-token prompts overflow it
NEW = 6


def text(topic: str, n: int = 40) -> str:
    return f"<|im_start|>user\nTell me about {topic}. " + f"Some background on {topic} follows. " * n


@pytest.fixture(scope="module")
def l3_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("l3")


@pytest.fixture(scope="module")
def engine_a(make_engine, l3_dir):
    """Small L1, an L2 of 256 blocks, L3 in a temp dir."""
    # prefetch chunks ride along other requests' steps (the GPU default), so exactness is tested on that path
    return make_engine(kv_pool_tokens=POOL_TOKENS, l2_blocks=256, l3=f"dir:{l3_dir}", max_pinned_fraction=0.5,
                       prefetch_chunk_tokens=128)


@pytest.fixture(scope="module")
def engine_b(make_engine, l3_dir):
    """Another worker sharing engine_a's L3, without an L2."""
    return make_engine(kv_pool_tokens=POOL_TOKENS, l2_blocks=0, l3=f"dir:{l3_dir}")


@pytest.fixture(scope="module")
def reference(engine_fp32):
    """Plain runs (nothing cached for these prompts) on the session's engine."""
    cache: dict[tuple, list[int]] = {}

    def run(ids: list[int]) -> list[int]:
        key = tuple(ids)
        if key not in cache:
            cache[key] = generate(engine_fp32, [ids], greedy(NEW))[0].output_ids
        return cache[key]

    return run


def run(engine, ids, **kw):
    w = submit(engine, ids, greedy(NEW), **kw)
    out = w.wait()
    return out, w.steps[-1].tier_tokens


def flood(engine, tokenizer, tag: str, n: int = 3) -> None:
    """Unrelated prompts that need the whole L1 pool between them."""
    for i in range(n):
        generate(engine, [tokenizer.encode(text(f"{tag} subject {i}"))], greedy(1))


def l1_resident(engine, ids, salt=None) -> int:
    return engine.call(lambda: engine.cache.match_prefix(ids, salt).num_tokens).result(60)


def test_l1_eviction_then_l2_hit_is_exact(engine_a, tokenizer, reference):
    ids = tokenizer.encode(text("the Roman aqueducts"))
    first, _ = run(engine_a, ids)
    assert first.output_ids == reference(ids)
    flood(engine_a, tokenizer, "l2")
    assert l1_resident(engine_a, ids) < len(ids) // 16 * 16  # pushed out of L1
    again, tiers = run(engine_a, ids)
    assert again.output_ids == first.output_ids
    assert tiers["l2"] > 0 and again.cached_tokens == (len(ids) - 1) // 16 * 16
    assert tiers["l1"] + tiers["l2"] + tiers["l3"] == again.cached_tokens


def test_prefix_computed_by_one_engine_loads_from_l3_in_another(engine_a, engine_b, tokenizer, reference):
    ids = tokenizer.encode(text("lighthouses of the Atlantic coast"))
    first, _ = run(engine_a, ids)
    engine_a.tiers.flush_writes()
    out, tiers = run(engine_b, ids)
    assert out.output_ids == first.output_ids == reference(ids)
    assert tiers["l3"] == (len(ids) - 1) // 16 * 16 and out.cached_tokens == tiers["l3"]


def test_corrupt_l3_blob_is_a_miss_and_output_stays_exact(engine_a, engine_b, tokenizer, reference):
    ids = tokenizer.encode(text("glaciers and fjords"))
    run(engine_a, ids)
    engine_a.tiers.flush_writes()
    store = engine_b.tiers.store
    hashes = block_hashes(ids, 16)
    victim = store._path(hashes[3])  # the fourth block: blocks 0-2 load, the rest recompute
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    victim.write_bytes(bytes(raw))
    corrupt_before = engine_b.tiers.stats.l3_corrupt
    out, tiers = run(engine_b, ids)
    assert out.output_ids == reference(ids)
    assert tiers["l3"] == 3 * 16
    assert engine_b.tiers.stats.l3_corrupt == corrupt_before + 1
    # the bad blob was dropped; the recomputed block replaced it with a sound one
    engine_b.tiers.flush_writes()
    assert decode_block(victim.read_bytes(), hashes[3], engine_b.dtype, engine_b.tiers.block_shape) is not None


def test_pin_survives_memory_pressure_then_expires(engine_a, tokenizer):
    ids = tokenizer.encode(text("the pinned conversation"))
    full = len(ids) // 16 * 16
    result = engine_a.kv.prefetch(ids, pin_ttl_s=600).result(120)
    assert result["resident_tokens"] == full and result["pinned_tokens"] == full
    flood(engine_a, tokenizer, "pin pressure", n=4)
    assert l1_resident(engine_a, ids) == full  # every pinned block still in L1
    # re-pinning the same prefix only moves its TTL: make it lapse soon
    pin = engine_a.call(lambda: engine_a.kv.pin(ids, None, 0.3)).result(60)
    assert pin["pin_id"] == result["pin_id"]
    engine_a.call(lambda: engine_a.pins.get(pin["pin_id"]).__setattr__("expires", time.monotonic() + 0.3)).result()
    time.sleep(0.5)
    stats = engine_a.call(engine_a.kv.stats).result(60)
    assert stats["pins"]["pins"] == 0 and stats["pins"]["expired"] >= 1
    flood(engine_a, tokenizer, "after expiry", n=3)
    assert l1_resident(engine_a, ids) < full  # unpinned blocks are evictable again


def test_pins_beyond_the_cap_are_refused(engine_a, tokenizer):
    cap = engine_a.pins.max_blocks
    prompts = [tokenizer.encode(text(f"capacity topic {i}", n=20)) for i in range(3)]
    pinned, refused = [], 0
    for ids in prompts:
        res = engine_a.kv.prefetch(ids).result(120)
        assert res["resident_tokens"] > 0
        try:
            pinned.append(engine_a.call(lambda ids=ids: engine_a.kv.pin(ids, None, 600)).result(60))
        except ConflictError:
            refused += 1
    assert refused >= 1 and sum(p["pinned_tokens"] for p in pinned) <= cap * 16
    for p in pinned:
        assert engine_a.call(lambda p=p: engine_a.kv.unpin(p["pin_id"])).result(60) == p["pin_id"]
    assert engine_a.call(lambda: engine_a.pins.num_blocks).result(60) == 0


def test_salted_tenants_never_share_blocks(engine_a, tokenizer, reference):
    ids = tokenizer.encode(text("a secret tenant prompt"))
    a1, _ = run(engine_a, ids, salt="tenant-a")
    b1, tiers_b = run(engine_a, ids, salt="tenant-b")
    a2, tiers_a = run(engine_a, ids, salt="tenant-a")
    assert b1.cached_tokens == 0 and tiers_b == {"l1": 0, "l2": 0, "l3": 0}  # not from any tier
    assert a2.cached_tokens > 0
    assert a1.output_ids == b1.output_ids == a2.output_ids == reference(ids)
    plain, _ = run(engine_a, ids)  # and the unsalted prompt shares with neither
    assert plain.cached_tokens == 0


def test_prefetch_computes_then_is_idempotent_and_serves_the_call(engine_a, tokenizer, reference):
    ids = tokenizer.encode(text("the prefetched system prompt"))
    full = len(ids) // 16 * 16
    first = engine_a.kv.prefetch(ids).result(120)
    assert first == {"resident_tokens": full, "from": {"l1": 0, "l2": 0, "l3": 0, "computed": full}}
    second = engine_a.kv.prefetch(ids).result(60)
    assert second["from"] == {"l1": full, "l2": 0, "l3": 0, "computed": 0}
    out, tiers = run(engine_a, ids)
    assert out.cached_tokens >= full - 16 and out.output_ids == reference(ids)


def test_prefetch_alongside_a_decode_keeps_it_exact(engine_a, tokenizer, reference):
    ids = tokenizer.encode(text("the decoding request"))
    other = tokenizer.encode(text("the background prefetch", n=60))
    w = submit(engine_a, ids, greedy(24))
    fut = engine_a.kv.prefetch(other, priority=1)
    out = w.wait()
    assert fut.result(120)["resident_tokens"] == len(other) // 16 * 16
    plain = generate(engine_a, [ids], greedy(24))[0]  # cached now; the same tokens either way
    assert out.output_ids == plain.output_ids
    assert out.output_ids[:NEW] == reference(ids)


def test_lower_tier_events_are_recorded(engine_a, tokenizer):
    engine_a.events.take_events()
    ids = tokenizer.encode(text("event bookkeeping"))
    run(engine_a, ids)
    engine_a.tiers.flush_writes()
    flood(engine_a, tokenizer, "events")
    ops = {(e.op, e.tier) for e in engine_a.events.take_events()}
    assert {("stored", "l1"), ("removed", "l1"), ("stored", "l2"), ("stored", "l3")} <= ops


def test_aborts_while_staging_leak_nothing(engine_b, tokenizer):
    ids = tokenizer.encode(text("a prompt aborted during its L3 load"))
    run(engine_b, ids)
    engine_b.tiers.flush_writes()
    assert engine_b.call(engine_b.kv.flush).result(60)  # L1 empty: the next run must load from L3
    watchers = [submit(engine_b, ids, greedy(NEW), rid=f"staged-{i}") for i in range(3)]
    for w in watchers:
        engine_b.abort(w.rid)
    for w in watchers:
        assert w.wait().finish_reason["type"] in ("abort", "length")
    usage = wait_idle(engine_b)
    assert usage["used_blocks"] == 0
    snap = engine_b.call(lambda: (len(engine_b.staging.waiting), engine_b.pins.num_blocks)).result(60)
    assert snap == (0, 0)


def test_unusable_l3_location_leaves_the_engine_running_without_l3(make_engine, tmp_path, tokenizer):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    engine = make_engine(kv_pool_tokens=256, l2_blocks=0, l3=f"dir:{blocker}/l3")
    try:
        assert engine.tiers.store is None and engine.l3_id == ""
        assert "not usable" in engine.l3_error and str(blocker) in engine.l3_error
        out = generate(engine, [tokenizer.encode("Still serving without L3.")], greedy(2))[0]
        assert out.completion_tokens == 2
    finally:
        engine.stop()
