"""A client trickling its request headers is cut off after --header-timeout, on the gateway and on the
worker (real processes, raw sockets): the connection is closed before the headers are complete, and
the server answers a prompt client afterwards. A client that sends its headers at once is served."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from common.redis_server import RedisServer, free_port
from tests.support import REPO_ROOT, start_worker, stop_worker

pytestmark = pytest.mark.slow

TRICKLE_GAP_S = 0.1
TRICKLE_BYTES = 400  # 40 s of trickle: far past the 1 s --header-timeout the servers run with


def health(port: int, path: str) -> bytes:
    """One prompt request: the status line of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        return s.recv(4096).split(b"\r\n", 1)[0]


def trickle(port: int, path: str) -> tuple[int, bytes]:
    """Send a request line and headers one byte per TRICKLE_GAP_S, never the blank line that ends them;
    (bytes sent before the server closed the connection, what it sent back)."""
    head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".encode() + b"a" * TRICKLE_BYTES
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.settimeout(TRICKLE_GAP_S)
        for sent, byte in enumerate(head):
            try:
                s.sendall(bytes([byte]))
            except OSError:  # reset: it was closed
                return sent, b""
            try:
                data = s.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return sent + 1, b""
            return sent + 1, data  # b"" once closed; a reply would be the server answering a partial head
    return len(head), b"(still open)"


def wait_up(port: int, path: str, proc: subprocess.Popen, log) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if health(port, path).startswith(b"HTTP/1.1 200"):
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)


def test_the_gateway_cuts_off_a_client_trickling_its_headers(tmp_path):
    redis = RedisServer().start()
    port = free_port()
    log = tmp_path / "gateway.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.main", "--port", str(port), "--redis-url", redis.url,
                                 "--header-timeout", "1"], cwd=REPO_ROOT, stdout=out, stderr=out,
                                env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        wait_up(port, "/health/live", proc, log)
        sent, reply = trickle(port, "/health/live")
        assert reply == b"" and sent < TRICKLE_BYTES, (sent, reply)  # closed mid-headers, nothing answered
        assert health(port, "/health/live").startswith(b"HTTP/1.1 200")  # and still serving
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        redis.stop()


def test_the_worker_cuts_off_a_client_trickling_its_headers(model_dir, tmp_path):
    worker = start_worker(model_dir, tmp_path, "--header-timeout", "1")
    try:
        port = int(worker.url.rsplit(":", 1)[1])
        sent, reply = trickle(port, "/health")
        assert reply == b"" and sent < TRICKLE_BYTES, (sent, reply)
        assert health(port, "/health").startswith(b"HTTP/1.1 200")
    finally:
        stop_worker(worker)
