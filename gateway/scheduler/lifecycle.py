"""Workflow lifecycle around the dispatcher: tasks, leases, finish, cancel, external results.

A replica owns the workflows it runs through a Redis lease (`owner` key with a
TTL) that `lease_loop` refreshes every ttl/3. The same loop claims every active
workflow whose lease is gone — at start-up, after a crash of its owner once the
TTL passes, at once after a clean shutdown (which releases its leases) — and
resumes it. A lease lost to another replica stops the local copy without
touching its state.

Any replica takes DELETE and external results for any workflow. One that does
not own the workflow writes the request into Redis (a cancel flag, a result
inbox) and publishes a nudge; the owner acts on the nudge at once
(`control_loop`), or on its next lease round if the nudge was lost, or — if the
owner is gone — whoever claims the workflow acts on it when resuming. Only the
owner writes a workflow's state, so a cancel aborts the calls on the workers
and is recorded once. The replica that took the request waits for the owner's
answer, up to one lease period.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine

import orjson
from redis.exceptions import RedisError

from engine.errors import ConflictError, NotFoundError
from gateway.config import GatewayConfig
from gateway.metrics import Metrics
from gateway.scheduler.run import TERMINAL, WorkflowRun
from gateway.state.store import WorkflowStore
from gateway.state.templates import TemplateStore
from gateway.tasks import cancel_and_wait
from gateway.workers.pool import WorkerPool

log = logging.getLogger("agentgate.gateway")
CANCELLED = "cancelled by the client"
OWNER_POLL_S = 0.02  # how often a replica that forwarded a request looks for the owner's answer


class Lifecycle:
    def __init__(self, config: GatewayConfig, store: WorkflowStore, pool: WorkerPool, metrics: Metrics):
        self.config = config
        self.store = store
        self.pool = pool
        self.metrics = metrics
        self.owner = "gw-" + uuid.uuid4().hex[:12]
        self.runs: dict[str, WorkflowRun] = {}
        self.tasks: dict[tuple[str, str], asyncio.Task] = {}
        self._loops: list[asyncio.Task] = []
        self.templates: TemplateStore | None = None  # learns transitions from templated workflows
        self.awareness = None  # agent awareness (scheduler/awareness.py): prediction, prefetch, pins

    # Implemented by Scheduler.
    async def resume(self, wf_id: str) -> None: ...
    async def advance(self, run: WorkflowRun) -> None: ...
    async def dispatch_loop(self) -> None: ...

    # -- start / stop ------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.claim_orphans()
        self._loops = [asyncio.create_task(self.dispatch_loop(), name="gateway-dispatch"),
                       asyncio.create_task(self.lease_loop(), name="gateway-leases"),
                       asyncio.create_task(self.control_loop(), name="gateway-control")]

    async def stop(self) -> None:
        """Stop running without touching stored state: unfinished nodes resume elsewhere or on restart."""
        await cancel_and_wait(self._loops)
        for wf_id in list(self.runs):
            await self._drop(wf_id)
            await self.store.release(wf_id, self.owner)

    async def _drop(self, wf_id: str) -> None:
        """Forget a workflow locally: cancel its calls (the workers abort them when the stream closes)."""
        self.runs.pop(wf_id, None)
        await cancel_and_wait([t for (w, _), t in self.tasks.items() if w == wf_id])
        ready = getattr(self, "ready", {})
        for key in [k for k in ready if k[0] == wf_id]:
            del ready[key]

    def track(self, wf_id: str, node: str, coro: Coroutine) -> None:
        task = asyncio.create_task(coro, name=f"node-{wf_id}-{node}")
        self.tasks[(wf_id, node)] = task

        def done(t: asyncio.Task) -> None:
            if self.tasks.get((wf_id, node)) is t:
                del self.tasks[(wf_id, node)]
            if not t.cancelled() and t.exception() is not None:
                log.error("node task %s/%s crashed", wf_id, node, exc_info=t.exception())

        task.add_done_callback(done)

    # -- leases ---------------------------------------------------------------------------------------
    async def claim_orphans(self) -> None:
        for wf_id in await self.store.active_ids():
            if wf_id not in self.runs and await self.store.claim(wf_id, self.owner, self.config.lease_ttl_s):
                await self.resume(wf_id)

    async def lease_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.lease_ttl_s / 3)
            try:
                for wf_id in list(self.runs):
                    # A workflow that ends while this round awaits Redis releases its lease: not lost.
                    if wf_id not in self.runs:
                        continue
                    if not await self.store.refresh(wf_id, self.owner, self.config.lease_ttl_s) and wf_id in self.runs:
                        log.warning("lost the lease on workflow %s; another replica runs it", wf_id)
                        await self._drop(wf_id)
                await self.claim_orphans()
                cancel, inbox = await self.store.pending_requests(list(self.runs))
                for wf_id in sorted(cancel | inbox):  # requests whose nudge this replica missed
                    await self.serve_requests(wf_id)
            except (OSError, RedisError) as exc:  # Redis unreachable for a moment: try next round
                log.warning("lease refresh failed: %s", exc)

    # -- requests from other replicas ---------------------------------------------------------------
    async def control_loop(self) -> None:
        """Act on nudges for workflows this replica owns (published by store.request_cancel/post_to_inbox)."""
        pending: set[asyncio.Task] = set()

        async def serve(wf_id: str) -> None:
            try:
                await self.serve_requests(wf_id)
            except (OSError, RedisError) as exc:  # the request stays in Redis for the next lease round
                log.warning("requests for workflow %s not served yet: %s", wf_id, exc)

        while True:
            pubsub = self.store.r.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.store.control_channel)
                async for message in pubsub.listen():
                    wf_id = _nudged(message["data"])
                    if wf_id in self.runs:  # one task each: a slow abort must not hold up the nudges behind it
                        task = asyncio.create_task(serve(wf_id), name=f"control-{wf_id}")
                        pending.add(task)
                        task.add_done_callback(pending.discard)
            except (OSError, RedisError) as exc:  # lease rounds cover the gap
                log.warning("control channel: %s; resubscribing", exc)
                await asyncio.sleep(self.config.lease_ttl_s / 3)
            except asyncio.CancelledError:
                for task in pending:
                    task.cancel()
                raise
            finally:
                await pubsub.aclose()

    async def serve_requests(self, wf_id: str) -> None:
        """Cancel `wf_id` or take the results posted for it, as other replicas asked. Owner only."""
        run = self.runs.get(wf_id)
        if run is None:
            return
        cancel, _ = await self.store.pending_requests([wf_id])
        if cancel:
            async with run.resolving:
                await self.finish(run, "cancelled", CANCELLED)
            return
        for node, output in (await self.store.take_inbox(wf_id)).items():
            try:
                await self.post_result(wf_id, node, output)
            except (ConflictError, NotFoundError) as exc:  # e.g. the same result also posted here
                log.warning("result for %s/%s posted on another replica refused: %s", wf_id, node, exc)

    async def _await_owner(self, answer: Callable[[], Awaitable[str | None]]) -> str | None:
        """Poll `answer` until it says what the owner did, for at most one lease period: by then a
        live owner has acted (nudge or lease round) and a dead one's workflow was claimed and resumed."""
        deadline = time.monotonic() + self.config.lease_ttl_s
        while time.monotonic() < deadline:
            result = await answer()
            if result is not None:
                return result
            await asyncio.sleep(OWNER_POLL_S)
        return None

    # -- ending workflows -------------------------------------------------------------------------------
    async def finish(self, run: WorkflowRun, status: str, error: str | None = None) -> None:
        if run.status != "running":
            return
        run.status = status
        now = time.time()
        if status != "finished":
            for node, state in run.nodes.items():
                if state.status not in TERMINAL:
                    task = self.tasks.get((run.id, node))
                    if task is not None and state.rid and state.worker in self.pool.workers:
                        await self.pool.workers[state.worker].client.abort(state.rid)
                    if task is not None and task is not asyncio.current_task():
                        task.cancel()
                    state.status, state.finished = "cancelled", now
                    await self.store.save_node(run.id, node, state.to_json())
        if self.awareness is not None:  # releases its pins and says so before workflow_finished
            await self.awareness.on_workflow_end(run, status)
        await self.store.set_status(run.id, status, error)
        await self.store.append_event(run.id, "workflow_finished", {
            "workflow": run.id, "status": status, "error": error, "outputs": run.outputs()})
        self.metrics.workflows.inc(status=status)
        if status == "finished" and run.spec.template and self.templates is not None:
            taken = [(u, v) for u, v in run.graph.edges if run.nodes[u].status == run.nodes[v].status == "finished"]
            await self.templates.record_transitions(run.spec.template, taken)
        self.runs.pop(run.id, None)
        await self.store.release(run.id, self.owner)

    async def cancel(self, wf_id: str) -> str:
        """"cancelled", or "cancelling" when the owner has not answered within a lease period."""
        run = self.runs.get(wf_id)
        if run is not None:
            async with run.resolving:
                if run.status != "running":  # it ended while we waited for the lock
                    raise ConflictError(f"workflow '{wf_id}' already ended ({run.status})")
                await self.finish(run, "cancelled", CANCELLED)
            return "cancelled"
        await self._running_meta(wf_id)
        await self.store.request_cancel(wf_id)
        await self._claim_if_ownerless(wf_id)

        async def answer() -> str | None:
            meta = await self.store.meta(wf_id)
            return None if meta["status"] == "running" else meta["status"]

        status = await self._await_owner(answer)
        if status is None:
            return "cancelling"
        if status != "cancelled":
            raise ConflictError(f"workflow '{wf_id}' ended ({status}) before the cancel reached it")
        return status

    async def post_result(self, wf_id: str, node: str, output) -> str:
        """"finished", or "accepted" when the owner has not taken the result within a lease period."""
        text = output if isinstance(output, str) else json.dumps(output)
        run = self.runs.get(wf_id)
        if run is None:
            return await self._post_to_owner(wf_id, node, text)
        if node not in run.nodes:
            raise NotFoundError(f"workflow '{wf_id}' has no node '{node}'", code="node_not_found")
        _check_external(node, run.node_spec(node).kind)
        async with run.resolving:
            state = run.nodes[node]
            _check_waiting(node, state.status)
            state.status, state.finished = "finished", time.time()
            state.output = text
            await self.store.save_node(wf_id, node, state.to_json())
            await self.store.append_event(wf_id, "node_finished", {"node": node, "status": "finished",
                                                                   "output": state.output, "external": True})
            self.metrics.nodes.inc(status="finished")
            await self.advance(run)
        return "finished"

    async def _post_to_owner(self, wf_id: str, node: str, text: str) -> str:
        meta = await self._running_meta(wf_id)
        kinds = {n["id"]: n["kind"] for n in meta["spec"]["nodes"]}
        if node not in kinds:
            raise NotFoundError(f"workflow '{wf_id}' has no node '{node}'", code="node_not_found")
        _check_external(node, kinds[node])
        _check_waiting(node, (await self.store.nodes(wf_id)).get(node, {}).get("status", "pending"))
        if not await self.store.post_to_inbox(wf_id, node, text):
            raise ConflictError(f"a result for node '{node}' is already on its way")
        await self._claim_if_ownerless(wf_id)

        async def answer() -> str | None:
            state = (await self.store.nodes(wf_id)).get(node, {})
            if state.get("status") == "waiting":
                return None
            if state.get("status") == "finished" and state.get("output") == text:
                return "finished"
            raise ConflictError(f"node '{node}' is {state.get('status')}; the result was not taken")

        return await self._await_owner(answer) or "accepted"

    async def _running_meta(self, wf_id: str) -> dict:
        meta = await self.store.meta(wf_id)
        if meta is None:
            raise NotFoundError(f"workflow '{wf_id}' does not exist", code="workflow_not_found")
        if meta["status"] != "running":
            raise ConflictError(f"workflow '{wf_id}' already ended ({meta['status']})")
        return meta

    async def _claim_if_ownerless(self, wf_id: str) -> None:
        """No replica holds the lease (its owner died): run it here, which serves the request on resume."""
        if await self.store.claim(wf_id, self.owner, self.config.lease_ttl_s):
            await self.resume(wf_id)


def _nudged(data: str) -> str | None:
    try:
        wf_id = orjson.loads(data).get("wf")
    except (orjson.JSONDecodeError, AttributeError):
        log.warning("ignoring a malformed control message: %.200s", data)
        return None
    return wf_id if isinstance(wf_id, str) else None


def _check_external(node: str, kind: str) -> None:
    if kind != "external":
        raise ConflictError(f"node '{node}' is not an external node; its result comes from a worker")


def _check_waiting(node: str, status: str) -> None:
    if status != "waiting":
        raise ConflictError(f"node '{node}' is {status}, not waiting for a result")
