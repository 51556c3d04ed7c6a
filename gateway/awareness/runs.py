"""Agent awareness for the workflows this replica runs: predict the next calls,
prefetch and pin their prompt prefix on the worker that will serve them, keep a
tool caller's conversation pinned while the tool runs, and say what it did.

The scheduler calls in at seven points (scheduler/hooks.py; each a no-op when
prediction is off or the gateway has no tokenizer):
- `on_advance(run)` after nodes finished/became ready/were skipped: plan again
  (the run is known here from its first advance until it ends or is dropped);
- `prefetched_at(run, node)` at dispatch: the worker holding the node's
  prefetched prefix, which the route decision prefers unless its load is more
  than `prefetch_affinity_slack` above the policy's pick (router/base.py
  `RoutingPolicy.route`), and `on_dispatch(run, node, url)` once it is sent;
- `on_call_started(run, node)` at the call's first token: the worker holds the
  prefix for the call itself now, so its pins go;
- `on_tokens(run, node, text)` while a call streams: token pipelining (a plan
  pass every few blocks of output, so downstream prompts that quote it are
  prefilled while it is still generated);
- `on_workflow_end(run, status)`: release everything, save the records, learn;
- `on_dropped(run)`: the run left this replica without ending (lease lost,
  handed back): the next tick lets its plan and slots go.

A plan pass (`_plan`) forecasts every node (planner/predict.py) and then, for
each pending LLM node at most `prefetch_horizon` steps away: probability ≥
`prefetch_threshold` → prefetch its whole knowable prefix (planner/prefix.py:
finished upstream outputs and, with token pipelining, what running ones have
streamed so far), pinned; below it → only its static prefix (nothing upstream
produced), unpinned. The pin TTL is the expected wait (learned durations) ×
`pin_factor` + `pin_margin_s`; passes renew pins that would lapse while the
node still waits. An external node that is waiting pins the conversations of the LLM
nodes that called it on their workers (Continuum): prompt and output, for the
tool's learned latency, until every node after it has started. A pass also
settles records: skipped nodes' prefetches are released as wasted, finished
calls report the cached_tokens their worker saw.
"""

from __future__ import annotations

import asyncio
import logging
import time
from array import array

from common.workflow.run import WorkflowRun
from common.workflow.templating import render_messages
from gateway.config import GatewayConfig
from gateway.metrics import Metrics
from gateway.planner.predict import Timing, forecast, pin_ttl
from gateway.planner.prefix import knowable_prefix_ids, render_known
from gateway.router.base import RoutingPolicy
from gateway.router.prompts import PromptHasher
from gateway.awareness.pipelining import StreamTap, pipelining_for
from gateway.awareness.prefetch import RENEW_BEFORE_S, Prefetcher
from gateway.awareness.slots import Intent, digest, token_array
from gateway.awareness.records import Reporter, RunPlan
from gateway.state.learning import LearningStore
from gateway.state.prefetch_log import PrefetchLog
from gateway.state.store import WorkflowStore
from gateway.tasks import cancel_and_wait
from gateway.workers.kv_ops import KVOps
from gateway.workers.pool import WorkerPool

log = logging.getLogger("agentgate.gateway.awareness")
PLAN_INTERVAL_S = 0.5  # passes over the running workflows whose pins need renewing or retrying, or whose
# template learned something new (Prefetcher.due); deferred prefetches are pumped
DECODE_EWMA = 0.2


class Awareness:
    def __init__(self, config: GatewayConfig, pool: WorkerPool, policy: RoutingPolicy, hasher: PromptHasher,
                 store: WorkflowStore, learning: LearningStore, metrics: Metrics, kv_ops: KVOps):
        self.config = config
        self.hasher = hasher
        self.store = store
        self.learning = learning
        self.metrics = metrics
        self.prefetcher = Prefetcher(pool, policy, hasher, kv_ops, metrics,
                                     max_inflight=config.prefetch_max_inflight,
                                     max_waiting=config.prefetch_max_waiting, max_hold_s=config.pin_max_s)
        self.plans: dict[str, RunPlan] = {}
        self.runs: dict[str, WorkflowRun] = {}  # the runs the scheduler told us about (on_advance), until they end
        self.reporter = Reporter(self.prefetcher, metrics, store, PrefetchLog(store.r, config.key_prefix),
                                 self.plans, self.runs, self._spawn)
        self.prefetcher.on_change = self.reporter.slot_changed
        self.seconds_per_token = 0.05  # learned from finished calls: the default duration of an LLM node
        self._tick: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()

    @property
    def enabled(self) -> bool:
        return self.config.prediction and self.hasher.tokenizer is not None

    async def start(self) -> None:
        self._tick = asyncio.create_task(self._tick_loop(), name="awareness-tick")

    async def stop(self) -> None:
        await cancel_and_wait([self._tick, *self._background])
        await self.prefetcher.close()

    # -- scheduler hooks ----------------------------------------------------------------------------
    def on_advance(self, run: WorkflowRun) -> None:
        self.runs[run.id] = run
        if self.enabled:
            self._schedule(run)

    def on_dropped(self, run: WorkflowRun) -> None:
        """The run stopped here without ending (lease lost, handed back): the next tick lets its plan go."""
        self.runs.pop(run.id, None)

    def prefetched_at(self, run: WorkflowRun, node: str) -> str | None:
        """The worker that holds (or is fetching) the node's prefix, for the route decision to prefer."""
        slot = self.prefetcher.slots.get((run.id, node))
        return slot.url if slot is not None and not slot.released and run.id in self.plans else None

    def on_dispatch(self, run: WorkflowRun, node: str, chosen: str) -> None:
        """The node went to `chosen`: stop its token pipelining plan, count whether it was predicted."""
        plan = self.plans.get(run.id)
        if plan is None:
            return
        if plan.stream is not None:
            plan.stream.reset(node)
        slot = self.prefetcher.slots.get((run.id, node))
        rec = plan.records.get(node)
        if run.graph.in_degree(node):  # a node with inputs could have been predicted: recall's denominator
            self.metrics.predictable_calls.inc(source="workflow", predicted=str(bool(rec and rec.predicted)).lower())
        if rec is not None:
            plan.dirty.add(node)
            rec.dispatched_to = chosen
            rec.late = slot.pending if slot is not None else None

    def on_call_started(self, run: WorkflowRun, node: str) -> None:
        plan = self.plans.get(run.id)
        if plan is not None and node in plan.records:
            self.reporter.settle(run, plan, node, "used")

    def on_tokens(self, run: WorkflowRun, node: str, text: str) -> None:
        plan = self.plans.get(run.id)
        if plan is not None and plan.stream is not None and plan.stream.add(node, text):
            self._schedule(run)

    async def on_workflow_end(self, run: WorkflowRun, status: str) -> None:
        """Called by finish() under run.resolving, before workflow_finished is appended."""
        self.runs.pop(run.id, None)
        plan = self.plans.pop(run.id, None)
        if plan is not None:
            self._observe_finished(run, plan)  # the last calls finished after the last plan pass
            for external in list(plan.callers):
                self._release_callers(plan, external)
            await self.reporter.finish(run, plan)
            for key in [k for k in self.prefetcher.slots if k[0] == run.id]:
                self.prefetcher.forget(key)
        if status == "finished" and run.spec.template:
            await self._learn(run)

    # -- planning --------------------------------------------------------------------------------
    def _schedule(self, run: WorkflowRun) -> None:
        if run.status != "running":
            return
        plan = self.plans.get(run.id)
        if plan is None:
            piped = pipelining_for(self.config.token_pipelining, run.spec.options)
            tap = StreamTap(self.hasher.block_size, self.config.token_pipelining_blocks) if piped else None
            plan = self.plans[run.id] = RunPlan(tap)
        if plan.task is not None and not plan.task.done():
            plan.replan = True
            return
        plan.task = self._spawn(self._plan_loop(run, plan), f"plan {run.id}")

    async def _plan_loop(self, run: WorkflowRun, plan: RunPlan) -> None:
        while run.status == "running" and self.plans.get(run.id) is plan:
            plan.replan = False
            try:
                await self._plan(run, plan)
            except Exception:  # a planning bug must never stop the workflow itself
                log.exception("planning workflow %s failed", run.id)
                return
            if not plan.replan:
                return

    async def _plan(self, run: WorkflowRun, plan: RunPlan) -> None:
        plan.learned = await self.learning.learned(run.spec.template)
        timing = Timing(self.config.default_tool_latency_s, self.seconds_per_token)
        plan.forecast = forecast(run, plan.learned, timing)
        self._observe_finished(run, plan)
        for node, state in run.nodes.items():
            kind = run.node_spec(node).kind
            if state.status in ("skipped", "failed", "cancelled"):
                self.reporter.settle(run, plan, node, "wasted")
            elif state.status == "waiting" and kind == "external":
                self._pin_callers(run, plan, node)
            elif state.status == "pending" and kind == "llm":
                self._prefetch(run, plan, node)
        for external in list(plan.callers):
            if run.nodes[external].status != "waiting" and not any(
                    run.nodes[s].status in ("pending", "ready") for s in run.graph.successors(external)):
                self._release_callers(plan, external)
        await self.reporter.flush(run, plan)

    def _prefetch(self, run: WorkflowRun, plan: RunPlan, node: str) -> None:
        f = plan.forecast.get(node)
        if f is None or f.steps > self.config.prefetch_horizon:
            return
        if f.probability <= 0.0:
            self.reporter.settle(run, plan, node, "wasted")
            return
        full = f.probability >= self.config.prefetch_threshold
        known, partial = {}, {}
        if full:
            known = {n: (s.output or "") if s.status == "finished" else ""
                     for n, s in run.nodes.items() if s.status in ("finished", "skipped")}
            if plan.stream is not None:
                partial = plan.stream.partial({n for n, s in run.nodes.items() if s.status == "running"})
        messages, complete = render_known(run.node_spec(node), known, run.spec.inputs, partial)
        ttl = self._ttl(f.eta_s) if self.config.pinning and full else None  # an unlikely branch holds no pin
        ids = self._prefix_ids(plan, (run.id, node), messages, complete, ttl is not None)
        if ids is not None and len(ids) < self.hasher.block_size:
            return
        growth = self.config.token_pipelining_blocks if partial else 1  # increments of a streaming prompt
        slot = self.prefetcher.want(Intent((run.id, node), ids, steps=max(f.steps, 1), pin_ttl_s=ttl,
                                           min_new_blocks=growth, max_tokens=run.node_spec(node).max_tokens,
                                           salt=run.node_spec(node).params.get("cache_salt")))
        rec = plan.record(node)
        rec.predicted = rec.predicted or full
        rec.static_only = not rec.predicted
        rec.probability, rec.steps = f.probability, f.steps
        rec.pipelined = rec.pipelined or bool(partial)
        if slot is not None:
            rec.worker = slot.url

    def _prefix_ids(self, plan: RunPlan, key: tuple[str, str], messages: list[dict], complete: bool,
                    pinned: bool) -> array | None:
        """The node's knowable prefix as token ids, or None when it is what its slot sent last and the slot
        holds it (a renewal: the pin goes by its id). Only a hash of what was rendered is kept per pending
        node, never the ids, so thousands of runs in flight stay small."""
        signature = hash((complete, *(m["content"] for m in messages)))
        cached = plan.prefix_cache.get(key[1])
        if cached is not None and cached[0] == signature and self.prefetcher.holds(key, pinned, cached[1]):
            return None
        ids = token_array(knowable_prefix_ids(self.hasher, messages, complete))
        plan.prefix_cache[key[1]] = (signature, (len(ids), digest(ids)))
        return ids

    def _ttl(self, eta_s: float) -> float:
        c = self.config
        return pin_ttl(eta_s, factor=c.pin_factor, margin_s=c.pin_margin_s, min_s=c.pin_min_s, max_s=c.pin_max_s)

    def _observe_finished(self, run: WorkflowRun, plan: RunPlan) -> None:
        for node, state in run.nodes.items():
            if state.status != "finished" or run.node_spec(node).kind != "llm" or node in plan.observed:
                continue
            plan.observed.add(node)
            self.reporter.observe_call(run, plan, node, self.hasher.block_size)
            done = (state.usage or {}).get("completion_tokens", 0)
            if state.first_token and state.finished and done > 1:  # learn the decode speed
                per_token = (state.finished - state.first_token) / (done - 1)
                self.seconds_per_token += DECODE_EWMA * (per_token - self.seconds_per_token)

    # -- a tool caller's conversation --------------------------------------------------------------------
    def _pin_callers(self, run: WorkflowRun, plan: RunPlan, external: str) -> None:
        """Keep the conversations that called `external` pinned where they ran, for the tool's expected time."""
        if not self.config.pinning:
            return
        state = run.nodes[external]
        expected = plan.learned.latency_s.get(external, self.config.default_tool_latency_s)
        elapsed = time.time() - (state.started or time.time())
        if elapsed > expected * self.config.pin_factor + self.config.pin_margin_s:
            return  # the tool is overdue: its callers' pins lapse instead of holding memory indefinitely
        ttl = self._ttl(max(expected - elapsed, 0.0))
        keys = plan.callers.setdefault(external, [])
        for caller in run.graph.predecessors(external):
            cs = run.nodes[caller]
            if cs.status != "finished" or run.node_spec(caller).kind != "llm" or cs.worker is None:
                continue
            key = (run.id, f"{external}<{caller}")
            ids = None if self.prefetcher.holds(key, True) else self._conversation_ids(run, caller)  # None: renew
            slot = self.prefetcher.want(Intent(key, ids, steps=1, pin_ttl_s=ttl, url=cs.worker, pin_only=True,
                                               salt=run.node_spec(caller).params.get("cache_salt")))
            if key not in keys and slot is not None:
                keys.append(key)
                plan.record(external).caller_pins.append({"node": caller, "worker": cs.worker})

    def _conversation_ids(self, run: WorkflowRun, node: str) -> list[int]:
        messages = render_messages(run.node_spec(node), run.outputs(), run.spec.inputs)
        return self.hasher.chat_ids(messages) + self.hasher.text_ids(run.nodes[node].output or "")

    def _release_callers(self, plan: RunPlan, external: str) -> None:
        rec = plan.records.get(external)
        for key in plan.callers.pop(external, []):
            slot = self.prefetcher.release(key)
            if slot is not None and rec is not None:
                for pin in rec.caller_pins:
                    if pin["node"] == key[1].split("<", 1)[1]:
                        pin["pinned_tokens"] = slot.pinned_tokens or pin.get("pinned_tokens", 0)
                        pin["pin_held_s"] = round(slot.pin_held_s, 3)
                plan.dirty.add(external)

    # -- learning and housekeeping -------------------------------------------------------------------------
    async def _learn(self, run: WorkflowRun) -> None:
        finished = [n for n, s in run.nodes.items() if s.status == "finished"]
        taken = [(u, v) for u, v in run.graph.edges if run.edge_taken(u, v)]
        durations = {n: run.nodes[n].finished - run.nodes[n].started for n in finished
                     if run.nodes[n].started and run.nodes[n].finished}
        await self.learning.record_run(run.spec.template, finished, taken, durations)

    async def _learned_now(self) -> dict:
        """What each running template has learned (the store's cached copy); a template Redis cannot
        answer for is left out (its runs' own passes meet the outage)."""
        out = {}
        for template in {r.spec.template for r in self.runs.values() if r.spec.template}:
            try:
                out[template] = await self.learning.learned(template)
            except Exception as exc:
                log.debug("learned of %s not read: %r", template, exc)
        return out

    def _spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(PLAN_INTERVAL_S)
            if not self.enabled:
                continue
            for wf_id in [w for w in self.plans if w not in self.runs]:  # dropped (lease lost): let go
                del self.plans[wf_id]
                for key in [k for k in self.prefetcher.slots if k[0] == wf_id]:
                    self.prefetcher.forget(key)
            due = self.prefetcher.due(RENEW_BEFORE_S + PLAN_INTERVAL_S)
            learned = await self._learned_now()
            for run in list(self.runs.values()):  # a pass only where time or what was learned changes its answer
                plan = self.plans.get(run.id)
                if plan is None or run.id in due or learned.get(run.spec.template, plan.learned) is not plan.learned:
                    self._schedule(run)
            self.prefetcher.pump_all()
