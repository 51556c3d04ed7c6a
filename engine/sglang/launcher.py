"""Run one SGLang server as an agentgate worker, until SIGTERM/SIGINT.

Lifecycle:
1. the KV bridge subscribes first (so SGLang's first event batches, seq 0 on,
   are not lost to ZMQ's slow-joiner window);
2. `python -m sglang.launch_server ...` starts in its own session (process
   group), so a terminal's Ctrl-C reaches only us and we decide how it stops;
3. we wait for its GET /health (loading a model takes minutes);
4. the worker is registered in Redis (kind "sglang") by the Redis event
   publisher, which ships the bridge's EventLog and heartbeats the registry;
5. on SIGTERM/SIGINT, or when SGLang exits by itself: the publisher stops
   (deregisters), SGLang gets SIGTERM (it tears down its own scheduler and
   detokenizer processes), then SIGKILL for its whole group after a grace
   period; the bridge stops last.
The exit code is 0 after a requested stop, else SGLang's own (or 1).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid

import orjson

from common.kvwire import HEARTBEAT_TTL_S, WorkerInfo
from engine.kvcache.events import EventLog
from engine.kvcache.publisher import EventPublisher, connect
from engine.sglang.args import EVENTS_TOPIC, SGLANG_MODULE, SGLangOptions, build_command
from engine.sglang.kv_bridge import KVBridge

log = logging.getLogger("agentgate.sglang")


class ServerProcess:
    """A server process we started: start, probe /health, stop it and everything it spawned."""

    def __init__(self, cmd: list[str], url: str, env: dict | None = None):
        self.cmd = cmd
        self.url = url
        self.env = env
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ServerProcess":
        self.proc = subprocess.Popen(self.cmd, env=self.env, start_new_session=True)
        return self

    def poll(self) -> int | None:
        return self.proc.poll()

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def wait_healthy(self, timeout: float, stop: threading.Event) -> bool:
        """True once /health answers 200; False if `stop` is set first. Raises if the
        process exits or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while not stop.is_set():
            if self.poll() is not None:
                raise RuntimeError(f"SGLang exited with code {self.proc.returncode} before it was healthy")
            if self.healthy():
                return True
            if time.monotonic() > deadline:
                raise TimeoutError(f"SGLang at {self.url} not healthy after {timeout:.0f}s")
            stop.wait(1.0)
        return False

    def get_json(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return orjson.loads(r.read())

    def stop(self, grace_s: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                log.warning("SGLang did not stop within %.0fs of SIGTERM: killing its process group", grace_s)
        # Whatever it left behind in its group (scheduler/detokenizer processes) goes too.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return self.proc.wait()


def advertised_url(host: str, port: int) -> str:
    """The URL other machines reach this worker at (a wildcard bind is not an address)."""
    if host in ("0.0.0.0", "::", "", "*"):
        host = socket.getfqdn()
    return f"http://{host}:{port}"


class SGLangWorker:
    """The bridge, the SGLang process and the registry for one worker."""

    def __init__(self, opts: SGLangOptions, *, redis_url: str | None, advertise_url: str | None = None,
                 heartbeat_ttl_s: float = HEARTBEAT_TTL_S, module: str = SGLANG_MODULE,
                 startup_timeout_s: float = 1800.0, stop_grace_s: float = 30.0, env: dict | None = None):
        self.opts = opts
        self.redis_url = redis_url
        self.heartbeat_ttl_s = heartbeat_ttl_s
        self.cmd = build_command(opts, module)
        self.url = (advertise_url or advertised_url(opts.host, opts.port)).rstrip("/")
        self.startup_timeout_s = startup_timeout_s
        self.stop_grace_s = stop_grace_s
        self.events = EventLog()
        self.bridge = KVBridge(opts.events_endpoints(), self.events, replay_endpoints=opts.replay_endpoints(),
                               topic=EVENTS_TOPIC, block_size=opts.page_size)
        self.server = ServerProcess(self.cmd, f"http://127.0.0.1:{opts.port}" if opts.host in ("0.0.0.0", "::")
                                    else f"http://{opts.host}:{opts.port}", env)
        self.publisher = None
        self.info: WorkerInfo | None = None
        self.stopping = threading.Event()

    def run(self) -> int:
        """Serve until stop() or until SGLang exits; clean up either way."""
        if self.redis_url:  # fail now, not after minutes of model loading
            connect(self.redis_url).close()
        self.bridge.start()
        try:
            self.server.start()
            log.info("started SGLang (pid %d): %s", self.server.proc.pid, " ".join(self.cmd))
            if not self.server.wait_healthy(self.startup_timeout_s, self.stopping):
                return 0
            self.info = self._worker_info()
            self.publisher = self._start_publisher(self.info)
            print(f"agentgate worker (sglang) listening on {self.url}", flush=True)
            while not self.stopping.is_set() and self.server.poll() is None:
                self.stopping.wait(0.5)
            if not self.stopping.is_set():
                log.error("SGLang exited by itself with code %s", self.server.poll())
        finally:
            code = self.shutdown()
        return 0 if self.stopping.is_set() else (code or 1)

    def stop(self, *_signal_args) -> None:
        """Ask run() to return (safe from a signal handler)."""
        self.stopping.set()

    def shutdown(self) -> int | None:
        if self.publisher is not None:
            try:
                self.publisher.stop()
            except Exception:  # deregistering must not keep SGLang running
                log.exception("stopping the KV event publisher failed")
            self.publisher = None
        code = self.server.stop(self.stop_grace_s)
        self.bridge.stop()
        return code

    def _worker_info(self) -> WorkerInfo:
        model = self.opts.served_model_name
        if not model:
            info = self.server.get_json("/get_model_info")
            model = info.get("served_model_name") or info.get("model_path") or self.opts.model_path
        l3 = self.opts.l3.store_id if self.opts.l3 is not None else ""
        return WorkerInfo(url=self.url, model=model, kind="sglang", epoch=uuid.uuid4().hex,
                          block_size=self.opts.page_size, l3=l3, started=time.time())

    def _start_publisher(self, info: WorkerInfo):
        if not self.redis_url:
            log.warning("no Redis URL: the worker is not registered and its KV events go nowhere")
            return None
        return EventPublisher(self.redis_url, info, self.events, heartbeat_ttl_s=self.heartbeat_ttl_s).start()


def serve(worker: SGLangWorker) -> int:
    """run() with SIGTERM and SIGINT turned into a clean stop (main thread only)."""
    previous = {sig: signal.signal(sig, worker.stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return worker.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
