"""Agent awareness in the gateway app: built after the worker pool, handed to the
scheduler before it resumes any workflow, stopped (pins released) after it."""

from __future__ import annotations

from aiohttp import web

from gateway.keys import CONFIG, HASHER, METRICS, POLICY, POOL, REDIS, STORE, TEMPLATES
from gateway.scheduler.awareness import AWARENESS, Awareness
from gateway.scheduler.tagged import TaggedCalls
from gateway.state.learning import LearningStore
from gateway.workers.kv_ops import KVOps

TAGGED = web.AppKey("tagged_calls", TaggedCalls)


async def awareness_ctx(app: web.Application):
    """Needs CONFIG, POOL, POLICY, HASHER, STORE, REDIS, METRICS, TEMPLATES."""
    config = app[CONFIG]
    kv_ops = KVOps()
    awareness = Awareness(config, app[POOL], app[POLICY], app[HASHER], app[STORE],
                          LearningStore(app[REDIS], config.key_prefix), app[METRICS], kv_ops)
    app[AWARENESS] = awareness
    app[TAGGED] = TaggedCalls(awareness, app[TEMPLATES])
    app[POOL].on_removed.append(awareness.prefetcher.forget_worker)
    await awareness.start()
    yield
    await app[TAGGED].close()
    await awareness.stop()
    await kv_ops.close()
