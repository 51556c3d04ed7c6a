"""KV tiers: bring a prompt's prefix up from L2/L3 before it is scheduled.

Staging locks the prompt's cached L1 prefix and copies the blocks that follow
it from L2 (now) and L3 (read on the tiers' reader thread; the request waits
here meanwhile and other requests keep stepping). A prefetch whose prefix is
then wholly resident is done without a step."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from common.hashing import block_hashes
from engine.kvcache.tiered import Loaded, Step
from engine.request import Request

if TYPE_CHECKING:
    from engine.runtime.engine import Engine

log = logging.getLogger("agentgate.engine")


class Staging:
    def __init__(self, engine: "Engine"):
        self.engine = engine
        self.waiting: dict[str, Request] = {}  # rid -> request waiting for its L3 blocks

    def requests(self) -> list[Request]:
        return list(self.waiting.values())

    def release(self, req: Request) -> bool:
        """Forget req if it waits here (it finished first); whether it did."""
        return self.waiting.pop(req.rid, None) is req

    def stage(self, req: Request) -> None:
        e = self.engine
        if not e.tiers.enabled and not req.background:
            e.batcher.add(req)
            return
        bs = e.cfg.block_size
        # what admission will match: all but the last token (a prefetch keeps every full block)
        ids = req.fill_ids if req.background else req.fill_ids[:-1]
        hashes = block_hashes(ids, bs, req.salt)
        match = e.cache.match_prefix(ids, req.salt)
        e.cache.lock(match.blocks)
        req.staged = list(match.blocks)
        req.tier_tokens = {"l1": len(match.blocks) * bs}
        steps = e.tiers.plan(hashes, len(match.blocks)) if e.tiers.enabled else []
        if any(s.tier == "l3" for s in steps):
            chunks = [ids[i * bs:(i + 1) * bs] for i in range(len(hashes))]
            self.waiting[req.rid] = req
            e.tiers.load(steps, chunks, lambda fut: self.loaded(req, steps, fut))
            return
        self.promote(req, steps, None)

    def loaded(self, req: Request, steps: list[Step], fut) -> None:
        """The tiers' reader thread: req's L3 blocks are read; the engine thread resumes it."""
        self.engine.post("loaded", (req, steps, fut))

    def resume(self, req: Request, steps: list[Step], fut) -> None:
        """Engine thread: an L3 read finished; promote req unless it finished meanwhile."""
        if self.waiting.pop(req.rid, None) is req:
            self.promote(req, steps, fut)

    def promote(self, req: Request, steps: list[Step], fut) -> None:
        e = self.engine
        loaded: Loaded | None = None
        if fut is not None:
            try:
                loaded = fut.result()
            except Exception:  # an unreadable store is a miss, never a failed request
                log.exception("L3 load failed for %s", req.rid)
        ids = req.fill_ids if req.background else req.fill_ids[:-1]
        new, counts = e.tiers.promote(ids, req.salt, req.staged, steps, loaded) if steps else ([], {})
        req.staged += new
        bs = e.cfg.block_size
        for tier, n in counts.items():
            req.tier_tokens[tier] = n * bs
        if req.background and len(req.staged) * bs == len(ids) // bs * bs:
            e.outputs.finish(req, {"type": "length", "length": 0})  # a prefetch with nothing left to compute
            return
        e.batcher.add(req)
