"""Streamed chat calls with agent_hints: `Client.chat_stream` (an iterator) and `AsyncClient.chat_stream`
(an async iterator), through the in-process gateway to fake workers."""

from __future__ import annotations

import asyncio
import time

import pytest

from agentgate import AsyncClient, Client
from agentgate.errors import ServerError, Unavailable
from agentgate.transport import DONE, RetryPolicy, stream_data

FAST_RETRY = RetryPolicy(max_retries=2, backoff_s=0.05, max_backoff_s=1.0)


def test_stream_data_parses_openai_sse_lines():
    assert stream_data(b'data: {"choices": []}\n') == {"choices": []}
    assert stream_data("data: [DONE]") == DONE
    assert stream_data(": keep-alive") is None and stream_data("\n") is None and stream_data("event: x") is None
    with pytest.raises(Unavailable):
        stream_data('data: {"error": {"message": "worker stream broken", "code": 503}}')
    with pytest.raises(ServerError):
        stream_data('data: {"error": {"message": "odd", "code": "boom"}}')


def test_sync_stream_yields_chunks_then_usage_and_strips_hints(gw, fake):
    hints = {"workflow_id": "w-stream", "node_id": "greet", "template": "stream-demo"}
    with Client(gw.url, timeout=10, retry=FAST_RETRY) as c:
        chunks = list(c.chat_stream("hello there friend", agent_hints=hints, max_tokens=7, temperature=0))
    texts = [ch.text for ch in chunks if ch.text]
    assert len(texts) == 4 and "".join(texts) == "echo: hello there friend"  # one chunk per word, in order
    assert chunks[-1].usage["completion_tokens"] > 0 and chunks[-1].usage["prompt_tokens"] > 0
    assert any(ch.finish_reason == "stop" for ch in chunks)
    body = fake.calls[-1].body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 7 and "agent_hints" not in body


@pytest.mark.asyncio
async def test_async_stream_yields_the_same_chunks(gw, fake):
    async with AsyncClient(gw.url, timeout=10, retry=FAST_RETRY) as c:
        chunks = [ch async for ch in c.chat_stream([{"role": "user", "content": "one two"}],
                                                   agent_hints={"node_id": "n", "workflow_id": "w"})]
        again = [ch async for ch in c.chat_stream("one two three")]  # the session's connection is reused
    assert "".join(ch.text for ch in chunks) == "echo: one two"
    assert chunks[-1].usage is not None and chunks[-1].cached_tokens == chunks[-1].usage[
        "prompt_tokens_details"]["cached_tokens"]
    assert "".join(ch.text for ch in again) == "echo: one two three"


def _wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_leaving_a_stream_early_aborts_the_call_on_the_worker(served):
    slow = served.worker(token_delay_s=0.2)
    gateway = served.gateway([slow.url])
    with Client(gateway.url, timeout=10, retry=FAST_RETRY) as c:
        for chunk in c.chat_stream("a b c d e f g h i j k l m n o p"):
            if chunk.text:
                break
    assert _wait_until(lambda: slow.calls and slow.calls[-1].aborted), "the worker kept generating"


@pytest.mark.asyncio
async def test_async_early_exit_aborts_and_a_broken_stream_raises(served):
    slow = served.worker(token_delay_s=0.2)
    gateway = served.gateway([slow.url])
    async with AsyncClient(gateway.url, timeout=10, retry=FAST_RETRY) as c:
        async for chunk in c.chat_stream("a b c d e f g h i j k l m n o p"):
            if chunk.text:
                break
    deadline = time.monotonic() + 5
    while not (slow.calls and slow.calls[-1].aborted) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert slow.calls[-1].aborted, "the worker kept generating"

    # A worker that dies after the stream began: the gateway ends it with an error chunk, the SDK raises.
    dying = served.worker(fail_with="drop", fail_when=lambda body: False)
    broken = served.gateway([dying.url])
    async with AsyncClient(broken.url, timeout=10, retry=FAST_RETRY) as c:
        with pytest.raises(Unavailable, match="stream broken"):
            async for _ in c.chat_stream("will break"):
                pass
    with Client(broken.url, timeout=10, retry=FAST_RETRY) as c, pytest.raises(Unavailable):
        list(c.chat_stream("will break too"))
