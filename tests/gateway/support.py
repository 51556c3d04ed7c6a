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
from gateway.keys import HASHER, KV_INDEX, POLICY, POOL


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


async def assert_kv_aware_follows_the_index(gw: GatewayHandle, kv_worker: str, fake, chats: list[dict],
                                            sends_each: int = 1) -> None:
    """kv_aware over a publishing worker (`kv_worker`) and a fake one that publishes nothing: the chats are
    warmed on `kv_worker` directly, so only the gateway's KV index can tell where their prefixes are; once it
    sees them, every chat sent through the gateway (`sends_each` times; a tie broken by rotation would send
    one to the fake) is served from the cache, and the fake gets nothing."""
    deadline = time.monotonic() + 30
    while len(gw.app[POOL].healthy()) < 2:
        assert time.monotonic() < deadline, "both workers should be healthy"
        await asyncio.sleep(0.1)
    async with aiohttp.ClientSession() as session:
        for chat in chats:
            async with session.post(kv_worker + "/v1/chat/completions", json=chat) as r:
                assert r.status == 200, await r.text()
    routes = [gw.app[HASHER].route_for_ids(gw.app[HASHER].chat_ids(c["messages"])) for c in chats]
    prefix = gw.app[POLICY].prefix
    deadline = time.monotonic() + 30
    while not all(prefix.matched_blocks(r.block_hashes, kv_worker) >= len(r.block_hashes) - 1 for r in routes):
        assert time.monotonic() < deadline, "the gateway's index never saw the warmed prefixes"
        await asyncio.sleep(0.1)
    assert gw.app[KV_INDEX].covers(kv_worker) and not gw.app[KV_INDEX].covers(fake.url)
    assert all(prefix.matched_blocks(r.block_hashes, fake.url) == 0 for r in routes)
    for chat in chats:
        for _ in range(sends_each):
            status, body, _ = await gw.call("POST", "/v1/chat/completions", chat)
            assert status == 200, body
            assert body["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    assert fake.calls == [], "kv_aware sent a cached prefix to the worker that does not hold it"
