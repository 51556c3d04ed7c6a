"""`agentgate worker --backend sim`: flags, and building a SimEngine and its app from them."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time

from engine.sim.hardware import (
    DEFAULT_STORAGE_GBPS,
    GPUS,
    MODELS,
    kv_capacity_tokens,
    lookup,
)

SIM_STEP_TOKENS = 8192  # SGLang's chunked prefill size on an 80 GB-class GPU
SIM_PREFETCH_CHUNK_TOKENS = 128  # as on a GPU (engine/config.py)


def add_sim_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("simulated GPU worker (--backend sim)")
    g.add_argument("--gpu", default="h100_sxm", choices=sorted(GPUS), help="the GPU simulated")
    g.add_argument("--model", dest="sim_model", default="Qwen/Qwen3-8B", choices=sorted(MODELS),
                   help="the model simulated (its step times, KV bytes per token and weights); prompts are "
                        "tokenized with the embedded tokenizer")
    g.add_argument("--tp", type=int, default=1, help="GPUs per worker (tensor parallel)")
    g.add_argument("--speedup", type=float, default=1.0,
                   help="run simulated time this many times faster than real time (<1: slower, to fit many "
                        "workers on few cores)")
    g.add_argument("--kv-blocks", type=int, default=0,
                   help="KV pool size in blocks (0: the GPU's memory less weights, at the model's KV bytes per token)")
    g.add_argument("--block-size", type=int, default=16, help="tokens per KV block")
    g.add_argument("--timing-table", default=None, metavar="FILE",
                   help="step times from this measured table (agentgate profile) instead of aiconfigurator-core")
    g.add_argument("--step-defaults", choices=["gpu", "cpu"], default="gpu",
                   help="the scheduler's step sizes where not given: gpu (8192-token steps, 128-token prefetch "
                        "chunks beside other work) or cpu (the embedded CPU engine's, for a table it measured)")
    g.add_argument("--storage-gbps", type=float, default=DEFAULT_STORAGE_GBPS,
                   help="L3 read bandwidth in GB/s (L2 copies run at the GPU's PCIe bandwidth)")


def sim_spec(args: argparse.Namespace):
    from engine.sim.engine import SimSpec
    from engine.sim.steptime import AicStepModel, TableStepModel

    if args.tp < 1 or args.speedup <= 0 or args.kv_blocks < 0 or args.block_size < 1 or args.storage_gbps <= 0:
        raise ValueError("--tp and --block-size must be at least 1, --speedup and --storage-gbps positive, "
                         "--kv-blocks at least 0")
    gpu, model = lookup(args.gpu, args.sim_model)
    if args.timing_table:
        step_model = TableStepModel.load(args.timing_table)
    else:
        try:
            step_model = AicStepModel(model.perf_name, gpu.name, args.tp)
        except ImportError:
            raise ValueError("aiconfigurator-core is not installed: pip install 'agentgate[sim]', "
                             "or give --timing-table") from None
    return SimSpec(gpu, model, args.tp, step_model, args.speedup, args.storage_gbps * 1e9)


def sim_engine_config(args: argparse.Namespace, spec, cfg):
    """`cfg` (the worker flags' EngineConfig) sized and shaped for the simulated GPU and model."""
    tokens = args.kv_blocks * args.block_size if args.kv_blocks else kv_capacity_tokens(spec.gpu, spec.model, spec.tp)
    cfg = dataclasses.replace(cfg, block_size=args.block_size, kv_pool_tokens=tokens)
    if args.step_defaults == "gpu":
        cfg = dataclasses.replace(cfg, threads=1, max_batch_tokens=cfg.max_batch_tokens or SIM_STEP_TOKENS,
                                  prefetch_chunk_tokens=SIM_PREFETCH_CHUNK_TOKENS if cfg.prefetch_chunk_tokens < 0
                                  else cfg.prefetch_chunk_tokens)
    return dataclasses.replace(
        cfg,
        context_length=cfg.context_length or spec.model.context_length,
        served_model_name=args.served_model_name or spec.model.name)


def build_sim_app(args: argparse.Namespace, base_cfg, spec=None):
    """A SimEngine and its HTTP app (KV events published when args.redis_url is set); `base_cfg` is the
    EngineConfig the worker flags give (engine/worker/main.py:engine_config)."""
    from engine.sim.engine import SimEngine
    from engine.worker.kv_publish import setup_publishing
    from engine.worker.server import create_app

    spec = spec or sim_spec(args)
    cfg = sim_engine_config(args, spec, base_cfg)
    engine = SimEngine(cfg, spec)
    server_args = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    server_args.update(model_path=cfg.model_path, served_model_name=cfg.served_model_name, page_size=cfg.block_size,
                       speculative_algorithm=None if cfg.speculative_algorithm == "none" else "NGRAM",
                       disable_radix_cache=not cfg.enable_prefix_cache)
    app = create_app(engine, server_args)
    setup_publishing(app, engine, args)
    return engine, app


def run_sim_worker(args: argparse.Namespace, base_cfg) -> int:
    from aiohttp import web

    from common.launch import server_loop

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    t0 = time.monotonic()
    try:
        engine, app = build_sim_app(args, base_cfg)
    except ValueError as exc:
        print(f"agentgate worker: {exc}", file=sys.stderr)
        return 2
    logging.getLogger("agentgate.worker").info(
        "sim worker ready in %.1fs: %s x%d %s, %d KV blocks of %d, %s", time.monotonic() - t0, engine.sim.gpu.name,
        engine.sim.tp, engine.sim.model.name, engine.pool.num_blocks, engine.pool.block_size, engine.plan.describe())
    print(f"agentgate worker listening on http://{args.host}:{args.port}", flush=True)
    web.run_app(app, host=args.host, port=args.port, print=None, handler_cancellation=True,
                access_log=None, shutdown_timeout=5, keepalive_timeout=args.header_timeout, loop=server_loop())
    return 0
