"""engine/compute.py: one thread runs every job, in order; errors reach the caller; close ends it."""

from __future__ import annotations

import threading

import pytest
import torch

from engine.compute import ComputeThread, single_threaded_torch


def test_jobs_run_in_order_on_one_thread_and_errors_reach_the_caller():
    compute = ComputeThread("test-compute")
    seen = []
    futures = [compute.run(lambda i=i: seen.append((i, threading.current_thread()))) for i in range(5)]
    for fut in futures:
        fut.result(timeout=10)
    assert [i for i, _ in seen] == list(range(5))
    assert {t for _, t in seen} == {compute.thread} and compute.thread is not threading.main_thread()
    with pytest.raises(ZeroDivisionError):
        compute.run(lambda: 1 / 0).result(timeout=10)
    assert compute.run(lambda a, b: a + b, 2, 3).result(timeout=10) == 5  # still serving after an error
    compute.close()
    assert not compute.thread.is_alive()


def test_helper_threads_run_torch_alone():
    out = {}

    def helper():
        single_threaded_torch()
        out["threads"] = torch.get_num_threads()

    t = threading.Thread(target=helper)
    t.start()
    t.join()
    assert out["threads"] == 1


def test_the_engine_builds_and_steps_on_its_compute_thread(engine_fp32):
    """Weights, pool and every step live on the engine's one compute thread (engine/compute.py says why)."""
    where = engine_fp32.call(threading.current_thread).result(timeout=30)
    assert where is engine_fp32._compute.thread and engine_fp32.alive
