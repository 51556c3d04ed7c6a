"""What scripts/bench_workflows.py measures, and how it reports it: per-workflow records, per-cell
summaries, the BENCHMARKS.md section, docs/pareto.png and docs/timeline.png.

Definitions (the same for every configuration, computed from node timings and usage):
- a node is *ready* when its last upstream node ended (finished or skipped), or at the
  workflow's arrival for a start node; TTFT = first token − ready, so it counts waiting for a
  worker slot, or — for sequential calls — waiting for sibling branches the client runs first;
- makespan: first arrival → last workflow end; e2e latency: a workflow's arrival → its end;
- prefix hit rate: Σ cached_tokens / Σ prompt_tokens over every LLM call (the workers' usage);
- tokens/s per worker: Σ completion tokens / makespan / workers;
- tokens/s per user: per workflow, its completion tokens / its e2e latency; the mean of those.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class NodeRecord:
    node: str
    kind: str  # llm | external
    status: str
    worker: str
    ready: float | None
    started: float | None
    first_token: float | None
    finished: float | None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    after_tool: bool = False  # an upstream node is an external (tool) node
    predicted: bool = False  # the gateway predicted it and prefetched its whole knowable prefix
    prefetch_hit: bool | None = None  # its call's cached_tokens covered that prefix (None: not settled)
    prefetch: dict | None = None  # the gateway's prefetch record of the node, as GET /v1/workflows/{id} gave it


@dataclass(frozen=True)
class WorkflowRecord:
    index: int  # position in the arrival plan: the same workflow in every configuration
    example: str
    variant: int
    arrival: float
    end: float
    status: str
    error: str | None
    nodes: tuple[NodeRecord, ...]

    @property
    def latency(self) -> float:
        return self.end - self.arrival

    @property
    def completion_tokens(self) -> int:
        return sum(n.completion_tokens for n in self.nodes)

    def llm_calls(self) -> list[NodeRecord]:
        return [n for n in self.nodes if n.kind == "llm" and n.status == "finished"]


def workflow_record(index: int, example: str, variant: int, arrival: float, end: float, state,
                    upstream: dict[str, set[str]], worker_names: dict[str, str] | None = None) -> WorkflowRecord:
    """A record from a final WorkflowState (gateway or sequential) and the workflow's upstream map;
    worker URLs are renamed through `worker_names` where it has them."""
    worker_names = worker_names or {}
    raw_nodes = (getattr(state, "raw", None) or {}).get("nodes") or {}
    nodes = []
    for node_id, info in state.nodes.items():
        prefetch = (raw_nodes.get(node_id) or {}).get("prefetch") or {}
        parents = [state.nodes[p] for p in upstream.get(node_id, ()) if p in state.nodes]
        after_tool = any(p.type == "external" for p in parents)
        ends = [p.finished for p in parents]
        ready = arrival if not upstream.get(node_id) else (max(ends) if ends and None not in ends else None)
        first = info.started + info.ttft_s if info.started is not None and info.ttft_s is not None else None
        worker = worker_names.get(info.worker or "", info.worker or "")
        nodes.append(NodeRecord(node_id, info.type, info.status, worker, ready, info.started, first,
                                info.finished, info.prompt_tokens, info.cached_tokens, info.completion_tokens,
                                after_tool, bool(prefetch.get("predicted")), prefetch.get("hit"), prefetch or None))
    return WorkflowRecord(index, example, variant, arrival, end, state.status, state.error, tuple(nodes))


def agent_record(index: int, example: str, variant: int, arrival: float, end: float, run) -> WorkflowRecord:
    """A record from a client-driven agent's AgentRun: one node per LLM call, in order (`NODE_k`), each ready
    when sent (the client sends a call as soon as it has its input) and, after the first, after a tool. The
    calls were not streamed, so they have no first-token time and count in no TTFT."""
    nodes = []
    for k, call in enumerate(run.calls, 1):
        finished = call.started + call.duration_s if call.started is not None and call.duration_s is not None else None
        nodes.append(NodeRecord(f"{call.node}_{k}", "llm", "finished", "", call.started, call.started, None, finished,
                                call.prompt_tokens, call.cached_tokens, call.completion_tokens, after_tool=k > 1))
    return WorkflowRecord(index, example, variant, arrival, end, "finished", None, tuple(nodes))


@dataclass(frozen=True)
class CellSummary:
    config: str
    rate: float  # workflows per second; inf = all at once
    workflows: int
    failed: int
    makespan_s: float
    e2e_p50_s: float
    e2e_p99_s: float
    ttft_p50_s: float
    ttft_p99_s: float
    hit_rate: float
    tps_per_worker: float
    tps_per_user: float
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    ttft_after_tool_p50_s: float = float("nan")  # LLM calls whose input includes a tool result
    predicted_calls: int = 0  # calls predicted (whole knowable prefix prefetched) that ran
    prefetch_hits: int = 0  # of those, how many found that prefix cached at dispatch
    work: dict = field(default_factory=dict)  # the workers' own counters summed (WORK_COUNTERS), {} if unread
    background: dict = field(default_factory=dict)  # other tenants' calls during the cell (sent, finished, ...)
    makespan_runs: tuple = ()  # with repeats (--repeats): every run's makespan; this summary is the median run's
    cpu: dict = field(default_factory=dict)  # CPU-seconds by process kind during the cell (worker, gateway, ...)
    example_latency: dict = field(default_factory=dict)  # example → mean end-to-end latency of its finished workflows


def median_runs(runs: list["CellSummary"]) -> "CellSummary":
    """One cell run several times: the run with the median makespan (the lower middle one of an even
    count), carrying every run's makespan."""
    ordered = sorted(runs, key=lambda s: s.makespan_s)
    return replace(ordered[(len(ordered) - 1) // 2], makespan_runs=tuple(round(s.makespan_s, 2) for s in runs))


# What the engine workers did during a cell, from their /metrics counters (summed over workers).
WORK_COUNTERS = {
    "agentgate:engine_forward_seconds_total": "forward_s",
    "agentgate:prefill_computed_tokens_total": "prefill_tokens",
    "agentgate:prefetch_computed_tokens_total": "prefetch_tokens",
    "agentgate:decode_rows_total": "decode_rows",
    "agentgate:engine_steps_total": "steps",
}


def prometheus_series(metrics_text: str) -> dict[str, float]:
    """Every sample of a Prometheus text exposition: {"name{labels}": value}."""
    out = {}
    for line in metrics_text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
    return out


def work_counters(metrics_text: str) -> dict:
    """WORK_COUNTERS read from one worker's Prometheus text."""
    return {WORK_COUNTERS[name]: value for series, value in prometheus_series(metrics_text).items()
            if (name := series.partition("{")[0]) in WORK_COUNTERS}


AWARENESS_SERIES = ("agentgate_gateway_predictions_total", "agentgate_gateway_prefetch", "agentgate_gateway_pin_")


def awareness_counters(metrics_text: str) -> dict:
    """The gateway's agentgate_gateway_{predictions,prefetch*,pin*} series: {"name{labels}": value}."""
    return {series.removeprefix("agentgate_gateway_"): value
            for series, value in prometheus_series(metrics_text).items() if series.startswith(AWARENESS_SERIES)}


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summarize(config: str, rate: float, records: list[WorkflowRecord], workers: int,
              work: list[dict] | None = None, awareness: dict | None = None,
              background: dict | None = None, cpu: dict | None = None) -> CellSummary:
    done = [r for r in records if r.status == "finished"]
    calls = [c for r in done for c in r.llm_calls()]
    ttfts = [c.first_token - c.ready for c in calls if c.first_token is not None and c.ready is not None]
    after_tool = [c.first_token - c.ready for c in calls
                  if c.after_tool and c.first_token is not None and c.ready is not None]
    predicted = [c for c in calls if c.predicted and c.prefetch_hit is not None]
    makespan = max(r.end for r in records) - min(r.arrival for r in records) if records else float("nan")
    prompt = sum(c.prompt_tokens for c in calls)
    cached = sum(c.cached_tokens for c in calls)
    completion = sum(c.completion_tokens for c in calls)
    return CellSummary(
        config=config, rate=rate, workflows=len(records), failed=len(records) - len(done), makespan_s=makespan,
        e2e_p50_s=_pct([r.latency for r in done], 50), e2e_p99_s=_pct([r.latency for r in done], 99),
        ttft_p50_s=_pct(ttfts, 50), ttft_p99_s=_pct(ttfts, 99), hit_rate=cached / prompt if prompt else 0.0,
        tps_per_worker=completion / makespan / workers if makespan > 0 else 0.0,
        tps_per_user=float(np.mean([r.completion_tokens / r.latency for r in done])) if done else 0.0,
        prompt_tokens=prompt, cached_tokens=cached, completion_tokens=completion,
        ttft_after_tool_p50_s=_pct(after_tool, 50), predicted_calls=len(predicted),
        prefetch_hits=sum(bool(c.prefetch_hit) for c in predicted),
        work={"workers": len(work), **{k: sum(w.get(k, 0.0) for w in work) for k in WORK_COUNTERS.values()},
              **({"gateway": awareness} if awareness else {})} if work else {},
        background=dict(background or {}), cpu=dict(cpu or {}),
        example_latency={e: round(float(np.mean([r.latency for r in done if r.example == e])), 2)
                         for e in sorted({r.example for r in done})})


def to_json(meta: dict, summaries: list[CellSummary], records: dict[tuple[str, float], list[WorkflowRecord]],
            matmul_plans: dict[tuple[str, float], list]) -> dict:
    """Everything measured, for a second look: the run's settings, the summaries, every workflow's node
    timings, and the matmul plan each cell's workers chose at start-up."""
    return {"meta": meta, "summaries": [asdict(s) for s in summaries],
            "cells": [{"config": c, "rate": r, "matmul_plans": matmul_plans.get((c, r)),
                       "workflows": [asdict(w) for w in ws]} for (c, r), ws in records.items()]}


def from_json(data: dict) -> tuple[dict, list[CellSummary], dict[tuple[str, float], list[WorkflowRecord]], dict]:
    """(meta, summaries, records, matmul plans) of a to_json() result."""
    records, plans = {}, {}
    for cell in data["cells"]:
        key = (cell["config"], float(cell["rate"]))
        records[key] = [WorkflowRecord(**{**w, "nodes": tuple(NodeRecord(**n) for n in w["nodes"])})
                        for w in cell["workflows"]]
        plans[key] = cell.get("matmul_plans")
    return data["meta"], [CellSummary(**s) for s in data["summaries"]], records, plans


# -- BENCHMARKS.md --------------------------------------------------------------------------------------------------
def rate_label(rate: float) -> str:
    return "all at once" if rate == float("inf") else f"{rate:g} wf/s"


def section(summaries: list[CellSummary], meta: dict, baseline: str, targets: dict[str, float],
            images: tuple[str, str], title: str = "## Workflows") -> str:
    """The workflows section: one table row per (rate, configuration), ratios against `baseline`."""
    by_cell = {(s.config, s.rate): s for s in summaries}
    rates = sorted({s.rate for s in summaries})
    worker_args = f" Every worker also ran with `{' '.join(meta['worker_args'])}`." if meta.get("worker_args") else ""
    if meta.get("gateway_args"):
        worker_args += f" Every gateway also ran with `{' '.join(meta['gateway_args'])}`."
    lines = [
        title,
        "",
        f"`{meta['command']}`, {meta['when']}, {meta['machine']}. {meta['workers']} engine worker(s) × "
        f"{meta['threads']} thread(s), KV pool {meta['kv_memory_gb']} GiB each; {meta['workflows']} workflows per "
        f"cell drawn in turn from {', '.join(meta['examples'])} (different inputs each), open-loop Poisson "
        f"arrivals (same schedule for every configuration); tools take {meta['tool_latency_s']} s. Every cell "
        "starts fresh processes (Redis, workers with empty KV tiers, the gateway), so no cell inherits a cache"
        + ("; then, before its clock starts, one quick workflow of each example runs the configuration's own way "
           "(warm: the agents' shared prompts are cached, as in a service that has run them before), and the "
           "work counters count from after it." if meta.get("warm") else ".")
        + worker_args + background_note(summaries, meta),
        "",
        "| arrivals | configuration | makespan s | vs " + baseline + " | e2e p50 s | e2e p99 s | TTFT p50 s | "
        "TTFT p99 s | TTFT after tool p50 s | prefix hit | predicted calls hit | tok/s/worker | tok/s/user | failed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    if any(s.makespan_runs for s in summaries):
        lines[2] += (f" Each cell ran {max(len(s.makespan_runs) for s in summaries)} times, the configurations taking "
                     "turns; a row is its median run (by makespan), and every run's makespan is listed below the table.")
    for rate in rates:
        base = by_cell.get((baseline, rate))
        for s in (x for x in summaries if x.rate == rate):
            ratio = f"{s.makespan_s / base.makespan_s:.2f}×" if base and base.makespan_s > 0 else "–"
            hits = f"{s.prefetch_hits}/{s.predicted_calls}" if s.predicted_calls else "–"
            lines.append(f"| {rate_label(rate)} | {s.config} | {s.makespan_s:.1f} | {ratio} | {s.e2e_p50_s:.1f} | "
                         f"{s.e2e_p99_s:.1f} | {s.ttft_p50_s:.2f} | {s.ttft_p99_s:.2f} | "
                         f"{s.ttft_after_tool_p50_s:.2f} | {s.hit_rate:.0%} | {hits} | "
                         f"{s.tps_per_worker:.1f} | {s.tps_per_user:.2f} | {s.failed} |")
    if any(s.makespan_runs for s in summaries):
        lines += ["", "Makespans of every run: " + "; ".join(
            f"{s.config} @ {rate_label(s.rate)} " + ", ".join(f"{m:.1f}" for m in s.makespan_runs)
            for s in summaries if s.makespan_runs) + " s."]
    top = rates[-1] if rates else None
    base = by_cell.get((baseline, top))
    lines += ["", "Makespan ratio = configuration ÷ " + baseline + " (higher: " + baseline + " is faster). "
              "TTFT counts from the moment a call's inputs exist. Definitions: scripts/bench_workflows_report.py."]
    if base is not None and base.makespan_s > 0:
        verdicts = []
        for other, target in targets.items():
            cell = by_cell.get((other, top))
            if cell is not None:
                ratio = cell.makespan_s / base.makespan_s
                verdicts.append(f"{ratio:.2f}× lower makespan than {other} (target ≥ {target:g}×: "
                                f"{'met' if ratio >= target else 'not met'})")
        if verdicts:
            lines += ["", f"At the highest load ({rate_label(top)}), {baseline}: " + "; ".join(verdicts) + "."]
        peer = by_cell.get(("sglang_router", top))
        if peer is not None and base.work and peer.work and peer.work.get("forward_s"):
            ratio = base.work["forward_s"] / peer.work["forward_s"]
            lines += ["", f"Engine work at {rate_label(top)}: {baseline} {base.work['forward_s']:.1f} forward-seconds "
                      f"for {base.completion_tokens} completion tokens, sglang_router {peer.work['forward_s']:.1f} for "
                      f"{peer.completion_tokens} ({ratio:.2f}×; target ≤ 1: {'met' if ratio <= 1 else 'not met'})."]
    lines += awareness_verdicts(summaries, baseline, rates)
    lines += example_table(summaries, baseline)
    lines += work_table(summaries)
    lines += ["", f"![Pareto frontier]({images[0]})", "", f"![one workflow's timeline]({images[1]})", ""]
    return "\n".join(lines)


def background_note(summaries: list[CellSummary], meta: dict) -> str:
    """What other tenants sent during each cell (bench_workflows --background-rate); '' without them."""
    if not meta.get("background_rate"):
        return ""
    done = "; ".join(f"{s.config} @ {rate_label(s.rate)} {s.background.get('finished', 0)} of "
                     f"{s.background.get('sent', 0)}" for s in summaries if s.background)
    return (f" Other tenants' chat calls arrive at {meta['background_rate']:g}/s during every cell (Poisson; each a "
            f"unique ~{meta['background_tokens']}-token prompt, {meta['background_max_tokens']} tokens out, at most "
            f"{meta['background_inflight']} in flight) and compete for "
            f"KV memory; they are not in the table's numbers. Finished of sent: {done}.")


def example_table(summaries: list[CellSummary], baseline: str) -> list[str]:
    """Mean end-to-end latency of each example's workflows, per cell, and each against the baseline's: which
    kind of agent gains or loses. Only for runs of more than one example."""
    examples = sorted({e for s in summaries for e in s.example_latency})
    if len(examples) < 2:
        return []
    base = {s.rate: s.example_latency for s in summaries if s.config == baseline}
    lines = ["", "Mean end-to-end latency (s) of each example's workflows (in brackets: ÷ " + baseline + "'s, "
             "higher: " + baseline + " is faster):", "",
             "| arrivals | configuration | " + " | ".join(examples) + " |", "|---|---|" + "---|" * len(examples)]
    for s in summaries:
        cells = []
        for e in examples:
            v, b = s.example_latency.get(e), base.get(s.rate, {}).get(e)
            cells.append("–" if v is None else f"{v:.1f}" + (f" ({v / b:.2f}×)" if b and s.config != baseline else ""))
        lines.append(f"| {rate_label(s.rate)} | {s.config} | " + " | ".join(cells) + " |")
    return lines


def work_table(summaries: list[CellSummary]) -> list[str]:
    """Where the workers' time went, per cell: forward-pass seconds and the tokens they computed."""
    rows = [s for s in summaries if s.work]
    if not rows:
        return []
    lines = ["", "What the workers computed (their /metrics counters, summed over workers): busy = forward-pass "
             "seconds ÷ (makespan × workers); prefill = prompt tokens run for calls; prefetch = prompt tokens run "
             "ahead of calls; decode rows = one per decoding request per step.", "",
             "| arrivals | configuration | forward s | busy | prefill tokens | prefetch tokens | decode rows | steps | "
             "CPU-s: workers / gateway or router / Redis / client |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in rows:
        w = s.work
        busy = w["forward_s"] / (s.makespan_s * w["workers"]) if s.makespan_s > 0 else float("nan")
        lines.append(f"| {rate_label(s.rate)} | {s.config} | {w['forward_s']:.0f} | {busy:.0%} | "
                     f"{w['prefill_tokens']:.0f} | {w['prefetch_tokens']:.0f} | {w['decode_rows']:.0f} | "
                     f"{w['steps']:.0f} | {cpu_cell(s.cpu)} |")
    return lines


def cpu_cell(cpu: dict) -> str:
    if not cpu:
        return "–"
    front = cpu.get("gateway", cpu.get("router"))
    return " / ".join("–" if v is None else f"{v:.1f}" for v in (cpu.get("worker"), front, cpu.get("redis"),
                                                                  cpu.get("client")))


def awareness_verdicts(summaries: list[CellSummary], baseline: str, rates: list[float],
                       ablations: tuple[str, ...] = ("no_prediction", "kv_aware_radix")) -> list[str]:
    """Agent awareness's targets, per arrival rate: predicted calls that hit their prefetched prefix
    (≥ 90%), and TTFT after a tool call without prediction ÷ with it (≥ 5×), against each ablation
    present: no_prediction (the same workers and tiers, no prefetch or pins) and kv_aware_radix (no
    prediction and no L2/L3: each worker's radix cache alone, as a plain prefix-caching pool has)."""
    by_cell = {(s.config, s.rate): s for s in summaries}
    out = []
    for rate in rates:
        full = by_cell.get((baseline, rate))
        if full is None:
            continue
        parts = []
        if full.predicted_calls:
            share = full.prefetch_hits / full.predicted_calls
            parts.append(f"{full.prefetch_hits} of {full.predicted_calls} predicted calls ({share:.0%}) hit their "
                         f"prefetched prefix at dispatch (target ≥ 90%: {'met' if share >= 0.9 else 'not met'})")
        for ablation in ablations:
            off = by_cell.get((ablation, rate))
            if off is None or not full.ttft_after_tool_p50_s > 0 or math.isnan(off.ttft_after_tool_p50_s):
                continue
            speed = off.ttft_after_tool_p50_s / full.ttft_after_tool_p50_s
            verdict = "met" if speed >= 5 else "not met"
            parts.append(f"TTFT after a tool call {full.ttft_after_tool_p50_s:.2f} s vs "
                         f"{off.ttft_after_tool_p50_s:.2f} s with {ablation}: {speed:.2f}× "
                         f"(target ≥ 5×: {verdict})")
        if parts:
            out += ["", f"Agent awareness at {rate_label(rate)}: " + "; ".join(parts) + "."]
    return out


# -- plots ----------------------------------------------------------------------------------------------------------
def plot_pareto(summaries: list[CellSummary], labels: dict[str, str], path: Path) -> None:
    """Tokens/s per worker (y) against tokens/s per user (x): one curve per configuration, one point per rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for config in dict.fromkeys(s.config for s in summaries):
        points = sorted((s for s in summaries if s.config == config), key=lambda s: s.rate)
        xs, ys = [p.tps_per_user for p in points], [p.tps_per_worker for p in points]
        ax.plot(xs, ys, marker="o", label=labels.get(config, config))
        for p in points:
            ax.annotate(rate_label(p.rate), (p.tps_per_user, p.tps_per_worker), textcoords="offset points",
                        xytext=(4, 4), fontsize=7, alpha=0.7)
    label_axes(ax, "tokens/s per user (a workflow's completion tokens ÷ its latency)",
               "tokens/s per worker (all completion tokens ÷ makespan ÷ workers)",
               "Throughput per worker vs speed per user (up and right is better)")
    save_figure(fig, path, dpi=120)


def label_axes(ax, xlabel: str, ylabel: str, title: str | None = None, *, title_size: int | None = None,
               legend_size: int = 8) -> None:
    """A plot's labels, title, grid and legend, as every benchmark plot has them."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title, fontsize=title_size)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)


def save_figure(fig, path: Path, dpi: int) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def plot_timeline(panels: list[tuple[str, WorkflowRecord]], path: Path) -> None:
    """Gantt of one workflow per panel (the same workflow under each configuration): per node, waiting
    for a worker, prefill up to the first token, decode; tool calls hatched; cache hits marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    height = 1.8 + 0.45 * max(len(r.nodes) for _, r in panels) * len(panels)
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, height), squeeze=False)
    workers = sorted({n.worker for _, r in panels for n in r.nodes if n.kind == "llm" and n.worker})
    colors = {w: plt.cm.tab10(i % 10) for i, w in enumerate(workers)}
    span = max(r.end - r.arrival for _, r in panels)
    for ax, (title, rec) in zip(axes[:, 0], panels):
        shown = sorted((n for n in rec.nodes if n.started is not None and n.finished is not None),
                       key=lambda n: (n.started, n.node))
        for y, n in enumerate(shown):
            t = lambda v: v - rec.arrival  # noqa: E731
            if n.ready is not None and n.started > n.ready:
                ax.barh(y, n.started - n.ready, left=t(n.ready), color="0.85", height=0.6)
            if n.kind == "external":
                ax.barh(y, n.finished - n.started, left=t(n.started), color="white", edgecolor="0.3", hatch="//",
                        height=0.6)
                continue
            color = colors.get(n.worker, "C0")
            first = n.first_token if n.first_token is not None else n.finished
            ax.barh(y, first - n.started, left=t(n.started), color=color, alpha=0.45, height=0.6)
            ax.barh(y, n.finished - first, left=t(first), color=color, height=0.6)
            hit = n.cached_tokens / n.prompt_tokens if n.prompt_tokens else 0.0
            ax.plot(t(n.started), y, marker="o", ms=7, color="green" if hit >= 0.5 else "red",
                    markerfacecolor="green" if hit >= 0.5 else "white", zorder=3)
            ax.text(t(n.finished) + span * 0.005, y, f"{n.cached_tokens}/{n.prompt_tokens} cached",
                    va="center", fontsize=7)
        ax.set_yticks(range(len(shown)), [n.node for n in shown], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, span * 1.15)
        ax.set_title(f"{title}: {rec.example} #{rec.variant}, {rec.latency:.1f} s", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("seconds since the workflow arrived")
    handles = [Patch(color="0.85", label="inputs ready, waiting"), Patch(facecolor="white", edgecolor="0.3",
                                                                         hatch="//", label="tool call")]
    handles += [Patch(color=colors[w], label=f"{w}: decode (light: until the first token)") for w in workers]
    handles += [plt.Line2D([], [], marker="o", color="green", ls="", label="prefix-cache hit (≥50% cached)"),
                plt.Line2D([], [], marker="o", color="red", markerfacecolor="white", ls="", label="miss")]
    fig.legend(handles=handles, fontsize=7, loc="lower center", ncol=3, frameon=False)
    fig.tight_layout(rect=(0, 0.75 / height, 1, 1))  # room for the legend below
    fig.savefig(path, dpi=120)
    plt.close(fig)
