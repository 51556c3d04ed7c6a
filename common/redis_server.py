"""A private redis-server on a free local port, for when REDIS_URL is unset, and how a Redis URL
may appear in logs (`redact`).

Started by the launcher and by the test suite; data lives in a temp dir and
nothing is saved. The binary is Debian's `redis-server` from PATH (scripts/up
installs it when missing).
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from urllib.parse import urlsplit, urlunsplit


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A private redis-server on loopback. Nothing is saved unless `durable`: then every write goes to an
    append-only file, fsynced at once, so a restart on the same port and directory keeps every key."""

    def __init__(self, port: int | None = None, *, durable: bool = False, password: str | None = None,
                 tls: bool = False):
        self.port = port or free_port()
        self.durable = durable
        self.password = password  # requirepass: clients must AUTH (the URL carries it)
        self.tls = tls  # TLS only, with a self-signed certificate for 127.0.0.1 (openssl); the URL is rediss://
        self.dir = tempfile.mkdtemp(prefix="agentgate-redis-")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_cert_reqs=required&ssl_ca_certs={self.dir}/cert.pem"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def _tls_args(self) -> tuple[str, ...]:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", f"{self.dir}/key.pem",
                        "-out", f"{self.dir}/cert.pem"], check=True, capture_output=True)
        return ("--port", "0", "--tls-port", str(self.port), "--tls-cert-file", f"{self.dir}/cert.pem",
                "--tls-key-file", f"{self.dir}/key.pem", "--tls-ca-cert-file", f"{self.dir}/cert.pem",
                "--tls-auth-clients", "no")

    def _connect(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=0.5)
        if not self.tls:
            return s
        return ssl.create_default_context(cafile=f"{self.dir}/cert.pem").wrap_socket(s, server_hostname="127.0.0.1")

    def start(self, timeout: float = 10.0) -> "RedisServer":
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not on PATH; run scripts/up (it installs Debian's redis-server)")
        self.proc = subprocess.Popen(
            [binary, *(self._tls_args() if self.tls else ("--port", str(self.port))), "--bind", "127.0.0.1",
             "--save", "", "--dir", self.dir, "--protected-mode", "yes", *(("--requirepass", self.password) if self.password else ()),
             *(("--appendonly", "yes", "--appendfsync", "always") if self.durable else ("--appendonly", "no"))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                with self._connect() as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith((b"+PONG", b"-NOAUTH")):  # up (and, with a password, locked)
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError("redis-server did not answer PING")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def redact(url: str) -> str:
    """The URL as it may appear in logs and errors: any password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
