"""The gateway app factory.

Start-up order (cleanup_ctx, undone in reverse): HTTP client session → Redis →
KV index (its consumer task, gateway/kvindex) → worker pool (first probe, then a
background health loop that also picks up workers from the Redis registry and
loads the tokenizer once a worker names its model) → agent awareness
(prediction, prefetch and pins; gateway/awareness/runs.py) → scheduler
(claims and resumes unfinished workflows, then dispatches).
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from aiohttp import web
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from common.redis_client import async_cluster, is_cluster
from common.tracing import observe_requests
from gateway.admission import Admission
from gateway.admission_shared import SharedLimits
from gateway.api import admin, contract, openai_proxy, system, templates, workflows
from gateway.api.http import error_middleware
from gateway.auth.middleware import auth_middleware
from gateway.config import GatewayConfig
from gateway.console import api as console
from gateway.janitor import janitor_ctx
from gateway.keys import (
    ADMISSION,
    CONFIG,
    FOLLOWERS,
    HASHER,
    METRICS,
    POLICY,
    POOL,
    REDIS,
    SCHEDULER,
    SESSION,
    STORE,
    TEMPLATES,
)
from gateway.contexts import kvindex_ctx
from gateway.metrics import Metrics
from gateway.router.prompts import PromptHasher
from gateway.router.registry import make_policy
from gateway.keys import AWARENESS
from gateway.contexts import awareness_ctx
from gateway.scheduler.scheduler import Scheduler
from gateway.state.store import WorkflowStore
from gateway.state.template_store import TemplateStore
from gateway.workers.pool import WorkerPool
from gateway.workers.registry import RegistryDiscovery

log = logging.getLogger("agentgate.gateway")


def create_app(config: GatewayConfig) -> web.Application:
    app = web.Application(middlewares=[error_middleware, auth_middleware(config.api_keys)],
                          client_max_size=config.max_body_bytes)
    observe_requests(app, "gateway")  # X-Request-Id, and a trace span per request when tracing is on
    app[CONFIG] = config
    app[ADMISSION] = Admission(config.limits)
    app[METRICS] = Metrics()
    app[POLICY] = make_policy(config.policy, config)
    app[HASHER] = PromptHasher.from_model_dir(config.tokenizer_path)
    workflows.add_routes(app)
    templates.add_routes(app)
    openai_proxy.add_routes(app)
    system.add_routes(app)
    console.add_routes(app)  # GET /ui
    contract.add_routes(app)
    admin.add_routes(app)
    app.cleanup_ctx.extend([_session, _redis, kvindex_ctx, _pool, awareness_ctx, _scheduler, janitor_ctx])
    return app


async def _session(app: web.Application):
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
    key = app[CONFIG].worker_api_key  # the session only talks to workers (KV snapshots)
    headers = {"Authorization": f"Bearer {key}"} if key else None
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False, headers=headers) as session:
        app[SESSION] = session
        yield


def redis_pool(config: GatewayConfig, size: int = 0, socket_timeout: float = 0.0) -> BlockingConnectionPool:
    """A pool for config.redis_url (a password in the URL is sent with AUTH, rediss:// is TLS) of `size`
    connections (default redis_max_connections) whose commands time out after `socket_timeout`
    (default redis_timeout_s)."""
    return BlockingConnectionPool.from_url(
        config.redis_url, max_connections=size or config.redis_max_connections, timeout=config.redis_pool_timeout_s,
        socket_timeout=socket_timeout or config.redis_timeout_s, socket_connect_timeout=config.redis_timeout_s,
        retry=Retry(NoBackoff(), 1), decode_responses=True)


def redis_client(config: GatewayConfig, size: int = 0, socket_timeout: float = 0.0) -> Redis | RedisCluster:
    """redis_pool's client; for a redis+cluster:// URL redis-py's cluster client, with up to `size`
    connections per node (past them a command fails with MaxConnectionsError, a ConnectionError that
    state writes retry like an outage) and the same timeouts."""
    if not is_cluster(config.redis_url):
        return Redis.from_pool(redis_pool(config, size, socket_timeout))
    return async_cluster(config.redis_url, max_connections=size or config.redis_max_connections,
                         socket_timeout=socket_timeout or config.redis_timeout_s,
                         socket_connect_timeout=config.redis_timeout_s, decode_responses=True)


async def _redis(app: web.Application):
    """One bounded pool: past `redis_max_connections` a command waits for a free connection (up to
    redis_pool_timeout_s) rather than failing with "Too many connections"; a command that gets no
    answer in redis_timeout_s fails (a paused Redis) and is tried once more on a fresh connection (one
    that a restart closed). Waiting out longer outages is the scheduler's job (state/journal.py)."""
    config = app[CONFIG]
    # followers block in XREAD for up to a second (api/workflows.py EVENT_POLL_MS) on top of the command time
    redis, followers = (redis_client(config), redis_client(config, config.redis_follower_connections,
                                                           config.redis_timeout_s + 1))
    app[REDIS] = redis
    app[STORE] = WorkflowStore(redis, config.key_prefix, config.retention_s)
    app[FOLLOWERS] = WorkflowStore(followers, config.key_prefix, config.retention_s)
    app[TEMPLATES] = TemplateStore(redis, app[CONFIG].key_prefix)
    app[ADMISSION].shared = SharedLimits(redis, config.key_prefix, config.request_timeout_s)  # across replicas
    yield
    await followers.aclose()
    await redis.aclose()


async def _pool(app: web.Application):
    config = app[CONFIG]
    pool = WorkerPool(config, app[SESSION])
    pool.on_removed.append(app[POLICY].on_removed)
    pool.sync(config.worker_urls)
    discovery = RegistryDiscovery(pool, config.worker_urls, config.key_prefix)  # workers' and operators' entries
    await discovery.sync(app[REDIS])
    app[POOL] = pool
    await pool.probe_all()
    await _load_tokenizer(app)
    stopping = asyncio.Event()
    task = asyncio.create_task(_health_loop(app, stopping, discovery), name="gateway-health")
    yield
    # Let a probe in flight finish rather than hang up on it: an aborted /get_load wastes the worker's time.
    stopping.set()
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout=5)
    except asyncio.TimeoutError:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    for w in pool.workers.values():  # the scheduler stopped first: only idle connections are left
        w.client.close()


async def _health_loop(app: web.Application, stopping: asyncio.Event, discovery: RegistryDiscovery) -> None:
    pool, config = app[POOL], app[CONFIG]
    while True:
        try:
            await asyncio.wait_for(stopping.wait(), timeout=config.health_interval_s)
            return
        except asyncio.TimeoutError:
            pass
        try:
            await discovery.sync(app[REDIS])
        except (OSError, RedisError) as exc:
            log.warning("worker registry unreadable: %s", exc)
        await pool.probe_all()
        await _load_tokenizer(app)


async def _load_tokenizer(app: web.Application) -> None:
    """Hash prefixes with the workers' own tokenizer once one of them tells us its model dir."""
    hasher = app[HASHER]
    model_dir = app[POOL].model_dir()
    if hasher.tokenizer is not None or model_dir is None or model_dir == hasher.tried:
        return
    if await asyncio.to_thread(hasher.load, model_dir):
        log.info("prefix hashing uses the tokenizer in %s", model_dir)


async def _scheduler(app: web.Application):
    scheduler = Scheduler(app[CONFIG], app[STORE], app[POOL], app[POLICY], app[HASHER], app[METRICS],
                          templates=app[TEMPLATES], awareness=app[AWARENESS])
    app[SCHEDULER] = scheduler
    await scheduler.start()
    yield
    await scheduler.stop()
