"""Workflow state in Redis: what a restarted gateway (or another replica) needs to resume.

Keys (prefix `ag`; `{id}` is written with its braces: the workflow id is the keys' hash tag, so all of
one workflow's keys live in one Redis Cluster slot and every transaction and script below touches
that slot alone):
  ag:wf:{id}           hash  spec (JSON), status, created, updated, error, template, priority,
                             cancel (set when a replica that does not own it was asked to cancel it)
  ag:wf:{id}:nodes     hash  node id → node state JSON (status, output, worker, timings, usage)
  ag:wf:{id}:events    stream of {type, data}; its entry ids are the SSE event ids
  ag:wf:{id}:owner     string with a TTL: the replica running the workflow (a lease)
  ag:wf:{id}:inbox     hash  node id → result posted on a replica that does not own the workflow
  ag:wf:{id}:prefetch  hash  (state/prefetch_log.py)
  ag:control           pub/sub channel: {"op": "cancel"|"result", "wf": id} nudges the owner at once
                             (PUBLISH on one server, sharded SPUBLISH on a cluster: state/notify.py)
  ag:workflows         zset  id → created time (listing; ids whose keys expired are swept, sweep_listing)
  ag:workflows:tenant:{t}  zset  the same, per tenant (a workflow's hash names its `tenant`, "" without keys)
  ag:workflows:active  set   ids not finished yet (what a restart resumes)
The global sets are written beside a workflow's own transaction, never inside it, with idempotent
commands: SADD/ZADD after the workflow's hash exists, SREM after its status says it ended (a resume
drops an active id whose workflow has ended or is gone). Scripts ask the workflow's own hash whether
it still runs, not the active set.
A finished workflow's keys expire `retention_s` after it ended (set_status).
Every state change is written before the scheduler acts on it, so a crash
between two writes at worst re-runs a node that had not finished.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import contextmanager

import orjson
from redis.asyncio import Redis

from gateway.state.owner_requests import OwnerRequests

# Refresh our lease; re-take it if it lapsed while Redis was away (a restart drops keys whose TTL passed
# meanwhile) and nobody took it since, as long as the workflow still runs (KEYS[2]: its hash).
_REFRESH = """
local owner = redis.call('get', KEYS[1])
if owner == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
if owner or redis.call('hget', KEYS[2], 'status') ~= 'running' then return 0 end
redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2])
return 1
"""
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
# A node's state, written only by the workflow's lease holder (re-taking a lapsed lease nobody took, as
# _REFRESH does): a replica that lost the workflow to another cannot record a result after the new owner
# resumed it, which would then run that node again.
_FENCED_HSET = """
local owner = redis.call('get', KEYS[1])
if owner ~= ARGV[1] then
  if owner or redis.call('hget', KEYS[2], 'status') ~= 'running' then return 0 end
  redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2])
end
redis.call('hset', KEYS[3], ARGV[3], ARGV[4])
return 1
"""
# One transition of a workflow, atomically (KEYS: owner, the workflow's hash, :nodes, :events, then the
# other RETAINED keys): node states (fenced as _FENCED_HSET when ARGV[1] names an owner), then events, then
# an ended status with its expiry (after the XADDs: EXPIRE on a stream not created yet would be lost).
# ARGV: owner or '', ttl ms, node count, event count, status or '', error, now, retention s or '', then
# node id/state pairs, then event type/data pairs.
_COMMIT = """
local n, e = tonumber(ARGV[3]), tonumber(ARGV[4])
if n > 0 and ARGV[1] ~= '' then
  local owner = redis.call('get', KEYS[1])
  if owner ~= ARGV[1] then
    if owner or redis.call('hget', KEYS[2], 'status') ~= 'running' then return 0 end
    redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2])
  end
end
local i = 9
for _ = 1, n do redis.call('hset', KEYS[3], ARGV[i], ARGV[i + 1]); i = i + 2 end
for _ = 1, e do redis.call('xadd', KEYS[4], '*', 'type', ARGV[i], 'data', ARGV[i + 1]); i = i + 2 end
if ARGV[5] ~= '' then
  redis.call('hset', KEYS[2], 'status', ARGV[5], 'updated', ARGV[7])
  if ARGV[6] ~= '' then redis.call('hset', KEYS[2], 'error', ARGV[6]) end
  if ARGV[5] ~= 'running' then
    redis.call('hset', KEYS[2], 'finished', ARGV[7])
    if ARGV[8] ~= '' then
      for k = 2, #KEYS do redis.call('expire', KEYS[k], ARGV[8]) end
    end
  end
end
return 1
"""


# -- the event bell -------------------------------------------------------------------------------------
# Wakes the SSE followers of a workflow when this replica appends to its event stream. Only a workflow's
# owner writes its events (scheduler/lifecycle.py), so a follower of a workflow this replica runs needs no
# blocking read of Redis held open per stream: it waits here, in memory, and reads the stream when the
# bell rings. Entries live while someone watches.
class _Ring:
    __slots__ = ("rung", "event", "watchers")

    def __init__(self):
        self.rung = 0  # appends since the first watcher came
        self.event = asyncio.Event()
        self.watchers = 0


class EventBell:
    def __init__(self):
        self._rings: dict[str, _Ring] = {}

    @contextmanager
    def watching(self, wf_id: str):
        ring = self._rings.get(wf_id)
        if ring is None:
            ring = self._rings[wf_id] = _Ring()
        ring.watchers += 1
        try:
            yield
        finally:
            ring.watchers -= 1
            if not ring.watchers:
                del self._rings[wf_id]

    def rung(self, wf_id: str) -> int:
        """How often it rang so far (read before the stream, then `wait(wf_id, since=that)`)."""
        ring = self._rings.get(wf_id)
        return ring.rung if ring is not None else 0

    def ring(self, wf_id: str) -> None:
        ring = self._rings.get(wf_id)
        if ring is not None:
            ring.rung += 1
            ring.event.set()
            ring.event = asyncio.Event()

    async def wait(self, wf_id: str, since: int, timeout: float) -> bool:
        """True once it has rung past `since` (at once if it already has); False after `timeout`.
        The caller is `watching(wf_id)`."""
        ring = self._rings[wf_id]
        if ring.rung != since:
            return True
        try:
            await asyncio.wait_for(ring.event.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def __len__(self) -> int:
        return len(self._rings)


class LeaseLost(Exception):
    """This replica no longer holds the workflow's lease: another runs it."""


RETAINED = ("", ":nodes", ":events", ":inbox", ":prefetch")  # a workflow's keys, all expired together
SWEEP_BATCH = 500


class WorkflowStore:
    def __init__(self, redis: Redis, prefix: str = "ag", retention_s: float | None = None):
        self.r = redis
        self.p = prefix
        self.retention_s = retention_s  # None: finished workflows are kept for good
        self.bell = EventBell()  # rung after every append: this replica's SSE followers of the workflow wake
        self.requests = OwnerRequests(redis, prefix, self._wf)  # cancels and results for the owner

    def _wf(self, wf_id: str, suffix: str = "") -> str:
        return f"{self.p}:wf:{{{wf_id}}}{suffix}"

    # -- workflows ---------------------------------------------------------------------------------
    def _listing(self, tenant: str | None) -> str:
        return f"{self.p}:workflows" if tenant is None else f"{self.p}:workflows:tenant:{tenant}"

    async def create(self, wf_id: str, spec: dict, *, template: str | None, priority: int,
                     tenant: str | None = None, lease: tuple[str, float] | None = None, created: float | None = None,
                     nodes: dict | None = None, events: list[tuple[str, dict]] = ()) -> float:
        """The workflow's hash, with `lease` ((owner, ttl_s)) its lease claimed as `claim` does, and its first
        node states and events, in one transaction; then the listings and the active set (retried whole,
        every step is idempotent but an event's; a retry keeps the first `created`)."""
        now = time.time() if created is None else created
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.hsetnx(self._wf(wf_id), "created", now)
            pipe.hset(self._wf(wf_id), mapping={"spec": orjson.dumps(spec), "status": "running", "updated": now,
                                                "template": template or "", "priority": priority,
                                                "tenant": tenant or ""})
            if lease is not None:
                pipe.set(self._wf(wf_id, ":owner"), lease[0], nx=True, px=int(lease[1] * 1000))
            if nodes:
                pipe.hset(self._wf(wf_id, ":nodes"), mapping={n: orjson.dumps(state) for n, state in nodes.items()})
            for type_, data in events:
                pipe.xadd(self._wf(wf_id, ":events"), {"type": type_, "data": orjson.dumps(data)})
            pipe.hget(self._wf(wf_id), "created")
            created = float((await pipe.execute())[-1])
        if events:
            self.bell.ring(wf_id)
        async with self.r.pipeline(transaction=False) as pipe:  # keys of other slots: not one transaction
            pipe.zadd(f"{self.p}:workflows", {wf_id: created})
            if tenant is not None:
                pipe.zadd(self._listing(tenant), {wf_id: created})
            pipe.sadd(f"{self.p}:workflows:active", wf_id)
            await pipe.execute()
        return created

    async def meta(self, wf_id: str) -> dict | None:
        data = await self.r.hgetall(self._wf(wf_id))
        if not data:
            return None
        data["spec"] = orjson.loads(data["spec"])
        for key in ("created", "updated", "finished"):
            if key in data:
                data[key] = float(data[key])
        data["priority"] = int(data.get("priority", 0))
        return data

    async def set_status(self, wf_id: str, status: str, error: str | None = None) -> None:
        now = time.time()
        fields = {"status": status, "updated": now}
        if error:
            fields["error"] = error
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(self._wf(wf_id), mapping=fields)
            if status != "running":
                pipe.hset(self._wf(wf_id), "finished", now)
                if self.retention_s is not None:  # later writes (XADD, HSET) keep the TTL
                    for suffix in RETAINED:
                        pipe.expire(self._wf(wf_id, suffix), max(int(self.retention_s), 1))
            await pipe.execute()
        if status != "running":  # after the status: an id left active by a crash here is dropped on resume
            await self.r.srem(f"{self.p}:workflows:active", wf_id)

    async def sweep_listing(self, tenant: str | None = None, older_than: float | None = None) -> int:
        """Drop listing entries (created before `older_than`) whose workflow expired; how many went."""
        key = self._listing(tenant)
        ids = await self.r.zrangebyscore(key, "-inf", older_than if older_than is not None else "+inf",
                                         start=0, num=SWEEP_BATCH)
        if not ids:
            return 0
        async with self.r.pipeline(transaction=False) as pipe:
            for wf_id in ids:
                pipe.exists(self._wf(wf_id))
            alive = await pipe.execute()
        gone = [w for w, a in zip(ids, alive) if not a]
        if gone:
            await self.r.zrem(key, *gone)
        return len(gone)

    async def listed_tenants(self) -> list[str]:
        prefix = f"{self.p}:workflows:tenant:"
        return [k[len(prefix):] async for k in self.r.scan_iter(match=prefix + "*", count=200)]

    async def forget_listed(self, wf_id: str, tenant: str | None) -> None:
        await self.r.zrem(self._listing(tenant), wf_id)

    async def list(self, offset: int, limit: int, tenant: str | None = None) -> tuple[list[str], int]:
        """Newest first; `tenant`: only that tenant's."""
        key = self._listing(tenant)
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.zrevrange(key, offset, offset + limit - 1)
            pipe.zcard(key)
            ids, total = await pipe.execute()
        return ids, total

    async def deactivate(self, wf_id: str) -> None:
        await self.r.srem(f"{self.p}:workflows:active", wf_id)

    async def active_ids(self) -> list[str]:
        return sorted(await self.r.smembers(f"{self.p}:workflows:active"))

    # -- nodes ---------------------------------------------------------------------------------
    async def save_node(self, wf_id: str, node_id: str, state: dict, lease: tuple[str, float] | None = None) -> None:
        """With `lease` (owner, ttl_s): only while `owner` holds the workflow, else LeaseLost."""
        if lease is None:
            await self.r.hset(self._wf(wf_id, ":nodes"), node_id, orjson.dumps(state))
            return
        owner, ttl_s = lease
        if not await self.r.eval(_FENCED_HSET, 3, self._wf(wf_id, ":owner"), self._wf(wf_id),
                                 self._wf(wf_id, ":nodes"), owner, int(ttl_s * 1000), node_id, orjson.dumps(state)):
            raise LeaseLost(f"workflow {wf_id} is run by another replica now")

    async def commit(self, wf_id: str, nodes: dict[str, bytes], events: list[tuple[str, dict]],
                     lease: tuple[str, float] | None = None, status: str | None = None,
                     error: str | None = None) -> None:
        """One transition in one script: `nodes` (id → state JSON; fenced by `lease` as save_node is), then
        `events` in order, then `status` (and `error`) as set_status writes them. LeaseLost writes nothing."""
        owner, ttl_s = lease if lease is not None and nodes else ("", 0)
        now = time.time()
        retention = "" if self.retention_s is None else max(int(self.retention_s), 1)
        args: list = [owner, int(ttl_s * 1000), len(nodes), len(events), status or "", error or "", now, retention]
        for node_id, state in nodes.items():
            args += (node_id, state)
        for type_, data in events:
            args += (type_, orjson.dumps(data))
        keys = [self._wf(wf_id, ":owner"), *(self._wf(wf_id, suffix) for suffix in ("", ":nodes", ":events")),
                *(self._wf(wf_id, suffix) for suffix in RETAINED[3:])]
        if not await self.r.eval(_COMMIT, len(keys), *keys, *args):
            raise LeaseLost(f"workflow {wf_id} is run by another replica now")
        if events:
            self.bell.ring(wf_id)
        if status is not None and status != "running":  # after the status, as set_status does
            await self.r.srem(f"{self.p}:workflows:active", wf_id)

    async def nodes(self, wf_id: str) -> dict[str, dict]:
        raw = await self.r.hgetall(self._wf(wf_id, ":nodes"))
        return {k: orjson.loads(v) for k, v in raw.items()}

    # -- events --------------------------------------------------------------------------------
    async def append_event(self, wf_id: str, type_: str, data: dict) -> str:
        eid = await self.r.xadd(self._wf(wf_id, ":events"), {"type": type_, "data": orjson.dumps(data)})
        self.bell.ring(wf_id)
        return eid

    async def append_events(self, wf_id: str, events: list[tuple[str, dict]]) -> None:
        """Several events in one round trip, in order."""
        key = self._wf(wf_id, ":events")
        async with self.r.pipeline(transaction=False) as pipe:
            for type_, data in events:
                pipe.xadd(key, {"type": type_, "data": orjson.dumps(data)})
            await pipe.execute()
        self.bell.ring(wf_id)

    async def read_events(self, wf_id: str, after: str = "0-0", *, block_ms: int | None = None,
                          count: int = 500) -> list[tuple[str, str, dict]]:
        """Events strictly after stream id `after`; with block_ms, waits that long for the first one."""
        key = self._wf(wf_id, ":events")
        if block_ms is None:
            entries = await self.r.xrange(key, min=f"({after}" if after != "0-0" else "-", count=count)
        else:
            result = await self.r.xread({key: after}, count=count, block=block_ms)
            entries = result[0][1] if result else []
        return [(eid, fields["type"], orjson.loads(fields["data"])) for eid, fields in entries]

    # -- leases (which replica runs a workflow) ------------------------------------------------------
    async def claim(self, wf_id: str, owner: str, ttl_s: float) -> bool:
        """True when `owner` holds the lease now: a claim retried after its reply was lost is not refused."""
        key = self._wf(wf_id, ":owner")
        return bool(await self.r.set(key, owner, nx=True, px=int(ttl_s * 1000))) or await self.r.get(key) == owner

    async def refresh(self, wf_id: str, owner: str, ttl_s: float) -> bool:
        return bool(await self.r.eval(_REFRESH, 2, self._wf(wf_id, ":owner"), self._wf(wf_id), owner,
                                      int(ttl_s * 1000)))

    async def release(self, wf_id: str, owner: str) -> None:
        await self.r.eval(_RELEASE, 1, self._wf(wf_id, ":owner"), owner)

    async def owner(self, wf_id: str) -> str | None:
        return await self.r.get(self._wf(wf_id, ":owner"))
