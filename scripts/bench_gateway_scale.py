"""The gateway's own cost per in-flight workflow: RSS and CPU while it holds N workflows at once.

One fresh stack per N: a Redis, one `agentgate sim-cluster` process (--workers sim GPUs, Qwen3-8B on
H100 by default, L1 and L2 but no shared L3 store: nothing here reads it, and its files would take
minutes to delete) and the gateway in full (bench_scale's "agentgate" configuration). N workflows of
the scale workload (scripts/scale_workload.py: ReAct, planner/executors, code edits, chat; map-reduce
is left out, it has no tool to wait on) are submitted at once through the SDK (AsyncClient.run, one
SSE event stream each, as agents run them; --follow none: submitted only). Their tools never answer,
so every workflow runs the LLM calls before its first tool and then waits, in flight, on the client.

Measured against the same gateway's idle state in the same run (after a warm-up of --warmup whole
workflows, so one-time costs such as the tokenizer and the first connections are paid before):
- RSS delta per in-flight workflow, (RSS holding N - RSS idle) / N;
- gateway CPU while holding (cores: CPU-seconds / wall-seconds over --hold-s), and CPU-seconds per
  workflow from submission to all waiting;
- with --tracemalloc, the gateway's Python allocations diffed (holding - idle), grouped by the
  first frame in this repository, and what stayed allocated after every workflow ended.

Then every workflow is cancelled (DELETE) and the gateway must report none running.

  .venv/bin/python scripts/bench_gateway_scale.py --quick                  # smoke run (the suite runs it)
  .venv/bin/python scripts/bench_gateway_scale.py --counts 100,500,2000    # the issue's holds
  .venv/bin/python scripts/bench_gateway_scale.py --counts 2000 --tracemalloc --no-write
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "agents")]

from scripts import bench_scale  # noqa: E402
from scripts import bench_workflows as bw  # noqa: E402
from scripts import bench_workflows_report as report  # noqa: E402
from scripts import scale_workload  # noqa: E402
from scripts.benchlib import update_benchmarks_md  # noqa: E402

SECTION = "## Gateway at scale: RSS and CPU per in-flight workflow"
KINDS = ("react", "planner", "code_edit", "chat")  # each waits on a tool; map_reduce has none
PER_CLIENT = 50  # workflows per SDK client (an aiohttp session opens at most 100 connections)
TARGET_KB = 50.0
SSE_UNBOUNDED = ("--max-sse", "0", "--tenant-max-sse", "0")  # one stream per held workflow (--gateway-arg overrides)


class GatewayStack(bench_scale.SimStack):
    """bench_scale's stack (sim-cluster workers, Redis) with the gateway optionally under tracemalloc."""

    def start(self) -> None:
        from common.launch import wait_healthy
        from common.redis_server import RedisServer, free_port
        from engine.model.prepare import default_model_dir

        self.redis = RedisServer().start()
        self.start_workers(["--redis-url", self.redis.url, "--l3", "none"])  # no shared store: no GBs to delete
        port = free_port()
        self.gateway_url = f"http://127.0.0.1:{port}"
        self.snapshots = self.tmp / "gateway-heap"
        head = ([sys.executable, "-m", "scripts.traced_gateway", str(self.snapshots)] if self.args.tracemalloc
                else [sys.executable, "-m", "gateway.main"])
        self.gateway = self._spawn([*head, "--port", str(port), "--redis-url", self.redis.url, "--worker-urls",
                                    *self.worker_urls, "--tokenizer-path", str(default_model_dir()),
                                    "--log-level", "warning", *self.config.gateway, *SSE_UNBOUNDED,
                                    *self.args.gateway_arg],
                                   f"gateway-{port}")
        wait_healthy(self.gateway_url, self.gateway, timeout=120)

    def snapshot(self) -> Path | None:
        """The gateway's tracemalloc snapshot now (None without --tracemalloc)."""
        if not self.args.tracemalloc:
            return None
        taken = len(list(self.tmp.glob("gateway-heap.*.pickle")))
        os.kill(self.gateway.pid, signal.SIGUSR2)
        path = Path(f"{self.snapshots}.{taken}.pickle")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # written in place: wait until it loads
            if path.exists():
                time.sleep(1.0)
                return path
            time.sleep(0.2)
        raise RuntimeError("the gateway wrote no tracemalloc snapshot")


def first_wave(payload: dict) -> int:
    """The workflow's LLM calls that run before any tool answers: none of their upstream nodes is external."""
    from agentgate.tools import upstream_of

    kinds = {n["id"]: n.get("type", "llm") for n in payload["nodes"]}
    ups = upstream_of(payload)
    blocked: dict[str, bool] = {}

    def waits(node: str) -> bool:
        if node not in blocked:
            blocked[node] = kinds[node] == "external" or any(waits(u) for u in ups.get(node, ()))
        return blocked[node]

    return sum(kinds[n] == "llm" and not waits(n) for n in kinds)


def finished_nodes(url: str) -> float:
    series = report.prometheus_series(bw._metrics_text(url) or "")
    return sum(v for k, v in series.items() if k.startswith("agentgate_gateway_nodes_total")
               and 'status="finished"' in k)


def running_workflows(url: str) -> float | None:
    series = report.prometheus_series(bw._metrics_text(url) or "")
    return next((v for k, v in series.items() if k.startswith("agentgate_gateway_workflows_running")), None)


class Gauge:
    """The gateway process's RSS and CPU-seconds."""

    def __init__(self, pid: int):
        import psutil

        self.proc = psutil.Process(pid)

    def rss(self) -> int:
        return self.proc.memory_info().rss

    def cpu(self) -> float:
        t = self.proc.cpu_times()
        return t.user + t.system

    def window(self, seconds: float) -> dict:
        """Median RSS and cores used over `seconds` (sampled every 0.5 s)."""
        c0, t0, rss = self.cpu(), time.monotonic(), []
        while time.monotonic() - t0 < seconds:
            rss.append(self.rss())
            time.sleep(0.5)
        return {"rss": statistics.median(rss), "cores": (self.cpu() - c0) / (time.monotonic() - t0)}


async def hold(stack: GatewayStack, count: int, args, progress, task) -> dict:
    """Warm up, measure idle, put `count` workflows in flight, measure, cancel them all, measure again."""
    from agentgate.async_client import AsyncClient
    from agentgate.errors import AgentGateError

    trace = scale_workload.generate(count + args.warmup, float("inf"), args.seed, args.size, KINDS)
    entries = trace["workflows"]
    gauge, url = Gauge(stack.gateway.pid), stack.gateway_url
    clients = [AsyncClient(url, timeout=3600.0) for _ in range(max(1, -(-count // PER_CLIENT)))]
    loop = asyncio.get_running_loop()
    try:
        await asyncio.gather(*(clients[0].run(scale_workload.build(trace, e, time_scale=0.0))  # whole workflows,
                               for e in entries[:args.warmup]))  # tools answering at once
        await asyncio.sleep(2.0)
        snap_idle = await loop.run_in_executor(None, stack.snapshot)
        idle = await loop.run_in_executor(None, gauge.window, args.hold_s)
        base_nodes, cpu0, t0 = finished_nodes(url), gauge.cpu(), time.monotonic()
        workflows = [scale_workload.build(trace, e) for e in entries[args.warmup:]]  # nobody runs their tools
        ids: list[str] = []
        sem = asyncio.Semaphore(args.submit_concurrency)

        async def one(i: int, wf) -> None:
            client = clients[i // PER_CLIENT]
            async with sem:
                wf_id = await client.submit(wf)
                ids.append(wf_id)
                progress.advance(task)
            if args.follow == "sse":  # the agent's event stream, open until the workflow ends
                try:
                    async for _ in client.events(wf_id):
                        pass
                except AgentGateError:
                    pass

        # Two steps, half then all: the second half's cost is the marginal one, free of what the first
        # workflows paid once (connection buffers grown, caches filled).
        runs, half, expect = [], count // 2, 0
        steps = {}
        for name, lo, hi in (("half", 0, half), ("full", half, count)):
            expect += sum(first_wave(wf.to_dict()) for wf in workflows[lo:hi])
            runs += [asyncio.create_task(one(i, workflows[i])) for i in range(lo, hi)]
            deadline = time.monotonic() + args.settle_timeout
            while finished_nodes(url) - base_nodes < expect and time.monotonic() < deadline:
                await asyncio.sleep(1.0)
            reached = finished_nodes(url) - base_nodes
            if name == "full":
                ramp_cpu, ramp_s = gauge.cpu() - cpu0, time.monotonic() - t0
            await asyncio.sleep(1.0)
            inflight = running_workflows(url)
            steps[name] = {**await loop.run_in_executor(None, gauge.window, args.hold_s),
                           "snap": await loop.run_in_executor(None, stack.snapshot)}
        holding, n2 = steps["full"], count - half
        await asyncio.gather(*(clients[0].cancel(w) for w in ids), return_exceptions=True)
        await asyncio.wait_for(asyncio.gather(*runs, return_exceptions=True), timeout=args.settle_timeout)
        await asyncio.sleep(2.0)
        after_running = running_workflows(url)
        rss_after = gauge.rss()
        snap_after = await loop.run_in_executor(None, stack.snapshot)
    finally:
        for c in clients:
            await c.close()
    out = {"count": count, "in_flight": inflight, "first_wave_calls": expect, "first_wave_done": reached,
           "idle_rss_mb": round(idle["rss"] / 2**20, 1), "hold_rss_mb": round(holding["rss"] / 2**20, 1),
           "rss_kb_per_workflow": round((holding["rss"] - idle["rss"]) / 1024 / count, 1),
           "rss_kb_marginal": round((holding["rss"] - steps["half"]["rss"]) / 1024 / n2, 1) if n2 else None,
           "idle_cores": round(idle["cores"], 3), "hold_cores": round(holding["cores"], 3),
           "ramp_cpu_s_per_workflow": round(ramp_cpu / count, 4), "ramp_s": round(ramp_s, 1),
           "after_end_running": after_running, "after_end_rss_mb": round(rss_after / 2**20, 1)}
    if snap_idle is not None:
        out["heap"] = heap_diff(snap_idle, holding["snap"], count, args.top)
        out["heap_marginal"] = heap_diff(steps["half"]["snap"], holding["snap"], n2, args.top) if n2 else None
        out["heap_after_end"] = heap_diff(snap_idle, snap_after, count, args.top)
    return out


def heap_diff(before: Path, after: Path, count: int, top: int) -> dict:
    """Python allocations grown from `before` to `after`, per workflow, by the first frame in this
    repository (else the allocating line)."""
    import tracemalloc

    a, b = tracemalloc.Snapshot.load(str(before)), tracemalloc.Snapshot.load(str(after))
    filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
    a, b = a.filter_traces(filters), b.filter_traces(filters)
    grown: dict[str, int] = {}
    for stat in b.compare_to(a, "traceback"):
        where = _site(stat.traceback)
        grown[where] = grown.get(where, 0) + stat.size_diff
    total = sum(grown.values())
    rows = sorted(grown.items(), key=lambda kv: -kv[1])[:top]
    return {"total_kb_per_workflow": round(total / 1024 / count, 2),
            "top": [{"site": s, "kb_per_workflow": round(v / 1024 / count, 2)} for s, v in rows]}


def _site(tb) -> str:
    root = str(ROOT) + os.sep
    for frame in reversed(tb):  # the most recent frame in this repository
        if frame.filename.startswith(root) and "/.venv/" not in frame.filename:
            return f"{frame.filename[len(root):]}:{frame.lineno}"
    return f"{tb[-1].filename.rsplit(os.sep, 2)[-1]}:{tb[-1].lineno}" if len(tb) else "?"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 2 sim workers, 20 held workflows of "
                                                        "the small sizes, with --tracemalloc; outputs in a temp dir")
    p.add_argument("--counts", default=None, help="workflows held at once, one run each (default 100,500,2000)")
    p.add_argument("--workers", type=int, default=None, help="sim workers (default 8; quick 2)")
    p.add_argument("--gpu", default="h100_sxm")
    p.add_argument("--model", default="Qwen/Qwen3-8B")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--speedup", type=float, default=1.0, help="simulated seconds per wall second")
    p.add_argument("--max-running", type=int, default=256, help="--max-running-requests of every sim worker")
    p.add_argument("--size", default=None, choices=sorted(scale_workload.SIZES), help="workload sizes (default 8b)")
    p.add_argument("--follow", default="sse", choices=("sse", "none"),
                   help="sse: each workflow's client holds its event stream open (as the SDK does); none: submit only")
    p.add_argument("--warmup", type=int, default=None, help="whole workflows run before idle is measured (default 10)")
    p.add_argument("--hold-s", type=float, default=None, help="seconds measured idle and holding (default 10)")
    p.add_argument("--submit-concurrency", type=int, default=64, help="submissions in flight at once")
    p.add_argument("--settle-timeout", type=float, default=900.0,
                   help="longest wait for the workflows to reach their tools, and to end once cancelled")
    p.add_argument("--tracemalloc", action="store_true", help="run the gateway under tracemalloc and diff its heap")
    p.add_argument("--top", type=int, default=12, help="allocation sites listed per heap diff")
    bench_scale.add_run_args(p)
    args = p.parse_args(argv)
    q = args.quick
    args.counts = [int(c) for c in (args.counts or ("20" if q else "100,500,2000")).split(",")]
    args.workers = args.workers or (2 if q else 8)
    args.size = args.size or ("quick" if q else "8b")
    args.warmup = args.warmup if args.warmup is not None else (2 if q else 10)
    args.hold_s = args.hold_s or (2.0 if q else 10.0)
    args.tracemalloc = args.tracemalloc or q
    if min(args.counts) < 1 or args.speedup <= 0:
        p.error("--counts must be positive and --speedup above 0")
    args.out_dir = Path(args.out_dir) if args.out_dir else (None if q else ROOT / "docs")
    args.threads, args.kv_memory_gb, args.trace_dir = 1, 0.0, None  # bench_workflows.Stack reads these
    return args


def main(argv=None) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    args = parse_args(argv)
    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="bench_gateway_scale_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    log_dir = Path(tempfile.mkdtemp(prefix="bench_gateway_scale_logs_"))
    config = bench_scale.CONFIGS[0]  # agentgate in full
    rows = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True)) as progress:
        for count in args.counts:
            task = progress.add_task(f"{count} workflows submitted", total=count)
            with GatewayStack(args, config, bw.worker_flags(), log_dir) as stack:
                rows.append(asyncio.run(hold(stack, count, args, progress, task)))
                (out_dir / "bench_gateway_scale.partial.json").write_text(json.dumps(rows, indent=1))  # so far
    meta = {"command": " ".join(["scripts/bench_gateway_scale.py", *(argv if argv is not None else sys.argv[1:])]),
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "workers": args.workers, "gpu": args.gpu,
            "model": args.model, "size": args.size, "follow": args.follow, "hold_s": args.hold_s,
            "quick": args.quick, "load_average": [round(x, 2) for x in os.getloadavg()]}
    suffix = "_quick" if args.quick else ""
    (out_dir / f"bench_gateway_scale{suffix}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    text = section(meta, rows)
    (out_dir / f"bench_gateway_scale{suffix}.md").write_text(text)
    if out_dir.resolve() == (ROOT / "docs").resolve() and not args.quick and not args.no_write:
        update_benchmarks_md(SECTION, text)
    print(text)
    print(f"results in {out_dir}, logs in {log_dir}", file=sys.stderr)
    ok = all(r["in_flight"] == r["count"] and r["after_end_running"] == 0 for r in rows)
    return 0 if ok else 1


def section(meta: dict, rows: list[dict]) -> str:
    lines = [SECTION, "", f"`{meta['command']}` ({meta['when']}, load average {meta['load_average']}): the gateway "
             f"in full in front of {meta['workers']} sim workers ({meta['gpu']}, {meta['model']}); scale-workload "
             f"workflows ({meta['size']} sizes) held at their first tool, event streams: {meta['follow']}. RSS and "
             f"cores are medians / means over {meta['hold_s']:g} s, against the same gateway idle after a warm-up.",
             "", "| held | in flight | idle RSS (MB) | holding RSS (MB) | RSS per workflow (KB): vs idle / marginal | target "
             "| cores idle / holding | CPU s per workflow to reach its tool | heap per workflow (KB): vs idle / "
             "marginal | running after cancel |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        heap = (f"{r['heap']['total_kb_per_workflow']} / {(r['heap_marginal'] or {}).get('total_kb_per_workflow', '–')}"
                if "heap" in r else "–")
        met = "met" if max(r["rss_kb_per_workflow"], r["rss_kb_marginal"] or 0) <= TARGET_KB and r["hold_cores"] <= 1.0 else "missed"
        lines.append(f"| {r['count']} | {r['in_flight']} | {r['idle_rss_mb']} | {r['hold_rss_mb']} | "
                     f"{r['rss_kb_per_workflow']} / {r['rss_kb_marginal']} | {met} (<= {TARGET_KB:g} KB, <= 1 core) | {r['idle_cores']} / "
                     f"{r['hold_cores']} | {r['ramp_cpu_s_per_workflow']} | {heap} | {r['after_end_running']} |")
    big = max(rows, key=lambda r: r["count"])
    if big.get("heap_marginal"):
        lines += ["", f"Where the heap grew from {big['count'] // 2} to {big['count']} held (KB per workflow, by the "
                  "last frame in this repository):", "", "| site | KB / workflow |", "|---|---|"]
        lines += [f"| `{t['site']}` | {t['kb_per_workflow']} |" for t in big["heap_marginal"]["top"]]
        after = big["heap_after_end"]
        lines += ["", f"Left allocated after all {big['count']} were cancelled: {after['total_kb_per_workflow']} KB "
                  "per workflow, at " + ", ".join(f"`{t['site']}` {t['kb_per_workflow']}" for t in after["top"][:6])
                  + " (the gateway's bounded caches and its KV index of the workers' blocks)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
