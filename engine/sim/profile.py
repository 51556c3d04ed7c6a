"""`agentgate profile`: measure the embedded CPU engine's step times into a timing table.

It runs the real engine in this process with a step trace (engine/trace.py) and a planned set of
requests: prompt chunks of several sizes after cached prefixes of several lengths, and decode
batches of several sizes at several contexts (the requests of a batch share their context's
prefix, as an agent's calls share a system prompt). Each grid point is the median of its steps.
`agentgate worker --backend sim --timing-table FILE` then takes its step times from the table
(scripts/fidelity_sim.py compares the two on one recorded workload).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from engine.sim.steptime import TABLE_FORMAT

GRID = {"prefill_tokens": (16, 64, 256, 512), "prefill_prefix": (0, 1024, 3072),
        "decode_rows": (1, 4, 16, 32), "decode_context": (128, 1024, 3072)}
QUICK_GRID = {"prefill_tokens": (16, 128), "prefill_prefix": (0, 512), "decode_rows": (1, 4),
              "decode_context": (128, 512)}
DECODE_STEPS = 8  # decode steps per measured batch
TAIL = 16  # each decoding request's own tokens after the shared context


def add_profile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="the timing table to write (JSON)")
    p.add_argument("--model-path", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    p.add_argument("--threads", type=int, default=2, help="CPU threads, as the workers it stands for run")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="weights' dtype (auto: from the CPU, as the worker chooses it)")
    p.add_argument("--repeats", type=int, default=3, help="measurements per grid point (the median is kept)")
    p.add_argument("--quick", action="store_true", help="a 2 x 2 grid per kind (a smoke run)")
    p.add_argument("--seed", type=int, default=0, help="seed of the measured prompts' tokens")


class Profiler:
    def __init__(self, engine, rng: random.Random):
        self.engine = engine
        self.rng = rng
        self.vocab = engine.model_config.vocab_size

    def ids(self, n: int) -> list[int]:
        return [self.rng.randrange(256, self.vocab) for _ in range(n)]

    def run(self, prompts: list[list[int]], new_tokens: int) -> list[str]:
        """Submit the prompts together, wait for all; their rids."""
        from engine.request import Request, SamplingParams

        done = threading.Semaphore(0)
        rids = [f"profile-{os.urandom(6).hex()}" for _ in prompts]

        def sink(out) -> None:
            if out.finished:
                done.release()

        for rid, p in zip(rids, prompts):
            self.engine.submit(Request(rid=rid, prompt_ids=p, sink=sink, params=SamplingParams(
                max_new_tokens=new_tokens, temperature=0.0, ignore_eos=True)))
        for _ in prompts:
            if not done.acquire(timeout=600):
                raise RuntimeError("a profiling request did not finish in 600 s")
        return rids


def plan(profiler: Profiler, grid: dict, repeats: int, advance) -> tuple[dict, dict]:
    """Run the grid; which request ids measure which point: ({(tokens, prefix): rids}, {(rows, ctx): rids})."""
    prefill: dict[tuple[int, int], list[str]] = {}
    for prefix in grid["prefill_prefix"]:
        base = profiler.ids(prefix)
        if prefix:
            profiler.run([base], 0)  # cached: the measured chunks come after it
        for n in grid["prefill_tokens"]:
            for _ in range(repeats):
                prefill.setdefault((n, prefix), []).extend(profiler.run([base + profiler.ids(n)], 1))
            advance()
    decode: dict[tuple[int, int], list[str]] = {}
    for ctx in grid["decode_context"]:
        base = profiler.ids(ctx - TAIL)
        profiler.run([base], 0)
        for rows in grid["decode_rows"]:
            for _ in range(repeats):
                decode.setdefault((rows, ctx), []).extend(
                    profiler.run([base + profiler.ids(TAIL) for _ in range(rows)], DECODE_STEPS))
            advance()
    return prefill, decode


def table_from_trace(steps: list[dict], prefill: dict, decode: dict, grid: dict, source: str) -> dict:
    """The table: each grid point the median step time of the steps its requests ran."""
    chunk_of = {rid: key for key, rids in prefill.items() for rid in rids}
    batch_of = {rid: key for key, rids in decode.items() for rid in rids}
    samples: dict[tuple, list[float]] = {}
    for s in steps:
        if len(s["chunks"]) == 1 and not s["decodes"]:
            rid, n, start = s["chunks"][0]
            key = chunk_of.get(rid)
            if key is not None and key == (n, start):
                samples.setdefault(("p", *key), []).append(s["dt"])
        elif s["decodes"] and not s["chunks"]:
            keys = {batch_of.get(rid) for rid, _, _ in s["decodes"]}
            if len(keys) == 1 and None not in keys:
                key = keys.pop()
                if len(s["decodes"]) == key[0]:  # the whole batch decoding (not its first or last stragglers)
                    samples.setdefault(("d", *key), []).append(s["dt"])

    def cell(*key) -> float:
        got = samples.get(key)
        if not got:
            raise RuntimeError(f"no step measured for {key}")
        return round(statistics.median(got), 6)

    table = {"format": TABLE_FORMAT, "source": source,
             "prefill": {"tokens": list(grid["prefill_tokens"]), "prefix": list(grid["prefill_prefix"]),
                         "seconds": [[cell("p", n, c) for c in grid["prefill_prefix"]]
                                     for n in grid["prefill_tokens"]]},
             "decode": {"rows": list(grid["decode_rows"]), "context": list(grid["decode_context"]),
                        "seconds": [[cell("d", r, c) for c in grid["decode_context"]] for r in grid["decode_rows"]]}}
    # what a step pays however little it computes (weights read, the step's host work): counted once in a
    # mixed step; the cheapest step measured stands for it
    table["shared_seconds"] = table["decode"]["seconds"][0][0]
    return table


def run_profile(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from engine.config import EngineConfig
    from engine.runtime.engine import Engine

    if args.repeats < 1 or args.threads < 1:
        print("agentgate profile: --repeats and --threads must be at least 1", file=sys.stderr)
        return 2
    model_path = args.model_path
    if model_path is None:
        from engine.model.prepare import prepare_default_model

        model_path = str(prepare_default_model())
    grid = QUICK_GRID if args.quick else GRID
    need = max(grid["prefill_prefix"]) + max(grid["prefill_tokens"]) + max(grid["decode_context"]) + \
        max(grid["decode_rows"]) * (TAIL + DECODE_STEPS + 16)
    with tempfile.TemporaryDirectory(prefix="agentgate-profile-") as tmp:
        trace = Path(tmp) / "steps.jsonl"
        engine = Engine(EngineConfig(model_path=model_path, dtype=args.dtype, threads=args.threads,
                                     kv_pool_tokens=2 * need, l3="none", l2_blocks=0, step_trace=str(trace))).start()
        try:
            profiler = Profiler(engine, random.Random(args.seed))
            profiler.run([profiler.ids(64)], 4)  # warm-up
            points = len(grid["prefill_tokens"]) * len(grid["prefill_prefix"]) + \
                len(grid["decode_rows"]) * len(grid["decode_context"])
            with Progress(transient=True) as progress:
                task = progress.add_task("profiling the embedded engine", total=points)
                prefill, decode = plan(profiler, grid, args.repeats, lambda: progress.advance(task))
            dtype, threads = str(engine.dtype).removeprefix("torch."), engine.threads
        finally:
            engine.stop()
        steps = [json.loads(line) for line in trace.read_text().splitlines()]
    steps = [s for s in steps if s.get("ev") == "step"]
    source = (f"agentgate profile: {Path(model_path).name} {dtype}, {threads} threads, {platform.machine()} "
              f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}")
    table = table_from_trace(steps, prefill, decode, grid, source)
    Path(args.out).write_text(json.dumps(table, indent=1) + "\n")
    print(f"wrote {args.out}: {source}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentgate profile", description=__doc__.split("\n\n")[0])
    add_profile_args(parser)
    return run_profile(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
