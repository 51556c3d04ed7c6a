"""The launcher's process management, with tests/engine/sglang/standin_server.py standing in for the
GPU server (it serves /health and records its command line; it is not SGLang). Registration goes to a
real Redis through the real EventPublisher."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import redis

from common.kvwire import WORKER_IDS, WorkerInfo, worker_key
from common.redis_server import free_port
from engine.sglang.args import SGLangOptions, build_command
from engine.sglang.cli import free_port_range
from engine.sglang.launcher import SGLangWorker
from tests.support import REPO_ROOT

STANDIN = "tests.engine.sglang.standin_server"


def options(**kw) -> SGLangOptions:
    base = free_port_range(2)
    return SGLangOptions(model_path="org/model-7b", port=free_port(), events_port=base, replay_port=base + 1, **kw)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie of ours still "exists"; it is gone for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_until(cond, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def standin_env(tmp_path):
    record = tmp_path / "standin.json"
    env = {**os.environ, "STANDIN_RECORD": str(record), "PYTHONPATH": str(REPO_ROOT)}
    return env, record


def run_in_thread(worker: SGLangWorker) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def target():
        try:
            out["code"] = worker.run()
        except Exception as exc:  # surfaced by the test
            out["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    return t, out


def test_starts_registers_and_stops_cleanly(standin_env, redis_url):
    env, record = standin_env
    opts = options(served_model_name="llama-8b", l3=None)
    worker = SGLangWorker(opts, redis_url=redis_url, module=STANDIN, env=env, stop_grace_s=5)
    r = redis.Redis.from_url(redis_url)
    thread, out = run_in_thread(worker)
    try:
        wait_until(lambda: r.exists(worker_key(worker.url)), what="the registry entry")
        info = WorkerInfo.loads(r.get(worker_key(worker.url)))
        assert (info.kind, info.model, info.block_size, info.url) == ("sglang", "llama-8b", 16, worker.url)
        assert r.sismember(WORKER_IDS, worker.url)
        seen = json.loads(record.read_text())
        assert seen["argv"] == build_command(opts, STANDIN)[3:]  # exactly the command line SGLang would get
        assert worker.bridge.alive
    finally:
        worker.stop()
        thread.join(30)
    assert out == {"code": 0}
    assert (record.parent / "standin.json.marker").read_text() == "sigterm\n"
    assert not alive(seen["pid"]) and not alive(seen["child"]), "the server's process group outlived the stop"
    assert not r.exists(worker_key(worker.url)) and not r.sismember(WORKER_IDS, worker.url)
    assert not worker.bridge.alive
    r.close()


def test_model_name_comes_from_the_server(standin_env, redis_url):
    env, _ = standin_env
    worker = SGLangWorker(options(), redis_url=redis_url, module=STANDIN, env=env, stop_grace_s=5)
    r = redis.Redis.from_url(redis_url)
    thread, out = run_in_thread(worker)
    try:
        wait_until(lambda: r.exists(worker_key(worker.url)))
        assert WorkerInfo.loads(r.get(worker_key(worker.url))).model == "org/model-7b"
    finally:
        worker.stop()
        thread.join(30)
        r.close()


def test_a_server_ignoring_sigterm_is_killed_after_the_grace(standin_env):
    env, record = standin_env
    env["STANDIN_IGNORE_TERM"] = "1"
    worker = SGLangWorker(options(), redis_url=None, module=STANDIN, env=env, stop_grace_s=0.5)
    thread, out = run_in_thread(worker)
    wait_until(lambda: worker.server.proc is not None and worker.server.healthy(), what="health")
    t0 = time.monotonic()
    worker.stop()
    thread.join(30)
    assert out == {"code": 0} and time.monotonic() - t0 < 10
    seen = json.loads(record.read_text())
    assert not alive(seen["pid"]) and not alive(seen["child"])


def test_a_server_dying_before_health_is_an_error(standin_env):
    env, record = standin_env
    env["STANDIN_EXIT"] = "early:3"
    worker = SGLangWorker(options(), redis_url=None, module=STANDIN, env=env)
    with pytest.raises(RuntimeError, match="code 3"):
        worker.run()
    assert not worker.bridge.alive
    assert not alive(json.loads(record.read_text())["child"])


def test_a_server_dying_later_ends_the_worker_with_its_code(standin_env, redis_url):
    env, _ = standin_env
    env["STANDIN_EXIT"] = "after:1.5:5"
    worker = SGLangWorker(options(), redis_url=redis_url, module=STANDIN, env=env)
    assert worker.run() == 5
    r = redis.Redis.from_url(redis_url)
    assert not r.exists(worker_key(worker.url))  # deregistered on the way out
    r.close()


def test_unreachable_redis_fails_before_launching(standin_env):
    env, record = standin_env
    worker = SGLangWorker(options(), redis_url=f"redis://127.0.0.1:{free_port()}/0", module=STANDIN, env=env)
    with pytest.raises(RuntimeError, match="Redis"):
        worker.run()
    assert worker.server.proc is None and not record.exists()


def test_sigterm_to_the_worker_process_is_forwarded(standin_env, redis_url, tmp_path):
    """The whole `serve()` path in its own process, stopped the way a supervisor stops it."""
    env, record = standin_env
    opts = options()
    driver = textwrap.dedent(f"""
        import sys
        from engine.sglang.args import SGLangOptions
        from engine.sglang.launcher import SGLangWorker, serve
        opts = SGLangOptions(model_path="org/model-7b", port={opts.port}, events_port={opts.events_port},
                             replay_port={opts.replay_port})
        sys.exit(serve(SGLangWorker(opts, redis_url={redis_url!r}, module={STANDIN!r}, stop_grace_s=5)))
    """)
    proc = subprocess.Popen([sys.executable, "-c", driver], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    r = redis.Redis.from_url(redis_url)
    url = f"http://127.0.0.1:{opts.port}"
    try:
        wait_until(lambda: r.exists(worker_key(url)) or proc.poll() is not None, what="registration")
        assert proc.poll() is None, proc.stdout.read()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    output = proc.stdout.read()
    assert f"agentgate worker (sglang) listening on {url}" in output
    assert (tmp_path / "standin.json.marker").read_text() == "sigterm\n"
    seen = json.loads(record.read_text())
    assert not alive(seen["pid"]) and not alive(seen["child"])
    assert not r.exists(worker_key(url))
    r.close()


def test_events_published_where_the_command_line_says_reach_redis(standin_env, redis_url):
    """The launcher's wiring: a real ZMQ PUB bound where --kv-events-config tells SGLang to bind, with
    its topic, emitting SGLang-format batches, ends up in the model's Redis stream under this worker."""
    from common.hashing import block_hashes
    from common.kvwire import EventBatch, stream_key
    from tests.engine.sglang.sglang_format import (
        SGLangPublisher,
        StorageMedium,
        stored_chain,
    )

    env, _ = standin_env
    opts = options(served_model_name="wired-model")
    worker = SGLangWorker(opts, redis_url=redis_url, module=STANDIN, env=env, stop_grace_s=5)
    config = json.loads(dict(zip(worker.cmd, worker.cmd[1:]))["--kv-events-config"])
    assert config["bind"] is True  # SGLang binds the PUB and replay sockets; the bridge connects
    pub = SGLangPublisher(config["endpoint"], config["replay_endpoint"], topic=config["topic"])
    r = redis.Redis.from_url(redis_url)
    thread, out = run_in_thread(worker)
    try:
        wait_until(lambda: r.exists(worker_key(worker.url)), what="registration")
        tokens = list(range(7, 7 + 48))
        pub.publish(stored_chain(tokens, medium=StorageMedium.GPU))

        def events():
            return [e for _, f in r.xrange(stream_key("wired-model")) for e in EventBatch.from_fields(f).events
                    if EventBatch.from_fields(f).worker == worker.url]

        wait_until(lambda: events(), what="the stream entry")
        assert [(e["op"], e["tier"], e["block_hashes"]) for e in events()] == [
            ("stored", "l1", block_hashes(tokens, 16))]
    finally:
        worker.stop()
        thread.join(30)
        pub.close()
        r.close()
    assert out == {"code": 0}
