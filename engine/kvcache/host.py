"""L2: a larger host-RAM block store per worker, keyed by chained block hash.

Blocks arrive here when L1 evicts them (write-back) or when they are cached
(write-through), and go back to L1 by copy instead of recompute. Layout
[slots, layers, kv_heads, block_size, head_dim] keeps each block contiguous,
so a block moves to L3 or back to L1 as one slice. LRU among all entries; the
tensors are allocated with torch.empty, so untouched slots cost no RAM.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import torch


class HostEntry(NamedTuple):
    hash: int
    parent: int | None
    tokens: tuple[int, ...]


class Evicted(NamedTuple):
    entry: HostEntry
    k: torch.Tensor | None  # [layers, kv_heads, block_size, head_dim], a copy (when asked for)
    v: torch.Tensor | None


class HostPool:
    def __init__(self, num_blocks: int, num_layers: int, block_size: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, pin_memory: bool = False):
        self.num_blocks = num_blocks
        shape = (num_blocks, num_layers, num_kv_heads, block_size, head_dim)
        # pinned (page-locked) when L1 is on a GPU, so copies in and out run at full PCIe speed
        self.k = torch.empty(shape, dtype=dtype, pin_memory=pin_memory)
        self.v = torch.empty(shape, dtype=dtype, pin_memory=pin_memory)
        self._slots: OrderedDict[int, int] = OrderedDict()  # hash -> slot, least recently used first
        self._entries: dict[int, HostEntry] = {}
        self._free = list(range(num_blocks - 1, -1, -1))
        self.hits = 0  # blocks promoted back to L1

    def __contains__(self, h: int) -> bool:
        return h in self._slots

    def __len__(self) -> int:
        return len(self._slots)

    def entry(self, h: int) -> HostEntry | None:
        return self._entries.get(h)

    def hashes(self) -> list[int]:
        return list(self._slots)

    def touch(self, h: int) -> None:
        self._slots.move_to_end(h)

    def put(self, entries: list[HostEntry], k: torch.Tensor, v: torch.Tensor,
            keep_copies: bool = False) -> list[Evicted]:
        """Store blocks whose K/V are k[:, i], v[:, i] ([layers, n, ...] as L1 holds them).

        Entries already here are only touched. Returns what was pushed out to
        make room (with copies of its K/V when keep_copies, for a write-back L3).
        """
        new = [i for i, e in enumerate(entries) if e.hash not in self._slots]
        for e in entries:
            if e.hash in self._slots:
                self._slots.move_to_end(e.hash)
        new = new[-self.num_blocks:] if self.num_blocks else []  # more than fits: keep the newest
        evicted = self._make_room(len(new), keep_copies)
        if not new:
            return evicted
        slots = [self._free.pop() for _ in new]
        idx = torch.tensor(new, dtype=torch.long, device=k.device)
        dst = torch.tensor(slots, dtype=torch.long)
        self.k[dst] = k.index_select(1, idx).transpose(0, 1).to("cpu")
        self.v[dst] = v.index_select(1, idx).transpose(0, 1).to("cpu")
        for i, slot in zip(new, slots):
            e = entries[i]
            self._slots[e.hash] = slot
            self._entries[e.hash] = e
        return evicted

    def get(self, hashes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of the K/V of these blocks as [layers, n, ...] (L1's layout)."""
        idx = torch.tensor([self._slots[h] for h in hashes], dtype=torch.long)
        for h in hashes:
            self._slots.move_to_end(h)
        self.hits += len(hashes)
        return self.k.index_select(0, idx).transpose(0, 1), self.v.index_select(0, idx).transpose(0, 1)

    def block(self, h: int) -> tuple[torch.Tensor, torch.Tensor]:
        slot = self._slots[h]
        return self.k[slot], self.v[slot]

    def _make_room(self, n: int, keep_copies: bool) -> list[Evicted]:
        out: list[Evicted] = []
        while len(self._free) < n and self._slots:
            h, slot = self._slots.popitem(last=False)
            e = self._entries.pop(h)
            kv = (self.k[slot].clone(), self.v[slot].clone()) if keep_copies else (None, None)
            out.append(Evicted(e, *kv))
            self._free.append(slot)
        return out

    def remove(self, h: int) -> bool:
        slot = self._slots.pop(h, None)
        if slot is None:
            return False
        del self._entries[h]
        self._free.append(slot)
        return True

    def clear(self) -> int:
        n = len(self._slots)
        self._slots.clear()
        self._entries.clear()
        self._free = list(range(self.num_blocks - 1, -1, -1))
        return n

    def bytes_per_block(self) -> int:
        return self.k[0].numel() * self.k.element_size() * 2
