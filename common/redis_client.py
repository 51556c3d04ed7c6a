"""Redis clients for a Redis URL: one server, or a Redis Cluster.

A URL whose scheme is `redis+cluster://` (or `rediss+cluster://` for TLS)
names any node of a Redis Cluster: redis-py's cluster client then discovers
the others and sends each command to the node that holds its key's slot.
Every other URL is one server, as before. The rest of the URL (password,
TLS options in the query string) means what it means for one server; a
cluster has no database number, so a path other than `/` or `/0` is refused.

On a cluster every multi-key operation (MULTI/EXEC, a script, XREAD over
several streams) must keep to one hash slot; the key layout that makes that so
is in docs/architecture.md ("Redis keys"): the keys each such operation
touches share a `{hash tag}`.

Notifications go over pub/sub: PUBLISH/SUBSCRIBE on one server, sharded
SPUBLISH/SSUBSCRIBE on a cluster (Redis 7), where a channel lives on the
node of its slot like a key instead of being broadcast to every node.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
# What a Redis outage raises: redis-py's ConnectionError covers refused, reset, "No connection available"
# (and a cluster node's MaxConnectionsError) and a restarting server's LOADING reply; TimeoutError a paused
# one; OSError what slips past both.
OUTAGE = (RedisConnectionError, RedisTimeoutError, OSError)


def is_cluster(url: str) -> bool:
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def node_url(url: str) -> str:
    """The URL as redis-py reads it: a cluster URL's scheme back to redis:// or rediss://."""
    parts = urlsplit(url)
    scheme = CLUSTER_SCHEMES.get(parts.scheme)
    if scheme is None:
        return url
    if parts.path not in ("", "/", "/0"):
        raise ValueError(f"a Redis Cluster has only database 0; the URL names {parts.path!r}")
    return urlunsplit(parts._replace(scheme=scheme, path=""))


def sync_client(url: str, **kwargs) -> redis.Redis | RedisCluster:
    """A blocking client: `redis.Redis` for one server, `redis.cluster.RedisCluster` for a cluster."""
    if is_cluster(url):
        kwargs.pop("retry", None)  # the cluster client retries through its own topology refresh
        return RedisCluster.from_url(node_url(url), **kwargs)
    return redis.Redis.from_url(url, **kwargs)


def async_cluster(url: str, **kwargs) -> AsyncRedisCluster:
    """An asyncio cluster client; `max_connections` is per node."""
    kwargs.pop("retry", None)
    return AsyncRedisCluster.from_url(node_url(url), **kwargs)


def async_client(url: str, **kwargs) -> redis.asyncio.Redis | AsyncRedisCluster:
    """An asyncio client for one server or a cluster."""
    if is_cluster(url):
        return async_cluster(url, **kwargs)
    return redis.asyncio.Redis.from_url(url, **kwargs)


def clustered(client) -> bool:
    """Whether `client` (sync or asyncio) talks to a Redis Cluster."""
    return isinstance(client, (RedisCluster, AsyncRedisCluster))
