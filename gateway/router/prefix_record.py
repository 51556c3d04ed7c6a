"""The gateway's own record of which prompt blocks it sent to which worker.

Until the KV index (fed by the workers' KV events) exists, this is what kv_aware
routing believes is cached where: a prefix sent to a worker is assumed resident
there. Bounded LRU over block hashes, so a long-running gateway forgets old
prefixes the way a worker's cache evicts them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


class PrefixRecord:
    def __init__(self, max_blocks: int = 500_000):
        self.max_blocks = max_blocks
        self._where: OrderedDict[int, set[str]] = OrderedDict()  # block hash → worker urls

    def matched_blocks(self, hashes: Sequence[int], url: str) -> int:
        """How many leading blocks of the chain `url` holds (a chain is only useful up to its first gap)."""
        n = 0
        for h in hashes:
            holders = self._where.get(h)
            if holders is None or url not in holders:
                break
            n += 1
        return n

    def add(self, hashes: Sequence[int], url: str) -> None:
        for h in hashes:
            holders = self._where.get(h)
            if holders is None:
                self._where[h] = {url}
            else:
                holders.add(url)
                self._where.move_to_end(h)
        while len(self._where) > self.max_blocks:
            self._where.popitem(last=False)

    def forget_worker(self, url: str) -> None:
        for h in [h for h, holders in self._where.items() if url in holders]:
            holders = self._where[h]
            holders.discard(url)
            if not holders:
                del self._where[h]

    def __len__(self) -> int:
        return len(self._where)
