"""Per-worker sync state of the KV index: stream entries and snapshots in, index changes out.

No I/O here (consumer.py reads Redis and fetches snapshots); this module
decides what an entry or a snapshot means for the index.

A worker is *pending* (its state must come from a snapshot), *fetching* (GET
/kv/snapshot in flight) or *synced* (its events apply as they arrive). While
not synced, its entries are only remembered: when the snapshot comes, its
entries after the snapshot's `upto` are replayed from that memory (`recent`),
so no range read of the stream is ever needed. `recent` is a ring; if it let
go of an entry the replay needs, the snapshot is fetched again.

A synced worker goes back to pending on a seq gap (entries lost), a `resync`
event (its publisher dropped events), or when the stream was trimmed past us;
a new epoch means a new process, whose blocks start from nothing. L3 events
change the store whatever the state of the worker that sent them: the store is
shared, and its blocks are facts about the store, not about that worker.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

from common.kvwire import OPS, TIERS, EventBatch, stream_key
from gateway.kvindex.index import KVIndex
from gateway.kvindex.snapshot import ZERO_ID, Snapshot, StreamId

log = logging.getLogger("agentgate.kvindex")

RECENT_ENTRIES = 256  # per worker; a snapshot round trip sees far fewer of its entries than this
PENDING, FETCHING, SYNCED = "pending", "fetching", "synced"


@dataclass
class WorkerSync:
    url: str
    model: str
    epoch: str
    l3: str
    registered: bool  # listed live in the registry (else known from its stream entries only)
    state: str = PENDING
    next_seq: int | None = None  # None: accept whatever seq comes next
    skip_upto: StreamId = ZERO_ID  # its entries at or before this id are in the snapshot applied
    recent: deque = field(default_factory=lambda: deque(maxlen=RECENT_ENTRIES))  # (StreamId, EventBatch)
    lost: tuple[StreamId, str] | None = None  # (id, epoch) of the newest entry `recent` let go
    fetch: object | None = None  # the asyncio.Task fetching its snapshot (consumer.py)
    retry_at: float = 0.0
    failures: int = 0
    no_snapshot: bool = False  # its /kv/snapshot is missing: synced only by seeing its epoch from seq 0
    first_seen: float = field(default_factory=time.monotonic)
    retired: set[str] = field(default_factory=set)  # epochs of its earlier processes: late entries ignored

    def remember(self, entry_id: StreamId, batch: EventBatch) -> None:
        if len(self.recent) == self.recent.maxlen:
            old_id, old = self.recent[0]
            self.lost = (old_id, old.epoch)
        self.recent.append((entry_id, batch))

    def replay_after(self, upto: StreamId, epoch: str) -> list[tuple[StreamId, EventBatch]] | None:
        """Its remembered entries of `epoch` after `upto`, or None if the ring already let one of them go."""
        if self.lost is not None and self.lost[1] == epoch and self.lost[0] > upto:
            return None
        return [(i, b) for i, b in self.recent if i > upto and b.epoch == epoch]

    def mark_pending(self) -> None:
        if self.fetch is not None:
            self.fetch.cancel()
            self.fetch = None
        self.state = PENDING
        self.retry_at = 0.0


class WorkerTracker:
    def __init__(self, index: KVIndex):
        self.index = index
        self.workers: dict[str, WorkerSync] = {}
        self.snapshots = 0  # applied
        self.resyncs = 0  # times a synced worker had to go back to a snapshot

    # -- membership ----------------------------------------------------------------------------
    def add(self, url: str, model: str, epoch: str, l3: str, *, registered: bool) -> WorkerSync:
        w = WorkerSync(url, model, epoch, l3, registered)
        self.workers[url] = w
        self.index.set_worker(url, l3)
        return w

    def drop(self, url: str) -> None:
        w = self.workers.pop(url)
        w.mark_pending()
        self.index.drop_worker(url)

    def seen_in_registry(self, w: WorkerSync, epoch: str, l3: str) -> None:
        """The registry lists w with this epoch and store."""
        w.registered = True
        if epoch and w.epoch and epoch != w.epoch and epoch not in w.retired:
            self.restarted(w, epoch)
        if l3 != w.l3:
            w.l3 = l3
            self.index.set_worker(w.url, l3)

    def restarted(self, w: WorkerSync, epoch: str) -> None:
        """A new process serves at w.url: whatever the old one cached is gone."""
        log.info("KV index: worker %s restarted (epoch %s -> %s)", w.url, w.epoch or "?", epoch)
        if w.epoch:
            w.retired.add(w.epoch)
        w.epoch = epoch
        self.index.replace_worker(w.url, (), ())
        self.index.set_covered(w.url, False)
        w.mark_pending()

    def resync_stream(self, key: str) -> None:
        """Entries of this stream were lost to trimming: every worker on it re-syncs."""
        for w in self.workers.values():
            if stream_key(w.model) == key:
                w.mark_pending()
                self.resyncs += 1

    # -- snapshots ---------------------------------------------------------------------------
    def apply_snapshot(self, w: WorkerSync, snap: Snapshot) -> bool:
        """Apply it and replay what came after; False if it must be fetched again."""
        replay = w.replay_after(snap.upto, snap.epoch)
        if replay is None:  # more of its entries went by than we remember
            w.mark_pending()
            return False
        w.epoch, w.l3 = snap.epoch, snap.l3
        self.index.set_worker(w.url, snap.l3)
        self.index.replace_worker(w.url, snap.l1, snap.l2)
        # The store is shared and this worker's view of it may lag the others' writes: add what it
        # sees, and let removals come from the events of whoever removes.
        self.index.apply(w.url, snap.l3, "stored", "l3", snap.l3_blocks)
        next_seq = snap.upto_seq + 1 if snap.upto_seq is not None else None
        w.skip_upto, w.next_seq, w.state, w.failures = snap.upto, next_seq, SYNCED, 0
        self.index.set_covered(w.url, True)
        self.snapshots += 1
        for entry_id, batch in replay:
            if w.state != SYNCED:
                break
            self._apply_own(w, entry_id, batch)
        return True

    # -- entries -----------------------------------------------------------------------------
    def process(self, entry_id: StreamId, batch: EventBatch) -> None:
        """One stream entry, in stream order."""
        if not batch.worker:
            return
        w = self.workers.get(batch.worker)
        if w is None:
            w = self.add(batch.worker, batch.model, batch.epoch, batch.l3, registered=False)
        if batch.l3:
            for ev in batch.events:
                if ev.get("tier") == "l3" and ev.get("op") in OPS:
                    self.index.apply(w.url, batch.l3, ev["op"], "l3", ev.get("block_hashes") or ())
        w.remember(entry_id, batch)
        if w.state == SYNCED:
            self._apply_own(w, entry_id, batch)
        elif w.no_snapshot and batch.seq == 0:
            self._sync_from_start(w, batch.epoch)
            self._apply_own(w, entry_id, batch)

    def _sync_from_start(self, w: WorkerSync, epoch: str) -> None:
        """A worker without /kv/snapshot seen from its epoch's first batch: we see all it will cache."""
        if w.fetch is not None:
            w.fetch.cancel()
            w.fetch = None
        w.epoch, w.state, w.next_seq, w.skip_upto = epoch, SYNCED, None, ZERO_ID
        self.index.replace_worker(w.url, (), ())
        self.index.set_covered(w.url, True)

    def _apply_own(self, w: WorkerSync, entry_id: StreamId, batch: EventBatch) -> None:
        """One entry of a synced worker: its L1/L2 events (its L3 ones went to the store already)."""
        if entry_id <= w.skip_upto or batch.epoch in w.retired:
            return  # already in the snapshot, or a late entry of a process that is gone
        if batch.epoch != w.epoch:
            if not (w.no_snapshot and batch.seq == 0):
                self.restarted(w, batch.epoch)
                return
            self._sync_from_start(w, batch.epoch)
        if w.next_seq is not None:
            if batch.seq < w.next_seq:
                return  # re-sent after a lost reply: applied already
            if batch.seq > w.next_seq:
                log.info("KV index: batches %d..%d of %s are missing; re-syncing it", w.next_seq, batch.seq - 1,
                         w.url)
                self.resyncs += 1
                w.mark_pending()
                return
        w.next_seq = batch.seq + 1
        for ev in batch.events:
            op, tier = ev.get("op"), ev.get("tier")
            if op == "resync":
                log.info("KV index: %s dropped events (Redis was away too long); re-syncing it", w.url)
                self.resyncs += 1
                w.mark_pending()
                return
            if op in OPS and tier in TIERS and tier != "l3":
                self.index.apply(w.url, w.l3, op, tier, ev.get("block_hashes") or ())
