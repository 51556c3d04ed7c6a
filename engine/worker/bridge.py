"""The bridge between aiohttp handlers and the engine thread.

`run_request` submits a request and yields its StepOutputs on the event loop.
However the consumer stops — finished, client gone (handler cancelled), write
failed — the `finally` aborts the request in the engine, which frees its KV
blocks at the next step. Also the shared HTTP helpers: JSON bodies in, JSON
and SSE out.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from common import sse
from common.errors import BadRequestError
from engine.request import Request, SamplingParams, StepOutput
from engine.runtime.engine import Engine

ENGINE = web.AppKey("engine", Engine)
SERVER_ARGS = web.AppKey("server_args", dict)


async def run_request(engine: Engine, prompt_ids: list[int], params: SamplingParams, *, rid: str | None = None,
                      salt: str | None = None, return_logprob: bool = False,
                      top_logprobs_num: int = 0, priority: int | None = None) -> AsyncIterator[StepOutput]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[StepOutput] = asyncio.Queue()

    def sink(out: StepOutput) -> None:  # called from the engine thread
        loop.call_soon_threadsafe(queue.put_nowait, out)

    req = Request(rid=rid or uuid.uuid4().hex, prompt_ids=prompt_ids, params=params, sink=sink, salt=salt,
                  return_logprob=return_logprob, top_logprobs_num=top_logprobs_num, priority=priority or 0)
    engine.submit(req)  # raises a 400 for what can never run
    finished = False
    try:
        while not finished:
            out = await queue.get()
            finished = out.finished
            yield out
    finally:
        if not finished:
            engine.abort(req.rid)


class Collected:
    """Everything a finished request produced, accumulated from its StepOutputs."""

    def __init__(self, rid: str):
        self.rid = rid
        self.text = ""
        self.output_ids: list[int] = []
        self.logprobs: list = []
        self.last: StepOutput | None = None
        self.start = time.monotonic()

    def add(self, out: StepOutput) -> None:
        self.text += out.text_delta
        self.output_ids.extend(out.new_token_ids)
        self.logprobs.extend(out.logprobs)
        self.last = out


async def collect(stream: AsyncIterator[StepOutput], rid: str) -> Collected:
    result = Collected(rid)
    async for out in stream:
        result.add(out)
    return result


def new_rid(given: str | None) -> str:
    if given is not None and not given:
        raise BadRequestError("rid must be a non-empty string", param="rid")
    return given or uuid.uuid4().hex


async def send_sse(resp: web.StreamResponse, obj: Any) -> None:
    await resp.write(sse.encode(obj))


async def close_sse(resp: web.StreamResponse) -> None:
    await resp.write(sse.DONE)
    await resp.write_eof()


async def first_output(stream: AsyncIterator[StepOutput]) -> StepOutput:
    return await stream.__anext__()


async def merge_streams(streams: list[AsyncIterator[StepOutput]], firsts: list[StepOutput]):
    """Interleave several request streams as (index, output), first outputs first."""
    queue: asyncio.Queue = asyncio.Queue()
    live = 0

    async def pump(i: int, stream: AsyncIterator[StepOutput]) -> None:
        try:
            async for out in stream:
                await queue.put((i, out))
        finally:
            await queue.put((i, None))

    tasks = []
    for i, (first, stream) in enumerate(zip(firsts, streams)):
        await queue.put((i, first))
        if not first.finished:
            tasks.append(asyncio.create_task(pump(i, stream)))
            live += 1
    try:
        while live or not queue.empty():
            i, out = await queue.get()
            if out is None:
                live -= 1
                continue
            yield i, out
    finally:
        for t in tasks:
            t.cancel()
        # let the pumps unwind (their generators abort their requests) before closing the rest
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in streams:
            await s.aclose()


async def start_streams(streams: list[AsyncIterator[StepOutput]]) -> list[StepOutput]:
    """Submit every stream and wait for its first output, before any byte goes out:
    a request the engine refuses is still a clean 4xx. On failure the started ones are aborted."""
    try:
        return [await first_output(s) for s in streams]
    except BaseException:
        for s in streams:
            await s.aclose()
        raise


async def collect_all(engine: Engine, streams: list[AsyncIterator[StepOutput]], rids: list[str]) -> list[Collected]:
    """Run requests to the end concurrently; if any is refused, abort the others."""
    results = await asyncio.gather(*(collect(s, r) for s, r in zip(streams, rids)), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        for s in streams:
            await s.aclose()
        engine.abort_many(rids)
        raise failed[0]
    return results
