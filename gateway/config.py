"""Gateway configuration: one frozen dataclass, built from CLI flags or by tests."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GatewayConfig:
    worker_urls: tuple[str, ...] = ()
    redis_url: str = "redis://127.0.0.1:6379/0"
    policy: str = "kv_aware"
    # Requests bigger than this are refused with a 413 before they are parsed.
    max_body_bytes: int = 8 * 1024 * 1024
    # Worker health: probe period, and how long an open breaker waits before a probe may close it.
    health_interval_s: float = 1.0
    breaker_failures: int = 3
    breaker_cooldown_s: float = 2.0
    # Concurrent calls the gateway keeps on one worker (its own calls plus what /get_load reports).
    worker_concurrency: int = 8
    # A replica owns the workflows it runs through a Redis lease; an expired lease lets another take over.
    lease_ttl_s: float = 10.0
    request_timeout_s: float = 600.0
    default_max_tokens: int = 128
    retry_after_s: int = 1
    # Where the tokenizer used for prefix hashing lives; None = ask the workers (/get_model_info).
    tokenizer_path: str | None = None
    key_prefix: str = "ag"
