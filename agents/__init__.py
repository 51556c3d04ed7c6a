"""agentgate's Python SDK: `Client` / `AsyncClient` (agents/client.py, agents/async_client.py),
the workflow builder (agents/workflow.py), typed errors (agents/errors.py).

Only the two clients are re-exported, lazily, so `import agents` stays cheap and
no module is imported through this file (docs/architecture.md §6: thin `__init__.py` files).
"""

from __future__ import annotations

__all__ = ["AsyncClient", "Client"]


def __getattr__(name: str):
    if name == "Client":
        from agents.client import Client

        return Client
    if name == "AsyncClient":
        from agents.async_client import AsyncClient

        return AsyncClient
    raise AttributeError(f"module 'agents' has no attribute {name!r}")
