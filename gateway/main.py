"""`agentgate gateway`: parse flags, build the app, serve until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from gateway.config import GatewayConfig
from gateway.router.registry import POLICIES


def add_gateway_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--worker-urls", nargs="*", default=[], help="worker base URLs (SGLang API)")
    p.add_argument("--redis-url", default=None, help="default: $REDIS_URL, else a private redis-server")
    p.add_argument("--policy", default="kv_aware", choices=sorted(POLICIES))
    p.add_argument("--tokenizer-path", default=None,
                   help="model dir with tokenizer.json (default: the one the workers report)")
    p.add_argument("--worker-concurrency", type=int, default=8)
    p.add_argument("--max-body-mb", type=float, default=8.0)
    p.add_argument("--log-level", default="info")


def run_gateway(args: argparse.Namespace) -> int:
    from aiohttp import web

    from gateway.app import create_app

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    redis_url = args.redis_url or os.environ.get("REDIS_URL")
    private = None
    if not redis_url:
        from engine.redis_server import RedisServer

        private = RedisServer().start()
        redis_url = private.url
    config = GatewayConfig(worker_urls=tuple(args.worker_urls), redis_url=redis_url, policy=args.policy,
                           tokenizer_path=args.tokenizer_path, worker_concurrency=args.worker_concurrency,
                           max_body_bytes=int(args.max_body_mb * 1024 * 1024))
    print(f"agentgate gateway listening on http://{args.host}:{args.port} (policy {args.policy}, "
          f"{len(config.worker_urls)} worker(s), redis {redis_url})", flush=True)
    try:
        web.run_app(create_app(config), host=args.host, port=args.port, print=None, access_log=None,
                    shutdown_timeout=5)
    finally:
        if private is not None:
            private.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentgate gateway", description="agent-aware inference gateway")
    add_gateway_args(parser)
    return run_gateway(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
