"""The engine's step trace (--step-trace, engine/trace.py): one line per arriving request and per
forward step, saying what the step ran, so two ways of driving the same workers can be compared."""

from __future__ import annotations

import json

from tests.support import generate, greedy


def test_every_arrival_and_step_is_traced_with_what_it_ran(make_engine, tokenizer, tmp_path):
    path = tmp_path / "steps.jsonl"
    engine = make_engine(step_trace=str(path), max_batch_tokens=64)
    prompts = [tokenizer.encode("Name three colours of the rainbow."), tokenizer.encode("Count from one to five.")]
    outs = generate(engine, prompts, greedy(6, ignore_eos=True))
    engine.stop()  # joins the engine thread: a step still being recorded when the outputs came is counted
    steps_counted = engine.stats.steps
    events = [json.loads(line) for line in path.read_text().splitlines()]
    arrivals = [e for e in events if e["ev"] == "arrive"]
    steps = [e for e in events if e["ev"] == "step"]
    assert sorted(e["prompt"] for e in arrivals) == sorted(len(p) for p in prompts)
    assert all(e["priority"] == 0 and e["background"] is False for e in arrivals)
    assert len(steps) == steps_counted
    # every prompt token was prefilled in some step's chunk, and each request decoded its tokens after the first
    assert sum(e["prefill"] for e in steps) == sum(len(p) for p in prompts)
    chunked = {}
    for e in steps:
        for rid, n, start in e["chunks"]:
            assert start == chunked.get(rid, 0)  # chunks follow each other
            chunked[rid] = start + n
    assert sorted(chunked.values()) == sorted(len(p) for p in prompts)
    assert sum(len(e["decodes"]) for e in steps) == sum(len(o.output_ids) - 1 for o in outs)
    assert all(e["dt"] > 0 and e["rows"] == e["prefill"] + sum(1 + d[2] for d in e["decodes"]) for e in steps)
