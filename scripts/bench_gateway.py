"""Gateway overhead: added latency (p50/p99) and max req/s of the gateway vs calling
the worker directly, with a fast fake worker so that the gateway is the bottleneck.

One run: two fake workers (this script with --serve-fake), two gateways
(`python -m gateway.main`, kv_aware and round_robin, the real tokenizer when the
embedded model is prepared) and the load generator (here). With --baseline REV,
two more gateways run from a `git archive` of REV, so a change is measured
against what it changes in the same run. Latency: sequential non-streaming calls
(/v1/chat/completions, and /generate with the same prompt as text); throughput:
a closed loop of --concurrency clients on /v1/chat/completions. Every measurement
is split into --rounds that visit the targets in turn, so a neighbour's burst on a
shared machine lands on all of them alike. Writes a "## Gateway" section into
BENCHMARKS.md (other sections untouched).

  .venv/bin/python scripts/bench_gateway.py [--requests 2000] [--concurrency 32] [--seconds 5]
                                            [--rounds 5] [--baseline REV]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.launch import wait_healthy  # noqa: E402
from scripts.benchlib import update_benchmarks_md  # noqa: E402

SYSTEM = "You are a helpful agent. " * 20
BODY = {"model": "fake", "max_tokens": 8, "messages": [
    {"role": "system", "content": SYSTEM}, {"role": "user", "content": "ping"}]}
GENERATE = {"text": SYSTEM + "ping", "sampling_params": {"max_new_tokens": 8}}
REPLY = {"id": "chatcmpl-x", "object": "chat.completion", "created": 0, "model": "fake",
         "choices": [{"index": 0, "message": {"role": "assistant", "content": "pong"}, "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11,
                   "prompt_tokens_details": {"cached_tokens": 0}}}
GENERATE_REPLY = {"text": "pong", "output_ids": [1], "meta_info": {
    "id": "x", "finish_reason": {"type": "stop"}, "prompt_tokens": 10, "completion_tokens": 1, "cached_tokens": 0}}
WARMUP = 50


# -- the fake worker ---------------------------------------------------------------------------------
def serve_fake(port: int, model_path: str) -> None:
    import orjson
    from aiohttp import web

    def replying(payload: dict):
        body = orjson.dumps(payload)

        async def handler(request):
            await request.read()
            return web.Response(body=body, content_type="application/json")
        return handler

    app = web.Application()
    app.router.add_get("/health", lambda r: web.Response())
    app.router.add_get("/get_load", lambda r: web.json_response([{"num_reqs": 0, "num_waiting_reqs": 0}]))
    app.router.add_get("/get_model_info", lambda r: web.json_response({"model_path": model_path}))
    app.router.add_get("/get_server_info", lambda r: web.json_response({"page_size": 16}))
    app.router.add_post("/v1/chat/completions", replying(REPLY))
    app.router.add_post("/generate", replying(GENERATE_REPLY))
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# -- load ------------------------------------------------------------------------------------------------
async def latencies(url: str, path: str, body: dict, n: int, warmup: int) -> list[float]:
    import aiohttp
    import orjson

    payload = orjson.dumps(body)
    out = []
    async with aiohttp.ClientSession() as s:
        for i in range(n + warmup):
            t0 = time.perf_counter()
            async with s.post(url + path, data=payload, headers={"Content-Type": "application/json"}) as r:
                await r.read()
                assert r.status == 200, r.status
            if i >= warmup:
                out.append(time.perf_counter() - t0)
    return out


async def throughput(url: str, concurrency: int, seconds: float) -> tuple[int, float]:
    """(calls completed, seconds taken) for `concurrency` closed-loop clients."""
    import aiohttp
    import orjson

    payload = orjson.dumps(BODY)
    done = 0
    deadline = time.perf_counter() + seconds

    async def client(s):
        nonlocal done
        while time.perf_counter() < deadline:
            async with s.post(url + "/v1/chat/completions", data=payload,
                              headers={"Content-Type": "application/json"}) as r:
                await r.read()
                assert r.status == 200
            done += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(s) for _ in range(concurrency)))
        return done, time.perf_counter() - t0


def pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100)[int(q) - 1] if len(xs) > 1 else xs[0]


def measure(targets: dict[str, str], args) -> dict[str, dict]:
    """Interleaved rounds over every target: latency per endpoint, then req/s."""
    per_round = max(args.requests // args.rounds, 1)
    lat = {name: {"chat": [], "generate": []} for name in targets}
    calls = {name: [0, 0.0] for name in targets}
    for r in range(args.rounds):
        for name, url in targets.items():
            warmup = WARMUP if r == 0 else 5
            lat[name]["chat"] += asyncio.run(latencies(url, "/v1/chat/completions", BODY, per_round, warmup))
            lat[name]["generate"] += asyncio.run(latencies(url, "/generate", GENERATE, per_round, warmup))
    for _ in range(args.rounds):
        for name, url in targets.items():
            n, took = asyncio.run(throughput(url, args.concurrency, args.seconds / args.rounds))
            calls[name][0] += n
            calls[name][1] += took
    return {name: {"p50": pct(lat[name]["chat"], 50) * 1e3, "p99": pct(lat[name]["chat"], 99) * 1e3,
                   "gen_p50": pct(lat[name]["generate"], 50) * 1e3, "rps": calls[name][0] / calls[name][1]}
            for name in targets}


def section(r: dict) -> str:
    d = r["rows"]["direct"]
    lines = [
        "## Gateway",
        "",
        f"`{r['command']}`, {r['when']}, {r['machine']}. Two fast fake workers (fixed JSON reply) so the gateway "
        f"is the bottleneck; non-streaming `/v1/chat/completions` with a {r['prompt_tokens']}-token prompt, and "
        f"`/generate` with the same prompt as text. kv_aware tokenizes ({r['hashing']}) and block-hashes every "
        "prompt; round_robin does not.",
        "",
        "| path | chat p50 ms | chat p99 ms | added p50 | added p99 | /generate added p50 | max req/s | "
        "req/s ratio |",
        "|---|---|---|---|---|---|---|---|",
        f"| direct to worker | {d['p50']:.2f} | {d['p99']:.2f} | – | – | – | {d['rps']:.0f} | 1.00× |",
    ]
    for name, row in r["rows"].items():
        if name == "direct":
            continue
        lines.append(f"| {name} | {row['p50']:.2f} | {row['p99']:.2f} | +{row['p50'] - d['p50']:.2f} | "
                     f"+{row['p99'] - d['p99']:.2f} | +{row['gen_p50'] - d['gen_p50']:.2f} | {row['rps']:.0f} | "
                     f"{row['rps'] / d['rps']:.2f}× |")
    added = r["rows"]["gateway, kv_aware"]["p50"] - d["p50"]
    lines += [
        "",
        f"Target ≤ 1 ms added at p50 (kv_aware): {'met' if added <= 1.0 else 'not met'} in this run "
        f"(+{added:.2f} ms). Latency: sequential calls, {WARMUP} warm-ups excluded; max req/s: "
        f"{r['concurrency']} closed-loop clients for {r['seconds']:.0f} s; both split into {r['rounds']} rounds "
        "that visit every row in turn. Load generator, gateways and workers share the cores.",
        "",
        "",  # a blank line before the next section
    ]
    return "\n".join(lines)


def checkout(rev: str) -> Path:
    """A copy of the tree at `rev` (git archive), for the baseline gateways."""
    out = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, stdout=subprocess.PIPE).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def start_gateway(root: Path, wurls: list[str], redis_url: str, policy: str, procs: list) -> str:
    from common.redis_server import free_port

    port = free_port()
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "gateway.main", "--port", str(port), "--worker-urls", *wurls, "--redis-url",
         redis_url, "--log-level", "warning", "--worker-concurrency", "1024", "--policy", policy],
        cwd=root, env={**os.environ, "PYTHONPATH": str(root)}))
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, procs[-1], timeout=60)
    return url


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--serve-fake", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--model-path", default="/nonexistent")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--baseline", default=None, help="also run the gateway of this git revision (e.g. HEAD)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    if args.serve_fake:
        serve_fake(args.serve_fake, args.model_path)
        return 0

    from common.redis_server import RedisServer, free_port
    from engine.model.prepare import default_model_dir, is_prepared

    model = default_model_dir()
    model_path = str(model) if is_prepared(model) else "/nonexistent"
    baseline_root = checkout(args.baseline) if args.baseline else None
    redis = RedisServer().start()
    procs: list[subprocess.Popen] = []
    try:
        wurls = []
        for _ in range(2):  # two workers, so kv_aware really tokenizes and hashes every prompt
            port = free_port()
            procs.append(subprocess.Popen([sys.executable, __file__, "--serve-fake", str(port), "--model-path",
                                           model_path]))
            wurls.append(f"http://127.0.0.1:{port}")
            wait_healthy(wurls[-1], procs[-1], timeout=60)
        targets = {"direct": wurls[0]}
        for policy in ("kv_aware", "round_robin"):
            targets[f"gateway, {policy}"] = start_gateway(ROOT, wurls, redis.url, policy, procs)
            if baseline_root is not None:
                targets[f"gateway at {args.baseline}, {policy}"] = start_gateway(
                    baseline_root, wurls, redis.url, policy, procs)
        time.sleep(1.5)  # the gateways load the tokenizer after their first probe
        rows = measure(targets, args)
    finally:
        for proc in reversed(procs):  # gateways first, so none sees its workers vanish
            proc.terminate()
            proc.wait(timeout=10)
        redis.stop()
        if baseline_root is not None:
            shutil.rmtree(baseline_root, ignore_errors=True)
    from common.tokenizer import Tokenizer

    prompt_tokens = "~130"
    if model_path != "/nonexistent":
        tok = Tokenizer(model_path)
        prompt_tokens = str(len(tok.encode(tok.apply_chat_template(BODY["messages"]))))
    command = "scripts/bench_gateway.py" + "".join(f" {a}" for a in sys.argv[1:] if a != "--no-write")
    result = {"when": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "prompt_tokens": prompt_tokens, "hashing": "model tokenizer" if model_path != "/nonexistent"
              else "byte fallback", "concurrency": args.concurrency, "seconds": args.seconds,
              "rounds": args.rounds, "command": command, "rows": rows}
    text = section(result)
    print(text)
    if not args.no_write:
        update_benchmarks_md("## Gateway", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
