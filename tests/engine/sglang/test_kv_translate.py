"""SGLang events → our events: the hashes must be the ones the gateway computes from the prompt."""

from __future__ import annotations

from common.hashing import block_hashes
from engine.kvcache.events import EventLog
from engine.sglang.kv_translate import KVTranslator
from engine.sglang.kv_wire import Cleared, Removed, Stored, Unknown
from tests.engine.sglang.sglang_format import sgl_hash

PROMPT = list(range(1000, 1000 + 80))  # five blocks of 16
OURS = block_hashes(PROMPT, 16)


def stored(tokens, parent=None, medium="GPU", salt=None, block_size=16, lora=False) -> Stored:
    hashes, h = [], parent
    for i in range(0, len(tokens), block_size):
        h = sgl_hash(h, tokens[i:i + block_size])
        hashes.append(h)
    return Stored(hashes, parent, list(tokens), block_size, medium, salt, lora)


def sgl_chain(tokens) -> list[int]:
    out, h = [], None
    for i in range(0, len(tokens), 16):
        h = sgl_hash(h, tokens[i:i + 16])
        out.append(h)
    return out


def taken(log: EventLog) -> list[tuple]:
    return [(e.op, e.tier, list(e.block_hashes), e.parent_hash) for e in log.take_events()]


def make(**kw):
    log = EventLog()
    return KVTranslator(log, **kw), log


def test_stored_blocks_get_our_chained_hashes():
    t, log = make()
    t.apply(0, [stored(PROMPT[:48])])
    events = log.take_events()
    assert [(e.op, e.tier, list(e.block_hashes), e.parent_hash) for e in events] == [("stored", "l1", OURS[:3], None)]
    assert list(events[0].token_ids) == PROMPT[:48]
    # A later node hanging under the third block: SGLang names its parent by its own hash.
    t.apply(0, [stored(PROMPT[48:], parent=sgl_chain(PROMPT)[2])])
    assert taken(log) == [("stored", "l1", OURS[3:], OURS[2])]


def test_cache_salt_enters_the_chain():
    t, log = make()
    t.apply(0, [stored(PROMPT[:32], salt="tenant-a")])
    assert taken(log) == [("stored", "l1", block_hashes(PROMPT[:32], 16, "tenant-a"), None)]
    assert block_hashes(PROMPT[:32], 16, "tenant-a") != OURS[:2]


def test_removed_is_translated_and_forgotten():
    t, log = make()
    t.apply(0, [stored(PROMPT)])
    log.take_events()
    sgl = sgl_chain(PROMPT)
    t.apply(0, [Removed(sgl[3:], "GPU")])
    assert taken(log) == [("removed", "l1", OURS[3:], None)]
    assert len(t) == 3
    t.apply(0, [Removed(sgl[3:], "GPU"), Removed([12345], None)])  # again, and unknown: nothing
    assert taken(log) == []


def test_tiers_follow_the_medium():
    t, log = make()
    sgl = sgl_chain(PROMPT[:32])
    t.apply(0, [stored(PROMPT[:32], medium="GPU"), stored(PROMPT[:32], medium="CPU_PINNED")])  # HiCache backup
    t.apply(0, [Removed(sgl, "GPU")])  # evicted from the GPU, still in host memory
    assert taken(log) == [("stored", "l1", OURS[:2], None), ("stored", "l2", OURS[:2], None),
                          ("removed", "l1", OURS[:2], None)]
    assert len(t) == 2
    t.apply(0, [stored(PROMPT[:32], medium="GPU")])  # loaded back
    t.apply(0, [Removed(sgl, "CPU_PINNED")])
    assert taken(log) == [("stored", "l1", OURS[:2], None), ("removed", "l2", OURS[:2], None)]
    assert t.snapshot() == {"l1": [[OURS[0], None], [OURS[1], None]], "l2": [], "l3": []}


def test_restoring_a_held_block_announces_only_the_new_ones():
    t, log = make()
    t.apply(0, [stored(PROMPT[:32])])
    log.take_events()
    t.apply(0, [stored(PROMPT[:48])])  # first two already held: only the third is news
    assert taken(log) == [("stored", "l1", OURS[2:3], OURS[1])]


def test_dp_ranks_read_as_one_cache():
    t, log = make()
    sgl = sgl_chain(PROMPT[:32])
    t.apply(0, [stored(PROMPT[:32])])
    t.apply(1, [stored(PROMPT[:32])])
    assert taken(log) == [("stored", "l1", OURS[:2], None)]
    t.apply(0, [Removed(sgl, "GPU")])
    assert taken(log) == []  # rank 1 still has them
    t.apply(1, [Removed(sgl, "GPU")])
    assert taken(log) == [("removed", "l1", OURS[:2], None)]


def test_blocks_we_cannot_hash_are_never_announced():
    t, log = make()
    orphan = stored(PROMPT[16:48], parent=987654321)  # its parent was never stored (events lost)
    lora = stored(PROMPT[:16], lora=True)
    odd = stored(PROMPT[:64], block_size=32)  # SGLang run with another page size
    partial = Stored([sgl_hash(None, PROMPT[:10])], None, PROMPT[:10], 10, "GPU", None, False)
    t.apply(0, [orphan, lora, odd, partial])
    assert taken(log) == []
    assert t.foreign_blocks == 2 + 1 + 2 + 1
    t.apply(0, [Removed(orphan.block_hashes + lora.block_hashes, "GPU")])
    assert taken(log) == []
    # A child of a foreign block is foreign too.
    t.apply(0, [stored(PROMPT[32:48], parent=odd.block_hashes[0], block_size=16)])
    assert taken(log) == []


def test_unknown_medium_and_event_are_skipped():
    t, log = make()
    t.apply(0, [stored(PROMPT[:16], medium="TAPE"), Unknown("BlockMoved")])
    assert taken(log) == [] and len(t) == 0


def test_cleared_withdraws_everything_of_the_rank():
    t, log = make()
    t.apply(0, [stored(PROMPT[:32]), stored(PROMPT[:32], medium="CPU_PINNED")])
    log.take_events()
    t.apply(0, [Cleared()])
    assert sorted(taken(log)) == [("cleared", "l1", [], None), ("cleared", "l2", [], None)]
    assert len(t) == 0
    # Another rank still holding blocks: only what nobody else holds is withdrawn, block by block.
    t.apply(0, [stored(PROMPT[:32])])
    t.apply(1, [stored(PROMPT[:48])])
    log.take_events()
    t.apply(1, [Cleared()])
    assert taken(log) == [("removed", "l1", OURS[2:3], None)]


def index_after(events: list[tuple]) -> set[tuple[int, str]]:
    """What a reader applying the events in order believes is cached: {(hash, tier)}."""
    held: set[tuple[int, str]] = set()
    for op, tier, hashes, _ in events:
        if op == "stored":
            held.update((h, tier) for h in hashes)
        elif op == "removed":
            held.difference_update((h, tier) for h in hashes)
        elif op == "cleared":
            held = {x for x in held if x[1] != tier}
    return held


def test_the_map_is_bounded_and_overflow_withdraws_the_oldest():
    t, log = make(max_blocks=3)
    t.apply(0, [stored(PROMPT)])  # five blocks into a map of three
    assert len(t) == 3 and t.dropped_blocks == 2
    events = taken(log)
    # In order, the events leave the index with exactly the blocks still mapped: the last three.
    assert index_after(events) == {(h, "l1") for h in OURS[2:]}
    assert [h for h, _ in t.snapshot()["l1"]] == OURS[2:]
    # Their removal still translates.
    t.apply(0, [Removed(sgl_chain(PROMPT)[2:], "GPU")])
    assert index_after(events + taken(log)) == set()
