"""A standalone consumer of ``<prefix>:statements`` (its own group, ``glcache``) that keeps days fresh.

It hands every event to GLCache.apply_event and acknowledges it afterwards, so an event whose patch could
not be written (Redis away) is read again. The main analyzer worker can call apply_event itself instead.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

import redis

from .cache import GLCache
from .store import RedisDown

log = logging.getLogger("fasterdata.glcache")


class Follower:
    """Reads the statement stream in consumer group ``group`` and applies each event to the cache."""

    def __init__(self, cache: GLCache, group: str = "", consumer: str = "", block_ms: int = 200,
                 count: int = 500, start: str = "$"):
        s = cache.settings
        self.cache = cache
        self.stream = f"{s.prefix}:statements"
        self.group = group or s.group
        self.consumer = consumer or s.consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.block_ms, self.count, self.start = block_ms, count, start
        self.client = redis.Redis.from_url(s.redis, socket_timeout=max(5.0, block_ms / 1000 + 2))
        self._pending_done = False
        self.processed = 0

    def ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.stream, self.group, id=self.start, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def step(self) -> int:
        """Read and apply one batch (first this consumer's unacknowledged events); events handled."""
        cursor = "0" if not self._pending_done else ">"
        reply = self.client.xreadgroup(self.group, self.consumer, {self.stream: cursor}, count=self.count,
                                       block=None if cursor == "0" else self.block_ms)
        entries = reply[0][1] if reply else []
        if cursor == "0" and not entries:
            self._pending_done = True
            return 0
        done = []
        for entry_id, fields in entries:
            if fields is None:  # trimmed away while pending
                done.append(entry_id)
                continue
            event = {k.decode(): v.decode("utf-8", "replace") for k, v in fields.items()}
            try:
                self.cache.apply_event(event)
            except RedisDown:
                break  # unacknowledged: read again once Redis answers
            except Exception:  # a bad event must not stop the follower
                log.exception("glcache: event %s could not be applied; invalidating the table's days",
                              entry_id)
                try:
                    self.cache.invalidate()
                except RedisDown:
                    break
            done.append(entry_id)
        if done:
            self.client.xack(self.stream, self.group, *done)
            self.processed += len(done)
        return len(done)

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
