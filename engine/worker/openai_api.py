"""OpenAI-compatible endpoints of the worker: /v1/models, /v1/completions,
/v1/chat/completions (streaming and not, n choices, logprobs, usage with
prompt_tokens_details.cached_tokens, tools and tool_choice with tool_calls in
replies and in stream deltas, response_format)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from aiohttp import web

from common.errors import BadRequestError, NotFoundError
from common.http import json_response, open_sse, read_json
from engine.request import SamplingParams
from engine.worker.bridge import (
    ENGINE,
    SERVER_ARGS,
    Collected,
    close_sse,
    collect_all,
    merge_streams,
    run_request,
    send_sse,
    start_streams,
)
from engine.worker.chat import ChatPlan, plan_chat
from engine.worker.protocol import (
    MAX_N,
    MAX_TOP_LOGPROBS,
    ChatCompletionRequest,
    CompletionRequest,
    build_sampling_params,
    parse,
    reject_unsupported,
)
from engine.worker.structured import (
    compiled,
    from_response_format,
    from_sampling,
    merge,
)
from engine.worker.token_ids import CommittedIds
from engine.worker.tool_parsers import StreamingToolCalls, ToolCallParser, make_parser

TOOL_PARSER = web.AppKey("tool_parser", ToolCallParser)


def add_routes(app: web.Application) -> None:
    app[TOOL_PARSER] = make_parser(app[SERVER_ARGS].get("tool_call_parser") or "auto",
                                   app[ENGINE].tokenizer.template_source)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", get_model)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)


def _engine(request: web.Request):
    return request.app[ENGINE]


def _model_name(request: web.Request) -> str:
    return request.app[SERVER_ARGS].get("served_model_name") or "default"


def _model_card(request: web.Request) -> dict:
    name = _model_name(request)
    return {"id": name, "object": "model", "created": int(request.app.get("started", time.time())),
            "owned_by": "agentgate", "root": name, "max_model_len": _engine(request).context_length}


async def list_models(request: web.Request) -> web.Response:
    return json_response({"object": "list", "data": [_model_card(request)]})


async def get_model(request: web.Request) -> web.Response:
    if request.match_info["model"] != _model_name(request):
        raise NotFoundError(f"The model '{request.match_info['model']}' does not exist", param="model",
                            code="model_not_found")
    return json_response(_model_card(request))


# -- shared ------------------------------------------------------------------------------------------
def _params(engine, body, max_tokens: int | None, default_max: int, constraint=None) -> SamplingParams:
    return build_sampling_params(
        max_new_tokens=default_max if max_tokens is None else max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=-1 if body.top_k is None else body.top_k,
        min_p=body.min_p or 0.0,
        frequency_penalty=body.frequency_penalty, presence_penalty=body.presence_penalty,
        repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty,
        min_new_tokens=body.min_tokens, stop=body.stop, stop_token_ids=body.stop_token_ids,
        ignore_eos=body.ignore_eos, seed=body.seed, skip_special_tokens=body.skip_special_tokens,
        no_stop_trim=body.no_stop_trim, logit_bias=body.logit_bias, vocab_size=engine.model_config.vocab_size,
        max_tokens_name="max_tokens", constraint=constraint)


def _start(engine, prompts: list[list[int]], params_for, n: int, body, top_logprobs: int | None):
    """Validate every prompt, then one request stream per (prompt, choice)."""
    if not 1 <= n <= MAX_N:
        raise BadRequestError(f"n must be in [1, {MAX_N}], got {n}", param="n")
    if top_logprobs is not None and not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
        raise BadRequestError(f"logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {top_logprobs}", param="logprobs")
    params = []
    for prompt in prompts:
        p = params_for(prompt)
        engine.validate(prompt, p.max_new_tokens)
        params.append(p)
    base = body.rid or uuid.uuid4().hex
    streams, rids = [], []
    for i, (prompt, p) in enumerate(zip(prompts, params)):
        for j in range(n):
            rid = base if len(prompts) * n == 1 else f"{base}_{i * n + j}"
            rids.append(rid)
            streams.append(run_request(engine, prompt, p, rid=rid, salt=body.cache_salt,
                                       return_logprob=top_logprobs is not None,
                                       top_logprobs_num=top_logprobs or 0, priority=body.priority))
    return streams, rids


def _finish_reason(c: Collected) -> tuple[str | None, Any]:
    fr = c.last.finish_reason if c.last else None
    if not fr:
        return None, None
    return fr["type"], fr.get("matched")


def _usage(results: list[Collected], n: int) -> dict:
    firsts = results[::n]
    prompt = sum(c.last.prompt_tokens for c in firsts)
    cached = sum(c.last.cached_tokens for c in firsts)
    completion = sum(c.last.completion_tokens for c in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def _token_text(engine, token_id: int) -> str:
    return engine.tokenizer.decode([token_id], skip_special_tokens=False)


def _chat_logprobs(engine, entries) -> dict:
    content = []
    for lp, tok, top in entries:
        text = _token_text(engine, tok)
        content.append({"token": text, "logprob": lp, "bytes": list(text.encode()),
                        "top_logprobs": [{"token": _token_text(engine, t), "logprob": v,
                                          "bytes": list(_token_text(engine, t).encode())} for v, t in top]})
    return {"content": content}


def _completion_logprobs(engine, entries, offset: int = 0) -> dict:
    tokens, lps, tops, offsets = [], [], [], []
    for lp, tok, top in entries:
        text = _token_text(engine, tok)
        tokens.append(text)
        lps.append(lp)
        tops.append({_token_text(engine, t): v for v, t in top})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


async def _stream(request, engine, streams, rids, n, body, make_chunk, include_usage: bool):
    """SSE for either endpoint; make_chunk(index, out, state, first) builds one chunk."""
    firsts = await start_streams(streams)
    resp = await open_sse(request)
    states = [Collected(r) for r in rids]
    started = [False] * len(rids)
    async for index, out in merge_streams(streams, firsts):
        state = states[index]
        state.add(out)
        for chunk in make_chunk(index, out, state, not started[index]):
            await send_sse(resp, chunk)
        started[index] = True
    if include_usage:
        await send_sse(resp, {**make_chunk.envelope, "choices": [], "usage": _usage(states, n)})
    await close_sse(resp)
    return resp


# -- /v1/completions ------------------------------------------------------------------------------------
async def completions(request: web.Request) -> web.StreamResponse:
    engine = _engine(request)
    body = parse(CompletionRequest, await read_json(request))
    reject_unsupported(suffix=body.suffix, best_of=body.best_of and body.best_of > 1)
    prompt = body.prompt
    if isinstance(prompt, str):
        texts = [prompt]
    elif prompt and isinstance(prompt[0], str):
        texts = prompt
    else:
        texts = None
    if texts is not None:
        prompts = [engine.tokenizer.encode(t) for t in texts]
    else:
        prompts = prompt if prompt and isinstance(prompt[0], list) else [prompt]
    if not prompts or any(not p for p in prompts):
        raise BadRequestError("the prompt is empty", param="prompt")
    constraint = await compiled(engine, merge(from_response_format(body.response_format),
                                              from_sampling(None, body.regex, body.ebnf)))
    streams, rids = _start(engine, prompts, lambda p: _params(engine, body, body.max_tokens, 16, constraint), body.n,
                           body, body.logprobs)
    cid, created, model = f"cmpl-{rids[0]}", int(time.time()), _model_name(request)
    echo = [engine.tokenizer.decode(p) if body.echo else "" for p in prompts]
    envelope = {"id": cid, "object": "text_completion", "created": created, "model": model}
    if not body.stream:
        results = await collect_all(engine, streams, rids)
        choices = []
        for i, c in enumerate(results):
            reason, matched = _finish_reason(c)
            choices.append({"index": i, "text": echo[i // body.n] + c.text,
                            "logprobs": _completion_logprobs(engine, c.logprobs) if body.logprobs is not None
                            else None, "finish_reason": reason, "matched_stop": matched})
        return json_response({**envelope, "choices": choices, "usage": _usage(results, body.n)})

    def make_chunk(index, out, state, first):
        text = (echo[index // body.n] if first else "") + out.text_delta
        reason, matched = _finish_reason(state) if out.finished else (None, None)
        if not text and not out.finished:
            return []
        choice = {"index": index, "text": text, "finish_reason": reason, "matched_stop": matched,
                  "logprobs": _completion_logprobs(engine, out.logprobs) if body.logprobs is not None else None}
        return [{**envelope, "choices": [choice]}]

    make_chunk.envelope = envelope
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return await _stream(request, engine, streams, rids, body.n, body, make_chunk, include_usage)


# -- /v1/chat/completions ---------------------------------------------------------------------------------
def _message(plan: ChatPlan, text: str, reason: str | None) -> tuple[dict, str | None]:
    """The assistant message of one choice, and its finish reason ("tool_calls" when it called)."""
    if plan.parser is not None:
        content, calls = plan.parser.parse(text)
        if calls:
            return ({"role": "assistant", "content": content or None,
                     "tool_calls": [c.to_openai() for c in calls]}, "tool_calls")
    return {"role": "assistant", "content": text, "tool_calls": None}, reason


async def chat_completions(request: web.Request) -> web.StreamResponse:
    engine = _engine(request)
    body = parse(ChatCompletionRequest, await read_json(request))
    if not body.messages:
        raise BadRequestError("messages must not be empty", param="messages")
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    plan = plan_chat(engine.tokenizer, request.app[TOOL_PARSER], messages, body.tools, body.tool_choice,
                     body.chat_template_kwargs)
    constraint = await compiled(engine, merge(plan.constraint, from_response_format(body.response_format),
                                              from_sampling(None, body.regex, body.ebnf)))
    text = plan.text
    prompt = await asyncio.to_thread(engine.tokenizer.encode, text) if len(text) > 20_000 else \
        engine.tokenizer.encode(text)
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    # no max_tokens: up to the context, or to what the KV pool can ever hold (as SGLang caps it)
    capacity = min(engine.context_length, engine.pool.num_blocks * engine.pool.block_size)
    default_max = max(capacity - len(prompt), 1)
    top = (body.top_logprobs or 0) if body.logprobs else None
    streams, rids = _start(engine, [prompt], lambda p: _params(engine, body, max_tokens, default_max, constraint),
                           body.n, body, top)
    envelope = {"id": f"chatcmpl-{rids[0]}", "object": "chat.completion", "created": int(time.time()),
                "model": _model_name(request)}
    if not body.stream:
        results = await collect_all(engine, streams, rids)
        choices = []
        for i, c in enumerate(results):
            reason, matched = _finish_reason(c)
            message, reason = _message(plan, c.text, reason)
            choices.append({"index": i, "message": message,
                            "logprobs": _chat_logprobs(engine, c.logprobs) if body.logprobs else None,
                            "finish_reason": reason, "matched_stop": matched})
        return json_response({**envelope, "choices": choices, "usage": _usage(results, body.n)})

    chunk_env = {**envelope, "object": "chat.completion.chunk"}
    splitters = [StreamingToolCalls(plan.parser) if plan.parser else None for _ in rids]
    called = [0] * len(rids)
    committed = [CommittedIds(engine.tokenizer) if body.return_token_ids else None for _ in rids]

    def choice(index, delta, reason=None, logprobs=None, **extra):
        return {**chunk_env, "choices": [{"index": index, "delta": delta, "logprobs": logprobs,
                                          "finish_reason": reason, **extra}]}

    def make_chunk(index, out, state, first):
        chunks = []
        if first:
            chunks.append(choice(index, {"role": "assistant", "content": ""}))
            if body.return_token_ids:
                chunks[0]["prompt_token_ids"] = prompt
        content, calls = out.text_delta, []
        if splitters[index] is not None:
            content, calls = splitters[index].feed(out.text_delta, final=out.finished)
        ids = committed[index].take(state.output_ids, state.text) if committed[index] is not None else []
        if content or ids or (out.logprobs and body.logprobs):
            chunks.append(choice(index, {"content": content},
                                 logprobs=_chat_logprobs(engine, out.logprobs) if body.logprobs else None,
                                 **({"token_ids": ids} if committed[index] is not None else {})))
        for call in calls:
            chunks.append(choice(index, {"tool_calls": [call.to_openai(index=called[index])]}))
            called[index] += 1
        if out.finished:
            reason, matched = _finish_reason(state)
            chunks.append(choice(index, {}, "tool_calls" if called[index] else reason, matched_stop=matched))
        return chunks

    make_chunk.envelope = chunk_env
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return await _stream(request, engine, streams, rids, body.n, body, make_chunk, include_usage)
