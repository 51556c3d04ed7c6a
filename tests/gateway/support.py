"""Helpers for the gateway tests: serve a gateway app on a free port, call it, wait for workflows."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
from aiohttp import web

from common.redis_server import free_port
from gateway.app import create_app
from gateway.config import GatewayConfig


def fast_config(redis_url: str, worker_urls, **overrides) -> GatewayConfig:
    """Short health/lease periods, so failures and restarts show within a second."""
    base = dict(worker_urls=tuple(worker_urls), redis_url=redis_url, health_interval_s=0.2,
                breaker_cooldown_s=0.3, lease_ttl_s=1.5, default_max_tokens=16)
    return GatewayConfig(**{**base, **overrides})


class GatewayHandle:
    def __init__(self, config: GatewayConfig):
        self.config = config
        self.port = free_port()
        self.app: web.Application | None = None
        self.runner: web.AppRunner | None = None
        self.session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> "GatewayHandle":
        self.app = create_app(self.config)
        self.runner = web.AppRunner(self.app, handler_cancellation=True, shutdown_timeout=0.5)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        self.session = aiohttp.ClientSession()
        return self

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def call(self, method: str, path: str, body=None, *, raw: bytes | None = None, headers=None):
        """(status, parsed JSON or text, response headers)."""
        data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
        async with self.session.request(method, self.url + path, data=data, headers=headers or (
                {"Content-Type": "application/json"} if data is not None else None)) as r:
            payload = await r.read()
            try:
                parsed = orjson.loads(payload) if payload else None
            except orjson.JSONDecodeError:
                parsed = payload.decode(errors="replace")
            return r.status, parsed, r.headers

    async def submit(self, workflow: dict) -> str:
        status, body, _ = await self.call("POST", "/v1/workflows", workflow)
        assert status == 202, body
        return body["id"]

    async def wait(self, wf_id: str, *, until=("finished", "failed", "cancelled"), timeout: float = 20.0,
                   headers=None) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            status, body, _ = await self.call("GET", f"/v1/workflows/{wf_id}", headers=headers)
            assert status == 200, body
            if body["status"] in until:
                return body
            assert time.monotonic() < deadline, f"workflow still {body['status']}: {body}"
            await asyncio.sleep(0.05)

    async def wait_node(self, wf_id: str, node: str, status: str, timeout: float = 20.0, headers=None) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            _, body, _ = await self.call("GET", f"/v1/workflows/{wf_id}", headers=headers)
            if body["nodes"][node]["status"] == status:
                return body
            assert time.monotonic() < deadline, f"node {node} still {body['nodes'][node]['status']}"
            await asyncio.sleep(0.05)

    async def events(self, wf_id: str, last_event_id: str | None = None) -> list[dict]:
        """Every SSE event of the workflow from the start (or after last_event_id) until it ends."""
        headers = {"Last-Event-ID": last_event_id} if last_event_id else None
        out, current = [], {}
        async with self.session.get(f"{self.url}/v1/workflows/{wf_id}/events", headers=headers) as r:
            assert r.status == 200
            async for raw in r.content:
                line = raw.decode().rstrip("\n")
                if not line:
                    if current:
                        out.append(current)
                    current = {}
                elif line.startswith("id: "):
                    current["id"] = line[4:]
                elif line.startswith("event: "):
                    current["event"] = line[7:]
                elif line.startswith("data: "):
                    current["data"] = orjson.loads(line[6:])
        return out


def llm(node_id: str, content: str, **extra) -> dict:
    return {"id": node_id, "messages": [{"role": "user", "content": content}], **extra}
