"""Pins: prefixes held in L1 for a while, whatever the memory pressure.

A pin is a reference on each block of a cached prefix, so eviction (which only
takes unreferenced blocks) cannot touch them. The worker enforces the TTL
itself — a gateway that dies cannot leak pins — and caps the pinned share of
the pool: a pin beyond the cap is refused (409) instead of starving admission.
The pin id is the prefix's last block hash, so pinning the same prefix again
only extends its TTL. Engine thread only.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

from common.errors import ConflictError
from engine.kvcache.radix import RadixCache


@dataclass
class Pin:
    id: str
    blocks: list[int]
    expires: float  # time.monotonic()


class PinTable:
    def __init__(self, radix: RadixCache, max_blocks: int):
        self.radix = radix
        self.max_blocks = max_blocks
        self._pins: dict[str, Pin] = {}
        self._pinned: Counter[int] = Counter()  # block -> pins holding it
        self.expired = 0
        self.pin_seconds = 0.0  # pinned blocks x seconds, summed when pins end
        self._started: dict[str, float] = {}

    def pin(self, token_ids: list[int], salt: str | None, ttl_s: float) -> Pin | None:
        """Pin the L1-resident full blocks of token_ids; None when none are resident."""
        match = self.radix.match_prefix(token_ids, salt)
        if not match.blocks:
            return None
        pin_id = f"{match.hashes[-1]:016x}"
        now = time.monotonic()
        old = self._pins.get(pin_id)
        if old is not None:
            old.expires = max(old.expires, now + ttl_s)
            return old
        extra = len({b for b in match.blocks if b not in self._pinned})
        if len(self._pinned) + extra > self.max_blocks:
            raise ConflictError(
                f"pinning {len(match.blocks)} blocks would exceed the pinned capacity ({len(self._pinned)} of "
                f"{self.max_blocks} blocks pinned; see --max-pinned-fraction)", code="pin_capacity")
        self.radix.lock(match.blocks)
        self._pinned.update(match.blocks)
        pin = self._pins[pin_id] = Pin(pin_id, list(match.blocks), now + ttl_s)
        self._started[pin_id] = now
        return pin

    def renew(self, pin_id: str, ttl_s: float) -> Pin | None:
        """Extend a live pin by its id (as pinning its prefix again would); None when it lapsed or never was."""
        pin = self._pins.get(pin_id)
        if pin is not None:
            pin.expires = max(pin.expires, time.monotonic() + ttl_s)
        return pin

    def unpin(self, pin_id: str) -> bool:
        pin = self._pins.pop(pin_id, None)
        if pin is None:
            return False
        self.pin_seconds += len(pin.blocks) * (time.monotonic() - self._started.pop(pin_id))
        self._pinned.subtract(pin.blocks)
        for b in pin.blocks:
            if self._pinned[b] <= 0:
                del self._pinned[b]
        self.radix.release(pin.blocks)
        return True

    def expire(self, now: float | None = None) -> int:
        """Release every pin whose TTL lapsed; the engine loop calls this each iteration."""
        if not self._pins:
            return 0
        now = time.monotonic() if now is None else now
        lapsed = [p.id for p in self._pins.values() if p.expires <= now]
        for pin_id in lapsed:
            self.unpin(pin_id)
        self.expired += len(lapsed)
        return len(lapsed)

    def clear(self) -> None:
        for pin_id in list(self._pins):
            self.unpin(pin_id)

    def get(self, pin_id: str) -> Pin | None:
        return self._pins.get(pin_id)

    def __len__(self) -> int:
        return len(self._pins)

    @property
    def num_blocks(self) -> int:
        return len(self._pinned)

    def describe(self) -> dict:
        now = time.monotonic()
        return {"pins": len(self._pins), "pinned_blocks": len(self._pinned), "max_pinned_blocks": self.max_blocks,
                "expired": self.expired, "pin_block_seconds": round(self.pin_seconds, 3),
                "active": [{"pin_id": p.id, "tokens": len(p.blocks) * self.radix.block_size,
                            "expires_in_s": round(p.expires - now, 3)} for p in self._pins.values()]}
