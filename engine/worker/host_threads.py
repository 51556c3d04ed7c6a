"""The worker's side of engine/hostshare.py: register on the host, keep a fair share, say when the
host is oversubscribed.

At start the worker writes its entry (port, threads, whether they were chosen automatically)
and logs a warning if the workers here now run more threads than the host has cores. While
it serves, every REBALANCE_S it re-reads the registry: a worker whose count is automatic moves
to its fair share (a second worker arrived, or one left), and a new oversubscription is
warned about once. Its entry is removed when the app shuts down.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from engine.hostshare import HostRegistry, ThreadChoice, host_cores
from engine.runtime.engine import Engine

log = logging.getLogger("agentgate.worker")
REBALANCE_S = 2.0
HOST_SHARE = web.AppKey("host_share", dict)


def attach_host_share(app: web.Application, engine: Engine, registry: HostRegistry, choice: ThreadChoice,
                      port: int, rebalance_s: float = REBALANCE_S) -> None:
    state = {"choice": choice, "warned": None, "registry": registry}
    app[HOST_SHARE] = state
    registry.register(port, engine.threads, choice.automatic)
    _warn_if_oversubscribed(state)

    async def lifecycle(app: web.Application):
        task = asyncio.create_task(_keep_share(engine, state, port, rebalance_s), name="host-share")
        try:
            yield
        finally:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            registry.unregister()

    app.cleanup_ctx.append(lifecycle)


def _warn_if_oversubscribed(state: dict) -> None:
    warning = state["registry"].oversubscription()
    if warning is not None and warning != state["warned"]:
        log.warning(warning)
    state["warned"] = warning


async def _keep_share(engine: Engine, state: dict, port: int, period: float) -> None:
    registry: HostRegistry = state["registry"]
    while True:
        await asyncio.sleep(period)
        if state["choice"].automatic:
            share = await asyncio.to_thread(registry.fair_share, host_cores())
            if share != engine.threads:
                log.info("workers on this host changed: running on %d thread(s) instead of %d", share, engine.threads)
                await asyncio.wrap_future(engine.set_threads(share))
                await asyncio.to_thread(registry.register, port, share, True)
        await asyncio.to_thread(_warn_if_oversubscribed, state)
