"""agentgate's Python SDK: `Client` / `AsyncClient` (agents/agentgate/client.py, agents/agentgate/async_client.py),
the workflow builder (agents/agentgate/workflow.py), typed errors (agents/agentgate/errors.py).

Only the two clients are re-exported, lazily, so `import agentgate` stays cheap and
no module is imported through this file (docs/architecture.md §6).
"""

from __future__ import annotations

__all__ = ["AsyncClient", "Client"]


def __getattr__(name: str):
    if name == "Client":
        from agentgate.client import Client

        return Client
    if name == "AsyncClient":
        from agentgate.async_client import AsyncClient

        return AsyncClient
    raise AttributeError(f"module 'agentgate' has no attribute {name!r}")
