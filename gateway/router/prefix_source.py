"""Tier credit: how much a cached block saves, by the tier it sits in, and the
KV index as the kv_aware policy's PrefixSource.

A block in L1 saves its whole prefill (credit 1.0). One in L2 must first be
copied from host RAM, one in L3 read from the shared store, so they save less.
The L2/L3 numbers are 1 − (tier cost / recompute cost) per 1,000 prefix tokens as
scripts/bench_kv.py measured them on the CPU engine (BENCHMARKS.md "KV tiers":
0.984 and 0.979, rounded down); on a GPU, where recompute is far cheaper, set
them again with --kv-credit-l2/--kv-credit-l3. They live in gateway/config.py with the other
constants (GatewayConfig's defaults and those flags read them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.config import L1_CREDIT, L2_CREDIT, L3_CREDIT, RECENT_S
from gateway.kvindex.index import NO_MATCH, KVIndex, PrefixMatch
from gateway.router.prefix_record import PrefixRecord



@dataclass(frozen=True)
class TierCredit:
    l1: float = L1_CREDIT
    l2: float = L2_CREDIT
    l3: float = L3_CREDIT

    def __post_init__(self) -> None:
        if not all(0.0 <= w <= 1.0 for w in (self.l1, self.l2, self.l3)):
            raise ValueError(f"tier credits must be in [0, 1], got {self}")

    def of(self, match: PrefixMatch) -> float:
        return match.l1 * self.l1 + match.l2 * self.l2 + match.l3 * self.l3




class IndexPrefixSource:
    """matched_blocks from the KV index where it covers the worker, else from `fallback`
    (the gateway's own PrefixRecord: workers that publish nothing keep the old behaviour).
    Where the index covers the worker, what the record says was sent there within
    `recent_s` counts too (full credit): the index learns of a prefix only once it is
    computed, and a call that shares a prefix being prefilled belongs on the same worker.

    kv_aware asks once per candidate worker for the same chain; the first ask
    computes every worker's match and the rest read it back, until the chain or
    the index changes.
    """

    def __init__(self, index: KVIndex, fallback: PrefixRecord, credit: TierCredit = TierCredit(),
                 recent_s: float = RECENT_S):
        self.index = index
        self.fallback = fallback
        self.credit = credit
        self.recent_s = recent_s
        self._chain: Sequence[int] | None = None  # held, so that `is` below cannot match a recycled id
        self._version = -1
        self._matches: dict[str, PrefixMatch] = {}

    def matched_blocks(self, hashes: Sequence[int], url: str) -> float:
        if not self.index.covers(url):
            return self.fallback.matched_blocks(hashes, url)
        return max(self.credit.of(self.match(hashes, url)), self._recent(hashes, url))

    def resident_blocks(self, hashes: Sequence[int], url: str) -> int:
        """Leading blocks of the chain in `url`'s own pool (L1) or sent there within `recent_s`: where
        the call would share the blocks themselves with the calls that put them there."""
        if not self.index.covers(url):
            return self.fallback.matched_blocks(hashes, url)
        return max(self.match(hashes, url).l1, self._recent(hashes, url))

    def _recent(self, hashes: Sequence[int], url: str) -> int:
        """Leading blocks the gateway sent to `url` within `recent_s` (0 when that window is off)."""
        return self.fallback.matched_blocks(hashes, url, max_age_s=self.recent_s) if self.recent_s > 0 else 0

    def match(self, hashes: Sequence[int], url: str) -> PrefixMatch:
        if hashes is not self._chain or self.index.version != self._version:
            self._matches = self.index.longest_prefix(hashes)
            self._chain, self._version = hashes, self.index.version
        return self._matches.get(url, NO_MATCH)
