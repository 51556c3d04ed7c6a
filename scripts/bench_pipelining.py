"""Token-level pipelining on this CPU: does prefilling a downstream prompt while its upstream
still streams pay off?

One chain, run many times: `a` writes --a-tokens tokens (ignore_eos), `b`'s prompt is a unique
system prompt followed by "Summarize: {{a}}" (so its prompt grows by a's whole output), b writes
--b-tokens. The same gateway (full agent awareness: prediction, prefetch, pins) runs it with the
workflow option token_pipelining on and off, alternating, over 1 and 2 workers. Reported per
setting, medians over the runs:

- b's TTFT after a finished (b's first token − a's finish): what pipelining can shorten;
- a's decode time: what the incremental prefill may slow (it shares the CPU);
- makespan (submission → b finished) — the number that decides the default;
- b's cached_tokens and the prefetch requests sent for b.

  .venv/bin/python scripts/bench_pipelining.py              # writes "## Token pipelining" to BENCHMARKS.md
  .venv/bin/python scripts/bench_pipelining.py --runs 3 --no-write
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.benchlib import update_benchmarks_md  # noqa: E402

HEADING = "## Token pipelining"


async def one_chain(gw, pipelining: bool, a_tokens: int, b_tokens: int) -> dict:
    system = (f"[{uuid.uuid4().hex}] You are a careful assistant inside an agent workflow. Answer in one short "
              "sentence and use plain words. ") * 3
    wf = await gw.submit({"options": {"token_pipelining": pipelining}, "nodes": [
        {"id": "a", "max_tokens": a_tokens, "ignore_eos": True, "temperature": 0,
         "messages": [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]},
        {"id": "b", "max_tokens": b_tokens, "temperature": 0,
         "messages": [{"role": "system", "content": system}, {"role": "user", "content": "Summarize: {{a}}"}]}]})
    body = await gw.wait(wf, timeout=600)
    assert body["status"] == "finished", body
    a, b = body["nodes"]["a"], body["nodes"]["b"]
    b_first = b["timings"]["started"] + b["timings"]["ttft_s"]
    return {"b_ttft_after_a": b_first - a["timings"]["finished"],
            "a_decode": a["timings"]["duration_s"] - a["timings"]["ttft_s"],
            "makespan": b["timings"]["finished"] - body["created"],
            "b_cached": b["usage"]["prompt_tokens_details"]["cached_tokens"],
            "b_prompt": b["usage"]["prompt_tokens"],
            "b_prefetches": (b["prefetch"] or {}).get("prefetches", 0)}


async def measure(worker_urls: list[str], redis_url: str, runs: int, a_tokens: int, b_tokens: int,
                  blocks: int) -> dict:
    from gateway.config import GatewayConfig
    from tests.gateway.support import GatewayHandle

    # The gateway's own defaults (leases, health periods): a loaded machine must not cost it its leases.
    gw = await GatewayHandle(GatewayConfig(worker_urls=tuple(worker_urls), redis_url=redis_url,
                                           key_prefix="bp" + uuid.uuid4().hex[:6], token_pipelining="auto",
                                           token_pipelining_blocks=blocks)).start()
    try:
        deadline = time.monotonic() + 60
        while not gw.app[_hasher_key()].tokenizer:
            assert time.monotonic() < deadline, "the gateway never loaded the workers' tokenizer"
            await asyncio.sleep(0.1)
        await one_chain(gw, False, 8, 2)  # warm-up
        results: dict[bool, list[dict]] = {True: [], False: []}
        for i in range(runs):
            for pipelining in ((True, False) if i % 2 else (False, True)):
                results[pipelining].append(await one_chain(gw, pipelining, a_tokens, b_tokens))
                print(f"  run {i} pipelining={pipelining}: {results[pipelining][-1]}", flush=True)
        return {p: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for p, rs in results.items()}
    finally:
        await gw.stop()


def _hasher_key():
    from gateway.keys import HASHER

    return HASHER


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=6)
    p.add_argument("--a-tokens", type=int, default=128)
    p.add_argument("--b-tokens", type=int, default=8)
    p.add_argument("--threads", type=int, default=0, help="threads per worker (0: the cores shared among them)")
    p.add_argument("--workers", default="1,2", help="worker counts to measure")
    p.add_argument("--blocks", default="2", help="token_pipelining_blocks values to measure (comma-separated)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()

    from common.redis_server import RedisServer
    from engine.model.prepare import prepare_default_model
    from tests.support import start_worker, stop_worker

    model_dir = prepare_default_model()
    redis = RedisServer().start()
    rows = []
    try:
        for n in (int(x) for x in args.workers.split(",")):
            log_dir = Path(tempfile.mkdtemp(prefix="bench_pipelining_"))
            workers = []
            try:
                threads = args.threads or max(1, (os.cpu_count() or 1) // n)
                for _ in range(n):
                    workers.append(start_worker(model_dir, log_dir, "--threads", str(threads), "--l3", "none"))
                for blocks in (int(x) for x in args.blocks.split(",")):
                    print(f"{n} worker(s), re-plan every {blocks} blocks:", flush=True)
                    med = asyncio.run(measure([w.url for w in workers], redis.url, args.runs, args.a_tokens,
                                              args.b_tokens, blocks))
                    rows.append((n, blocks, med))
            finally:
                for w in workers:
                    stop_worker(w)
    finally:
        redis.stop()

    lines = [HEADING, "",
             f"`scripts/bench_pipelining.py --runs {args.runs} --a-tokens {args.a_tokens} --b-tokens {args.b_tokens} "
             f"--threads {args.threads} --workers {args.workers} --blocks {args.blocks}` (threads 0: cores / "
             f"workers) on {platform.machine()} ({platform.processor() or 'cpu'}), medians of "
             f"{args.runs} runs per cell, on and off alternating. Chain a → b: a writes {args.a_tokens} tokens; "
             "b's prompt is a unique system prompt + \"Summarize: {{a}}\". Prediction/prefetch/pins on in both.", "",
             "| workers | every (blocks) | pipelining | b TTFT after a (s) | a decode (s) | makespan (s) "
             "| b cached / prompt tokens | prefetches for b |",
             "|---|---|---|---|---|---|---|---|"]
    for n, blocks, med in rows:
        for pipelining in (False, True):
            m = med[pipelining]
            lines.append(f"| {n} | {blocks} | {'on' if pipelining else 'off'} | {m['b_ttft_after_a']:.3f} "
                         f"| {m['a_decode']:.2f} | {m['makespan']:.2f} | {m['b_cached']:.0f} / {m['b_prompt']:.0f} "
                         f"| {m['b_prefetches']:.0f} |")
        on, off = med[True], med[False]
        lines.append(f"| {n} | {blocks} | ratio off/on "
                     f"| {off['b_ttft_after_a'] / max(on['b_ttft_after_a'], 1e-9):.2f}× "
                     f"| {off['a_decode'] / max(on['a_decode'], 1e-9):.2f}× "
                     f"| {off['makespan'] / max(on['makespan'], 1e-9):.2f}× | | |")
    section = "\n".join(lines) + "\n"
    print(section)
    if not args.no_write:
        update_benchmarks_md(HEADING, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
