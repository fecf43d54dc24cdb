"""One Redis or a Redis Cluster: the server says which (`INFO cluster`), so no setting can disagree with it.

A cluster needs `RedisCluster` (each command goes to its slot's node) and `stream_shards` ≥ 2: with one
shard the analyzers' commit would touch keys in many slots, which a cluster refuses.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from redis.cluster import RedisCluster

log = logging.getLogger("fasterdata.analyze")

Client = redis.Redis | RedisCluster


class ShardingError(Exception):
    """The Redis topology and stream_shards do not fit together."""


def is_cluster(url: str) -> bool:
    """Ask the server behind `url` whether it is a cluster node (cluster_enabled:1)."""
    probe = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=10)
    try:
        info = probe.info("cluster")
    except redis.ResponseError as exc:  # INFO refused by an ACL: a cluster would then fail loudly with MOVED
        log.warning("cannot ask Redis whether it is a cluster (%s); assuming a single server", exc)
        return False
    finally:
        probe.close()
    return bool(int(info.get("cluster_enabled", 0) or 0))


def connect(url: str, **options: Any) -> Client:
    """A client for `url`: RedisCluster when the server is a cluster node, else redis.Redis."""
    if is_cluster(url):
        return RedisCluster.from_url(url, **options)
    return redis.Redis.from_url(url, **options)


def clustered(client: Any) -> bool:
    return isinstance(client, RedisCluster)


def require_shards(client: Any, shards: int) -> None:
    """Refuse one unsharded stream on a cluster, with the fix in the message (one line)."""
    if clustered(client) and shards < 2:
        raise ShardingError("Redis is a cluster: set stream_shards >= 2 (FASTERDATA_STREAM_SHARDS or the config "
                            "file, the same value for the proxy and the analyzers) so each commit stays in one slot")
