"""The gateway app's long-lived parts that start after the worker pool and stop before it (aiohttp
cleanup contexts): agent awareness, handed to the scheduler before it resumes any workflow and stopped
(pins released) after it, and the KV index, plugged into kv_aware routing and fed by its consumer task."""

from __future__ import annotations

from aiohttp import web

from gateway.keys import (AWARENESS, CONFIG, HASHER, KV_CONSUMER, KV_INDEX, METRICS, POLICY, POOL, REDIS, SESSION,
                          STORE, TAGGED, TEMPLATES)
from gateway.kvindex.consumer import KVIndexConsumer
from gateway.router.prefix_source import IndexPrefixSource, TierCredit
from gateway.kvindex.index import KVIndex
from gateway.router.policies.kv_aware import KVAwarePolicy
from gateway.awareness.runs import Awareness
from gateway.awareness.tagged import TaggedCalls
from gateway.state.learning import LearningStore
from gateway.workers.kv_ops import KVOps


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


async def kvindex_ctx(app: web.Application):
    """Needs CONFIG, POLICY and SESSION; the router reads the index as soon as it has synced a worker."""
    config = app[CONFIG]
    index = KVIndex()
    app[KV_INDEX] = index
    policy = app[POLICY]
    if isinstance(policy, KVAwarePolicy):
        # Workers the index does not cover (plain workers that publish nothing) keep the policy's own record.
        policy.use_prefix_source(IndexPrefixSource(index, policy.record,
                                                   TierCredit(l2=config.kv_credit_l2, l3=config.kv_credit_l3),
                                                   recent_s=config.kv_recent_s))
    consumer = KVIndexConsumer(config.redis_url, index, app[SESSION], group=config.kvindex_group,
                               registry_interval_s=config.kvindex_registry_interval_s)
    app[KV_CONSUMER] = consumer
    await consumer.start()
    yield
    await consumer.stop()
