"""A standalone consumer of ``<prefix>:statements`` (its own group, ``glcache``) that keeps days fresh.

It hands every event to GLCache.apply_event and acknowledges it afterwards, so an event whose patch could
not be written (Redis away) is read again. The main analyzer worker can call apply_event itself instead.
With ``stream_shards`` ≥ 2 it reads every shard ``<prefix>:statements:{i}`` (on a Redis Cluster through
RedisCluster, one stream per command), acknowledging each entry on its own stream.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

import redis

from fasterdata.proxy.streamkeys import stream_names, streams_label

from ..event import BadBundle, events_of
from ..redisconn import connect
from ..streams import StreamSet
from .cache import GLCache
from .store import RedisDown

log = logging.getLogger("fasterdata.glcache")


class Follower:
    """Reads the statement stream in consumer group ``group`` and applies each event to the cache."""

    def __init__(self, cache: GLCache, group: str = "", consumer: str = "", block_ms: int = 200,
                 count: int = 500, start: str = "$"):
        s = cache.settings
        self.cache = cache
        self.streams_names = stream_names(s.prefix, s.stream_shards)
        self.stream = streams_label(s.prefix, s.stream_shards)  # for display (gl follow prints it)
        self.group = group or s.group
        self.consumer = consumer or s.consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.block_ms, self.count, self.start = block_ms, count, start
        self.client = connect(s.redis, socket_timeout=max(5.0, block_ms / 1000 + 2))
        self.streams = StreamSet(self.client, self.streams_names, self.group, self.consumer)
        self._pending_done = False
        self._resume: dict[str, int] = {}  # entry id → its events applied before a Redis outage
        self.processed = 0

    def ensure_group(self) -> None:
        self.streams.create_group(self.start)

    def step(self) -> int:
        """Read and apply one batch (first this consumer's unacknowledged events); events handled."""
        if not self._pending_done:
            got = self.streams.read(self.count, None, start="0")
            if not got:
                self._pending_done = True
                return 0
        else:
            got = self.streams.read(self.count, self.block_ms)
        return sum(self._apply(self.streams_names[i], entries) for i, entries in got)

    def _apply(self, stream: str, entries: list) -> int:
        """Apply one stream's entries and acknowledge those handled; stops at a Redis outage."""
        done = []
        for entry_id, fields in entries:
            if fields is None:  # trimmed away while pending
                done.append(entry_id)
                continue
            try:
                events = events_of({k.decode(): v.decode("utf-8", "replace") for k, v in fields.items()})
            except BadBundle as exc:
                log.error("glcache: entry %s is damaged (%s); invalidating the table's days", entry_id, exc)
                events = []
                self.cache.invalidate()
            if not self._apply_events(entry_id, events):
                break  # unacknowledged: read again once Redis answers
            done.append(entry_id)
        if done:
            self.client.xack(stream, self.group, *done)
            self.processed += len(done)
        return len(done)

    def _apply_events(self, entry_id: str, events: list[dict[str, str]]) -> bool:
        """Apply an entry's events; False at a Redis outage. The events applied before it are remembered,
        so the entry, read again, resumes after them."""
        start = self._resume.pop(entry_id, 0)
        for i in range(start, len(events)):
            try:
                self.cache.apply_event(events[i])
            except RedisDown:
                self._resume[entry_id] = i
                return False
            except Exception:  # a bad event must not stop the follower
                log.exception("glcache: an event of entry %s could not be applied; invalidating the table's days",
                              entry_id)
                try:
                    self.cache.invalidate()
                except RedisDown:
                    self._resume[entry_id] = i + 1
                    return False
        return True

    def run(self, stop: threading.Event) -> None:
        """Follow until ``stop`` is set; Redis outages are waited out."""
        while not stop.is_set():
            try:
                self.ensure_group()
                while not stop.is_set():
                    self.step()
            except (redis.ConnectionError, redis.TimeoutError, RedisDown) as exc:
                log.warning("glcache follow: Redis unavailable (%s); retrying", exc)
                stop.wait(1.0)
            except redis.ResponseError as exc:  # e.g. the group was deleted: create it again
                log.warning("glcache follow: %s; recreating the group", exc)
                self._pending_done = False
                time.sleep(0.2)

    def close(self) -> None:
        self.client.close()


def start_thread(follower: Follower) -> tuple[threading.Thread, threading.Event]:
    """Run a follower on a daemon thread; set the returned event to stop it."""
    stop = threading.Event()
    follower.ensure_group()
    thread = threading.Thread(target=follower.run, args=(stop,), name="glcache-follow", daemon=True)
    thread.start()
    return thread, stop
