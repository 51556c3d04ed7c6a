"""The processes scripts/bench_chaos.py runs its load on and injects faults into, all on loopback: a durable
Redis (append-only, fsync always), fast stand-in workers (scripts/standin_worker.py), optionally one real
embedded engine worker, and two gateway replicas sharing the Redis. Each is a real process, so a fault is
a signal: SIGKILL (dies), SIGSTOP/SIGCONT (hangs, resumes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from common.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 240


class Proc:
    """A child process serving HTTP on `port`; `ready` is the path that answers 200 once it serves."""

    def __init__(self, name: str, cmd: list[str], port: int, log_dir: Path, ready: str = "/health"):
        self.name, self.cmd, self.port, self.ready = name, cmd, port, ready
        self.log_path = log_dir / f"{name}.log"
        self.popen: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Proc":
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "agents")])}
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(self.cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not http_ok(self.url + self.ready):
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not become ready; see {self.log_path}")
            time.sleep(0.2)

    def signal(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.kill(self.popen.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(timeout=10)

    def restart(self) -> None:
        self.kill()
        self.start().wait_ready()

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        self.popen.terminate()
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except (OSError, urllib.error.URLError):
        return False


class Cluster:
    def __init__(self, log_dir: Path, *, standins: int = 3, real_worker: bool = True, tokens: int = 8,
                 token_delay_s: float = 0.01, gateway_args: tuple[str, ...] = ()):
        self.log_dir = log_dir
        self.redis = RedisServer(durable=True)
        py = sys.executable
        self.workers = [Proc(f"standin-{i}", [py, "-m", "scripts.standin_worker", "--port", str(port), "--tokens",
                                               str(tokens), "--token-delay", str(token_delay_s)], port, log_dir)
                        for i, port in ((i, free_port()) for i in range(standins))]
        if real_worker:
            from engine.model.prepare import prepare_default_model

            port = free_port()
            self.workers.append(Proc("engine-worker", [
                py, "-m", "engine.worker.main", "--port", str(port), "--model-path", str(prepare_default_model()),
                "--dtype", "float32", "--threads", "1", "--kv-memory-gb", "0.25", "--context-length", "1024",
                "--l3", f"dir:{log_dir / 'l3'}"], port, log_dir))
        urls = [w.url for w in self.workers]
        self.gateways = [Proc(f"gateway-{name}", [
            py, "-m", "gateway.main", "--port", str(port), "--redis-url", self.redis.url, "--worker-urls", *urls,
            "--log-level", "warning", *gateway_args], port, log_dir, ready="/health/ready")
            for name, port in (("a", free_port()), ("b", free_port()))]

    def start(self) -> "Cluster":
        self.redis.start()
        for p in self.workers:
            p.start()
        for p in self.workers:
            p.wait_ready()
        for g in self.gateways:
            g.start()
        for g in self.gateways:
            g.wait_ready()
        return self

    def stop(self) -> None:
        for p in self.gateways + self.workers:
            p.stop()
        self.redis.stop()

    # -- Redis faults --------------------------------------------------------------------------------
    def pause_redis(self) -> None:
        os.kill(self.redis.proc.pid, signal.SIGSTOP)

    def resume_redis(self) -> None:
        os.kill(self.redis.proc.pid, signal.SIGCONT)

    def kill_redis(self) -> None:
        self.redis.proc.kill()
        self.redis.proc.wait(timeout=10)

    def start_redis(self) -> None:
        """On the same port and directory: its append-only file brings every key back."""
        self.redis.start()

    def healthy(self) -> bool:
        return all(http_ok(g.url + "/health/ready") for g in self.gateways)

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if time.monotonic() > deadline:
                raise RuntimeError("the gateways are not ready after the fault was healed")
            time.sleep(0.25)
