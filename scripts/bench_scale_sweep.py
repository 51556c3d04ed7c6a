"""bench_scale's rate sweep: which cells a run takes, the rate the issue's targets are judged at, the
verdicts there, and the plots (everything simulated).

A cluster size's cells: the sweep configurations (agentgate and sglang-router by default: the Pareto
frame, and agentgate's p99 TTFT that picks the rate) at every rate, light load to overload; then every
other configuration once, at the picked rate: the highest swept rate where agentgate's cell is valid
and its p99 TTFT is at most 1 s (no such rate: the lowest one, and the targets are not judged).
"""

from __future__ import annotations

import math
from pathlib import Path

from scripts import bench_workflows_report as report

TTFT_LIMIT_S = 1.0
OVERSUBSCRIBED = 3.0  # the radix-only target holds only with KV memory oversubscribed this much


def picked_rate(rows: list[dict], workers: int, rates: list[float]) -> tuple[float, bool]:
    """(rate, whether agentgate met the TTFT limit there) for one cluster size's main-model rows."""
    ok = [r["rate"] for r in rows if r["workers"] == workers and r["config"] == "agentgate" and main_model(r)
          and r["valid"] and r["ttft_p99_s"] is not None and r["ttft_p99_s"] <= TTFT_LIMIT_S]
    return (max(ok), True) if ok else (min(rates), False)


def main_model(r: dict) -> bool:
    """Not the extra (Llama-3.1-70B TP4) row: rows of older runs carry no model and are all main."""
    return not r.get("extra_row", False)


def targets(rows: list[dict], meta: dict | None = None) -> list[str]:
    """The issue's targets, at the highest rate where agentgate's p99 TTFT is <= 1 s (valid cells only)."""
    out, meta = [], meta or {}
    for w in sorted({r["workers"] for r in rows if main_model(r)}):
        mine = [r for r in rows if r["workers"] == w and r["valid"] and main_model(r)]
        ok = [r for r in mine if r["config"] == "agentgate" and r["ttft_p99_s"] <= TTFT_LIMIT_S]
        if not ok:
            out.append(f"- {w} workers: no valid rate where agentgate's p99 TTFT is <= 1 s; targets not evaluated.")
            continue
        rate = max(r["rate"] for r in ok)
        at = {r["config"]: r for r in mine if r["rate"] == rate}
        a = at["agentgate"]

        def ratio(cfg: str, key: str, target: float, higher: bool = False) -> str:
            b = at.get(cfg)
            if b is None or not b[key] or not a[key] or math.isnan(b[key]) or math.isnan(a[key]):
                return f"{key} vs {cfg}: not measured (missing or invalid cell)"
            x = a[key] / b[key] if higher else b[key] / a[key]
            return f"{key} vs {cfg}: {x:.2f}x ({'met' if x >= target else 'missed'}, target {target}x)"

        over = (meta.get("kv_oversubscribed") or {}).get(str(w))
        radix = ratio("kv_aware_radix", "ttft_after_tool_p99_s", 5.0)
        if over is None or over < OVERSUBSCRIBED:
            radix += (f" (KV oversubscribed {over}x, the target asks >= {OVERSUBSCRIBED:g}x: not the target's "
                      "condition)" if over is not None else " (KV not oversubscribed: not the target's condition)")
        out.append(f"- {w} workers at {report.rate_label(rate)}: " + "; ".join([
            ratio("sglang_router", "e2e_p50_s", 2.0), radix,
            ratio("sglang_router", "tps_per_gpu", 1.5, higher=True)]))
    return out


def _labels(rows: list[dict]) -> list[tuple]:
    return list(dict.fromkeys((r["workers"], r.get("model"), r.get("tp", 1), r.get("extra_row", False)) for r in rows))


def plot(rows: list[dict], path: Path, meta: dict | None = None) -> None:
    """The Pareto frame (output tokens/s per GPU against tokens/s per user, as the rate sweeps), one panel per
    cluster (the extra TP4 row gets its own)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = meta or {}
    panels = _labels(rows)
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 5), squeeze=False)
    for ax, key in zip(axes[0], panels):
        w, model, tp, extra = key
        mine = [r for r in rows if (r["workers"], r.get("model"), r.get("tp", 1), r.get("extra_row", False)) == key]
        for cfg in dict.fromkeys(r["config"] for r in mine):
            pts = sorted((r for r in mine if r["config"] == cfg), key=lambda r: r["rate"])
            ax.plot([p["tps_per_user"] for p in pts], [p["tps_per_gpu"] for p in pts], marker="o", label=cfg)
        over = (m.get("kv_oversubscribed") or {}).get(str(w)) if not extra else None
        report.label_axes(ax, "output tokens/s per user (simulated)", "output tokens/s per GPU (simulated)",
                          f"SIMULATED: {w} x {m.get('gpu', 'h100_sxm')} x tp{tp or m.get('tp', 1)}, "
                          f"{model or m.get('model', 'Qwen/Qwen3-8B')}"
                          + (f", KV {over}x oversubscribed" if over else ""), title_size=9, legend_size=7)
    report.save_figure(fig, path, dpi=110)


def plot_sweep(rows: list[dict], path: Path, meta: dict | None = None) -> bool:
    """Per cluster size, each swept configuration's p99 TTFT and p50 completion against the arrival rate, with
    the 1 s line and invalid cells hollow. False (nothing drawn) when no configuration ran at two rates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["workers"] for r in rows if main_model(r)})
    swept = {(w, c) for w in sizes for c in {r["config"] for r in rows}
             if len({r["rate"] for r in rows if r["workers"] == w and r["config"] == c and main_model(r)}) > 1}
    if not swept:
        return False
    fig, axes = plt.subplots(2, len(sizes), figsize=(7 * len(sizes), 8), squeeze=False)
    for col, w in enumerate(sizes):
        for cfg in sorted(c for ww, c in swept if ww == w):
            pts = sorted((r for r in rows if r["workers"] == w and r["config"] == cfg and main_model(r)),
                         key=lambda r: r["rate"])
            for row, key in ((0, "ttft_p99_s"), (1, "e2e_p50_s")):
                ax = axes[row][col]
                (line,) = ax.plot([p["rate"] for p in pts], [p[key] for p in pts], label=cfg)
                for p in pts:
                    ax.plot([p["rate"]], [p[key]], marker="o", color=line.get_color(),
                            markerfacecolor=line.get_color() if p["valid"] else "none")
        axes[0][col].axhline(TTFT_LIMIT_S, color="grey", linestyle="--", linewidth=1)
        axes[0][col].set_title(f"SIMULATED: {w} x {(meta or {}).get('gpu', 'h100_sxm')}: p99 TTFT (hollow: INVALID)",
                               fontsize=9)
        axes[1][col].set_title(f"SIMULATED: {w} workers: workflow completion p50", fontsize=9)
        for row, label in ((0, "p99 TTFT (s, simulated)"), (1, "completion p50 (s, simulated)")):
            axes[row][col].set_xlabel("workflow arrivals per simulated second")
            axes[row][col].set_ylabel(label)
            axes[row][col].grid(alpha=0.3)
            axes[row][col].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


DECODE_STEP_S = 0.010  # Qwen3-8B on an H100, a decode step at a moderate batch (aiconfigurator: 6.8 ms at 1, 13.3 at 64)
PREFILL_S_PER_TOKEN = 23e-6  # ... and prefill (23.3 ms per 1,000 tokens)
CELL_START_S = 25.0  # wall seconds to start and stop a cell's processes (Redis, sim-cluster, gateway or router)


def workflow_seconds(trace: dict, e: dict) -> float:
    """A lower bound on one workflow's simulated duration: its critical path's tool and think time, output
    tokens at one decode step each and prompts at the prefill rate (no queueing, every prefix computed once)."""
    sys_t = trace["system_tokens"][e["kind"]][e["system"]]

    def call(prompt: int, out: int) -> float:
        return prompt * PREFILL_S_PER_TOKEN + out * DECODE_STEP_S

    kind = e["kind"]
    if kind == "react":
        t, ctx = 0.0, sys_t + e["question"]
        for step in e["steps"]:
            t += call(ctx, step["out"]) + step["tool_s"]
            ctx += step["out"] + step["obs"]
        return t + call(ctx, e["answer"])
    if kind == "map_reduce":
        return (call(sys_t + e["question"], e["plan"]) + max(call(m["chunk"], m["out"]) for m in e["maps"])
                + call(sum(m["out"] for m in e["maps"]), e["reduce"]))
    if kind == "planner":
        return (call(sys_t + e["question"], e["plan"]) + max(x["tool_s"] + call(x["obs"], x["out"])
                                                             for x in e["executors"]) + call(0, e["critic"]))
    if kind == "code_edit":
        return e["read_s"] + call(sys_t + e["file"], e["edit"]) + e["test_s"] + call(e["report"], e["fix"])
    return sum(t["think_s"] + call(t["in"], t["out"]) for t in e["turns"])


def cell_wall_s(trace: dict, speedup: float) -> float:
    """Wall seconds one cell of `trace` takes at least: the last workflow's arrival plus duration, in
    simulated seconds over the speedup, and the processes' start and stop."""
    end = max(e["at"] + workflow_seconds(trace, e) for e in trace["workflows"])
    return end / speedup + CELL_START_S
