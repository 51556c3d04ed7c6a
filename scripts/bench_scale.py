"""The agent benchmark at data-center scale, on simulated GPUs (everything it reports is simulated).

Workers: one `agentgate sim-cluster` process of --workers sim workers (H100 SXM, Qwen3-8B by
default; step times from aiconfigurator-core, KV capacity from the GPU's memory), publishing KV
events to a fresh Redis, sharing one L3. Workload: scripts/scale_workload.py, seeded, written to
trace.json in the output directory (ReAct, map-reduce, planner/executors/critic, code edits, chat;
Poisson arrivals). Each configuration × rate gets fresh processes and replays the same trace.
Simulated time runs --speedup times real time (below 1 on a small host); arrivals and tool latencies
are scaled to match and every reported time is converted back to simulated seconds.

Configurations: agentgate in full (kv_aware, prediction + prefetch + pins, L1/L2/L3, token
pipelining, workflow priority, n-gram speculation) and its ablations (no_prediction, no_pins,
no_tiers, no_pipelining, no_priorities); kv_aware_radix; round_robin; the real sglang-router
(cache_aware) driving client-side agent loops; a sequential client.

A cell whose median step lag exceeds 5% of the median step time (the host could not keep the
simulated GPUs' schedule) is reported INVALID, never silently used.

  .venv/bin/python scripts/bench_scale.py --quick                     # smoke run (the suite runs it)
  .venv/bin/python scripts/bench_scale.py --workers 8 --speedup 0.25  # one cluster size
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "agents")]

from scripts import bench_workflows as bw  # noqa: E402
from scripts import bench_workflows_report as report  # noqa: E402
from scripts import scale_workload  # noqa: E402
from scripts.benchlib import update_benchmarks_md  # noqa: E402

SECTION = "## At scale (simulated H100)"
LAG_LIMIT = 0.05  # of the median step time
SPEC = bw.SPEC
FULL = ("--policy", "kv_aware", "--workflow-priority", "1", "--token-pipelining", "on")


def _without(flags: tuple[str, ...], name: str, value: str | None = None) -> tuple[str, ...]:
    out, skip = [], False
    for i, f in enumerate(flags):
        if skip:
            skip = False
            continue
        if f == name:
            skip = True
            continue
        out.append(f)
    return tuple(out) + ((name, value) if value is not None else ())


CONFIGS = (
    bw.Config("agentgate", "agentgate in full", FULL, SPEC),
    bw.Config("no_prediction", "agentgate, no prediction (no prefetch, no pins)", (*FULL, "--no-prediction"), SPEC),
    bw.Config("no_pins", "agentgate, prefetch without pins", (*FULL, "--no-pinning"), SPEC),
    bw.Config("no_tiers", "agentgate, workers without L2/L3", FULL, (*SPEC, *bw.RADIX_ONLY)),
    bw.Config("no_pipelining", "agentgate, no token pipelining", _without(FULL, "--token-pipelining", "off"), SPEC),
    bw.Config("no_priorities", "agentgate, no workflow priority", _without(FULL, "--workflow-priority", "0"), SPEC),
    bw.Config("kv_aware_radix", "gateway DAG, kv_aware, radix cache only", ("--policy", "kv_aware", *bw.PLAIN),
              bw.RADIX_ONLY),
    bw.Config("round_robin", "gateway DAG, round_robin, radix cache only", ("--policy", "round_robin", *bw.PLAIN),
              bw.RADIX_ONLY),
    bw.Config("sglang_router", "client-driven DAGs through sglang-router (cache_aware)", None, SPEC,
              router=("--policy", "cache_aware")),
    bw.Config("sequential", "sequential client, one worker per workflow, radix only", None, bw.RADIX_ONLY),
)


class SimStack(bw.Stack):
    """bench_workflows' Stack with one sim-cluster process for its workers."""

    def start_workers(self, extra: list[str]) -> None:
        urls = self.tmp / "urls"
        a = self.args
        proc = self._spawn([sys.executable, "-m", "engine.worker.sim_cluster", "--workers", str(a.workers), "--port", "0",
                            "--urls-file", str(urls), "--gpu", a.gpu, "--model", a.model, "--tp", str(a.tp),
                            "--speedup", str(a.speedup), "--log-level", "warning",
                            "--max-running-requests", str(a.max_running), *extra, *self.config.worker,
                            *a.worker_arg], "worker-cluster")
        deadline = time.monotonic() + 300
        while not urls.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the sim-cluster did not start (exit {proc.poll()}); logs in {self.log_dir}")
            time.sleep(0.2)
        self.worker_urls = urls.read_text().split()
        self.matmul_plans = [bw._get(self.worker_urls[0] + "/get_server_info").get("matmul_plan")]


class Sampler:
    """The gateway's RSS and the number of workflows in flight, sampled every 0.2 s."""

    def __init__(self, pid: int | None):
        import psutil

        self.proc = psutil.Process(pid) if pid else None
        self.inflight = 0
        self.samples: list[tuple[int, int]] = []  # (in flight, rss bytes)
        self._stop = threading.Event()
        self.base_rss = self.proc.memory_info().rss if self.proc else 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            if self.proc is not None:
                self.samples.append((self.inflight, self.proc.memory_info().rss))

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join(timeout=2)
        if not self.samples:
            return {}
        peak, rss = max(self.samples)
        return {"peak_inflight": peak, "gateway_rss_mb": round(max(r for _, r in self.samples) / 2**20, 1),
                "rss_kb_per_inflight": round((rss - self.base_rss) / 1024 / peak, 1) if peak else None}


def scaled(records: list, t0: float, s: float) -> list:
    """Records with wall times mapped to simulated seconds since t0 (× speedup)."""
    def t(x):
        return None if x is None else (x - t0) * s

    out = []
    for r in records:
        nodes = tuple(replace(n, ready=t(n.ready), started=t(n.started), first_token=t(n.first_token),
                              finished=t(n.finished)) for n in r.nodes)
        out.append(replace(r, arrival=t(r.arrival), end=t(r.end), nodes=nodes))
    return out


async def run_cell(trace: dict, stack: SimStack, args, progress, task) -> tuple[list, dict]:
    from agentgate.async_client import AsyncClient
    from agentgate.errors import AgentGateError
    from agentgate.tools import upstream_of

    front = stack.gateway_url or stack.router_url
    clients = [AsyncClient(front, timeout=3600.0)] if front else [AsyncClient(u, timeout=3600.0)
                                                                   for u in stack.worker_urls]
    gateway_pid = next((p.pid for p, r in zip(stack.procs, stack.roles) if r == "gateway"), None)
    sampler = Sampler(gateway_pid)
    stack.mark()
    t0 = time.time()

    async def one(e: dict):
        await asyncio.sleep(max(t0 + e["at"] / args.speedup - time.time(), 0.0))
        arrived = time.time()
        wf = scale_workload.build(trace, e, time_scale=1 / args.speedup)
        sampler.inflight += 1
        try:
            state = await bw.drive(stack, clients, bw.Arrival(e["index"], e["at"], e["kind"], 0), wf, {})
        except AgentGateError as exc:
            state, error = None, f"{type(exc).__name__}: {exc}"
        finally:
            sampler.inflight -= 1
            progress.advance(task)
        if state is None:
            return report.WorkflowRecord(e["index"], e["kind"], 0, arrived, time.time(), "error", error, ())
        return report.workflow_record(e["index"], e["kind"], 0, arrived, time.time(), state, upstream_of(wf.to_dict()))

    try:
        records = list(await asyncio.gather(*(one(e) for e in trace["workflows"])))
    finally:
        for c in clients:
            await c.close()
    extra = sampler.stop()
    extra["lag"] = lag_check(stack.worker_urls)
    return scaled(records, t0, args.speedup), extra


def lag_check(urls: list[str]) -> dict:
    lags, steps = [], []
    for url in urls:
        text = bw._metrics_text(url) or ""
        series = report.prometheus_series(text)
        lag = next((v for k, v in series.items() if k.startswith("agentgate:sim_step_lag_median_seconds")), None)
        step = next((v for k, v in series.items() if k.startswith("agentgate:sim_step_median_seconds")), None)
        if lag is not None and step:
            lags.append(lag)
            steps.append(step)
    return lag_verdict(lags, steps)


def lag_verdict(lags: list[float], steps: list[float]) -> dict:
    """Valid when the workers' median lag is at most LAG_LIMIT of their median step time (medians of medians)."""
    if not steps:
        return {"valid": False, "why": "no worker reported its step clock"}
    lag, step = statistics.median(lags), statistics.median(steps)
    return {"valid": lag <= LAG_LIMIT * step, "median_lag_ms": round(lag * 1e3, 3), "median_step_ms": round(step * 1e3, 3)}


def after_tool_p99(records: list) -> float:
    vals = [c.first_token - c.ready for r in records if r.status == "finished" for c in r.llm_calls()
            if c.after_tool and c.first_token is not None and c.ready is not None]
    return report._pct(vals, 99)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 2 sim workers, agentgate + round_robin, "
                                                        "5 small workflows at once; outputs in a temp dir")
    p.add_argument("--workers", default=None, help="comma-separated cluster sizes (default 8,32; quick 2)")
    p.add_argument("--gpu", default="h100_sxm")
    p.add_argument("--model", default="Qwen/Qwen3-8B")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--speedup", type=float, default=None, help="simulated seconds per wall second (default 0.25; "
                                                               "quick 1)")
    p.add_argument("--max-running", type=int, default=256, help="--max-running-requests of every sim worker")
    p.add_argument("--configs", default=None, help=f"comma-separated, of {', '.join(c.name for c in CONFIGS)}")
    p.add_argument("--rates", default=None, help="workflow arrivals per simulated second, light to overload")
    p.add_argument("--workflows", type=int, default=None, help="workflows per cell (default 200; quick 5)")
    p.add_argument("--size", default=None, choices=sorted(scale_workload.SIZES), help="workload sizes (default 8b)")
    p.add_argument("--worker-arg", action="append", default=[])
    p.add_argument("--gateway-arg", action="append", default=[])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default=None, help="default docs/ (quick: a temp dir); BENCHMARKS.md is updated "
                                                   "only when it is docs/ and --no-write is not given")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--from-json", default=None, metavar="PATH",
                   help="run nothing: rewrite the plot and the section from a bench_scale.json (and the "
                        "fidelity_sim.json beside it)")
    args = p.parse_args(argv)
    q = args.quick
    args.workers = [int(w) for w in (args.workers or ("2" if q else "8,32")).split(",")]
    args.speedup = args.speedup or (1.0 if q else 0.25)
    names = (args.configs or ("agentgate,round_robin" if q else ",".join(c.name for c in CONFIGS))).split(",")
    known = {c.name: c for c in CONFIGS}
    if any(n not in known for n in names):
        p.error(f"unknown configuration(s): {', '.join(n for n in names if n not in known)}")
    args.configs = [known[n] for n in names]
    args.rates = [float(r) for r in (args.rates or ("inf" if q else "0.5,1,2,4")).split(",")]
    args.workflows = args.workflows or (5 if q else 200)
    args.size = args.size or ("quick" if q else "8b")
    if args.speedup <= 0 or args.tp < 1:
        p.error("--speedup must be positive and --tp at least 1")
    args.out_dir = Path(args.out_dir) if args.out_dir else (None if q else ROOT / "docs")
    args.threads, args.kv_memory_gb, args.trace_dir = 1, 0.0, None  # bench_workflows.Stack reads these
    return args


def row(s, extra: dict, workers: int) -> dict:
    p = extra.get("precision_recall", (None, None))
    return {"config": s.config, "workers": workers, "rate": s.rate, "valid": extra["lag"]["valid"],
            "workflows": s.workflows, "failed": s.failed, "e2e_p50_s": s.e2e_p50_s, "e2e_p99_s": s.e2e_p99_s,
            "ttft_p99_s": s.ttft_p99_s, "ttft_after_tool_p50_s": s.ttft_after_tool_p50_s,
            "ttft_after_tool_p99_s": extra["after_tool_p99"], "hit_rate": s.hit_rate,
            "prefetch_precision": p[0], "prefetch_recall": p[1], "tps_per_gpu": s.tps_per_worker,
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
        lines.append(f"| {r['workers']} | {r['config']} | {report.rate_label(r['rate'])} | {valid} | "
                     f"{r['workflows'] - r['failed']}/{r['workflows']} | {fmt(r['e2e_p50_s'])} / {fmt(r['e2e_p99_s'])} | "
                     f"{fmt(r['ttft_after_tool_p50_s'])} / {fmt(r['ttft_after_tool_p99_s'])} | {fmt(r['ttft_p99_s'])} | "
                     f"{r['hit_rate']:.0%} | {fmt(r['prefetch_precision'])} / {fmt(r['prefetch_recall'])} | "
                     f"{r['tps_per_gpu']:.0f} | {r['tps_per_user']:.1f} | {fmt(cpu, 3)} | "
                     f"{fmt(r.get('rss_kb_per_inflight'), 1)} ({r.get('peak_inflight', '–')}) |")
    return lines


def targets(rows: list[dict]) -> list[str]:
    """The issue's targets, at the highest rate where agentgate's p99 TTFT is <= 1 s (valid cells only)."""
    out = []
    for w in sorted({r["workers"] for r in rows}):
        mine = [r for r in rows if r["workers"] == w and r["valid"]]
        ok = [r for r in mine if r["config"] == "agentgate" and r["ttft_p99_s"] <= 1.0]
        if not ok:
            out.append(f"- {w} workers: no valid rate where agentgate's p99 TTFT is <= 1 s; targets not evaluated.")
            continue
        rate = max(r["rate"] for r in ok)
        at = {r["config"]: r for r in mine if r["rate"] == rate}
        a = at["agentgate"]

        def ratio(cfg: str, key: str, target: float, higher: bool = False) -> str:
            b = at.get(cfg)
            if b is None or not b[key] or not a[key] or math.isnan(b[key]) or math.isnan(a[key]):
                return f"{key} vs {cfg}: not measured (missing cell)"
            x = a[key] / b[key] if higher else b[key] / a[key]
            return f"{key} vs {cfg}: {x:.2f}x ({'met' if x >= target else 'missed'}, target {target}x)"

        out.append(f"- {w} workers at {report.rate_label(rate)} wf/s: " + "; ".join([
            ratio("sglang_router", "e2e_p50_s", 2.0), ratio("kv_aware_radix", "ttft_after_tool_p99_s", 5.0),
            ratio("sglang_router", "tps_per_gpu", 1.5, higher=True)]))
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["workers"] for r in rows})
    fig, axes = plt.subplots(1, len(sizes), figsize=(7 * len(sizes), 5), squeeze=False)
    for ax, w in zip(axes[0], sizes):
        for cfg in dict.fromkeys(r["config"] for r in rows):
            pts = sorted((r for r in rows if r["workers"] == w and r["config"] == cfg), key=lambda r: r["rate"])
            ax.plot([p["tps_per_user"] for p in pts], [p["tps_per_gpu"] for p in pts], marker="o", label=cfg)
        ax.set_title(f"SIMULATED: {w} x H100, Qwen3-8B")
        ax.set_xlabel("output tokens/s per user (simulated)")
        ax.set_ylabel("output tokens/s per GPU (simulated)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    args = parse_args(argv)
    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="bench_scale_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        data = json.loads(Path(args.from_json).read_text())
        return write(data["meta"], data["rows"], out_dir, args)
    log_dir = Path(tempfile.mkdtemp(prefix="bench_scale_logs_"))
    flags = bw.worker_flags()
    traces = {rate: scale_workload.generate(args.workflows, rate, args.seed, args.size) for rate in args.rates}
    suffix = "_quick" if args.quick else ""
    (out_dir / f"scale_trace{suffix}.json").write_text(json.dumps(traces[args.rates[-1]]))
    rows: list[dict] = []
    console = Console(stderr=True)
    cells = [(w, c, r) for w in args.workers for c in args.configs for r in args.rates]
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        overall = progress.add_task("cells", total=len(cells))
        for workers, config, rate in cells:
            cell_args = argparse.Namespace(**{**vars(args), "workers": workers})
            task = progress.add_task(f"{workers} x {config.name} @ {report.rate_label(rate)}", total=args.workflows)
            with SimStack(cell_args, config, flags, log_dir) as stack:
                records, extra = asyncio.run(run_cell(traces[rate], stack, cell_args, progress, task))
                cpu = stack.cpu()
            summary = report.summarize(config.name, rate, records, workers, None, None, None, cpu)
            extra = {"lag": extra.pop("lag"), "gateway": extra, "after_tool_p99": after_tool_p99(records),
                     "precision_recall": precision_recall(records)}
            rows.append(row(summary, extra, workers))
            progress.advance(overall)
            (out_dir / f"bench_scale{suffix}.partial.json").write_text(json.dumps(rows, indent=1))  # so far
    meta = {"command": " ".join(["scripts/bench_scale.py", *(argv if argv is not None else sys.argv[1:])]).strip(),
            "when": time.strftime("%Y-%m-%d"), "gpu": args.gpu, "model": args.model, "tp": args.tp,
            "speedup": args.speedup, "workflows": args.workflows, "size": args.size, "seed": args.seed}
    meta["quick"] = args.quick
    (out_dir / f"bench_scale{suffix}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    code = write(meta, rows, out_dir, args)
    console.print(f"results in {out_dir}")
    return code


def write(meta: dict, rows: list[dict], out_dir: Path, args) -> int:
    """The plot, the markdown section (and BENCHMARKS.md's, for a full run into docs/)."""
    suffix = "_quick" if meta.get("quick") else ""
    plot(rows, out_dir / f"pareto_scale{suffix}.png")
    text = section(meta, rows, out_dir / f"pareto_scale{suffix}.png")
    (out_dir / f"bench_scale{suffix}.md").write_text(text)
    in_docs = out_dir.resolve() == (ROOT / "docs").resolve()
    if in_docs and not meta.get("quick") and not args.no_write:
        update_benchmarks_md(SECTION, text)
    print(text)
    return 0 if all(r["failed"] == 0 for r in rows) else 1


def section(meta: dict, rows: list[dict], plot_path: Path) -> str:
    image = f"docs/{plot_path.name}" if plot_path.parent.resolve() == (ROOT / "docs").resolve() else str(plot_path)
    lines = [SECTION, "", f"**Everything here is simulated**: sim workers (`--backend sim`, {meta['gpu']}, {meta['model']}, "
             f"tp{meta['tp']}; step times from aiconfigurator-core), simulated time at {meta['speedup']}x real time, "
             f"converted back to simulated seconds. `{meta['command']}` ({meta['when']}), {meta['workflows']} workflows "
             f"per cell ({meta['size']} sizes, seed {meta['seed']}). A cell whose median step lag exceeds 5% of the "
             "median step time is INVALID.", "", *table(rows), "", f"![simulated Pareto]({image})", "",
             "Targets (at the highest rate where agentgate's p99 TTFT <= 1 s):", "", *targets(rows), "",
             *fidelity_lines(plot_path.parent / "fidelity_sim.json")]
    return "\n".join(lines)


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


if __name__ == "__main__":
    sys.exit(main())
