"""What the workers did, step by step, per configuration: read the step traces (engine/trace.py) that
`bench_workflows.py --trace-dir DIR` has the workers write, and compare the configurations.

For each configuration (its files DIR/CONFIG-workerN.jsonl): the calls that reached each worker (by the
node name in a gateway rid, or "call" for a client's own), and the forward steps by kind — decode-only,
prefill-only, mixed, and those that carried prefetch tokens — with their count, forward seconds, decode
rows and prompt tokens, and the rows per decode step. This is how the gateway path's extra engine work
against a client-driven router was found: the same tokens in more, smaller steps (calls of a ready set
reaching the workers staggered, shared prefixes spread over every worker, prefetch chunks in busy steps).

  .venv/bin/python scripts/step_trace_report.py DIR [--since SECONDS]

--since skips each configuration's first SECONDS (from its first traced event), e.g. a warm-up. Where
bench_workflows left DIR/CONFIG.start (the wall-clock time its cell's clock started, after any warm-up),
events before it are skipped too.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

KINDS = ("decode", "mixed", "prefill", "prefetch+decode", "prefetch")


def load(directory: Path) -> dict[str, dict[str, list[dict]]]:
    """{configuration: {worker: [events in time order]}} from DIR/CONFIG-workerN.jsonl."""
    out: dict[str, dict[str, list[dict]]] = defaultdict(dict)
    for path in sorted(directory.glob("*-worker*.jsonl")):
        config, _, worker = path.stem.rpartition("-")
        with open(path) as f:
            out[config][worker] = [json.loads(line) for line in f if line.strip()]
    return dict(out)


def step_kind(step: dict) -> str:
    if step["prefetch"] and not step["prefill"]:
        return "prefetch+decode" if step["decodes"] else "prefetch"
    if step["prefill"]:
        return "mixed" if step["decodes"] else "prefill"
    return "decode"


def call_name(rid: str) -> str:
    """A gateway rid is WORKFLOW.NODE.ATTEMPT; a prefetch's starts with 'prefetch'; anything else is a call."""
    if rid.startswith("prefetch"):
        return "prefetch"
    parts = rid.split(".")
    return parts[1] if len(parts) == 3 and parts[0].startswith("wf-") else "call"


def summarize(workers: dict[str, list[dict]], since: float = 0.0, start: float = 0.0) -> dict:
    start = max(start, min((e["t"] for events in workers.values() for e in events), default=0.0) + since)
    kinds: dict[str, list[float]] = {k: [0, 0.0, 0, 0] for k in KINDS}  # steps, seconds, decode rows, tokens
    arrivals: dict[str, Counter] = {}
    for worker, events in sorted(workers.items()):
        arrivals[worker] = Counter(call_name(e["rid"]) for e in events if e["ev"] == "arrive" and e["t"] >= start)
        for e in events:
            if e["ev"] != "step" or e["t"] < start:
                continue
            k = kinds[step_kind(e)]
            k[0] += 1
            k[1] += e["dt"]
            k[2] += sum(1 + d[2] for d in e["decodes"])
            k[3] += e["prefill"] + e["prefetch"]
    steps = sum(k[0] for k in kinds.values())
    decode_steps = sum(kinds[k][0] for k in ("decode", "mixed", "prefetch+decode"))
    rows = sum(k[2] for k in kinds.values())
    return {"steps": steps, "forward_s": sum(k[1] for k in kinds.values()), "decode_rows": rows,
            "rows_per_decode_step": rows / decode_steps if decode_steps else 0.0,
            "kinds": {k: v for k, v in kinds.items() if v[0]}, "arrivals": arrivals}


def overlap(workers: dict[str, list[dict]], start: float = 0.0) -> dict[str, list[float]]:
    """Steps that ran while another worker stepped (over half their time) against steps that ran alone:
    {"alone"|"together": [steps, seconds, decode-only steps, their seconds, their decode rows]}. Workers on
    one host share its memory: a decode step, which reads all the weights, takes longer together."""
    spans = {w: [(e["t"] - e["dt"], e["t"]) for e in events if e["ev"] == "step" and e["t"] >= start]
             for w, events in workers.items()}
    out = {"alone": [0, 0.0, 0, 0.0, 0], "together": [0, 0.0, 0, 0.0, 0]}
    for worker, events in workers.items():
        others = sorted(span for w, s in spans.items() if w != worker for span in s)
        for e in events:
            if e["ev"] != "step" or e["t"] < start:
                continue
            a, b = e["t"] - e["dt"], e["t"]
            shared = sum(max(0.0, min(b, d) - max(a, c)) for c, d in others if c < b and d > a)
            row = out["together" if shared > 0.5 * (b - a) else "alone"]
            row[0] += 1
            row[1] += e["dt"]
            if step_kind(e) == "decode":
                row[2] += 1
                row[3] += e["dt"]
                row[4] += sum(1 + d[2] for d in e["decodes"])
    return out


def render(configs: dict[str, dict], since: float = 0.0, starts: dict[str, float] | None = None) -> str:
    lines = []
    for config, workers in sorted(configs.items()):
        s = summarize(workers, since, (starts or {}).get(config, 0.0))
        lines += [f"{config}: {s['steps']} steps, {s['forward_s']:.2f} forward-s, {s['decode_rows']} decode rows "
                  f"({s['rows_per_decode_step']:.2f} per step that decodes)"]
        for kind, (n, sec, rows, tokens) in s["kinds"].items():
            lines.append(f"  {kind:16s} {n:5d} steps {sec:7.2f} s  {rows:5d} decode rows  {tokens:6d} prompt tokens")
        for worker, calls in s["arrivals"].items():
            lines.append(f"  {worker}: " + ", ".join(f"{name} {n}" for name, n in sorted(calls.items())))
        if len(workers) > 1:
            since_start = max((starts or {}).get(config, 0.0),
                              min((e["t"] for ev in workers.values() for e in ev), default=0.0) + since)
            for how, (n, sec, dn, dsec, drows) in overlap(workers, since_start).items():
                per = f", decode-only {dn} at {1000 * dsec / dn:.0f} ms ({drows / dn:.1f} rows)" if dn else ""
                lines.append(f"  steps {how:8s} {n:5d} {sec:7.2f} s{per}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dir", type=Path)
    p.add_argument("--since", type=float, default=0.0, help="skip each configuration's first SECONDS")
    args = p.parse_args(argv)
    configs = load(args.dir)
    if not configs:
        print(f"no step traces (*-workerN.jsonl) in {args.dir}", file=sys.stderr)
        return 1
    starts = {path.stem: float(path.read_text()) for path in args.dir.glob("*.start")}
    print(render(configs, args.since, starts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
