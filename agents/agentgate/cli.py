"""The `agentgate` command.

  agentgate worker ...       an SGLang-compatible CPU engine worker (--backend sglang: an SGLang GPU server;
                             --backend sim: a simulated GPU worker)
  agentgate sim-cluster ...  many simulated GPU workers in one process (one event loop, a port each)
  agentgate profile --out F  measure the embedded engine's step times into a timing table for sim workers
  agentgate gateway ...      the gateway (workflows, OpenAI proxy) in front of workers
  agentgate up ...           Redis + engine worker(s) sharing the cores + the gateway on localhost, until Ctrl-C
  agentgate prepare-model    convert the shipped GGUF to safetensors (once)
  agentgate run FILE         submit a workflow (.py or .json), show live progress, outputs, cache stats
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from common.launch import wait_healthy


def cmd_up(args: argparse.Namespace) -> int:
    from common.redis_server import RedisServer
    from engine.model.prepare import prepare_default_model

    if args.workers < 1 or args.threads < 0:
        print("agentgate up: --workers must be at least 1 and --threads at least 0", file=sys.stderr)
        return 2
    model = args.model_path or str(prepare_default_model(progress=True))
    redis = None
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        redis = RedisServer(args.redis_port).start()
        redis_url = redis.url
    worker_urls, procs = [], []
    try:
        for i in range(args.workers):  # one at a time: each measures its matmul plan at start-up
            port = args.worker_port + i
            cmd = [sys.executable, "-m", "engine.worker.main", "--host", args.host, "--port", str(port),
                   "--model-path", model, "--workers-per-host", str(args.workers)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            procs.append(subprocess.Popen(cmd, env={**os.environ, "REDIS_URL": redis_url}))
            worker_urls.append(f"http://{args.host}:{port}")
            wait_healthy(worker_urls[-1], procs[-1], timeout=300)
        gateway_url = f"http://{args.host}:{args.gateway_port}"
        gateway = subprocess.Popen([sys.executable, "-m", "gateway.main", "--host", args.host, "--port",
                                    str(args.gateway_port), "--redis-url", redis_url, "--worker-urls", *worker_urls],
                                   env={**os.environ, "REDIS_URL": redis_url})
        procs.append(gateway)
        wait_healthy(gateway_url, gateway, timeout=60)
        print(f"redis   {redis_url}")
        for url in worker_urls:
            print(f"worker  {url}   (SGLang API: /generate, /v1/chat/completions, /metrics)")
        print(f"gateway {gateway_url}   (/v1/workflows, /v1/chat/completions, /metrics, console: /ui)")
        print("Ctrl-C stops everything.", flush=True)
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
        while not stop and all(p.poll() is None for p in procs):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if redis is not None:
            redis.stop()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Every subcommand's flags (each with help; --help shows the defaults)."""
    from common.cliargs import Parser
    from engine.worker.main import add_worker_args, run_worker

    parser = Parser(prog="agentgate")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker", help="run an SGLang-compatible CPU engine worker, or SGLang itself (--backend sglang)")
    add_worker_args(w)
    w.set_defaults(func=run_worker)
    from engine.worker.sim_cluster import add_cluster_args, run_cluster

    sc = sub.add_parser("sim-cluster", help="many simulated GPU workers (--backend sim) in one process")
    add_cluster_args(sc)
    sc.set_defaults(func=run_cluster)
    from engine.sim.profile import add_profile_args, run_profile

    prof = sub.add_parser("profile", help="measure the embedded engine's step times into a timing table "
                                          "(for --backend sim --timing-table)")
    add_profile_args(prof)
    prof.set_defaults(func=run_profile)
    from gateway.main import add_gateway_args, run_gateway

    gw = sub.add_parser("gateway", help="run the gateway in front of SGLang-API workers")
    add_gateway_args(gw)
    gw.set_defaults(func=run_gateway)
    up = sub.add_parser("up", help="start Redis + engine worker(s) + the gateway on localhost")
    up.add_argument("--host", default="127.0.0.1", help="address every process listens on")
    up.add_argument("--worker-port", type=int, default=30000, help="the first worker's port; the next ones follow it")
    up.add_argument("--workers", type=int, default=1, help="engine workers on this host; they share its cores")
    up.add_argument("--gateway-port", type=int, default=8000, help="the gateway's port")
    up.add_argument("--redis-port", type=int, default=None,
                    help="port of the private redis-server (default: a free one; $REDIS_URL: use that Redis)")
    up.add_argument("--threads", type=int, default=0,
                    help="threads per worker (0: the host's cores / --workers, or OMP_NUM_THREADS)")
    up.add_argument("--model-path", default=None, help="model directory (default: the embedded SmolLM2-135M)")
    up.set_defaults(func=cmd_up)
    prep = sub.add_parser("prepare-model", help="convert the shipped GGUF to safetensors once")
    prep.add_argument("--force", action="store_true", help="convert again even if the safetensors exist")
    prep.set_defaults(func=lambda a: __import__("engine.model.prepare", fromlist=["main"]).main(
        ["--progress"] + (["--force"] if a.force else [])))
    from agentgate.cli_run import add_run_args

    add_run_args(sub.add_parser("run", help="run a workflow file against a gateway, with live progress"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
