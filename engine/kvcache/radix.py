"""Radix prefix cache over the block pool (RadixAttention at block granularity).

Every cached block is a node keyed by its chained block hash (hashing.py), so a
node stands for the whole prefix up to and including its block; its parent is
the node of the previous block. Walking a prompt's block hashes from the root
finds the longest cached block-aligned prefix.

Invariants:
- a block is in exactly one of: the free list, a running request's table
  (ref > 0), or the tree (ref >= 0);
- a tree node is evictable iff its block has ref 0 and it has no children;
  evictable nodes sit in `_evictable` in LRU order (oldest first);
- every store/remove/clear is recorded in the event log.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from common.hashing import block_hashes
from engine.kvcache.events import EventLog
from engine.kvcache.pool import KVPool


@dataclass
class _Node:
    hash: int
    parent: int | None  # parent node's hash; None at the root of a chain
    block: int
    tokens: tuple[int, ...]
    children: int = 0
    last_access: float = 0.0


class MatchResult(NamedTuple):
    blocks: list[int]  # block ids of the cached prefix, in order
    hashes: list[int]
    num_tokens: int  # len(blocks) * block_size


class CachedBlock(NamedTuple):
    hash: int
    parent: int | None
    tokens: tuple[int, ...]
    block: int


class CacheListener(Protocol):
    """Told about L1 changes while the blocks' K/V are still intact (the tiers: kvcache/tiered.py)."""

    def on_cached(self, blocks: list[CachedBlock]) -> None: ...

    def on_evicted(self, blocks: list[CachedBlock]) -> None: ...

    def on_cleared(self) -> None: ...


class OutOfBlocks(Exception):
    """Raised by allocate() when neither free nor evictable blocks suffice."""


class RadixCache:
    def __init__(self, pool: KVPool, events: EventLog | None = None, enabled: bool = True):
        self.pool = pool
        self.block_size = pool.block_size
        self.events = events if events is not None else EventLog()
        self.enabled = enabled
        self.listener: CacheListener | None = None
        self._nodes: dict[int, _Node] = {}
        self._block_node: dict[int, int] = {}  # block id -> node hash
        self._evictable: OrderedDict[int, None] = OrderedDict()
        # Cached blocks with ref 0. A locked node's ancestors are locked too (a
        # request locks a root-anchored chain), so all of these can be evicted.
        self._unreferenced = 0

    # -- look-up ---------------------------------------------------------------------
    def match_prefix(self, token_ids: list[int], salt: str | None = None) -> MatchResult:
        """Longest cached block-aligned prefix of token_ids (not locked: call lock())."""
        if not self.enabled:
            return MatchResult([], [], 0)
        blocks, hashes = [], []
        bs = self.block_size
        now = time.monotonic()
        for i, h in enumerate(block_hashes(token_ids, bs, salt)):
            node = self._nodes.get(h)
            if node is None or node.tokens != tuple(token_ids[i * bs:(i + 1) * bs]):
                break
            node.last_access = now
            blocks.append(node.block)
            hashes.append(h)
        return MatchResult(blocks, hashes, len(blocks) * bs)

    # -- reference counting -------------------------------------------------------
    def lock(self, blocks: list[int]) -> None:
        for b in blocks:
            h = self._block_node.get(b)
            if h is not None:
                self._evictable.pop(h, None)
                if self.pool.ref[b] == 0:
                    self._unreferenced -= 1
            self.pool.incref(b)

    def release(self, blocks: list[int]) -> None:
        """A request is done with these blocks: cached ones become evictable,
        the rest go back to the free list."""
        for b in blocks:
            if self.pool.decref(b) > 0:
                continue
            h = self._block_node.get(b)
            if h is None:
                self.pool.free(b)
                continue
            self._unreferenced += 1
            if self._nodes[h].children == 0:
                self._evictable[h] = None

    # -- allocation (evicts LRU leaves when the free list runs short) -----------------
    def available(self) -> int:
        """Blocks that allocate() could hand out now."""
        return self.pool.num_free + self.num_evictable()

    def num_evictable(self) -> int:
        """Unreferenced cached blocks reclaimable by evicting leaves repeatedly."""
        return self._unreferenced

    def can_allocate(self, n: int) -> bool:
        return self.available() >= n

    def allocate(self, n: int) -> list[int]:
        short = n - self.pool.num_free
        if short > 0:
            self.evict(short)
        if not self.pool.can_allocate(n):
            raise OutOfBlocks(f"{n} blocks asked, {self.pool.num_free} free after eviction")
        return self.pool.allocate(n)

    def evict(self, n: int) -> int:
        """Evict up to n least-recently-used unreferenced leaves; returns how many."""
        removed: list[int] = []
        gone: list[CachedBlock] = []
        while len(removed) < n and self._evictable:
            h, _ = self._evictable.popitem(last=False)
            node = self._nodes.pop(h)
            del self._block_node[node.block]
            self.pool.free(node.block)  # its K/V stay intact until the next allocate()
            self._unreferenced -= 1
            removed.append(h)
            gone.append(CachedBlock(h, node.parent, node.tokens, node.block))
            if node.parent is not None:
                parent = self._nodes[node.parent]
                parent.children -= 1
                if parent.children == 0 and self.pool.ref[parent.block] == 0:
                    # The parent is older than the child just evicted: it goes first next.
                    self._evictable[parent.hash] = None
                    self._evictable.move_to_end(parent.hash, last=False)
        if removed:
            self.events.record("removed", removed)
            if self.listener is not None:
                self.listener.on_evicted(gone)
        return len(removed)

    # -- insertion -----------------------------------------------------------------------
    def insert(self, token_ids: list[int], blocks: list[int], salt: str | None = None, notify: bool = True) -> int:
        """Adopt the full blocks of a sequence whose KV is computed for token_ids.

        `blocks` is the caller's block table, which holds a reference on each
        block; the tree records new blocks without taking one. Where the tree
        already caches a block under the same hash (two requests computed the
        same prefix side by side), the caller switches to the cached block in
        place — blocks[i] is rewritten, its duplicate released — so a running
        request never pins an uncached copy beneath a cached prefix.
        `notify=False` keeps the listener out of it (blocks promoted from a lower
        tier are already there). Returns the number of newly cached blocks.
        """
        if not self.enabled:
            return 0
        bs = self.block_size
        hashes = block_hashes(token_ids, bs, salt)
        assert len(blocks) >= len(hashes)
        parent: int | None = None
        new_hashes, new_tokens, first_parent = [], [], None
        fresh: list[CachedBlock] = []
        now = time.monotonic()
        for i, h in enumerate(hashes):
            node = self._nodes.get(h)
            tokens = tuple(token_ids[i * bs:(i + 1) * bs])
            if node is None:
                if blocks[i] in self._block_node:
                    # This block already caches another prefix (the sequence
                    # reused a cached block it then diverged from): stop here.
                    break
                node = _Node(h, parent, blocks[i], tokens, last_access=now)
                self._nodes[h] = node
                self._block_node[blocks[i]] = h
                if parent is not None:
                    p = self._nodes[parent]
                    p.children += 1
                    self._evictable.pop(parent, None)
                if not new_hashes:
                    first_parent = parent if parent is not None else None
                new_hashes.append(h)
                new_tokens.extend(tokens)
                fresh.append(CachedBlock(h, parent, tokens, blocks[i]))
                if self.pool.ref[blocks[i]] == 0:
                    self._evictable[h] = None
                    self._unreferenced += 1
            elif node.tokens != tokens:
                break  # a 64-bit collision: never serve it
            elif node.block != blocks[i]:
                self.lock([node.block])
                self.release([blocks[i]])
                blocks[i] = node.block
            node.last_access = now
            parent = h
        if new_hashes:
            self.events.record("stored", new_hashes, first_parent, token_ids=new_tokens)
            if notify and self.listener is not None:
                self.listener.on_cached(fresh)
        return len(new_hashes)

    def is_cached(self, block: int) -> bool:
        return block in self._block_node

    # -- maintenance ------------------------------------------------------------------------
    def flush(self) -> bool:
        """Drop every cached block; refused (False) while any block is referenced."""
        if any(self.pool.ref[n.block] > 0 for n in self._nodes.values()):
            return False
        for node in self._nodes.values():
            self.pool.free(node.block)
        self._nodes.clear()
        self._block_node.clear()
        self._evictable.clear()
        self._unreferenced = 0
        self.events.record("cleared", [])
        if self.listener is not None:
            self.listener.on_cleared()
        return True

    @property
    def num_cached_blocks(self) -> int:
        return len(self._nodes)

    def snapshot(self) -> list[tuple[int, int | None]]:
        """(hash, parent) of every cached block, parents before children."""
        out, seen = [], set()

        def visit(h: int) -> None:
            if h in seen:
                return
            node = self._nodes[h]
            if node.parent is not None:
                visit(node.parent)
            seen.add(h)
            out.append((h, node.parent))

        for h in list(self._nodes):
            visit(h)
        return out
