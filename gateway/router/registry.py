"""Policy names → constructors (the --policy flag)."""

from __future__ import annotations

from gateway.router.base import RoutingPolicy
from gateway.router.policies.kv_aware import KVAwarePolicy
from gateway.router.policies.least_load import LeastLoadPolicy
from gateway.router.policies.random import RandomPolicy
from gateway.router.policies.round_robin import RoundRobinPolicy

POLICIES: dict[str, type[RoutingPolicy]] = {p.name: p for p in (KVAwarePolicy, RoundRobinPolicy,
                                                                  LeastLoadPolicy, RandomPolicy)}


def make_policy(name: str, config=None) -> RoutingPolicy:
    """The policy `name`, set up from a GatewayConfig where it reads one (kv_aware: its affinity settings)."""
    if name not in POLICIES:
        raise ValueError(f"unknown routing policy {name!r}; choose from {', '.join(sorted(POLICIES))}")
    return POLICIES[name].from_config(config)
