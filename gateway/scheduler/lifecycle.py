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
answer, up to one lease period (forwarding.py).

Faults: every task of a workflow runs under `guarded`. Node state is written
only while this replica holds the lease (store.LeaseLost otherwise: a replica
whose lease lapsed during an outage and was taken cannot record a result the
new owner would run again); losing it abandons the workflow here, as does Redis
unavailable past the journal's retry time (state/journal.py) — its
calls are cancelled and it is forgotten, untouched in Redis — and, its lease
unrenewed, it is claimed and resumed once Redis answers again. Any other
error fails the workflow with the error as its reason. Either way nothing it
held (worker slots: ownership.py) outlives it, and it never stays "running"
with nothing to move it on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine

from common import tracing
from common.errors import ConflictError, NotFoundError
from common.logconf import WORKFLOW_ID
from common.workflow.run import TERMINAL, WorkflowRun
from gateway.config import GatewayConfig
from gateway.errors import StateUnavailableError
from gateway.metrics import Metrics
from gateway.scheduler import forwarding
from gateway.scheduler.ownership import NodeCall
from gateway.state.journal import OUTAGE, Journal
from gateway.scheduler.hooks import NO_AWARENESS, AwarenessHooks
from gateway.state.store import LeaseLost, WorkflowStore
from gateway.state.template_store import TemplateStore
from gateway.tasks import cancel_and_wait
from gateway.workers.pool import WorkerPool

log = logging.getLogger("agentgate.gateway")
CANCELLED = "cancelled by the client"


def traced(run: WorkflowRun) -> bool:
    """Whether the run is inside a trace (tracing on): its steps' spans are made only then."""
    return run.span is not None and run.span.get_span_context().is_valid


class Lifecycle:
    """The workflows this replica runs, their tasks and leases, and how each one ends. The Scheduler
    owns one and hands it, at construction, the three things of its own it needs: `resume` (a
    claimed workflow), `advance` (after an external result) and `unready` (forget a workflow's
    ready nodes)."""

    def __init__(self, config: GatewayConfig, store: WorkflowStore, pool: WorkerPool, metrics: Metrics, *,
                 templates: TemplateStore | None, awareness: AwarenessHooks,
                 resume: Callable[[str], Awaitable[None]], advance: Callable[..., Awaitable[None]],
                 unready: Callable[[str], None]):
        self.config = config
        self.store = store
        self.pool = pool
        self.metrics = metrics
        self.owner = "gw-" + uuid.uuid4().hex[:12]
        self.journal = Journal(store, metrics, retry_s=config.redis_retry_s, max_buffered=config.redis_buffer_events,
                               lease=(self.owner, config.lease_ttl_s))
        self.runs: dict[str, WorkflowRun] = {}
        self.tasks: dict[tuple[str, str], asyncio.Task] = {}
        self.templates = templates  # learns transitions from templated workflows
        self.awareness = awareness  # agent awareness (awareness/runs.py): prediction, prefetch, pins
        self.resume = resume
        self._advance = advance
        self._unready = unready

    async def start(self) -> None:
        await self.journal.start()
        try:
            await self.claim_orphans()
        except OUTAGE as exc:  # Redis is not up yet: the lease rounds claim them once it is
            log.warning("unfinished workflows not resumed yet: %s", exc)

    async def stop(self) -> None:
        """Stop running without touching stored state: unfinished nodes resume elsewhere or on restart."""
        for wf_id in list(self.runs):
            await self._drop(wf_id)
            try:
                await self.store.release(wf_id, self.owner)
            except OUTAGE:  # the lease lapses by itself
                pass
        await self.journal.stop()

    async def _drop(self, wf_id: str) -> None:
        """Forget a workflow locally: cancel its calls (the workers abort them when the stream closes)."""
        run = self.runs.pop(wf_id, None)
        if run is not None:
            self.awareness.on_dropped(run)
        if run is not None and run.status == "running" and traced(run):  # handed back: its resumer traces the rest
            tracing.end_span(run.span, **{"agentgate.status": "handed back"})
        self.journal.forget(wf_id)
        current = asyncio.current_task()
        await cancel_and_wait([t for (w, _), t in self.tasks.items() if w == wf_id and t is not current])
        self._unready(wf_id)

    def track(self, run: WorkflowRun, node: str, coro: Coroutine, call: NodeCall | None = None) -> None:
        """Run one of the workflow's tasks; whatever ends it, `call` (if any) is given back."""
        task = asyncio.create_task(self.guarded(run, coro, f"node {node}"), name=f"node-{run.id}-{node}")
        self.tasks[(run.id, node)] = task

        def done(t: asyncio.Task) -> None:
            coro.close()  # a task cancelled before it ran never started `coro`: end it quietly
            if call is not None and not call.released:
                call.release()
            if self.tasks.get((run.id, node)) is t:
                del self.tasks[(run.id, node)]

        task.add_done_callback(done)

    async def guarded(self, run: WorkflowRun, coro: Coroutine, what: str) -> None:
        """Await `coro`, a step of `run`; a failure ends or hands back the workflow, never strands it."""
        WORKFLOW_ID.set(run.id)  # for the logs of this task (each workflow task has its own context)
        try:
            await coro
        except (StateUnavailableError, LeaseLost, *OUTAGE) as exc:  # Redis, for longer than the journal
            await self.abandon(run, f"{what}: {exc}")  # waits, or another replica took the workflow meanwhile
        except Exception as exc:  # a bug: the workflow fails with it, the gateway goes on
            log.exception("workflow %s, %s: unexpected error", run.id, what)
            await self.fail(run, f"internal error in {what}: {exc!r}")

    async def fail(self, run: WorkflowRun, reason: str) -> None:
        try:
            if run.status == "running":
                async with run.resolving:
                    await self.finish(run, "failed", reason)
        except Exception as exc:  # failing it failed too (Redis gone, or the bug is in finish)
            log.warning("workflow %s could not be failed (%r); handing it back", run.id, exc)
        if self.runs.get(run.id) is run:  # not ended: someone must resume it
            await self.abandon(run, reason)

    async def abandon(self, run: WorkflowRun, reason: str) -> None:
        """Stop running `run` here without writing its state; it is resumed from Redis (by this replica's
        next lease round or another's) once Redis answers, its unfinished nodes run again."""
        if self.runs.get(run.id) is not run:
            return
        log.warning("workflow %s handed back for resumption: %s", run.id, reason)
        await self._drop(run.id)
        try:  # at once if Redis answers; else the lease lapses by itself
            await self.store.release(run.id, self.owner)
        except OUTAGE:
            pass

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
                cancel, inbox = await self.store.requests.pending_requests(list(self.runs))
                for wf_id in sorted(cancel | inbox):  # requests whose nudge this replica missed
                    await self.serve_requests(wf_id)
            except OUTAGE as exc:  # Redis unreachable for a moment: try next round
                log.warning("lease round failed: %s", exc)
            except StateUnavailableError as exc:
                log.warning("lease round: %s", exc)

    async def serve_requests(self, wf_id: str) -> None:
        """Cancel `wf_id` or take the results posted for it, as other replicas asked. Owner only."""
        run = self.runs.get(wf_id)
        if run is None:
            return
        cancel, _ = await self.store.requests.pending_requests([wf_id])
        if cancel:
            async with run.resolving:
                await self.finish(run, "cancelled", CANCELLED)
            return
        for node, output in (await self.store.requests.take_inbox(wf_id)).items():
            try:
                await self.post_result(wf_id, node, output)
            except (ConflictError, NotFoundError) as exc:  # e.g. the same result also posted here
                log.warning("result for %s/%s posted on another replica refused: %s", wf_id, node, exc)

    # -- ending workflows -------------------------------------------------------------------------------
    async def finish(self, run: WorkflowRun, status: str, error: str | None = None) -> None:
        if run.status != "running":
            return
        run.status = status
        now, on = time.time(), traced(run)
        if status != "finished":
            cancelled = {}
            for node, state in run.nodes.items():
                if state.status not in TERMINAL:
                    task = self.tasks.get((run.id, node))
                    if task is not None and state.rid and state.worker in self.pool.workers:
                        await self.pool.workers[state.worker].client.abort(state.rid)
                    if task is not None and task is not asyncio.current_task():
                        task.cancel()
                    state.status, state.finished = "cancelled", now
                    cancelled[node] = state
            if cancelled:
                await self.journal.commit(run.id, cancelled)
        try:  # awareness releases its pins and says so before workflow_finished
            await self.awareness.on_workflow_end(run, status)
        except OUTAGE as exc:  # its records are lost, not the workflow's end
            log.warning("prefetch records of workflow %s not saved: %s", run.id, exc)
        finished = {"workflow": run.id, "status": status, "error": error, "outputs": run.outputs()}
        await self.journal.commit(run.id, events=[("workflow_finished", finished)], status=status, error=error)
        self.metrics.workflows.inc(status=status)
        if on:
            tracing.end_span(run.span, **{"agentgate.status": status, "agentgate.error": error})
        if status == "finished" and run.spec.template and self.templates is not None:
            taken = [(u, v) for u, v in run.graph.edges if run.nodes[u].status == run.nodes[v].status == "finished"]
            try:
                await self.templates.record_transitions(run.spec.template, taken)
            except OUTAGE as exc:  # learning is best effort
                log.warning("transitions of workflow %s not learned: %s", run.id, exc)
        self.runs.pop(run.id, None)
        try:
            await self.store.release(run.id, self.owner)
        except OUTAGE:  # the lease lapses by itself; the workflow is no longer active, so nobody resumes it
            pass

    async def cancel(self, wf_id: str) -> str:
        """"cancelled", or "cancelling" when the owner has not answered within a lease period."""
        run = self.runs.get(wf_id)
        if run is None:
            return await forwarding.cancel_elsewhere(self, wf_id)
        async with run.resolving:
            if run.status != "running":  # it ended while we waited for the lock
                raise ConflictError(f"workflow '{wf_id}' already ended ({run.status})")
            await self._settle(run, self.finish(run, "cancelled", CANCELLED))
        return "cancelled"

    async def post_result(self, wf_id: str, node: str, output) -> str:
        """"finished", or "accepted" when the owner has not taken the result within a lease period."""
        text = output if isinstance(output, str) else json.dumps(output)
        run = self.runs.get(wf_id)
        if run is None:
            return await forwarding.post_to_owner(self, wf_id, node, text)
        if node not in run.nodes:
            raise NotFoundError(f"workflow '{wf_id}' has no node '{node}'", code="node_not_found")
        forwarding.check_external(node, run.node_spec(node).kind)
        async with run.resolving:
            state = run.nodes[node]
            forwarding.check_waiting(node, state.status)
            state.status, state.finished = "finished", time.time()
            state.output = text
            await self._settle(run, self._take_result(run, node, state))
        return "finished"

    async def _take_result(self, run: WorkflowRun, node: str, state) -> None:
        await self._advance(run, {node: state}, [("node_finished", {"node": node, "status": "finished",
                                                                    "output": state.output, "external": True})])

    async def _settle(self, run: WorkflowRun, step: Coroutine) -> None:
        """A request's change to `run`, made under run.resolving: if it cannot be recorded, the workflow
        is handed back (resumed from what Redis holds) and the error answers the request (Redis: a 503,
        to be sent again)."""
        try:
            await step
        except Exception as exc:
            await self.abandon(run, f"a request's change was not recorded: {exc!r}")
            raise
