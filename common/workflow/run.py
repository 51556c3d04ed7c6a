"""One workflow in flight: its graph, per-node state, and what may run next.

Readiness rule (`advance`): a pending node is decided once every predecessor is
resolved (finished or skipped). It runs if it has no predecessors or at least
one incoming edge is taken — an edge is taken when its source finished and its
condition (if any) holds on the source's output. Otherwise it is skipped, and
because a skipped source takes none of its edges, skipping propagates to every
descendant that no taken branch reaches. So a node is dispatched the moment its
inputs exist, never level by level.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field

import networkx as nx

from common.workflow.conditions import evaluate
from common.workflow.dag import build_graph, critical_paths
from common.workflow.spec import WorkflowSpec

RESOLVED = frozenset({"finished", "skipped"})
TERMINAL = frozenset({"finished", "skipped", "failed", "cancelled"})
# States that mean "was on its way when the gateway stopped": resumed as pending.
INTERRUPTED = frozenset({"ready", "running"})


@dataclass
class NodeState:
    status: str = "pending"  # pending | ready | running | waiting | finished | skipped | failed | cancelled
    output: str | None = None
    worker: str | None = None
    attempts: int = 0
    rid: str | None = None
    ready: float | None = None  # when its inputs existed and it joined the gateway's ready set
    started: float | None = None
    first_token: float | None = None
    finished: float | None = None
    usage: dict | None = None
    error: str | None = None
    tried: list[str] = field(default_factory=list)  # workers that failed this node
    progress: dict | None = None  # what a broken call produced, for the next worker to continue (migration.py)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "NodeState":
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})


class WorkflowRun:
    def __init__(self, wf_id: str, spec: WorkflowSpec, created: float, nodes: dict[str, NodeState] | None = None,
                 graph: nx.DiGraph | None = None):
        """`graph`: the spec's graph when the caller built it already (dag.checked_graph at submission)."""
        self.id = wf_id
        self.spec = spec
        self.created = created
        self.specs = {n.id: n for n in spec.nodes}  # node id → its NodeSpec
        self.nodes = nodes or {n.id: NodeState() for n in spec.nodes}
        self.graph: nx.DiGraph = graph if graph is not None else build_graph(spec)
        self.order = list(nx.topological_sort(self.graph))
        self.remaining = critical_paths(self.graph)
        self.status = "running"
        self.running = 0  # calls of this workflow on workers now
        self.dispatched = 0  # calls dispatched since this replica took it (fair share)
        # Held from a node's resolution (finished/failed/skipped/cancelled, saved and its event appended)
        # through the advance that follows, so a node_started never precedes the node_finished it
        # depends on, even when two results arrive at once.
        self.resolving = asyncio.Lock()
        self.span = None  # the workflow's trace span while OpenTelemetry is on (common/tracing.py)

    def node_spec(self, node_id: str):
        return self.specs[node_id]

    def outputs(self) -> dict[str, str]:
        return {k: s.output for k, s in self.nodes.items() if s.status == "finished" and s.output is not None}

    def edge_taken(self, source: str, target: str) -> bool:
        state = self.nodes[source]
        if state.status != "finished":
            return False
        cond = self.graph.edges[source, target]["condition"]
        return cond is None or evaluate(cond, state.output or "")

    def advance(self) -> tuple[list[str], list[str]]:
        """Decide every pending node whose inputs are resolved: (now ready, now skipped).
        Marks them at once, so two callers never hand out the same node."""
        ready, skipped = [], []
        for node in self.order:  # topological: a skip reaches descendants in this one pass
            if self.nodes[node].status != "pending":
                continue
            preds = list(self.graph.predecessors(node))
            if any(self.nodes[p].status not in RESOLVED for p in preds):
                continue
            if not preds or any(self.edge_taken(p, node) for p in preds):
                self.nodes[node].status = "ready"
                ready.append(node)
            else:
                self.nodes[node].status = "skipped"
                self.nodes[node].finished = time.time()
                skipped.append(node)
        return ready, skipped

    def resume_interrupted(self) -> None:
        for state in self.nodes.values():
            if state.status in INTERRUPTED:
                state.status = "pending"

    def is_complete(self) -> bool:
        return all(s.status in RESOLVED for s in self.nodes.values())
