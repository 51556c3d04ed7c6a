"""Co-located workers share the host's cores: started without --threads, two workers end up with
threads that sum to the cores (the first gives back what the second needs), and a worker honours
OMP_NUM_THREADS as every OpenMP program does. Each worker here registers in a private host registry,
so the suite's other workers do not count."""

from __future__ import annotations

import os
import time

import pytest

from engine.hostshare import host_cores
from tests.support import http_json, start_worker, stop_worker

pytestmark = pytest.mark.slow
SETTLE_S = 60  # bound on waiting for the workers' rebalancing rounds (every 2 s)


def _threads(worker) -> tuple[int, str]:
    status, info = http_json("GET", worker.url + "/get_server_info")
    assert status == 200
    return info["threads"], info["threads_source"]


def _settled(workers, total: int) -> list[int]:
    deadline = time.monotonic() + SETTLE_S
    while True:
        counts = [_threads(w)[0] for w in workers]
        if sum(counts) == total or time.monotonic() > deadline:
            return counts
        time.sleep(0.5)


def test_two_workers_started_without_threads_share_the_cores_and_omp_num_threads_is_honoured(model_dir, tmp_path):
    cores = host_cores()
    half = max(1, cores // 2)  # on one core both still get a thread each, and say the host is oversubscribed
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "AGENTGATE_WORKERS_PER_HOST")}
    env["AGENTGATE_HOST_REGISTRY"] = str(tmp_path / "registry")
    args = ("--matmul-backend", "numpy", "--l3", "none")
    first = start_worker(model_dir, tmp_path, *args, threads=None, env=env)
    try:
        assert _threads(first) == (cores, "host registry")  # alone on the host: every core
        second = start_worker(model_dir, tmp_path, *args, threads=None, env=env)
        try:
            assert _threads(second) == (half, "host registry")
            assert _settled([first, second], half * 2) == [half, half]
            if half * 2 > cores:
                assert "threads on 1 cores" in first.log_tail() + second.log_tail()
        finally:
            stop_worker(second)
        omp = start_worker(model_dir, tmp_path, *args, threads=None, env={**env, "OMP_NUM_THREADS": "1"})
        try:
            assert _threads(omp) == (1, "OMP_NUM_THREADS")
            # the automatic one takes what is left (at least one thread)
            assert _settled([first, omp], max(cores, 2)) == [max(cores - 1, 1), 1]
        finally:
            stop_worker(omp)
    finally:
        stop_worker(first)
    assert list((tmp_path / "registry").glob("*.json")) == []  # each removed its entry on the way out
