"""Client-driven agents: the graph runs in the client, and its LLM calls reach
/v1/chat/completions one at a time, tagged with agent_hints {template, node_id,
agent_id or workflow_id}. Between two calls of an agent the client runs its
tools; the gateway uses that time to get the next call's prefix in place.

After each tagged call (`end`):
1. The previous call's predictions are settled: the one for the node that did
   call is "used", the others "wasted"; their pins go.
2. The node's static prefix is learned: the longest token prefix all its calls
   shared so far, cut after a special token (system prompt, tool schemas).
3. The next calls are predicted (planner/next_calls.py: learned transitions,
   else the registered template, looking through nodes that never call). Each
   with probability ≥ prefetch_threshold gets its prefix in place, pinned for
   the agent's learned gap after this node (its tool time) × pin_factor +
   pin_margin_s:
   - the same node again (a ReAct loop): this call's conversation, pinned on
     the worker that just served it — it is resident there, nothing to compute;
   - another node seen in ≥ 2 calls: its static prefix, prefetched on the
     worker the router picks for it.
A `pin_ttl_s` in the call's agent_hints replaces the learned TTL. When the
agent's next call arrives (`begin`) it goes to the worker holding its
predicted prefix, unless that worker's load is clearly worse (`prefer`), and
the gap since the previous call is learned.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from common.errors import AgentGateError
from common.workflow.template_graph import TemplateGraph
from gateway.planner.next_calls import next_calls
from gateway.planner.predict import pin_ttl
from gateway.planner.prefix import common_prefix, cut_after_last_special, special_ids
from gateway.router.prompts import THREAD_THRESHOLD_CHARS
from gateway.awareness.runs import Awareness
from gateway.awareness.prefetch import Intent
from gateway.state.journal import OUTAGE
from gateway.state.template_store import TemplateStore
from gateway.tasks import cancel_and_wait

log = logging.getLogger("agentgate.gateway.awareness")
MAX_AGENTS = 10_000
MIN_CALLS_FOR_STATIC = 2


@dataclass
class AgentState:
    last_node: str | None = None
    last_end: float | None = None
    predicted: dict[str, tuple[str, str]] = field(default_factory=dict)  # node → prefetcher slot key


@dataclass
class TaggedCall:
    template: str
    agent: str
    node: str
    ids: list[int]
    preferred: str | None
    pin_ttl_s: float | None = None
    salt: str | None = None  # the call's cache salt (its tenant's)


class TaggedCalls:
    def __init__(self, awareness: Awareness, templates: TemplateStore):
        self.aw = awareness
        self.templates = templates
        self.agents: OrderedDict[tuple[str, str], AgentState] = OrderedDict()
        self._tasks: set[asyncio.Task] = set()

    async def begin(self, template: str | None, node: str | None, agent: str, path: str, body: dict,
                    pin_ttl_s: float | None = None) -> TaggedCall | None:
        """A chat call tagged (template, node) by `agent` is about to be routed; None when there is
        nothing to do for it. pin_ttl_s: the agent's own estimate of its next tool call (agent_hints)."""
        aw = self.aw
        if (not aw.enabled or not template or not node or path != "/v1/chat/completions"
                or not isinstance(body.get("messages"), list)):
            return None
        args = (body["messages"], body.get("tools"), body.get("chat_template_kwargs"))
        size = sum(len(str(m.get("content", ""))) for m in body["messages"] if isinstance(m, dict))
        try:
            ids = await asyncio.to_thread(aw.hasher.chat_ids, *args) if size > THREAD_THRESHOLD_CHARS \
                else aw.hasher.chat_ids(*args)
        except AgentGateError:  # messages the template rejects: the worker will say why
            return None
        state = self.agents.get((template, agent))
        preferred = None
        if state is not None:
            if state.last_end is not None and state.last_node is not None:
                gap = {f"gap:{state.last_node}": max(time.time() - state.last_end, 0.0)}
                await aw.learning.record_latencies(template, gap)
            aw.metrics.predictable_calls.inc(source="client", predicted=str(node in state.predicted).lower())
            slot = aw.prefetcher.slots.get(state.predicted.get(node))
            if slot is not None and not slot.released:
                preferred = slot.url
        salt = body.get("cache_salt") if isinstance(body.get("cache_salt"), str) else None
        return TaggedCall(template, agent, node, ids, preferred, pin_ttl_s, salt)

    def end(self, call: TaggedCall, url: str) -> None:
        """The call's response was relayed: learn from it and predict the next (in the background)."""
        task = asyncio.create_task(self._after_logged(call, url), name=f"tagged {call.agent}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _after_logged(self, call: TaggedCall, url: str) -> None:
        try:
            await self._after(call, url)
        except OUTAGE as exc:  # learning and prediction are best effort: this call's are lost
            log.warning("agent %s: nothing learned from its call (Redis: %s)", call.agent, exc)

    async def _after(self, call: TaggedCall, url: str) -> None:
        aw = self.aw
        key = (call.template, call.agent)
        state = self.agents.pop(key, None) or AgentState()
        self.agents[key] = state  # most recently active last
        while len(self.agents) > MAX_AGENTS:
            _, old = self.agents.popitem(last=False)
            self._settle(old, None, None)
        self._settle(state, call.node, url)
        conversation = cut_after_last_special(call.ids, special_ids(aw.hasher))
        await self._learn_static(call, conversation)
        state.last_node, state.last_end = call.node, time.time()
        raw = await self.templates.get(call.template)
        graph = TemplateGraph.from_json(raw) if raw else TemplateGraph(call.template, (), ())
        learned = await self.templates.transitions(call.template)
        called = set(learned) | {n for targets in learned.values() for n in targets} | {call.node}
        gap = await aw.learning.latency(call.template, f"gap:{call.node}")
        c = aw.config
        ttl = pin_ttl(gap if gap is not None else c.default_tool_latency_s, factor=c.pin_factor,
                      margin_s=c.pin_margin_s, min_s=c.pin_min_s, max_s=c.pin_max_s) if c.pinning else None
        if ttl is not None and call.pin_ttl_s:  # the agent said how long its tool will take
            ttl = min(call.pin_ttl_s, c.pin_max_s)
        for node, p in next_calls(graph, learned, call.node, called):
            if p < c.prefetch_threshold:
                continue
            slot_key = (f"agent:{call.template}:{call.agent}", node)
            if node == call.node:
                intent = Intent(slot_key, conversation, pin_ttl_s=ttl, url=url, pin_only=True, salt=call.salt)
                if ttl is None:
                    continue  # the conversation is resident already; without a pin there is nothing to do
            else:
                ids, calls = await aw.learning.static_prefix(call.template, node)
                if calls < MIN_CALLS_FOR_STATIC:
                    continue
                intent = Intent(slot_key, ids, pin_ttl_s=ttl, salt=call.salt)
            if aw.prefetcher.want(intent) is not None:
                state.predicted[node] = slot_key

    def _settle(self, state: AgentState, node: str | None, url: str | None) -> None:
        aw = self.aw
        for predicted, key in state.predicted.items():
            slot = aw.prefetcher.slots.get(key)
            outcome = "used" if predicted == node else "wasted"
            aw.metrics.predictions.inc(source="client", outcome=outcome)
            if slot is not None and (outcome == "wasted" or slot.url != url):
                aw.metrics.prefetch_wasted_tokens.inc(slot.sources.get("computed", 0))
            aw.prefetcher.forget(key)
        state.predicted = {}

    async def _learn_static(self, call: TaggedCall, conversation: list[int]) -> None:
        learning, specials = self.aw.learning, special_ids(self.aw.hasher)
        old, calls = await learning.static_prefix(call.template, call.node)
        shared = conversation if not calls else cut_after_last_special(
            old[:common_prefix(old, conversation)], specials)
        await learning.save_static_prefix(call.template, call.node, shared, calls + 1)

    async def close(self) -> None:
        await cancel_and_wait(list(self._tasks))
