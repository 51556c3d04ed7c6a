"""Decoding SGLang's KV-event wire format into plain tuples.

The format (engine/sglang/pinned.py has the source it was read from):
  live PUB message   [topic, seq (8-byte big-endian), payload]
  replay reply       [b"", topic, seq, payload] ... then [b"", b"", END_SEQ, b""]
                     (older releases: no topic frame)
  payload            msgpack [ts, events, attn_dp_rank]
  event              {"type": "BlockStored", "block_hashes": [...], "parent_block_hash": h | None,
                      "token_ids": [...], "block_size": n, "lora_id": None, "medium"?: "GPU",
                      "cache_salt"?: ..., "lora_name"?: ...}
                     {"type": "BlockRemoved", "block_hashes": [...], "medium"?: ...}
                     {"type": "AllBlocksCleared"}
                     or, from older releases, the same as a positional array led by the tag.
Decoding is generic (msgspec's untyped msgpack decoder), so an unknown event
type or an extra field never breaks the stream: unknown events are returned
as Unknown and skipped by the caller.
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from engine.sglang.pinned import (BLOCK_REMOVED_FIELDS, BLOCK_STORED_FIELDS, END_SEQ, TAG_CLEARED, TAG_FIELD,
                                  TAG_REMOVED, TAG_STORED)


class Stored(NamedTuple):
    block_hashes: list[int]
    parent: int | None
    token_ids: list[int]
    block_size: int
    medium: str | None
    cache_salt: str | None
    lora: bool  # an adapter's blocks (lora_id or lora_name set): not the base model's prefix


class Removed(NamedTuple):
    block_hashes: list[int]
    medium: str | None


class Cleared(NamedTuple):
    pass


class Unknown(NamedTuple):
    tag: str


class Batch(NamedTuple):
    seq: int
    ts: float
    events: list
    rank: int  # attn_dp_rank (the publisher's DP rank); 0 when absent


class WireError(ValueError):
    """A message that is not SGLang's KV-event format."""


_decoder = msgspec.msgpack.Decoder()


def decode_seq(raw: bytes) -> int:
    if len(raw) != 8:
        raise WireError(f"sequence frame of {len(raw)} bytes, expected 8")
    return int.from_bytes(raw, "big", signed=True)


def decode_live(frames: list[bytes]) -> Batch:
    """A message from the PUB socket."""
    if len(frames) != 3:
        raise WireError(f"live message of {len(frames)} frames, expected 3")
    return decode_payload(decode_seq(frames[1]), frames[2])


def decode_replay(frames: list[bytes]) -> Batch | None:
    """A message from the replay ROUTER as a DEALER receives it; None for the end marker."""
    if not frames or frames[0] != b"":
        raise WireError("replay message without the empty delimiter frame")
    body = frames[1:]
    if len(body) == 3:  # [topic, seq, payload]
        body = body[1:]
    if len(body) != 2:
        raise WireError(f"replay message of {len(frames)} frames")
    seq = decode_seq(body[0])
    if seq == END_SEQ:
        return None
    return decode_payload(seq, body[1])


def decode_payload(seq: int, payload: bytes) -> Batch:
    try:
        obj = _decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise WireError(f"payload is not msgpack: {exc}") from exc
    if not isinstance(obj, list) or len(obj) < 2 or not isinstance(obj[1], list):
        raise WireError("payload is not an event batch [ts, events, attn_dp_rank]")
    rank = obj[2] if len(obj) > 2 and isinstance(obj[2], int) else 0
    return Batch(seq, float(obj[0]), [decode_event(e) for e in obj[1]], rank)


def decode_event(raw) -> Stored | Removed | Cleared | Unknown:
    if isinstance(raw, dict):
        tag, fields = raw.get(TAG_FIELD), raw
    elif isinstance(raw, list) and raw and isinstance(raw[0], str):
        tag = raw[0]
        names = {TAG_STORED: BLOCK_STORED_FIELDS, TAG_REMOVED: BLOCK_REMOVED_FIELDS}.get(tag, ())
        fields = dict(zip(names, raw[1:]))
    else:
        raise WireError(f"event is neither a tagged map nor a tagged array: {type(raw).__name__}")
    try:
        if tag == TAG_STORED:
            return Stored(list(fields["block_hashes"]), fields.get("parent_block_hash"),
                          [_token(t) for t in fields["token_ids"]], int(fields["block_size"]),
                          fields.get("medium"), fields.get("cache_salt"),
                          fields.get("lora_id") is not None or fields.get("lora_name") is not None)
        if tag == TAG_REMOVED:
            return Removed(list(fields["block_hashes"]), fields.get("medium"))
    except (KeyError, TypeError, ValueError) as exc:
        raise WireError(f"malformed {tag} event: {exc!r}") from exc
    if tag == TAG_CLEARED:
        return Cleared()
    return Unknown(str(tag))


def _token(t) -> int:
    # EAGLE's bigram radix keys publish each position as (token, next token).
    return int(t[0]) if isinstance(t, (list, tuple)) else int(t)
