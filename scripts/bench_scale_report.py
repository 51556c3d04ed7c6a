"""bench_scale's markdown: the table of cells, the section BENCHMARKS.md gets, its heading (one per model/TP
and KV sizing), and the fidelity check's numbers beside it (everything simulated)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from scripts import bench_scale_sweep as sweep
from scripts import bench_workflows_report as report

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## At scale (simulated H100)"


def after_tool_p99(records: list) -> float:
    vals = [c.first_token - c.ready for r in records if r.status == "finished" for c in r.llm_calls()
            if c.after_tool and c.first_token is not None and c.ready is not None]
    return report._pct(vals, 99)


def row(s, extra: dict, workers: int, tp: int = 1, model: str | None = None, extra_row: bool = False) -> dict:
    p = extra.get("precision_recall", (None, None))
    return {"config": s.config, "workers": workers, "model": model, "tp": tp, "extra_row": extra_row, "rate": s.rate, "valid": extra["lag"]["valid"],
            "workflows": s.workflows, "failed": s.failed, "e2e_p50_s": s.e2e_p50_s, "e2e_p99_s": s.e2e_p99_s,
            "ttft_p99_s": s.ttft_p99_s, "ttft_after_tool_p50_s": s.ttft_after_tool_p50_s,
            "ttft_after_tool_p99_s": extra["after_tool_p99"], "hit_rate": s.hit_rate,
            "prefetch_precision": p[0], "prefetch_recall": p[1], "tps_per_gpu": s.tps_per_worker / tp,
            "tps_per_user": s.tps_per_user, "gateway_cpu_s": s.cpu.get("gateway"), **extra["gateway"],
            "lag": extra["lag"]}


def precision_recall(records: list) -> tuple[float | None, float | None]:
    """Of the calls the gateway predicted (prefetched), how many found their prefix cached (precision); of all
    calls, how many were predicted (recall)."""
    calls = [c for r in records if r.status == "finished" for c in r.llm_calls()]
    predicted = [c for c in calls if c.predicted and c.prefetch_hit is not None]
    precision = sum(bool(c.prefetch_hit) for c in predicted) / len(predicted) if predicted else None
    return precision, (len(predicted) / len(calls) if calls else None)


def fmt(v, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def table(rows: list[dict]) -> list[str]:
    lines = ["| workers | config | rate (wf/s) | valid | done | completion p50 / p99 (s) | TTFT after tool p50 / p99 "
             "(s) | TTFT p99 (s) | KV hit | prefetch prec. / recall | out tok/s per GPU | tok/s per user | "
             "gateway CPU s / wf | gateway RSS KB / in-flight (peak) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lag = r["lag"]
        valid = "yes" if r["valid"] else f"INVALID (lag {lag.get('median_lag_ms')} ms vs step {lag.get('median_step_ms')} ms)"
        cpu = r["gateway_cpu_s"] / r["workflows"] if r.get("gateway_cpu_s") is not None else None
        where = f"{r['workers']} ({r['model'].rsplit('/', 1)[-1]} TP{r['tp']})" if r.get("extra_row") else r["workers"]
        lines.append(f"| {where} | {r['config']} | {report.rate_label(r['rate'])} | {valid} | "
                     f"{r['workflows'] - r['failed']}/{r['workflows']} | {fmt(r['e2e_p50_s'])} / {fmt(r['e2e_p99_s'])} | "
                     f"{fmt(r['ttft_after_tool_p50_s'])} / {fmt(r['ttft_after_tool_p99_s'])} | {fmt(r['ttft_p99_s'])} | "
                     f"{r['hit_rate']:.0%} | {fmt(r['prefetch_precision'])} / {fmt(r['prefetch_recall'])} | "
                     f"{r['tps_per_gpu']:.0f} | {r['tps_per_user']:.1f} | {fmt(cpu, 3)} | "
                     f"{fmt(r.get('rss_kb_per_inflight'), 1)} ({r.get('peak_inflight', '–')}) |")
    return lines


def section(meta: dict, rows: list[dict], plot_path: Path, sweep_path: Path | None = None) -> str:
    def image(path: Path) -> str:
        return f"docs/{path.name}" if path.parent.resolve() == (ROOT / "docs").resolve() else str(path)

    kv = (f" L1 KV sized by `--kv-oversubscribe {meta['kv_oversubscribe']:g}` (never below "
          f"{meta.get('kv_floor_calls', 2)} of the trace's largest calls; the working set is the whole trace's, each "
          f"workflow at its largest, not what is live at once): blocks per worker by cluster size {meta['kv_blocks']}, "
          f"the working set over the cluster's L1 {meta['kv_oversubscribed']}." if meta.get("kv_blocks") else "")
    picks = meta.get("picked_rate") or {}
    pick = ("" if not picks else " Rates: " + "; ".join(
        f"{w} workers: {report.rate_label(p['rate'])}" + ("" if p["ttft_ok"] else " (none met p99 TTFT <= 1 s: "
                                                               "the lowest)") for w, p in picks.items())
        + " (the configurations not swept ran there only).")
    lines = [heading(meta), "", f"**Everything here is simulated**: sim workers (`--backend sim`, {meta['gpu']}, {meta['model']}, "
             f"tp{meta['tp']}; step times from aiconfigurator-core), simulated time at {meta['speedup']}x real time, "
             f"converted back to simulated seconds. `{meta['command']}` ({meta['when']}), {meta['workflows']} workflows "
             f"per cell ({meta['size']} sizes, seed {meta['seed']}). A cell whose median step lag exceeds 5% of the "
             "median step time is INVALID." + kv + pick, "", *table(rows), "", f"![simulated Pareto]({image(plot_path)})",
             *(["", f"![simulated rate sweep]({image(sweep_path)})"] if sweep_path else []), "",
             "Targets (at the highest rate where agentgate's p99 TTFT <= 1 s):", "", *sweep.targets(rows, meta), "",
             *fidelity_lines(plot_path.parent / "fidelity_sim.json")]
    return "\n".join(lines)


def variant(model: str, tp: int) -> str:
    """The file-name suffix of a run on another model or TP than the default Qwen3-8B TP1 ("" for it)."""
    if (model, tp) == ("Qwen/Qwen3-8B", 1):
        return ""
    return "_" + model.rsplit("/", 1)[-1].lower() + f"_tp{tp}"


def heading(meta: dict) -> str:
    """The BENCHMARKS.md section of this run: the default one, or one per model/TP and KV sizing."""
    extra = [f"{meta['model']} TP{meta['tp']}"] if variant(meta["model"], meta["tp"]) else []
    extra += [f"KV {meta['kv_oversubscribe']:g}x oversubscribed"] if meta.get("kv_blocks") else []
    return SECTION + (f": {', '.join(extra)}" if extra else "")


def fidelity_lines(path: Path) -> list[str]:
    """The fidelity check's numbers (scripts/fidelity_sim.py --out), where a run wrote them beside the plot."""
    if not path.exists():
        return ["Fidelity: not measured in this output directory (scripts/fidelity_sim.py --out "
                f"{path.name})."]
    f = json.loads(path.read_text())
    real, sim, diff = f["results"]["real"], f["results"]["sim"], f["relative_difference"]
    return ["Fidelity (one CPU-sized trace, a real CPU worker against a sim worker on the table `agentgate "
            f"profile` measured: {f['table']}):", "",
            "| worker | calls | TTFT p50 (s) | makespan (s) |", "|---|---|---|---|",
            f"| real (embedded engine) | {real['calls']} | {real['ttft_p50_s']} | {real['makespan_s']} |",
            f"| sim (timing table) | {sim['calls']} | {sim['ttft_p50_s']} | {sim['makespan_s']} |",
            f"| sim / real - 1 | | {diff['ttft_p50_s']:+.1%} | {diff['makespan_s']:+.1%} |", "",
            f"Within 15%: {'yes' if f['within_15_percent'] else 'no'}.", ""]
