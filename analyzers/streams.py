"""Reading several statement streams (one per shard) as one consumer of a group.

On one Redis a single XREADGROUP names every stream and blocks on all of them. On a cluster the
streams live in different slots, so each is read on its own (no single command may span slots):
each stream is polled without blocking, and when all are empty the reader blocks briefly on one of
them, taking turns, so an idle worker costs a few calls a second and a busy shard waits at most
`CLUSTER_BLOCK_MS` behind an idle one.
"""

from __future__ import annotations

from typing import Any

import redis

from .redisconn import clustered

CLUSTER_BLOCK_MS = 100


def undelivered(group: dict[str, Any], more: bool) -> int:
    """Entries of a stream not yet delivered to `group` (an XINFO GROUPS entry); `more`: whether any entry
    follows its last-delivered-id. Nothing following is nothing undelivered, whatever XINFO's lag says:
    Redis 7.0 replays reads from its append-only file without advancing the group's entries-read, so
    after a restart its lag can stay too high for good."""
    if not more:
        return 0
    lag = group.get("lag")
    return int(lag) if lag is not None else 1


def _name(stream: Any) -> str:
    return stream.decode() if isinstance(stream, bytes) else stream


class StreamSet:
    """The streams `names` read by `consumer` in `group`; `read` returns (stream index, entries) pairs."""

    def __init__(self, client: Any, names: list[str], group: str, consumer: str) -> None:
        self.r = client
        self.names = names
        self.index = {name: i for i, name in enumerate(names)}
        self.group = group
        self.consumer = consumer
        self.cluster = clustered(client)
        self._turn = 0

    def create_group(self, start_id: str) -> list[str]:
        """Create the group (and stream) where absent; returns the streams it was created on."""
        created = []
        for name in self.names:
            try:
                self.r.xgroup_create(name, self.group, id=start_id, mkstream=True)
                created.append(name)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        return created

    def _split(self, reply: Any) -> list[tuple[int, Any]]:
        if not reply:
            return []
        pairs = reply.items() if isinstance(reply, dict) else ((s[0], s[1]) for s in reply)
        return [(self.index[_name(stream)], entries) for stream, entries in pairs if entries]

    def read_new(self, count: int, block_ms: int | None) -> tuple[int | None, list[tuple[int, Any]]]:
        """New entries, with the server's clock (ms) just before it delivered them: TIME goes first in one
        pipeline on one connection. A cluster gives None (TIME would come from whichever node)."""
        if self.cluster:
            return None, self.read(count, block_ms)
        pipe = self.r.pipeline(transaction=False)
        pipe.time()
        pipe.xreadgroup(self.group, self.consumer, {n: ">" for n in self.names}, count=count, block=block_ms)
        (sec, usec), reply = pipe.execute()
        return sec * 1000 + usec // 1000, self._split(reply)

    def read(self, count: int, block_ms: int | None, start: str = ">",
             only: int | None = None) -> list[tuple[int, Any]]:
        """New entries (start '>') or this consumer's pending ones (start '0'), per stream.

        only: read that stream alone (no blocking across streams then)."""
        if only is not None:
            return self._split(self.r.xreadgroup(self.group, self.consumer, {self.names[only]: start}, count=count,
                                                 block=block_ms))
        if not self.cluster or len(self.names) == 1:
            return self._split(self.r.xreadgroup(self.group, self.consumer, {n: start for n in self.names},
                                                 count=count, block=block_ms))
        n = len(self.names)
        out: list[tuple[int, Any]] = []
        for k in range(n):
            i = (self._turn + k) % n
            out += self._split(self.r.xreadgroup(self.group, self.consumer, {self.names[i]: start}, count=count))
        self._turn = (self._turn + 1) % n
        if out or not block_ms or start != ">":
            return out
        i = self._turn
        return self._split(self.r.xreadgroup(self.group, self.consumer, {self.names[i]: start}, count=count,
                                             block=min(block_ms, CLUSTER_BLOCK_MS)))
