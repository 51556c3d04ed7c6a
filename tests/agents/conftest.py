"""Fixtures for the SDK tests: a real redis-server, fake workers and gateways served from a
background thread's event loop, so blocking `Client` calls and `agentgate run` can reach
them from the test thread (and `AsyncClient` from a test's own loop)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from dataclasses import replace

import pytest

from tests.gateway.fake_worker import FakeWorker
from tests.gateway.support import GatewayHandle, fast_config


class Served:
    """An event loop in a thread that owns fake workers and gateways until `stop()`."""

    def __init__(self, redis_url: str):
        self.redis_url = redis_url
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="served-loop", daemon=True)
        self.thread.start()
        self.workers: list[FakeWorker] = []
        self.gateways: list[GatewayHandle] = []

    def run(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def worker(self, **kwargs) -> FakeWorker:
        worker = self.run(FakeWorker(**kwargs).start())
        self.workers.append(worker)
        return worker

    def gateway(self, worker_urls, **overrides) -> GatewayHandle:
        config = replace(fast_config(self.redis_url, worker_urls), key_prefix="sdk" + uuid.uuid4().hex[:8],
                         **overrides)
        handle = self.run(GatewayHandle(config).start())
        self.gateways.append(handle)
        return handle

    def stop(self) -> None:
        for g in self.gateways:
            self.run(g.stop())
        for w in self.workers:
            self.run(w.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


@pytest.fixture(scope="session")
def redis_url():
    from common.redis_server import RedisServer

    server = RedisServer().start()
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def served(redis_url):
    s = Served(redis_url)
    yield s
    s.stop()


@pytest.fixture(scope="session")
def fake(served) -> FakeWorker:
    """The session's fake worker: replies `echo: <last message>`."""
    return served.worker()


@pytest.fixture(scope="session")
def gw(served, fake) -> GatewayHandle:
    """The session's gateway in front of `fake` (default max_tokens 16)."""
    handle = served.gateway([fake.url])
    served.run(_wait_healthy(handle))
    return handle


async def _wait_healthy(handle: GatewayHandle, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status, _, _ = await handle.call("GET", "/health")
        if status == 200:
            return
        assert loop.time() < deadline, "gateway never became healthy"
        await asyncio.sleep(0.05)
