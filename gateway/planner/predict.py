"""What comes next in a running workflow: per pending node, how many steps until it
can run, how likely it is to run at all, and how long until it does.

- steps-to-execution: 0 for a node that is ready or running (an external node
  waiting for its result counts as running); for a pending node, 1 + the largest
  steps of its unresolved predecessors. Nodes at 1 are the *predicted next calls*.
- probability: a node runs when at least one incoming edge is taken. An edge
  from a finished node is decided (its condition on the output); an
  unconditional edge from an undecided node is taken iff that node runs; a
  conditional one with the learned rate of the template, smoothed towards the
  prior (1 / the source's number of conditional out-edges):
  (taken + prior) / (visits + 1), so a few runs move it. Incoming edges are
  treated as independent: P(node) = 1 − Π (1 − P(edge)).
- eta: seconds until every unresolved predecessor has finished, each taking its
  learned duration (per template node; else an external node's default tool
  latency, an LLM node's max_tokens at the learned seconds per token).
Plain functions of a WorkflowRun and plain learned data: no I/O.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from common.workflow.run import WorkflowRun
from gateway.state.learning import Learned

EXECUTING = frozenset({"ready", "running", "waiting"})


NOTHING_LEARNED = Learned()


@dataclass(frozen=True)
class Timing:
    """Defaults for nodes the template has no latency for."""

    tool_latency_s: float = 5.0
    seconds_per_token: float = 0.05


@dataclass(frozen=True)
class Forecast:
    steps: int
    probability: float
    eta_s: float  # expected seconds from now until the node can be dispatched


def edge_probability(run: WorkflowRun, source: str, target: str, learned: Learned = NOTHING_LEARNED) -> float:
    """P(edge source → target is taken | source finishes)."""
    state = run.nodes[source]
    if state.status == "finished":
        return 1.0 if run.edge_taken(source, target) else 0.0
    if run.graph.edges[source, target]["condition"] is None:
        return 1.0
    conditional = sum(1 for _, _, c in run.graph.out_edges(source, data="condition") if c is not None)
    prior = 1.0 / max(conditional, 1)
    visits = learned.visits.get(source, 0)
    taken = min(learned.taken.get((source, target), 0), visits)
    return (taken + prior) / (visits + 1)


def node_duration(run: WorkflowRun, node: str, learned: Learned, timing: Timing) -> float:
    if node in learned.latency_s:
        return learned.latency_s[node]
    spec = run.node_spec(node)
    if spec.kind == "external":
        return timing.tool_latency_s
    return spec.max_tokens * timing.seconds_per_token


def forecast(run: WorkflowRun, learned: Learned = NOTHING_LEARNED, timing: Timing = Timing(),
             now: float | None = None) -> dict[str, Forecast]:
    """A Forecast for every node not resolved yet (ready, running, waiting and pending)."""
    now = time.time() if now is None else now
    steps: dict[str, int] = {}
    prob: dict[str, float] = {}
    done_in: dict[str, float] = {}  # seconds from now until the node has finished
    eta: dict[str, float] = {}
    out: dict[str, Forecast] = {}
    for node in run.order:  # topological: every predecessor is seen first
        state = run.nodes[node]
        if state.status != "pending" and state.status not in EXECUTING:  # resolved, failed or cancelled
            prob[node], done_in[node] = (1.0 if state.status == "finished" else 0.0), 0.0
            continue
        duration = node_duration(run, node, learned, timing)
        preds = list(run.graph.predecessors(node))
        if state.status in EXECUTING:
            steps[node], prob[node], eta[node] = 0, 1.0, 0.0
            elapsed = now - state.started if state.started and state.status != "ready" else 0.0
            done_in[node] = max(duration - elapsed, 0.0)
        else:
            open_preds = [p for p in preds if p in steps]
            steps[node] = 1 + max((steps[p] for p in open_preds), default=-1)
            miss = 1.0
            for p in preds:
                miss *= 1.0 - prob[p] * edge_probability(run, p, node, learned)
            prob[node] = 1.0 - miss if preds else 1.0
            eta[node] = max((done_in[p] for p in open_preds), default=0.0)
            done_in[node] = eta[node] + duration
        out[node] = Forecast(steps[node], prob[node], eta[node])
    return out


def pin_ttl(eta_s: float, *, factor: float, margin_s: float, min_s: float, max_s: float) -> float:
    """A pin long enough to outlive the expected wait with room to spare, within bounds."""
    if math.isnan(eta_s) or eta_s < 0:
        eta_s = 0.0
    return min(max(eta_s * factor + margin_s, min_s), max_s)
