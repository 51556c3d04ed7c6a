"""The KV API the worker serves (POST /kv/prefetch, /kv/pin, /kv/unpin, GET /kv/snapshot, /kv/stats,
/flush_cache): prefetch is thread-safe (its work runs on the engine thread); the rest are read or
changed on the engine thread, through Engine.call."""

from __future__ import annotations

import os
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING

from common.errors import BadRequestError, ConflictError
from engine.request import Request, SamplingParams, StepOutput

if TYPE_CHECKING:
    from engine.runtime.engine import Engine


class KVApi:
    def __init__(self, engine: "Engine"):
        self.engine = engine

    def prefetch(self, token_ids: list[int], salt: str | None = None, pin_ttl_s: float | None = None,
                 priority: int = 0) -> Future:
        """Make the full blocks of token_ids resident in L1: promote from L2, load
        from L3, compute the rest with a background prefill. Resolves to
        {resident_tokens, from: {l1, l2, l3, computed}} (computed: by this prefetch
        itself) plus, when pinned, {pin_id, pinned_tokens, expires_in_s}; a pin
        beyond the cap fails it with a 409."""
        e = self.engine
        bs = e.cfg.block_size
        ids = list(token_ids[:len(token_ids) // bs * bs])
        fut: Future = Future()
        if not ids:
            fut.set_result({"resident_tokens": 0, "from": {"l1": 0, "l2": 0, "l3": 0, "computed": 0}})
            return fut
        e.validate(ids, 0)

        def done(out: StepOutput) -> None:  # engine thread
            if not out.finished or fut.done():
                return
            if out.finish_reason and out.finish_reason.get("type") == "abort":
                fut.set_exception(BadRequestError(f"prefetch aborted: {out.finish_reason.get('message')}"))
                return
            resident = e.cache.match_prefix(ids, salt).num_tokens
            src = {"l1": req.tier_tokens.get("l1", 0), "l2": req.tier_tokens.get("l2", 0),
                   "l3": req.tier_tokens.get("l3", 0)}
            # The rest is resident because this prefetch computed it, or because a call computed it
            # while the prefetch waited or stepped aside (found in L1 when it resumed).
            rest = max(0, resident - sum(src.values()))
            src["computed"] = min(req.prefilled, rest)
            src["l1"] += rest - src["computed"]
            result = {"resident_tokens": resident, "from": src}
            if pin_ttl_s:
                try:
                    pin = e.pins.pin(ids, salt, pin_ttl_s)
                except ConflictError as exc:  # resident, but not pinned: the caller must know
                    fut.set_exception(ConflictError(f"the prefix is resident ({resident} tokens) but not pinned: "
                                                    f"{exc.message}", code="pin_capacity"))
                    return
                if pin is not None:
                    result.update(self._pin_json(pin))
            fut.set_result(result)

        req = Request(rid=f"prefetch-{os.urandom(6).hex()}", prompt_ids=ids, params=SamplingParams(max_new_tokens=0),
                      sink=done, salt=salt, background=True, priority=priority)
        e.submit(req)
        return fut

    def _pin_json(self, pin) -> dict:
        return {"pin_id": pin.id, "pinned_tokens": len(pin.blocks) * self.engine.cfg.block_size,
                "expires_in_s": round(pin.expires - time.monotonic(), 3)}

    def pin(self, token_ids: list[int], salt: str | None, ttl_s: float) -> dict | None:
        """Engine thread (through call()): pin the resident full blocks of token_ids."""
        pin = self.engine.pins.pin(token_ids, salt, ttl_s)
        return self._pin_json(pin) if pin is not None else None

    def renew(self, pin_id: str, ttl_s: float) -> dict | None:
        """Engine thread: extend a live pin by its id (no prefix sent again); None when it is gone."""
        pin = self.engine.pins.renew(pin_id, ttl_s)
        return self._pin_json(pin) if pin is not None else None

    def unpin(self, pin_id: str | None = None, token_ids: list[int] | None = None, salt: str | None = None) -> str | None:
        """Engine thread: drop a pin by id or by its prefix; returns the id dropped, or None."""
        e = self.engine
        if pin_id is None and token_ids is not None:
            match = e.cache.match_prefix(token_ids, salt)
            pin_id = f"{match.hashes[-1]:016x}" if match.hashes else None
        return pin_id if pin_id is not None and e.pins.unpin(pin_id) else None

    def usage(self) -> dict:
        e = self.engine
        used = e.batcher.blocks_in_use()
        return {"total_blocks": e.pool.num_blocks, "free_blocks": e.pool.num_free,
                "cached_blocks": e.cache.num_cached_blocks, "evictable_blocks": e.cache.num_evictable(),
                "used_blocks": used, "token_usage": used / e.pool.num_blocks, "block_size": e.pool.block_size}

    def flush(self) -> bool:
        """Engine thread: drop the prefix cache and the pins; False while requests run."""
        e = self.engine
        if e.batcher.has_work() or e.staging.waiting:
            return False
        e.pins.clear()
        return e.cache.flush()

    def snapshot(self) -> dict:
        """Engine thread: every block this worker holds, per tier (GET /kv/snapshot)."""
        e = self.engine
        lower = e.tiers.snapshot()
        return {"block_size": e.cfg.block_size, "l3": e.l3_id,
                "tiers": {"l1": [[h, p] for h, p in e.cache.snapshot()], "l2": lower["l2"], "l3": lower["l3"]}}

    def stats(self) -> dict:
        """Engine thread: L1 usage, the lower tiers and the pins (GET /kv/stats)."""
        e = self.engine
        with e.stats.lock:
            prefix = {"prompt_tokens": e.stats.prompt_tokens, "cached_tokens": e.stats.cached_tokens}
        return {**self.usage(), "tiers": e.tiers.describe(), "l3_error": e.l3_error,
                "pins": e.pins.describe(), "staging_requests": len(e.staging.waiting), "prefix_cache": prefix}
