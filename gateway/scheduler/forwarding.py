"""Requests for a workflow that another replica owns: a cancel or an external result
written into Redis for its owner, a nudge published so the owner acts at once, and
the wait for the owner's answer (lifecycle.py's module docstring tells the protocol).

These are functions over the Lifecycle that took the request; the owner's side —
acting on a nudge — is `control_loop` and `Lifecycle.serve_requests`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import orjson
from redis.exceptions import RedisError

from common.errors import ConflictError, NotFoundError
from gateway.state.notify import subscription

if TYPE_CHECKING:
    from gateway.scheduler.lifecycle import Lifecycle

log = logging.getLogger("agentgate.gateway")
OWNER_POLL_S = 0.02  # how often a replica that forwarded a request looks for the owner's answer


async def control_loop(lc: "Lifecycle") -> None:
    """Act on nudges for workflows this replica owns (published by OwnerRequests.request_cancel and post_to_inbox)."""
    pending: set[asyncio.Task] = set()

    async def serve(wf_id: str) -> None:
        try:
            await lc.serve_requests(wf_id)
        except (OSError, RedisError) as exc:  # the request stays in Redis for the next lease round
            log.warning("requests for workflow %s not served yet: %s", wf_id, exc)

    while True:
        try:
            async with subscription(lc.store.r, lc.store.requests.control_channel) as messages:
                async for data in messages:
                    wf_id = _nudged(data)
                    if wf_id in lc.runs:  # one task each: a slow abort must not hold up the nudges behind it
                        task = asyncio.create_task(serve(wf_id), name=f"control-{wf_id}")
                        pending.add(task)
                        task.add_done_callback(pending.discard)
        except (OSError, RedisError) as exc:  # lease rounds cover the gap
            log.warning("control channel: %s; resubscribing", exc)
            await asyncio.sleep(lc.config.lease_ttl_s / 3)
        except asyncio.CancelledError:
            for task in pending:
                task.cancel()
            raise


async def cancel_elsewhere(lc: "Lifecycle", wf_id: str) -> str:
    await running_meta(lc, wf_id)
    await lc.store.requests.request_cancel(wf_id)
    await claim_if_ownerless(lc, wf_id)

    async def answer() -> str | None:
        meta = await lc.store.meta(wf_id)
        return None if meta["status"] == "running" else meta["status"]

    status = await await_owner(lc, answer)
    if status is None:
        return "cancelling"
    if status != "cancelled":
        raise ConflictError(f"workflow '{wf_id}' ended ({status}) before the cancel reached it")
    return status


async def post_to_owner(lc: "Lifecycle", wf_id: str, node: str, text: str) -> str:
    meta = await running_meta(lc, wf_id)
    kinds = {n["id"]: n["kind"] for n in meta["spec"]["nodes"]}
    if node not in kinds:
        raise NotFoundError(f"workflow '{wf_id}' has no node '{node}'", code="node_not_found")
    check_external(node, kinds[node])
    check_waiting(node, (await lc.store.nodes(wf_id)).get(node, {}).get("status", "pending"))
    if not await lc.store.requests.post_to_inbox(wf_id, node, text):
        raise ConflictError(f"a result for node '{node}' is already on its way")
    await claim_if_ownerless(lc, wf_id)

    async def answer() -> str | None:
        state = (await lc.store.nodes(wf_id)).get(node, {})
        if state.get("status") == "waiting":
            return None
        if state.get("status") == "finished" and state.get("output") == text:
            return "finished"
        raise ConflictError(f"node '{node}' is {state.get('status')}; the result was not taken")

    return await await_owner(lc, answer) or "accepted"


async def await_owner(lc: "Lifecycle", answer: Callable[[], Awaitable[str | None]]) -> str | None:
    """Poll `answer` until it says what the owner did, for at most one lease period: by then a
    live owner has acted (nudge or lease round) and a dead one's workflow was claimed and resumed."""
    deadline = time.monotonic() + lc.config.lease_ttl_s
    while time.monotonic() < deadline:
        result = await answer()
        if result is not None:
            return result
        await asyncio.sleep(OWNER_POLL_S)
    return None


async def running_meta(lc: "Lifecycle", wf_id: str) -> dict:
    meta = await lc.store.meta(wf_id)
    if meta is None:
        raise NotFoundError(f"workflow '{wf_id}' does not exist", code="workflow_not_found")
    if meta["status"] != "running":
        raise ConflictError(f"workflow '{wf_id}' already ended ({meta['status']})")
    return meta


async def claim_if_ownerless(lc: "Lifecycle", wf_id: str) -> None:
    """No replica holds the lease (its owner died): run it here, which serves the request on resume."""
    if await lc.store.claim(wf_id, lc.owner, lc.config.lease_ttl_s):
        await lc.resume(wf_id)


def check_external(node: str, kind: str) -> None:
    if kind != "external":
        raise ConflictError(f"node '{node}' is not an external node; its result comes from a worker")


def check_waiting(node: str, status: str) -> None:
    if status != "waiting":
        raise ConflictError(f"node '{node}' is {status}, not waiting for a result")


def _nudged(data: str) -> str | None:
    try:
        wf_id = orjson.loads(data).get("wf")
    except (orjson.JSONDecodeError, AttributeError):
        log.warning("ignoring a malformed control message: %.200s", data)
        return None
    return wf_id if isinstance(wf_id, str) else None
