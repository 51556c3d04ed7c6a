"""Per-tenant limits that hold across every gateway replica sharing one Redis (gateway/admission.py
uses them when the app has Redis, and its own per-replica counts while Redis does not answer).

  ag:adm:{<tenant>}:tokens  hash {level, at}: the tenant's token bucket (refilled by Redis's clock,
                            so replicas' clocks never disagree); expires once it would be full again
  ag:adm:{<tenant>}:calls   zset  call id → the time its place lapses: the tenant's calls in flight on
                            any replica. A call leaves it when it ends; one whose replica died lapses
                            after `lease_s` (the longest a call may take), so a crash cannot leak places.
Each is one key, changed by one script, so both work on a Redis Cluster.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from common.redis_client import OUTAGE

log = logging.getLogger("agentgate.gateway")

# KEYS[1]: the bucket; ARGV: tokens per second, capacity, cost. Returns the seconds to wait ("0": taken).
_TAKE = """
local t = redis.call('time')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, capacity = tonumber(ARGV[1]), tonumber(ARGV[2])
local level = tonumber(redis.call('hget', KEYS[1], 'level') or capacity)
local at = tonumber(redis.call('hget', KEYS[1], 'at') or now)
level = math.min(capacity, level + math.max(now - at, 0) * rate)
local cost = math.min(tonumber(ARGV[3]), capacity)
local wait = 0
if level >= cost then level = level - cost else wait = (cost - level) / rate end
redis.call('hset', KEYS[1], 'level', tostring(level), 'at', tostring(now))
redis.call('expire', KEYS[1], math.ceil((capacity - level) / rate) + 1)
return tostring(wait)
"""
# KEYS[1]: the calls in flight; ARGV: the cap, this call's id, its lease in seconds. 1: entered, 0: full.
_ENTER = """
local t = redis.call('time')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('zremrangebyscore', KEYS[1], '-inf', now)
if redis.call('zcard', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('zadd', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('expire', KEYS[1], math.ceil(tonumber(ARGV[3])) + 1)
return 1
"""


class SharedLimits:
    def __init__(self, redis, prefix: str, lease_s: float):
        self.r = redis
        self.p = prefix
        self.lease_s = lease_s
        self.replica = secrets.token_hex(4)
        self.down = False  # Redis did not answer the last time: this replica counts on its own meanwhile

    def _key(self, tenant: str, what: str) -> str:
        return f"{self.p}:adm:{{{tenant}}}:{what}"

    def _outage(self, exc: Exception) -> None:
        if not self.down:
            self.down = True
            log.warning("admission: Redis unavailable (%s); per-tenant limits are this replica's own meanwhile", exc)

    def _answered(self) -> None:
        if self.down:
            self.down = False
            log.warning("admission: Redis is back; per-tenant limits hold across replicas again")

    async def take(self, tenant: str, per_min: int, cost: float) -> float | None:
        """Seconds until `cost` tokens could be taken from the tenant's bucket (0: taken); None: Redis is down."""
        try:
            wait = float(await self.r.eval(_TAKE, 1, self._key(tenant, "tokens"), per_min / 60.0, per_min, cost))
        except OUTAGE as exc:
            self._outage(exc)
            return None
        self._answered()
        return wait

    async def enter(self, tenant: str, cap: int) -> str | bool | None:
        """The call's id once it has a place among the tenant's `cap`; False when they are taken; None: Redis
        is down."""
        call = f"{self.replica}:{secrets.token_hex(6)}"
        try:
            entered = await self.r.eval(_ENTER, 1, self._key(tenant, "calls"), cap, call, self.lease_s)
        except OUTAGE as exc:
            self._outage(exc)
            return None
        self._answered()
        return call if entered else False

    async def leave(self, tenant: str, call: str) -> None:
        """Give the place back, even when the call was cancelled (else it lapses after the lease)."""
        try:
            await asyncio.shield(self.r.zrem(self._key(tenant, "calls"), call))
        except OUTAGE as exc:
            self._outage(exc)
