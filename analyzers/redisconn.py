"""One Redis or a Redis Cluster: the server says which (`INFO cluster`), so no setting can disagree with it.

A cluster needs `RedisCluster` (each command goes to its slot's node) and `stream_shards` ≥ 2: with one
shard the analyzers' commit would touch keys in many slots, which a cluster refuses.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import parse_url

from fasterdata.config.redisurl import one_url_per_host, redacted

log = logging.getLogger("fasterdata.analyze")

Client = redis.Redis | RedisCluster


class ShardingError(Exception):
    """The Redis topology and stream_shards do not fit together."""


def is_cluster(url: str, timeout: float = 10.0) -> bool:
    """Ask the server behind `url` whether it is a cluster node (cluster_enabled:1)."""
    probe = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        info = probe.info("cluster")
    except redis.ResponseError as exc:  # INFO refused by an ACL: a cluster would then fail loudly with MOVED
        log.warning("cannot ask Redis whether it is a cluster (%s); assuming a single server", exc)
        return False
    finally:
        probe.close()
    return bool(int(info.get("cluster_enabled", 0) or 0))


def connect(url: str, *, probe_timeout: float = 10.0, **options: Any) -> Client:
    """A client for `url`: RedisCluster when the server is a cluster node, else redis.Redis.

    A URL naming several hosts (cluster seed nodes) is probed host by host until one answers; all of
    them become the cluster client's start-up nodes. `probe_timeout`: seconds each host gets to answer
    the probe (a caller with a tighter budget, like the ledger cache, passes its own).
    """
    urls = one_url_per_host(url)
    failure: redis.ConnectionError | redis.TimeoutError | None = None
    for one in urls:
        try:
            cluster = is_cluster(one, probe_timeout)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if one != urls[-1]:  # the last failure is raised: its caller reports it (and may throttle)
                log.warning("Redis at %s does not answer (%s); trying the next host", redacted(one), exc)
            failure = exc
            continue
        if not cluster:
            return redis.Redis.from_url(one, **options)
        seeds = [_node(u) for u in urls if u != one]
        return RedisCluster.from_url(one, **({"startup_nodes": seeds} if seeds else {}), **options)
    assert failure is not None
    raise failure


def _node(url: str) -> ClusterNode:
    kw = parse_url(url)
    return ClusterNode(kw.get("host", "127.0.0.1"), int(kw.get("port", 6379)))


def clustered(client: Any) -> bool:
    return isinstance(client, RedisCluster)


def require_shards(client: Any, shards: int) -> None:
    """Refuse one unsharded stream on a cluster, with the fix in the message (one line)."""
    if clustered(client) and shards < 2:
        raise ShardingError("Redis is a cluster: set stream_shards >= 2 (FASTERDATA_STREAM_SHARDS or the config "
                            "file, the same value for the proxy and the analyzers) so each commit stays in one slot")
