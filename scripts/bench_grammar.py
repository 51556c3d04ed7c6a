"""Grammar overhead per decode step: the same prompt decoded greedily at batch 1,
unconstrained and under a JSON Schema (xgrammar), in one run of one engine.

Reports the decode time per token of each (first token to last, so prefill is
excluded; the prompt is cached before either run) and, separately, what the
grammar itself costs per step (fill the bitmask, apply it to a [1, vocab] row,
accept the token), replayed over the constrained run's own tokens.

    .venv/bin/python scripts/bench_grammar.py [--tokens 48] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SCHEMA = {"type": "object",
          "properties": {"city": {"type": "string", "maxLength": 24}, "country": {"type": "string", "maxLength": 24},
                         "population": {"type": "integer"},
                         "districts": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 4}},
          "required": ["city", "country", "population", "districts"]}
PROMPT = ("<|im_start|>user\nDescribe Paris as a JSON record with city, country, population and four districts."
          "<|im_end|>\n<|im_start|>assistant\n")


def run(engine, prompt_ids, params) -> tuple[list[int], list[float]]:
    """(output ids, arrival time of each token) of one request."""
    from engine.scheduler.request import Request

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
    args = p.parse_args()

    import torch

    from engine.config import EngineConfig
    from engine.grammar import Constraint
    from engine.model.prepare import prepare_default_model
    from engine.runner import Engine
    from engine.scheduler.request import SamplingParams

    cfg = EngineConfig(model_path=str(prepare_default_model()), dtype="float32", threads=args.threads,
                       kv_memory_gb=0.25)
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
    print(json.dumps({"tokens": n_tokens, "repeats": args.repeats, "decode_ms_per_token_unconstrained": round(free, 2),
                      "decode_ms_per_token_json_schema": round(constrained, 2),
                      "overhead_ms_per_step": round(constrained - free, 2),
                      "overhead_pct": round(100 * (constrained - free) / free, 1),
                      "grammar_work_ms_per_step": round(mask, 3)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
