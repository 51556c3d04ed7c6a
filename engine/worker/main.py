"""`agentgate worker`: parse flags (SGLang's names where SGLang has one), build
the Engine, serve the app until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time

from common.cliargs import HEADER_TIMEOUT_S, Parser, positive_float
from common.logconf import access_log_options, add_logging_args
from common.tracing import configure_process
from engine.worker.kv_publish import add_publish_args, setup_publishing


def add_worker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=30000, help="port to listen on")
    p.add_argument("--model-path", default=None,
                   help="a local Llama-family safetensors directory (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--served-model-name", default=None,
                   help="the model name in the API (default: the model directory's name)")
    p.add_argument("--api-key", default=os.environ.get("AGENTGATE_WORKER_API_KEY") or None,
                   help="as SGLang's: every route but /health, /health_generate and /ping needs "
                        "'Authorization: Bearer <key>' (default: $AGENTGATE_WORKER_API_KEY)")
    p.add_argument("--header-timeout", type=positive_float, default=HEADER_TIMEOUT_S,
                   help="seconds a client has to send a request's headers, counted from its connection or from "
                        "the previous response (aiohttp's keepalive_timeout: an idle keep-alive connection is "
                        "closed after it too)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="compute dtype; auto = bf16 only on CPUs with native bf16, else fp32")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for the model (0: OMP_NUM_THREADS if set, else this worker's share of the host's "
                        "cores: cores / --workers-per-host, or shared with the workers already running here)")
    p.add_argument("--workers-per-host", type=int, default=0,
                   help="how many workers share this host's cores (0: $AGENTGATE_WORKERS_PER_HOST, else counted "
                        "from the host registry); sets the default --threads")
    p.add_argument("--device", default="cpu", help="cpu (default), or cuda[:N]: the engine on a GPU (bf16 by default)")
    p.add_argument("--max-batch-tokens", "--chunked-prefill-size", dest="max_batch_tokens", type=int, default=0,
                   help="tokens per forward step (decode tokens + prefill chunks); 0 = 256 per CPU thread "
                        "(steps near 0.5 s; 2048 for a prefill alone in the engine), 2048 on a GPU")
    p.add_argument("--max-running-requests", type=int, default=64, help="requests decoding at once (more wait)")
    p.add_argument("--low-priority-chunk-tokens", type=int, default=128,
                   help="while a call of a higher priority (the request's `priority`, higher first) is present, "
                        "calls below it prefill at most this many tokens per step between them")
    p.add_argument("--max-total-tokens", "--kv-pool-tokens", dest="kv_pool_tokens", type=int, default=0,
                   help="KV pool size in tokens (0 = from --kv-memory-gb)")
    p.add_argument("--kv-memory-gb", type=float, default=2.0, help="KV pool size in GB when --max-total-tokens is 0")
    p.add_argument("--context-length", type=int, default=0, help="longest prompt + output (0 = the model's own)")
    p.add_argument("--disable-radix-cache", action="store_true", help="no prefix cache: every prompt is computed")
    p.add_argument("--incremental-streaming-output", "--stream-output", dest="incremental_streaming_output",
                   action="store_true", help="stream text/output_ids deltas instead of cumulative values")
    p.add_argument("--enable-cache-report", action="store_true", help="accepted for SGLang parity (always on)")
    p.add_argument("--enable-metrics", action="store_true", help="accepted for SGLang parity (always on)")
    p.add_argument("--speculative-algorithm", type=str.lower, default="none", choices=["none", "ngram"],
                   help="ngram: prompt-lookup drafts verified in one batched forward (exact in greedy fp32)")
    p.add_argument("--speculative-num-draft-tokens", type=int, default=8,
                   help="most draft tokens verified per request per step")
    p.add_argument("--matmul-backend", default="auto", choices=["auto", "numpy", "torch"],
                   help="CPU matmul kernels; auto = the faster one measured at start-up")
    p.add_argument("--tool-call-parser", default="auto",
                   choices=["auto", "smollm2", "qwen25", "qwen", "hermes", "llama3"],
                   help="how tool calls are written (SGLang's names); auto: from the chat template "
                        "(smollm2 for the embedded model)")
    tiers = p.add_argument_group("KV tiers, prefetch and pins")
    tiers.add_argument("--l2-blocks", type=int, default=-1,
                       help="host-RAM KV blocks (L2); -1 = twice the L1 pool, 0 = no L2")
    tiers.add_argument("--l2-write", choices=["back", "through"], default="back",
                       help="copy blocks to L2 when L1 evicts them (back) or as soon as they are cached (through)")
    tiers.add_argument("--l3", default=None,
                       help="shared KV store: dir:PATH or none (default: dir:<cache dir>/kv-l3)")
    tiers.add_argument("--l3-max-gb", type=float, default=8.0, help="size bound of the L3 store (LRU beyond it)")
    tiers.add_argument("--l3-write", choices=["through", "back"], default="through",
                       help="write blocks to L3 as soon as they are cached (through) or when L2 drops them (back)")
    tiers.add_argument("--max-pinned-fraction", type=float, default=0.5,
                       help="most of the L1 pool that pins may hold; a pin beyond it gets 409")
    tiers.add_argument("--prefetch-chunk-tokens", type=int, default=-1,
                       help="most prefetch tokens prefilled per step beside other requests' work (0: prefetches "
                            "compute only in steps that nothing else needs; -1: the device's default, 0 on a CPU "
                            "and 128 on a GPU)")
    p.add_argument("--random-seed", type=int, default=0, help="seed of sampling for requests without their own")
    p.add_argument("--step-trace", default="", metavar="FILE",
                   help="append one JSON line per engine step and per arriving request to FILE (engine/trace.py)")
    add_logging_args(p)
    add_publish_args(p)
    p.add_argument("--backend", choices=["agentgate", "sglang", "sim"], default="agentgate",
                   help="agentgate: the embedded CPU engine; sglang: launch an SGLang GPU server (engine/sglang); "
                        "sim: the embedded engine with a simulated GPU's step times (engine/sim)")
    p.add_argument("extra", nargs="*", help="after `--`: arguments passed to SGLang untouched (--backend sglang)")
    from engine.sglang.cli import add_sglang_args

    add_sglang_args(p)
    from engine.worker.sim_backend import add_sim_args

    add_sim_args(p)


def engine_config(args: argparse.Namespace):
    from engine.config import EngineConfig  # torch: only once a worker really starts

    model_path = args.model_path
    if model_path is None:
        from engine.model.prepare import prepare_default_model

        model_path = str(prepare_default_model())
    return EngineConfig(
        model_path=model_path, dtype=args.dtype, device=args.device, threads=args.threads, max_batch_tokens=args.max_batch_tokens,
        max_running_requests=args.max_running_requests, kv_pool_tokens=args.kv_pool_tokens,
        kv_memory_gb=args.kv_memory_gb, enable_prefix_cache=not args.disable_radix_cache,
        context_length=args.context_length, seed=args.random_seed, matmul_backend=args.matmul_backend,
        served_model_name=args.served_model_name or os.path.basename(model_path.rstrip("/")),
        speculative_algorithm=args.speculative_algorithm,
        speculative_num_draft_tokens=args.speculative_num_draft_tokens,
        l2_blocks=args.l2_blocks, l2_write_through=args.l2_write == "through", l3=_l3_spec(args.l3),
        l3_max_gb=args.l3_max_gb, l3_write_through=args.l3_write == "through",
        max_pinned_fraction=args.max_pinned_fraction, prefetch_chunk_tokens=args.prefetch_chunk_tokens,
        low_priority_chunk_tokens=args.low_priority_chunk_tokens, step_trace=args.step_trace,
    )


def _l3_spec(given: str | None) -> str:
    if given is not None:
        return given
    from engine.model.prepare import cache_dir

    return f"dir:{cache_dir() / 'kv-l3'}"


def run_worker(args: argparse.Namespace) -> int:
    if args.backend == "sglang":
        from engine.sglang.cli import run_sglang_worker

        return run_sglang_worker(args)
    if args.backend == "sim" and not args.extra:
        from engine.worker.sim_backend import run_sim_worker

        return run_sim_worker(args, engine_config(args))
    if args.extra:
        print(f"unexpected arguments {' '.join(args.extra)} (only --backend sglang takes extras)", file=sys.stderr)
        return 2
    from aiohttp import web

    from common.launch import server_loop
    from engine.hostshare import HostRegistry, choose_threads
    from engine.runtime.engine import Engine
    from engine.worker.host_threads import attach_host_share
    from engine.worker.server import create_app

    failed = configure_process(args.log_level, args.log_format, "agentgate worker", "agentgate-worker")
    if failed is not None:
        return failed
    log = logging.getLogger("agentgate.worker")
    cfg = engine_config(args)
    if cfg.max_batch_tokens < 0 or min(cfg.max_running_requests, cfg.speculative_num_draft_tokens,
                                       cfg.low_priority_chunk_tokens) < 1:
        print("--max-running-requests, --speculative-num-draft-tokens and --low-priority-chunk-tokens must be at "
              "least 1, --max-batch-tokens at least 0 (0 = the device's default)", file=sys.stderr)
        return 2
    if not 0 <= cfg.max_pinned_fraction <= 1 or cfg.prefetch_chunk_tokens < -1 or cfg.l3_max_gb <= 0:
        print("--max-pinned-fraction must be in [0, 1]; --prefetch-chunk-tokens must be at least -1 and "
              "--l3-max-gb positive", file=sys.stderr)
        return 2
    registry = HostRegistry()
    try:
        choice = choose_threads(args.threads, args.workers_per_host, registry=registry)
    except ValueError as exc:
        print(f"agentgate worker: {exc}", file=sys.stderr)
        return 2
    cfg = dataclasses.replace(cfg, threads=choice.threads)
    t0 = time.monotonic()
    try:
        engine = Engine(cfg)
    except ValueError as exc:  # a bad --device, --dtype, --l3 ...: say so, no traceback
        print(f"agentgate worker: {exc}", file=sys.stderr)
        return 2
    server_args = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    server_args.update(model_path=cfg.model_path, served_model_name=cfg.served_model_name,
                       page_size=cfg.block_size,
                       speculative_algorithm=None if cfg.speculative_algorithm == "none" else "NGRAM",
                       disable_radix_cache=not cfg.enable_prefix_cache, threads_source=choice.source)
    server_args.pop("api_key", None)  # never reported by /get_server_info
    app = create_app(engine, server_args, args.api_key)
    setup_publishing(app, engine, args)  # exits with a message when --redis-url does not answer
    attach_host_share(app, engine, registry, choice, args.port)
    app["started"] = time.time()
    log.info("engine ready in %.1fs: dtype=%s threads=%d (%s) matmul=%s kv_blocks=%d", time.monotonic() - t0,
             engine.dtype, engine.threads, choice.source, engine.plan.describe(), engine.pool.num_blocks)
    print(f"agentgate worker listening on http://{args.host}:{args.port}", flush=True)
    web.run_app(app, host=args.host, port=args.port, print=None, handler_cancellation=True,
                shutdown_timeout=5, keepalive_timeout=args.header_timeout, loop=server_loop(),
                **access_log_options(args.access_log))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="agentgate worker", description="SGLang-compatible CPU engine worker")
    add_worker_args(parser)
    return run_worker(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
