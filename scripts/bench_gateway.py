"""Gateway overhead: added latency (p50/p99) and max req/s of the gateway vs calling
the worker directly, with a fast fake worker so that the gateway is the bottleneck.

One run: two fake workers (this script with --serve-fake), two gateways
(`python -m gateway.main`, kv_aware and round_robin, the real tokenizer when the
embedded model is prepared) and the load generator (here). Latency: sequential
non-streaming chat calls; throughput: a closed loop of --concurrency clients for
--seconds. Writes a "## Gateway" section into BENCHMARKS.md (other sections untouched).

  .venv/bin/python scripts/bench_gateway.py [--requests 2000] [--concurrency 32] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.launch import wait_healthy  # noqa: E402
from scripts.benchlib import update_benchmarks_md  # noqa: E402

BODY = {"model": "fake", "max_tokens": 8, "messages": [
    {"role": "system", "content": "You are a helpful agent. " * 20}, {"role": "user", "content": "ping"}]}
REPLY = {"id": "chatcmpl-x", "object": "chat.completion", "created": 0, "model": "fake",
         "choices": [{"index": 0, "message": {"role": "assistant", "content": "pong"}, "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11,
                   "prompt_tokens_details": {"cached_tokens": 0}}}


# -- the fake worker ---------------------------------------------------------------------------------
def serve_fake(port: int, model_path: str) -> None:
    import orjson
    from aiohttp import web

    reply = orjson.dumps(REPLY)

    async def chat(request):
        await request.read()
        return web.Response(body=reply, content_type="application/json")

    app = web.Application()
    app.router.add_get("/health", lambda r: web.Response())
    app.router.add_get("/get_load", lambda r: web.json_response([{"num_reqs": 0, "num_waiting_reqs": 0}]))
    app.router.add_get("/get_model_info", lambda r: web.json_response({"model_path": model_path}))
    app.router.add_get("/get_server_info", lambda r: web.json_response({"page_size": 16}))
    app.router.add_post("/v1/chat/completions", chat)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# -- load ------------------------------------------------------------------------------------------------
async def latencies(url: str, n: int) -> list[float]:
    import aiohttp
    import orjson

    payload = orjson.dumps(BODY)
    out = []
    async with aiohttp.ClientSession() as s:
        for i in range(n + 50):
            t0 = time.perf_counter()
            async with s.post(url + "/v1/chat/completions", data=payload,
                              headers={"Content-Type": "application/json"}) as r:
                await r.read()
                assert r.status == 200, r.status
            if i >= 50:  # warm-up excluded
                out.append(time.perf_counter() - t0)
    return out


async def throughput(url: str, concurrency: int, seconds: float) -> float:
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
        return done / (time.perf_counter() - t0)


def pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100)[int(q) - 1] if len(xs) > 1 else xs[0]


def section(r: dict) -> str:
    d50, d99, drps = r["rows"]["direct"]
    lines = [
        "## Gateway",
        "",
        f"`scripts/bench_gateway.py`, {r['when']}, {r['machine']}. Two fast fake workers (fixed JSON reply) "
        f"so the gateway is the bottleneck; non-streaming `/v1/chat/completions` with a {r['prompt_tokens']}-token "
        f"prompt. kv_aware tokenizes ({r['hashing']}) and block-hashes every prompt; round_robin does not.",
        "",
        "| path | p50 ms | p99 ms | added p50 | added p99 | max req/s | req/s ratio |",
        "|---|---|---|---|---|---|---|",
        f"| direct to worker | {d50:.2f} | {d99:.2f} | – | – | {drps:.0f} | 1.00× |",
    ]
    for name in ("kv_aware", "round_robin"):
        p50, p99, rps = r["rows"][name]
        lines.append(f"| gateway, {name} | {p50:.2f} | {p99:.2f} | +{p50 - d50:.2f} | +{p99 - d99:.2f} | "
                     f"{rps:.0f} | {rps / drps:.2f}× |")
    added = r["rows"]["kv_aware"][0] - d50
    lines += [
        "",
        f"Target ≤ 1 ms added at p50 (kv_aware): {'met' if added <= 1.0 else 'not met'} in this run "
        f"(+{added:.2f} ms). Latency: sequential calls, 50 warm-ups excluded; max req/s: {r['concurrency']} "
        f"closed-loop clients for {r['seconds']:.0f} s. Load generator, gateway and workers share the cores.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--serve-fake", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--model-path", default="/nonexistent")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    if args.serve_fake:
        serve_fake(args.serve_fake, args.model_path)
        return 0

    from engine.model.prepare import default_model_dir, is_prepared
    from engine.redis_server import RedisServer, free_port

    model = default_model_dir()
    model_path = str(model) if is_prepared(model) else "/nonexistent"
    redis = RedisServer().start()
    procs = []
    try:
        wurls = []
        for _ in range(2):  # two workers, so kv_aware really tokenizes and hashes every prompt
            port = free_port()
            procs.append(subprocess.Popen([sys.executable, __file__, "--serve-fake", str(port), "--model-path",
                                           model_path]))
            wurls.append(f"http://127.0.0.1:{port}")
            wait_healthy(wurls[-1], procs[-1], timeout=60)
        gurls = {}
        for policy in ("kv_aware", "round_robin"):
            port = free_port()
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "gateway.main", "--port", str(port), "--worker-urls", *wurls, "--redis-url",
                 redis.url, "--log-level", "warning", "--worker-concurrency", "1024", "--policy", policy],
                cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}))
            gurls[policy] = f"http://127.0.0.1:{port}"
            wait_healthy(gurls[policy], procs[-1], timeout=60)
        time.sleep(1.5)  # the gateways load the tokenizer after their first probe
        lat = {"direct": asyncio.run(latencies(wurls[0], args.requests))}
        rps = {"direct": asyncio.run(throughput(wurls[0], args.concurrency, args.seconds))}
        for policy, url in gurls.items():
            lat[policy] = asyncio.run(latencies(url, args.requests))
            rps[policy] = asyncio.run(throughput(url, args.concurrency, args.seconds))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
        redis.stop()
    from engine.tokenizer import Tokenizer

    prompt_tokens = "~130"
    if model_path != "/nonexistent":
        tok = Tokenizer(model_path)
        prompt_tokens = str(len(tok.encode(tok.apply_chat_template(BODY["messages"]))))
    result = {"when": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "prompt_tokens": prompt_tokens, "hashing": "model tokenizer" if model_path != "/nonexistent"
              else "byte fallback", "concurrency": args.concurrency, "seconds": args.seconds,
              "rows": {k: (pct(v, 50) * 1e3, pct(v, 99) * 1e3, rps[k]) for k, v in lat.items()}}
    text = section(result)
    print(text)
    if not args.no_write:
        update_benchmarks_md("## Gateway", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
