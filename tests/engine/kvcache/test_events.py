"""EventLog: recorded KV events are drained once, oldest dropped when full."""

from __future__ import annotations

from engine.kvcache.events import EventLog


def test_take_events_drains_in_order():
    log = EventLog()
    log.record("stored", [1, 2], parent_hash=None, token_ids=[5, 6])
    log.record("removed", [2])
    assert len(log) == 2
    events = log.take_events()
    assert [(e.op, e.block_hashes, e.parent_hash) for e in events] == [("stored", (1, 2), None), ("removed", (2,), None)]
    assert events[0].token_ids == (5, 6)
    assert events[0].tier == "l1"
    assert log.take_events() == []
    assert len(log) == 0


def test_to_dict_stamps_worker_and_model():
    log = EventLog()
    log.record("stored", [7], parent_hash=3, token_ids=[1, 2])
    (event,) = log.take_events()
    d = event.to_dict(worker="w1", model="m")
    assert d["worker"] == "w1" and d["model"] == "m"
    assert d["block_hashes"] == [7] and d["token_ids"] == [1, 2]
    assert d["parent_hash"] == 3 and d["op"] == "stored" and d["tier"] == "l1"
    assert isinstance(d["ts"], float)


def test_a_full_log_drops_the_oldest_and_counts_them():
    log = EventLog(max_events=3)
    for i in range(5):
        log.record("removed", [i])
    assert log.dropped == 2
    assert [e.block_hashes for e in log.take_events()] == [(2,), (3,), (4,)]
