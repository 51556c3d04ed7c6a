"""Wakes the SSE followers of a workflow when this replica appends to its event stream.

Only a workflow's owner writes its events (scheduler/lifecycle.py), so a follower of a workflow
this replica runs needs no blocking read of Redis held open per stream: it waits here, in
memory, and reads the stream when the bell rings. Entries live while someone watches.
"""

from __future__ import annotations

import asyncio
from contextlib import contextmanager


class _Ring:
    __slots__ = ("rung", "event", "watchers")

    def __init__(self):
        self.rung = 0  # appends since the first watcher came
        self.event = asyncio.Event()
        self.watchers = 0


class EventBell:
    def __init__(self):
        self._rings: dict[str, _Ring] = {}

    @contextmanager
    def watching(self, wf_id: str):
        ring = self._rings.get(wf_id)
        if ring is None:
            ring = self._rings[wf_id] = _Ring()
        ring.watchers += 1
        try:
            yield
        finally:
            ring.watchers -= 1
            if not ring.watchers:
                del self._rings[wf_id]

    def rung(self, wf_id: str) -> int:
        """How often it rang so far (read before the stream, then `wait(wf_id, since=that)`)."""
        ring = self._rings.get(wf_id)
        return ring.rung if ring is not None else 0

    def ring(self, wf_id: str) -> None:
        ring = self._rings.get(wf_id)
        if ring is not None:
            ring.rung += 1
            ring.event.set()
            ring.event = asyncio.Event()

    async def wait(self, wf_id: str, since: int, timeout: float) -> bool:
        """True once it has rung past `since` (at once if it already has); False after `timeout`.
        The caller is `watching(wf_id)`."""
        ring = self._rings[wf_id]
        if ring.rung != since:
            return True
        try:
            await asyncio.wait_for(ring.event.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def __len__(self) -> int:
        return len(self._rings)
