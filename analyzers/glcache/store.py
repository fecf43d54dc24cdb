"""The Redis tier: a day's base (IPC chunks + metadata) and its patch log, in one hash with one TTL.

Key ``<prefix>:gl:<table>:<date>`` (a hash):

- ``epoch``   random id of the current base; a reader's copy is current while its epoch matches
- ``meta``    JSON: rows, schema, load seconds, loaded_at, chunk field names, ``applied``
- ``c:<epoch>:<i>``  LZ4 IPC stream chunks of the base (each at most 64 MiB)
- ``dn``      patch counter; ``d:<n>`` patch n (upsert rows / delete keys), applied in order on top
              of the base when n > meta.applied

Beside it: ``…:<date>:lock`` (the single-loader lock, renewed while loading) and ``<prefix>:gl:<table>:gen``
(bumped by every invalidation, so a load that raced with one is not stored). Patches are appended only to
days that are cached or being loaded (an atomic script checks), so a load never misses a write: a write
committed before its snapshot is in it, one after has a patch numbered above the ``applied`` it recorded.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis

from config.redisurl import one_url_per_host, redacted

log = logging.getLogger("fasterdata.glcache")
# What a Redis Cluster node answers for keys it does not serve (MovedError is an AskError).
_CLUSTER_REPLIES = (redis.exceptions.AskError, redis.exceptions.ClusterCrossSlotError,
                    redis.exceptions.ClusterDownError)
T = TypeVar("T")

_APPEND = """
if redis.call('HEXISTS', KEYS[1], 'epoch') == 0 and redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
local n = redis.call('HINCRBY', KEYS[1], 'dn', 1)
redis.call('HSET', KEYS[1], 'd:' .. n, ARGV[1])
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return n
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class RedisDown(Exception):
    """Redis could not be reached (or is being skipped after a recent failure)."""


@dataclass
class Snapshot:
    """A day as stored: base chunks, metadata, and the patches above the base (in order)."""

    epoch: str
    meta: dict[str, Any]
    chunks: list[bytes]
    patches: list[bytes]
    dn: int


class Store:
    """Redis access for one table's days, with a circuit breaker so a dead Redis costs one timeout."""

    def __init__(self, url: str, prefix: str, table: str, ttl: float, timeout: float = 2.0,
                 retry: float = 5.0):
        # One server: a cluster's seed list (redis://h1,h2) gives its first node.
        self.client = redis.Redis.from_url(one_url_per_host(url)[0], socket_timeout=timeout,
                                           socket_connect_timeout=timeout, retry_on_timeout=False)
        self.prefix, self.table, self.ttl_ms, self.retry = prefix, table, int(ttl * 1000), retry
        self.where = redacted(one_url_per_host(url)[0])
        self._down_until = 0.0
        self._warned = 0.0
        self._append = self.client.register_script(_APPEND)
        self._release = self.client.register_script(_RELEASE)
        self._renew = self.client.register_script(_RENEW)

    # -- keys ---------------------------------------------------------------------------------------
    def key(self, day: str) -> str:
        return f"{self.prefix}:gl:{self.table}:{day}"

    def lock_key(self, day: str) -> str:
        return f"{self.key(day)}:lock"

    @property
    def gen_key(self) -> str:
        return f"{self.prefix}:gl:{self.table}:gen"

    @property
    def days_key(self) -> str:
        return f"{self.prefix}:gl:{self.table}:days"

    # -- circuit breaker ----------------------------------------------------------------------------
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def call(self, fn: Callable[[], T]) -> T:
        """Run one Redis interaction; on failure open the breaker and raise RedisDown."""
        if not self.available():
            raise RedisDown("redis skipped after a recent failure")
        try:
            return fn()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            self._down_until = time.monotonic() + self.retry
            now = time.monotonic()
            if now - self._warned > 30:
                self._warned = now
                log.warning("glcache: Redis unreachable (%s); reading from PostgreSQL", exc)
            raise RedisDown(str(exc)) from exc
        except _CLUSTER_REPLIES as exc:
            # A cluster node answers for its own slots only; this store speaks to one server. Say so
            # plainly instead of failing on some days and not others.
            self._down_until = time.monotonic() + max(self.retry, 60.0)
            now = time.monotonic()
            if now - self._warned > 30:
                self._warned = now
                log.error("glcache: Redis at %s is a Redis Cluster node (%s %s); the ledger cache needs a "
                          "standalone Redis, so it stays off and days are read from PostgreSQL", self.where,
                          type(exc).__name__, exc)
            raise RedisDown(str(exc)) from exc

    # -- reads --------------------------------------------------------------------------------------
    def head(self, day: str) -> tuple[str | None, int]:
        """(epoch, patch counter) of the stored day: the cheap freshness check for the memory tier."""
        epoch, dn = self.call(lambda: self.client.hmget(self.key(day), "epoch", "dn"))
        return (epoch.decode() if epoch else None), int(dn or 0)

    def read(self, day: str) -> Snapshot | None:
        """The whole stored day in one round trip (HGETALL is atomic: chunks and patches agree)."""
        fields: dict[bytes, bytes] = self.call(lambda: self.client.hgetall(self.key(day)))
        if b"epoch" not in fields or b"meta" not in fields:
            return None
        epoch = fields[b"epoch"].decode()
        meta = json.loads(fields[b"meta"])
        if meta.get("epoch") != epoch:
            return None
        chunks = [fields.get(name.encode()) for name in meta["chunks"]]
        if any(c is None for c in chunks):
            return None
        dn = int(fields.get(b"dn", 0))
        patches = []
        for n in range(int(meta["applied"]) + 1, dn + 1):
            patch = fields.get(f"d:{n}".encode())
            if patch is not None:
                patches.append(patch)
        return Snapshot(epoch, meta, chunks, patches, dn)  # type: ignore[arg-type]

    def patches(self, day: str, after: int, upto: int) -> list[bytes] | None:
        """Patches after..upto (None if any is gone: the day was rebased, reread it)."""
        if upto <= after:
            return []
        names = [f"d:{n}" for n in range(after + 1, upto + 1)]
        values = self.call(lambda: self.client.hmget(self.key(day), names))
        if any(v is None for v in values):
            return None
        return values

    def meta(self, day: str) -> dict[str, Any] | None:
        raw = self.call(lambda: self.client.hget(self.key(day), "meta"))
        return json.loads(raw) if raw else None

    def ttl(self, day: str) -> float:
        return self.call(lambda: self.client.pttl(self.key(day))) / 1000

    def days(self) -> list[str]:
        """Days recorded as cached (expired ones are dropped from the set as they are noticed)."""
        members = self.call(lambda: self.client.smembers(self.days_key))
        days = sorted(m.decode() for m in members)
        if days:
            pipe = self.client.pipeline(transaction=False)
            for day in days:
                pipe.hexists(self.key(day), "epoch")
            alive = self.call(pipe.execute)
            gone = [d for d, ok in zip(days, alive, strict=True) if not ok]
            if gone:
                self.call(lambda: self.client.srem(self.days_key, *gone))
            days = [d for d, ok in zip(days, alive, strict=True) if ok]
        return days

    def generation(self) -> int:
        return int(self.call(lambda: self.client.get(self.gen_key)) or 0)

    # -- writes -------------------------------------------------------------------------------------
    def write_base(self, day: str, chunks: Sequence[bytes], meta: dict[str, Any], gen: int) -> str | None:
        """Store a new base (built at invalidation generation ``gen``); None if an invalidation raced it.

        Patches numbered above meta['applied'] stay; older ones and the previous base's chunks go.
        """
        key = self.key(day)
        epoch = uuid.uuid4().hex[:16]
        names = [f"c:{epoch}:{i}" for i in range(len(chunks))]
        meta = {**meta, "epoch": epoch, "chunks": names}
        applied = int(meta["applied"])

        def txn(pipe: redis.client.Pipeline) -> None:
            if int(pipe.get(self.gen_key) or 0) != gen:
                raise _Raced
            stale = [f for f in pipe.hkeys(key)
                     if f.startswith(b"c:") or (f.startswith(b"d:") and int(f[2:]) <= applied)]
            pipe.multi()
            if stale:
                pipe.hdel(key, *stale)
            fields = {"meta": json.dumps(meta), "epoch": epoch, **dict(zip(names, chunks, strict=True))}
            pipe.hset(key, mapping=fields)
            pipe.pexpire(key, self.ttl_ms)
            pipe.sadd(self.days_key, day)

        try:
            self.call(lambda: self.client.transaction(txn, self.gen_key))
        except _Raced:
            return None
        return epoch

    def append_patch(self, day: str, payload: bytes) -> int:
        """Append a patch to a cached or loading day; its number, or 0 if the day is not cached."""
        return int(self.call(lambda: self._append(keys=[self.key(day), self.lock_key(day)],
                                                   args=[payload, self.ttl_ms])))

    def append_patches(self, payloads: dict[str, bytes]) -> dict[str, int]:
        """append_patch for several days in one round trip."""
        if not payloads:
            return {}

        def run() -> list[int]:
            pipe = self.client.pipeline(transaction=False)
            for day, payload in payloads.items():
                self._append(keys=[self.key(day), self.lock_key(day)], args=[payload, self.ttl_ms],
                             client=pipe)
            return pipe.execute()

        return {day: int(n) for day, n in zip(payloads, self.call(run), strict=True)}

    def invalidate(self, days: Sequence[str]) -> int:
        """Drop days (bumping the generation first so in-flight loads do not store stale data)."""
        def run() -> int:
            pipe = self.client.pipeline(transaction=True)
            pipe.incr(self.gen_key)
            if days:
                pipe.delete(*[self.key(d) for d in days])
                pipe.srem(self.days_key, *days)
            return int(pipe.execute()[1]) if days else 0
        return self.call(run)

    def clear(self) -> int:
        """Remove every key of this table under the prefix (tests, `gl stats --clear`)."""
        def run() -> int:
            names = list(self.client.scan_iter(match=f"{self.prefix}:gl:{self.table}:*", count=1000))
            return self.client.delete(*names) if names else 0
        return self.call(run)

    # -- the single-loader lock -----------------------------------------------------------------------
    def try_lock(self, day: str, token: str, seconds: float) -> bool:
        """Take the day's load lock; a locked day counts as cached for patches (see append_patch)."""
        got = self.call(lambda: self.client.set(self.lock_key(day), token, nx=True, px=int(seconds * 1000)))
        if got:
            self.call(lambda: self.client.sadd(self.days_key, day))
        return bool(got)

    def patch_targets(self) -> list[str]:
        """Days that may be cached or loading (append_patch decides for each)."""
        return sorted(m.decode() for m in self.call(lambda: self.client.smembers(self.days_key)))

    def locked(self, day: str) -> bool:
        return bool(self.call(lambda: self.client.exists(self.lock_key(day))))

    def unlock(self, day: str, token: str) -> None:
        self.call(lambda: self._release(keys=[self.lock_key(day)], args=[token]))

    def renewer(self, day: str, token: str, seconds: float) -> Renewer:
        """Keep the lock alive while a long load and store run (a crashed loader's lock still expires)."""
        return Renewer(self, day, token, seconds)

    def close(self) -> None:
        self.client.close()


class _Raced(Exception):
    """An invalidation happened while a base was being built."""


class Renewer:
    """Extends a held lock every third of its lifetime until stopped."""

    def __init__(self, store: Store, day: str, token: str, seconds: float):
        self._stop = threading.Event()

        def renew() -> None:
            while not self._stop.wait(seconds / 3):
                try:
                    store.call(lambda: store._renew(keys=[store.lock_key(day)],
                                                    args=[token, int(seconds * 1000)]))
                except RedisDown:
                    return

        self._thread = threading.Thread(target=renew, name="glcache-lock", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
