"""Fixtures the end-to-end tests share: a Redis per module, and a gateway in this process in front of the
session's real worker (tests/conftest.py `worker`), with its own key prefix so tests never read each
other's state. A module that needs something else defines its own fixture of the same name."""

from __future__ import annotations

import uuid

import pytest
import pytest_asyncio

from common.redis_server import RedisServer
from tests.gateway.support import GatewayHandle, fast_config


@pytest.fixture(scope="module")
def redis_url():
    server = RedisServer().start()
    yield server.url
    server.stop()


@pytest_asyncio.fixture
async def gw(worker, redis_url):
    handle = await GatewayHandle(fast_config(redis_url, [worker], key_prefix="e2e" + uuid.uuid4().hex[:6],
                                             request_timeout_s=120)).start()
    yield handle
    await handle.stop()
