"""OpenAI-compatible calls and SGLang /generate, routed to a worker and passed through.

The body is checked first (forwarded.py: a malformed one is the client's 400,
never a worker's failure), then forwarded as the client sent it, minus
`agent_hints` (which may also come as `x-agent-*` headers; neither reaches the
worker). Responses — JSON or SSE — are relayed byte for byte, so the worker's
`usage` (with prompt_tokens_details.cached_tokens) reaches the client untouched.
A call that cannot connect, gets a 5xx, times out before its first token, or
whose JSON reply breaks off is retried on another worker (nothing was relayed
yet); once streaming has begun, a broken or stalled worker ends the stream with
an error event, unless the call can migrate (proxy_migration.py): then it
continues on another worker from the tokens already produced. Each of those
counts against the worker's breaker. The worker
slot a call holds is given back in one `finally`, whatever ends the call.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import orjson
from aiohttp import web
from redis.exceptions import RedisError

from common import sse
from common.errors import AgentGateError, BadRequestError, ServiceUnavailableError
from common.http import json_response, parse_json
from common.workflow.sampling import check_call
from common.workflow.schemas import AgentHints
from gateway.admission import estimate_tokens, output_budget
from gateway.api.http import read_body
from gateway.api.proxy_migration import StreamWatch, armed
from gateway.auth.keys import scoped_name, tenant_salt
from gateway.auth.middleware import tenant_of
from gateway.errors import NoWorkerError, WorkerCallError
from gateway.keys import ADMISSION, CONFIG, HASHER, METRICS, POLICY, POOL, TEMPLATES
from gateway.router.base import RouteRequest
from gateway.keys import TAGGED
from gateway.scheduler.executor import with_priority
from gateway.workers.client import StreamTimeouts
from gateway.workers.http1 import Response
from gateway.workers.pool import WorkerPool

log = logging.getLogger("agentgate.gateway")
PROXY_ATTEMPTS = 3


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", lambda r: proxy(r, "/v1/chat/completions"))
    app.router.add_post("/v1/completions", lambda r: proxy(r, "/v1/completions"))
    app.router.add_post("/generate", lambda r: proxy(r, "/generate"))
    app.router.add_get("/v1/models", list_models)


def extract_hints(body: dict, headers) -> AgentHints | None:
    """agent_hints from the body, completed by x-agent-* headers (x-agent-id is agent_id)."""
    raw = body.pop("agent_hints", None)
    hints = dict(raw) if isinstance(raw, dict) else {}
    for name, value in headers.items():
        lower = name.lower()
        if lower.startswith("x-agent-"):
            field = lower[len("x-agent-"):].replace("-", "_")
            hints.setdefault("agent_id" if field == "id" else field, value)
    if not hints:
        return None
    try:
        return AgentHints.model_validate(hints)
    except ValueError as exc:
        raise BadRequestError(f"invalid agent_hints: {exc}", param="agent_hints") from None


async def route_request(request: web.Request, path: str, body: dict, ids: list[int] | None = None) -> RouteRequest:
    """The call's RouteRequest; `ids`: its prompt's token ids when they are known already (a tagged call's,
    tokenized by awareness), so the prompt is tokenized once."""
    salt = body.get("cache_salt") if isinstance(body.get("cache_salt"), str) else None
    if ids is not None:
        route = request.app[HASHER].route_for_ids(ids, salt)
    else:
        route = await _prompt_route(request, path, body, salt)
    budget = output_budget(body)
    return replace(route, max_tokens=budget) if budget and route.prompt_tokens else route


async def _prompt_route(request: web.Request, path: str, body: dict, salt: str | None) -> RouteRequest:
    hasher = request.app[HASHER]
    try:
        if path == "/v1/chat/completions" and isinstance(body.get("messages"), list):
            return await hasher.for_chat(body["messages"], tools=body.get("tools"),
                                         template_kwargs=body.get("chat_template_kwargs"), salt=salt)
        prompt = body.get("prompt") if path == "/v1/completions" else body.get("text")
        if isinstance(prompt, str):
            return await hasher.for_text(prompt, salt)
        ids = body.get("input_ids") if path == "/generate" else prompt
        if isinstance(ids, list) and ids and all(isinstance(t, int) for t in ids):
            return hasher.route_for_ids(ids, salt)
    except AgentGateError:
        pass  # a prompt the gateway cannot render: route it blind, the worker reports the problem
    return RouteRequest(prompt_tokens=0)


async def proxy(request: web.Request, path: str) -> web.StreamResponse:
    raw = await read_body(request)
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise BadRequestError("the request body must be a JSON object")
    hints = extract_hints(body, request.headers)
    check_call(path, body)
    tenant = tenant_of(request)
    if tenant is not None:  # the tenant's salt, the client's own under it: no client names another tenant's
        body["cache_salt"] = tenant_salt(tenant, body.get("cache_salt"))
    if hints is not None:  # an agent's call: ahead of plain ones, as workflow calls are
        with_priority(body, request.app[CONFIG].workflow_priority + (hints.priority or 0))
    cost = estimate_tokens(body, request.app[CONFIG].default_max_tokens)
    async with request.app[ADMISSION].call(tenant, cost):  # 429 / queued / 503 before any worker is chosen
        return await _forward(request, path, raw, body, hints, tenant)


async def _forward(request: web.Request, path: str, raw: bytes, body: dict, hints: AgentHints | None,
                   tenant: str | None) -> web.StreamResponse:
    tagged = None
    if hints is not None and hints.template and hints.node_id:
        agent = hints.agent_id or hints.workflow_id or request.remote or "anonymous"
        template = scoped_name(tenant, hints.template)
        try:
            await request.app[TEMPLATES].record_call(template, agent, hints.node_id)
            # Client-driven agent: prefer the worker its predicted prefix went to; predict its next call after.
            tagged = await request.app[TAGGED].begin(template, hints.node_id, agent, path, body,
                                                     hints.pin_ttl_s)
        except (OSError, RedisError) as exc:  # learning is best effort; the call itself goes on
            log.warning("could not record a template transition: %s", exc)
    pool, policy, metrics = request.app[POOL], request.app[POLICY], request.app[METRICS]
    needs_prefix = policy.uses_prefix and len(pool.healthy()) > 1
    route = await route_request(request, path, body, tagged.ids if tagged is not None else None) if needs_prefix \
        else RouteRequest(prompt_tokens=0)
    # as sent, unless agent_hints came out of it or the tenant's salt went in
    payload = raw if hints is None and tenant is None else orjson.dumps(body)
    streamed = body.get("stream") is True
    migratable = path == "/v1/chat/completions" and request.app[CONFIG].request_migration and armed(body)
    tried: list[str] = []
    last_error: WorkerCallError | None = None
    for _ in range(PROXY_ATTEMPTS):
        candidates = [w.view() for w in pool.healthy() if w.url not in tried]
        if not candidates:
            break
        url = policy.route(route, candidates, tagged.preferred if tagged is not None else None,
                           request.app[CONFIG].prefetch_affinity_slack)
        worker = pool.reserve(url)
        metrics.routed.inc(worker=url)
        timeouts = pool.stream_timeouts(worker) if streamed else None
        watch = StreamWatch(body) if migratable and pool.streams_token_ids(worker) else None
        resp = data = None
        served = False
        try:
            try:
                sent = orjson.dumps({**body, "return_token_ids": True}) if watch is not None else payload
                resp = await worker.client.open("POST", path, sent,
                                                timeout_s=timeouts.first_token_s if timeouts else None)
                if resp.content_type != "text/event-stream":  # read it all here, while another worker may retry it
                    data = await worker.client.read(resp, f"POST {path}")
            except WorkerCallError as exc:
                pool.record_failure(url, exc)
                tried.append(url)
                last_error = exc
                continue
            served = True
            return _reply(resp, data, metrics) if data is not None else \
                await _relay_stream(request, resp, pool, url, timeouts, watch, tried)
        finally:  # the one place this call's slot (and its worker connection) is given back
            if resp is not None:
                resp.release()
            pool.release(url)
            if tagged is not None and served:
                request.app[TAGGED].end(tagged, url)
    retry_after = request.app[CONFIG].retry_after_s
    if last_error is not None:
        raise NoWorkerError(f"every worker tried failed; last: {last_error}", retry_after=retry_after)
    raise NoWorkerError(retry_after=retry_after)


def _reply(resp: Response, data: bytes, metrics) -> web.Response:
    if resp.status == 200 and resp.content_type == "application/json":
        try:
            parsed = orjson.loads(data)
            if isinstance(parsed, dict):
                metrics.observe_usage(parsed.get("usage"))
        except orjson.JSONDecodeError:
            pass
    return web.Response(body=data, status=resp.status, content_type=resp.content_type or "application/json")


async def _relay_stream(request: web.Request, resp: Response, pool: WorkerPool, url: str,
                        timeouts: StreamTimeouts | None, watch: StreamWatch | None = None,
                        tried: list[str] | None = None) -> web.StreamResponse:
    out = web.StreamResponse(status=resp.status, headers={"Content-Type": "text/event-stream",
                                                          "Cache-Control": "no-cache"})
    await out.prepare(request)
    chunks = resp.iter_chunks().__aiter__()
    started = False
    while True:
        try:
            chunk = await chunks.__anext__()
        except StopAsyncIteration:
            break
        except OSError as exc:  # timeouts included
            # The worker broke or stalled mid-stream: tell the client instead of leaving it hanging.
            stalled = isinstance(exc, TimeoutError)
            what = "timed out: " + ("no token between tokens" if started else "no first token") if stalled \
                else f"stream broken: {exc!r}"
            log.warning("stream from %s: %s", url, what)
            pool.record_failure(url, WorkerCallError(url, what, timed_out=stalled))
            resp.release()  # the broken connection goes now, not after a continuation elsewhere
            if watch is not None and await watch.resume(out, pool, [*(tried or ()), url],
                                                        watch.body.get("priority") or 0):
                break  # continued on another worker from the tokens produced (proxy_migration.py)
            err = ServiceUnavailableError(f"worker {what}")  # code: its status, which SDKs map to a type
            await out.write(sse.encode(err.to_json()) + sse.DONE)
            break
        if timeouts is not None:
            resp.extend(timeouts.inter_token_s)
        started = True
        if watch is not None:
            watch.feed(chunk)
        # A client gone raises here; releasing the worker response then closes it, and the worker aborts.
        await out.write(chunk)
    await out.write_eof()
    return out


async def list_models(request: web.Request) -> web.Response:
    """Every model the healthy workers serve, once each."""
    pool = request.app[POOL]
    seen: dict[str, dict] = {}
    for w in pool.healthy():
        try:
            data = await w.client.get_json("/v1/models")
        except WorkerCallError as exc:
            log.info("no model list from %s: %s", w.url, exc)
            continue
        for card in data.get("data", []):
            seen.setdefault(card.get("id"), card)
    if not seen and not pool.healthy():
        raise NoWorkerError(retry_after=request.app[CONFIG].retry_after_s)
    return json_response({"object": "list", "data": list(seen.values())})
