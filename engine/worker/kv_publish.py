"""The worker's half of the KV index: its flags, the EventPublisher's lifecycle
in the app, and `GET /kv/snapshot` (shapes in common/kvwire.py).

Without a Redis URL the worker runs as before and publishes nothing; the
snapshot route still answers (upto "0-0"), so a gateway can seed its index
from a worker it was only told about by --worker-urls.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import time
from typing import TYPE_CHECKING

from aiohttp import web

from common.kvwire import HEARTBEAT_TTL_S, TIERS, WorkerInfo
from engine.kvcache.publisher import (
    EventPublisher,
    RedisUnavailableError,
    connect,
    redact,
)

if TYPE_CHECKING:  # the flags must parse without importing torch (agentgate --help)
    from engine.runtime.engine import Engine

PUBLISHER = web.AppKey("kv_publisher", EventPublisher)
WORKER_INFO = web.AppKey("kv_worker_info", WorkerInfo)


def add_publish_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL") or None,
                   help="publish KV events and register in this Redis (default: $REDIS_URL; unset = do not publish)")
    p.add_argument("--advertise-url", default=None,
                   help="the URL gateways reach this worker at, its identity in the index "
                        "(default: http://{host}:{port})")
    p.add_argument("--worker-heartbeat-ttl", type=float, default=HEARTBEAT_TTL_S,
                   help="seconds the registry entry lives without a refresh (refreshed every third of it)")


def setup_publishing(app: web.Application, engine: Engine, args: argparse.Namespace) -> None:
    """Add /kv/snapshot, and with a Redis URL the publisher (started after the engine, stopped before it).

    Redis must answer now: a worker asked to publish that silently does not
    would leave gateways routing blind, so it exits with a message instead.
    """
    if args.worker_heartbeat_ttl <= 0:
        raise SystemExit(f"--worker-heartbeat-ttl must be positive, got {args.worker_heartbeat_ttl}")
    if args.redis_url:
        try:
            connect(args.redis_url).close()
        except RedisUnavailableError as exc:
            raise SystemExit(f"agentgate worker: {exc}") from None
    url = (args.advertise_url or f"http://{args.host}:{args.port}").rstrip("/")
    info = WorkerInfo(url=url, model=engine.cfg.served_model_name, kind="agentgate", epoch=secrets.token_hex(8),
                      block_size=engine.cfg.block_size, l3=engine.l3_id, started=time.time())
    app[WORKER_INFO] = info
    app.router.add_get("/kv/snapshot", kv_snapshot)
    if not args.redis_url:
        return
    from engine.worker.bridge import SERVER_ARGS

    if app.get(SERVER_ARGS, {}).get("redis_url"):  # /get_server_info echoes the flags: never a password
        app[SERVER_ARGS]["redis_url"] = redact(args.redis_url)
    app[PUBLISHER] = EventPublisher(args.redis_url, info, engine.events, heartbeat_ttl_s=args.worker_heartbeat_ttl)
    app.cleanup_ctx.append(_publisher_lifecycle)


async def _publisher_lifecycle(app: web.Application):
    publisher = app[PUBLISHER]
    await asyncio.to_thread(publisher.start)
    yield
    await asyncio.to_thread(publisher.stop)


async def kv_snapshot(request: web.Request) -> web.Response:
    from common.http import json_response
    from engine.worker.bridge import ENGINE

    engine = request.app[ENGINE]
    info = request.app[WORKER_INFO]
    publisher = request.app.get(PUBLISHER)
    # Read before the engine snapshot: every event after `upto` is then either in the snapshot or
    # in an entry after it, and replaying those is harmless (wire.py).
    upto, upto_seq = publisher.last_entry if publisher is not None else ("0-0", -1)
    snap = await asyncio.wrap_future(engine.call(engine.kv.snapshot))
    return json_response({"worker": info.url, "model": info.model, "epoch": info.epoch,
                          "block_size": snap["block_size"], "l3": snap["l3"], "upto": upto, "upto_seq": upto_seq,
                          "tiers": {tier: snap["tiers"].get(tier, []) for tier in TIERS}})
