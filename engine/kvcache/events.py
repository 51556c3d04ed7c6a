"""KV events: every block stored, removed or cleared is recorded here and
drained by whoever ships them (the Redis publisher, tests).

An event is {op, tier, block_hashes, parent_hash, ts, token_ids}. Whoever drains
the log says where the events come from: the Redis publisher sends them in
batches that carry worker, model, epoch and seq, without the token ids
(common/kvwire.py; docs/architecture.md §3.2), so the cache itself stays
ignorant of where it runs.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class KVEvent:
    op: str  # "stored" | "removed" | "cleared"
    tier: str  # "l1" for the attention-ready pool
    block_hashes: tuple[int, ...]
    parent_hash: int | None
    ts: float
    token_ids: tuple[int, ...] = ()  # stored events carry the blocks' tokens (SGLang does too)

    def to_dict(self, worker: str = "", model: str = "") -> dict:
        d = asdict(self)
        d["block_hashes"] = list(self.block_hashes)
        d["token_ids"] = list(self.token_ids)
        d.update(worker=worker, model=model)
        return d


class EventLog:
    """A thread-safe, bounded buffer of KV events (the oldest go first when full)."""

    def __init__(self, max_events: int = 100_000):
        self._events: list[KVEvent] = []
        self._lock = threading.Lock()
        self._max = max_events
        self.dropped = 0

    def record(self, op: str, block_hashes, parent_hash: int | None = None, tier: str = "l1", token_ids=()) -> None:
        event = KVEvent(op, tier, tuple(block_hashes), parent_hash, time.time(), tuple(token_ids))
        with self._lock:
            self._events.append(event)
            if len(self._events) > self._max:
                drop = len(self._events) - self._max
                del self._events[:drop]
                self.dropped += drop

    def take_events(self) -> list[KVEvent]:
        with self._lock:
            events, self._events = self._events, []
        return events

    def __len__(self) -> int:
        return len(self._events)
