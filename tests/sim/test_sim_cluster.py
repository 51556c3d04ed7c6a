"""`agentgate sim-cluster`: several sim workers in one process, each a whole worker on its own port
(kind "sim", its own pool and clock), publishing KV events to a real Redis; the gateway in front of
them runs the end-to-end gateway tests (tests/e2e/test_gateway_e2e.py) and its KV index covers
every worker of the cluster."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid

import pytest
import pytest_asyncio

from tests.e2e.test_gateway_e2e import (  # noqa: F401  (collected here, against the cluster)
    test_chat_shares_a_cached_prefix_and_tokenizes_like_the_worker, test_diamond_workflow_runs_end_to_end)
from tests.e2e.test_kv_index_e2e import redis_url  # noqa: F401  (a Redis for the module)
from tests.gateway.support import GatewayHandle, fast_config
from tests.sim.support import write_table
from tests.support import REPO_ROOT, http_json

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]
WORKERS = 3


@pytest.fixture(scope="module")
def cluster(model_dir, tmp_path_factory, redis_url):
    tmp = tmp_path_factory.mktemp("sim-cluster")
    urls_file = tmp / "urls"
    cmd = [sys.executable, "-m", "engine.worker.sim_cluster", "--workers", str(WORKERS), "--port", "0",
           "--urls-file", str(urls_file), "--model-path", str(model_dir), "--served-model-name", model_dir.name,
           "--timing-table", str(write_table(tmp / "t.json")), "--kv-blocks", "364", "--redis-url", redis_url,
           "--l3", f"dir:{tmp / 'l3'}", "--worker-heartbeat-ttl", "3"]
    with open(tmp / "cluster.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not urls_file.exists():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp / "cluster.log").read_text()[-3000:]
            time.sleep(0.2)
        yield proc, urls_file.read_text().split()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest_asyncio.fixture
async def gw(cluster, redis_url):
    handle = await GatewayHandle(fast_config(redis_url, cluster[1], key_prefix="sc" + uuid.uuid4().hex[:6],
                                             request_timeout_s=120)).start()
    yield handle
    await handle.stop()


async def test_every_worker_of_the_cluster_is_a_whole_sim_worker(cluster):
    proc, urls = cluster
    assert len(set(urls)) == WORKERS
    for url in urls:
        status, info = await asyncio.to_thread(http_json, "GET", url + "/get_server_info")
        assert status == 200 and info["kind"] == "sim" and info["max_total_num_tokens"] == 364 * 16
        status, out = await asyncio.to_thread(http_json, "POST", url + "/generate", {
            "text": f"Hello {url}", "sampling_params": {"max_new_tokens": 3}})
        assert status == 200 and out["meta_info"]["completion_tokens"] == 3
    assert proc.poll() is None  # one process serves them all


async def test_the_gateways_index_covers_every_worker_of_the_cluster(gw, cluster):
    from gateway.keys import KV_INDEX

    _, urls = cluster
    for i, url in enumerate(urls):  # a prompt on each worker, so each publishes blocks
        await asyncio.to_thread(http_json, "POST", url + "/generate", {
            "text": f"Worker {i} caches this prompt. " * 8, "sampling_params": {"max_new_tokens": 1}})
    index = gw.app[KV_INDEX]
    deadline = time.monotonic() + 30
    while not all(index.covers(u) and index.worker_blocks(u, "l1") for u in urls):
        assert time.monotonic() < deadline, "the KV index never covered every worker"
        await asyncio.sleep(0.1)
