"""engine/hostshare.py: the thread count a worker takes, and the host registry that shares the cores."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from engine.hostshare import HostRegistry, choose_threads


def test_threads_given_win_then_omp_num_threads_then_the_per_host_hint_then_the_registry(tmp_path):
    reg = HostRegistry(tmp_path, pid=os.getpid())
    assert choose_threads(3, 2, env={"OMP_NUM_THREADS": "1"}, registry=reg, cores=8) == (3, "--threads")
    assert choose_threads(0, 2, env={"OMP_NUM_THREADS": "1"}, registry=reg, cores=8) == (1, "OMP_NUM_THREADS")
    assert choose_threads(0, 2, env={}, registry=reg, cores=8) == (4, "--workers-per-host")
    assert choose_threads(0, 0, env={"AGENTGATE_WORKERS_PER_HOST": "4"}, registry=reg, cores=8).threads == 2
    assert choose_threads(0, 3, env={}, registry=reg, cores=2).threads == 1  # never below one thread
    alone = choose_threads(0, 0, env={}, registry=reg, cores=8)
    assert alone == (8, "host registry") and alone.automatic


def test_bad_thread_settings_are_refused_with_their_name():
    with pytest.raises(ValueError, match="OMP_NUM_THREADS='two'"):
        choose_threads(0, 0, env={"OMP_NUM_THREADS": "two"})
    with pytest.raises(ValueError, match="OMP_NUM_THREADS='0'"):
        choose_threads(0, 0, env={"OMP_NUM_THREADS": "0"})
    with pytest.raises(ValueError, match="--threads -1"):
        choose_threads(-1)
    with pytest.raises(ValueError, match="--workers-per-host -2"):
        choose_threads(0, -2, env={})


def _sleeper() -> subprocess.Popen:
    """A live process of our own, to stand for another worker."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_registry_counts_live_workers_shares_the_cores_and_warns_past_them(tmp_path):
    other = _sleeper()
    try:
        me = HostRegistry(tmp_path, pid=os.getpid())
        them = HostRegistry(tmp_path, pid=other.pid)
        them.register(30001, 4, automatic=True)
        # a second worker arriving takes half; the first, automatic too, moves to half as well
        assert choose_threads(0, 0, env={}, registry=me, cores=4).threads == 2
        me.register(30000, 2, automatic=True)
        assert them.fair_share(cores=4) == 2 and me.fair_share(cores=4) == 2
        assert "2 workers on this host run 6 threads on 4 cores" in me.oversubscription(cores=4)
        them.register(30001, 2, automatic=True)
        assert me.oversubscription(cores=4) is None
        # a worker with a fixed count keeps it; the automatic ones split what it leaves
        them.register(30001, 3, automatic=False)
        assert me.fair_share(cores=4) == 1
    finally:
        other.kill()
        other.wait()
    # a dead worker's entry is ignored and removed
    assert [e["port"] for e in me.entries()] == [30000]
    assert sorted(p.name for p in tmp_path.glob("*.json")) == [f"{os.getpid()}.json"]
    me.unregister()
    assert me.entries() == []


def test_a_registry_that_cannot_be_written_is_survived(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    reg = HostRegistry(blocked / "workers", pid=os.getpid())
    reg.register(30000, 2, automatic=True)  # logged, not raised
    assert reg.entries() == [] and reg.oversubscription(cores=2) is None
