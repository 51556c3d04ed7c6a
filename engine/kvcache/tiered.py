"""The KV tiers below L1: L2 (host RAM, kvcache/host.py) and L3 (shared store,
kvcache/store.py), kept consistent with the radix tree over the L1 pool.

Movement (all decided on the engine thread; disk I/O on two worker threads):
- cached in L1 → copied to L2 now if L2 is write-through; written to L3 now if
  L3 is write-through (the default: L3 is shared, so other workers gain from a
  prefix as soon as it exists);
- evicted from L1 → copied to L2 (write-back, the default), or straight to L3
  when there is no L2 and L3 is write-back; pushed out of L2 → written to a
  write-back L3, else gone;
- a prompt whose prefix runs on past L1 into L2/L3 gets those blocks copied
  back into L1 (`plan` → `load` → `promote`): L2 by memcpy on the engine
  thread, L3 read and checked on the reader thread while the engine keeps
  stepping other requests.
Every store/remove in L2/L3 is a KV event (tier "l2"/"l3") beside L1's own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

import torch

from engine.compute import single_threaded_torch
from engine.kvcache.events import EventLog
from engine.kvcache.host import HostEntry, HostPool
from engine.kvcache.pool import KVPool
from engine.kvcache.radix import CachedBlock, OutOfBlocks, RadixCache
from engine.kvcache.store import BlockStore, decode_block, encode_block

log = logging.getLogger("agentgate.kv")


class Step(NamedTuple):
    index: int  # block index in the prompt
    hash: int
    tier: str  # "l2" | "l3"


class Loaded(NamedTuple):
    """K/V of planned L3 blocks, read off the engine thread; None from the first failure on."""

    blocks: dict[int, tuple[torch.Tensor, torch.Tensor]]  # hash -> (k, v) [layers, bs, kvh, d]


class TierStats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.promoted = {"l2": 0, "l3": 0}  # blocks copied back into L1
        self.demoted_l2 = 0
        self.l3_written = 0
        self.l3_write_errors = 0
        self.l3_corrupt = 0
        self.l3_load_seconds = 0.0


class TieredCache:
    def __init__(self, radix: RadixCache, host: HostPool | None, store: BlockStore | None, events: EventLog, *,
                 l2_write_through: bool = False, l3_write_through: bool = True):
        self.radix = radix
        self.pool: KVPool = radix.pool
        self.host = host
        self.store = store
        self.events = events
        self.l2_write_through = l2_write_through
        self.l3_write_through = l3_write_through
        self.stats = TierStats()
        self.block_shape = self.pool.block_shape  # [layers, kvh, bs, d]
        self._reader = ThreadPoolExecutor(1, "kv-l3-read", single_threaded_torch) if store else None
        self._writer = ThreadPoolExecutor(1, "kv-l3-write", single_threaded_torch) if store else None
        radix.listener = self

    @property
    def enabled(self) -> bool:
        return self.host is not None or self.store is not None

    def close(self) -> None:
        for ex in (self._reader, self._writer):
            if ex is not None:
                ex.shutdown(wait=True, cancel_futures=False)

    # -- L1 listener (engine thread) ------------------------------------------------------------
    def on_cached(self, blocks: list[CachedBlock]) -> None:
        if self.host is not None and self.l2_write_through:
            self._to_l2(blocks)
        if self.store is not None and self.l3_write_through:
            self._to_l3(blocks)

    def on_evicted(self, blocks: list[CachedBlock]) -> None:
        if self.host is not None:
            self._to_l2(blocks)
        elif self.store is not None and not self.l3_write_through:
            self._to_l3(blocks)

    def on_cleared(self) -> None:
        if self.host is not None and self.host.clear():
            self.events.record("cleared", [], tier="l2")

    def _index(self, blocks: list[int]) -> torch.Tensor:
        return torch.tensor(blocks, dtype=torch.long, device=self.pool.k.device)

    def _gather(self, blocks: list[CachedBlock]) -> tuple[torch.Tensor, torch.Tensor]:
        """Host copies of these L1 blocks' K/V, [layers, n, ...]."""
        idx = self._index([b.block for b in blocks])
        k, v = self.pool.read(idx)
        return k.to("cpu"), v.to("cpu")

    def _to_l2(self, blocks: list[CachedBlock]) -> None:
        fresh = [b for b in blocks if b.hash not in self.host]
        for b in blocks:
            if b.hash in self.host:
                self.host.touch(b.hash)
        if not fresh:
            return
        idx = self._index([b.block for b in fresh])
        spill = self.store is not None and not self.l3_write_through
        evicted = self.host.put([HostEntry(b.hash, b.parent, b.tokens) for b in fresh], *self.pool.read(idx),
                                keep_copies=spill)
        with self.stats.lock:
            self.stats.demoted_l2 += len(fresh)
        if evicted:
            self.events.record("removed", [e.entry.hash for e in evicted], tier="l2")
            if spill:
                for e in evicted:
                    self._write_l3(e.entry.hash, e.entry.parent, e.entry.tokens, e.k, e.v)
        self.events.record("stored", [b.hash for b in fresh if b.hash in self.host], fresh[0].parent, tier="l2")

    def _to_l3(self, blocks: list[CachedBlock]) -> None:
        k, v = self._gather(blocks)
        for i, b in enumerate(blocks):
            self._write_l3(b.hash, b.parent, b.tokens, k[:, i], v[:, i])

    def _write_l3(self, h: int, parent: int | None, tokens, k: torch.Tensor, v: torch.Tensor) -> None:
        self._writer.submit(self._write_job, h, parent, tokens, k, v)

    def _write_job(self, h: int, parent: int | None, tokens, k: torch.Tensor, v: torch.Tensor) -> None:
        try:
            if self.store.contains(h):
                return
            gone = self.store.put(h, encode_block(h, parent, tokens, k, v))
        except OSError as exc:
            with self.stats.lock:
                self.stats.l3_write_errors += 1
            log.warning("L3 write failed (%s); the block stays uncached there", exc)
            return
        with self.stats.lock:
            self.stats.l3_written += 1
        self.events.record("stored", [h], parent, tier="l3")
        if gone:
            self.events.record("removed", gone, tier="l3")

    def flush_writes(self, timeout: float = 30.0) -> None:
        """Wait until every L3 write queued so far is done (tests, benchmarks, shutdown)."""
        if self._writer is not None:
            self._writer.submit(lambda: None).result(timeout)

    # -- look-up and promotion --------------------------------------------------------------------
    def plan(self, hashes: list[int], start: int) -> list[Step]:
        """The blocks from `start` on that a lower tier holds, stopping at the first gap."""
        steps: list[Step] = []
        for i in range(start, len(hashes)):
            h = hashes[i]
            if self.host is not None and h in self.host:
                steps.append(Step(i, h, "l2"))
            elif self.store is not None and self.store.contains(h):
                steps.append(Step(i, h, "l3"))
            else:
                break
        return steps

    def load(self, steps: list[Step], tokens: list[list[int]], done: Callable[[Future], None]) -> Future | None:
        """Read the plan's L3 blocks on the reader thread; `done(future)` runs there when finished."""
        wanted = [(s.hash, tuple(tokens[s.index])) for s in steps if s.tier == "l3"]
        if not wanted:
            return None
        fut = self._reader.submit(self._read_job, wanted)
        fut.add_done_callback(done)
        return fut

    def _read_job(self, wanted: list[tuple[int, tuple[int, ...]]]) -> Loaded:
        import time

        t0 = time.perf_counter()
        out: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for h, toks in wanted:
            data = self.store.get(h)
            blk = decode_block(data, h, self.pool.k.dtype, self.block_shape) if data is not None else None
            if blk is None or blk.tokens != toks:
                if data is not None:  # there but unusable: never serve it, and stop it misleading others
                    with self.stats.lock:
                        self.stats.l3_corrupt += 1
                    self.store.delete(h)
                    self.events.record("removed", [h], tier="l3")
                break
            out[h] = (blk.k, blk.v)
        with self.stats.lock:
            self.stats.l3_load_seconds += time.perf_counter() - t0
        return Loaded(out)

    def promote(self, token_ids: list[int], salt: str | None, held: list[int], steps: list[Step],
                loaded: Loaded | None) -> tuple[list[int], dict[str, int]]:
        """Copy the planned blocks into L1 after the `held` (locked, cached) prefix blocks.

        Stops at the first block no longer available (an L2 entry pushed out
        meanwhile, an L3 blob that failed its checks). The new blocks come back
        allocated (one reference each, the caller's) and cached in the tree.
        Returns (new blocks, blocks promoted per tier).
        """
        counts = {"l2": 0, "l3": 0}
        usable: list[tuple[Step, torch.Tensor, torch.Tensor]] = []
        for s in steps:
            if s.index != len(held) + len(usable):
                break
            if s.tier == "l2":
                if self.host is None or s.hash not in self.host:
                    break
                k, v = self.host.get([s.hash])
                usable.append((s, k[:, 0], v[:, 0]))
            else:
                kv = loaded.blocks.get(s.hash) if loaded is not None else None
                if kv is None:
                    break
                usable.append((s, kv[0], kv[1]))
        if not usable:
            return [], counts
        try:
            new = self.radix.allocate(len(usable))
        except OutOfBlocks:
            return [], counts
        idx = self._index(new)
        dev = self.pool.k.device
        self.pool.write(idx, torch.stack([k for _, k, _ in usable], dim=1).to(dev, non_blocking=True),
                        torch.stack([v for _, _, v in usable], dim=1).to(dev, non_blocking=True))
        bs = self.pool.block_size
        table = held + new
        # insert() may swap a block for one another request cached meanwhile: read the table back
        self.radix.insert(token_ids[:len(table) * bs], table, salt, notify=False)
        new = table[len(held):]
        for s, _, _ in usable:
            counts[s.tier] += 1
        with self.stats.lock:
            for tier, n in counts.items():
                self.stats.promoted[tier] += n
        return new, counts

    # -- reads -------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, list[int]]:
        return {"l2": self.host.hashes() if self.host is not None else [],
                "l3": self.store.hashes() if self.store is not None else []}

    def describe(self) -> dict:
        s = self.stats
        with s.lock:
            out = {"promoted_blocks": dict(s.promoted), "demoted_to_l2_blocks": s.demoted_l2,
                   "l3_written_blocks": s.l3_written, "l3_write_errors": s.l3_write_errors,
                   "l3_corrupt_blocks": s.l3_corrupt, "l3_load_seconds": round(s.l3_load_seconds, 4)}
        if self.host is not None:
            out["l2"] = {"capacity_blocks": self.host.num_blocks, "used_blocks": len(self.host),
                         "bytes_per_block": self.host.bytes_per_block(), "hits": self.host.hits,
                         "write_through": self.l2_write_through}
        if self.store is not None:
            out["l3"] = {**self.store.stats(), "write_through": self.l3_write_through}
        return out
