"""In-batch prefix sharing: a waiting request whose next uncached blocks a running prefill is
computing right now waits for them (they reach the cache chunk by chunk) instead of computing
them a second time beside it, as SGLang's scheduler does."""

from __future__ import annotations

from engine.kvcache.radix import RadixCache
from engine.request import Request

SHARE_MIN_TOKENS = 32  # a shared prefix this long, being computed by a running prefill, is worth waiting for


def shared_blocks(req: Request, running: Request, bs: int) -> tuple[int, int]:
    """(common, left): tokens of the full blocks at the start of req's fill ids that equal a running
    prefill's, and how many of those it has yet to compute."""
    if req.salt != running.salt:
        return 0, 0
    n = min(len(req.fill_ids), len(running.fill_ids)) // bs * bs
    x, y = req.fill_ids, running.fill_ids
    common = 0
    while common < n and x[common:common + bs] == y[common:common + bs]:
        common += bs
    return common, common - running.num_computed // bs * bs


def uncached_start(req: Request, cache: RadixCache, bs: int) -> int:
    """Tokens of req's prompt the cache (and what staging brought up) already holds."""
    return max(cache.match_prefix(req.fill_ids[:-1], req.salt).num_tokens, len(req.staged) * bs)


def shared_in_flight(req: Request, prefills: list[Request], cache: RadixCache, bs: int) -> bool:
    """Whether one of the running `prefills` is computing at least SHARE_MIN_TOKENS of the blocks req
    would compute next (then req waits a step). The caller leaves out prefills req must not wait on: a
    call never waits on one of a lower priority, which prefills in small chunks beside it."""
    start = None
    for r in prefills:
        common, left = shared_blocks(req, r, bs)
        if left < SHARE_MIN_TOKENS:
            continue  # little or nothing of it left to compute there
        start = uncached_start(req, cache, bs) if start is None else start
        if common - start >= SHARE_MIN_TOKENS:
            return True
    return False
