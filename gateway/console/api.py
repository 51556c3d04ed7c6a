"""GET /ui (the page), /ui/static/* (its files) and GET /ui/api/overview: the workers as the console
shows them (load, KV per tier, pins, prefix hit rate, read from each worker's /kv/stats) and the
agent-awareness counters. Workflows, their DAGs and timings come from /v1/workflows and its SSE."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from common.http import json_response
from gateway.auth.middleware import require_admin
from gateway.errors import WorkerCallError
from gateway.keys import METRICS, POOL, SCHEDULER
from gateway.metrics import Counter, Metrics

STATIC = Path(__file__).parent / "static"
KV_STATS_TIMEOUT_S = 2.0


def add_routes(app: web.Application) -> None:
    app.router.add_get("/ui", page)
    app.router.add_get("/ui/", page)
    app.router.add_static("/ui/static", STATIC)
    app.router.add_get("/ui/api/overview", overview)


async def page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def overview(request: web.Request) -> web.Response:
    """Every worker's state and the gateway-wide counters: an operator's view (admin scope with keys)."""
    require_admin(request)
    pool = request.app[POOL]
    workers = list(pool.workers.values())
    stats = await asyncio.gather(*(_kv_stats(w.client) for w in workers))
    return json_response({
        "workers": [_worker(w, kv) for w, kv in zip(workers, stats)],
        "workflows_running": len(request.app[SCHEDULER].runs),
        "awareness": awareness(request.app[METRICS]),
    })


async def _kv_stats(client) -> dict | None:
    """The worker's /kv/stats (ours; an SGLang worker has none: None)."""
    try:
        return await asyncio.wait_for(client.get_json("/kv/stats"), KV_STATS_TIMEOUT_S)
    except (WorkerCallError, asyncio.TimeoutError):
        return None


def _worker(w, kv: dict | None) -> dict:
    out = {"url": w.url, "healthy": w.healthy, "breaker": w.breaker.state, "in_flight": w.in_flight,
           "capacity": w.capacity, "load": w.load, "kv": None}
    if kv is not None:
        l2 = (kv.get("tiers") or {}).get("l2") or {}
        prefix = kv.get("prefix_cache") or {}
        prompt = prefix.get("prompt_tokens") or 0
        out["kv"] = {
            "block_size": kv.get("block_size"),
            "l1": {"used_blocks": kv.get("used_blocks"), "cached_blocks": kv.get("cached_blocks"),
                   "total_blocks": kv.get("total_blocks")},
            "l2": {"used_blocks": l2.get("used_blocks", 0), "total_blocks": l2.get("capacity_blocks", 0)},
            "pinned_blocks": (kv.get("pins") or {}).get("pinned_blocks", 0),
            "prefix_hit_rate": (prefix.get("cached_tokens") or 0) / prompt if prompt else None,
        }
    return out


def _sum(counter: Counter, **match) -> float:
    return sum(v for k, v in counter.values.items() if all((n, m) in k for n, m in match.items()))


def awareness(metrics: Metrics) -> dict:
    """Predictions (used, wasted), prefetch hits and wasted prefetch tokens so far, per source where kept."""
    out = {}
    for source in ("workflow", "client"):
        precision, recall = metrics.prediction_quality(source)
        out[source] = {"predictions_used": _sum(metrics.predictions, source=source, outcome="used"),
                       "predictions_wasted": _sum(metrics.predictions, source=source, outcome="wasted"),
                       "precision": precision, "recall": recall}
    out["prefetch_hits"] = _sum(metrics.prefetch_hits, hit="true")
    out["prefetch_misses"] = _sum(metrics.prefetch_hits, hit="false")
    out["prefetch_tokens"] = _sum(metrics.prefetch_tokens)
    out["prefetch_wasted_tokens"] = _sum(metrics.prefetch_wasted_tokens)
    out["prefetch_saved_tokens"] = _sum(metrics.prefetch_saved_tokens)
    out["pin_seconds"] = _sum(metrics.pin_seconds)
    return out
