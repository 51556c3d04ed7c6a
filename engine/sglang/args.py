"""The `python -m sglang.launch_server` command line agentgate needs.

Every flag here is in pinned.ARGS (checked against SGLang's own argument table
by tests/engine/sglang/test_args.py). What each one is for:
  --page-size 16            SGLang's page = our block, so one BlockStored hash = one of ours
  --kv-events-config        ZMQ PUB (+ replay ROUTER) on loopback ports, bound by SGLang
                            ("bind": true, since a concrete host would otherwise be connected to)
  --enable-cache-report     cached_tokens in OpenAI usage, as the gateway reads them
  --enable-metrics          /metrics, as on the embedded worker
  --enable-hierarchical-cache [--hicache-size GB] [--hicache-write-policy P]
                            the host-memory L2 (HiCache); `--hicache-storage-backend` adds L3
  --enable-priority-scheduling --default-priority-value 0
                            so prefetches can run below normal calls: without a default,
                            SGLang gives requests that carry no priority the lowest one
  --speculative-algorithm / --speculative-num-draft-tokens
                            our n-gram flag mapped; EAGLE-family and their parameters ride in
                            the extras after `--`, untouched
Extras may not repeat a flag the launcher owns (SGLang would take the last one,
silently undoing what agentgate relies on).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field

from engine.sglang.pinned import (HICACHE_STORAGE_BACKENDS, HICACHE_WRITE_POLICIES, SGLANG_VERSION,
                                  SPECULATIVE_ALGORITHMS)

log = logging.getLogger("agentgate.sglang")

SGLANG_MODULE = "sglang.launch_server"
EVENTS_TOPIC = "agentgate-kv"


class LaunchConfigError(ValueError):
    """The options cannot make a working SGLang command line."""


@dataclass(frozen=True)
class L3Config:
    backend: str  # one of pinned.HICACHE_STORAGE_BACKENDS
    extra_config: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> "L3Config":
        """`file:/some/dir` (SGLang's file backend in that directory) or a backend name,
        optionally `name:{json extra config}`."""
        name, _, rest = spec.partition(":")
        if name not in HICACHE_STORAGE_BACKENDS:
            raise LaunchConfigError(f"unknown SGLang L3 backend {name!r}; one of {', '.join(HICACHE_STORAGE_BACKENDS)}")
        if name == "file":
            if not rest:
                raise LaunchConfigError("the file L3 backend needs a directory: file:/path")
            return cls("file", {"file_storage_path": os.path.abspath(rest)})
        try:
            extra = json.loads(rest) if rest else {}
        except ValueError as exc:
            raise LaunchConfigError(f"L3 extra config is not JSON: {exc}") from exc
        return cls(name, extra)

    @property
    def store_id(self) -> str:
        """The L3 id the worker registers. SGLang keys its L3 by its own hashes, so its store
        is never the same store as an embedded worker's ("dir:..."), even on the same path."""
        where = self.extra_config.get("file_storage_path", "")
        return f"sglang-{self.backend}:{where}" if where else f"sglang-{self.backend}"


@dataclass(frozen=True)
class SGLangOptions:
    model_path: str
    host: str = "127.0.0.1"
    port: int = 30000
    served_model_name: str | None = None
    context_length: int = 0  # 0: the model's
    dtype: str = "auto"
    log_level: str = "info"
    disable_radix_cache: bool = False
    page_size: int = 16  # must equal the gateway's block size
    events_port: int = 5557  # PUB base port; rank r publishes on events_port + r
    replay_port: int = 5657  # replay ROUTER base port
    dp_size: int = 1
    hicache: bool = True
    hicache_size_gb: int = 0  # 0: SGLang's ratio-based default
    hicache_write_policy: str | None = None
    l3: L3Config | None = None
    priority_scheduling: bool = True
    speculative_ngram_tokens: int = 0  # > 0: --speculative-algorithm NGRAM with that many draft tokens
    python: str = sys.executable
    extra: tuple[str, ...] = ()

    def events_endpoints(self) -> list[str]:
        return [f"tcp://127.0.0.1:{self.events_port + r}" for r in range(self.dp_size)]

    def replay_endpoints(self) -> list[str]:
        return [f"tcp://127.0.0.1:{self.replay_port + r}" for r in range(self.dp_size)]

    def kv_events_config(self) -> str:
        # SGLang adds the DP rank to the ports itself.
        return json.dumps({"publisher": "zmq", "endpoint": f"tcp://127.0.0.1:{self.events_port}", "bind": True,
                           "replay_endpoint": f"tcp://127.0.0.1:{self.replay_port}", "topic": EVENTS_TOPIC},
                          separators=(",", ":"))


def build_command(opts: SGLangOptions, module: str = SGLANG_MODULE) -> list[str]:
    """The full argv, extras last."""
    if opts.page_size < 1:
        raise LaunchConfigError("page size must be at least 1")
    if opts.hicache_write_policy is not None and opts.hicache_write_policy not in HICACHE_WRITE_POLICIES:
        raise LaunchConfigError(f"unknown HiCache write policy {opts.hicache_write_policy!r}")
    if opts.l3 is not None and not opts.hicache:
        raise LaunchConfigError("an L3 backend needs the hierarchical cache (it backs the host L2)")
    cmd = [opts.python, "-m", module, "--model-path", opts.model_path, "--host", opts.host, "--port", str(opts.port),
           "--page-size", str(opts.page_size), "--kv-events-config", opts.kv_events_config(),
           "--enable-cache-report", "--enable-metrics", "--log-level", opts.log_level]
    if opts.served_model_name:
        cmd += ["--served-model-name", opts.served_model_name]
    if opts.context_length > 0:
        cmd += ["--context-length", str(opts.context_length)]
    if opts.dtype != "auto":
        cmd += ["--dtype", opts.dtype]
    if opts.disable_radix_cache:
        cmd += ["--disable-radix-cache"]
    if opts.hicache:
        cmd += ["--enable-hierarchical-cache"]
        if opts.hicache_size_gb > 0:
            cmd += ["--hicache-size", str(opts.hicache_size_gb)]
        if opts.hicache_write_policy:
            cmd += ["--hicache-write-policy", opts.hicache_write_policy]
    if opts.l3 is not None:
        cmd += ["--hicache-storage-backend", opts.l3.backend]
        if opts.l3.extra_config:
            cmd += ["--hicache-storage-backend-extra-config", json.dumps(opts.l3.extra_config, separators=(",", ":"))]
    if opts.priority_scheduling:
        cmd += ["--enable-priority-scheduling", "--default-priority-value", "0"]
    if opts.speculative_ngram_tokens > 0:
        cmd += ["--speculative-algorithm", "NGRAM",
                "--speculative-num-draft-tokens", str(opts.speculative_ngram_tokens)]
    check_extras(opts.extra, owned=_flags(cmd))
    return cmd + list(opts.extra)


def _flags(cmd: list[str]) -> set[str]:
    return {a for a in cmd if a.startswith("--")}


# Spellings SGLang accepts for the flags we own (aliases in its argument table).
ALIASES = {"--model": "--model-path", "--enable-hicache": "--enable-hierarchical-cache",
           "--data-parallel-size": "--dp-size"}


def check_extras(extra, owned: set[str]) -> None:
    """Refuse extras that would override a flag we set; warn about an unknown speculative algorithm."""
    for i, arg in enumerate(extra):
        flag = arg.split("=", 1)[0]
        if ALIASES.get(flag, flag) in owned:
            raise LaunchConfigError(f"{flag} is set by agentgate; drop it from the extra SGLang arguments")
        if flag == "--speculative-algorithm":
            value = arg.split("=", 1)[1] if "=" in arg else (extra[i + 1] if i + 1 < len(extra) else "")
            if value.upper() not in SPECULATIVE_ALGORITHMS:  # a plugin may have registered it
                log.warning("speculative algorithm %r is not one of SGLang %s's builtins (%s)", value,
                            SGLANG_VERSION, ", ".join(SPECULATIVE_ALGORITHMS))


def dp_size_of(extra) -> int:
    """The DP size the extras ask for (one KV publisher per rank)."""
    for i, arg in enumerate(extra):
        flag, eq, value = arg.partition("=")
        if flag in ("--dp-size", "--data-parallel-size"):
            value = value if eq else (extra[i + 1] if i + 1 < len(extra) else "")
            try:
                return max(int(value), 1)
            except ValueError as exc:
                raise LaunchConfigError(f"{flag} needs an integer, got {value!r}") from exc
    return 1
