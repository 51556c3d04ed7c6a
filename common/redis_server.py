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
                 tls: bool = False, cluster: bool = False):
        self.port = port or free_port()
        self.cluster = cluster  # a Redis Cluster node (RedisClusterServer joins three of them)
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
             *(("--appendonly", "yes", "--appendfsync", "always") if self.durable else ("--appendonly", "no")),
             *(("--cluster-enabled", "yes", "--cluster-config-file", f"{self.dir}/nodes.conf",
                # a free bus port of its own: the default, port + 10000, may be taken or past 65535
                "--cluster-port", str(free_port()), "--cluster-node-timeout", "5000") if self.cluster else ())],
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


class RedisClusterServer:
    """A Redis Cluster of `masters` private redis-servers on loopback (no replicas), its slots spread
    evenly by `redis-cli --cluster create`. `url` is a redis+cluster:// URL (common/redis_client.py)."""

    def __init__(self, masters: int = 3):
        self.nodes = [RedisServer(cluster=True) for _ in range(masters)]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self, timeout: float = 30.0) -> "RedisClusterServer":
        try:
            for node in self.nodes:
                node.start()
            cli = shutil.which("redis-cli")
            if cli is None:
                raise FileNotFoundError("redis-cli is not on PATH (Debian's redis-tools, beside redis-server)")
            subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                            "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True,
                           timeout=timeout)
            deadline = time.monotonic() + timeout
            while not all(self._ok(n) for n in self.nodes):  # every node sees every slot served
                if time.monotonic() > deadline:
                    raise TimeoutError("the Redis Cluster did not reach cluster_state:ok")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _ok(node: RedisServer) -> bool:
        with node._connect() as s:
            s.sendall(b"CLUSTER INFO\r\n")
            return b"cluster_state:ok" in s.recv(4096)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> "RedisClusterServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
