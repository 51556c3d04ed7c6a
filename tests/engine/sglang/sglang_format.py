"""SGLang's KV-event wire format, written for the tests from SGLang 0.5.23's
sglang/srt/disaggregation/kv_events.py (structure only; nothing imported from
engine/sglang, so the bridge's decoder is checked against an independent
encoder).

- Structs as SGLang declares them (msgspec; EventBatch positional, events
  tagged maps with None-valued optional fields omitted), plus the array_like
  events of older releases.
- SGLangPublisher: a PUB socket sending [topic, seq 8-byte BE, payload] and a
  ROUTER replay socket answering [b"", start seq] with [b"", topic, seq,
  payload] per buffered batch and [b"", b"", -1, b""] at the end, as
  ZmqEventPublisher does.
"""

from __future__ import annotations

import enum
import hashlib
import threading
from collections import deque
from typing import Any, Optional, Union

import msgspec
import zmq


class EventBatch(msgspec.Struct, array_like=True, gc=False):
    ts: float
    events: list[Any]
    attn_dp_rank: Optional[int] = None


class KVCacheEvent(msgspec.Struct, omit_defaults=True, gc=False, tag=True):
    pass


class StorageMedium(str, enum.Enum):
    GPU = "GPU"
    CPU = "CPU_PINNED"
    DISK = "DISK"
    EXTERNAL = "EXTERNAL"


class BlockStored(KVCacheEvent):
    block_hashes: list[int]
    parent_block_hash: Optional[int]
    token_ids: list[int]
    block_size: int
    lora_id: Optional[int]
    medium: Optional[str] = None
    cache_salt: Optional[str] = None
    session_id: Optional[str] = None
    lora_name: Optional[str] = None


class BlockRemoved(KVCacheEvent):
    block_hashes: list[int]
    medium: Optional[str] = None


class AllBlocksCleared(KVCacheEvent):
    pass


class KVEventBatch(EventBatch):
    events: list[Union[BlockStored, BlockRemoved, AllBlocksCleared]]


# Older releases (e.g. 0.4.x): events were positional arrays led by the tag.
class LegacyEvent(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, tag=True):
    pass


class LegacyBlockStored(LegacyEvent, tag="BlockStored"):
    block_hashes: list[int]
    parent_block_hash: Optional[int]
    token_ids: list[int]
    block_size: int
    lora_id: Optional[int]
    medium: Optional[str] = None


class LegacyBlockRemoved(LegacyEvent, tag="BlockRemoved"):
    block_hashes: list[int]
    medium: Optional[str] = None


class LegacyCleared(LegacyEvent, tag="AllBlocksCleared"):
    pass


_encoder = msgspec.msgpack.Encoder()


def encode(batch) -> bytes:
    return _encoder.encode(batch)


def sgl_hash(parent: int | None, tokens) -> int:
    """A stand-in for SGLang's page hash: a signed 64-bit chain hash (its values are opaque to us)."""
    h = hashlib.sha256(repr((parent, list(tokens))).encode()).digest()
    return int.from_bytes(h[:8], "big", signed=True)


def stored_chain(tokens: list[int], page: int = 16, parent: int | None = None, **kwargs) -> BlockStored:
    """One BlockStored of consecutive full pages, the way SGLang coalesces a node's pages."""
    hashes, h = [], parent
    for i in range(0, len(tokens) - page + 1, page):
        h = sgl_hash(h, tokens[i:i + page])
        hashes.append(h)
    return BlockStored(block_hashes=hashes, parent_block_hash=parent, token_ids=tokens[:len(hashes) * page],
                       block_size=page, lora_id=None, **kwargs)


class SGLangPublisher:
    """PUB + replay ROUTER like SGLang's ZmqEventPublisher, driven by the test thread."""

    END_SEQ = (-1).to_bytes(8, "big", signed=True)

    def __init__(self, endpoint: str, replay_endpoint: str | None = None, topic: str = "", rank: int = 0,
                 buffer_steps: int = 10_000):
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.bind(endpoint)
        self.topic = topic.encode()
        self.rank = rank
        self.seq = 0
        self.buffer: deque[tuple[int, bytes]] = deque(maxlen=buffer_steps)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._replay_thread = None
        self.replay_requests: list[int] = []
        if replay_endpoint is not None:
            self.router = self.ctx.socket(zmq.ROUTER)
            self.router.bind(replay_endpoint)
            self._replay_thread = threading.Thread(target=self._serve_replay, daemon=True)
            self._replay_thread.start()

    def publish(self, *events, send: bool = True, ts: float = 1.0) -> int:
        """Encode one batch, keep it for replay, send it unless `send` is False (a lost message)."""
        payload = encode(KVEventBatch(ts=ts, events=list(events), attn_dp_rank=self.rank))
        with self._lock:
            seq = self.seq
            self.seq += 1
            self.buffer.append((seq, payload))
            if send:
                self.pub.send_multipart((self.topic, seq.to_bytes(8, "big"), payload))
        return seq

    def publish_raw(self, payload: bytes) -> None:
        with self._lock:
            seq = self.seq
            self.seq += 1
            self.pub.send_multipart((self.topic, seq.to_bytes(8, "big"), payload))

    def _serve_replay(self) -> None:
        while not self._stop.is_set():
            if not self.router.poll(50):
                continue
            client_id, _, start = self.router.recv_multipart()
            start_seq = int.from_bytes(start, "big")
            self.replay_requests.append(start_seq)
            with self._lock:
                for seq, buf in self.buffer:
                    if seq >= start_seq:
                        self.router.send_multipart((client_id, b"", self.topic, seq.to_bytes(8, "big"), buf))
                self.router.send_multipart((client_id, b"", b"", self.END_SEQ, b""))

    def close(self) -> None:
        self._stop.set()
        if self._replay_thread is not None:
            self._replay_thread.join(2)
            self.router.close(linger=0)
        self.pub.close(linger=0)
        self.ctx.term()
