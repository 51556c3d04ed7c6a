#!/usr/bin/env python
"""Speculative decoding benchmark: the same engine config with and without
n-gram speculation, on copy-heavy agent prompts (code edit, JSON rewrite,
quote-back) and on free-form chat. Greedy fp32, so both runs produce the same
tokens (checked); each config runs in its own subprocess.

Writes the "## Speculative decoding" section of BENCHMARKS.md and
docs/bench_spec.png.

  .venv/bin/python scripts/bench_spec.py [--threads 2] [--num-draft-tokens 8] [--max-new-tokens 256]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.benchlib import run_role, update_benchmarks_md  # noqa: E402


def chat(user: str, assistant_start: str = "") -> str:
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{assistant_start}"


def prompts() -> dict[str, list[str]]:
    """Prompt type -> prompts. Copy-heavy ones carry real repository text, as an
    agent's context would, and the assistant's answer is started the way a
    code-edit or quoting agent's usually is."""
    src = [(ROOT / p).read_text() for p in ("engine/kvcache/pool.py", "engine/kvcache/events.py",
                                            "engine/model/batch.py")]
    records = [json.dumps({"orders": [{"id": 1000 + i, "sku": f"SKU-{i:04d}", "qty": i % 5 + 1,
                                       "status": "shipped" if i % 3 else "pending"} for i in range(n)]}, indent=1)
               for n in (6, 8)]
    return {
        "code edit": [chat(f"Add a one-line comment above every method of this file and output the whole file:\n"
                           f"```python\n{s[:1600]}\n```", "```python\n" + s[:80]) for s in src[:2]],
        "JSON rewrite": [chat(f"The orders tool returned:\n{r}\nRewrite the JSON with \"qty\" renamed to "
                              f"\"quantity\". Output only the JSON.", r[:24]) for r in records],
        "quote-back": [chat(f"The search tool returned this passage:\n\n{s[:1200]}\n\nQuote the passage back "
                            f"verbatim, then say which file it is from.", "The passage reads:\n\n" + s[:40])
                       for s in src[1:]],
        "free-form chat": [chat("Write a short story about a dragon who learns to paint."),
                           chat("Give me five tips for staying focused while working from home.")],
    }


def run_config(args) -> dict:
    from engine.config import EngineConfig
    from engine.model.prepare import prepare_default_model
    from engine.request import Request, SamplingParams
    from engine.runtime.engine import Engine

    engine = Engine(EngineConfig(model_path=str(prepare_default_model()), dtype="float32", threads=args.threads,
                                 kv_memory_gb=0.5, speculative_algorithm=args.role,
                                 speculative_num_draft_tokens=args.num_draft_tokens)).start()
    counter = iter(range(10**9))

    def run(ids: list[int], max_new: int) -> dict:
        done, out, ids_seen = threading.Event(), {}, []

        def sink(o):
            ids_seen.extend(o.new_token_ids)
            if o.finished:
                out.update(tokens=o.completion_tokens, spec=o.spec or {})
                done.set()
        engine.submit(Request(rid=f"b{next(counter)}", prompt_ids=ids,
                              params=SamplingParams(max_new_tokens=max_new, temperature=0.0), sink=sink))
        done.wait()
        out["ids"] = ids_seen
        return out

    results = {}
    for kind, texts in prompts().items():
        rows = []
        for text in texts:
            ids = engine.tokenizer.encode(text)
            assert engine.call(engine.kv.flush).result()
            run(ids, 8)  # warm this prompt's prefix, so both configs time decode, not prefill
            t = time.perf_counter()
            r = run(ids, args.max_new_tokens)
            dt = time.perf_counter() - t
            per_step = r["spec"].get("spec_accept_length") or 1.0  # tokens per forward step
            rows.append({"tokens": r["tokens"], "seconds": dt, "ids": r["ids"], "steps": r["tokens"] / per_step,
                         "accepted": r["spec"].get("spec_accept_token_num", 0),
                         "proposed": r["spec"].get("spec_draft_token_num", 0)})
            print(f"  · {args.role:5s} {kind:15s} {r['tokens'] / dt:6.1f} tok/s", file=sys.stderr, flush=True)
        results[kind] = rows
    engine.stop()
    return results


NOTE = ('Why copy-heavy stays below 3×: on this CPU a verify step of 9 rows costs about 2.2–2.5× a one-row '
        'decode step (the one-row step is a bandwidth-bound GEMV, more rows a compute-bound GEMM; on a GPU the '
        'same verify costs about one step), and the 135M model copies verbatim for only the first ~100–170 '
        'tokens before it drifts, so proposals from the prompt stop matching. The draft length is chosen per '
        'request for the most expected tokens per unit of step cost (acceptance estimated from recent verifies; '
        'what extra rows add from the start-up matmul probe, weighed against the one-row step time the engine '
        'measures), so partly-copying text such as the code edit still gains and '
        'free-form chat, where no draft length pays, backs off exponentially (no regression).')


def report(plain: dict, spec: dict, args) -> str:
    lines = [
        "## Speculative decoding",
        "",
        f"`scripts/bench_spec.py --threads {args.threads} --num-draft-tokens {args.num_draft_tokens} "
        f"--max-new-tokens {args.max_new_tokens}`, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, fp32, "
        "greedy, batch 1, prefix warm in both runs. Same engine config; speculation = n-gram prompt lookup "
        "verified in one forward pass. Outputs were token-for-token identical in every case (checked).",
        "",
        "| prompt type | tokens | plain tok/s | ngram tok/s | speed-up | acceptance rate | tokens / step |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in plain:
        p, s = plain[kind], spec[kind]
        for a, b in zip(p, s):
            assert a["ids"] == b["ids"], f"{kind}: speculation changed the output"
        tokens = sum(r["tokens"] for r in p)
        rate_p = tokens / sum(r["seconds"] for r in p)
        rate_s = tokens / sum(r["seconds"] for r in s)
        proposed = sum(r["proposed"] for r in s)
        accepted = sum(r["accepted"] for r in s)
        acc = f"{accepted / proposed:.2f}" if proposed else "–"
        per_step = tokens / sum(r["steps"] for r in s)
        lines.append(f"| {kind} | {tokens} | {rate_p:.1f} | {rate_s:.1f} | **{rate_s / rate_p:.2f}×** | {acc} | "
                     f"{per_step:.2f} |")
    lines += ["", NOTE, "", "![speculative decoding](docs/bench_spec.png)", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--num-draft-tokens", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--role", choices=["none", "ngram"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        print(json.dumps(run_config(args)))
        return 0
    results = {}
    for role in ("none", "ngram"):
        print(f"[bench_spec] speculation {role} …", file=sys.stderr, flush=True)
        results[role] = run_role(__file__, role, ["--threads", str(args.threads), "--num-draft-tokens",
                                                  str(args.num_draft_tokens), "--max-new-tokens",
                                                  str(args.max_new_tokens)])
        if results[role] is None:
            return 1
    section = report(results["none"], results["ngram"], args)
    update_benchmarks_md("## Speculative decoding", section)
    plot(results["none"], results["ngram"])
    print(section)
    return 0


def plot(plain: dict, spec: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(plain)
    rate = lambda rows: sum(r["tokens"] for r in rows) / sum(r["seconds"] for r in rows)  # noqa: E731
    xs = range(len(kinds))
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.bar([x - 0.2 for x in xs], [rate(plain[k]) for k in kinds], 0.4, label="plain decode")
    ax.bar([x + 0.2 for x in xs], [rate(spec[k]) for k in kinds], 0.4, label="n-gram speculation")
    ax.set_xticks(list(xs), kinds)
    ax.set_ylabel("tok/s (batch 1)")
    ax.set_title("speculative decoding, same engine config")
    ax.legend()
    fig.tight_layout()
    (ROOT / "docs").mkdir(exist_ok=True)
    fig.savefig(ROOT / "docs" / "bench_spec.png", dpi=110)


if __name__ == "__main__":
    sys.exit(main())
