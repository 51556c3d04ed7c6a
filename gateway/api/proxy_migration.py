"""Request migration for a streamed, proxied /v1/chat/completions call (scheduler/migration.py tells the
method): when the worker's stream breaks after tokens were relayed, the call continues on another worker
from the ids it produced, and the client's stream goes on as chat chunks of the same call, to its finish
and [DONE], instead of ending with an error.

Armed for a call that sets max_tokens (or max_completion_tokens), asks one choice, no tools, grammar,
penalties or logprobs, and is sent to an embedded worker: the body forwarded then adds
`return_token_ids`, so the relayed chunks carry vLLM's `prompt_token_ids` / `token_ids` fields besides
OpenAI's. The relay stays byte for byte; `StreamWatch` reads a copy of each chunk.
"""

from __future__ import annotations

import logging
import time

import orjson
from aiohttp import web

from common import sse
from common.sse import SSEParser
from gateway.errors import WorkerCallError
from gateway.scheduler.migration import (
    Progress,
    Recorder,
    continuation_body,
    run_continuation,
    same_computation,
)
from gateway.workers.pool import WorkerPool

log = logging.getLogger("agentgate.gateway")


def armed(body: dict) -> bool:
    """Whether a streamed chat call with this body can be migrated (as the client sent it)."""
    return body.get("stream") is True and not body.get("return_token_ids") and same_computation(body) and \
        isinstance(_max_tokens(body), int) and not isinstance(_max_tokens(body), bool)


def _max_tokens(body: dict):
    return body.get("max_completion_tokens") if body.get("max_completion_tokens") is not None \
        else body.get("max_tokens")


class StreamWatch:
    """Reads the relayed SSE: the call's progress, its chunk envelope, and whether it finished."""

    def __init__(self, body: dict):
        self.body = body
        self.progress = Progress()
        self.recorder = Recorder(self.progress)
        self.envelope: dict = {}
        self.finished = False
        self._parser = SSEParser()

    def feed(self, chunk: bytes) -> None:
        for msg in self._parser.feed(chunk):
            if msg.done:
                continue
            try:
                data = orjson.loads(msg.data)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(data, dict):
                continue
            if not self.envelope and data.get("id"):
                self.envelope = {k: data.get(k) for k in ("id", "created", "model")}
            self.recorder.on_chunk(data, None, None)
            for choice in data.get("choices") or ():
                if isinstance(choice, dict):
                    self.recorder.on_chunk(data, (choice.get("delta") or {}).get("content"), choice.get("token_ids"))
                    self.finished = self.finished or bool(choice.get("finish_reason"))

    async def resume(self, out: web.StreamResponse, pool: WorkerPool, tried: list[str], priority: int) -> bool:
        """Continue the broken call on a healthy worker not tried yet; True when the client's stream was
        completed (finish chunk, usage if asked, [DONE]). Each worker tried gets its slot back here."""
        if self.finished or not self.progress.resumable:
            return False
        for w in sorted(pool.healthy(), key=lambda w: w.busy()):
            if w.url in tried:
                continue
            tried.append(w.url)
            pool.reserve(w.url)
            try:
                await self._continue(out, pool, w, priority)
                return True
            except WorkerCallError as exc:
                log.warning("migrating a proxied stream to %s failed: %s", w.url, exc)
                pool.record_failure(w.url, exc)
            finally:
                pool.release(w.url)
        return False

    async def _continue(self, out: web.StreamResponse, pool: WorkerPool, w, priority: int) -> None:
        env = {"id": self.envelope.get("id") or f"chatcmpl-{time.time_ns()}", "object": "chat.completion.chunk",
               "created": self.envelope.get("created") or int(time.time()), "model": self.envelope.get("model")}

        async def on_delta(text: str) -> None:
            await _send(out, {**env, "choices": [{"index": 0, "delta": {"content": text}, "logprobs": None,
                                                 "finish_reason": None}]})

        rid = f"{self.body.get('rid') or env['id']}-migrated-{len(self.progress.ids)}"
        request = continuation_body(self.body, _max_tokens(self.body), self.progress, rid, priority,
                                    default_temperature=1.0)
        result = await run_continuation(w.client, request, self.progress, on_delta, pool.stream_timeouts(w),
                                        pool.incremental(w))
        await _send(out, {**env, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                              "finish_reason": result.finish_reason}]})
        if (self.body.get("stream_options") or {}).get("include_usage"):
            await _send(out, {**env, "choices": [], "usage": result.usage})
        await out.write(sse.DONE)


async def _send(out: web.StreamResponse, chunk: dict) -> None:
    await out.write(sse.encode(chunk))
