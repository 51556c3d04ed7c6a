"""`agentgate worker --backend sglang`: the flags, and from them a running SGLang worker.

Of the embedded worker's flags these carry over: --host --port --model-path
(required here) --served-model-name --context-length --dtype
--disable-radix-cache --log-level, and --speculative-algorithm ngram with
--speculative-num-draft-tokens (SGLang's NGRAM). The CPU engine's tuning flags
(threads, pool size, matmul backend, tiers) do not apply. Everything else goes
to SGLang untouched after `--`, e.g. `-- --tp-size 2 --mem-fraction-static 0.8
--speculative-algorithm EAGLE3 --speculative-draft-model-path ...`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from common.redis_server import free_port


def add_sglang_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("SGLang backend (--backend sglang)")
    g.add_argument("--sglang-python", default=None,
                   help="python of the environment where sglang is installed (default: this one)")
    g.add_argument("--sglang-no-hicache", action="store_true",
                   help="no hierarchical cache (no host-memory L2 on the SGLang worker)")
    g.add_argument("--sglang-hicache-size", type=int, default=0,
                   help="GB of host memory for the L2 (0 = SGLang's default, a multiple of the GPU pool)")
    g.add_argument("--sglang-hicache-write-policy", default=None,
                   choices=["write_back", "write_through", "write_through_selective"],
                   help="when SGLang copies KV to its L2 (default: SGLang's own)")
    g.add_argument("--sglang-l3", default=None,
                   help="L3 behind the L2: file:/shared/dir, or a HiCache storage backend name[:JSON extra config]")
    g.add_argument("--sglang-no-priority", action="store_true",
                   help="leave SGLang's priority scheduling off (prefetches then compete with calls)")
    g.add_argument("--sglang-events-port", type=int, default=0,
                   help="loopback port base for SGLang's KV event publisher (0 = free ports)")
    g.add_argument("--sglang-startup-timeout", type=float, default=1800.0,
                   help="seconds to wait for SGLang's /health (model loading, CUDA graph capture)")


def options_from_args(args: argparse.Namespace):
    from engine.sglang.args import (
        L3Config,
        LaunchConfigError,
        SGLangOptions,
        dp_size_of,
    )

    if not args.model_path:
        raise LaunchConfigError("--backend sglang needs --model-path (a Hugging Face id or a local directory)")
    extra = tuple(args.extra) + (("--api-key", args.api_key) if getattr(args, "api_key", None) else ())
    dp = dp_size_of(extra)
    events_port = args.sglang_events_port or free_port_range(2 * dp)
    spec = getattr(args, "speculative_algorithm", "none")
    return SGLangOptions(
        model_path=args.model_path, host=args.host, port=args.port, served_model_name=args.served_model_name,
        context_length=args.context_length, dtype=args.dtype, log_level=args.log_level,
        disable_radix_cache=args.disable_radix_cache, events_port=events_port, replay_port=events_port + dp,
        dp_size=dp, hicache=not args.sglang_no_hicache, hicache_size_gb=args.sglang_hicache_size,
        hicache_write_policy=args.sglang_hicache_write_policy,
        l3=L3Config.parse(args.sglang_l3) if args.sglang_l3 else None,
        priority_scheduling=not args.sglang_no_priority,
        speculative_ngram_tokens=args.speculative_num_draft_tokens if spec == "ngram" else 0,
        python=args.sglang_python or sys.executable, extra=extra)


def free_port_range(n: int, attempts: int = 50) -> int:
    """A base port such that base .. base+n-1 are all free on loopback now."""
    import socket

    for _ in range(attempts):
        base = free_port()
        if base + n > 65535:
            continue
        socks = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise OSError(f"no {n} consecutive free ports found")


def run_sglang_worker(args: argparse.Namespace) -> int:
    from common.kvwire import HEARTBEAT_TTL_S
    from engine.kvcache.publisher import RedisUnavailableError
    from engine.sglang.args import LaunchConfigError
    from engine.sglang.launcher import SGLangWorker, serve

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        opts = options_from_args(args)
        # --redis-url / --advertise-url / --worker-heartbeat-ttl are the embedded worker's publishing
        # flags (engine/worker/kv_publish.py); they mean the same here.
        worker = SGLangWorker(opts, redis_url=getattr(args, "redis_url", None) or os.environ.get("REDIS_URL"),
                              advertise_url=getattr(args, "advertise_url", None),
                              heartbeat_ttl_s=getattr(args, "worker_heartbeat_ttl", HEARTBEAT_TTL_S),
                              startup_timeout_s=args.sglang_startup_timeout)
    except LaunchConfigError as exc:
        print(f"agentgate worker --backend sglang: {exc}", file=sys.stderr)
        return 2
    try:
        return serve(worker)
    except (RuntimeError, TimeoutError, OSError, RedisUnavailableError) as exc:  # OSError: no such python
        print(f"agentgate worker --backend sglang: {exc}", file=sys.stderr)
        return 1
