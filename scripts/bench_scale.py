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
from scripts import bench_scale_sweep as sweep  # noqa: E402
from scripts.bench_scale_report import (SECTION, after_tool_p99, heading, precision_recall, row,  # noqa: E402, F401
                                        section, variant)
from scripts.benchlib import update_benchmarks_md  # noqa: E402

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


def add_run_args(p: argparse.ArgumentParser) -> None:
    """The flags bench_scale shares with bench_gateway_scale: extra process flags, seed, outputs."""
    p.add_argument("--worker-arg", action="append", default=[])
    p.add_argument("--gateway-arg", action="append", default=[])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default=None, help="default docs/ (quick: a temp dir); BENCHMARKS.md is updated "
                                                   "only when it is docs/ and --no-write is not given")
    p.add_argument("--no-write", action="store_true")


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
    p.add_argument("--kv-oversubscribe", type=float, default=0.0, metavar="X",
                   help="size every worker's L1 (--kv-blocks) so the workload's working set is X times the "
                        "cluster's L1 capacity (never below two of its largest calls); 0: the GPU's own memory")
    p.add_argument("--kv-floor-calls", type=int, default=2, metavar="N",
                   help="--kv-oversubscribe never sizes L1 below N of the trace's largest calls (1: a worker holds "
                        "one at a time, which lets a few dozen workflows oversubscribe 8 workers 3x, but a worker "
                        "that small was seen to stall with two waiting requests holding its blocks)")
    p.add_argument("--max-running", type=int, default=256, help="--max-running-requests of every sim worker")
    p.add_argument("--configs", default=None, help=f"comma-separated, of {', '.join(c.name for c in CONFIGS)}")
    p.add_argument("--rates", default=None, help="workflow arrivals per simulated second, light to overload")
    p.add_argument("--sweep-configs", default="agentgate,sglang_router",
                   help="the configurations run at every rate; the others run once, at the rate picked from the "
                        "sweep (the highest where agentgate's p99 TTFT <= 1 s)")
    p.add_argument("--every-rate", action="store_true", help="run every configuration at every rate")
    p.add_argument("--tp4-row", action="store_true",
                   help="add the Llama-3.1-70B TP4 row: --tp4-configs on --tp4-workers sim workers of 4 GPUs each, "
                        "at the rate picked for the smallest cluster size")
    p.add_argument("--tp4-workers", type=int, default=8)
    p.add_argument("--dry-run", action="store_true", help="run nothing: print the cells and the wall time they take "
                                                          "at least (bench_scale_sweep.cell_wall_s)")
    p.add_argument("--tp4-configs", default="agentgate")
    p.add_argument("--workflows", type=int, default=None, help="workflows per cell (default 200; quick 5)")
    p.add_argument("--size", default=None, choices=sorted(scale_workload.SIZES), help="workload sizes (default 8b)")
    add_run_args(p)
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
    extra = [n for n in (args.sweep_configs + "," + args.tp4_configs).split(",") if n and n not in known]
    if extra:
        p.error(f"unknown configuration(s): {', '.join(extra)}")
    args.sweep_configs = [n for n in args.sweep_configs.split(",") if n]
    args.tp4_configs = [known[n] for n in args.tp4_configs.split(",") if n]
    args.rates = [float(r) for r in (args.rates or ("inf" if q else "0.5,1,2,4")).split(",")]
    args.workflows = args.workflows or (5 if q else 200)
    args.size = args.size or ("quick" if q else "8b")
    if args.speedup <= 0 or args.tp < 1 or args.kv_oversubscribe < 0 or args.kv_floor_calls < 1:
        p.error("--speedup must be positive, --tp and --kv-floor-calls at least 1 and --kv-oversubscribe at least 0")
    args.out_dir = Path(args.out_dir) if args.out_dir else (None if q else ROOT / "docs")
    args.threads, args.kv_memory_gb, args.trace_dir = 1, 0.0, None  # bench_workflows.Stack reads these
    return args


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
    suffix = ("_quick" if args.quick else "") + variant(args.model, args.tp)
    kv, blocks = {}, {}
    if args.kv_oversubscribe:  # per cluster size, one for every rate: the largest working set of their traces
        blocks = {w: max((scale_workload.kv_blocks_for(t, args.kv_oversubscribe, w, floor_calls=args.kv_floor_calls)
                          for t in traces.values()), key=lambda bf: bf[0]) for w in args.workers}
        if args.tp4_row and args.tp4_workers not in blocks:
            blocks[args.tp4_workers] = max((scale_workload.kv_blocks_for(
                t, args.kv_oversubscribe, args.tp4_workers, floor_calls=args.kv_floor_calls)
                for t in traces.values()), key=lambda bf: bf[0])
        kv = {"kv_oversubscribe": args.kv_oversubscribe, "kv_floor_calls": args.kv_floor_calls,
              "kv_blocks": {str(w): b for w, (b, _) in blocks.items()},
              "kv_oversubscribed": {str(w): round(f, 2) for w, (_, f) in blocks.items()}}
        suffix += f"_kv{args.kv_oversubscribe:g}x"
    if args.dry_run:
        return dry_run(args, traces, kv)
    (out_dir / f"scale_trace{suffix}.json").write_text(json.dumps(traces[args.rates[-1]]))
    rows: list[dict] = []
    picked: dict[int, tuple[float, bool]] = {}
    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        overall = progress.add_task("cells", total=count_cells(args))

        def cell(workers: int, config, rate: float, model: str = args.model, tp: int = args.tp,
                 extra_row: bool = False) -> None:
            sized = ["--kv-blocks", str(blocks[workers][0])] if blocks else []
            cell_args = argparse.Namespace(**{**vars(args), "workers": workers, "model": model, "tp": tp,
                                              "worker_arg": [*args.worker_arg, *sized]})
            label = f"{workers} x {model.rsplit('/', 1)[-1]} tp{tp}"
            task = progress.add_task(f"{label} {config.name} @ {report.rate_label(rate)}", total=args.workflows)
            with SimStack(cell_args, config, flags, log_dir) as stack:
                records, extra = asyncio.run(run_cell(traces[rate], stack, cell_args, progress, task))
                cpu = stack.cpu()
            summary = report.summarize(config.name, rate, records, workers, None, None, None, cpu)
            extra = {"lag": extra.pop("lag"), "gateway": extra, "after_tool_p99": after_tool_p99(records),
                     "precision_recall": precision_recall(records)}
            rows.append(row(summary, extra, workers, tp, model, extra_row))
            progress.advance(overall)
            (out_dir / f"bench_scale{suffix}.partial.json").write_text(json.dumps(rows, indent=1))  # so far

        for workers in args.workers:
            swept = args.configs if args.every_rate else [c for c in args.configs if c.name in args.sweep_configs]
            for rate in args.rates:
                for config in swept:
                    cell(workers, config, rate)
            picked[workers] = sweep.picked_rate(rows, workers, args.rates)
            for config in [c for c in args.configs if c not in swept]:
                cell(workers, config, picked[workers][0])
        if args.tp4_row:
            rate = picked[min(args.workers)][0]
            for config in args.tp4_configs:
                cell(args.tp4_workers, config, rate, "meta-llama/Llama-3.1-70B", 4, extra_row=True)
    meta = {"command": " ".join(["scripts/bench_scale.py", *(argv if argv is not None else sys.argv[1:])]).strip(),
            "when": time.strftime("%Y-%m-%d"), "gpu": args.gpu, "model": args.model, "tp": args.tp,
            "speedup": args.speedup, "workflows": args.workflows, "size": args.size, "seed": args.seed}
    meta.update(quick=args.quick, suffix=suffix, **kv,
                picked_rate={str(w): {"rate": r, "ttft_ok": ok} for w, (r, ok) in picked.items()})
    (out_dir / f"bench_scale{suffix}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    code = write(meta, rows, out_dir, args)
    console.print(f"results in {out_dir}")
    return code


def dry_run(args, traces: dict, kv: dict) -> int:
    """The cells a run takes (the not-swept ones at the highest rate: the picked one is known only after the
    sweep) and the wall time they take at least."""
    per_size = [(c.name, r) for r in args.rates for c in args.configs if args.every_rate or c.name in args.sweep_configs]
    rest = [(c.name, max(args.rates)) for c in args.configs if not (args.every_rate or c.name in args.sweep_configs)]
    cells = [(w, *c) for w in args.workers for c in per_size + rest]
    cells += [(args.tp4_workers, f"{c.name} (Llama-3.1-70B TP4)", max(args.rates)) for c in args.tp4_configs
              if args.tp4_row]
    total = 0.0
    for w, name, rate in cells:
        s = sweep.cell_wall_s(traces[rate], args.speedup)
        total += s
        print(f"{w:>3} workers  {name:<36} {report.rate_label(rate):>9}  >= {s / 60:5.1f} min")
    print(f"{len(cells)} cells, at least {total / 60:.0f} min of wall time at --speedup {args.speedup:g}"
          + (f"; KV: {kv['kv_oversubscribed']}x oversubscribed" if kv else ""))
    return 0


def count_cells(args) -> int:
    """How many cells the run takes (the progress bar's total)."""
    swept = len(args.configs) if args.every_rate else sum(c.name in args.sweep_configs for c in args.configs)
    per_size = swept * len(args.rates) + len(args.configs) - swept
    return per_size * len(args.workers) + (len(args.tp4_configs) if args.tp4_row else 0)


def write(meta: dict, rows: list[dict], out_dir: Path, args) -> int:
    """The plot, the markdown section (and BENCHMARKS.md's, for a full run into docs/)."""
    suffix = meta.get("suffix", "_quick" if meta.get("quick") else "")
    sweep.plot(rows, out_dir / f"pareto_scale{suffix}.png", meta)
    swept = sweep.plot_sweep(rows, out_dir / f"sweep_scale{suffix}.png", meta)
    text = section(meta, rows, out_dir / f"pareto_scale{suffix}.png",
                   out_dir / f"sweep_scale{suffix}.png" if swept else None)
    (out_dir / f"bench_scale{suffix}.md").write_text(text)
    in_docs = out_dir.resolve() == (ROOT / "docs").resolve()
    if in_docs and not meta.get("quick") and not args.no_write:
        update_benchmarks_md(heading(meta), text)
    print(text)
    return 0 if all(r["failed"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
