"""Faults on the proxy path: a worker's 5xx is retried on another worker; a client that hangs
up mid-stream makes the gateway hang up on the worker, which aborts the request."""

from __future__ import annotations

import asyncio

import orjson
import pytest

pytestmark = pytest.mark.asyncio

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hello there"}]}


async def test_a_5xx_is_retried_on_another_worker(gateway, fake_workers):
    (bad,) = await fake_workers(1, fail_with="500")
    (good,) = await fake_workers(1)
    gw = await gateway([bad.url, good.url], policy="round_robin", breaker_failures=100)
    for _ in range(2):  # round robin sends at least one of them to the bad worker first
        status, body, _ = await gw.call("POST", "/v1/chat/completions", CHAT)
        assert status == 200 and body["choices"][0]["message"]["content"] == "echo: hello there", body
    assert len(bad.calls) >= 1 and len(good.calls) == 2  # every call the bad one failed went on to the good one
    only_bad = await gateway([bad.url], breaker_failures=100)
    status, err, headers = await only_bad.call("POST", "/v1/chat/completions", CHAT)
    assert status == 503 and "every worker tried failed" in err["error"]["message"], err
    assert headers["Retry-After"] == "1"


async def test_a_client_hanging_up_mid_stream_aborts_the_call_on_the_worker(gateway, fake_workers):
    (w,) = await fake_workers(1, token_delay_s=0.05, reply=lambda m: "word " * 200)
    gw = await gateway([w.url])
    async with gw.session.post(gw.url + "/v1/chat/completions", data=orjson.dumps({**CHAT, "stream": True}),
                               headers={"Content-Type": "application/json"}) as r:
        assert r.status == 200
        first = await r.content.readline()
        assert first.startswith(b"data: ")
        r.close()  # hang up with ~200 tokens to go
    for _ in range(200):
        if w.calls[0].aborted:
            break
        await asyncio.sleep(0.02)
    assert w.calls[0].aborted, "the worker kept generating for a client that left"
    _, health, _ = await gw.call("GET", "/health")
    assert health["workers"][w.url]["in_flight"] == 0
