"""`agentgate sim-cluster`: many sim workers in one process, on one event loop, each on its own port.

Every worker is a whole SimEngine (its own engine thread, radix cache, tiers, KV events and HTTP
app); they share the process's step model (compiled once) and its event loop, so 16-64 simulated
GPUs fit in a couple of cores. Whether they kept up is in each worker's /metrics (step lag).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import logging
import signal
import socket
import sys
from pathlib import Path

from engine.worker.sim_backend import build_sim_app, sim_spec


def add_cluster_args(p: argparse.ArgumentParser) -> None:
    from engine.worker.main import add_worker_args

    add_worker_args(p)  # every worker flag (--redis-url, --l3, --speculative-algorithm ...) applies to each worker
    p.add_argument("--workers", type=int, default=8, help="sim workers in this process")
    p.add_argument("--urls-file", default=None, metavar="FILE",
                   help="write the workers' URLs here, one a line, once all of them serve")
    p.set_defaults(backend="sim")


def _free_ports(n: int, host: str) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def worker_args(args: argparse.Namespace, port: int) -> argparse.Namespace:
    """One worker's flags: the cluster's, on its own port (and advertised there)."""
    one = copy.copy(args)
    one.port = port
    one.advertise_url = None
    return one


async def serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from engine.worker.main import engine_config

    spec = sim_spec(args)  # one step model for every worker
    ports = _free_ports(args.workers, args.host) if args.port == 0 else [args.port + i for i in range(args.workers)]
    runners: list[web.AppRunner] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        for port in ports:
            one = worker_args(args, port)
            _, app = build_sim_app(one, engine_config(one), spec)
            runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=5,
                                   keepalive_timeout=args.header_timeout)  # a header trickle is cut off
            runners.append(runner)
            await runner.setup()
            await web.TCPSite(runner, args.host, port).start()
        urls = [f"http://{args.host}:{p}" for p in ports]
        if args.urls_file:
            tmp = Path(args.urls_file + ".tmp")
            tmp.write_text("\n".join(urls) + "\n")
            tmp.replace(args.urls_file)
        print(f"agentgate sim-cluster: {len(urls)} x {spec.gpu.name} {spec.model.name} (tp{spec.tp}, "
              f"speedup {spec.speedup:g}) on {urls[0]} .. {urls[-1]}", flush=True)
        await stop.wait()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
    return 0


def run_cluster(args: argparse.Namespace) -> int:
    from common.launch import server_loop

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.workers < 1:
        print("agentgate sim-cluster: --workers must be at least 1", file=sys.stderr)
        return 2
    loop = server_loop()
    try:
        return loop.run_until_complete(serve(args))
    except ValueError as exc:
        print(f"agentgate sim-cluster: {exc}", file=sys.stderr)
        return 2
    finally:
        loop.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentgate sim-cluster", description="many sim workers in one process")
    add_cluster_args(parser)
    return run_cluster(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
