"""`agentgate gateway`: parse flags, build the app, serve until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys

from common.cliargs import HEADER_TIMEOUT_S, Parser, positive_float
from common.logconf import access_log_options, add_logging_args
from common.tracing import configure_process
from gateway.config import L2_CREDIT, L3_CREDIT, RECENT_S, GatewayConfig
from gateway.router.policies.kv_aware import (
    AFFINITY_THRESHOLD,
    BALANCE_SLACK,
    SPREAD_MARGIN,
)
from gateway.router.registry import POLICIES


def add_gateway_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--worker-urls", nargs="*", default=[], help="worker base URLs (SGLang API)")
    p.add_argument("--redis-url", default=None, help="default: $REDIS_URL, else a private redis-server")
    p.add_argument("--policy", default="kv_aware", choices=sorted(POLICIES),
                   help="routing policy: kv_aware (prefix cache and load, docs/architecture.md), or a baseline")
    p.add_argument("--tokenizer-path", default=None,
                   help="model dir with tokenizer.json (default: the one the workers report)")
    p.add_argument("--worker-concurrency", type=int, default=0,
                   help="calls in flight per worker (0: the worker's own max_running_requests)")
    p.add_argument("--max-body-mb", type=float, default=8.0, help="largest request body accepted, in MiB (413 beyond)")
    p.add_argument("--kvindex-group", default=None,
                   help="this replica's consumer group on the KV event streams "
                        "(default: kvindex:{hostname}:{port})")
    p.add_argument("--kv-credit-l2", type=float, default=L2_CREDIT, help="routing credit of an L2 block (L1 = 1)")
    p.add_argument("--kv-credit-l3", type=float, default=L3_CREDIT, help="routing credit of an L3 block (L1 = 1)")
    p.add_argument("--kv-recent-s", type=float, default=RECENT_S,
                   help="kv_aware: a prefix sent to a worker this many seconds ago or less counts as cached there "
                        "before its KV events arrive (0 = the KV index alone)")
    p.add_argument("--affinity-threshold", type=float, default=AFFINITY_THRESHOLD,
                   help="kv_aware: a call goes to the worker whose own KV pool holds at least this share of its "
                        "prompt (calls sharing a prefix batch over one copy of it) ...")
    p.add_argument("--balance-slack", type=int, default=BALANCE_SLACK,
                   help="... unless that worker carries more than this many requests above the least-loaded one")
    p.add_argument("--spread-margin", type=float, default=SPREAD_MARGIN,
                   help="kv_aware, where workers publish their step costs: another worker takes a call from the "
                        "holder of its prefix when the call adds this share less to the completion times there "
                        "(its own and those of the requests already running; 1 = never)")
    p.add_argument("--workflow-priority", type=int, default=0,
                   help="worker priority (SGLang's, higher first) of workflow calls and agent_hints-tagged calls, "
                        "plus the workflow's own; plain calls keep theirs (none = 0); 0 = no precedence (the "
                        "default: bench_workflows measured no gain from 1 against sglang-router)")
    add_logging_args(p)
    faults = p.add_argument_group("faults (Redis outages, hung workers)")
    faults.add_argument("--redis-max-connections", type=int, default=128,
                        help="Redis connection pool size; past it a command waits for a free connection")
    faults.add_argument("--redis-follower-connections", type=int, default=32,
                        help="Redis connections of the SSE followers (their own pool: many followers delay "
                             "each other's events, never the scheduler's state writes)")
    faults.add_argument("--redis-pool-timeout", type=float, default=30.0,
                        help="seconds a Redis command waits for a free connection before it fails")
    faults.add_argument("--redis-timeout", type=float, default=5.0, help="seconds one Redis command may take")
    faults.add_argument("--redis-retry", type=float, default=60.0,
                        help="seconds workflow state writes are retried through a Redis outage; past it the "
                             "workflow is resumed from Redis once it is back")
    faults.add_argument("--redis-buffer-events", type=int, default=10_000,
                        help="token events held back while Redis is away (more are dropped from the event stream)")
    faults.add_argument("--request-timeout", type=float, default=600.0,
                        help="seconds a worker has to answer a call that is not streamed")
    faults.add_argument("--first-token-timeout", type=float, default=None,
                        help="seconds a worker has for a streamed call's first token (default: by worker kind, "
                             "180 for the embedded CPU engine, 60 for others); then it is retried elsewhere")
    faults.add_argument("--inter-token-timeout", type=float, default=None,
                        help="seconds a worker may pause between two tokens of a streamed call (default: by "
                             "worker kind, 60 for the embedded CPU engine, 30 for others)")
    faults.add_argument("--no-request-migration", dest="request_migration", action="store_false",
                        help="a node whose worker dies mid-stream starts over on the next worker instead of "
                             "continuing from the tokens it produced")
    add_tenancy_args(p)
    aware = p.add_argument_group("agent awareness (prediction, prefetch, pins, token pipelining)")
    aware.add_argument("--no-prediction", dest="prediction", action="store_false",
                       help="ablation: no prediction at all (no prefetch, no pins, no token pipelining)")
    aware.add_argument("--no-pinning", dest="pinning", action="store_false",
                       help="ablation: prefetch predicted prefixes but never pin them")
    aware.add_argument("--token-pipelining", choices=("auto", "on", "off"), default="auto",
                       help="prefill downstream prompts while upstream nodes stream (auto: the measured default; "
                            "a workflow's options.token_pipelining decides for it unless off)")
    aware.add_argument("--no-token-pipelining", dest="token_pipelining", action="store_const", const="off",
                       help="ablation: same as --token-pipelining off")
    aware.add_argument("--prefetch-threshold", type=float, default=0.5,
                       help="prefetch a branch's whole prefix when P(it runs) >= this, else its static prefix")
    aware.add_argument("--prefetch-horizon", type=int, default=2, help="prefetch nodes at most this many steps away")
    aware.add_argument("--prefetch-max-inflight", type=int, default=2, help="prefetches running per worker")
    aware.add_argument("--prefetch-max-waiting", type=int, default=4,
                       help="no prefetch to a worker with this many requests waiting")
    aware.add_argument("--default-tool-latency", type=float, default=5.0,
                       help="seconds a tool call is expected to take before any was measured")


def add_tenancy_args(p: argparse.ArgumentParser) -> None:
    auth = p.add_argument_group("API keys, tenants and bounds (docs/architecture.md: Tenancy and admission)")
    auth.add_argument("--api-keys-file", default=None,
                      help="JSON list of {sha256, tenant, scopes} (keys stored hashed; default: $AGENTGATE_API_KEYS; "
                           "none: open, and served on loopback only)")
    auth.add_argument("--worker-api-key", default=os.environ.get("AGENTGATE_WORKER_API_KEY") or None,
                      help="Bearer key the workers were started with (their --api-key; default: "
                           "$AGENTGATE_WORKER_API_KEY)")
    auth.add_argument("--tenant-concurrency", type=int, default=0, help="calls in flight per tenant (0: no bound)")
    auth.add_argument("--tenant-tokens-per-min", type=int, default=0,
                      help="tokens (prompt + max_tokens) a tenant may ask for per minute (0: no bound)")
    auth.add_argument("--tenant-max-workflows", type=int, default=0, help="workflows running per tenant (0: no bound)")
    auth.add_argument("--max-inflight", type=int, default=0,
                      help="proxied calls in flight over all tenants; more wait in a queue (0: no bound)")
    auth.add_argument("--max-queue", type=int, default=256, help="calls waiting for --max-inflight (past it: 503)")
    auth.add_argument("--queue-timeout", type=float, default=30.0, help="seconds a queued call waits before a 503")
    auth.add_argument("--max-sse", type=int, default=1000, help="SSE event streams open at once (0: no bound)")
    auth.add_argument("--tenant-max-sse", type=int, default=200, help="SSE event streams per tenant (0: no bound)")
    auth.add_argument("--body-timeout", type=float, default=30.0,
                      help="seconds a client has to send its request body (a slower one gets a 408)")
    auth.add_argument("--header-timeout", type=positive_float, default=HEADER_TIMEOUT_S,
                      help="seconds a client has to send a request's headers, counted from its connection or "
                           "from the previous response (then the connection is closed; aiohttp's "
                           "keepalive_timeout: an idle keep-alive connection is closed after it too)")
    auth.add_argument("--retention", type=float, default=86_400.0,
                      help="seconds finished workflows and their event streams are kept (0: for good)")
    auth.add_argument("--kv-stale", type=float, default=600.0,
                      help="seconds after which the KV event stream of a model no live worker serves, and a "
                           "consumer group no replica reads, are removed (0: never)")


def tenancy_options(args: argparse.Namespace) -> dict:
    """GatewayConfig fields from the tenancy flags (KeyFileError: the key table cannot be read)."""
    from gateway.admission import Limits
    from gateway.auth.keys import KeyTable

    limits = Limits(tenant_concurrency=args.tenant_concurrency, tenant_tokens_per_min=args.tenant_tokens_per_min,
                    tenant_max_workflows=args.tenant_max_workflows, max_inflight=args.max_inflight,
                    max_queue=args.max_queue, queue_timeout_s=args.queue_timeout, max_sse=args.max_sse,
                    tenant_max_sse=args.tenant_max_sse)
    return dict(api_keys=KeyTable.load(args.api_keys_file, os.environ), worker_api_key=args.worker_api_key,
                limits=limits, body_timeout_s=args.body_timeout, retention_s=args.retention or None,
                kv_stale_s=args.kv_stale)


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def fault_options(args: argparse.Namespace) -> dict:
    """GatewayConfig fields from the fault-handling flags."""
    return dict(redis_max_connections=args.redis_max_connections, redis_pool_timeout_s=args.redis_pool_timeout,
                redis_follower_connections=args.redis_follower_connections,
                redis_timeout_s=args.redis_timeout, redis_retry_s=args.redis_retry,
                redis_buffer_events=args.redis_buffer_events, request_timeout_s=args.request_timeout,
                first_token_timeout_s=args.first_token_timeout, inter_token_timeout_s=args.inter_token_timeout,
                request_migration=args.request_migration)


def awareness_options(args: argparse.Namespace) -> dict:
    """GatewayConfig fields from the agent-awareness flags."""
    return dict(prediction=args.prediction, pinning=args.pinning, token_pipelining=args.token_pipelining,
                prefetch_threshold=args.prefetch_threshold, prefetch_horizon=args.prefetch_horizon,
                prefetch_max_inflight=args.prefetch_max_inflight, prefetch_max_waiting=args.prefetch_max_waiting,
                default_tool_latency_s=args.default_tool_latency)


def run_gateway(args: argparse.Namespace) -> int:
    from aiohttp import web

    from common.launch import server_loop
    from gateway.app import create_app

    failed = configure_process(args.log_level, args.log_format, "agentgate gateway", "agentgate-gateway")
    if failed is not None:
        return failed
    if not (0 <= args.kv_credit_l2 <= 1 and 0 <= args.kv_credit_l3 <= 1 and 0 <= args.affinity_threshold <= 1):
        print("--kv-credit-l2, --kv-credit-l3 and --affinity-threshold must be in [0, 1]", file=sys.stderr)
        return 2
    if not 0 <= args.spread_margin <= 1:
        print("--spread-margin must be in [0, 1]", file=sys.stderr)
        return 2
    if args.balance_slack < 0:
        print("--balance-slack must be at least 0", file=sys.stderr)
        return 2
    if min(args.redis_max_connections, args.redis_follower_connections) < 1 or any(v is not None and v <= 0 for v in (
            args.redis_pool_timeout, args.redis_timeout, args.redis_retry, args.request_timeout,
            args.first_token_timeout, args.inter_token_timeout)):
        print("--redis-max-connections and --redis-follower-connections must be at least 1 and every timeout positive", file=sys.stderr)
        return 2
    if min(args.tenant_concurrency, args.tenant_tokens_per_min, args.tenant_max_workflows, args.max_inflight,
           args.max_queue, args.max_sse, args.tenant_max_sse) < 0 or min(
            args.queue_timeout, args.body_timeout, args.retention, args.kv_stale) < 0:
        print("the tenancy bounds and timeouts must be at least 0", file=sys.stderr)
        return 2
    from gateway.auth.keys import KeyFileError

    try:
        tenancy = tenancy_options(args)
    except KeyFileError as exc:
        print(f"agentgate gateway: API keys: {exc}", file=sys.stderr)
        return 2
    if tenancy["api_keys"] is None and not loopback(args.host):
        print(f"agentgate gateway: refusing --host {args.host} without API keys (give --api-keys-file or "
              f"$AGENTGATE_API_KEYS); without keys the gateway serves on loopback only", file=sys.stderr)
        return 2
    redis_url = args.redis_url or os.environ.get("REDIS_URL")
    private = None
    if not redis_url:
        from common.redis_server import RedisServer

        private = RedisServer().start()
        redis_url = private.url
    config = GatewayConfig(worker_urls=tuple(args.worker_urls), redis_url=redis_url, policy=args.policy,
                           tokenizer_path=args.tokenizer_path, worker_concurrency=args.worker_concurrency,
                           max_body_bytes=int(args.max_body_mb * 1024 * 1024),
                           kvindex_group=args.kvindex_group or f"kvindex:{socket.gethostname()}:{args.port}",
                           kv_credit_l2=args.kv_credit_l2, kv_credit_l3=args.kv_credit_l3,
                           kv_recent_s=max(args.kv_recent_s, 0.0), workflow_priority=args.workflow_priority,
                           affinity_threshold=args.affinity_threshold, balance_slack=args.balance_slack,
                           spread_margin=args.spread_margin,
                           **awareness_options(args), **fault_options(args), **tenancy)
    keys = tenancy["api_keys"]
    if keys is None:
        logging.getLogger("agentgate.gateway").warning(
            "no API keys configured: serving on loopback (%s) only, every caller is one tenant with admin rights",
            args.host)
    else:
        logging.getLogger("agentgate.gateway").info("API keys: %d key(s), %d tenant(s)", len(keys),
                                                    len({p.tenant for p in keys.entries.values()}))
    print(f"agentgate gateway listening on http://{args.host}:{args.port} (policy {args.policy}, "
          f"{len(config.worker_urls)} worker(s), redis {_redacted(redis_url)})", flush=True)
    try:
        web.run_app(create_app(config), host=args.host, port=args.port, print=None, shutdown_timeout=5,
                    keepalive_timeout=args.header_timeout, loop=server_loop(), **access_log_options(args.access_log))
    finally:
        if private is not None:
            private.stop()
    return 0


def _redacted(url: str) -> str:
    """A Redis URL without its password (redis://user:***@host)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="agentgate gateway", description="agent-aware inference gateway")
    add_gateway_args(parser)
    return run_gateway(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
