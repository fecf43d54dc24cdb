"""The worker's look at its consumer group, once a second and now and then: lag per statement stream,
statements trimmed before the group read them, the heartbeat `fasterdata top` shows, and the
consumers that restarted workers left behind (each restart is a new consumer name)."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Sequence
from typing import Any, Protocol

from .keys import Keys
from .metrics import WorkerCounters
from .streams import undelivered

log = logging.getLogger("fasterdata.analyze")


class StatementStream(Protocol):
    """One shard as the upkeep sees it."""

    i: int
    stream: str
    keys: Keys


def _id_ms(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


class GroupUpkeep:
    """Reads the group's state into the worker's counters and writes this worker's heartbeat."""

    def __init__(self, client: Any, shards: Sequence[StatementStream], group: str, consumer: str, keys: Keys,
                 counters: WorkerCounters) -> None:
        self.redis = client
        self.shards = shards
        self.group = group
        self.consumer = consumer
        self.keys = keys  # unsharded: where heartbeats go
        self.counters = counters
        self._rate = (time.monotonic(), 0)  # (when, statements) at the last heartbeat
        self._trim_logged = -60.0
        self._trim_reported = 0  # the group's trimmed-unread total when last logged

    def measure_lag(self) -> None:
        """Pending and undelivered entries (summed over shards, and per shard) and the age of the oldest
        event not yet processed anywhere."""
        per: dict[int, tuple[int, int, float]] = {}
        for shard in self.shards:
            got = self._shard_lag(shard.stream)
            if got is not None:
                per[shard.i] = got
        if not per:
            return
        trimmed = sum(int(self.redis.hget(shard.keys.trimmed, self.group) or 0) for shard in self.shards)
        now = time.monotonic()
        if trimmed > self._trim_reported and now - self._trim_logged >= 60:  # at most once a minute
            log.warning("%d statements were trimmed from the stream (stream_maxlen) before group %s read them "
                        "(%d in all; HGETALL <stream>:trimmed): start more workers or raise stream_maxlen",
                        trimmed - self._trim_reported, self.group, trimmed)
            self._trim_logged, self._trim_reported = now, trimmed
        c = self.counters
        with c.lock:
            c.trimmed_unread = trimmed
            c.pending = sum(p for p, _, _ in per.values())
            c.lag_entries = sum(lag for _, lag, _ in per.values())
            c.lag_seconds = max(age for _, _, age in per.values())
            c.shards = per if len(self.shards) > 1 else {}

    def _shard_lag(self, stream: str) -> tuple[int, int, float] | None:
        """(pending, undelivered, age of the oldest unprocessed event) of one stream."""
        groups = {g["name"]: g for g in self.redis.xinfo_groups(stream)}
        g = groups.get(self.group)
        if g is None:
            return None
        pending = int(g.get("pending") or 0)
        oldest_ms = None
        if pending:
            summary = self.redis.xpending(stream, self.group)
            if summary and summary.get("min"):
                oldest_ms = _id_ms(summary["min"])
        last = g.get("last-delivered-id") or "0-0"
        nxt = self.redis.xrange(stream, min="(" + last, count=1)
        if nxt:
            ms = _id_ms(nxt[0][0])
            oldest_ms = ms if oldest_ms is None else min(oldest_ms, ms)
        age = max(0.0, time.time() - oldest_ms / 1000) if oldest_ms else 0.0
        return pending, undelivered(g, bool(nxt)), age

    def forget_idle_consumers(self, max_idle: float = 3600) -> None:
        """Forget consumers (restarted workers get new names) idle for an hour with nothing pending, and
        heartbeats a day old."""
        for shard in self.shards:
            for c in self.redis.xinfo_consumers(shard.stream, self.group):
                if c["name"] != self.consumer and not c["pending"] and c["idle"] > max_idle * 1000:
                    self.redis.xgroup_delconsumer(shard.stream, self.group, c["name"])
                    log.info("removed idle consumer %s from %s", c["name"], shard.stream)
        cutoff = time.time() - 86400
        for name, raw in self.redis.hgetall(self.keys.workers).items():
            try:
                stale = json.loads(raw).get("ts", 0) < cutoff
            except ValueError:
                stale = True
            if stale:
                self.redis.hdel(self.keys.workers, name)

    def heartbeat(self) -> None:
        now = time.monotonic()
        t0, n0 = self._rate
        c = self.counters
        rate = (c.statements - n0) / (now - t0) if now > t0 else 0.0
        self._rate = (now, c.statements)
        beat = {"ts": time.time(), "entries": c.entries, "statements": c.statements, "rate": round(rate, 1),
                "pending": c.pending,
                "lag_entries": c.lag_entries, "lag_seconds": round(c.lag_seconds, 3), "unparsed": c.unparsed,
                "pid": os.getpid(), "host": socket.gethostname()}
        self.redis.hset(self.keys.workers, self.consumer, json.dumps(beat))
