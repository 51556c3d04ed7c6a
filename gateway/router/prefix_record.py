"""The gateway's own record of which prompt blocks it sent to which worker.

Until the KV index (fed by the workers' KV events) exists, this is what kv_aware
routing believes is cached where: a prefix sent to a worker is assumed resident
there. Bounded LRU over block hashes, so a long-running gateway forgets old
prefixes the way a worker's cache evicts them. With the index, the recent part
of the record (sent within the last few seconds) still counts: a prefix being
prefilled right now is in no index yet, and the next call that shares it should
go where it is being computed (the worker then computes it once, see the engine
scheduler's in-batch prefix sharing) instead of computing it a second time
elsewhere.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence


class PrefixRecord:
    def __init__(self, max_blocks: int = 500_000, clock: Callable[[], float] = time.monotonic):
        self.max_blocks = max_blocks
        self.clock = clock
        self._where: OrderedDict[int, dict[str, float]] = OrderedDict()  # block hash → {worker url: last sent}

    def matched_blocks(self, hashes: Sequence[int], url: str, max_age_s: float | None = None) -> int:
        """How many leading blocks of the chain `url` holds (a chain is only useful up to its first gap);
        with max_age_s, only blocks sent there within that many seconds count."""
        cutoff = None if max_age_s is None else self.clock() - max_age_s
        n = 0
        for h in hashes:
            sent = self._where.get(h, {}).get(url)
            if sent is None or cutoff is not None and sent < cutoff:
                break
            n += 1
        return n

    def resident_blocks(self, hashes: Sequence[int], url: str) -> int:
        """matched_blocks: all this record knows is what it sent, which it takes as resident."""
        return self.matched_blocks(hashes, url)

    def add(self, hashes: Sequence[int], url: str) -> None:
        now = self.clock()
        for h in hashes:
            holders = self._where.get(h)
            if holders is None:
                self._where[h] = {url: now}
            else:
                holders[url] = now
                self._where.move_to_end(h)
        while len(self._where) > self.max_blocks:
            self._where.popitem(last=False)

    def forget_worker(self, url: str) -> None:
        for h in [h for h, holders in self._where.items() if url in holders]:
            holders = self._where[h]
            holders.pop(url, None)
            if not holders:
                del self._where[h]

    def __len__(self) -> int:
        return len(self._where)
