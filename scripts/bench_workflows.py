"""Workflow benchmark: the example agents under concurrent open-loop load, one configuration at a time.

Each cell (configuration × arrival rate) gets fresh processes — a Redis, N engine workers
(`--threads` each, started one after the other) and the configuration's gateway — so no
cell inherits another's cache; then `--workflows` workflows arrive on the same Poisson
schedule, drawn in turn from the examples of agents/agentgate/examples/ (each with its own inputs).
Configurations (CONFIGS, one line each):

- agentgate         the gateway runs each workflow's DAG: kv_aware routing, prediction, prefetch and
                    pins, workers with all three KV tiers and n-gram speculation (the full system, as
                    the gateway's defaults have it);
- no_speculation    the same, workers without speculation                    }
- no_prediction     the same without prediction (no prefetch, no pins)       } agent-awareness
- no_pinning        the same, prefetching but never pinning                  } ablations, on the
- with_priority     the same, workflow calls at priority 1 above the tenants'  } same workers
- token_pipelining  the same plus token pipelining (off by default on CPU)   }
- kv_aware_radix    kv_aware routing, no prediction, no priorities, workers with their radix cache
                    only (no L2/L3, no speculation);
- round_robin       the gateway's DAG with round-robin routing, no priorities, radix cache only: what
                    a prefix-caching server pool behind a plain router does;
- least_load        the same with least-load routing;
- sequential        no gateway: each workflow's client calls one worker's OpenAI API itself, one
                    node at a time (agents/agentgate/sequential.py), workflow i on worker i mod N, radix only;
- sglang_router     no gateway: the peer agentgate exists to beat. Each workflow's client runs its own
                    DAG (agentgate.sequential.run_client_side: every ready node at once) through the real
                    sglang-router (PyPI sglang-router, --policy cache_aware) over the same workers with
                    the same flags as agentgate's (tiers, speculation): only the layer in front differs.

`--examples` also takes the client-driven agents react_langgraph (LangGraph's create_react_agent) and
agents_sdk (an OpenAI Agents SDK handoff): their framework runs the loop in a client thread and calls the
chat API of the configuration's gateway, sglang-router or worker; each of their calls is a node of the record.

Reports makespan, TTFT p50/p99, e2e latency, prefix hit rate, tokens/s per worker and per
user (definitions: scripts/bench_workflows_report.py) into the "## Workflows" section of
BENCHMARKS.md, docs/pareto.png and docs/timeline.png.

  .venv/bin/python scripts/bench_workflows.py                 # the full run: about 80 min on 2 quiet cores
  .venv/bin/python scripts/bench_workflows.py --quick         # smoke run, outputs in a temp dir

With --background-rate R, other tenants' chat calls (unique ~--background-tokens-token prompts) arrive
at R per second during every cell and compete with the workflows for KV memory: the case pins exist
for (a tool call's wait is when an idle conversation gets evicted). That run writes the section
"Workflows under memory pressure" and docs/*_pressure.* instead.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "agents")]  # engine, gateway, scripts; the SDK `agentgate`

from scripts import bench_workflows_report as report  # noqa: E402
from scripts.benchlib import update_benchmarks_md  # noqa: E402


@dataclass(frozen=True)
class Config:
    """One way of serving the workflows. `gateway`: the gateway's CLI flags; None: no gateway, the
    client calls a worker node by node. `worker`: flags added to every worker's command line (after
    the common ones, so they win over those; --worker-arg comes last and wins over both)."""

    name: str
    label: str
    gateway: tuple[str, ...] | None
    worker: tuple[str, ...] = ()
    router: tuple[str, ...] | None = None  # sglang-router's flags: the clients run their DAGs through it


# What a deployment without agentgate has: each worker's own radix prefix cache (RadixAttention), no
# host-RAM tier, no shared store; a plain router does not know a workflow's calls from other tenants'.
RADIX_ONLY = ("--l2-blocks", "0", "--l3", "none")
PLAIN = ("--no-prediction", "--workflow-priority", "0")
# The full system's workers also speculate (n-gram prompt lookup: exact, and agent calls copy a lot);
# the ablations keep it so each differs from agentgate by its one switch, and no_speculation shows its share.
SPEC = ("--speculative-algorithm", "ngram")
CONFIGS = (
    Config("agentgate", "agentgate (DAG, kv_aware, prediction + pins, L1/L2/L3, n-gram speculation)",
           ("--policy", "kv_aware"), SPEC),
    Config("no_speculation", "agentgate without speculation", ("--policy", "kv_aware")),
    Config("no_prediction", "agentgate, no prediction/prefetch/pins", ("--policy", "kv_aware", "--no-prediction"),
           SPEC),
    Config("no_pinning", "agentgate, prefetch without pins", ("--policy", "kv_aware", "--no-pinning"), SPEC),
    Config("with_priority", "agentgate, workflow calls at priority 1 above other tenants'",
           ("--policy", "kv_aware", "--workflow-priority", "1"), SPEC),
    Config("token_pipelining", "agentgate + token pipelining", ("--policy", "kv_aware", "--token-pipelining", "on"),
           SPEC),
    Config("kv_aware_radix", "gateway DAG, kv_aware, radix cache only", ("--policy", "kv_aware", *PLAIN), RADIX_ONLY),
    Config("round_robin", "gateway DAG, round_robin, radix cache only", ("--policy", "round_robin", *PLAIN),
           RADIX_ONLY),
    Config("least_load", "gateway DAG, least_load, radix cache only", ("--policy", "least_load", *PLAIN),
           RADIX_ONLY),
    Config("sequential", "sequential client calls, no gateway, radix cache only", None, RADIX_ONLY),
    Config("sglang_router", "client-driven DAGs through sglang-router (cache_aware), same workers", None, SPEC,
           router=("--policy", "cache_aware")),
)
BASELINE = "agentgate"
# agentgate's makespan this many times lower: the peer it exists to beat (≥ 1.25×), and issue 8's targets
TARGETS = {"sglang_router": 1.25, "round_robin": 2.5, "sequential": 4.0}
EXAMPLES = ("react", "map_reduce", "multi_agent", "code_edit", "diamond")
# Client-driven agents (a `run_agent` each: LangGraph's prebuilt ReAct agent, an OpenAI Agents SDK handoff), run
# only when --examples names them: the framework runs the loop in the client and calls the chat API of the gateway,
# of sglang-router or of a worker, whichever the configuration has; --tool-latency does not reach their tools.
AGENT_EXAMPLES = ("react_langgraph", "agents_sdk")


@dataclass(frozen=True)
class Arrival:
    index: int
    at: float  # seconds after the cell starts
    example: str
    variant: int


def arrival_plan(rate: float, count: int, examples: tuple[str, ...], seed: int) -> list[Arrival]:
    """Poisson arrivals (exponential gaps, mean 1/rate; rate inf: all at t=0), examples in turn."""
    rng = random.Random(seed)
    t, plan = 0.0, []
    for i in range(count):
        plan.append(Arrival(i, t, examples[i % len(examples)], i // len(examples)))
        if rate != float("inf"):
            t += rng.expovariate(rate)
    return plan


# Other tenants (--background-rate): unrelated chat calls that compete with the workflows for KV memory.
BACKGROUND_INFLIGHT = 8  # at most this many in flight; a later arrival waits for a slot (the load stays bounded)
BACKGROUND_MAX_TOKENS = 16
LOG_LINE_TOKENS = 31  # one line of background_prompt, as SmolLM2's tokenizer counts it
SERVICES = ("auth", "billing", "search", "storage", "gateway", "scheduler")


def background_prompt(index: int, tokens: int, rng: random.Random) -> str:
    """Another tenant's request: summarize about `tokens` tokens of service logs. The first line is unique,
    so no two share a cached block beyond the chat template's first one."""
    lines = [f"Ticket {index:06d}-{rng.randrange(10**6):06d}: summarize these service logs in one sentence."]
    for _ in range(max(tokens // LOG_LINE_TOKENS, 1)):
        lines.append(f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d} "
                     f"host-{rng.randrange(1000):03d} svc={rng.choice(SERVICES)} latency_ms={rng.randrange(5000)} "
                     f"status={rng.choice((200, 200, 200, 404, 500, 503))}")
    return "\n".join(lines)


# -- processes ---------------------------------------------------------------------------------------------------
def worker_flags() -> set[str]:
    """The flags this checkout's worker accepts (the KV tiers and the KV index add some)."""
    from engine.worker.main import add_worker_args

    parser = argparse.ArgumentParser(add_help=False)
    add_worker_args(parser)
    return set(parser._option_string_actions)


class Stack:
    """One cell's processes, all fresh so that no cell inherits another's cache: a Redis, N engine
    workers (publishing their KV events to that Redis and sharing one new L3 directory, where this
    checkout's workers have those features) and the configuration's gateway, if it has one."""

    def __init__(self, args, config: Config, flags: set[str], log_dir: Path):
        self.args, self.config, self.flags = args, config, flags
        self.log_dir = log_dir
        self.tmp = Path(tempfile.mkdtemp(prefix="cell_", dir=log_dir))
        self.procs: list[subprocess.Popen] = []
        self.roles: list[str] = []  # each process's kind, for cpu(): worker, gateway, router
        self.worker_urls: list[str] = []
        self.gateway_url: str | None = None
        self.router_url: str | None = None
        self.redis = None
        self.matmul_plans: list = []  # what each worker measured at start-up (it varies with the machine's load)

    def __enter__(self) -> "Stack":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        from common.launch import wait_healthy
        from common.redis_server import RedisServer, free_port
        from engine.model.prepare import default_model_dir

        self.redis = RedisServer().start()
        extra = []
        if "--redis-url" in self.flags:
            extra += ["--redis-url", self.redis.url]
        if "--l3" in self.flags:
            extra += ["--l3", f"dir:{self.tmp / 'kv-l3'}"]
        self.start_workers(extra)
        if self.config.router is not None:
            self.router_url = start_sglang_router(self, self.worker_urls, self.config.router)
        if self.config.gateway is not None:
            port = free_port()
            self.gateway_url = f"http://127.0.0.1:{port}"
            proc = self._spawn([sys.executable, "-m", "gateway.main", "--port", str(port), "--redis-url",
                                self.redis.url, "--worker-urls", *self.worker_urls, "--tokenizer-path",
                                str(default_model_dir()), "--log-level", "warning", *self.config.gateway,
                                *self.args.gateway_arg],
                               f"gateway-{port}")
            wait_healthy(self.gateway_url, proc, timeout=60)

    def start_workers(self, extra: list[str]) -> None:
        """The engine worker processes (`extra`: the Redis and L3 flags), one at a time, each warmed up."""
        from common.launch import wait_healthy
        from common.redis_server import free_port
        from engine.model.prepare import default_model_dir

        for i in range(self.args.workers):  # one at a time: each measures its matmul plan at start-up
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            trace = []
            if self.args.trace_dir:
                Path(self.args.trace_dir).mkdir(parents=True, exist_ok=True)
                trace = ["--step-trace", str(Path(self.args.trace_dir) / f"{self.config.name}-worker{i + 1}.jsonl")]
            proc = self._spawn([sys.executable, "-m", "engine.worker.main", "--port", str(port), "--model-path",
                                str(default_model_dir()), "--threads", str(self.args.threads), "--kv-memory-gb",
                                str(self.args.kv_memory_gb), "--log-level", "warning", *extra, *trace, *self.config.worker,
                                *self.args.worker_arg],
                               f"worker-{port}")
            wait_healthy(url, proc, timeout=300)
            _post(url + "/generate", {"text": "Hi", "sampling_params": {"max_new_tokens": 1}})  # warm-up
            self.worker_urls.append(url)
            self.matmul_plans.append(_get(url + "/get_server_info").get("matmul_plan"))

    def mark(self) -> None:
        """Count work from now on: work(), awareness() and cpu() subtract what the counters say now (a
        warm-up's)."""
        self._work0, self._awareness0, self._cpu0 = self._work(), self._awareness(), self._cpu()

    def cpu(self) -> dict[str, float]:
        """CPU-seconds each kind of process used since mark(): the workers, the gateway or sglang-router,
        Redis, and this driver (the agents' own client code)."""
        before = getattr(self, "_cpu0", {})
        return {k: round(v - before.get(k, 0.0), 2) for k, v in self._cpu().items()}

    def _cpu(self) -> dict[str, float]:
        import psutil

        out: dict[str, float] = {}
        roles = [(p, r) for p, r in zip(self.procs, self.roles)]
        if self.redis is not None and self.redis.proc is not None:
            roles.append((self.redis.proc, "redis"))
        for proc, role in roles:
            try:
                t = psutil.Process(proc.pid).cpu_times()
            except psutil.Error:
                continue
            out[role] = out.get(role, 0.0) + t.user + t.system
        t = psutil.Process().cpu_times()
        out["client"] = t.user + t.system
        return out

    def work(self) -> list[dict]:
        """Each worker's work counters since mark() (report.WORK_COUNTERS); a worker that cannot say is left
        out."""
        before = getattr(self, "_work0", {})
        return [{k: v - before.get(url, {}).get(k, 0.0) for k, v in counters.items()}
                for url, counters in self._work().items()]

    def awareness(self) -> dict:
        """The gateway's agent-awareness counters since mark() (prediction outcomes, prefetch tokens by
        source, wasted and saved tokens, pin-seconds), one entry per labelled series; {} without a gateway."""
        before = getattr(self, "_awareness0", {})
        return {k: v - before.get(k, 0.0) for k, v in self._awareness().items()}

    def _work(self) -> dict[str, dict]:
        texts = {url: _metrics_text(url) for url in self.worker_urls}
        return {url: report.work_counters(t) for url, t in texts.items() if t is not None}

    def _awareness(self) -> dict:
        text = _metrics_text(self.gateway_url) if self.gateway_url is not None else None
        return report.awareness_counters(text) if text is not None else {}

    def _spawn(self, cmd: list[str], name: str) -> subprocess.Popen:
        with open(self.log_dir / f"{self.config.name}-{name}.log", "ab") as log:
            paths = os.pathsep.join([str(ROOT), str(ROOT / "agents")])
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                    env={**os.environ, "PYTHONPATH": paths})
        self.procs.append(proc)
        self.roles.append(name.partition("-")[0])
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):  # the gateway first, then the workers
            _terminate(proc)
        self.procs.clear()
        self.roles.clear()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
        shutil.rmtree(self.tmp, ignore_errors=True)


ROUTER_START_TIMEOUT_S = 120


def start_sglang_router(stack: Stack, worker_urls: list[str], flags: tuple[str, ...]) -> str:
    """The real sglang-router (its Rust binary, from PyPI sglang-router) in front of `worker_urls`; its URL
    once it has registered every worker (it reads their /get_server_info and /get_model_info)."""
    from common.launch import wait_healthy
    from common.redis_server import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = stack._spawn([sys.executable, "-m", "sglang_router.launch_router", "--host", "127.0.0.1", "--port",
                         str(port), "--worker-urls", *worker_urls, "--log-level", "warn", "--prometheus-host",
                         "127.0.0.1", "--prometheus-port", str(free_port()), *flags], f"router-{port}")
    wait_healthy(url, proc, timeout=ROUTER_START_TIMEOUT_S)
    deadline = time.monotonic() + ROUTER_START_TIMEOUT_S
    while len(_get(url + "/workers").get("workers") or ()) < len(worker_urls):
        if time.monotonic() > deadline:
            raise RuntimeError(f"sglang-router at {url} did not register {len(worker_urls)} workers")
        time.sleep(0.5)
    return url


def _post(url: str, body: dict) -> None:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        r.read()


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.loads(r.read())


def _metrics_text(url: str) -> str | None:
    """GET url/metrics; None (said on stderr) when it cannot be read."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
            return r.read().decode()
    except OSError as exc:
        print(f"could not read {url}/metrics: {exc}", file=sys.stderr)
        return None


def _terminate(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


# -- driving one cell ------------------------------------------------------------------------------------------------
def build(arrival: Arrival, quick: bool):
    """The arrival's Workflow, or for a client-driven example a callable running the agent once with a Client."""
    import importlib

    module = importlib.import_module(f"agentgate.examples.{arrival.example}")
    if arrival.example in AGENT_EXAMPLES:
        return functools.partial(module.run_agent, quick=quick, variant=arrival.variant)
    return module.build(quick=quick, variant=arrival.variant)


def slowed(fn, seconds: float):
    """The tool `fn`, taking at least `seconds` (a real search or API call is not instant). The
    signature is kept (functools.wraps), so the SDK binds its parameters as before."""
    if seconds <= 0:
        return fn

    @functools.wraps(fn)
    def tool(*args, **kwargs):
        time.sleep(seconds)
        return fn(*args, **kwargs)

    return tool


async def run_cell(plan: list[Arrival], stack: Stack, args, progress, task) -> tuple[list, dict]:
    from concurrent.futures import ThreadPoolExecutor

    from agentgate.async_client import AsyncClient
    from agentgate.errors import AgentGateError
    from agentgate.tools import upstream_of

    workflows = [build(a, args.quick) for a in plan]  # built before the clock starts
    names = {url: f"worker {i + 1}" for i, url in enumerate(stack.worker_urls)}  # ports change from cell to cell
    if stack.gateway_url is not None or stack.router_url is not None:
        clients = [AsyncClient(stack.gateway_url or stack.router_url, timeout=600.0)]
    else:
        clients = [AsyncClient(u, timeout=600.0) for u in stack.worker_urls]
    agents = ThreadPoolExecutor(max(len(plan), len(args.examples)), thread_name_prefix="agent")  # one each at once
    if args.warm:  # a service that has run these agents before: their shared prompts are cached somewhere
        warmups = [Arrival(len(plan) + i, 0.0, example, len(plan) + i) for i, example in enumerate(args.examples)]
        await asyncio.gather(*(drive(stack, clients, w, build(w, quick=True), {}, agents) for w in warmups))
    stack.mark()  # the cell's work counts from here
    if args.trace_dir:  # where scripts/step_trace_report.py starts reading this cell's step traces
        (Path(args.trace_dir) / f"{stack.config.name}.start").write_text(repr(time.time()))
    t0 = time.time()

    async def one(arrival: Arrival, wf):
        await asyncio.sleep(max(t0 + arrival.at - time.time(), 0.0))
        arrived = t0 + arrival.at
        tools = {node: slowed(fn, args.tool_latency) for node, fn in wf.tools.items()} if not callable(wf) else {}
        try:
            result = await drive(stack, clients, arrival, wf, tools, agents)
        except Exception as exc:  # counted as failed in the table, the cause kept in the results JSON
            if not isinstance(exc, AgentGateError) and arrival.example not in AGENT_EXAMPLES:
                raise  # a workflow's client fails only with the SDK's errors; a framework's may raise anything
            result = None
            error = f"{type(exc).__name__}: {exc}"
        progress.advance(task)
        if result is None:
            return report.WorkflowRecord(arrival.index, arrival.example, arrival.variant, arrived, time.time(),
                                         "error", error, ())
        if arrival.example in AGENT_EXAMPLES:
            return report.agent_record(arrival.index, arrival.example, arrival.variant, arrived, time.time(), result)
        return report.workflow_record(arrival.index, arrival.example, arrival.variant, arrived, time.time(), result,
                                      upstream_of(wf.to_dict()), names)

    stop = asyncio.Event()
    tenants = asyncio.create_task(background_load(args, clients, stop)) if args.background_rate > 0 else None
    try:
        records = list(await asyncio.gather(*(one(a, wf) for a, wf in zip(plan, workflows))))
        stop.set()
        return records, (await tenants if tenants is not None else {})
    finally:
        stop.set()
        if tenants is not None and not tenants.done():
            tenants.cancel()
        for client in clients:
            await client.close()
        agents.shutdown(wait=False, cancel_futures=True)


async def drive(stack: Stack, clients: list, arrival: Arrival, wf, tools: dict, agents=None):
    """Run one workflow the configuration's way: submitted to the gateway, or the client's own loop through
    sglang-router (every ready node at once) or against one worker (one node at a time). A client-driven
    agent (`wf` a callable) runs in a thread of `agents` with a Client on the gateway, the router or the worker,
    and returns its AgentRun."""
    from agentgate.sequential import run_client_side, run_sequential

    if callable(wf):
        from agentgate.client import Client

        url = stack.gateway_url or stack.router_url or stack.worker_urls[arrival.index % len(stack.worker_urls)]

        def run_agent():
            with Client(url, timeout=600.0) as client:
                return wf(client)

        return await asyncio.get_running_loop().run_in_executor(agents, run_agent)
    if stack.gateway_url is not None:
        return await clients[0].run(wf, tools=tools)
    if stack.router_url is not None:
        return await run_client_side(wf, stack.router_url, tools=tools, client=clients[0])
    client = clients[arrival.index % len(clients)]
    return await run_sequential(wf, client.base_url, tools=tools, client=client)


async def background_load(args, clients, stop: asyncio.Event) -> dict:
    """Other tenants' chat calls, Poisson at args.background_rate per second, until `stop`: each a unique
    log-summary prompt (background_prompt), spread over the clients in turn, at most BACKGROUND_INFLIGHT in
    flight. Calls still running at `stop` are cancelled (their connections close, so the workers free
    their KV). Returns what happened to them."""
    from agentgate.errors import AgentGateError

    rng = random.Random(args.seed + 1)
    slots = asyncio.Semaphore(BACKGROUND_INFLIGHT)
    stats = {"sent": 0, "finished": 0, "failed": 0, "cancelled": 0, "prompt_tokens": 0, "cached_tokens": 0}
    running: set[asyncio.Task] = set()

    async def call(prompt: str, client) -> None:
        try:
            result = await client.chat(prompt, max_tokens=BACKGROUND_MAX_TOKENS, temperature=0.0)
            stats["finished"] += 1
            stats["prompt_tokens"] += result.usage.get("prompt_tokens", 0)
            stats["cached_tokens"] += result.cached_tokens
        except AgentGateError:
            stats["failed"] += 1
        finally:
            slots.release()

    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), rng.expovariate(args.background_rate))
            break
        except asyncio.TimeoutError:
            pass
        await slots.acquire()
        if stop.is_set():
            break
        prompt = background_prompt(stats["sent"], args.background_tokens, rng)
        task = asyncio.create_task(call(prompt, clients[stats["sent"] % len(clients)]))
        running.add(task)
        task.add_done_callback(running.discard)
        stats["sent"] += 1
    stats["cancelled"] = sum(not task.done() for task in running)  # a done one may still await its discard
    for task in list(running):
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)
    return stats


# -- the run ----------------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 1 worker × 1 thread, agentgate + sequential, "
                                                        "2 small code-edit workflows at once; outputs in a temp dir")
    p.add_argument("--workers", type=int, default=None, help="engine workers (default 2; quick 1)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads per worker (0: the cores shared among the workers, at least 1)")
    p.add_argument("--kv-memory-gb", type=float, default=1.0, help="KV pool per worker")
    p.add_argument("--worker-arg", action="append", default=[], help="extra flag for every worker (repeatable)")
    p.add_argument("--gateway-arg", action="append", default=[],
                   help="extra flag for every configuration's gateway, after its own (repeatable)")
    p.add_argument("--configs", default=None, help=f"comma-separated, of {', '.join(c.name for c in CONFIGS)} "
                                                   "(default all; quick agentgate,sequential)")
    p.add_argument("--rates", default=None, help="arrival rates in workflows/s, 'inf' = all at once "
                                                 "(default 0.03,0.06,inf; quick inf)")
    p.add_argument("--workflows", type=int, default=None, help="workflows per cell (default 12; quick 2)")
    p.add_argument("--examples", default=None, help=f"comma-separated, of {', '.join(EXAMPLES)} (default all of "
                                                    f"these; quick code_edit) and the client-driven "
                                                    f"{', '.join(AGENT_EXAMPLES)}")
    p.add_argument("--tool-latency", type=float, default=None, help="seconds each tool call takes (default 0.5; "
                                                                    "quick 0)")
    p.add_argument("--background-rate", type=float, default=0.0,
                   help="other tenants' chat calls per second during each cell: unrelated prompts that compete "
                        "for KV memory (default 0: none). With it the results go to the section 'Workflows under "
                        "memory pressure' and to *_pressure files")
    p.add_argument("--background-tokens", type=int, default=800, help="prompt length of each background call")
    p.add_argument("--warm", action="store_true",
                   help="before each cell's clock starts, run one quick workflow of each example the cell's own way "
                        "(a service that has served these agents before: their shared prompts are cached); the "
                        "work counters count from after it")
    p.add_argument("--section", choices=sorted(SECTIONS), default=None,
                   help="the BENCHMARKS.md section (and docs/ file suffix) this run writes (default: main, or "
                        "pressure with --background-rate)")
    p.add_argument("--trace-dir", default=None, metavar="DIR",
                   help="each worker writes its step trace (engine/trace.py) to DIR/CONFIG-workerN.jsonl")
    p.add_argument("--repeats", type=int, default=1,
                   help="run every cell this many times, the configurations taking turns; each row is the median run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default=None, help="where the plots and results go (default docs/; quick: a temp dir); "
                                                   "BENCHMARKS.md is updated only when it is docs/")
    p.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md (quick never does)")
    p.add_argument("--from-json", default=None, metavar="PATH",
                   help="run nothing: redraw the plots and the section from a bench_workflows.json")
    args = p.parse_args(argv)
    quick = args.quick
    args.workers = args.workers or (1 if quick else 2)
    # co-located workers share the cores (quick: one thread, beside whatever else runs the smoke test)
    args.threads = args.threads or (1 if quick else max(1, (os.cpu_count() or 1) // args.workers))
    args.configs = (args.configs or ("agentgate,sequential" if quick else ",".join(c.name for c in CONFIGS)))
    args.rates = [float(r) for r in (args.rates or ("inf" if quick else "0.03,0.06,inf")).split(",")]
    args.workflows = args.workflows or (2 if quick else 12)
    args.examples = tuple((args.examples or ("code_edit" if quick else ",".join(EXAMPLES))).split(","))
    args.tool_latency = args.tool_latency if args.tool_latency is not None else (0.0 if quick else 0.5)
    if quick and not any(a.startswith("--matmul-backend") for a in args.worker_arg):
        args.worker_arg.append("--matmul-backend=numpy")  # skips the start-up probe (~3 s of CPU per worker)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    if args.background_rate < 0 or args.background_tokens < 1:
        p.error("--background-rate must be >= 0 and --background-tokens >= 1")
    known = {c.name: c for c in CONFIGS}
    unknown = [c for c in args.configs.split(",") if c not in known] + [e for e in args.examples
                                                                     if e not in EXAMPLES + AGENT_EXAMPLES]
    if unknown:
        p.error(f"unknown configuration(s) or example(s): {', '.join(unknown)}")
    args.configs = [known[c] for c in args.configs.split(",")]
    if args.out_dir:
        args.out_dir = Path(args.out_dir)
    elif args.from_json:
        args.out_dir = Path(args.from_json).parent
    else:
        args.out_dir = None if quick else ROOT / "docs"  # None: a temp dir, made when the run starts
    return args


def main(argv=None) -> int:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    args = parse_args(argv)
    args.out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="bench_workflows_"))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    if args.from_json:
        meta, summaries, records, plans = report.from_json(json.loads(Path(args.from_json).read_text()))
        print(write_outputs(meta, summaries, records, plans, args.out_dir,
                            update_md=not args.no_write and "--quick" not in meta["command"].split()))
        return 0
    log_dir = Path(tempfile.mkdtemp(prefix="bench_workflows_logs_"))
    flags = worker_flags()
    summaries, records, plans = [], {}, {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        cells = [(c, r) for _ in range(args.repeats) for c in args.configs for r in args.rates]  # repeats take turns
        runs: dict[tuple[str, float], list] = {}
        overall = progress.add_task("cells", total=len(cells))
        for config, rate in cells:
            plan = arrival_plan(rate, args.workflows, args.examples, args.seed)
            task = progress.add_task(f"{config.name} @ {report.rate_label(rate)}: starting", total=len(plan))
            with Stack(args, config, flags, log_dir) as stack:
                progress.update(task, description=f"{config.name} @ {report.rate_label(rate)}")
                cell, background = asyncio.run(run_cell(plan, stack, args, progress, task))
                work, awareness, cpu = stack.work(), stack.awareness(), stack.cpu()
            summary = report.summarize(config.name, rate, cell, args.workers, work, awareness, background, cpu)
            runs.setdefault((config.name, rate), []).append((summary, cell, stack.matmul_plans))
            progress.advance(overall)
        for key, results in runs.items():  # one run per cell: itself; several: the median run's, all makespans
            chosen = report.median_runs([s for s, _, _ in results]) if args.repeats > 1 else results[0][0]
            _, records[key], plans[key] = next(r for r in results if r[0].makespan_s == chosen.makespan_s)
            summaries.append(chosen)
    text = write_outputs(run_meta(args, argv if argv is not None else sys.argv[1:]), summaries, records, plans,
                         args.out_dir, update_md=not args.quick and not args.no_write)
    print(text)
    console.print(f"plots and results in {args.out_dir}")
    if args.trace_dir:
        from scripts import step_trace_report

        console.print(step_trace_report.render(step_trace_report.load(Path(args.trace_dir)), 0.0, {
            p.stem: float(p.read_text()) for p in Path(args.trace_dir).glob("*.start")}))
    failed = sum(s.failed for s in summaries)
    if failed:
        console.print(f"[red]{failed} workflow(s) failed[/red]; see the logs in {log_dir} and the results JSON")
    else:
        shutil.rmtree(log_dir, ignore_errors=True)
    return 1 if failed else 0


def run_meta(args, argv) -> dict:
    return {"command": " ".join(["scripts/bench_workflows.py", *argv]).strip(), "when": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores", "workers": args.workers,
            "threads": args.threads, "kv_memory_gb": args.kv_memory_gb, "workflows": args.workflows,
            "examples": list(args.examples), "tool_latency_s": args.tool_latency, "rates": args.rates,
            "configs": [c.name for c in args.configs], "worker_args": args.worker_arg,
            "gateway_args": args.gateway_arg, "seed": args.seed,
            "background_rate": args.background_rate, "background_tokens": args.background_tokens,
            "background_max_tokens": BACKGROUND_MAX_TOKENS, "background_inflight": BACKGROUND_INFLIGHT,
            "warm": args.warm, "section": args.section, "repeats": args.repeats}


# --section: the BENCHMARKS.md heading a run writes and the suffix of its files in docs/
SECTIONS = {"main": ("## Workflows", ""), "pressure": ("## Workflows under memory pressure", "_pressure"),
            "router": ("## Workflows against sglang-router", "_router"),
            "diamond": ("## The diamond workflow against sglang-router", "_diamond")}


def write_outputs(meta: dict, summaries, records, plans, out_dir: Path, update_md: bool) -> str:
    """The plots, the results JSON and the markdown section into out_dir (and BENCHMARKS.md if asked)."""
    labels = {c.name: c.label for c in CONFIGS}
    pressure = meta.get("background_rate", 0) > 0  # a run with other tenants has its own files and section
    title, suffix = SECTIONS[meta.get("section") or ("pressure" if pressure else "main")]
    pareto, timeline = out_dir / f"pareto{suffix}.png", out_dir / f"timeline{suffix}.png"
    report.plot_pareto(summaries, labels, pareto)
    report.plot_timeline(timeline_panels(meta, records), timeline)
    (out_dir / f"bench_workflows{suffix}.json").write_text(
        json.dumps(report.to_json(meta, summaries, records, plans), indent=1))
    in_docs = out_dir.resolve() == (ROOT / "docs").resolve()
    images = (f"docs/{pareto.name}", f"docs/{timeline.name}") if in_docs else (str(pareto), str(timeline))
    targets = {k: v for k, v in TARGETS.items() if k in meta["configs"]}
    baseline = BASELINE if BASELINE in meta["configs"] else meta["configs"][0]
    text = report.section(summaries, meta, baseline, targets, images, title)
    (out_dir / f"bench_workflows{suffix}.md").write_text(text)
    if update_md and in_docs:  # BENCHMARKS.md links the plots in docs/, never a temp dir
        update_benchmarks_md(title, text)
    return text


def timeline_panels(meta: dict, records) -> list:
    """One workflow (the first multi-agent one, else the first) at the middle rate, under the baseline
    and under sequential calls (else the first two configurations), where it finished in both."""
    rate = meta["rates"][len(meta["rates"]) // 2]
    names = meta["configs"]
    shown = [n for n in (BASELINE, "sequential") if n in names]
    if len(shown) < 2:
        shown = names[:2]
    cells = [{r.index: r for r in records[(n, rate)] if r.status == "finished"} for n in shown]
    common = sorted(set.intersection(*(set(c) for c in cells)))
    if not common:
        common = sorted(set().union(*(set(c) for c in cells)))
    assert common, "no workflow finished at the middle rate: nothing to draw"
    index = next((i for i in common if cells[0].get(i) and cells[0][i].example == "multi_agent"), common[0])
    labels = {c.name: c.label for c in CONFIGS}
    return [(labels[n], cell[index]) for n, cell in zip(shown, cells) if index in cell]


if __name__ == "__main__":
    sys.exit(main())
