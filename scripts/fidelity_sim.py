"""Fidelity of the simulated worker: one recorded workflow trace replayed against a real CPU worker
and against a sim worker whose step times come from a table measured on the same engine.

The trace (scripts/scale_workload.py, CPU-sized) is written first and both runs replay it: the same
workflows, arrivals, tool latencies and output lengths (max_tokens = min_tokens), each workflow's
client calling the worker node by node (agentgate.sequential). The sim worker gets the real worker's
KV pool size (--kv-blocks) and the CPU engine's step sizes (--step-defaults cpu). Reported: per-call
TTFT p50 and makespan of both, and their difference (the target: within 15%).

  .venv/bin/python -m engine.sim.profile --out docs/cpu_step_table.json       # measure the table first
  .venv/bin/python scripts/fidelity_sim.py --table docs/cpu_step_table.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "agents")]

from scripts import bench_workflows as bw  # noqa: E402
from scripts import bench_workflows_report as report  # noqa: E402
from scripts import scale_workload  # noqa: E402

TOLERANCE = 0.15


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table", required=True, help="the timing table (agentgate profile) the sim worker uses")
    p.add_argument("--workflows", type=int, default=10)
    p.add_argument("--rate", type=float, default=0.5, help="workflow arrivals per second")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--kv-memory-gb", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the trace and both runs' results here (JSON)")
    return p.parse_args(argv)


async def replay(trace: dict, stack, progress, task) -> tuple[list, float]:
    from agentgate.async_client import AsyncClient
    from agentgate.sequential import run_sequential
    from agentgate.tools import upstream_of

    url = stack.worker_urls[0]
    client = AsyncClient(url, timeout=900.0)
    t0 = time.time()

    async def one(e: dict):
        await asyncio.sleep(max(t0 + e["at"] - time.time(), 0.0))
        wf = scale_workload.build(trace, e)
        state = await run_sequential(wf, url, client=client)
        progress.advance(task)
        return report.workflow_record(e["index"], e["kind"], 0, t0 + e["at"], time.time(), state,
                                      upstream_of(wf.to_dict()))

    try:
        records = await asyncio.gather(*(one(e) for e in trace["workflows"]))
    finally:
        await client.close()
    return list(records), max(r.end for r in records) - t0


def stats(records: list, makespan: float) -> dict:
    ttfts = [n.first_token - n.started for r in records for n in r.nodes
             if n.kind == "llm" and n.first_token is not None and n.started is not None]
    return {"ttft_p50_s": round(statistics.median(ttfts), 3), "makespan_s": round(makespan, 2), "calls": len(ttfts),
            "failed": sum(r.status != "finished" for r in records)}


def main(argv=None) -> int:
    from rich.progress import Progress

    args = parse_args(argv)
    trace = scale_workload.generate(args.workflows, args.rate, args.seed, "cpu")
    log_dir = Path(tempfile.mkdtemp(prefix="fidelity_"))
    results = {}
    common = argparse.Namespace(workers=1, threads=args.threads, kv_memory_gb=args.kv_memory_gb, trace_dir=None,
                                gateway_arg=[], worker_arg=[])
    flags = bw.worker_flags()
    sequential = next(c for c in bw.CONFIGS if c.name == "sequential")
    with Progress() as progress:
        for name in ("real", "sim"):
            run_args = argparse.Namespace(**vars(common))
            if name == "sim":
                run_args.worker_arg = ["--backend", "sim", "--timing-table", args.table, "--step-defaults", "cpu",
                                       "--kv-blocks", str(results["real"]["kv_tokens"] // 16)]
            task = progress.add_task(f"{name} worker", total=len(trace["workflows"]))
            with bw.Stack(run_args, sequential, flags, log_dir) as stack:
                info = bw._get(stack.worker_urls[0] + "/get_server_info")
                records, makespan = asyncio.run(replay(trace, stack, progress, task))
            results[name] = {**stats(records, makespan), "kind": info.get("kind"),
                             "kv_tokens": info["max_total_num_tokens"]}
            if args.out:  # what is measured so far, in case the next run fails
                Path(args.out + ".partial").write_text(json.dumps(results, indent=1))
    real, sim = results["real"], results["sim"]
    diff = {k: round(sim[k] / real[k] - 1, 3) for k in ("ttft_p50_s", "makespan_s")}
    verdict = all(abs(v) <= TOLERANCE for v in diff.values())
    out = {"trace": trace, "results": results, "relative_difference": diff, "within_15_percent": verdict,
           "table": json.loads(Path(args.table).read_text())["source"]}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"real: TTFT p50 {real['ttft_p50_s']} s, makespan {real['makespan_s']} s ({real['calls']} calls)")
    print(f"sim:  TTFT p50 {sim['ttft_p50_s']} s, makespan {sim['makespan_s']} s ({sim['calls']} calls)")
    print(f"sim / real - 1: TTFT p50 {diff['ttft_p50_s']:+.1%}, makespan {diff['makespan_s']:+.1%} -> "
          f"{'within' if verdict else 'NOT within'} 15%")
    return 0 if real["failed"] == sim["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
