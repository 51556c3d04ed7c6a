"""Admission and bounds through a real gateway app, a real Redis and a fake worker: per-tenant concurrency
and token rate (429 + Retry-After), the global in-flight bound and its queue (503 when full), SSE follower
bounds, the workflow bound, and a client trickling its body (cut off with a 408, over a raw socket)."""

from __future__ import annotations

import asyncio
import math
import socket
import time

import pytest

from gateway.admission import Limits, estimate_tokens
from gateway.keys import ADMISSION
from tests.gateway.test_tenancy import auth, table

HOLD = "hold this call"


def chat(text: str = "hi", **extra) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": text}], "max_tokens": 4, **extra}


def holds(body: dict) -> bool:
    return any(HOLD in str(m.get("content")) for m in body.get("messages", []))


async def wait_until(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def held_calls(gw, worker, who: str, n: int) -> list[asyncio.Task]:
    before = len(worker.calls)
    tasks = [asyncio.create_task(gw.call("POST", "/v1/chat/completions", chat(HOLD), headers=auth(who)))
             for _ in range(n)]
    await wait_until(lambda: len(worker.calls) >= before + n, f"{n} held calls at the worker")
    return tasks


async def release(tasks: list[asyncio.Task]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.asyncio
async def test_a_tenant_past_its_concurrency_gets_429_with_retry_after_and_others_do_not(gateway, fake_workers):
    w, = await fake_workers(1, fail_with="hang", fail_when=holds)
    gw = await gateway([w.url], api_keys=table(), limits=Limits(tenant_concurrency=2))
    tasks = await held_calls(gw, w, "a", 2)
    status, err, headers = await gw.call("POST", "/v1/chat/completions", chat(), headers=auth("a"))
    assert status == 429 and err["error"]["code"] == "tenant_concurrency" and headers["Retry-After"] == "1"
    assert (await gw.call("POST", "/v1/chat/completions", chat(), headers=auth("b")))[0] == 200
    await release(tasks)
    await wait_until(lambda: not gw.app[ADMISSION].tenant_calls, "the held calls' places given back")
    assert (await gw.call("POST", "/v1/chat/completions", chat(), headers=auth("a")))[0] == 200


@pytest.mark.asyncio
async def test_a_tenant_past_its_token_rate_gets_429_until_the_bucket_refills(gateway, fake_workers):
    w, = await fake_workers(1)
    gw = await gateway([w.url], api_keys=table(), limits=Limits(tenant_tokens_per_min=120))
    assert (await gw.call("POST", "/v1/chat/completions", chat(max_tokens=80), headers=auth("a")))[0] == 200
    status, err, headers = await gw.call("POST", "/v1/chat/completions", chat(max_tokens=80), headers=auth("a"))
    assert status == 429 and err["error"]["code"] == "token_rate"
    # the first call left 120 - cost in the bucket; the second is 2·cost - 120 short, refilled at 2 tokens/s
    # (what refilled between the calls, a few hundredths of a token, never moves the ceiling)
    cost = estimate_tokens(chat(max_tokens=80), 0)
    assert headers["Retry-After"] == str(math.ceil((2 * cost - 120) / 2))
    assert (await gw.call("POST", "/v1/chat/completions", chat(max_tokens=80), headers=auth("b")))[0] == 200
    status, err, _ = await gw.call("POST", "/v1/workflows", {"nodes": [
        {"id": "n", "messages": [{"role": "user", "content": "x"}], "max_tokens": 100}]}, headers=auth("a"))
    assert status == 429 and err["error"]["code"] == "token_rate"  # workflows draw on the same rate
    assert len(w.calls) == 2


@pytest.mark.asyncio
async def test_the_global_bound_queues_then_refuses_with_503_and_hands_slots_on(gateway, fake_workers):
    w, = await fake_workers(1, fail_with="hang", fail_when=holds)
    gw = await gateway([w.url], api_keys=table(), limits=Limits(max_inflight=1, max_queue=1, queue_timeout_s=30))
    held = await held_calls(gw, w, "a", 1)
    queued = asyncio.create_task(gw.call("POST", "/v1/chat/completions", chat("queued"), headers=auth("b")))
    admission = gw.app[ADMISSION]
    await wait_until(lambda: len(admission.queue) == 1, "the second call queued")
    status, err, headers = await gw.call("POST", "/v1/chat/completions", chat(), headers=auth("b"))
    assert status == 503 and err["error"]["code"] == "overloaded" and headers["Retry-After"] == "1"
    assert not queued.done() and len(w.calls) == 1  # queued, not forwarded
    await release(held)
    status, out, _ = await asyncio.wait_for(queued, 10)
    assert status == 200 and out["choices"][0]["message"]["content"]
    assert admission.inflight == 0 and not admission.queue


@pytest.mark.asyncio
async def test_a_queued_call_that_waits_too_long_gets_503_and_leaves_the_queue(gateway, fake_workers):
    w, = await fake_workers(1, fail_with="hang", fail_when=holds)
    gw = await gateway([w.url], api_keys=table(), limits=Limits(max_inflight=1, max_queue=4, queue_timeout_s=0.3))
    held = await held_calls(gw, w, "a", 1)
    status, err, _ = await gw.call("POST", "/v1/chat/completions", chat(), headers=auth("b"))
    assert status == 503 and "no capacity freed up" in err["error"]["message"]
    admission = gw.app[ADMISSION]
    assert not admission.queue and admission.inflight == 1
    await release(held)
    await wait_until(lambda: admission.inflight == 0, "the held call's slot given back")


@pytest.mark.asyncio
async def test_sse_followers_are_bounded_overall_and_per_tenant(gateway, fake_workers):
    w, = await fake_workers(1)
    gw = await gateway([w.url], api_keys=table(), limits=Limits(max_sse=3, tenant_max_sse=2))
    wf = {}
    for who in ("a", "b"):
        status, body, _ = await gw.call("POST", "/v1/workflows", {"nodes": [{"id": "t", "type": "external"}]},
                                        headers=auth(who))
        wf[who] = body["id"]
    streams = []

    async def follow(who: str):
        resp = await gw.session.get(f"{gw.url}/v1/workflows/{wf[who]}/events", headers=auth(who))
        streams.append(resp)
        return resp

    assert [(await follow("a")).status for _ in range(2)] == [200, 200]
    third = await follow("a")
    assert third.status == 429 and (await third.json())["error"]["code"] == "too_many_streams"
    assert (await follow("b")).status == 200
    over = await follow("b")  # 3 open in all
    assert over.status == 429 and "the gateway's limit" in (await over.json())["error"]["message"]
    for resp in streams:
        resp.close()
    admission = gw.app[ADMISSION]
    await wait_until(lambda: admission.sse == 0, "closed followers counted out")
    again = await follow("a")
    assert again.status == 200
    again.close()


@pytest.mark.asyncio
async def test_a_tenant_past_its_workflow_bound_gets_429(gateway, fake_workers):
    w, = await fake_workers(1)
    gw = await gateway([w.url], api_keys=table(), limits=Limits(tenant_max_workflows=1))
    external = {"nodes": [{"id": "t", "type": "external"}]}
    status, body, _ = await gw.call("POST", "/v1/workflows", external, headers=auth("a"))
    assert status == 202
    status, err, _ = await gw.call("POST", "/v1/workflows", external, headers=auth("a"))
    assert status == 429 and err["error"]["code"] == "too_many_workflows"
    assert (await gw.call("POST", "/v1/workflows", external, headers=auth("b")))[0] == 202
    await gw.call("POST", f"/v1/workflows/{body['id']}/nodes/t/result", {"output": "done"}, headers=auth("a"))
    await gw.wait(body["id"], headers=auth("a"))
    assert (await gw.call("POST", "/v1/workflows", external, headers=auth("a")))[0] == 202


def _trickle(port: int, key: str, total: int) -> tuple[bytes, int]:
    """Send a chat call's head and then its body a byte at a time; (what came back, bytes of body sent)."""
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {total}\r\n\r\n").encode()
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        s.settimeout(0.1)
        reply = b""
        for _ in range(total):  # bounded: never more than the body
            try:
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
                continue
            except socket.timeout:
                pass
            try:
                s.sendall(b" ")
            except OSError:  # the gateway closed the connection
                break
            sent += 1
        s.settimeout(5)
        closed = False
        try:
            while chunk := s.recv(4096):
                reply += chunk
            closed = True
        except OSError:
            pass
    return reply, sent, closed


@pytest.mark.asyncio
async def test_a_client_trickling_its_body_is_cut_off_with_408(gateway, fake_workers):
    w, = await fake_workers(1)
    gw = await gateway([w.url], api_keys=table(), body_timeout_s=0.5)
    from tests.gateway.test_tenancy import KEYS

    reply, sent, closed = await asyncio.to_thread(_trickle, gw.port, KEYS["a"], 200)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"\"code\":\"request_timeout\"" in reply and sent < 200
    assert closed  # and the connection is not kept for the rest
    assert w.calls == []
    assert (await gw.call("POST", "/v1/chat/completions", chat(), headers=auth("a")))[0] == 200



