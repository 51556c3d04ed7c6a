"""The engine worker's HTTP server: SGLang's native API (this module) and its
OpenAI-compatible API (openai_api.py) over one Engine.

Request lifecycle: parse + validate (protocol.py) → tokenize → Engine.submit →
stream StepOutputs back (bridge.py) → SGLang-shaped JSON or SSE.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web

from common.errors import BadRequestError, error_body
from common.http import error_middleware, json_response, open_sse, read_json
from common.prom import CONTENT_TYPE as PROM_CONTENT_TYPE
from common.tracing import observe_requests
from engine.runtime.engine import Engine
from engine.worker import contract, kv_routes, openai_api
from engine.worker.auth import key_middleware
from engine.worker.bridge import (
    ENGINE,
    SERVER_ARGS,
    Collected,
    close_sse,
    collect_all,
    merge_streams,
    new_rid,
    run_request,
    send_sse,
    start_streams,
)
from engine.worker.metrics import render_metrics
from engine.worker.protocol import (
    AbortRequest,
    GenerateRequest,
    GenerateSamplingParams,
    build_sampling_params,
    parse,
    reject_unsupported,
)
from engine.worker.structured import compiled, from_sampling

log = logging.getLogger("agentgate.worker")

VERSION = "0.1.0"
FLUSH_OK = ("Cache flushed.\nPlease check backend logs for more details. (When there are running or waiting "
            "requests, the operation will not be performed.)\n")


def create_app(engine: Engine, server_args: dict, api_key: str | None = None) -> web.Application:
    """`api_key`: every route but the health probes needs it as a Bearer token (SGLang's --api-key)."""
    middlewares = [error_middleware] + ([key_middleware(api_key)] if api_key else [])
    app = web.Application(middlewares=middlewares, client_max_size=64 * 1024 * 1024)
    observe_requests(app, "worker")  # X-Request-Id, and the caller's trace continued when tracing is on
    app[ENGINE] = engine
    app[SERVER_ARGS] = server_args
    r = app.router
    r.add_get("/health", health)
    r.add_get("/health_generate", health_generate)
    r.add_get("/ping", health)
    r.add_get("/health/live", health_live)
    r.add_get("/health/ready", health_ready)
    for path in ("/get_server_info", "/server_info"):
        r.add_get(path, server_info)
    for path in ("/get_model_info", "/model_info"):
        r.add_get(path, model_info)
    r.add_get("/get_load", get_load)
    r.add_post("/generate", generate)
    r.add_put("/generate", generate)
    r.add_route("*", "/flush_cache", flush_cache)
    r.add_post("/abort_request", abort_request)
    r.add_get("/metrics", metrics)
    kv_routes.add_routes(app)
    openai_api.add_routes(app)
    contract.add_routes(app)
    app.cleanup_ctx.append(_engine_lifecycle)
    return app


async def _engine_lifecycle(app: web.Application):
    engine = app[ENGINE]
    if not engine.started:
        engine.start()
    yield
    engine.stop()


# -- info ----------------------------------------------------------------------------------
async def health(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    return web.Response(status=200 if engine.alive else 503)


async def health_live(request: web.Request) -> web.Response:
    """Kubernetes liveness: the HTTP server answers (a busy or stopped engine is readiness' business)."""
    return json_response({"status": "live"})


async def health_ready(request: web.Request) -> web.Response:
    """Kubernetes readiness: the engine thread runs and takes requests; 503 otherwise."""
    if request.app[ENGINE].alive:
        return json_response({"status": "ready"})
    return json_response(error_body("not ready: the engine is not running", "service_unavailable", 503), status=503)


async def health_generate(request: web.Request) -> web.Response:
    """Runs a one-token generation end to end, as SGLang's probe does."""
    engine = request.app[ENGINE]
    params = build_sampling_params(max_new_tokens=1, temperature=0.0, top_p=1.0, top_k=-1,
                                   vocab_size=engine.model_config.vocab_size)
    stream = run_request(engine, [engine.model_config.eos_token_ids[0] if engine.model_config.eos_token_ids else 0],
                         params, rid=f"HEALTH_CHECK_{time.time()}")
    try:
        async with asyncio.timeout(20):
            async for _ in stream:
                pass
    except TimeoutError:
        return web.Response(status=503)
    return web.Response(status=200)


async def server_info(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    usage = engine.kv.usage()
    desc = engine.describe()
    info = dict(request.app[SERVER_ARGS])
    info.update({
        "status": "ready",
        "backend": desc["backend"],
        "kind": desc["kind"],
        **desc.get("details", {}),
        "version": VERSION,
        "page_size": engine.pool.block_size,
        "chunked_prefill_size": engine.batcher.max_batch_tokens,  # as resolved (the flag's 0 = the device's default)
        "max_total_num_tokens": engine.pool.num_blocks * engine.pool.block_size,
        "max_req_input_len": engine.context_length - 1,
        "context_length": engine.context_length,
        "dtype": str(engine.dtype).removeprefix("torch."),
        "matmul_plan": engine.plan.describe(),
        "threads": engine.threads,
        "kv_tiers": {"l2_blocks": engine.tiers.host.num_blocks if engine.tiers.host is not None else 0,
                     "l3": engine.l3_id or None, "l3_error": engine.l3_error,
                     "max_pinned_blocks": engine.pins.max_blocks},
        "internal_states": [{
            "last_gen_throughput": engine.stats.gen_throughput(),
            "memory_usage": {"weight": round(desc["weights_gb"], 3), "kvcache": round(desc["kvcache_gb"], 3),
                             "token_capacity": engine.pool.num_blocks * engine.pool.block_size},
            "token_usage": usage["token_usage"],
            **({"avg_spec_accept_length": engine.stats.spec_accept_length()} if engine.speculator else {}),
        }],
    })
    return json_response(info)


async def model_info(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    args = request.app[SERVER_ARGS]
    return json_response({
        "model_path": engine.cfg.model_path,
        "tokenizer_path": engine.cfg.model_path,
        "served_model_name": args.get("served_model_name"),
        "is_generation": True,
        "preferred_sampling_params": None,
        "weight_version": "default",
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "has_image_understanding": False,
        "has_audio_understanding": False,
    })


async def get_load(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    load = await asyncio.wrap_future(engine.call(engine.load))
    return json_response([{"dp_rank": 0, **load}])


async def metrics(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    snapshot = await asyncio.wrap_future(engine.call(lambda: (engine.load(), _usage(engine))))
    body = render_metrics(engine, request.app[SERVER_ARGS].get("served_model_name", ""), *snapshot)
    return web.Response(body=body, headers={"Content-Type": PROM_CONTENT_TYPE})


def _usage(engine: Engine) -> dict:
    """Engine thread: L1 usage plus the pinned and the L2 blocks."""
    l2 = engine.tiers.host
    return {**engine.kv.usage(), "pinned_blocks": engine.pins.num_blocks,
            "l2_used_blocks": len(l2) if l2 is not None else 0}


# -- control ---------------------------------------------------------------------------------
async def flush_cache(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    ok = await asyncio.wrap_future(engine.call(engine.kv.flush))
    return web.Response(text=FLUSH_OK, status=200 if ok else 400)


async def abort_request(request: web.Request) -> web.Response:
    body = parse(AbortRequest, await read_json(request))
    rid, abort_all = body.rid, body.abort_all
    if rid or abort_all:
        request.app[ENGINE].abort(rid, abort_all, prefix=True)
    return web.Response(status=200)


# -- /generate ---------------------------------------------------------------------------------
async def generate(request: web.Request) -> web.StreamResponse:
    engine = request.app[ENGINE]
    req = parse(GenerateRequest, await read_json(request))
    reject_unsupported(input_embeds=req.input_embeds, image_data=req.image_data, lora_path=req.lora_path)
    if req.logprob_start_len >= 0 and req.return_logprob:
        raise BadRequestError("prompt logprobs (logprob_start_len >= 0) are not supported by this worker",
                              param="logprob_start_len")
    if not 0 <= req.top_logprobs_num <= 20:
        raise BadRequestError(f"top_logprobs_num must be in [0, 20], got {req.top_logprobs_num}",
                              param="top_logprobs_num")
    for sp in req.sampling_params if isinstance(req.sampling_params, list) else [req.sampling_params]:
        await compiled(engine, from_sampling(sp.json_schema, sp.regex, sp.ebnf))  # off the loop; then cached
    items = _expand_batch(engine, req)
    incremental = request.app[SERVER_ARGS].get("incremental_streaming_output", False)
    streams = [run_request(engine, ids, params, rid=rid, salt=req.cache_salt, return_logprob=req.return_logprob,
                           top_logprobs_num=req.top_logprobs_num, priority=req.priority) for rid, ids, params in items]
    is_batch = len(items) > 1 or isinstance(req.text, list) or (req.input_ids and isinstance(req.input_ids[0], list))
    if not req.stream:
        results = await collect_all(engine, streams, [rid for rid, _, _ in items])
        outs = [_generate_json(c, req, engine) for c in results]
        return json_response(outs if is_batch else outs[0])
    firsts = await start_streams(streams)
    resp = await open_sse(request)
    states = [Collected(rid) for rid, _, _ in items]
    async for index, out in merge_streams(streams, firsts):
        state = states[index]
        sent_ids, sent_text = len(state.output_ids), len(state.text)
        state.add(out)
        chunk = _generate_json(state, req, engine, final=out.finished)
        if incremental:
            chunk["text"] = state.text[sent_text:]
            chunk["output_ids"] = state.output_ids[sent_ids:]
        if is_batch:
            chunk["index"] = index
        await send_sse(resp, chunk)
    await close_sse(resp)
    return resp


def _expand_batch(engine: Engine, req: GenerateRequest) -> list[tuple[str, list[int], Any]]:
    if (req.text is None) == (req.input_ids is None):
        raise BadRequestError("Either text or input_ids should be provided (exactly one).", param="text")
    if req.text is not None:
        texts = req.text if isinstance(req.text, list) else [req.text]
        prompts = [engine.tokenizer.encode(t) for t in texts]
    else:
        ids = req.input_ids
        prompts = ids if ids and isinstance(ids[0], list) else [ids]
    if not prompts:
        raise BadRequestError("the batch is empty", param="text")
    sps = req.sampling_params if isinstance(req.sampling_params, list) else [req.sampling_params] * len(prompts)
    if len(sps) != len(prompts):
        raise BadRequestError("sampling_params must be one object or one per prompt", param="sampling_params")
    rids = req.rid if isinstance(req.rid, list) else None
    if rids is not None and len(rids) != len(prompts):
        raise BadRequestError("rid must be one string or one per prompt", param="rid")
    items = []
    for i, (prompt, sp) in enumerate(zip(prompts, sps)):
        params = _sampling(engine, sp)
        if not 1 <= sp.n <= 16:
            raise BadRequestError(f"n must be in [1, 16], got {sp.n}", param="n")
        engine.validate(prompt, params.max_new_tokens)
        base = rids[i] if rids is not None else req.rid if isinstance(req.rid, str) else None
        base = new_rid(base)
        multi = len(prompts) * sp.n > 1
        for j in range(sp.n):
            rid = f"{base}_{i * sp.n + j}" if multi and rids is None else (f"{base}_{j}" if sp.n > 1 else base)
            items.append((rid, prompt, params))
    if len({rid for rid, _, _ in items}) != len(items):
        raise BadRequestError("duplicate rid in the batch", param="rid")
    return items


def _sampling(engine: Engine, sp: GenerateSamplingParams):
    reject_unsupported(custom_params=sp.custom_params)
    constraint = from_sampling(sp.json_schema, sp.regex, sp.ebnf)
    if constraint is not None:
        engine.grammars.compile(constraint)  # compiled by generate() already: a cache hit
    return build_sampling_params(
        max_new_tokens=sp.max_new_tokens, temperature=sp.temperature, top_p=sp.top_p, top_k=sp.top_k,
        min_p=sp.min_p, frequency_penalty=sp.frequency_penalty, presence_penalty=sp.presence_penalty,
        repetition_penalty=sp.repetition_penalty, min_new_tokens=sp.min_new_tokens, stop=sp.stop,
        stop_token_ids=sp.stop_token_ids, ignore_eos=sp.ignore_eos,
        seed=sp.sampling_seed if sp.sampling_seed is not None else sp.seed,
        skip_special_tokens=sp.skip_special_tokens, no_stop_trim=sp.no_stop_trim, logit_bias=sp.logit_bias,
        vocab_size=engine.model_config.vocab_size, constraint=constraint)


def _generate_json(c: Collected, req: GenerateRequest, engine: Engine, final: bool = True) -> dict:
    out = c.last
    meta: dict[str, Any] = {
        "id": c.rid,
        "finish_reason": out.finish_reason if out and out.finished else None,
        "prompt_tokens": out.prompt_tokens if out else 0,
        "weight_version": "default",
        "total_retractions": out.retractions if out else 0,
        "completion_tokens": out.completion_tokens if out else 0,
        "cached_tokens": out.cached_tokens if out else 0,
    }
    if req.return_logprob:
        text = req.return_text_in_logprobs
        tok = engine.tokenizer
        meta["input_token_logprobs"] = []
        meta["output_token_logprobs"] = [[lp, t, tok.decode([t], False) if text else None] for lp, t, _ in c.logprobs]
        if req.top_logprobs_num > 0:
            meta["input_top_logprobs"] = []
            meta["output_top_logprobs"] = [[[v, i, tok.decode([i], False) if text else None] for v, i in top]
                                           for _, _, top in c.logprobs]
    if final and out is not None and out.spec:
        meta.update(out.spec)
    if final and out is not None and out.tier_tokens is not None:
        meta["cached_tokens_by_tier"] = out.tier_tokens
    if final:
        meta["e2e_latency"] = time.monotonic() - c.start
    return {"text": c.text, "output_ids": list(c.output_ids), "meta_info": meta}
