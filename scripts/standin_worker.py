"""A fast stand-in worker for the chaos benchmark (scripts/bench_chaos.py): a process speaking the part of
the SGLang worker API a gateway uses (/health, /get_load, /get_model_info, /get_server_info, /v1/models,
/v1/chat/completions and /v1/completions streamed or not, /generate, /abort_request), answering each call
with `--tokens` words paced `--token-delay` seconds apart. It stands in for an accelerator-backed
worker, so a 2-core machine can carry hundreds of concurrent workflows beside one real engine worker;
SIGKILL and SIGSTOP on it are a worker dying and a worker hanging.

    python -m scripts.standin_worker --port 31001 --tokens 8 --token-delay 0.01
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import time

import orjson
from aiohttp import web

WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu")


class StandIn:
    def __init__(self, tokens: int, token_delay_s: float):
        self.tokens, self.token_delay_s = tokens, token_delay_s
        self.running = 0

    def reply(self, prompt: str, n: int | None) -> list[str]:
        seed = hashlib.sha256(prompt.encode()).digest()
        return [WORDS[seed[i % len(seed)] % len(WORDS)] + " " for i in range(min(n or self.tokens, self.tokens))]

    async def call(self, request: web.Request) -> web.StreamResponse:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return web.json_response({"error": {"message": "malformed JSON", "type": "BadRequestError",
                                                "code": 400}}, status=400)
        path = request.path
        if path == "/v1/chat/completions":
            prompt = orjson.dumps(body.get("messages")).decode()
            limit = body.get("max_completion_tokens") or body.get("max_tokens")
        elif path == "/v1/completions":
            prompt, limit = str(body.get("prompt")), body.get("max_tokens")
        else:
            prompt = str(body.get("text") or body.get("input_ids"))
            limit = (body.get("sampling_params") or {}).get("max_new_tokens")
        words = self.reply(prompt, limit)
        self.running += 1
        try:
            if not body.get("stream"):
                await asyncio.sleep(self.token_delay_s * len(words))
                return web.json_response(self._whole(path, "".join(words), len(prompt) // 4, len(words)))
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            text = ""
            for i, word in enumerate(words):
                await asyncio.sleep(self.token_delay_s)
                text += word
                last = i == len(words) - 1
                await resp.write(b"data: " + orjson.dumps(self._chunk(path, word, text, last)) + b"\n\n")
            if path != "/generate":
                usage = {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(words),
                         "total_tokens": len(prompt) // 4 + len(words), "prompt_tokens_details": {"cached_tokens": 0}}
                await resp.write(b"data: " + orjson.dumps({"choices": [], "usage": usage}) + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            return resp
        finally:
            self.running -= 1

    @staticmethod
    def _chunk(path: str, word: str, text: str, last: bool) -> dict:
        reason = "length" if last else None
        if path == "/v1/chat/completions":
            return {"object": "chat.completion.chunk", "choices": [
                {"index": 0, "delta": {"content": word}, "finish_reason": reason}]}
        if path == "/v1/completions":
            return {"object": "text_completion", "choices": [{"index": 0, "text": word, "finish_reason": reason}]}
        return {"text": text, "meta_info": {"finish_reason": {"type": "length"} if last else None,
                                            "completion_tokens": len(text.split())}}

    @staticmethod
    def _whole(path: str, text: str, prompt_tokens: int, n: int) -> dict:
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}
        if path == "/v1/chat/completions":
            return {"object": "chat.completion", "usage": usage, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}]}
        if path == "/v1/completions":
            return {"object": "text_completion", "usage": usage,
                    "choices": [{"index": 0, "text": text, "finish_reason": "length"}]}
        return {"text": text, "meta_info": {"finish_reason": {"type": "length"}, "completion_tokens": n}}

    def app(self) -> web.Application:
        app = web.Application()
        r = app.router
        r.add_get("/health", lambda _: web.Response(status=200))
        r.add_get("/get_load", lambda _: web.json_response([{"dp_rank": 0, "num_reqs": self.running,
                                                             "num_waiting_reqs": 0, "num_tokens": 0}]))
        r.add_get("/get_model_info", lambda _: web.json_response({"served_model_name": "standin"}))
        r.add_get("/get_server_info", lambda _: web.json_response({"max_running_requests": 64,
                                                                   "started": time.time()}))
        r.add_get("/v1/models", lambda _: web.json_response({"object": "list", "data": [{"id": "standin"}]}))
        r.add_post("/abort_request", lambda _: web.Response(status=200))
        for path in ("/v1/chat/completions", "/v1/completions", "/generate"):
            r.add_post(path, self.call)
        return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tokens", type=int, default=8, help="words per reply (at most the call's max tokens)")
    p.add_argument("--token-delay", type=float, default=0.01, help="seconds between two streamed words")
    args = p.parse_args()
    web.run_app(StandIn(args.tokens, args.token_delay).app(), host="127.0.0.1", port=args.port, print=None,
                access_log=None)


if __name__ == "__main__":
    main()
