"""The KV-event contract (tests/e2e/test_kv_index_e2e.py) against a sim worker publishing to a real
Redis: the gateway's KV index, fed from the stream, holds exactly the blocks the sim worker reports
per tier, and kv_aware routing follows it."""

from __future__ import annotations

import pytest

from tests.e2e.test_kv_index_e2e import (  # noqa: F401  (collected here, against this module's worker)
    redis_url, session, test_kv_aware_routing_follows_the_index, test_the_index_holds_exactly_the_workers_blocks)
from tests.sim.support import write_table
from tests.support import start_worker, stop_worker

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]


@pytest.fixture(scope="module")
def kv_worker(model_dir, tmp_path_factory, redis_url):  # noqa: F811
    tmp = tmp_path_factory.mktemp("sim-kv-worker")
    worker = start_worker(model_dir, tmp, "--backend", "sim", "--timing-table", str(write_table(tmp / "t.json")),
                          "--served-model-name", model_dir.name, "--kv-blocks", "364", "--redis-url", redis_url,
                          "--l3", f"dir:{tmp / 'l3'}", "--worker-heartbeat-ttl", "3", threads=None)
    yield worker.url
    stop_worker(worker)
