"""The KV-event bridge: SGLang's ZMQ publisher → agentgate's EventLog.

One thread subscribes to every DP rank's PUB endpoint (SGLang binds
`endpoint` port + rank), decodes each batch (kv_wire), checks its sequence
number and hands its events to the translator (kv_translate), which records
agentgate events into the EventLog that the Redis publisher ships.

Sequence numbers count from 0 per publisher. For each rank the bridge expects
last + 1:
- a gap (batches lost: the SUB socket's high-water mark, a reconnect) is
  filled from the rank's replay endpoint (a ROUTER serving its last
  `buffer_steps` batches); when the replay cannot cover it, the rank is reset
  (everything it held is withdrawn from the index) and rebuilt from the
  events that follow, so the index under-reports rather than lies;
- a number at or below the last one means the publisher restarted (its cache
  is new): the rank is reset and the gap from 0 filled as above.
ZMQ reconnects a SUB socket to a restarted publisher by itself; a socket
error makes the bridge rebuild its sockets after a back-off.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import zmq

from engine.kvcache.events import EventLog
from engine.sglang.kv_translate import DEFAULT_MAX_BLOCKS, KVTranslator
from engine.sglang.kv_wire import Batch, WireError, decode_live, decode_replay

log = logging.getLogger("agentgate.sglang.kv")


@dataclass
class BridgeStats:
    batches: int = 0      # applied, live or replayed
    replayed: int = 0     # applied from a replay
    gaps: int = 0         # sequence gaps seen
    resets: int = 0       # ranks reset (gap not replayable, publisher restart)
    bad_messages: int = 0


class KVBridge:
    def __init__(self, endpoints: list[str], events: EventLog, *, replay_endpoints: list[str] | None = None,
                 topic: str = "", block_size: int = 16, max_blocks: int = DEFAULT_MAX_BLOCKS,
                 replay_timeout_s: float = 2.0, poll_ms: int = 100):
        """endpoints[r] / replay_endpoints[r]: where DP rank r publishes / serves replays."""
        assert endpoints
        self.endpoints = list(endpoints)
        self.replay_endpoints = list(replay_endpoints or [])
        self.topic = topic.encode()
        self.translator = KVTranslator(events, block_size, max_blocks)
        self.replay_timeout_s = replay_timeout_s
        self.poll_ms = poll_ms
        self.stats = BridgeStats()
        self._last: dict[int, int] = {}  # rank -> last applied seq
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ctx: zmq.Context | None = None
        self.subscribed = threading.Event()  # set once the SUB socket is connected

    def start(self) -> "KVBridge":
        self._ctx = zmq.Context()
        self._thread = threading.Thread(target=self._run, name="sglang-kv-bridge", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the loop ------------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            sub = self._subscribe()
            try:
                while not self._stop.is_set():
                    if sub.poll(self.poll_ms):
                        self._on_live(sub.recv_multipart())
                        backoff = 0.1
            except zmq.ZMQError as exc:
                log.warning("KV event subscription failed (%s); reconnecting in %.1fs", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                sub.close(linger=0)
                self.subscribed.clear()

    def _subscribe(self) -> zmq.Socket:
        sub = self._ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, 100_000)
        sub.setsockopt(zmq.SUBSCRIBE, self.topic)
        for endpoint in self.endpoints:
            sub.connect(endpoint)
        self.subscribed.set()
        return sub

    def _on_live(self, frames: list[bytes]) -> None:
        try:
            batch = decode_live(frames)
        except WireError as exc:
            self.stats.bad_messages += 1
            log.warning("dropping a KV event message that is not SGLang's format: %s", exc)
            return
        last = self._last.get(batch.rank)
        if last is not None and batch.seq <= last:
            log.warning("KV publisher of rank %d restarted (seq %d after %d): resetting its blocks",
                        batch.rank, batch.seq, last)
            self._reset(batch.rank)
            last = None
        expected = 0 if last is None else last + 1
        if batch.seq > expected:
            self.stats.gaps += 1
            if not self._replay(batch.rank, expected, batch.seq):
                if last is not None or expected > 0:
                    log.warning("KV events %d..%d of rank %d are lost: resetting its blocks",
                                expected, batch.seq - 1, batch.rank)
                self._reset(batch.rank)
        self._apply(batch)

    def _apply(self, batch: Batch) -> None:
        self.translator.apply(batch.rank, batch.events)
        self._last[batch.rank] = batch.seq
        self.stats.batches += 1

    def _reset(self, rank: int) -> None:
        self.translator.reset(rank)
        self._last.pop(rank, None)
        self.stats.resets += 1

    def _replay(self, rank: int, start: int, stop: int) -> bool:
        """Apply batches start..stop-1 of `rank` from its replay endpoint; True if all came."""
        if rank >= len(self.replay_endpoints):
            return False
        got: list[Batch] = []
        sock = self._ctx.socket(zmq.DEALER)  # a fresh socket: no late reply of an earlier replay mixes in
        try:
            sock.connect(self.replay_endpoints[rank])
            sock.send_multipart([b"", start.to_bytes(8, "big")])
            deadline = time.monotonic() + self.replay_timeout_s
            while True:
                left_ms = int((deadline - time.monotonic()) * 1000)
                if left_ms <= 0 or not sock.poll(left_ms):
                    log.warning("KV replay from %s timed out", self.replay_endpoints[rank])
                    return False
                batch = decode_replay(sock.recv_multipart())
                if batch is None:
                    break
                if start <= batch.seq < stop:
                    got.append(batch)
        except (zmq.ZMQError, WireError) as exc:
            log.warning("KV replay from %s failed: %s", self.replay_endpoints[rank], exc)
            return False
        finally:
            sock.close(linger=0)
        got.sort(key=lambda b: b.seq)
        if [b.seq for b in got] != list(range(start, stop)):
            return False  # the publisher's buffer no longer reaches back to `start`
        for batch in got:
            self._apply(batch)
            self.stats.replayed += 1
        return True
