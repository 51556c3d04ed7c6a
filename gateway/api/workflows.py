"""/v1/workflows: submit, inspect, list, stream events, post external results, cancel."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from aiohttp import web
from redis.exceptions import RedisError

from common import sse
from common.errors import BadRequestError, NotFoundError, ValidationProblems
from common.http import json_response, open_sse
from common.workflow.dag import build_graph, checked_graph
from common.workflow.schemas import NodeResultIn, WorkflowIn, parse_or_422
from common.workflow.spec import WorkflowSpec, spec_from_json
from gateway.admission import workflow_tokens
from gateway.api.http import read_json
from gateway.auth.keys import scoped_name, tenant_salt, unscoped_name
from gateway.auth.middleware import check_owner, principal, tenant_of
from gateway.errors import StateUnavailableError
from gateway.keys import ADMISSION, CONFIG, FOLLOWERS, SCHEDULER, STORE
from gateway.state.prefetch_log import PrefetchLog, summarize

EVENT_POLL_MS = 1000
REDIS_WAIT_S = 0.5  # between two reads of a follower while Redis is away
MAX_PAGE = 200


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/v1/workflows", submit)
    r.add_get("/v1/workflows", list_workflows)
    r.add_get("/v1/workflows/{id}", get_workflow)
    r.add_delete("/v1/workflows/{id}", cancel_workflow)
    r.add_get("/v1/workflows/{id}/events", events)
    r.add_post("/v1/workflows/{id}/nodes/{node}/result", post_result)


async def submit(request: web.Request) -> web.Response:
    tenant = tenant_of(request)
    body = parse_or_422(WorkflowIn, await read_json(request))
    spec = for_tenant(body.to_spec(request.app[CONFIG].default_max_tokens), tenant)
    graph, problems = checked_graph(spec)  # the run's graph too: built once
    if problems:
        raise ValidationProblems(problems)
    admission, scheduler = request.app[ADMISSION], request.app[SCHEDULER]
    await admission.admit_workflow(tenant, workflow_tokens(spec), scheduler.runs)
    wf_id = await scheduler.submit(spec, tenant, graph)
    admission.started_workflow(wf_id, tenant)
    return json_response({"id": wf_id, "status": "running", "events": f"/v1/workflows/{wf_id}/events"}, status=202)


def for_tenant(spec: WorkflowSpec, tenant: str | None) -> WorkflowSpec:
    """The workflow as its tenant's: every LLM node's cache salt under the tenant's (a node's own
    cache_salt after it), its template in the tenant's namespace. Without keys: unchanged."""
    if tenant is None:
        return spec
    nodes = tuple(dataclasses.replace(n, params={**n.params, "cache_salt": tenant_salt(tenant, n.params.get(
        "cache_salt"))}) if n.kind == "llm" else n for n in spec.nodes)
    template = scoped_name(tenant, spec.template) if spec.template else None
    return dataclasses.replace(spec, nodes=nodes, template=template)


async def _load(request: web.Request, wf_id: str) -> dict:
    """The workflow's record; 404 when it does not exist or is another tenant's."""
    meta = await request.app[STORE].meta(wf_id)
    if meta is None:
        raise NotFoundError(f"workflow '{wf_id}' does not exist", param="id", code="workflow_not_found")
    check_owner(request, meta.get("tenant"), f"workflow '{wf_id}'", "id", "workflow_not_found")
    return meta


def _summary(wf_id: str, meta: dict) -> dict:
    return {"id": wf_id, "status": meta["status"], "created": meta["created"], "updated": meta.get("updated"),
            "finished": meta.get("finished"), "template": unscoped_name(meta.get("template")) or None,
            "priority": meta["priority"], "error": meta.get("error"), "tenant": meta.get("tenant") or None}


async def get_workflow(request: web.Request) -> web.Response:
    wf_id = request.match_info["id"]
    store = request.app[STORE]
    meta = await _load(request, wf_id)
    nodes = await store.nodes(wf_id)
    prefetch = await PrefetchLog(store.r, request.app[CONFIG].key_prefix).all(wf_id)
    out_nodes, outputs, prompt, cached = {}, {}, 0, 0
    for node in meta["spec"]["nodes"]:
        state = nodes.get(node["id"], {"status": "pending"})
        usage = state.get("usage") or {}
        prompt += usage.get("prompt_tokens") or 0
        cached += (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        started, first, finished = state.get("started"), state.get("first_token"), state.get("finished")
        out_nodes[node["id"]] = {
            "type": node["kind"], "status": state["status"], "output": state.get("output"),
            "worker": state.get("worker"), "attempts": state.get("attempts", 0), "error": state.get("error"),
            "usage": state.get("usage"),
            "timings": {"started": started, "finished": finished,
                        "ttft_s": first - started if first and started else None,
                        "duration_s": finished - started if finished and started else None,
                        # the phases the console's Gantt draws (docs/architecture.md, "Operating it")
                        "ready": state.get("ready"), "first_token": first},
            "prefetch": prefetch.get(node["id"])}
        if state["status"] == "finished":
            outputs[node["id"]] = state.get("output")
    graph = build_graph(spec_from_json(meta["spec"]))
    edges = [{"source": u, "target": v, "conditional": c is not None} for u, v, c in graph.edges(data="condition")]
    return json_response({**_summary(wf_id, meta), "nodes": out_nodes, "edges": edges, "outputs": outputs,
                          "cache": {"prompt_tokens": prompt, "cached_tokens": cached,
                                    "hit_rate": cached / prompt if prompt else 0.0},
                          "prefetch": summarize(prefetch)})


def _int_query(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequestError(f"{name} must be an integer", param=name) from None
    if not lo <= value <= hi:
        raise BadRequestError(f"{name} must be in [{lo}, {hi}]", param=name)
    return value


async def list_workflows(request: web.Request) -> web.Response:
    offset = _int_query(request, "offset", 0, 0, 10**9)
    limit = _int_query(request, "limit", 20, 1, MAX_PAGE)
    store, who = request.app[STORE], principal(request)
    # a tenant lists its own; an admin every tenant's, or one with ?tenant=
    tenant = request.query.get("tenant") if who.admin else who.tenant
    ids, total = await store.list(offset, limit, tenant)
    data = []
    for wf_id in ids:
        meta = await store.meta(wf_id)
        if meta is not None:
            data.append(_summary(wf_id, meta))
    return json_response({"object": "list", "data": data, "total": total, "offset": offset, "limit": limit,
                          "has_more": offset + len(ids) < total})


async def cancel_workflow(request: web.Request) -> web.Response:
    """200 "cancelled"; 202 "cancelling" if the replica that runs it has not confirmed within a lease period."""
    wf_id = request.match_info["id"]
    await _load(request, wf_id)
    status = await request.app[SCHEDULER].cancel(wf_id)
    return json_response({"id": wf_id, "status": status}, status=200 if status == "cancelled" else 202)


async def post_result(request: web.Request) -> web.Response:
    """200 "finished"; 202 "accepted" if the replica that runs it has not taken it within a lease period."""
    wf_id, node = request.match_info["id"], request.match_info["node"]
    raw = await read_json(request)
    await _load(request, wf_id)  # another tenant's workflow is a 404 whatever the body says
    body = parse_or_422(NodeResultIn, raw)
    status = await request.app[SCHEDULER].post_result(wf_id, node, body.output)
    return json_response({"id": wf_id, "node": node, "status": status}, status=200 if status == "finished" else 202)


async def events(request: web.Request) -> web.StreamResponse:
    """SSE from the workflow's Redis stream. `Last-Event-ID` (or ?after=) resumes after that event;
    the stream ends after workflow_finished. Each client reads Redis on its own, so a slow
    consumer only delays itself, never the scheduler. While Redis is away the client is kept
    (keep-alive comments) for as long as the scheduler waits for Redis; past that the stream ends
    with an `error` event, and the client resumes from its Last-Event-ID."""
    wf_id = request.match_info["id"]
    store, config = request.app[FOLLOWERS], request.app[CONFIG]
    await _load(request, wf_id)
    with request.app[ADMISSION].follower(tenant_of(request)):  # 429 past the SSE bounds
        return await _follow(request, wf_id, store, config)


async def _follow(request: web.Request, wf_id: str, store, config) -> web.StreamResponse:
    after = request.headers.get("Last-Event-ID") or request.query.get("after") or "0-0"
    resp = await open_sse(request)
    runs, bell = request.app[SCHEDULER].runs, request.app[STORE].bell
    done, down_since = False, None
    with bell.watching(wf_id):
        while not done:
            # A workflow this replica runs: its appends ring the bell, so the read need not block in Redis
            # (thousands of followers would queue for the followers' connections); one run elsewhere:
            # a blocking read.
            local, rung = wf_id in runs, bell.rung(wf_id)
            try:
                batch = await store.read_events(wf_id, after, block_ms=None if local else EVENT_POLL_MS)
                ended = not batch and not local and await _replayed_all(store, wf_id, after)
                down_since = None
            except (OSError, RedisError) as exc:
                down_since = down_since or time.monotonic()
                if time.monotonic() - down_since > config.redis_retry_s:
                    err = StateUnavailableError(f"the state store (Redis) is unavailable: {exc}")
                    await resp.write(sse.encode(err.to_json(), event="error"))
                    break
                await resp.write(b": waiting for Redis\n\n")
                await asyncio.sleep(REDIS_WAIT_S)
                continue
            if ended:
                break  # ended before this client connected and everything was replayed
            if not batch:
                await _idle(resp, bell, runs, wf_id, rung, local)
                continue
            for eid, type_, data in batch:
                await resp.write(sse.encode(data, event=type_, id=eid))
                after = eid
                done = done or type_ == "workflow_finished"
    try:
        await resp.write_eof()
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    return resp


async def _idle(resp: web.StreamResponse, bell, runs, wf_id: str, rung: int, local: bool) -> None:
    """Nothing new to send: a keep-alive every EVENT_POLL_MS until the bell rings past `rung` (or the
    workflow leaves this replica); for a workflow run elsewhere, one (its read blocked already)."""
    if not local:
        await resp.write(b": keep-alive\n\n")
        return
    while wf_id in runs and not await bell.wait(wf_id, rung, EVENT_POLL_MS / 1000):
        await resp.write(b": keep-alive\n\n")


async def _replayed_all(store, wf_id: str, after: str) -> bool:
    """The workflow ended (or is gone) and nothing after `after` is left to send."""
    meta = await store.meta(wf_id)
    return meta is None or meta["status"] != "running" and not await store.read_events(wf_id, after)
