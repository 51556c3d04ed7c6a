"""A stand-in worker for the KV index tests: the parts of a worker the index sees.

It holds block sets per tier, records every change in an EventLog exactly as
the engine does, ships them with the real EventPublisher to a real Redis, and
serves GET /kv/snapshot per common/kvwire.py (upto read before the
holdings). `snapshot_route=False` plays a worker without that route (an
SGLang worker); `publish=False` one that registers by hand and publishes nothing.
"""

from __future__ import annotations

import asyncio
import secrets
import time

from aiohttp import web

from common.kvwire import WorkerInfo
from common.redis_server import free_port
from engine.kvcache.events import EventLog
from engine.kvcache.publisher import EventPublisher


class KVWorker:
    def __init__(self, redis_url: str, *, model: str = "m", l3: str = "", publish: bool = True,
                 snapshot_route: bool = True, heartbeat_ttl_s: float = 2.0, **publisher_kwargs):
        self.redis_url = redis_url
        self.port = free_port()
        self.model = model
        self.l3 = l3
        self.publish = publish
        self.snapshot_route = snapshot_route
        self.heartbeat_ttl_s = heartbeat_ttl_s
        self.publisher_kwargs = {"flush_interval_s": 0.01, **publisher_kwargs}
        self.events = EventLog()
        self.tiers: dict[str, set[int]] = {"l1": set(), "l2": set(), "l3": set()}
        self.publisher: EventPublisher | None = None
        self.runner: web.AppRunner | None = None
        self.info = self._new_info()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _new_info(self) -> WorkerInfo:
        return WorkerInfo(url=self.url, model=self.model, epoch=secrets.token_hex(4), l3=self.l3,
                          started=time.time())

    # -- holdings (what the engine thread does) --------------------------------------------------
    def store(self, hashes: list[int], tier: str = "l1", parent: int | None = None) -> None:
        self.tiers[tier].update(hashes)
        self.events.record("stored", hashes, parent, tier=tier)

    def remove(self, hashes: list[int], tier: str = "l1") -> None:
        self.tiers[tier].difference_update(hashes)
        self.events.record("removed", hashes, tier=tier)

    def clear(self, tier: str = "l1") -> None:
        self.tiers[tier].clear()
        self.events.record("cleared", [], tier=tier)

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> "KVWorker":
        app = web.Application()
        if self.snapshot_route:
            app.router.add_get("/kv/snapshot", self._snapshot)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        if self.publish:
            await self.start_publisher()
        return self

    async def start_publisher(self) -> None:
        self.publisher = EventPublisher(self.redis_url, self.info, self.events, heartbeat_ttl_s=self.heartbeat_ttl_s,
                                        **self.publisher_kwargs)
        await asyncio.to_thread(self.publisher.start)

    async def restart(self) -> None:
        """A new process at the same URL: new epoch, nothing cached (the shared L3 store stays)."""
        await self.stop_publisher()
        self.events = EventLog()
        self.tiers["l1"].clear()
        self.tiers["l2"].clear()
        self.info = self._new_info()
        await self.start_publisher()

    async def stop_publisher(self) -> None:
        if self.publisher is not None:
            await asyncio.to_thread(self.publisher.stop)
            self.publisher = None

    async def stop(self) -> None:
        await self.stop_publisher()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def _snapshot(self, request: web.Request) -> web.Response:
        upto, upto_seq = self.publisher.last_entry if self.publisher is not None else ("0-0", -1)
        return web.json_response({
            "worker": self.url, "model": self.model, "epoch": self.info.epoch, "block_size": 16, "l3": self.l3,
            "upto": upto, "upto_seq": upto_seq, "tiers": {"l1": [[h, None] for h in sorted(self.tiers["l1"])],
                                    "l2": sorted(self.tiers["l2"]), "l3": sorted(self.tiers["l3"])}})
