"""Faults survived: N workflows (3–6 nodes each) at concurrency C on real processes on loopback (a durable
Redis, two gateway replicas, fast stand-in workers and one real engine worker: scripts/chaos_cluster.py),
once without a fault and once per fault injected mid-run. Clients submit to either gateway (the other when
one does not answer), poll their workflows to the end, then replay each workflow's event stream.

Per row: completed; failed with a stated reason; lost (accepted, then never ended, gone, or failed without
a reason: must be 0); finished nodes re-run (a node_started after that node's successful node_finished:
must be 0); recovery (seconds from the fault's start until a one-node workflow submitted when the fault
ended has finished: service restored end to end, queueing included).

    python -m scripts.bench_chaos                 # the full table, written to BENCHMARKS.md
    python -m scripts.bench_chaos --quick --no-write   # a small, fast run (the suite's)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
from rich.progress import Progress

from scripts.benchlib import update_benchmarks_md
from scripts.chaos_cluster import Cluster

HEADING = "## Faults survived"
POLL_S = 0.25


@dataclass
class Row:
    fault: str
    accepted: int = 0
    completed: int = 0
    failed: int = 0
    lost: int = 0
    reruns: int = 0
    recovery_s: float | None = None
    in_flight: int = 0  # accepted workflows not ended when the fault was injected
    reasons: list[str] = field(default_factory=list)
    notes: str = ""


def workflow(rng: random.Random, i: int, max_tokens: int) -> dict:
    """a → k middle nodes → z, k in 1..4: 3 to 6 nodes, each prompt built from its inputs' outputs."""
    k = rng.randint(1, 4)
    mids = [f"m{j}" for j in range(k)]
    nodes = [{"id": "a", "max_tokens": max_tokens, "messages": [{"role": "user", "content": f"Task {i}: plan."}]}]
    nodes += [{"id": m, "max_tokens": max_tokens, "messages": [{"role": "user", "content": f"Step {m}: {{{{a}}}}"}]}
              for m in mids]
    nodes.append({"id": "z", "max_tokens": max_tokens, "messages": [
        {"role": "user", "content": "Sum up: " + " ".join(f"{{{{{m}}}}}" for m in mids)}]})
    return {"nodes": nodes, "edges": [{"from": "a", "to": m} for m in mids] + [{"from": m, "to": "z"} for m in mids]}


class Client:
    """Calls whichever gateway answers: a connection error or a 503 moves on to the next (bounded)."""

    def __init__(self, session: aiohttp.ClientSession, gateways: list[str], deadline: float):
        self.session, self.gateways, self.deadline = session, gateways, deadline
        self.in_flight = 0

    async def call(self, method: str, path: str, body=None) -> tuple[int, dict | None]:
        attempt = 0
        while time.monotonic() < self.deadline:
            url = self.gateways[attempt % len(self.gateways)] + path
            attempt += 1
            try:
                async with self.session.request(method, url, json=body,
                                                timeout=aiohttp.ClientTimeout(total=30)) as r:
                    data = await r.read()
                    if r.status == 503:
                        await asyncio.sleep(POLL_S)
                        continue
                    return r.status, orjson.loads(data) if data else None
            except (OSError, aiohttp.ClientError, asyncio.TimeoutError, orjson.JSONDecodeError):
                await asyncio.sleep(POLL_S)
        return 0, None

    async def run(self, spec: dict, followers: list | None = None, follow_n: int = 0) -> tuple[str | None, dict | None]:
        """(id, final state): id None if never accepted; state None if it did not end in time. With
        `follow_n`, that many SSE followers of it (alternating gateways) are added to `followers`."""
        status, body = await self.call("POST", "/v1/workflows", spec)
        if status != 202:
            return None, None
        wf_id = body["id"]
        for j in range(follow_n):
            followers.append(asyncio.create_task(follow(self, wf_id, self.gateways[j % len(self.gateways)])))
        self.in_flight += 1
        try:
            while time.monotonic() < self.deadline:
                status, state = await self.call("GET", f"/v1/workflows/{wf_id}")
                if status == 404:
                    return wf_id, {"status": "gone"}
                if status == 200 and state["status"] != "running":
                    return wf_id, state
                await asyncio.sleep(POLL_S)
            return wf_id, None
        finally:
            self.in_flight -= 1

    async def events(self, wf_id: str) -> list[tuple[str, dict]]:
        for gateway in self.gateways:
            try:
                async with self.session.get(f"{gateway}/v1/workflows/{wf_id}/events",
                                            timeout=aiohttp.ClientTimeout(total=60)) as r:
                    return parse_sse(await r.read())
            except (OSError, aiohttp.ClientError, asyncio.TimeoutError):
                continue
        return []


def parse_sse(raw: bytes) -> list[tuple[str, dict]]:
    out = []
    for block in raw.split(b"\n\n"):
        fields = dict(line.split(b": ", 1) for line in block.split(b"\n") if b": " in line and not line.startswith(b":"))
        if b"event" in fields and b"data" in fields:
            out.append((fields[b"event"].decode(), orjson.loads(fields[b"data"])))
    return out


def reruns(events: list[tuple[str, dict]]) -> int:
    done, count = set(), 0
    for kind, data in events:
        node = data.get("node")
        if kind == "node_finished" and data.get("status") == "finished":
            done.add(node)
        elif kind == "node_started" and node in done:
            count += 1
    return count


async def follow(client: Client, wf_id: str, gateway: str) -> bool:
    """One SSE follower: True if it saw workflow_finished."""
    try:
        async with client.session.get(f"{gateway}/v1/workflows/{wf_id}/events",
                                      timeout=aiohttp.ClientTimeout(total=300)) as r:
            return b"event: workflow_finished" in await r.read()
    except (OSError, aiohttp.ClientError, asyncio.TimeoutError):
        return False


@dataclass
class Fault:
    """`inject(cluster)` at --fault-at seconds into the load (it may return a note for the table); `clear`
    `duration` seconds later ends it; `heal` after the row puts the cluster back for the next one."""
    name: str
    inject: Callable[[Cluster], str | None] | None = None
    clear: Callable[[Cluster], None] | None = None
    duration: float = 0.0
    heal: Callable[[Cluster], None] | None = None
    followers: int = 0


async def run_row(fault: Fault, cluster: Cluster, args, progress: Progress) -> Row:
    rng = random.Random(f"{fault.name}-{args.seed}")
    row, task = Row(fault.name), progress.add_task(fault.name, total=args.workflows)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        client = Client(session, [g.url for g in cluster.gateways], time.monotonic() + args.row_timeout)
        gate = asyncio.Semaphore(args.concurrency)
        followers: list[asyncio.Task] = []

        async def one(i: int):
            async with gate:
                result = await client.run(workflow(rng, i, args.max_tokens), followers,
                                          fault.followers // args.workflows + (i < fault.followers % args.workflows))
                progress.advance(task)
                return result

        injected = asyncio.create_task(_inject(fault, cluster, client, row, args))
        results = await asyncio.gather(*(one(i) for i in range(args.workflows)))
        row.recovery_s = await injected
        if followers:
            seen = await asyncio.gather(*followers)
            row.notes = f"{sum(seen)}/{len(seen)} followers saw workflow_finished"
        for wf_id, state in results:
            _count(row, wf_id, state)
            if wf_id is not None:
                row.reruns += reruns(await client.events(wf_id))
    if fault.heal is not None:
        await asyncio.to_thread(fault.heal, cluster)
    await asyncio.to_thread(cluster.wait_healthy)
    return row


async def _inject(fault: Fault, cluster: Cluster, client: Client, row: Row, args) -> float | None:
    await asyncio.sleep(args.fault_at)
    started = time.monotonic()
    row.in_flight = client.in_flight
    if fault.inject is not None:
        note = await asyncio.to_thread(fault.inject, cluster)
        row.notes = note or row.notes
    if fault.clear is not None:
        await asyncio.sleep(max(0.0, fault.duration - (time.monotonic() - started)))
        await asyncio.to_thread(fault.clear, cluster)
    return await probe(client, started)


def _count(row: Row, wf_id: str | None, state: dict | None) -> None:
    if wf_id is None:  # never accepted in the row's time: the client gave up on it
        row.lost += 1
        return
    row.accepted += 1
    if state is None or state["status"] == "gone":
        row.lost += 1
    elif state["status"] == "finished":
        row.completed += 1
    elif state.get("error"):
        row.failed += 1
        row.reasons.append(state["error"][:160])
    else:
        row.lost += 1


async def probe(client: Client, started: float) -> float | None:
    """Seconds from `started` until a one-node workflow submitted now has finished."""
    _, state = await client.run({"nodes": [{"id": "probe", "max_tokens": 4,
                                            "messages": [{"role": "user", "content": "probe"}]}]})
    return round(time.monotonic() - started, 1) if state and state["status"] == "finished" else None


def faults(args) -> list[Fault]:
    def fuzz_gateway_b(c: Cluster) -> str:
        from scripts.contract_fuzz import fuzz

        report = fuzz(c.gateways[1].url, args.fuzz_examples)
        return (f"{report.calls} fuzzed requests, {len(report.server_errors)} server errors, "
                f"{len(report.bad_errors)} non-OpenAI errors")

    return [
        Fault("none (the load alone)"),
        Fault("worker SIGKILL", inject=lambda c: c.workers[0].kill(), heal=lambda c: c.workers[0].start().wait_ready()),
        Fault("worker hang (SIGSTOP, never answers)", inject=lambda c: c.workers[1].signal(signal.SIGSTOP),
              heal=lambda c: c.workers[1].signal(signal.SIGCONT)),
        Fault(f"Redis paused {args.redis_pause:g} s", inject=lambda c: c.pause_redis(),
              clear=lambda c: c.resume_redis(), duration=args.redis_pause),
        Fault(f"Redis restarted (SIGKILL, back after {args.redis_down:g} s)", inject=lambda c: c.kill_redis(),
              clear=lambda c: c.start_redis(), duration=args.redis_down),
        Fault("gateway SIGKILL (its replica takes over)", inject=lambda c: c.gateways[0].kill(),
              heal=lambda c: c.gateways[0].start().wait_ready()),
        Fault(f"{args.followers} concurrent SSE followers", followers=args.followers),
        Fault("schemathesis fuzz of gateway B", inject=fuzz_gateway_b),
    ]


def table(rows: list[Row], args, machine: str) -> str:
    lines = [HEADING, "",
             f"`python -m scripts.bench_chaos{' --quick' if args.quick else ''}`: {args.workflows} workflows of 3–6 "
             f"nodes ({args.max_tokens} tokens each) at concurrency {args.concurrency}, on two gateway replicas "
             f"over one durable Redis, {args.standins} fast stand-in workers ({args.token_delay:g} s a token)"
             f"{' and one real engine worker (SmolLM2-135M, fp32, 1 thread)' if not args.quick else ''}, all "
             f"processes on loopback; each fault injected {args.fault_at:g} s into the load. Gateways run with "
             f"`{' '.join(gateway_args(args))}`. {machine}", "",
             "Lost: accepted and never ended, gone, or failed without a reason. Re-run: a node started again "
             "after it had finished. Recovery: seconds from the fault's start until a one-node workflow "
             "submitted when the fault ended has finished (the first row: the same probe with no fault).", "",
             "| fault | in flight at the fault | completed | failed (reason) | lost | finished nodes re-run | "
             "recovery (s) | notes |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        reason = f" ({r.reasons[0]})" if r.reasons else ""
        lines.append(f"| {r.fault} | {r.in_flight} | {r.completed}/{args.workflows} | {r.failed}{reason} | {r.lost} | {r.reruns} | "
                     f"{r.recovery_s if r.recovery_s is not None else 'no recovery'} | {r.notes} |")
    return "\n".join(lines) + "\n"


def gateway_args(args) -> list[str]:
    return ["--first-token-timeout", str(args.first_token_timeout), "--inter-token-timeout",
            str(args.inter_token_timeout)]


async def run_all(cluster: Cluster, args) -> list[Row]:
    rows = []
    with Progress() as progress:
        for fault in faults(args):
            if args.only and not any(o.lower() in fault.name.lower() for o in args.only):
                continue
            rows.append(await run_row(fault, cluster, args, progress))
    return rows


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workflows", type=int, default=150)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--standins", type=int, default=3)
    p.add_argument("--token-delay", type=float, default=0.05, help="the stand-ins' seconds per token")
    p.add_argument("--fault-at", type=float, default=2.0, help="seconds into each row's load")
    p.add_argument("--redis-pause", type=float, default=10.0)
    p.add_argument("--redis-down", type=float, default=3.0, help="seconds Redis stays dead before its restart")
    p.add_argument("--followers", type=int, default=500)
    p.add_argument("--fuzz-examples", type=int, default=4)
    p.add_argument("--first-token-timeout", type=float, default=10.0)
    p.add_argument("--inter-token-timeout", type=float, default=5.0)
    p.add_argument("--row-timeout", type=float, default=150.0, help="a row's workflows must end within this")
    p.add_argument("--only", action="append", default=[], help="run only the faults whose name contains this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a small run: stand-ins only, fewer workflows, shorter faults")
    p.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    p.add_argument("--log-dir", default=None, help="keep the processes' logs here (default: a temporary folder)")
    args = p.parse_args(argv)
    if args.quick:
        args.workflows, args.concurrency, args.followers, args.fuzz_examples = 12, 6, 48, 1
        args.redis_pause, args.redis_down, args.fault_at = 3.0, 1.0, 0.5
        args.first_token_timeout, args.inter_token_timeout, args.row_timeout = 3.0, 2.0, 90.0
    return args


def main(argv=None) -> list[Row]:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-chaos-") as tmp:
        log_dir = Path(args.log_dir or tmp)
        log_dir.mkdir(parents=True, exist_ok=True)
        cluster = Cluster(log_dir, standins=args.standins, real_worker=not args.quick, tokens=args.max_tokens,
                          token_delay_s=args.token_delay,
                          gateway_args=tuple(gateway_args(args)))
        try:
            cluster.start()
            rows = asyncio.run(run_all(cluster, args))
        finally:
            cluster.stop()
    import os
    import platform

    machine = f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared with other jobs while measured)."
    text = table(rows, args, machine)
    print(text)
    if not args.no_write:
        update_benchmarks_md(HEADING, text)
    print(json.dumps([r.__dict__ for r in rows]))
    return rows


if __name__ == "__main__":
    main()
