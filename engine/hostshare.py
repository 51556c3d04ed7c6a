"""Threads that fit the host: how many CPU threads a worker's engine takes, and who else is here.

Workers that share a host share its cores. Two workers of two threads each on two cores
run 4-5x slower than two of one thread each (both thread pools spin on cores the other
needs), so a worker's thread count is a property of the host, not of the worker alone.

The count, first that applies (`choose_threads`):
1. `--threads N` (N > 0): what the operator said;
2. OMP_NUM_THREADS in the environment, as every OpenMP program honours it;
3. `--workers-per-host K` (or AGENTGATE_WORKERS_PER_HOST): cores // K;
4. the host registry: cores // (workers already registered here + 1).

The host registry is a directory with one small JSON file per live worker process (pid,
port, threads, whether its count was chosen automatically). Under /dev/shm where it exists,
so it lives exactly as long as the host's uptime; AGENTGATE_HOST_REGISTRY moves it (tests
use a private one). A worker registers when it starts and removes its file when it stops;
a file whose pid no longer runs is ignored and cleaned up. Every `rebalance_s` a worker
whose count was chosen automatically (4) re-reads the registry and takes its fair share
again: a worker started alone takes every core and gives half back when a second one
arrives. When the registered threads exceed the cores, every worker says so in its log.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger("agentgate.worker")

REGISTRY_ENV = "AGENTGATE_HOST_REGISTRY"
WORKERS_PER_HOST_ENV = "AGENTGATE_WORKERS_PER_HOST"


def host_cores() -> int:
    """The cores this process may run on (its affinity mask, which containers narrow), else the CPU count."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class ThreadChoice(NamedTuple):
    threads: int
    source: str  # which rule gave it: "--threads", "OMP_NUM_THREADS", "--workers-per-host", "host registry"

    @property
    def automatic(self) -> bool:
        """Chosen from the workers present (rule 4): may change as workers come and go."""
        return self.source == "host registry"


def _positive_int(value: str | None, name: str) -> int | None:
    if value is None or not value.strip():
        return None
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a whole number of threads") from None
    if n < 1:
        raise ValueError(f"{name}={value!r} must be at least 1")
    return n


def choose_threads(requested: int = 0, workers_per_host: int = 0, env: dict | None = None,
                   registry: "HostRegistry | None" = None, cores: int | None = None) -> ThreadChoice:
    """The engine's thread count by the rules in the module docstring; ValueError for an unusable value."""
    env = os.environ if env is None else env
    cores = cores or host_cores()
    if requested < 0:
        raise ValueError(f"--threads {requested}: must be at least 0 (0 = this worker's share of the host)")
    if requested > 0:
        return ThreadChoice(requested, "--threads")
    omp = _positive_int(env.get("OMP_NUM_THREADS"), "OMP_NUM_THREADS")
    if omp is not None:
        return ThreadChoice(omp, "OMP_NUM_THREADS")
    if workers_per_host < 0:
        raise ValueError(f"--workers-per-host {workers_per_host}: must be at least 0")
    per_host = workers_per_host or _positive_int(env.get(WORKERS_PER_HOST_ENV), WORKERS_PER_HOST_ENV)
    if per_host:
        return ThreadChoice(max(1, cores // per_host), "--workers-per-host")
    others = len(registry.peers()) if registry is not None else 0
    return ThreadChoice(max(1, cores // (others + 1)), "host registry")


def default_registry_dir() -> Path:
    given = os.environ.get(REGISTRY_ENV)
    if given:
        return Path(given)
    shm = Path("/dev/shm")
    return (shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())) / "agentgate-workers"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class HostRegistry:
    """The workers of this host (module docstring); each entry is {"pid", "port", "threads", "automatic"}."""

    def __init__(self, directory: Path | None = None, pid: int | None = None):
        self.dir = directory or default_registry_dir()
        self.pid = pid or os.getpid()

    @property
    def _mine(self) -> Path:
        return self.dir / f"{self.pid}.json"

    def entries(self) -> list[dict]:
        """Every live worker's entry, this one's included; dead ones' files are removed."""
        out = []
        try:
            files = sorted(self.dir.glob("*.json"))
        except OSError:
            return out
        for path in files:
            try:
                entry = json.loads(path.read_text())
                pid = int(entry["pid"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # being written, or not ours to read: skip it this time
            if _alive(pid):
                out.append(entry)
            else:
                path.unlink(missing_ok=True)
        return out

    def peers(self) -> list[dict]:
        return [e for e in self.entries() if e["pid"] != self.pid]

    def register(self, port: int, threads: int, automatic: bool) -> None:
        """Write (or rewrite) this worker's entry; a registry that cannot be written is only logged."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = self.dir / f".{self.pid}.tmp"
            tmp.write_text(json.dumps({"pid": self.pid, "port": port, "threads": threads, "automatic": automatic}))
            tmp.replace(self._mine)
        except OSError as exc:
            log.warning("host registry %s not writable (%s): co-located workers cannot share the cores", self.dir, exc)

    def unregister(self) -> None:
        try:
            self._mine.unlink(missing_ok=True)
        except OSError:
            pass

    def fair_share(self, cores: int | None = None) -> int:
        """This worker's share when the workers with automatic counts split what the fixed ones leave."""
        cores = cores or host_cores()
        entries = self.entries()
        fixed = sum(e["threads"] for e in entries if not e.get("automatic") and e["pid"] != self.pid)
        automatic = sum(1 for e in entries if e.get("automatic") or e["pid"] == self.pid)
        return max(1, (cores - fixed) // max(automatic, 1))

    def oversubscription(self, cores: int | None = None) -> str | None:
        """A warning when the registered workers' threads exceed the cores, else None."""
        cores = cores or host_cores()
        entries = self.entries()
        total = sum(e["threads"] for e in entries)
        if total <= cores:
            return None
        listing = ", ".join(f"port {e['port']}: {e['threads']}" for e in sorted(entries, key=lambda e: e["port"]))
        return (f"{len(entries)} workers on this host run {total} threads on {cores} cores ({listing}); workers "
                "that oversubscribe the cores slow each other several times over: give each --threads so that "
                "they sum to the cores, or --workers-per-host")
