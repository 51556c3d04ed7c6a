"""Decoding SGLang's KV-event messages, as SGLang encodes them (tests/engine/sglang/sglang_format.py)."""

from __future__ import annotations

import msgspec
import pytest

from engine.sglang.kv_wire import (Batch, Cleared, Removed, Stored, Unknown, WireError, decode_live, decode_payload,
                                   decode_replay)
from tests.engine.sglang.sglang_format import (AllBlocksCleared, BlockRemoved, BlockStored, EventBatch, KVEventBatch,
                                               LegacyBlockRemoved, LegacyBlockStored, LegacyCleared, StorageMedium,
                                               encode)

TOKENS = list(range(100, 132))


def test_the_encoding_is_sglang_0_5_23s_byte_for_byte():
    """Positional batch, tagged maps, None-valued optional fields omitted, the medium enum as its value."""
    batch = KVEventBatch(ts=2.5, events=[
        BlockStored(block_hashes=[-7, 9], parent_block_hash=None, token_ids=TOKENS, block_size=16, lora_id=None,
                    medium=StorageMedium.GPU),
        BlockRemoved(block_hashes=[-7], medium=StorageMedium.CPU), AllBlocksCleared()], attn_dp_rank=0)
    expected = msgspec.msgpack.encode([2.5, [
        {"type": "BlockStored", "block_hashes": [-7, 9], "parent_block_hash": None, "token_ids": TOKENS,
         "block_size": 16, "lora_id": None, "medium": "GPU"},
        {"type": "BlockRemoved", "block_hashes": [-7], "medium": "CPU_PINNED"},
        {"type": "AllBlocksCleared"}], 0])
    assert encode(batch) == expected


def test_live_message_decodes_to_events():
    payload = encode(KVEventBatch(ts=2.5, events=[
        BlockStored(block_hashes=[-7, 9], parent_block_hash=None, token_ids=TOKENS, block_size=16, lora_id=None,
                    medium=StorageMedium.GPU, cache_salt="tenant-a", session_id="s1"),
        BlockRemoved(block_hashes=[-7], medium=StorageMedium.CPU),
        BlockRemoved(block_hashes=[9]),
        AllBlocksCleared()], attn_dp_rank=1))
    batch = decode_live([b"agentgate-kv", (41).to_bytes(8, "big"), payload])
    assert batch == Batch(41, 2.5, [Stored([-7, 9], None, TOKENS, 16, "GPU", "tenant-a", False),
                                    Removed([-7], "CPU_PINNED"), Removed([9], None), Cleared()], 1)


def test_lora_blocks_are_flagged():
    payload = encode(KVEventBatch(ts=0.0, events=[
        BlockStored(block_hashes=[1], parent_block_hash=5, token_ids=TOKENS[:16], block_size=16, lora_id=None,
                    lora_name="sql-adapter")]))
    (event,) = decode_payload(0, payload).events
    assert event.lora and event.parent == 5


def test_legacy_array_events_and_missing_rank():
    payload = encode(EventBatch(ts=1.0, events=[
        LegacyBlockStored(block_hashes=[3], parent_block_hash=None, token_ids=TOKENS[:16], block_size=16, lora_id=None),
        LegacyBlockRemoved(block_hashes=[3], medium="CPU_PINNED"), LegacyCleared()]))
    batch = decode_payload(7, payload)
    assert batch.rank == 0
    assert batch.events == [Stored([3], None, TOKENS[:16], 16, None, None, False), Removed([3], "CPU_PINNED"),
                            Cleared()]


def test_bigram_token_pairs_become_tokens():
    raw = msgspec.msgpack.encode([0.0, [{"type": "BlockStored", "block_hashes": [1], "parent_block_hash": None,
                                         "token_ids": [[5, 6], [6, 7]], "block_size": 2, "lora_id": None}], 0])
    assert decode_payload(0, raw).events[0].token_ids == [5, 6]


def test_unknown_event_types_and_fields_pass():
    raw = msgspec.msgpack.encode([0.0, [{"type": "BlockMoved", "x": 1},
                                        {"type": "BlockRemoved", "block_hashes": [1], "group_idx": 3}], 0])
    assert decode_payload(0, raw).events == [Unknown("BlockMoved"), Removed([1], None)]


def test_replay_messages_with_and_without_topic_frame():
    payload = encode(KVEventBatch(ts=0.0, events=[AllBlocksCleared()], attn_dp_rank=0))
    end = (-1).to_bytes(8, "big", signed=True)
    assert decode_replay([b"", b"t", (3).to_bytes(8, "big"), payload]).seq == 3
    assert decode_replay([b"", (4).to_bytes(8, "big"), payload]).seq == 4  # releases before the topic frame
    assert decode_replay([b"", b"", end, b""]) is None
    assert decode_replay([b"", end, b""]) is None


@pytest.mark.parametrize("frames", [
    [b"t", b"\x00" * 8],                                   # too few frames
    [b"t", b"\x00" * 4, b"\x90"],                           # short seq
    [b"t", b"\x00" * 8, b"\xc1"],                           # not msgpack
    [b"t", b"\x00" * 8, msgspec.msgpack.encode({"a": 1})],  # not a batch
    [b"t", b"\x00" * 8, msgspec.msgpack.encode([0.0, [{"type": "BlockStored"}], 0])],  # fields missing
    [b"t", b"\x00" * 8, msgspec.msgpack.encode([0.0, [7], 0])],
])
def test_malformed_messages_raise_wire_error(frames):
    with pytest.raises(WireError):
        decode_live(frames)
