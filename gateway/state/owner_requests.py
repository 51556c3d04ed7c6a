"""Requests for a workflow's owner, posted on another replica (gateway/scheduler/forwarding.py): a cancel flag
and an inbox of tool results in the workflow's own keys. Durable first (the owner's lease loop and a resume
find them even if the nudge is lost), then published, so the owner acts at once."""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson
from redis.asyncio import Redis

from gateway.state.notify import nudge


class OwnerRequests:
    def __init__(self, redis: Redis, prefix: str, wf_key: Callable[..., str]):
        self.r = redis
        self.p = prefix
        self._wf = wf_key  # the workflow's key (WorkflowStore._wf): the requests share its hash tag

    @property
    def control_channel(self) -> str:
        return f"{self.p}:control"

    async def request_cancel(self, wf_id: str) -> None:
        await self.r.hset(self._wf(wf_id), "cancel", time.time())
        await nudge(self.r, self.control_channel, orjson.dumps({"op": "cancel", "wf": wf_id}))

    async def post_to_inbox(self, wf_id: str, node_id: str, output: str) -> bool:
        """False when a result for that node already waits in the inbox."""
        added = await self.r.hsetnx(self._wf(wf_id, ":inbox"), node_id, output)
        await nudge(self.r, self.control_channel, orjson.dumps({"op": "result", "wf": wf_id}))
        return bool(added)

    async def take_inbox(self, wf_id: str) -> dict[str, str]:
        """The results waiting for `wf_id`, removed from the inbox."""
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.hgetall(self._wf(wf_id, ":inbox"))
            pipe.delete(self._wf(wf_id, ":inbox"))
            results, _ = await pipe.execute()
        return results

    async def pending_requests(self, wf_ids: list[str]) -> tuple[set[str], set[str]]:
        """Of `wf_ids`: (those asked to cancel, those with results in their inbox), in one round trip."""
        if not wf_ids:
            return set(), set()
        async with self.r.pipeline(transaction=False) as pipe:
            for wf_id in wf_ids:
                pipe.hexists(self._wf(wf_id), "cancel")
                pipe.exists(self._wf(wf_id, ":inbox"))
            flags = await pipe.execute()
        return ({w for w, f in zip(wf_ids, flags[0::2]) if f}, {w for w, f in zip(wf_ids, flags[1::2]) if f})
