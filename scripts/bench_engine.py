#!/usr/bin/env python
"""Engine benchmark: the agentgate engine vs HF transformers `generate`, same
weights, same dtype, same thread count, measured in one run.

Each system runs in its own subprocess (so peak RSS is its own):
  decode tok/s at batch 1 and batch 8 (short prompts), decode tok/s of 8 requests
  that share a 1,500-token prefix (as an agent's calls share a system prompt; each
  has its own 40-token tail), prefill tok/s (1,500-token prompt),
  TTFT cold vs warm for a 1,500-token shared prefix (agentgate only: HF has no
  cross-request cache, so its TTFT for the same prompt is the cold one), peak RSS.

Writes the table into BENCHMARKS.md (section "Engine") and a plot to
docs/bench_engine.png.

  .venv/bin/python scripts/bench_engine.py [--threads 2] [--new-tokens 64] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.benchlib import run_role, update_benchmarks_md  # noqa: E402

PREFIX_TOKENS = 1500
TAIL_TOKENS = 40
SHORT_PROMPT = 32
KV_POOL_GB = 0.5  # the engine's fixed KV pool, counted in its RSS (HF allocates per request)
SHARED_BATCH = 8
SHARED_REPS = 3  # at most: HF prefills all 8 prompts twice per repetition


def shared_prompts(corpus, rep: int) -> list[list[int]]:
    """SHARED_BATCH prompts: one PREFIX_TOKENS-token prefix, a different TAIL_TOKENS-token tail each."""
    prefix = corpus(PREFIX_TOKENS, 4000 + rep)
    return [prefix + corpus(TAIL_TOKENS, 5000 + 10 * rep + i) for i in range(SHARED_BATCH)]


def corpus_ids(tokenizer_encode, n: int, seed: int) -> list[int]:
    """n real-text token ids (the repo's own source as text), different per seed."""
    text = "\n".join(p.read_text() for p in sorted((ROOT / "engine").rglob("*.py")))
    ids = tokenizer_encode(text)
    start = (seed * 7919) % max(1, len(ids) - n - 1)
    return ids[start:start + n]


# -- agentgate -------------------------------------------------------------------------------------
def run_ours(args) -> dict:
    from engine.config import EngineConfig
    from engine.model.prepare import prepare_default_model
    from engine.request import Request, SamplingParams
    from engine.runtime.engine import Engine

    engine = Engine(EngineConfig(model_path=str(prepare_default_model()), dtype=args.dtype, threads=args.threads,
                                 kv_memory_gb=KV_POOL_GB, device=args.device, l3="none")).start()
    enc = engine.tokenizer.encode
    counter = iter(range(10**9))

    def generate(prompts: list[list[int]], new_tokens: int) -> list[dict]:
        """Submit all prompts at once; per request: TTFT, finish time, tokens."""
        done = threading.Event()
        results = [dict(ttft=None, end=None, tokens=0, cached=0) for _ in prompts]
        remaining = [len(prompts)]
        lock = threading.Lock()
        t0 = time.perf_counter()

        def sink_for(i):
            def sink(out):
                r = results[i]
                now = time.perf_counter() - t0
                if r["ttft"] is None and out.new_token_ids:
                    r["ttft"] = now
                r["tokens"] = out.completion_tokens
                r["cached"] = out.cached_tokens
                if out.finished:
                    r["end"] = now
                    with lock:
                        remaining[0] -= 1
                        if remaining[0] == 0:
                            done.set()
            return sink

        for i, p in enumerate(prompts):
            params = SamplingParams(max_new_tokens=new_tokens, temperature=0.0, ignore_eos=True)
            engine.submit(Request(rid=f"bench-{next(counter)}", prompt_ids=p, params=params, sink=sink_for(i)))
        done.wait()
        return results

    def flush():
        assert engine.call(engine.kv.flush).result()

    out = {"system": "agentgate", "dtype": str(engine.dtype).removeprefix("torch."), "threads": engine.threads,
           "matmul_plan": engine.plan.describe(), "device": device_name(args.device)}
    generate([corpus_ids(enc, SHORT_PROMPT, 99)], 8)  # warm-up
    for batch in (1, 8):
        rates = []
        for rep in range(args.reps):
            flush()
            res = generate([corpus_ids(enc, SHORT_PROMPT, 10 * rep + i) for i in range(batch)], args.new_tokens)
            # decode rate: tokens after each request's first, over the time after the last first token
            first = max(r["ttft"] for r in res)
            end = max(r["end"] for r in res)
            rates.append(sum(r["tokens"] - 1 for r in res) / (end - first))
        out[f"decode_b{batch}"] = statistics.median(rates)
        progress(f"agentgate decode batch {batch}: {out[f'decode_b{batch}']:.1f} tok/s")
    rates = []
    for rep in range(min(args.reps, SHARED_REPS)):
        flush()
        prompts = shared_prompts(lambda n, seed: corpus_ids(enc, n, seed), rep)
        generate([prompts[0][:PREFIX_TOKENS]], 1)  # the shared prefix is cached, as a system prompt would be
        res = generate(prompts, args.new_tokens)
        first = max(r["ttft"] for r in res)
        rates.append(sum(r["tokens"] - 1 for r in res) / (max(r["end"] for r in res) - first))
    out["decode_shared"] = statistics.median(rates)
    progress(f"agentgate decode, {SHARED_BATCH} sharing a {PREFIX_TOKENS}-token prefix: "
             f"{out['decode_shared']:.1f} tok/s")
    prefill, cold, warm = [], [], []
    for rep in range(args.reps):
        flush()
        prefix = corpus_ids(enc, PREFIX_TOKENS, 1000 + rep)
        tail_a, tail_b = corpus_ids(enc, TAIL_TOKENS, 2000 + rep), corpus_ids(enc, TAIL_TOKENS, 3000 + rep)
        r_cold = generate([prefix + tail_a], 1)[0]
        r_warm = generate([prefix + tail_b], 1)[0]
        assert r_cold["cached"] == 0 and r_warm["cached"] >= PREFIX_TOKENS - 16, (r_cold, r_warm)
        prefill.append((PREFIX_TOKENS + TAIL_TOKENS) / r_cold["ttft"])
        cold.append(r_cold["ttft"])
        warm.append(r_warm["ttft"])
    out.update(prefill=statistics.median(prefill), ttft_cold=statistics.median(cold),
               ttft_warm=statistics.median(warm))
    progress(f"agentgate prefill {out['prefill']:.0f} tok/s, TTFT cold {out['ttft_cold']:.2f}s "
             f"warm {out['ttft_warm']:.3f}s")
    engine.stop()
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


# -- HF transformers ---------------------------------------------------------------------------------
def run_hf(args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.config import choose_dtype
    from engine.model.prepare import prepare_default_model

    torch.set_num_threads(args.threads or os.cpu_count())
    path = str(prepare_default_model())
    dtype = choose_dtype(args.dtype, args.device)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(args.device).eval()
    tok = AutoTokenizer.from_pretrained(path)
    enc = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731

    def timed_generate(ids: torch.Tensor, new_tokens: int) -> float:
        ids = ids.to(args.device)
        t = time.perf_counter()
        with torch.inference_mode():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.eos_token_id)
        if args.device != "cpu":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    out = {"system": "HF transformers", "dtype": str(dtype).removeprefix("torch."), "threads": torch.get_num_threads()}
    timed_generate(torch.tensor([corpus_ids(enc, SHORT_PROMPT, 99)]), 8)  # warm-up
    for batch in (1, 8):
        rates = []
        for rep in range(args.reps):
            ids = torch.tensor([corpus_ids(enc, SHORT_PROMPT, 10 * rep + i) for i in range(batch)])
            t1 = timed_generate(ids, 1)  # prefill + first token
            tn = timed_generate(ids, args.new_tokens)
            rates.append(batch * (args.new_tokens - 1) / (tn - t1))
        out[f"decode_b{batch}"] = statistics.median(rates)
        progress(f"HF decode batch {batch}: {out[f'decode_b{batch}']:.1f} tok/s")
    rates = []
    for rep in range(min(args.reps, SHARED_REPS)):
        ids = torch.tensor(shared_prompts(lambda n, seed: corpus_ids(enc, n, seed), rep))
        t1 = timed_generate(ids, 1)
        tn = timed_generate(ids, args.new_tokens)
        rates.append(SHARED_BATCH * (args.new_tokens - 1) / (tn - t1))
    out["decode_shared"] = statistics.median(rates)
    progress(f"HF decode, {SHARED_BATCH} × {PREFIX_TOKENS + TAIL_TOKENS}-token prompts: "
             f"{out['decode_shared']:.1f} tok/s")
    prefill, cold = [], []
    for rep in range(args.reps):
        ids = torch.tensor([corpus_ids(enc, PREFIX_TOKENS, 1000 + rep) + corpus_ids(enc, TAIL_TOKENS, 2000 + rep)])
        t = timed_generate(ids, 1)
        prefill.append(ids.shape[1] / t)
        cold.append(t)
    out.update(prefill=statistics.median(prefill), ttft_cold=statistics.median(cold),
               ttft_warm=statistics.median(cold))
    progress(f"HF prefill {out['prefill']:.0f} tok/s, TTFT {out['ttft_cold']:.2f}s (no prefix cache)")
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores)"


def progress(msg: str) -> None:
    print(f"  · {msg}", file=sys.stderr, flush=True)


# -- report ------------------------------------------------------------------------------------------------
def heading(args) -> str:
    return "## Engine" if args.device == "cpu" else "## Engine on CUDA"


def write_report(ours: dict, hf: dict, args) -> str:
    rows = [
        ("decode tok/s, batch 1", "decode_b1", "{:.1f}", True),
        ("decode tok/s, batch 8", "decode_b8", "{:.1f}", True),
        (f"decode tok/s, {SHARED_BATCH} requests sharing a {PREFIX_TOKENS}-token prefix", "decode_shared", "{:.1f}",
         True),
        (f"prefill tok/s ({PREFIX_TOKENS + TAIL_TOKENS}-token prompt)", "prefill", "{:.0f}", True),
        (f"TTFT cold, {PREFIX_TOKENS}-token prefix + {TAIL_TOKENS} (s)", "ttft_cold", "{:.2f}", False),
        (f"TTFT warm, same prefix, new {TAIL_TOKENS}-token tail (s)", "ttft_warm", "{:.3f}", False),
        ("peak RSS (MB)", "peak_rss_mb", "{:.0f}", False),
    ]
    lines = [
        heading(args),
        "",
        f"`scripts/bench_engine.py --device {args.device} --threads {args.threads} --new-tokens {args.new_tokens} "
        f"--reps {args.reps}`, {time.strftime('%Y-%m-%d')}, {ours['device']}; dtype {ours['dtype']} for both; "
        f"agentgate matmul plan `{ours['matmul_plan']}`. "
        f"Greedy decoding, EOS ignored, medians of the repetitions; agentgate's KV pool {KV_POOL_GB} GiB.",
        "",
        "| metric | agentgate | HF transformers | ratio |",
        "|---|---|---|---|",
    ]
    for label, key, fmt, higher_better in rows:
        a, b = ours[key], hf[key]
        ratio = (a / b) if higher_better else (b / a)
        lines.append(f"| {label} | {fmt.format(a)} | {fmt.format(b)} | {ratio:.2f}× |")
    lines += [
        "",
        f"Warm/cold TTFT (agentgate, prefix reuse): **{ours['ttft_cold'] / ours['ttft_warm']:.1f}×** "
        f"(target ≥ 12×). Batch-8 decode vs HF: **{ours['decode_b8'] / hf['decode_b8']:.2f}×** (target ≥ 1.5×). "
        "Ratios are better-is-higher (for TTFT and RSS: HF ÷ agentgate). HF's warm TTFT equals its cold one: "
        "it keeps no KV across requests. "
        "Prefill is compute-bound on both sides: the same SDPA kernel, and HF's `generate` also computes logits "
        "for the last position only, so the margin there is only the GEMM layout. Single runs on a shared "
        "2-core machine vary: on 2026-12-02 (AVX-512, bf16) three runs within an hour measured HF's batch-8 "
        "decode at 174–206 tok/s and put agentgate at 0.94–1.54× of it; compare medians of several runs, not "
        "one. The engine's RSS includes its fixed KV pool.",
        "",
        f"![engine benchmark](docs/{plot_name(args)})",
        "",
    ]
    return "\n".join(lines)


def plot_name(args) -> str:
    return "bench_engine.png" if args.device == "cpu" else "bench_engine_cuda.png"


def plot(ours: dict, hf: dict, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    keys = [("decode_b1", "decode b1"), ("decode_b8", "decode b8"),
            ("decode_shared", f"b{SHARED_BATCH}, shared\nprefix")]
    ax = axes[0]
    xs = range(len(keys))
    ax.bar([x - 0.2 for x in xs], [ours[k] for k, _ in keys], 0.4, label="agentgate")
    ax.bar([x + 0.2 for x in xs], [hf[k] for k, _ in keys], 0.4, label="HF")
    ax.set_xticks(list(xs), [n for _, n in keys])
    ax.set_ylabel("tok/s")
    ax.set_title("decode throughput")
    ax.legend()
    ax = axes[1]
    ax.bar(["agentgate", "HF"], [ours["prefill"], hf["prefill"]], color=["C0", "C1"])
    ax.set_ylabel("tok/s")
    ax.set_title(f"prefill ({PREFIX_TOKENS + TAIL_TOKENS} tokens)")
    ax = axes[2]
    ax.bar(["agentgate\ncold", "agentgate\nwarm", "HF"], [ours["ttft_cold"], ours["ttft_warm"], hf["ttft_cold"]],
           color=["C0", "C2", "C1"])
    ax.set_ylabel("seconds")
    ax.set_title(f"TTFT, {PREFIX_TOKENS}-token shared prefix")
    fig.tight_layout()
    (ROOT / "docs").mkdir(exist_ok=True)
    fig.savefig(ROOT / "docs" / plot_name(args), dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda[:N] for the engine on a GPU (HF on the same)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--role", choices=["ours", "hf"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        result = run_ours(args) if args.role == "ours" else run_hf(args)
        print(json.dumps(result))
        return 0
    results = {}
    for role in ("ours", "hf"):
        print(f"[bench_engine] running {role} …", file=sys.stderr, flush=True)
        results[role] = run_role(__file__, role, ["--threads", str(args.threads), "--dtype", args.dtype,
                                                  "--device", args.device, "--new-tokens", str(args.new_tokens),
                                                  "--reps", str(args.reps)])
        if results[role] is None:
            return 1
    section = write_report(results["ours"], results["hf"], args)
    update_benchmarks_md(heading(args), section)
    plot(results["ours"], results["hf"], args)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
