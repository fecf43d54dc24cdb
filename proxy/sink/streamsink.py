"""The sink's facade: ``StreamSink`` holds one lane per stream and routes ``put()`` to one of them."""

from __future__ import annotations

import asyncio
import os
import ssl
import uuid
from typing import TYPE_CHECKING

import hiredis

from fasterdata.config.redisurl import one_url_per_host
from fasterdata.proxy.events import ENTRY_FORMATS
from fasterdata.proxy.streamkeys import marker_tag, stream_name

from .cluster import ClusterNodes
from .lane import Lane
from .metrics import merged_latency
from .resp import RedisTarget

if TYPE_CHECKING:
    from fasterdata.config.settings import ProxySettings


class StreamSink:
    """Batched, idempotent, never-blocking writer of statement events to Redis Streams.

    Parameters (all but ``url`` and ``prefix`` keyword-only):

    - ``url``: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://…`` (TLS; redis-py query
      parameters ``ssl_cert_reqs``, ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``,
      ``ssl_check_hostname``) or ``unix:///path?db=N``.  For a Redis Cluster: one node or several
      (``redis://h1:p1,h2:p2``, tried in turn while the first does not answer); the others are found
      through MOVED, ASK and CLUSTER SLOTS.
    - ``prefix``: key prefix; the stream is ``<prefix>:statements``.
    - ``maxlen``: ``MAXLEN ~`` bound of the stream (0 = unbounded).  Default 1,000,000.
    - ``max_queue``: events held in memory before new ones go to the spool.  Default 100,000.
    - ``linger``: shortest time between two batches of a lane unless a full batch waits, so that
      events gather (fewer round trips and script calls, whose fixed costs more events share under
      load); costs up to that much latency to the stream.  0 sends at once.
    - ``batch_max``: events per round trip (Redis runs one batch's script at a time).  Default 1000.
    - ``entry``: ``bundled`` (up to BUNDLE_MAX events an entry, one field; default), ``packed`` (one
      event an entry, one field) or ``flat`` (one field per event field); see proxy.events.
    - ``spool_path``: spool file (one per process; None = no spool: overflow is dropped).
    - ``spool_max_bytes``: unreplayed spool data kept before dropping.  Default 1 GiB.
    - ``shards``: number of streams (``<prefix>:statements:{i}``) chosen by ``route``.  Default 1.
    - ``connect_timeout``: connect + TLS + AUTH/SELECT, seconds.  Default 5.
    - ``send_timeout``: a batch's round trip before Redis counts as unreachable.  Default 5.
    - ``backoff_min``/``backoff_max``: reconnect delay, doubling.  Default 0.1 / 5 seconds.
    - ``ssl_context``: overrides the TLS settings taken from a rediss:// URL.
    - ``client_name``: CLIENT SETNAME prefix (the instance id is appended).
    - ``marker_ttl``: seconds an idempotency marker lives after its last batch; a spool replayed later
      than that may duplicate its one in-doubt batch.  Default 7 days.
    - ``wait_replicas``: replicas that must hold a batch (Redis WAIT, ``wait_timeout`` seconds) before it
      counts as sent; fewer is handled like an unreachable Redis (spool, retry; the marker makes the
      resend safe).  With 1, a failover to a replica loses no confirmed event; without a replica
      attached, events wait in the spool.  Default 0: the primary's reply is enough.

    Use: ``await sink.start()``; ``sink.put(fields, route)`` from anywhere on the loop's thread;
    ``await sink.close(timeout)`` at shutdown.  ``readiness()`` suits MetricsServer's ``ready``.
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", prefix: str = "fasterdata", *,
                 maxlen: int = 1_000_000, max_queue: int = 100_000, batch_max: int = 1000, linger: float = 0.005,
                 spool_path: str | os.PathLike | None = None, spool_max_bytes: int = 1 << 30,
                 shards: int = 1, connect_timeout: float = 5.0, send_timeout: float = 5.0,
                 backoff_min: float = 0.1, backoff_max: float = 5.0,
                 ssl_context: ssl.SSLContext | None = None, client_name: str = "fasterdata-sink",
                 marker_ttl: int = 7 * 86400, wait_replicas: int = 0, wait_timeout: float = 1.0,
                 entry: str = "bundled") -> None:
        if entry not in ENTRY_FORMATS:
            raise ValueError(f"entry must be one of {', '.join(ENTRY_FORMATS)}")
        if shards < 1 or max_queue < 1 or batch_max < 1 or maxlen < 0 or spool_max_bytes < 1:
            raise ValueError("shards, max_queue, batch_max and spool_max_bytes must be positive, maxlen >= 0")
        urls = one_url_per_host(url)
        self.target = RedisTarget.from_url(urls[0], ssl_context)
        self.prefix = prefix
        self.maxlen = maxlen
        self.max_queue = max_queue
        self.batch_max = batch_max
        self.linger = linger
        self.entry = entry
        self.spool_max_bytes = spool_max_bytes
        self.connect_timeout = connect_timeout
        self.send_timeout = send_timeout
        self.backoff_min = backoff_min
        self.backoff_max = max(backoff_max, backoff_min)
        self.client_name = client_name
        self.marker_ttl = marker_ttl
        self.wait_replicas = wait_replicas
        self.wait_command = hiredis.pack_command(("WAIT", wait_replicas, max(1, int(wait_timeout * 1000))))
        self.instance = uuid.uuid4().hex[:16]
        # Redis Cluster nodes heard of; empty on a plain Redis.
        self.cluster = ClusterNodes(self.target, [RedisTarget.from_url(seed, ssl_context) for seed in urls[1:]],
                                    connect_timeout, send_timeout)
        if shards == 1:
            self.lanes = [Lane(self, stream_name(prefix), marker_tag(prefix), spool_path)]
            self.put = self.lanes[0].put  # type: ignore[method-assign]  # skip one call on the hot path
        else:
            self.lanes = [Lane(self, stream_name(prefix, i), marker_tag(prefix, i),
                               None if spool_path is None else f"{os.fspath(spool_path)}.{i}")
                          for i in range(shards)]
        self.streams = [lane.stream for lane in self.lanes]
        self._shards = shards

    def put(self, fields: dict[str, str], route: str = "") -> None:
        """Queue one event (flat str → str); ``route`` (session id) picks the stream when sharded."""
        self.lanes[hash(route) % self._shards].put(fields)

    async def start(self) -> None:
        """Open the spool(s) (raises OSError/SpoolLocked if unusable) and start the sender task(s)."""
        for lane in self.lanes:
            lane.open_spool()
        for lane in self.lanes:
            lane.start()

    async def close(self, timeout: float = 5.0) -> None:
        """Send what is queued; after ``timeout`` seconds (or at once if Redis is away) spool the rest."""
        await asyncio.gather(*(lane.close(timeout) for lane in self.lanes))

    def readiness(self) -> str | None:
        """None when events have somewhere to go (Redis, or a working spool); else why not."""
        for lane in self.lanes:
            problem = lane.readiness()
            if problem is not None:
                return problem
        return None

    @property
    def ready(self) -> bool:
        return self.readiness() is None

    @property
    def connected(self) -> bool:
        return all(lane.health.up for lane in self.lanes)

    def _sum(self, name: str) -> int:
        return sum(getattr(lane.counts, name) for lane in self.lanes)

    @property
    def queued(self) -> int:
        """Events in memory, not yet confirmed."""
        return sum(lane.queued for lane in self.lanes)

    sent = property(lambda self: self._sum("sent"), doc="Events Redis confirmed (new or already there)")
    spooled = property(lambda self: self._sum("spooled"), doc="Events written to the spool")
    replayed = property(lambda self: self._sum("replayed"), doc="Spooled events Redis confirmed")
    dropped = property(lambda self: self._sum("dropped"), doc="Events lost: spool full or absent")
    deduplicated = property(lambda self: self._sum("deduplicated"),
                            doc="Events resent after a lost reply that Redis already had (skipped)")
    trimmed_unread = property(lambda self: self._sum("trimmed_unread"),
                              doc="Statements the stream cap removed before a consumer group read them")
    send_errors = property(lambda self: self._sum("send_errors"), doc="Failed batch round trips")
    batches = property(lambda self: self._sum("batches"), doc="Batches Redis confirmed")

    def latency(self) -> tuple[list[int], float]:
        """Batch round trips of every lane: counts per LATENCY_BUCKETS bucket (not cumulative), and their sum."""
        return merged_latency([lane.counts for lane in self.lanes])

    @property
    def spool_events(self) -> int:
        return sum(lane.spool.pending for lane in self.lanes if lane.spool is not None)

    @property
    def spool_bytes(self) -> int:
        return sum(lane.spool.unread for lane in self.lanes if lane.spool is not None and not lane.spool.closed)


def sink_for(settings: ProxySettings, spool_path: str | None) -> StreamSink:
    """The sink a proxy process (or its capture helper) runs with these settings."""
    return StreamSink(settings.redis, settings.prefix, maxlen=settings.stream_maxlen, max_queue=settings.queue_max,
                      spool_path=spool_path, spool_max_bytes=settings.spool_max_bytes, shards=settings.stream_shards,
                      wait_replicas=settings.redis_wait_replicas, wait_timeout=settings.redis_wait_timeout,
                      entry=settings.stream_entry)
