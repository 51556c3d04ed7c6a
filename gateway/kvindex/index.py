"""The gateway's view of where KV blocks live: block hash → {worker: tiers},
plus what each shared L3 store holds.

L1 and L2 blocks belong to one worker. L3 blocks belong to a *store*: every
live worker whose registry `l3` names that store can load them, so a lookup
credits them to all of those workers. Plain data, no I/O, no locks: the
consumer (consumer.py) mutates it and the router reads it, both on the
gateway's event loop.

Invariants:
- `_local[h][url]` is a non-zero bitmask of L1|L2, and h ∈ `_held[url][tier]`
  for each of its bits (and nothing else is in `_held`);
- store s ∈ `_in_stores[h]` iff h ∈ `_store_blocks[s]`, and only stores some live worker shares hold blocks;
- `_store_workers[s]` is exactly the workers with `_workers[url] == s`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

L1, L2, L3 = 1, 2, 4
TIER_BIT = {"l1": L1, "l2": L2, "l3": L3}


class PrefixMatch(NamedTuple):
    """The leading run of a chain one worker can serve, each block counted in its fastest tier."""

    blocks: int
    l1: int
    l2: int
    l3: int


NO_MATCH = PrefixMatch(0, 0, 0, 0)


class KVIndex:
    def __init__(self) -> None:
        self._local: dict[int, dict[str, int]] = {}  # hash → {url: L1|L2 bits}
        self._held: dict[str, dict[str, set[int]]] = {}  # url → {"l1"|"l2": hashes}
        self._in_stores: dict[int, set[str]] = {}  # hash → L3 store ids holding it
        self._store_blocks: dict[str, set[int]] = {}  # store id → hashes
        self._workers: dict[str, str] = {}  # live url → its L3 store id ("" = none)
        self._store_workers: dict[str, set[str]] = {}  # store id → live urls sharing it
        self._covered: set[str] = set()  # workers whose state is synced (router may trust the index)
        self.version = 0  # bumped on every change; lookups cached per version stay valid until it moves

    # -- workers -----------------------------------------------------------------------------
    def set_worker(self, url: str, l3: str = "") -> None:
        """Add a live worker, or move it to another L3 store."""
        old = self._workers.get(url)
        if old == l3:
            return
        if old:
            self._store_workers[old].discard(url)
        self._workers[url] = l3
        self._held.setdefault(url, {"l1": set(), "l2": set()})
        if l3:
            self._store_workers.setdefault(l3, set()).add(url)
        if old:
            self._forget_store_if_unused(old)
        self.version += 1

    def drop_worker(self, url: str) -> None:
        """The worker is gone: its L1/L2 blocks go; its L3 store stays while another worker shares it."""
        if url not in self._workers:
            return
        self.replace_worker(url, (), ())
        store = self._workers.pop(url)
        del self._held[url]
        self._covered.discard(url)
        if store:
            self._store_workers[store].discard(url)
            self._forget_store_if_unused(store)
        self.version += 1

    def set_covered(self, url: str, covered: bool) -> None:
        if covered and url in self._workers:
            self._covered.add(url)
        else:
            self._covered.discard(url)
        self.version += 1

    def covers(self, url: str) -> bool:
        """Whether the index holds a synced view of `url` (else the router uses its own record)."""
        return url in self._covered

    def workers(self) -> dict[str, str]:
        return dict(self._workers)

    def _forget_store_if_unused(self, store: str) -> None:
        if not self._store_workers.get(store):
            self._store_workers.pop(store, None)
            self.replace_store(store, ())

    # -- changes -----------------------------------------------------------------------------
    def apply(self, url: str, store: str, op: str, tier: str, hashes: Iterable[int]) -> None:
        """One event. L3 events change `store` (the entry's l3); others change `url`'s holdings."""
        if tier == "l3":
            if not store:
                return
            if op == "stored":
                self._store_add(store, hashes)
            elif op == "removed":
                self._store_remove(store, hashes)
            elif op == "cleared":
                self.replace_store(store, ())
        elif url in self._workers:
            bit = TIER_BIT[tier]
            if op == "stored":
                self._local_add(url, tier, bit, hashes)
            elif op == "removed":
                self._local_remove(url, tier, bit, hashes)
            elif op == "cleared":
                self._local_remove(url, tier, bit, list(self._held[url][tier]))
        self.version += 1

    def replace_worker(self, url: str, l1: Iterable[int], l2: Iterable[int]) -> None:
        """Set `url`'s L1 and L2 holdings to exactly these (a snapshot)."""
        if url not in self._workers:
            return
        for tier, hashes in (("l1", l1), ("l2", l2)):
            bit = TIER_BIT[tier]
            self._local_remove(url, tier, bit, list(self._held[url][tier]))
            self._local_add(url, tier, bit, hashes)
        self.version += 1

    def replace_store(self, store: str, hashes: Iterable[int]) -> None:
        """Set what `store` holds to exactly these."""
        old = self._store_blocks.pop(store, set())
        for h in old:
            stores = self._in_stores[h]
            stores.discard(store)
            if not stores:
                del self._in_stores[h]
        if store in self._store_workers:  # a store nobody shares is not worth the memory
            self._store_add(store, hashes)
        self.version += 1

    def _local_add(self, url: str, tier: str, bit: int, hashes: Iterable[int]) -> None:
        held = self._held[url][tier]
        local = self._local
        for h in hashes:
            holders = local.get(h)
            if holders is None:
                local[h] = {url: bit}
            else:
                holders[url] = holders.get(url, 0) | bit
            held.add(h)

    def _local_remove(self, url: str, tier: str, bit: int, hashes: Iterable[int]) -> None:
        held = self._held[url][tier]
        local = self._local
        for h in hashes:
            if h not in held:
                continue
            held.discard(h)
            holders = local[h]
            left = holders[url] & ~bit
            if left:
                holders[url] = left
            else:
                del holders[url]
                if not holders:
                    del local[h]

    def _store_add(self, store: str, hashes: Iterable[int]) -> None:
        if store not in self._store_workers:
            return
        blocks = self._store_blocks.setdefault(store, set())
        for h in hashes:
            blocks.add(h)
            self._in_stores.setdefault(h, set()).add(store)

    def _store_remove(self, store: str, hashes: Iterable[int]) -> None:
        blocks = self._store_blocks.get(store)
        if not blocks:
            return
        for h in hashes:
            if h in blocks:
                blocks.discard(h)
                stores = self._in_stores[h]
                stores.discard(store)
                if not stores:
                    del self._in_stores[h]

    # -- reads -------------------------------------------------------------------------------
    def longest_prefix(self, hashes: Sequence[int]) -> dict[str, PrefixMatch]:
        """For every worker that holds the chain's first block: how far its leading run goes, by tier.

        A block counts once, in the fastest tier the worker has it in (L1, then
        L2, then its store's L3); the run ends at the first block it has nowhere.
        O(sum of the matching workers' run lengths).
        """
        if not hashes:
            return {}
        first, stores = self._local.get(hashes[0]), self._in_stores.get(hashes[0])
        alive = set(first) if first else set()
        for s in stores or ():
            alive.update(self._store_workers.get(s, ()))
        return {url: self._run(hashes, url) for url in alive}

    def _run(self, hashes: Sequence[int], url: str) -> PrefixMatch:
        local, in_stores, store = self._local, self._in_stores, self._workers[url]
        l1 = l2 = l3 = 0
        for h in hashes:
            holders = local.get(h)
            bits = holders.get(url, 0) if holders is not None else 0
            if bits & L1:
                l1 += 1
            elif bits:
                l2 += 1
            elif store and store in in_stores.get(h, ()):
                l3 += 1
            else:
                break
        return PrefixMatch(l1 + l2 + l3, l1, l2, l3)

    def worker_blocks(self, url: str, tier: str) -> set[int]:
        """The blocks `url` can load from `tier` (for L3: its store's)."""
        if tier == "l3":
            return set(self._store_blocks.get(self._workers.get(url, ""), ()))
        return set(self._held.get(url, {}).get(tier, ()))

    def store_blocks(self, store: str) -> set[int]:
        return set(self._store_blocks.get(store, ()))

    def stats(self) -> dict:
        return {"workers": len(self._workers), "covered": len(self._covered), "blocks": len(self._local),
                "stores": {s: len(b) for s, b in self._store_blocks.items()}}
