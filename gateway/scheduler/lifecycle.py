"""Workflow lifecycle around the dispatcher: tasks, leases, finish, cancel, external results.

A replica owns the workflows it runs through a Redis lease (`owner` key with a
TTL) that `lease_loop` refreshes every ttl/3. The same loop claims every active
workflow whose lease is gone — at start-up, after a crash of its owner once the
TTL passes, at once after a clean shutdown (which releases its leases) — and
resumes it. A lease lost to another replica stops the local copy without
touching its state.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Coroutine

from redis.exceptions import RedisError

from engine.errors import ConflictError, NotFoundError
from gateway.config import GatewayConfig
from gateway.metrics import Metrics
from gateway.scheduler.run import TERMINAL, WorkflowRun
from gateway.state.store import WorkflowStore
from gateway.state.templates import TemplateStore
from gateway.workers.pool import WorkerPool

log = logging.getLogger("agentgate.gateway")


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

    # Implemented by Scheduler.
    async def resume(self, wf_id: str) -> None: ...
    async def advance(self, run: WorkflowRun) -> None: ...
    async def dispatch_loop(self) -> None: ...

    # -- start / stop ------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.claim_orphans()
        self._loops = [asyncio.create_task(self.dispatch_loop(), name="gateway-dispatch"),
                       asyncio.create_task(self.lease_loop(), name="gateway-leases")]

    async def stop(self) -> None:
        """Stop running without touching stored state: unfinished nodes resume elsewhere or on restart."""
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        for wf_id in list(self.runs):
            await self._drop(wf_id)
            await self.store.release(wf_id, self.owner)

    async def _drop(self, wf_id: str) -> None:
        """Forget a workflow locally: cancel its calls (the workers abort them when the stream closes)."""
        self.runs.pop(wf_id, None)
        tasks = [t for (w, _), t in self.tasks.items() if w == wf_id]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
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
                    if not await self.store.refresh(wf_id, self.owner, self.config.lease_ttl_s):
                        log.warning("lost the lease on workflow %s; another replica runs it", wf_id)
                        await self._drop(wf_id)
                await self.claim_orphans()
            except (OSError, RedisError) as exc:  # Redis unreachable for a moment: try next round
                log.warning("lease refresh failed: %s", exc)

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
        run = self.runs.get(wf_id)
        if run is not None:
            await self.finish(run, "cancelled", "cancelled by the client")
            return "cancelled"
        meta = await self.store.meta(wf_id)
        if meta is None:
            raise NotFoundError(f"workflow '{wf_id}' does not exist", code="workflow_not_found")
        if meta["status"] != "running":
            raise ConflictError(f"workflow '{wf_id}' already ended ({meta['status']})")
        # Owned by another replica: mark it; the owner's next write sees the workflow ended.
        await self.store.set_status(wf_id, "cancelled", "cancelled by the client")
        await self.store.append_event(wf_id, "workflow_finished", {"workflow": wf_id, "status": "cancelled"})
        return "cancelled"

    async def post_result(self, wf_id: str, node: str, output) -> None:
        run = self.runs.get(wf_id)
        if run is None:
            meta = await self.store.meta(wf_id)
            if meta is None:
                raise NotFoundError(f"workflow '{wf_id}' does not exist", code="workflow_not_found")
            raise ConflictError(f"workflow '{wf_id}' is {meta['status']}" if meta["status"] != "running"
                                else f"workflow '{wf_id}' is run by another gateway replica; retry there")
        if node not in run.nodes:
            raise NotFoundError(f"workflow '{wf_id}' has no node '{node}'", code="node_not_found")
        if run.node_spec(node).kind != "external":
            raise ConflictError(f"node '{node}' is not an external node; its result comes from a worker")
        state = run.nodes[node]
        if state.status != "waiting":
            raise ConflictError(f"node '{node}' is {state.status}, not waiting for a result")
        state.status, state.finished = "finished", time.time()
        state.output = output if isinstance(output, str) else json.dumps(output)
        await self.store.save_node(wf_id, node, state.to_json())
        await self.store.append_event(wf_id, "node_finished", {"node": node, "status": "finished",
                                                               "output": state.output, "external": True})
        self.metrics.nodes.inc(status="finished")
        await self.advance(run)
