"""The workflow scheduler: ready set → workers, node results → the next ready nodes.

Dispatch: whenever something changes (a node became ready, a call finished, a
worker came back), every ready node is considered in priority order and sent to
a worker with a free slot, chosen by the routing policy. Priority, highest first:
the workflow's own `priority`; then the node's remaining critical path (expected
tokens on its heaviest path to a sink) plus `AGING_TOKENS_PER_S` per whole second
it has waited, so no workflow starves under load; then the workflow that has had
fewer calls dispatched so far (fair share: equal work interleaves across
workflows); then first come. No healthy worker: nodes wait, never fail.

Failure: a retryable call failure (connection, 5xx, no first token or a stall
between tokens in time) puts the node back in the ready set, excluding the workers
that failed it while others exist, up to `max_retries`; past that the workflow
fails with the cause (a worker's refusal keeps the worker's message) and its other
calls are aborted. Every state change is written to Redis before it is acted on
(state/store.py), through the journal that waits out Redis outages
(state/journal.py); ownership of a workflow is a lease there, so a restarted
gateway or another replica resumes it. A dispatched node's worker slot is a
`NodeCall` (ownership.py) that its task gives back however it ends, and every
task runs under `Lifecycle.guarded` (lifecycle.py: the runs, their tasks and leases), so
no fault strands a slot or a workflow.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import nullcontext
from dataclasses import replace

from common import tracing
from common.errors import AgentGateError
from common.workflow.run import NodeState, WorkflowRun
from common.workflow.spec import NodeSpec, WorkflowSpec, spec_from_json, spec_to_json
from gateway.config import GatewayConfig
from gateway.errors import WorkerCallError
from gateway.metrics import Metrics
from gateway.router.base import RouteRequest, RoutingPolicy
from gateway.router.prompts import PromptHasher
from common.workflow.templating import render_messages
from gateway.scheduler.executor import chat_body, node_output, run_chat
from gateway.scheduler.hooks import NO_AWARENESS, AwarenessHooks
from gateway.scheduler import forwarding
from gateway.scheduler.lifecycle import CANCELLED, Lifecycle
from gateway.scheduler.migration import (
    Progress,
    Recorder,
    continuation_body,
    migratable,
    run_continuation,
)
from gateway.scheduler.ownership import NodeCall
from gateway.state.store import WorkflowStore
from gateway.state.template_store import TemplateStore
from gateway.tasks import cancel_and_wait
from gateway.workers.pool import WorkerPool

log = logging.getLogger("agentgate.gateway")
AGING_TOKENS_PER_S = 64.0


class Scheduler:
    def __init__(self, config: GatewayConfig, store: WorkflowStore, pool: WorkerPool, policy: RoutingPolicy,
                 hasher: PromptHasher, metrics: Metrics, *, templates: TemplateStore | None = None,
                 awareness: AwarenessHooks = NO_AWARENESS):
        self.config, self.store, self.pool, self.metrics = config, store, pool, metrics
        self.policy, self.hasher, self.awareness = policy, hasher, awareness
        self.lifecycle = Lifecycle(config, store, pool, metrics, templates=templates, awareness=awareness,
                                   resume=self.resume, advance=self.advance, unready=self._unready)
        lc = self.lifecycle  # the same tables and journal, by their usual names
        self.owner, self.journal, self.runs, self.tasks = lc.owner, lc.journal, lc.runs, lc.tasks
        self.ready: dict[tuple[str, str], tuple[float, int]] = {}  # (wf, node) → (enqueued at, seq)
        self._seq = 0
        self._enqueued = asyncio.Event()  # set by enqueue(): wakes an idle dispatch loop
        self._loops: list[asyncio.Task] = []

    async def start(self) -> None:
        await self.lifecycle.start()
        self._loops = [asyncio.create_task(self.dispatch_loop(), name="gateway-dispatch"),
                       asyncio.create_task(self.lifecycle.lease_loop(), name="gateway-leases"),
                       asyncio.create_task(forwarding.control_loop(self.lifecycle), name="gateway-control")]

    async def stop(self) -> None:
        await cancel_and_wait(self._loops)
        await self.lifecycle.stop()

    async def cancel(self, wf_id: str) -> str:
        return await self.lifecycle.cancel(wf_id)

    async def post_result(self, wf_id: str, node: str, output) -> str:
        return await self.lifecycle.post_result(wf_id, node, output)

    # -- entry points ----------------------------------------------------------------------------
    async def submit(self, spec: WorkflowSpec, tenant: str | None = None, graph=None) -> str:
        """Start a validated workflow (`graph`: its graph, built when it was validated)."""
        wf_id, stored = "wf-" + uuid.uuid4().hex[:16], spec_to_json(spec)
        run = WorkflowRun(wf_id, spec, time.time(), graph=graph)
        nodes, events = {}, [("workflow_started", {"workflow": wf_id})]
        ready = self._decide(run, nodes, events)
        # One transaction: the workflow, its lease and its start. It exists from here on: whatever fails next,
        # it runs (here, or resumed) and its id is the answer.
        await self.journal.write(self.store.create, wf_id, stored, template=spec.template, priority=spec.priority,
                                 tenant=tenant, lease=self.journal.lease, created=run.created, nodes=nodes,
                                 events=events)
        run.span = tracing.start_span("workflow", **{"agentgate.workflow": wf_id, "agentgate.template": spec.template})
        self.runs[wf_id] = run
        self.metrics.workflows.inc(status="submitted")
        await self.lifecycle.guarded(run, self._advanced(run, events, ready), "start")
        return wf_id

    async def resume(self, wf_id: str) -> None:
        meta = await self.store.meta(wf_id)
        if meta is None or meta["status"] != "running":
            await self.store.deactivate(wf_id)
            await self.store.release(wf_id, self.owner)
            return
        states = {k: NodeState.from_json(v) for k, v in (await self.store.nodes(wf_id)).items()}
        spec = spec_from_json(meta["spec"])
        run = WorkflowRun(wf_id, spec, meta["created"], {n.id: states.get(n.id, NodeState()) for n in spec.nodes})
        run.resume_interrupted()
        run.span = tracing.start_span("workflow", **{"agentgate.workflow": wf_id, "agentgate.resumed": True})
        self.runs[wf_id] = run
        log.info("resuming workflow %s (%d nodes finished)", wf_id,
                 sum(s.status == "finished" for s in run.nodes.values()))
        await self.lifecycle.guarded(run, self._resumed(run, bool(meta.get("cancel"))), "resume")

    async def _resumed(self, run: WorkflowRun, cancel: bool) -> None:
        async with run.resolving:
            resumed = ("workflow_resumed", {"workflow": run.id, "owner": self.owner})
            if cancel:  # asked while no replica ran it: end it before dispatching anything
                await self.journal.commit(run.id, events=[resumed])
                await self.lifecycle.finish(run, "cancelled", CANCELLED)
                return
            await self.advance(run, events=[resumed])
        await self.lifecycle.serve_requests(run.id)  # results posted while no replica ran it

    # -- ready set → workers -----------------------------------------------------------------------
    def enqueue(self, run: WorkflowRun, node: str) -> None:
        self._seq += 1
        self.ready[(run.id, node)] = (time.monotonic(), self._seq)
        self._enqueued.set()
        self.pool.notify()

    def _unready(self, wf_id: str) -> None:
        for key in [k for k in self.ready if k[0] == wf_id]:
            del self.ready[key]

    def _priority(self, key: tuple[str, str], now: float):
        wf_id, node = key
        run = self.runs[wf_id]
        enqueued, seq = self.ready[key]
        aging = AGING_TOKENS_PER_S * int(now - enqueued)  # whole seconds: ties within a second go to fairness
        return (-run.spec.priority, -(run.remaining[node] + aging), run.dispatched, seq)

    def dispatch_ready(self) -> int:
        """Send every ready node that can get a worker now, best first. Never awaits."""
        now, sent = time.monotonic(), 0
        for key in sorted(self.ready, key=lambda k: self._priority(k, now)):
            if not self.pool.available():
                break
            run = self.runs.get(key[0])
            if run is None or run.status != "running":
                del self.ready[key]
                continue
            state = run.nodes[key[1]]
            candidates, healthy = self.pool.available(exclude=state.tried), self.pool.healthy()
            if not candidates and not any(w.url not in state.tried for w in healthy):
                candidates = self.pool.available()  # only failed workers are left: try them again
            if not candidates:
                continue
            del self.ready[key]
            try:
                spec = run.specs[key[1]]
                messages = render_messages(spec, run.outputs(), run.spec.inputs)
                route = self._route(messages, spec.max_tokens, spec.params.get("cache_salt"), len(healthy))
                url = self.policy.route(route, candidates, self.awareness.prefetched_at(run, key[1]),
                                        self.config.prefetch_affinity_slack)
                self.awareness.on_dispatch(run, key[1], url)
            except Exception as exc:  # a bug must fail this workflow, not stop every dispatch
                log.exception("dispatching %s/%s failed", run.id, key[1])
                reason = f"internal error dispatching node '{key[1]}': {exc!r}"
                self.lifecycle.track(run, key[1], self.lifecycle.fail(run, reason))
                continue
            call = NodeCall(self.pool, run, key[1], url)  # the slot is the task's from here on
            state.status = "running"
            run.dispatched += 1
            self.lifecycle.track(run, key[1], self._run_llm(call, spec, messages), call)
            sent += 1
        return sent

    def _route(self, messages: list[dict], max_tokens: int, salt: str | None, healthy: int) -> RouteRequest:
        """The prompt's block hashes and the call's output budget, when the policy reads them and has a
        choice to make (`healthy` workers)."""
        if not self.policy.uses_prefix or healthy < 2:
            return RouteRequest(0)
        try:
            return replace(self.hasher.route_for_ids(self.hasher.chat_ids(messages), salt), max_tokens=max_tokens)
        except AgentGateError:  # the template rejects these messages: the worker will say why
            return RouteRequest(0)

    async def dispatch_loop(self) -> None:
        while True:
            self._enqueued.clear()  # before looking: an enqueue from here on wakes the wait below
            try:
                self.dispatch_ready()
            except Exception:  # a bug must not stop every workflow: log it, try again on the next change
                log.exception("dispatch failed")
            if self.ready:  # nodes wait for a slot: any change in the pool may free one
                await self.pool.wait_changed(timeout=1.0)
            else:  # nothing to place: sleep through the pool changes every proxied call makes
                await self._enqueued.wait()

    # -- one LLM node --------------------------------------------------------------------------------
    async def _run_llm(self, call: NodeCall, spec: NodeSpec, messages: list[dict]) -> None:
        span = call.run.span  # spans only inside a trace (lifecycle.traced): no tracing calls per step otherwise
        on = span is not None and span.get_span_context().is_valid
        with tracing.span(f"node {call.node}", parent=call.run.span, **{"agentgate.workflow": call.run.id,
                          "agentgate.node": call.node, "agentgate.worker": call.url}) if on else nullcontext():
            await self._call_llm(call, spec, messages, on)

    async def _call_llm(self, call: NodeCall, spec: NodeSpec, messages: list[dict], traced: bool) -> None:
        run, node, url = call.run, call.node, call.url
        state = run.nodes[node]
        state.attempts += 1
        state.worker, state.rid, state.error = url, f"{run.id}.{node}.{state.attempts}", None
        state.started, state.first_token = time.time(), None
        progress = None
        try:
            await self.journal.commit(run.id, {node: state}, [("node_started", {"node": node, "worker": url,
                                                                               "attempt": state.attempts})])

            async def on_delta(text: str) -> None:
                if state.first_token is None:  # the call's first token
                    state.first_token = time.time()
                    self.awareness.on_call_started(run, node)
                self.awareness.on_tokens(run, node, text)
                self.journal.token(run.id, {"node": node, "text": text})

            worker = self.pool.workers.get(url)
            if worker is None:
                raise WorkerCallError(url, "the worker left the pool")
            timeouts, token_ids = self.pool.stream_timeouts(worker), self.pool.streams_token_ids(worker)
            priority = self.config.workflow_priority + run.spec.priority
            # What a broken call produced (state.progress) is continued; a new call records its ids when the
            # worker streams them. Neither: no migration machinery on this call.
            progress = (Progress.from_json(state.progress) or Progress()) \
                if (state.progress or token_ids) and migratable(spec) else None
            with tracing.span("worker call", kind="client", **{"server.address": url, "agentgate.rid": state.rid}) \
                    if traced else nullcontext():
                if progress is not None and progress.resumable:  # its last worker died mid-stream: continue it
                    state.first_token = time.time()
                    self.awareness.on_call_started(run, node)
                    body = continuation_body(spec.params, spec.max_tokens, progress, state.rid, priority)
                    result = await run_continuation(worker.client, body, progress, on_delta, timeouts,
                                                    self.pool.incremental(worker))
                else:
                    progress = Progress() if progress is not None and token_ids else None
                    body = chat_body(spec, messages, state.rid, worker.model_info.get("served_model_name"), priority)
                    if progress is not None:
                        body["return_token_ids"] = True
                    result = await run_chat(worker.client, body, on_delta, timeouts,
                                            Recorder(progress) if progress is not None else None)
            output = node_output(spec, result, url)
        except WorkerCallError as exc:
            call.release()  # first, so the retry may take the slot
            if progress is not None and progress.resumable:  # what the next worker continues from
                state.progress = progress.to_json()
            async with run.resolving:
                await self._call_failed(run, node, url, exc)
            return
        async with run.resolving:
            state.status, state.output, state.usage = "finished", output, result.usage
            state.finished = time.time()
            await self.advance(run, {node: state}, [("node_finished", {
                "node": node, "status": "finished", "output": output, "usage": result.usage,
                "worker": url, "finish_reason": result.finish_reason,
                **({"tool_calls": list(result.tool_calls)} if result.tool_calls else {})})])
        # Only now, with the successors enqueued, so they compete for the slot at once (the critical
        # path continues on the slot its predecessor just left).
        call.release()

    async def _call_failed(self, run: WorkflowRun, node: str, url: str, exc: WorkerCallError) -> None:
        """Retry the node elsewhere or fail the workflow. The caller holds run.resolving."""
        state, spec = run.nodes[node], run.specs[node]
        log.warning("workflow %s node %s failed on %s (attempt %d): %s", run.id, node, url, state.attempts, exc)
        if exc.retryable:
            self.pool.record_failure(url, exc)
        state.error = str(exc)
        if exc.retryable and state.attempts <= spec.max_retries and run.status == "running":
            if url not in state.tried:
                state.tried.append(url)
            state.status = "ready"
            resume = len(state.progress["ids"]) if state.progress else 0
            await self.journal.commit(run.id, {node: state}, [("node_retry", {
                "node": node, "worker": url, "error": str(exc), "attempt": state.attempts, "resume_tokens": resume})])
            self.metrics.nodes.inc(status="retried")
            self.enqueue(run, node)
            return
        state.status, state.finished = "failed", time.time()
        await self.journal.commit(run.id, {node: state}, [("node_finished", {"node": node, "status": "failed",
                                                                             "error": str(exc), "worker": url})])
        self.metrics.nodes.inc(status="failed")
        await self.lifecycle.finish(run, "failed", f"node '{node}' failed after {state.attempts} attempt(s): {exc}")

    # -- results → next nodes -------------------------------------------------------------------------
    async def advance(self, run: WorkflowRun, nodes: dict | None = None, events: list | None = None) -> None:
        """Record a resolution (`nodes`' states and `events`, e.g. a node_finished) together with what it
        made ready or skipped, in one journal commit, then enqueue the ready nodes. The caller holds
        run.resolving."""
        nodes, events = dict(nodes or {}), list(events or ())
        ready = self._decide(run, nodes, events)
        if nodes or events:
            await self.journal.commit(run.id, nodes, events)
        await self._advanced(run, events, ready)

    def _decide(self, run: WorkflowRun, nodes: dict, events: list) -> tuple[list[str], bool]:
        """Mark what the last resolution made ready or skipped, into `nodes` and `events`: (the LLM nodes to
        enqueue once written, whether the run is complete)."""
        ready, skipped = run.advance() if run.status == "running" else ((), ())
        complete = run.is_complete()
        for node in skipped:
            nodes[node] = run.nodes[node]
            events.append(("node_finished", {"node": node, "status": "skipped"}))
        llm_ready = []
        for node in ready:
            state = nodes[node] = run.nodes[node]
            if run.specs[node].kind == "external":
                state.status, state.started = "waiting", time.time()
                messages = render_messages(run.specs[node], run.outputs(), run.spec.inputs)
                events.append(("node_started", {"node": node, "external": True, "messages": messages}))
            else:
                state.ready = time.time()
                llm_ready.append(node)
        return llm_ready, complete

    async def _advanced(self, run: WorkflowRun, events: list, decided: tuple[list[str], bool]) -> None:
        """After `_decide`'s states and events were written: count them, enqueue, finish a complete run."""
        for type_, data in events:  # the resolution's and the skipped nodes'
            if type_ == "node_finished":
                self.metrics.observe_usage(data.get("usage"))
                self.metrics.nodes.inc(status=data["status"])
        llm_ready, complete = decided
        if run.status != "running":
            return
        for node in llm_ready:  # all at once, so the dispatcher ranks them together
            self.enqueue(run, node)
        self.awareness.on_advance(run)
        if complete:
            await self.lifecycle.finish(run, "finished")
