"""Nudges over Redis pub/sub: PUBLISH/SUBSCRIBE on one server, sharded SPUBLISH/SSUBSCRIBE on a
Redis Cluster (Redis 7), where the channel lives on the node of its hash slot as a key does.

A nudge only says "look now": what it points at is written to Redis first, and the
reader also looks on its own every lease round, so a nudge lost with a connection
costs time, never a request.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from redis.exceptions import RedisError

from common.redis_client import clustered

log = logging.getLogger("agentgate.gateway")
POLL_S = 1.0  # a sharded subscription is polled this long per wait


async def nudge(redis, channel: str, message: bytes | str) -> None:
    """Publish `message`; a failure is logged, not raised (the request it points at is written already)."""
    try:
        if clustered(redis):
            await redis.spublish(channel, message)
        else:
            await redis.publish(channel, message)
    except (RedisError, OSError) as exc:
        log.warning("nudge on %s not published (the next lease round finds the request): %s", channel, exc)


@contextlib.asynccontextmanager
async def subscription(redis, channel: str) -> AsyncIterator[AsyncIterator]:
    """Subscribed to `channel` while open: yields an async iterator of the messages' payloads.
    Connection errors propagate from the iterator; the subscription is closed on any exit."""
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    try:
        if clustered(redis):
            await pubsub.ssubscribe(channel)
            yield _sharded(pubsub)
        else:
            await pubsub.subscribe(channel)
            yield (message["data"] async for message in pubsub.listen())
    finally:
        try:
            await pubsub.aclose()
        except (OSError, RedisError):  # Redis went away with it
            pass


async def _sharded(pubsub) -> AsyncIterator:
    while True:
        message = await pubsub.get_sharded_message(ignore_subscribe_messages=True, timeout=POLL_S)
        if message is not None and message.get("type") == "smessage":
            yield message["data"]
