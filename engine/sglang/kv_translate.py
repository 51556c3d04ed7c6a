"""SGLang KV events → agentgate KV events, recorded into an EventLog.

SGLang names a block by its own hash; the gateway's index names it by ours
(common/hashing.py), so that one index serves both worker kinds. A
BlockStored event carries the blocks' token ids and the SGLang hash of the
block before them, which is enough to recompute our chain: our hash of a block
= hash_block(our hash of its parent, its tokens), where a block with no parent
starts at the root of its cache salt. The translator keeps, per DP rank,
SGLang hash → (our hash, tiers it sits in); that map is what turns a later
BlockRemoved (which has hashes only) into our hashes.

Invariants:
- A block is announced ("stored" in a tier) when the first rank gets it there,
  and withdrawn ("removed") when the last rank loses it; so several DP ranks
  behind one worker URL read as one cache.
- Blocks whose hash we cannot recompute (parent unknown to us, a LoRA
  adapter's blocks, a page size other than ours, a partial page) are tracked as
  foreign: never announced, so their removal is silent too.
- The map holds at most `max_blocks` entries. Past that, the oldest entry is
  dropped and withdrawn from the index first: the gateway may then under-report
  a cached block, never claim one that is gone.
- reset(rank) (AllBlocksCleared, lost events, a restarted publisher) withdraws
  everything the rank held.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

from common.hashing import hash_block, root_hash
from engine.kvcache.events import EventLog
from engine.sglang.kv_wire import Cleared, Removed, Stored, Unknown
from engine.sglang.pinned import MEDIUM_TIERS

log = logging.getLogger("agentgate.sglang.kv")

TIER_BITS = {"l1": 1, "l2": 2, "l3": 4}
DEFAULT_MAX_BLOCKS = 500_000  # ~ a 80 GB GPU pool plus a few times that in host memory, at 16 tokens/block


class KVTranslator:
    def __init__(self, events: EventLog, block_size: int = 16, max_blocks: int = DEFAULT_MAX_BLOCKS):
        assert block_size > 0 and max_blocks > 0
        self.events = events
        self.block_size = block_size
        self.max_blocks = max_blocks
        # rank -> {sglang hash: [our hash or None (foreign), tier bits]}; dicts keep insertion order,
        # which is the eviction order when the map is full.
        self._ranks: dict[int, dict[int, list]] = {}
        self._held: Counter = Counter()  # (our hash, tier) -> how many ranks hold it there
        self._size = 0
        self._lock = threading.Lock()  # apply() runs on the bridge thread, snapshot() anywhere
        self.foreign_blocks = 0  # blocks seen whose hash we could not recompute
        self.dropped_blocks = 0  # entries dropped to stay within max_blocks
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return self._size

    # -- applying events ---------------------------------------------------------------------
    def apply(self, rank: int, events: list) -> None:
        with self._lock:
            for ev in events:
                if isinstance(ev, Stored):
                    self._stored(rank, ev)
                elif isinstance(ev, Removed):
                    self._removed(rank, ev)
                elif isinstance(ev, Cleared):
                    self._reset(rank)
                elif isinstance(ev, Unknown):
                    self._warn_once(f"event:{ev.tag}", "skipping SGLang KV event of unknown type %r", ev.tag)

    def reset(self, rank: int) -> None:
        """Forget (and withdraw) everything `rank` held."""
        with self._lock:
            self._reset(rank)

    def _tier(self, medium) -> str | None:
        tier = MEDIUM_TIERS.get(medium)
        if tier is None:
            self._warn_once(f"medium:{medium}", "skipping SGLang KV events of unknown medium %r", medium)
        return tier

    def _stored(self, rank: int, ev: Stored) -> None:
        tier = self._tier(ev.medium)
        if tier is None:
            return
        blocks = self._ranks.setdefault(rank, {})
        bit, bs = TIER_BITS[tier], self.block_size
        chain, parent_ours = self._chain_start(blocks, ev)
        if chain is not None and not (ev.block_size == bs and len(ev.token_ids) == bs * len(ev.block_hashes)):
            self._warn_once(f"size:{ev.block_size}", "SGLang blocks of %d tokens (ours are %d): not indexed; "
                            "launch SGLang with --page-size %d", ev.block_size, bs, bs)
            chain = None
        run: list[int] = []  # consecutive newly announced hashes: one "stored" event per run
        run_tokens: list[int] = []
        run_parent = parent_ours

        def ship() -> None:
            if run:
                self.events.record("stored", list(run), run_parent, tier=tier, token_ids=list(run_tokens))
                run.clear()
                run_tokens.clear()

        for i, sgl_hash in enumerate(ev.block_hashes):
            tokens = ev.token_ids[i * bs:(i + 1) * bs]
            entry = blocks.get(sgl_hash)
            if entry is None:
                if self._size >= self.max_blocks:
                    ship()  # the overflow's "removed" must follow the "stored" it may withdraw
                    self._make_room()
                entry = blocks[sgl_hash] = [None if chain is None else hash_block(chain, tokens), 0]
                self._size += 1
                if entry[0] is None:
                    self.foreign_blocks += 1
            ours = entry[0]  # an existing entry keeps the hash it was first given
            fresh = not entry[1] & bit
            entry[1] |= bit
            if fresh and ours is not None:
                self._held[(ours, tier)] += 1
                if self._held[(ours, tier)] == 1:
                    run.append(ours)
                    run_tokens.extend(tokens)
                    chain = ours
                    continue
            ship()  # the run breaks here
            run_parent = chain = ours
        ship()

    def _chain_start(self, blocks: dict, ev: Stored) -> tuple[int | None, int | None]:
        """(our hash to chain the first block from, its parent hash as events name it);
        chain None when the blocks cannot be ours."""
        if ev.lora:
            self._warn_once("lora", "LoRA adapters' KV blocks are not indexed by the gateway")
            return None, None
        if ev.parent is None:
            return root_hash(ev.cache_salt), None
        parent = blocks.get(ev.parent)
        if parent is None or parent[0] is None:
            return None, None
        return parent[0], parent[0]

    def _removed(self, rank: int, ev: Removed) -> None:
        tier = self._tier(ev.medium)
        if tier is None:
            return
        blocks = self._ranks.get(rank, {})
        bit = TIER_BITS[tier]
        gone = []
        for sgl_hash in ev.block_hashes:
            entry = blocks.get(sgl_hash)
            if entry is None or not entry[1] & bit:
                continue
            entry[1] &= ~bit
            if entry[0] is not None and self._release(entry[0], tier):
                gone.append(entry[0])
            if not entry[1]:
                del blocks[sgl_hash]
                self._size -= 1
        if gone:
            self.events.record("removed", gone, tier=tier)

    def _release(self, ours: int, tier: str) -> bool:
        """One rank fewer holds `ours` in `tier`; True when that was the last."""
        key = (ours, tier)
        self._held[key] -= 1
        if self._held[key] <= 0:
            del self._held[key]
            return True
        return False

    def _reset(self, rank: int) -> None:
        blocks = self._ranks.pop(rank, None)
        if not blocks:
            return
        gone: dict[str, list[int]] = {}
        for ours, bits in blocks.values():
            if ours is None:
                continue
            for tier, bit in TIER_BITS.items():
                if bits & bit and self._release(ours, tier):
                    gone.setdefault(tier, []).append(ours)
        self._size -= len(blocks)
        if not self._held:  # nothing left anywhere: one compact "cleared" per tier
            for tier in gone:
                self.events.record("cleared", [], tier=tier)
        else:
            for tier, hashes in gone.items():
                self.events.record("removed", hashes, tier=tier)

    def _make_room(self) -> None:
        rank = max(self._ranks, key=lambda r: len(self._ranks[r]))
        blocks = self._ranks[rank]
        sgl_hash = next(iter(blocks))
        ours, bits = blocks.pop(sgl_hash)
        self._size -= 1
        self.dropped_blocks += 1
        self._warn_once("full", "KV map full (%d blocks): dropping the oldest; the gateway may under-report "
                        "cached prefixes of this worker", self.max_blocks)
        if ours is not None:
            for tier, bit in TIER_BITS.items():
                if bits & bit and self._release(ours, tier):
                    self.events.record("removed", [ours], tier=tier)

    def _warn_once(self, key: str, msg: str, *args) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg, *args)

    # -- reading -------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, list]:
        """Our view of the worker's cache in the shape of wire.py's Snapshot `tiers`:
        {l1: [[hash, parent|None], ...], l2: [hash, ...], l3: [hash, ...]} (parents not tracked: None)."""
        with self._lock:
            out: dict[str, list] = {"l1": [], "l2": [], "l3": []}
            for ours, tier in self._held:
                out[tier].append([ours, None] if tier == "l1" else ours)
            return out
