"""WorkerTracker without I/O: what entries and snapshots do to the index in the orders the
stream and the network can deliver them (the Redis-backed paths are in test_kvindex_consumer)."""

from __future__ import annotations

from common.kvwire import EventBatch, event
from gateway.kvindex.index import KVIndex
from gateway.kvindex.snapshot import Snapshot
from gateway.kvindex.tracker import PENDING, RECENT_ENTRIES, SYNCED, WorkerTracker

URL = "http://w:1"


def batch(seq: int, *events: dict, epoch: str = "e1", l3: str = "") -> EventBatch:
    return EventBatch(URL, "m", epoch, seq, l3, list(events))


def stored(*hashes: int, tier: str = "l1") -> dict:
    return event("stored", tier, hashes)


def snap(upto: tuple[int, int], upto_seq: int | None, l1=(), epoch: str = "e1", l3: str = "") -> Snapshot:
    return Snapshot(URL, "m", epoch, 16, l3, upto, upto_seq, list(l1), [], [])


def tracker() -> tuple[WorkerTracker, KVIndex]:
    index = KVIndex()
    t = WorkerTracker(index)
    t.add(URL, "m", "e1", "", registered=True)
    return t, index


def test_entries_after_upto_are_replayed_and_older_ones_skipped():
    t, index = tracker()
    w = t.workers[URL]
    t.process((10, 0), batch(0, stored(1)))  # pending: only remembered
    t.process((20, 0), batch(1, stored(2)))
    assert w.state == PENDING and index.worker_blocks(URL, "l1") == set()
    assert t.apply_snapshot(w, snap((10, 0), 0, l1=[1]))  # taken after entry 10, before entry 20
    assert w.state == SYNCED and index.worker_blocks(URL, "l1") == {1, 2} and w.next_seq == 2
    # A snapshot newer than what we read: entries up to its upto are in it already.
    assert t.apply_snapshot(w, snap((40, 0), 3, l1=[1, 2, 3, 4]))
    t.process((30, 0), batch(2, event("removed", "l1", [1])))  # older than upto: skipped
    t.process((50, 0), batch(4, stored(5)))
    assert index.worker_blocks(URL, "l1") == {1, 2, 3, 4, 5}


def test_a_snapshot_whose_replay_fell_out_of_memory_is_fetched_again():
    t, _ = tracker()
    w = t.workers[URL]
    for i in range(RECENT_ENTRIES + 1):
        t.process((100 + i, 0), batch(i, stored(i)))
    assert not t.apply_snapshot(w, snap((99, 0), None)) and w.state == PENDING
    assert t.apply_snapshot(w, snap((101, 0), 1))  # everything after this one is still remembered
    assert w.state == SYNCED and w.next_seq == RECENT_ENTRIES + 1


def test_a_restart_clears_the_worker_and_late_entries_of_the_old_process_are_ignored():
    t, index = tracker()
    w = t.workers[URL]
    t.apply_snapshot(w, snap((1, 0), -1, l1=[1, 2]))
    t.process((5, 0), batch(0, stored(3), epoch="e2"))  # a new process
    assert w.state == PENDING and index.worker_blocks(URL, "l1") == set() and not index.covers(URL)
    t.apply_snapshot(w, snap((5, 0), 0, l1=[3], epoch="e2"))
    t.process((6, 0), batch(7, stored(9), epoch="e1"))  # the old process's last flush, arriving late
    assert w.state == SYNCED and w.epoch == "e2" and index.worker_blocks(URL, "l1") == {3}
    t.seen_in_registry(w, "e1", "")  # a stale registry read does not undo the restart either
    assert w.state == SYNCED and w.epoch == "e2"


def test_l3_events_reach_the_store_whatever_the_senders_state():
    t, index = tracker()
    t.add("http://v:1", "m", "e1", "dir:/s", registered=True)  # a synced sharer of the store
    t.workers[URL].l3 = "dir:/s"
    index.set_worker(URL, "dir:/s")
    t.process((1, 0), batch(0, stored(7, tier="l3"), l3="dir:/s"))  # URL is still pending
    assert index.store_blocks("dir:/s") == {7}
    assert t.workers[URL].state == PENDING
