"""Grammar overhead per decode step: the same prompt decoded greedily at batch 1,
unconstrained and under a JSON Schema (xgrammar), in one run of one engine.

Reports the decode time per token of each (first token to last, so prefill is
excluded; the prompt is cached before either run) and, separately, what the
grammar itself costs per step (fill the bitmask, apply it to a [1, vocab] row,
accept the token), replayed over the constrained run's own tokens.

    .venv/bin/python scripts/bench_grammar.py [--tokens 48] [--repeats 3] [--no-write]

Writes the "## Grammar-constrained decoding" section of BENCHMARKS.md (unless --no-write),
with the machine's load average before and after the run (other processes on the same cores
make per-token times noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.benchlib import update_benchmarks_md  # noqa: E402

HEADING = "## Grammar-constrained decoding"

SCHEMA = {"type": "object",
          "properties": {"city": {"type": "string", "maxLength": 24}, "country": {"type": "string", "maxLength": 24},
                         "population": {"type": "integer"},
                         "districts": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 4}},
          "required": ["city", "country", "population", "districts"]}
PROMPT = ("<|im_start|>user\nDescribe Paris as a JSON record with city, country, population and four districts."
          "<|im_end|>\n<|im_start|>assistant\n")


def run(engine, prompt_ids, params) -> tuple[list[int], list[float]]:
    """(output ids, arrival time of each token) of one request."""
    from engine.request import Request

    stamps, ids, done = [], [], threading.Event()

    def sink(out):
        now = time.perf_counter()
        for tok in out.new_token_ids:
            ids.append(tok)
            stamps.append(now)
        if out.finished:
            done.set()

    engine.submit(Request(rid=f"bench-{time.monotonic_ns()}", prompt_ids=list(prompt_ids), params=params, sink=sink))
    assert done.wait(600)
    return ids, stamps


def per_token_ms(stamps: list[float]) -> float:
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1) * 1e3


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--matmul-backend", default="auto", choices=["auto", "numpy", "torch"],
                   help="the engine's matmul backend (auto probes at start-up, which takes long on a busy machine)")
    p.add_argument("--no-write", action="store_true", help="print the result, leave BENCHMARKS.md alone")
    args = p.parse_args()
    load_before = os.getloadavg()

    import torch

    from engine.config import EngineConfig
    from engine.grammar import Constraint
    from engine.model.prepare import prepare_default_model
    from engine.request import SamplingParams
    from engine.runtime.engine import Engine

    cfg = EngineConfig(model_path=str(prepare_default_model()), dtype="float32", threads=args.threads,
                       kv_memory_gb=0.25, matmul_backend=args.matmul_backend)
    engine = Engine(cfg).start()
    try:
        prompt = engine.tokenizer.encode(PROMPT)
        constraint = Constraint("json_schema", json.dumps(SCHEMA))
        engine.grammars.compile(constraint)
        run(engine, prompt, SamplingParams(max_new_tokens=1, temperature=0.0))  # cache the prompt
        free_ms, grammar_ms, n_tokens = [], [], 0
        for _ in range(args.repeats):
            ids, stamps = run(engine, prompt, SamplingParams(max_new_tokens=args.tokens, temperature=0.0,
                                                             constraint=constraint))
            grammar_ms.append(per_token_ms(stamps))
            n_tokens = len(ids)
            _, stamps = run(engine, prompt, SamplingParams(max_new_tokens=n_tokens, temperature=0.0,
                                                           ignore_eos=True))
            free_ms.append(per_token_ms(stamps))
        # the grammar's own work per step, replayed over the constrained output
        vocab = engine.model_config.vocab_size
        row = torch.zeros(1, vocab)
        costs = []
        for _ in range(args.repeats):
            state = engine.grammars.state(constraint)
            t0 = time.perf_counter()
            for tok in ids:
                state.mask(row)
                state.accept(tok)
            costs.append((time.perf_counter() - t0) / len(ids) * 1e3)
    finally:
        engine.stop()
    free, constrained, mask = statistics.median(free_ms), statistics.median(grammar_ms), statistics.median(costs)
    result = {"tokens": n_tokens, "repeats": args.repeats, "decode_ms_per_token_unconstrained": round(free, 2),
              "decode_ms_per_token_json_schema": round(constrained, 2),
              "overhead_ms_per_step": round(constrained - free, 2),
              "overhead_pct": round(100 * (constrained - free) / free, 1),
              "grammar_work_ms_per_step": round(mask, 3),
              "runs_ms_per_token": {"unconstrained": [round(x, 2) for x in free_ms],
                                    "json_schema": [round(x, 2) for x in grammar_ms]},
              "load_avg_1m": [round(load_before[0], 1), round(os.getloadavg()[0], 1)]}
    print(json.dumps(result, indent=1))
    if not args.no_write:
        update_benchmarks_md(HEADING, section(result, args))
        print(f"wrote the {HEADING!r} section of BENCHMARKS.md")
    return 0


def section(r: dict, args) -> str:
    """The BENCHMARKS.md section for one run's result."""
    cores = os.cpu_count()
    before, after = r["load_avg_1m"]
    noisy = (f" The machine was shared: its 1-minute load average was {before} before and {after} after the run "
             f"on {cores} cores, so other processes took turns on the cores and the per-token times are noisy; the "
             "grammar's own work (last column) is the steadier number." if max(before, after) > cores else
             f" 1-minute load average {before} before, {after} after ({cores} cores).")
    runs = r["runs_ms_per_token"]
    return (f"{HEADING}\n\n"
            f"`scripts/bench_grammar.py --tokens {args.tokens} --repeats {args.repeats} --threads {args.threads} "
            f"--matmul-backend {args.matmul_backend}`, "
            f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {cores} cores, fp32, greedy, batch 1, the prompt "
            "cached before either run. One engine decodes the same prompt unconstrained and under a JSON Schema "
            "(xgrammar's token bitmask in the sampler), the two runs taking turns; each row is the median of the "
            f"repeats (every run: unconstrained {runs['unconstrained']}, JSON Schema {runs['json_schema']} ms/token)."
            f"{noisy}\n\n"
            "| tokens | unconstrained ms/token | JSON Schema ms/token | overhead per step | "
            "grammar work per step (mask + apply + accept) |\n"
            "|---|---|---|---|---|\n"
            f"| {r['tokens']} | {r['decode_ms_per_token_unconstrained']} | {r['decode_ms_per_token_json_schema']} | "
            f"{r['overhead_ms_per_step']} ms ({r['overhead_pct']}%) | {r['grammar_work_ms_per_step']} ms |\n\n"
            "The overhead is the difference of the two decode times per token (first token to last); the grammar "
            "work is the constrained run's tokens replayed through the grammar alone: fill the bitmask, apply it to a "
            "[1, vocab] row of logits, accept the token.\n")


if __name__ == "__main__":
    sys.exit(main())
