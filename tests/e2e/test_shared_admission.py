"""A tenant's concurrency and token rate hold across gateway replicas that share a Redis: two real
gateway processes in front of the session's real worker, one tenant (no keys: the anonymous one). A
place or tokens taken through one replica are missing on the other. With Redis gone, each replica
falls back to counting on its own (in process, against a closed port)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import redis as sync_redis
import redis.asyncio

from common.redis_server import RedisServer, free_port
from gateway.admission import Admission, Limits, TooManyRequestsError, estimate_tokens
from gateway.admission_shared import SharedLimits
from gateway.config import GatewayConfig
from tests.support import REPO_ROOT

CHAT = {"messages": [{"role": "user", "content": "Count from one to ten."}], "max_tokens": 40, "temperature": 0}


def post(port: int, body: dict, timeout: float = 120) -> tuple[int, dict, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), dict(err.headers)


@contextlib.contextmanager
def two_replicas(worker: str, tmp_path, *flags: str):
    """Two gateway processes on one private Redis; yields their ports and the Redis URL."""
    server = RedisServer().start()
    procs, ports = [], []
    try:
        for i in range(2):
            port = free_port()
            log = open(tmp_path / f"gateway-{i}.log", "wb")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "gateway.main", "--port", str(port), "--redis-url", server.url,
                 "--worker-urls", worker, *flags], cwd=REPO_ROOT, stdout=log, stderr=log,
                env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}))
            ports.append(port)
        for port, proc in zip(ports, procs):
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, "a gateway replica exited"
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=5) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "a gateway replica never became ready"
                time.sleep(0.2)
        yield (*ports, server.url)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=20)
        server.stop()


@pytest.mark.slow
def test_the_token_rate_holds_across_two_replicas(worker, tmp_path):
    cost = estimate_tokens(CHAT, GatewayConfig().default_max_tokens)
    with two_replicas(worker, tmp_path, "--tenant-tokens-per-min", "60") as (a, b, redis_url):
        status, body, _ = post(a, CHAT)
        assert status == 200, body
        # one replica alone would have a full bucket (60) for this call; shared, ~12 tokens are left at 1/s
        status, err, headers = post(b, CHAT)
        assert status == 429 and err["error"]["code"] == "token_rate", err
        # the shared bucket as the refused call left it (its level at that moment): the wait is what is
        # missing of the call's cost at 1 token/s
        level = float(sync_redis.Redis.from_url(redis_url).hget("ag:adm:{}:tokens", "level"))
        assert level < cost
        assert int(headers["Retry-After"]) == max(1, math.ceil(cost - level))


@pytest.mark.slow
def test_concurrency_holds_across_two_replicas(worker, tmp_path):
    long_call = {**CHAT, "max_tokens": 64, "ignore_eos": True, "stream": True}
    with two_replicas(worker, tmp_path, "--tenant-concurrency", "1") as (a, b, _):
        req = urllib.request.Request(f"http://127.0.0.1:{a}/v1/chat/completions", method="POST",
                                     data=json.dumps(long_call).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as stream:
            assert stream.status == 200
            assert stream.readline().startswith(b"data: ")  # streaming: the call holds the tenant's one place
            status, err, headers = post(b, {**CHAT, "max_tokens": 2})
            assert status == 429 and err["error"]["code"] == "tenant_concurrency", err
            assert headers["Retry-After"] == "1"
            rest = stream.read()  # to its end: the place is given back
        assert rest.rstrip().endswith(b"data: [DONE]")
        deadline = time.monotonic() + 30
        while (status := post(b, {**CHAT, "max_tokens": 2})[0]) == 429:
            assert time.monotonic() < deadline, "the place was never given back"
            time.sleep(0.1)
        assert status == 200


@pytest.mark.asyncio
async def test_without_redis_each_replica_counts_on_its_own():
    closed = redis.asyncio.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    admission = Admission(Limits(tenant_tokens_per_min=120, tenant_concurrency=1))
    admission.shared = SharedLimits(closed, "ag", lease_s=60)
    await admission.charge("t", 100)  # the local bucket: 120 → 20
    with pytest.raises(TooManyRequestsError) as rate:
        await admission.charge("t", 100)
    assert rate.value.code == "token_rate" and admission.shared.down
    async with admission.call("u", 1):
        with pytest.raises(TooManyRequestsError) as busy:
            async with admission.call("u", 1):
                pass
        assert busy.value.code == "tenant_concurrency"
    assert admission.tenant_calls == {}
    await closed.aclose()
