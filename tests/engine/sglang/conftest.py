"""A real redis-server for the bridge and launcher tests (one per module run)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def redis_url():
    from common.redis_server import RedisServer

    server = RedisServer().start()
    yield server.url
    server.stop()
