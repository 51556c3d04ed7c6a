"""The KV index in the gateway app: built, plugged into kv_aware routing, fed
by its consumer task from start-up to clean-up (an aiohttp cleanup_ctx)."""

from __future__ import annotations

from aiohttp import web

from gateway.keys import CONFIG, POLICY, SESSION
from gateway.kvindex.consumer import KVIndexConsumer
from gateway.kvindex.credit import IndexPrefixSource, TierCredit
from gateway.kvindex.index import KVIndex
from gateway.router.policies.kv_aware import KVAwarePolicy

KV_INDEX = web.AppKey("kv_index", KVIndex)
KV_CONSUMER = web.AppKey("kv_consumer", KVIndexConsumer)


async def kvindex_ctx(app: web.Application):
    """Needs CONFIG, POLICY and SESSION; the router reads the index as soon as it has synced a worker."""
    config = app[CONFIG]
    index = KVIndex()
    app[KV_INDEX] = index
    policy = app[POLICY]
    if isinstance(policy, KVAwarePolicy):
        # Workers the index does not cover (plain workers that publish nothing) keep the policy's own record.
        policy.prefix = IndexPrefixSource(index, policy.record,
                                          TierCredit(l2=config.kv_credit_l2, l3=config.kv_credit_l3),
                                          recent_s=config.kv_recent_s)
    consumer = KVIndexConsumer(config.redis_url, index, app[SESSION], group=config.kvindex_group,
                               registry_interval_s=config.kvindex_registry_interval_s)
    app[KV_CONSUMER] = consumer
    await consumer.start()
    yield
    await consumer.stop()
