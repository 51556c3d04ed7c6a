"""What agent awareness did for each node of a workflow, and where it is told: the
`prefetch` field of GET /v1/workflows/{id} (state/prefetch_log.py, which also
defines the fields), the `prefetch` SSE events, and the prediction metrics.

A node's record is settled once: "used" when its call starts, "wasted" when it
is skipped, fails, or its workflow ends first. Settling releases the node's
prefetch slot (its pins go) and counts a predicted node's outcome towards
precision; a finished call's cached_tokens says whether the prefix was hit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field

from common.workflow.run import WorkflowRun
from gateway.metrics import Metrics
from gateway.planner.predict import Forecast
from gateway.state.learning import Learned
from gateway.awareness.pipelining import StreamTap
from gateway.awareness.prefetch import Prefetcher
from gateway.awareness.slots import Slot
from gateway.state.prefetch_log import PrefetchLog, summarize
from gateway.state.store import WorkflowStore


@dataclass
class NodeRecord:
    predicted: bool = False
    probability: float | None = None
    steps: int | None = None
    static_only: bool = False  # only the static prefix was prefetched (probability under the threshold)
    worker: str | None = None
    prefix_tokens: int = 0
    resident_tokens: int = 0
    sources: dict = field(default_factory=dict)  # "from" in JSON
    prefetches: int = 0
    pinned_tokens: int = 0
    pin_held_s: float = 0.0
    pipelined: bool = False  # a prefetch carried part of a still-streaming upstream output
    dispatched_to: str | None = None
    late: bool | None = None
    cached_tokens: int | None = None
    hit: bool | None = None
    outcome: str = "pending"  # pending | used | wasted
    caller_pins: list = field(default_factory=list)
    error: str | None = None
    counted: bool = False  # its outcome is in the metrics

    def to_json(self) -> dict:
        out = asdict(self)
        out["from"] = out.pop("sources")
        del out["counted"]
        out["pin_held_s"] = round(self.pin_held_s, 3)
        if self.probability is not None:
            out["probability"] = round(self.probability, 4)
        return out


@dataclass
class RunPlan:
    """Agent awareness's state for one workflow run on this replica."""

    stream: StreamTap | None  # None: no token pipelining for this run
    records: dict[str, NodeRecord] = field(default_factory=dict)
    forecast: dict[str, Forecast] = field(default_factory=dict)
    learned: Learned = field(default_factory=Learned)
    prefix_cache: dict[str, tuple[int, tuple[int, int]]] = field(default_factory=dict)  # node → (hash of its texts,
    # (length, digest) of the ids they gave): what a pass compares with what the node's slot sent
    callers: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # external node → caller slot keys
    dirty: set[str] = field(default_factory=set)
    observed: set[str] = field(default_factory=set)  # finished calls already accounted for
    task: asyncio.Task | None = None  # the pass planning it now
    replan: bool = False

    def record(self, node: str) -> NodeRecord:
        self.dirty.add(node)
        return self.records.setdefault(node, NodeRecord())


class Reporter:
    def __init__(self, prefetcher: Prefetcher, metrics: Metrics, store: WorkflowStore, log: PrefetchLog,
                 plans: dict[str, RunPlan], runs: dict[str, WorkflowRun],
                 spawn: Callable[[Coroutine, str], asyncio.Task]):
        self.prefetcher = prefetcher
        self.metrics = metrics
        self.store = store
        self.log = log
        self.plans = plans  # the awareness's, shared
        self.runs = runs
        self.spawn = spawn

    def settle(self, run: WorkflowRun, plan: RunPlan, node: str, outcome: str) -> None:
        """The node's call started ("used") or will never run ("wasted")."""
        rec = plan.records.get(node)
        if rec is None or rec.outcome != "pending":
            return
        plan.dirty.add(node)
        rec.outcome = outcome
        slot = self.prefetcher.release((run.id, node))
        if slot is not None:
            rec.pin_held_s = slot.pin_held_s
            if outcome == "wasted" or rec.dispatched_to not in (None, slot.url):
                self.metrics.prefetch_wasted_tokens.inc(slot.sources.get("computed", 0))
        if rec.predicted and not rec.counted:
            rec.counted = True
            self.metrics.predictions.inc(source="workflow", outcome=outcome)
        self.emit(run, {"node": node, "phase": "released", "outcome": outcome, "pin_held_s": round(rec.pin_held_s, 3),
                        "pinned_tokens": rec.pinned_tokens})

    def observe_call(self, run: WorkflowRun, plan: RunPlan, node: str, block_size: int) -> None:
        """A finished call: how much of its prompt the worker had cached, against what was prefetched."""
        rec, usage = plan.records.get(node), run.nodes[node].usage or {}
        if rec is None or rec.cached_tokens is not None or rec.dispatched_to is None or not usage:
            return
        plan.dirty.add(node)
        rec.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        if rec.prefetches:
            reachable = max(usage.get("prompt_tokens", 0) - 1, 0) // block_size * block_size  # the last token runs
            rec.hit = rec.cached_tokens >= min(rec.resident_tokens, reachable)
            self.metrics.prefetch_hits.inc(hit=str(rec.hit).lower())
            self.metrics.prefetch_saved_tokens.inc(rec.cached_tokens)

    def slot_changed(self, slot: Slot, phase: str, detail: dict) -> None:
        """A prefetch landed ("done") or failed."""
        wf_id, node = slot.key
        plan, run = self.plans.get(wf_id), self.runs.get(wf_id)
        if plan is None or run is None:
            return
        if node not in run.nodes:  # "external<caller": a caller's conversation pinned during a tool call
            external, _, caller = node.partition("<")
            for pin in plan.records[external].caller_pins if external in plan.records else ():
                if pin["node"] == caller and phase == "done":
                    pin["pinned_tokens"] = slot.pinned_tokens
                    plan.dirty.add(external)
            return
        rec = plan.record(node)
        rec.worker = slot.url
        if phase == "done":
            rec.prefetches, rec.prefix_tokens = slot.prefetches, detail["tokens"]
            rec.resident_tokens, rec.sources = slot.resident_tokens, dict(slot.sources)
            rec.pinned_tokens = slot.pinned_tokens if slot.pin else rec.pinned_tokens
        else:
            rec.error = detail.get("error")
        self.emit(run, {"node": node, "phase": phase, "worker": slot.url, "steps": rec.steps,
                        "probability": rec.probability, "predicted": rec.predicted, **detail})
        self.spawn(self.flush(run, plan), f"flush {wf_id}")

    async def finish(self, run: WorkflowRun, plan: RunPlan) -> None:
        """The workflow ended: save every record and append the summary (the caller holds run.resolving)."""
        for node in list(plan.records):
            self.settle(run, plan, node, "wasted")
        records = {n: r.to_json() for n, r in plan.records.items()}
        await self.log.save(run.id, records)
        if records:
            await self.store.append_event(run.id, "prefetch", {"phase": "summary", **summarize(records)})

    async def flush(self, run: WorkflowRun, plan: RunPlan) -> None:
        dirty, plan.dirty = plan.dirty, set()
        if dirty and self.plans.get(run.id) is plan:
            await self.log.save(run.id, {n: plan.records[n].to_json() for n in dirty if n in plan.records})

    def emit(self, run: WorkflowRun, data: dict) -> None:
        async def append() -> None:
            async with run.resolving:  # never after workflow_finished: finish() holds this lock
                if run.status == "running":
                    await self.store.append_event(run.id, "prefetch", data)

        self.spawn(append(), f"prefetch-event {run.id}")
