"""Request migration: a workflow node, and a streamed chat call proxied by the gateway, whose worker is
SIGKILLed mid-stream continue on another worker from the tokens already produced, and the output equals an
uninterrupted run's (fp32, greedy). Real embedded workers, a real gateway and Redis; the token events a
client followed carry the output once, and the proxied client's stream goes on to its finish and usage."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid

import orjson
import pytest
import pytest_asyncio

from engine.worker.token_ids import CommittedIds
from tests.gateway.support import GatewayHandle, fast_config
from tests.support import start_worker, stop_worker

pytestmark = pytest.mark.slow
MAX_TOKENS = 48
NODE = {"id": "count", "max_tokens": MAX_TOKENS, "ignore_eos": True,
        "messages": [{"role": "user", "content": "Count from one to fifty in words, separated by commas."}]}


@pytest.fixture(scope="module")
def workers(model_dir, tmp_path_factory):
    """Three: each test kills one, and a killed call still has two to continue on."""
    workers = [start_worker(model_dir, tmp_path_factory.mktemp("migration")) for _ in range(3)]
    yield workers
    for w in workers:
        stop_worker(w)


@pytest_asyncio.fixture
async def gw(workers, redis_url):
    handle = await GatewayHandle(fast_config(redis_url, [w.url for w in workers], policy="round_robin",
                                             key_prefix="mig" + uuid.uuid4().hex[:6], request_timeout_s=120,
                                             breaker_cooldown_s=60)).start()
    yield handle
    await handle.stop()


async def follow(gw: GatewayHandle, wf_id: str, on_event) -> list[tuple[str, dict]]:
    """Every event of the workflow's SSE stream, in order; on_event(type, data) sees each as it comes."""
    events = []
    async with gw.session.get(f"{gw.url}/v1/workflows/{wf_id}/events") as r:
        buffer = b""
        async for chunk in r.content.iter_any():
            buffer += chunk
            while b"\n\n" in buffer:
                block, buffer = buffer.split(b"\n\n", 1)
                fields = dict(line.split(b": ", 1) for line in block.split(b"\n") if b": " in line and
                              not line.startswith(b":"))
                if b"event" in fields:
                    event = (fields[b"event"].decode(), orjson.loads(fields[b"data"]))
                    events.append(event)
                    await on_event(*event)
    return events


def test_ids_follow_their_text_when_the_engine_holds_text_back(tokenizer):
    ids = tokenizer.encode(" one, two, three")
    committed = CommittedIds(tokenizer)
    text = tokenizer.decode(ids)
    assert committed.take(ids[:2], tokenizer.decode(ids[:2])) == ids[:2]
    held = tokenizer.decode(ids[:4])[:-1]  # the last character held back (it could begin a stop string)
    assert committed.take(ids[:4], held) == [ids[2]]
    assert committed.take(ids, text) == ids[3:]
    assert committed.take(ids, text) == []


def test_streamed_token_ids_are_the_output_ids_and_come_with_their_text(worker):
    """return_token_ids on a real worker: the ids of the chunks, in order, are the non-streamed call's
    output ids (greedy), each chunk's ids decode to text the stream already carried, and the first chunk
    has the prompt's ids; with a stop string held back the ids still follow their text."""
    import json
    import urllib.request

    from tests.support import http_json

    body = {"messages": NODE["messages"], "max_tokens": 24, "temperature": 0, "ignore_eos": True,
            "stop": ["zzzz-never"]}
    req = urllib.request.Request(worker + "/v1/chat/completions", method="POST",
                                 data=json.dumps({**body, "stream": True, "return_token_ids": True}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        lines = [line[6:] for line in r.read().decode().split("\n") if line.startswith("data: {")]
    chunks = [json.loads(line) for line in lines]
    assert "prompt_token_ids" in chunks[0], chunks[:3]
    assert chunks[0]["prompt_token_ids"] and isinstance(chunks[0]["prompt_token_ids"][0], int)
    ids = [t for c in chunks for ch in c["choices"] for t in ch.get("token_ids", ())]
    text = "".join(ch["delta"].get("content") or "" for c in chunks for ch in c["choices"])
    status, plain = http_json("POST", worker + "/generate", {
        "input_ids": chunks[0]["prompt_token_ids"], "sampling_params": {
            "max_new_tokens": 24, "temperature": 0, "ignore_eos": True, "stop": ["zzzz-never"]}})
    assert status == 200
    assert ids == plain["output_ids"] and text == plain["text"]


@pytest.mark.asyncio
async def test_a_node_whose_worker_is_killed_mid_stream_continues_on_another(gw, workers):
    reference_id = await gw.submit({"nodes": [NODE]})
    reference = await gw.wait(reference_id, timeout=180)
    assert reference["status"] == "finished", reference
    expected = reference["outputs"]["count"]
    assert reference["nodes"]["count"]["usage"]["completion_tokens"] == MAX_TOKENS

    by_url = {w.url: w for w in workers}
    wf_id = await gw.submit({"nodes": [NODE]})
    seen = {"tokens": 0, "worker": None, "killed": None}

    async def on_event(kind: str, data: dict) -> None:
        if kind == "node_started" and seen["worker"] is None:
            seen["worker"] = data["worker"]
        if kind == "token":
            seen["tokens"] += 1
            if seen["tokens"] == 8 and seen["killed"] is None:  # mid-stream: some tokens out, most to come
                seen["killed"] = seen["worker"]
                os.kill(by_url[seen["worker"]].proc.pid, signal.SIGKILL)

    events = await asyncio.wait_for(follow(gw, wf_id, on_event), timeout=240)
    body = await gw.wait(wf_id, timeout=60)
    assert seen["killed"] is not None
    assert body["status"] == "finished", body
    node = body["nodes"]["count"]
    assert body["outputs"]["count"] == expected
    assert node["worker"] != seen["killed"] and node["attempts"] == 2
    retry = [d for k, d in events if k == "node_retry"]
    assert len(retry) == 1 and retry[0]["worker"] == seen["killed"]
    resumed = retry[0]["resume_tokens"]
    assert resumed >= 1  # continued from what the killed worker produced, not started over
    assert node["usage"]["migrated_tokens"] == resumed
    assert node["usage"]["completion_tokens"] == MAX_TOKENS
    # the client following the stream got the output's text exactly once
    assert "".join(d["text"] for k, d in events if k == "token") == expected


CHAT = {"messages": NODE["messages"], "max_tokens": MAX_TOKENS, "ignore_eos": True, "temperature": 0,
        "stream": True, "stream_options": {"include_usage": True}}


async def stream_chat(gw: GatewayHandle, on_chunk=None) -> list[dict]:
    """The data chunks of a streamed chat call through the gateway (on_chunk(n) after the n-th)."""
    chunks = []
    async with gw.session.post(f"{gw.url}/v1/chat/completions", json=CHAT) as r:
        assert r.status == 200
        buffer = b""
        async for part in r.content.iter_any():
            buffer += part
            while b"\n\n" in buffer:
                block, buffer = buffer.split(b"\n\n", 1)
                if block.startswith(b"data: ") and block != b"data: [DONE]":
                    chunks.append(orjson.loads(block[6:]))
                    if on_chunk is not None:
                        on_chunk(len(chunks))
    return chunks


def content(chunks: list[dict]) -> str:
    return "".join((c.get("delta") or {}).get("content") or "" for ch in chunks for c in ch.get("choices", ()))


@pytest.mark.asyncio
async def test_a_proxied_stream_whose_worker_is_killed_continues_on_another(gw, workers):
    from gateway.keys import POOL

    expected = await stream_chat(gw)
    pool, killed = gw.app[POOL], []

    def kill_serving(n: int) -> None:
        if n == 8 and not killed:
            (url,) = [u for u, w in pool.workers.items() if w.in_flight == 1]
            killed.append(url)
            os.kill(next(w for w in workers if w.url == url).proc.pid, signal.SIGKILL)

    chunks = await asyncio.wait_for(stream_chat(gw, kill_serving), timeout=240)
    assert killed
    assert content(chunks) == content(expected)
    assert not any("error" in c for c in chunks)
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices") and c["choices"][0].get("finish_reason")]
    assert finish == ["length"]
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens"] == MAX_TOKENS and usage["migrated_tokens"] >= 1
    assert {u: w.in_flight for u, w in pool.workers.items()} == dict.fromkeys(pool.workers, 0)
