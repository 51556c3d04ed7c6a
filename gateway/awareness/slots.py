"""What the prefetcher works on: an `Intent` (a prefix wanted resident, and pinned, on a worker) and the
`Slot` that carries one intent key's prefetches and pin from request to release (prefetch.py)."""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

from gateway.workers.kv_ops import TIERS


def token_array(ids) -> array:
    """Token ids as a compact array (4 bytes a token, not a list's 36)."""
    return ids if isinstance(ids, array) else array("I", ids)


def digest(ids: array) -> int:
    """What a slot keeps of the prefix it sent: a hash of its bytes (with its length), not the ids."""
    return hash(ids.tobytes())


@dataclass(frozen=True)
class Intent:
    key: tuple[str, str]
    ids: list[int] | array | None  # None: a renewal, the prefix the slot sent last (Prefetcher.holds)
    steps: int = 1
    pin_ttl_s: float | None = None
    url: str | None = None  # a fixed worker (a caller's conversation); None: route it
    pin_only: bool = False  # pin what the worker holds, compute nothing
    min_new_blocks: int = 1  # send only once the prefix holds this many full blocks more than the last one sent
    max_tokens: int = 0  # the predicted call's output budget (where it is placed weighs it)
    salt: str | None = None  # the cache salt of the calls it serves (their tenant's, gateway/auth/keys.py)


@dataclass
class Slot:
    key: tuple[str, str]
    url: str
    wanted: Intent | None = None  # the newest intent not sent yet
    queued_at: float = 0.0
    running: bool = False
    sent_len: int = 0  # tokens of the prefix of the last prefetch sent, and a digest() of them: a pass whose
    sent_digest: int = 0  # prefix did not change renews the pin by its id, so no slot keeps the ids themselves
    resident_tokens: int = 0
    sources: dict = field(default_factory=lambda: dict.fromkeys(TIERS, 0))
    prefetches: int = 0
    failures: int = 0
    error: str | None = None
    pin: str | None = None
    pinned_tokens: int = 0
    pin_since: float | None = None  # wall clock
    pin_expires: float = 0.0  # monotonic
    pin_held_s: float = 0.0
    pin_refused: bool = False  # the worker's pinned capacity was full: prefetch without a pin from then on
    pin_ttl_s: float | None = None  # the pin the last prefetch sent asked for (None: unpinned)
    released: bool = False

    @property
    def pending(self) -> bool:
        return self.running or self.wanted is not None
