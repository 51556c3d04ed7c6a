"""Gateway configuration: one frozen dataclass, built from CLI flags or by tests."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.admission import Limits
from gateway.auth.keys import KeyTable

DEFAULT_WORKER_SLOTS = 64  # a worker's calls at once until its own limit is read (the engine's default)
# Tier credit (gateway/router/prefix_source.py): what a block cached in each tier saves against recomputing it.
L1_CREDIT = 1.0
L2_CREDIT = 0.98
L3_CREDIT = 0.97
RECENT_S = 30.0  # a prefix sent to a worker this recently counts as cached there, indexed yet or not
# kv_aware affinity (gateway/router/policies/kv_aware.py): the share of the prompt's tokens a worker's own pool
# must hold to get the call.
AFFINITY_THRESHOLD = 0.5  # of the prompt's tokens
# Requests above the least-loaded candidate that a holder may carry and still get the call: SGLang's
# cache_aware default (balance_abs_threshold). On the 2-core host, 4 spread a diamond's calls over both
# workers, whose decode steps then each read the weights and slowed each other: 1.5-2x the forward-seconds
# of sglang-router for the same tokens (BENCHMARKS.md "Workflows against sglang-router").
BALANCE_SLACK = 64
# How much less (a share of the holder's) a call must add to another worker's completion times to be taken
# from the worker that holds its prefix (kv_aware's finish-time step). GPU workers differ by well under 1% (a
# row costs little next to a step), the 2-core CPU's by 20-40% between an idle worker and one carrying a stage.
SPREAD_MARGIN = 0.05


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
    # Concurrent calls the gateway keeps on one worker (its own calls plus what /get_load reports). 0: as
    # many as the worker runs at once (its /get_server_info max_running_requests; DEFAULT_WORKER_SLOTS until
    # known). Holding calls back below that only staggers a ready set that the worker would batch together.
    worker_concurrency: int = 0
    # A replica owns the workflows it runs through a Redis lease; an expired lease lets another take over.
    lease_ttl_s: float = 10.0
    # A worker call that is not streamed must answer within this; a streamed one is bounded by the two
    # below instead (None: the worker kind's default, workers/pool.py STREAM_TIMEOUTS).
    request_timeout_s: float = 600.0
    first_token_timeout_s: float | None = None
    inter_token_timeout_s: float | None = None
    # A workflow node whose worker dies mid-stream continues on another worker from the tokens it produced
    # (scheduler/migration.py) rather than starting over.
    request_migration: bool = True
    # Redis: at most `redis_max_connections` connections (a command waits up to `redis_pool_timeout_s` for
    # one), each command up to `redis_timeout_s`. The scheduler's state writes are retried with backoff for
    # up to `redis_retry_s` (an outage that long is waited out); token events are buffered meanwhile, at
    # most `redis_buffer_events` (more are dropped; each node's output is in its node_finished event anyway).
    redis_max_connections: int = 128
    # SSE followers read their workflows' event streams over a pool of their own, this size: however many
    # follow, they wait for each other (their events come later), never the scheduler's state writes.
    redis_follower_connections: int = 32
    redis_pool_timeout_s: float = 30.0
    redis_timeout_s: float = 5.0
    redis_retry_s: float = 60.0
    redis_buffer_events: int = 10_000
    default_max_tokens: int = 128
    retry_after_s: int = 1
    # Where the tokenizer used for prefix hashing lives; None = ask the workers (/get_model_info).
    tokenizer_path: str | None = None
    key_prefix: str = "ag"
    # Workflow calls (dispatched nodes and calls tagged with agent_hints) reach the workers with SGLang's
    # `priority` = this + the workflow's own priority, so they run ahead of plain calls (no priority = 0)
    # and the workers' prefetches (negative); a call that sets its own priority keeps it. 0: no precedence,
    # the default: BENCHMARKS.md "Workflows" measured no gain from 1 (the with_priority configuration).
    workflow_priority: int = 0
    # KV index (gateway/kvindex): this replica's consumer group on the workers' event streams ("" = one
    # of its own, removed on stop), how often the worker registry is read, and the routing credit of a
    # block cached in L2 / L3 relative to L1.
    kvindex_group: str = ""
    kvindex_registry_interval_s: float = 1.0
    kv_credit_l2: float = L2_CREDIT
    kv_credit_l3: float = L3_CREDIT
    kv_recent_s: float = RECENT_S  # a prefix sent to a worker this recently counts as cached there (0 = off)
    # kv_aware affinity (gateway/router/policies/kv_aware.py): a call goes to the worker whose own pool holds
    # at least this share of its prompt, unless that worker carries more than balance_slack requests above
    # the least-loaded candidate.
    affinity_threshold: float = AFFINITY_THRESHOLD
    balance_slack: int = BALANCE_SLACK
    # ...and where workers publish their step costs, another worker takes the call when it would finish it
    # this share sooner (kv_aware step 3; 1 = never)
    spread_margin: float = SPREAD_MARGIN
    # Agent awareness (gateway/awareness/runs.py). The three switches are the ablations:
    # prediction off = no prefetch, pins or pipelining at all; pinning off = prefetch without pins
    # (and no caller pins during tool calls); token_pipelining "on" | "off" | "auto" (auto: the
    # measured default; a workflow's options.token_pipelining decides for it, except under "off").
    prediction: bool = True
    pinning: bool = True
    token_pipelining: str = "auto"
    token_pipelining_blocks: int = 2  # a streaming upstream re-plans its downstream every this many blocks
    # Prefetch a pending node's whole knowable prefix when P(it runs) ≥ this, else only its static prefix;
    # only nodes at most `prefetch_horizon` steps from running; per worker at most `prefetch_max_inflight`
    # prefetches at once, none while it has `prefetch_max_waiting` requests waiting. At dispatch a node
    # goes to the worker holding its prefix unless that one has more than `prefetch_affinity_slack`
    # requests above the policy's choice.
    prefetch_threshold: float = 0.5
    prefetch_horizon: int = 2
    prefetch_max_inflight: int = 2
    prefetch_max_waiting: int = 4
    prefetch_affinity_slack: int = 2
    # Pin TTL = expected wait × pin_factor + pin_margin_s, within [pin_min_s, pin_max_s]; a tool call
    # nothing was learned about is expected to take default_tool_latency_s.
    pin_factor: float = 1.5
    pin_margin_s: float = 2.0
    pin_min_s: float = 5.0
    pin_max_s: float = 600.0
    default_tool_latency_s: float = 5.0
    # Tenancy and bounds (gateway/auth, gateway/admission.py). api_keys None: open, one tenant (loopback only).
    api_keys: KeyTable | None = None
    worker_api_key: str | None = None  # sent to the workers as a Bearer token (their --api-key)
    limits: Limits = Limits()
    body_timeout_s: float = 30.0  # a client has this long to send a request body (a trickle is cut off: 408)
    retention_s: float | None = 86_400.0  # finished workflows' keys expire this long after they ended
    # KV event streams of a model no live worker serves, and consumer groups no replica read from, this
    # long are removed (gateway/janitor.py)
    kv_stale_s: float = 600.0
