"""A small in-process fake SGLang worker, for the gateway's unit tests only.

It speaks the parts of the worker API the gateway uses (/health, /get_load,
/get_model_info, /get_server_info, /v1/models, /v1/chat/completions,
/v1/completions, /generate, /abort_request) and records every call with its
start and end time, so tests can see where a call went and what overlapped.
Like SGLang it has no /kv/* routes; with `kv_api=True` it plays our embedded
engine instead: /get_server_info says "backend": "agentgate-engine" and
/kv/prefetch, /kv/pin, /kv/unpin answer in the embedded worker's shapes.
/generate counts prompt tokens (input_ids, or 4-char "tokens" of text) and
reports cached_tokens(_details) like SGLang; max_new_tokens 0 is a prefill-only
call unless `reject_zero_max_new_tokens`.
Replies are `reply(messages_or_prompt)`; `token_delay_s` paces streamed tokens;
`fail_with` makes calls fail (500, a dropped connection, "hang": accepted and never
answered, "stall": the first token and then nothing); `refuse_when` answers 400 with
a message, as a worker refusing a request's values does; cached_tokens
counts the prompt's longest prefix (in 4-char "tokens") seen before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from common.redis_server import free_port


@dataclass
class Call:
    path: str
    body: dict
    start: float
    end: float | None = None
    aborted: bool = False


def default_reply(prompt) -> str:
    if isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):  # chat messages
        prompt = _text(prompt[-1].get("content")) if prompt else ""
    return f"echo: {prompt}"  # a completion's prompt: text, or token ids as they came


@dataclass
class FakeWorker:
    reply: Callable = default_reply
    token_delay_s: float = 0.0
    fail_with: str | None = None  # None | "500" | "drop" | "hang" | "stall"
    refuse_when: Callable[[dict], str | None] | None = None  # body → the 400's message, or None to serve it
    fail_when: Callable[[dict], bool] | None = None  # which calls fail_with applies to (default: all)
    model_path: str = "/nonexistent/fake-model"
    calls: list[Call] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    seen_prompts: list[str] = field(default_factory=list)
    server_info: dict = field(default_factory=lambda: {"page_size": 16})
    kv_api: bool = False
    reject_zero_max_new_tokens: bool = False
    seen_units: list[list] = field(default_factory=list)  # /generate prompts, as token lists
    pins: dict[str, dict] = field(default_factory=dict)
    pins_made: int = 0
    load_extra: dict = field(default_factory=dict)  # more /get_load fields, e.g. the engine's step costs
    port: int = field(default_factory=free_port)
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", lambda r: web.Response(status=200))
        app.router.add_get("/get_load", self.get_load)
        app.router.add_get("/get_model_info", lambda r: web.json_response(
            {"model_path": self.model_path, "served_model_name": "fake-model"}))
        app.router.add_get("/get_server_info", lambda r: web.json_response(
            {**self.server_info, **({"backend": "agentgate-engine"} if self.kv_api else {})}))
        app.router.add_get("/v1/models", lambda r: web.json_response(
            {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}))
        app.router.add_post("/abort_request", self.abort)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/generate", self.generate)
        if self.kv_api:
            app.router.add_post("/kv/prefetch", self.kv_prefetch)
            app.router.add_post("/kv/pin", self.kv_pin)
            app.router.add_post("/kv/unpin", self.kv_unpin)
        return app

    async def start(self) -> "FakeWorker":
        self.runner = web.AppRunner(self.app(), handler_cancellation=True, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def running(self) -> int:
        return sum(1 for c in self.calls if c.end is None and not c.aborted)

    async def get_load(self, request):
        n = self.running()
        return web.json_response([{"dp_rank": 0, "num_reqs": n, "num_waiting_reqs": 0, "num_tokens": 10 * n,
                                   **self.load_extra}])

    async def abort(self, request):
        self.aborted.append((await request.json()).get("rid"))
        return web.Response(status=200)

    def _usage(self, prompt_text: str, completion: str) -> dict:
        toks = max(len(prompt_text) // 4, 1)
        best = max((_common_prefix(prompt_text, p) for p in self.seen_prompts), default=0)
        self.seen_prompts.append(prompt_text)
        cached = min(best // 4, toks - 1)
        out = max(len(completion.split()), 1)
        return {"prompt_tokens": toks, "completion_tokens": out, "total_tokens": toks + out,
                "prompt_tokens_details": {"cached_tokens": cached}}

    async def _begin(self, request) -> tuple[Call, dict]:
        body = await request.json()
        call = Call(request.path, body, time.monotonic())
        self.calls.append(call)
        refusal = self.refuse_when(body) if self.refuse_when is not None else None
        if refusal is not None:
            call.end = time.monotonic()
            raise web.HTTPBadRequest(text=orjson.dumps({"error": {"message": refusal, "type": "BadRequestError",
                                                                  "code": 400}}).decode(),
                                     content_type="application/json")
        if self.fail_when is not None and not self.fail_when(body):
            return call, body
        if self.fail_with == "hang":  # accepted, never answered: only the client's own timeout ends it
            try:
                await asyncio.Event().wait()
            finally:
                call.end = time.monotonic()
        if self.fail_with == "500":
            call.end = time.monotonic()
            raise web.HTTPInternalServerError(text='{"error": {"message": "boom"}}', content_type="application/json")
        if self.fail_with == "drop":
            request.transport.close()
            raise ConnectionResetError("fake worker dropped the connection")
        return call, body

    async def _stream(self, request, call, pieces: list[str], make_chunk, final: dict | None):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for i, piece in enumerate(pieces):
                if self.token_delay_s:
                    await asyncio.sleep(self.token_delay_s)
                if self.fail_with == "drop":  # died mid-stream
                    request.transport.close()
                    return resp
                if self.fail_with == "stall" and i == 1 and (self.fail_when is None or self.fail_when(call.body)):
                    await asyncio.Event().wait()  # the first token went out; the rest never comes
                await resp.write(b"data: " + orjson.dumps(make_chunk(i, piece)) + b"\n\n")
            if final is not None:
                await resp.write(b"data: " + orjson.dumps(final) + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
        except asyncio.CancelledError:
            call.aborted = True
            raise
        finally:
            call.end = time.monotonic()
        return resp

    async def chat(self, request):
        call, body = await self._begin(request)
        messages = body["messages"]
        text = self.reply(messages)
        usage = self._usage("".join(_text(m.get("content")) for m in messages), text)
        env = {"id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": "fake-model"}
        if not body.get("stream"):
            if self.token_delay_s:
                await asyncio.sleep(self.token_delay_s * len(_pieces(text)))
            call.end = time.monotonic()
            return web.json_response({**env, "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                                          "finish_reason": "stop"}], "usage": usage})
        pieces = _pieces(text)

        def chunk(i, piece):
            return {**env, "object": "chat.completion.chunk", "choices": [
                {"index": 0, "delta": {"content": piece}, "finish_reason": "stop" if i == len(pieces) - 1 else None}]}

        include = (body.get("stream_options") or {}).get("include_usage")
        final = {**env, "object": "chat.completion.chunk", "choices": [], "usage": usage} if include else None
        return await self._stream(request, call, pieces, chunk, final)

    async def completions(self, request):
        call, body = await self._begin(request)
        text = self.reply(body["prompt"])
        usage = self._usage(body["prompt"], text)
        env = {"id": "cmpl-fake", "object": "text_completion", "created": 0, "model": "fake-model"}
        if not body.get("stream"):
            call.end = time.monotonic()
            return web.json_response({**env, "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
                                      "usage": usage})
        pieces = _pieces(text)
        return await self._stream(request, call, pieces, lambda i, p: {**env, "choices": [
            {"index": 0, "text": p, "finish_reason": "stop" if i == len(pieces) - 1 else None}]}, None)

    def _prompt_cache(self, body: dict) -> tuple[int, int]:
        """(prompt tokens, tokens of it cached by an earlier prompt)."""
        units = list(body["input_ids"]) if body.get("input_ids") is not None else [
            body.get("text", "")[i:i + 4] for i in range(0, len(body.get("text", "")), 4)]
        best = max((_common_prefix(units, u) for u in self.seen_units), default=0)
        self.seen_units.append(units)
        return len(units), min(best, max(len(units) - 1, 0))

    async def generate(self, request):
        call, body = await self._begin(request)
        max_new = (body.get("sampling_params") or {}).get("max_new_tokens", 16)
        if max_new < 0 or (max_new == 0 and self.reject_zero_max_new_tokens):
            call.end = time.monotonic()
            return web.json_response({"error": {"message": "max_new_tokens must be at least 1"}}, status=400)
        text = self.reply(body.get("text", "")) if max_new else ""
        prompt, cached = self._prompt_cache(body)
        meta = {"id": body.get("rid", "fake"), "finish_reason": {"type": "length" if not max_new else "stop"},
                "prompt_tokens": prompt, "completion_tokens": 1 if max_new else 0, "cached_tokens": cached,
                "cached_tokens_details": {"device": cached, "host": 0}}
        if not body.get("stream"):
            call.end = time.monotonic()
            return web.json_response({"text": text, "output_ids": [1], "meta_info": meta})
        pieces = _pieces(text)
        return await self._stream(request, call, pieces, lambda i, p: {
            "text": "".join(pieces[:i + 1]), "output_ids": [1] * (i + 1), "meta_info": meta}, None)


    async def kv_prefetch(self, request):
        call, body = await self._begin(request)
        prompt, cached = self._prompt_cache(body)
        out = {"resident_tokens": prompt // 16 * 16,
               "from": {"l1": cached, "l2": 0, "l3": 0, "computed": prompt - cached}}
        if body.get("pin_ttl_s"):
            out["pin_id"] = self._pin(body, prompt)["pin_id"]
        call.end = time.monotonic()
        return web.json_response(out)

    def _pin(self, body: dict, prompt: int) -> dict:
        pin = {"pin_id": f"pin-{self.pins_made}", "pinned_tokens": prompt // 16 * 16,
               "expires_in_s": body.get("ttl_s") or body.get("pin_ttl_s")}
        self.pins[pin["pin_id"]] = pin
        self.pins_made += 1  # ids never repeat, as the engine's (block hashes) do not for different prefixes
        return pin

    async def kv_pin(self, request):
        call, body = await self._begin(request)
        call.end = time.monotonic()
        if "pin_id" in body:  # a renewal by id, as the embedded worker takes one
            pin = self.pins.get(body["pin_id"])
            if pin is None:
                return web.json_response({"error": {"message": "no such pin"}}, status=404)
            pin["expires_in_s"] = body["ttl_s"]
            return web.json_response(pin)
        return web.json_response(self._pin(body, self._prompt_cache(body)[0]))

    async def kv_unpin(self, request):
        call, body = await self._begin(request)
        call.end = time.monotonic()
        if self.pins.pop(body.get("pin_id"), None) is None:
            return web.json_response({"error": {"message": "no such pin"}}, status=404)
        return web.json_response({"pin_id": body["pin_id"], "unpinned": True})


def _text(content) -> str:
    """A message's text, from a string or OpenAI content parts (as a worker reads it)."""
    if isinstance(content, list):
        return "".join(p.get("text") or "" for p in content if p.get("type") == "text")
    return content or ""


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _common_prefix(a, b) -> int:  # two strings or two token lists
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
