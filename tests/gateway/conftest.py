"""Fixtures for the gateway tests: a real redis-server per session, fake workers,
and a gateway served on a free port (so tests can stop and restart it)."""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest
import pytest_asyncio

from tests.gateway.support import GatewayHandle, fast_config


@pytest.fixture(scope="session")
def redis_url():
    from common.redis_server import RedisServer

    server = RedisServer().start()
    yield server.url
    server.stop()


@pytest_asyncio.fixture
async def fake_workers():
    """make(n, **FakeWorker fields) → started fake workers, all stopped after the test."""
    from tests.gateway.fake_worker import FakeWorker

    started = []

    async def make(n: int = 1, **kwargs):
        workers = [await FakeWorker(**kwargs).start() for _ in range(n)]
        started.extend(workers)
        return workers

    yield make
    for w in started:
        await w.stop()


@pytest_asyncio.fixture
async def gateway(redis_url):
    """start(worker_urls, **GatewayConfig overrides) → a running GatewayHandle; each test gets its own
    Redis key prefix, so tests never see each other's workflows."""
    prefix = "t" + uuid.uuid4().hex[:8]
    handles = []

    async def start(worker_urls, **overrides):
        config = replace(fast_config(redis_url, worker_urls), key_prefix=prefix, **overrides)
        handle = await GatewayHandle(config).start()
        handles.append(handle)
        return handle

    yield start
    for h in handles:
        await h.stop()
