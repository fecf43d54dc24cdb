"""The Redis tier: a day's base (IPC chunks + metadata) and its patch log, in one hash with one TTL.

Key ``<prefix>:gl:{<table>}:<date>`` (a hash):

- ``epoch``   random id of the current base; a reader's copy is current while its epoch matches
- ``meta``    JSON: rows, schema, load seconds, loaded_at, chunk field names, ``applied``
- ``c:<epoch>:<i>``  LZ4 IPC stream chunks of the base (each at most 64 MiB)
- ``dn``      patch counter; ``d:<n>`` patch n (upsert rows / delete keys), applied in order on top
              of the base when n > meta.applied

Beside it: ``…:<date>:lock`` (the single-loader lock, renewed while loading), ``<prefix>:gl:{<table>}:gen``
(bumped by every invalidation, so a load that raced with one is not stored) and ``…:{<table>}:days`` (the
days that may be cached). Patches are appended only to days that are cached or being loaded (an atomic
script checks), so a load never misses a write: a write committed before its snapshot is in it, one after
has a patch numbered above the ``applied`` it recorded.

``{<table>}`` is a Redis Cluster hash tag: every key of one table lives in one slot, so the WATCH/MULTI of
a base write, the scripts (all keys passed in KEYS) and multi-key invalidations work unchanged on a
cluster, where the table's keys sit on one primary. A standalone Redis is the same code with one node.
(Before the tag, names were ``<prefix>:gl:<table>:…``: after an upgrade days are simply loaded again; the
old day keys expire with their TTL.)
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.exceptions import ClusterError, RedisClusterException
from redis.retry import Retry

from fasterdata.config.redisurl import redacted

from ..redisconn import Client, clustered, connect

log = logging.getLogger("fasterdata.glcache")
_UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, OSError)
# The cluster could not serve the request (no reachable start-up node, CLUSTERDOWN, an uncovered slot,
# redirections exhausted, a command redis-py will not route): handled like an unreachable server.
_CLUSTER_FAILED = (ClusterError, RedisClusterException)
# Redirections reaching a single-server client: the server is a cluster node although the probe said
# otherwise (INFO refused by an ACL); MovedError is an AskError.
_CLUSTER_REPLIES = (redis.exceptions.AskError, redis.exceptions.ClusterCrossSlotError)
T = TypeVar("T")


def _read_script(name: str) -> str:
    """A Redis script kept beside this module (package data, so an editor and a Lua linter see it)."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


_SCRIPTS = {name: _read_script(file) for name, file in
            (("append", "append_patch.lua"), ("release", "release_lock.lua"), ("renew", "renew_lock.lua"))}


def _glob_escape(text: str) -> str:
    """``text`` matched literally by SCAN MATCH (the prefix is free text; braces are literal already)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


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
    """Redis access for one table's days, with a circuit breaker so a dead Redis costs one timeout.

    The client is made on first use (inside the breaker: an unreachable Redis at start-up is a PostgreSQL
    read, not a failed start): ``redisconn.connect`` asks the server, so a cluster node gets RedisCluster
    (seed list ``redis://h1:p1,h2:p2`` as start-up nodes) and anything else one plain client.
    """

    def __init__(self, url: str, prefix: str, table: str, ttl: float, timeout: float = 2.0,
                 retry: float = 5.0):
        self.url, self.timeout = url, timeout
        self.prefix, self.table, self.ttl_ms, self.retry = prefix, table, int(ttl * 1000), retry
        self.where = redacted(url)
        self._down_until = 0.0
        self._warned = 0.0
        self.failure = ""  # the last failure, for messages (`gl warm` says why nothing was stored)
        self._client: Client | None = None
        self._scripts: dict[str, Script] = {}
        self._connecting = threading.Lock()

    @property
    def client(self) -> Client:
        """The Redis or RedisCluster client, made on first use (call it inside ``call``)."""
        if self._client is None:
            with self._connecting:
                if self._client is None:
                    client = connect(self.url, probe_timeout=self.timeout, socket_timeout=self.timeout,
                                     socket_connect_timeout=self.timeout)
                    if clustered(client):
                        # No client-side retries: each would cost another timeout and a topology refresh;
                        # the breaker below is the retry (MOVED/ASK are still followed, they are not errors).
                        client.set_retry(Retry(NoBackoff(), 0))
                        log.info("glcache: Redis at %s is a cluster; the table's keys share the hash tag {%s}",
                                 self.where, self.table)
                    self._scripts = {name: client.register_script(text) for name, text in _SCRIPTS.items()}
                    self._client = client
        return self._client

    def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        client = self.client  # first: it registers the scripts
        return self._scripts[name](keys=keys, args=args, client=client)

    # -- keys ---------------------------------------------------------------------------------------
    # The table in braces is the hash tag: a Redis Cluster hashes only it, so all of these share a slot.
    @property
    def base(self) -> str:
        return f"{self.prefix}:gl:{{{self.table}}}"

    def key(self, day: str) -> str:
        return f"{self.base}:{day}"

    def lock_key(self, day: str) -> str:
        return f"{self.key(day)}:lock"

    @property
    def gen_key(self) -> str:
        return f"{self.base}:gen"

    @property
    def days_key(self) -> str:
        return f"{self.base}:days"

    # -- circuit breaker ----------------------------------------------------------------------------
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def call(self, fn: Callable[[], T]) -> T:
        """Run one Redis interaction; on failure open the breaker and raise RedisDown."""
        if not self.available():
            raise RedisDown("redis skipped after a recent failure")
        try:
            return fn()
        except _UNREACHABLE as exc:
            self._note(exc)
            self._trip(self.retry, logging.WARNING, "glcache: Redis unreachable at %s (%s: %s); reading from "
                       "PostgreSQL", self.where, type(exc).__name__, exc)
            raise RedisDown(str(exc)) from exc
        except _CLUSTER_FAILED as exc:
            self._note(exc)
            self._trip(self.retry, logging.WARNING, "glcache: Redis Cluster at %s could not serve the cache "
                       "(%s: %s); reading from PostgreSQL", self.where, type(exc).__name__, exc)
            raise RedisDown(str(exc)) from exc
        except _CLUSTER_REPLIES as exc:
            # Only a single-server client sees these: the server is a cluster node that would not say so.
            self._note(exc)
            self._trip(max(self.retry, 60.0), logging.ERROR, "glcache: Redis at %s answers like a Redis "
                       "Cluster node (%s %s) but could not be asked whether it is one (INFO refused by an "
                       "ACL?); the cache stays off and days are read from PostgreSQL", self.where,
                       type(exc).__name__, exc)
            raise RedisDown(str(exc)) from exc

    def _note(self, exc: Exception) -> None:
        self.failure = f"{type(exc).__name__}: {exc}"

    def _trip(self, seconds: float, level: int, message: str, *args: object) -> None:
        """Open the breaker for ``seconds`` and log (at most every 30 s)."""
        now = time.monotonic()
        self._down_until = now + seconds
        if now - self._warned > 30:
            self._warned = now
            log.log(level, message, *args)

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
            def exists() -> list[Any]:
                pipe = self.client.pipeline(transaction=False)
                for day in days:
                    pipe.hexists(self.key(day), "epoch")
                return pipe.execute()
            alive = self.call(exists)
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
        WATCH/MULTI on a cluster (redis-py's transaction pipeline) needs every key in one slot: the gen
        key and the day's key share the table's hash tag, and the WATCHed reads run on that slot's node.
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
        return self.append_patches({day: payload})[day]

    def append_patches(self, payloads: dict[str, bytes]) -> dict[str, int]:
        """append_patch for several days in one script call (atomic; one slot, so also on a cluster).

        One call rather than a pipeline of calls: redis-py's cluster pipeline refuses EVALSHA (and would
        not reload a script a restarted node lost); a single call reloads it on NOSCRIPT.
        """
        if not payloads:
            return {}
        keys = [k for day in payloads for k in (self.key(day), self.lock_key(day))]
        numbers = self.call(lambda: self._script("append", keys, [self.ttl_ms, *payloads.values()]))
        return {day: int(n) for day, n in zip(payloads, numbers, strict=True)}

    def invalidate(self, days: Sequence[str]) -> int:
        """Drop days (bumping the generation first so in-flight loads do not store stale data)."""
        def run() -> int:
            pipe = self.client.pipeline(transaction=True)
            pipe.incr(self.gen_key)
            if days:
                pipe.delete(*[self.key(d) for d in days])
                pipe.srem(self.days_key, *days)
            done = pipe.execute()  # also with no days: the bump alone stops in-flight loads from storing
            return int(done[1]) if days else 0
        return self.call(run)

    def clear(self) -> int:
        """Remove every key of this table under the prefix (tests and tools).

        SCAN on RedisCluster visits every primary; the keys are in one slot anyway, one DEL takes them.
        """
        def run() -> int:
            match = f"{_glob_escape(self.base)}:*"
            names = list(self.client.scan_iter(match=match, count=1000))
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
        self.call(lambda: self._script("release", [self.lock_key(day)], [token]))

    def renewer(self, day: str, token: str, seconds: float) -> Renewer:
        """Keep the lock alive while a long load and store run (a crashed loader's lock still expires)."""
        return Renewer(self, day, token, seconds)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


class _Raced(Exception):
    """An invalidation happened while a base was being built."""


class Renewer:
    """Extends a held lock every third of its lifetime until stopped."""

    def __init__(self, store: Store, day: str, token: str, seconds: float):
        self._stop = threading.Event()

        def renew() -> None:
            while not self._stop.wait(seconds / 3):
                try:
                    store.call(lambda: store._script("renew", [store.lock_key(day)],
                                                     [token, int(seconds * 1000)]))
                except RedisDown:
                    return

        self._thread = threading.Thread(target=renew, name="glcache-lock", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
