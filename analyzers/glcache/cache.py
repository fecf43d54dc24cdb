"""GLCache: one day of the ledger as Arrow, from process memory, else Redis, else PostgreSQL.

Concurrent misses for a day share one load: threads wait on the same future, processes on a Redis lock.
Redis unreachable never fails a read: the day comes straight from PostgreSQL (and is not cached, since
nothing could tell this process about later writes).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import psycopg
import pyarrow as pa
from psycopg import sql

from fasterdata.config.gl_settings import GLSettings

from . import ipc, metrics
from .catalog import TableInfo, day_predicate, describe
from .fresh import Freshener
from .journal import journal_totals, trial_balance
from .load import DictPolicy, Progress, connect, estimate_rows, load_day, read_where
from .memory import Entry, MemoryTier
from .patch import apply as apply_patch
from .store import RedisDown, Snapshot, Store
from .tail import Tail, read_tail

if TYPE_CHECKING:
    import polars as pl

log = logging.getLogger("fasterdata.glcache")


def day_str(day: str | datetime.date) -> str:
    """Normalise a day to YYYY-MM-DD (raises ValueError for anything else)."""
    if isinstance(day, datetime.datetime):
        day = day.date()
    if isinstance(day, datetime.date):
        return day.isoformat()
    return datetime.date.fromisoformat(str(day).strip()).isoformat()


class GLCache:
    """The hot GL cache for one ledger table. Thread-safe; one instance per process is the intent."""

    def __init__(self, settings: GLSettings | None = None, **overrides: Any):
        if settings is None:
            settings = GLSettings(**overrides)
        elif overrides:
            settings = settings.model_copy(update=overrides)
        self.settings = s = settings
        self.store = Store(s.redis, s.prefix, s.table, s.ttl, s.redis_timeout, s.redis_retry)
        self.memory = MemoryTier(s.memory_bytes)
        mode = tuple(s.dictionary) if isinstance(s.dictionary, list) else s.dictionary
        self.policy = DictPolicy(mode, s.dictionary_max_ratio)
        self.stats: Counter[str] = Counter()
        self._info: TableInfo | None = None
        self._conn: psycopg.Connection | None = None
        self._conn_lock = threading.Lock()
        self._lock = threading.Lock()
        self._inflight: dict[str, Future[Entry]] = {}
        self._writers: list[threading.Thread] = []
        self._missed = False
        self._labels = {"table": s.table}
        self.fresh = Freshener(self, trust_values=s.patch_mode == "values", compact_after=s.compact_after,
                               stats=self.stats)

    # -- PostgreSQL ---------------------------------------------------------------------------------
    def info(self) -> TableInfo:
        """The table's columns (read once from the catalog)."""
        if self._info is None:
            with self.connection() as conn:
                self._info = describe(conn, self.settings.table, self.settings.date_column,
                                      self.settings.key_column)
        return self._info

    def forget_info(self) -> None:
        """The table changed shape (ALTER, DROP): read the catalog again before the next use."""
        self._info = None

    def read_keys(self, keys: Sequence[Any]) -> pa.Table:
        """Current rows for the keys, straight from PostgreSQL (after the event's commit)."""
        info = self.info()
        where = sql.SQL("{} = ANY({})").format(sql.Identifier(info.key_column), sql.Literal(list(keys)))
        with self.connection() as conn:
            return read_where(conn, info, where, DictPolicy("none"))

    def read_tail(self, day: str, above: Any) -> Tail:
        """The day's rows above a key, with its row count and key sum, in one snapshot (see tail)."""
        info = self.info()
        with self.connection() as conn:
            return read_tail(conn, info, day, above)

    def connection(self) -> _Borrow:
        """The long-lived connection for small queries (catalog, re-reads), one user at a time."""
        return _Borrow(self)

    # -- reads --------------------------------------------------------------------------------------
    def get_day(self, day: str | datetime.date, *, polars: bool = False) -> pa.Table | pl.DataFrame:
        """The day's rows (memory → Redis → PostgreSQL); a Polars DataFrame if asked."""
        table = self._get(day_str(day)).table
        if polars:
            import polars as pl

            return pl.from_arrow(table)
        return table

    def held(self, day: str) -> pa.Table | None:
        """The day as cached now (memory, else Redis; patches applied); None if only a load could say."""
        d = day_str(day)
        entry = self.memory.get(d)
        if entry is not None:
            entry = self._refresh(d, entry)
        if entry is None:
            entry = self._from_redis(d)
        return entry.table if entry is not None else None

    def _count(self, tier: str, hit: bool) -> None:
        self.stats[f"{'hits' if hit else 'misses'}_{tier}"] += 1
        (metrics.HITS if hit else metrics.MISSES).labels(tier=tier, **self._labels).inc()

    def _settle(self) -> None:
        """After a write event was missed while Redis was away, drop every cached day once it is back."""
        if self._missed and self.store.available():
            try:
                self.invalidate()
                self._missed = False
            except RedisDown:
                pass

    def _get(self, day: str) -> Entry:
        self._settle()
        if not self.store.available():
            return self._direct(day)
        with self._lock:
            loading = self._inflight.get(day)
        try:
            if loading is not None and loading.done() and loading.exception() is None:
                entry = loading.result()  # loaded here, still being stored in Redis
                if self._unchanged_since(day, entry):
                    self._count("memory", True)
                    return entry
                return self._direct(day)  # written to since it was read: PostgreSQL has the truth
            entry = self.memory.get(day)
            if entry is not None:
                fresh = self._refresh(day, entry)
                if fresh is not None:
                    self._count("memory", True)
                    return fresh
            self._count("memory", False)
            entry = self._from_redis(day)
            if entry is not None:
                self._count("redis", True)
                return entry
            self._count("redis", False)
            return self._shared_load(day, force=False)
        except RedisDown:
            return self._direct(day)

    def _unchanged_since(self, day: str, entry: Entry) -> bool:
        """No invalidation and no patch since ``entry`` was loaded (it is not in Redis yet to be patched)."""
        return (entry.gen is not None and self.store.generation() == entry.gen
                and self.store.head(day)[1] <= entry.applied)

    def _refresh(self, day: str, entry: Entry) -> Entry | None:
        """The memory entry brought up to date with Redis (patches applied), or None if it is stale."""
        epoch, dn = self.store.head(day)
        if epoch is None or epoch != entry.epoch:
            self.memory.drop(day)
            return None
        if dn <= entry.applied:
            return entry
        patches = self.store.patches(day, entry.applied, dn)
        if patches is None:
            return None
        table = self._safely_patched(day, entry.table, patches)
        if table is None:
            return None
        updated = Entry(table, entry.epoch, dn, entry.expires)
        self.memory.put(day, updated)
        self._gauge()
        return updated

    def _patched(self, table: pa.Table, patches: list[bytes]) -> pa.Table:
        key = self.settings.key_column
        for payload in patches:
            rows, delete = ipc.decode_patch(payload)
            table = apply_patch(table, key, rows, delete)
        return table

    def _safely_patched(self, day: str, table: pa.Table, patches: list[bytes]) -> pa.Table | None:
        """Patches applied, or None (and the day invalidated) if one does not fit the cached schema."""
        try:
            return self._patched(table, patches)
        except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError, KeyError) as exc:
            log.warning("glcache: a patch for %s does not apply (%s); reloading the day", day, exc)
            self.memory.drop(day)
            self.store.invalidate([day])
            return None

    def _from_redis(self, day: str) -> Entry | None:
        snap = self.store.read(day)
        if snap is None:
            return None
        return self._entry_from(day, snap)

    def _entry_from(self, day: str, snap: Snapshot) -> Entry | None:
        table = self._safely_patched(day, ipc.decode(snap.chunks), snap.patches)
        if table is None:
            return None
        entry = Entry(table, snap.epoch, snap.dn, time.time() + self.settings.ttl)
        self.memory.put(day, entry)
        self._gauge()
        return entry

    def _direct(self, day: str) -> Entry:
        """Redis is away: read PostgreSQL, cache nothing."""
        self._count("postgres", True)
        table, _ = self._load_pg(day)
        return Entry(table, None, 0, time.time())

    def _load_pg(self, day: str, progress: Progress | None = None) -> tuple[pa.Table, float]:
        table, seconds = load_day(self.settings.dsn, self.info(), day, self.policy, progress,
                                  self.settings.copy_connections)
        self.stats["loads"] += 1
        metrics.LOAD_SECONDS.labels(**self._labels).observe(seconds)
        metrics.LOADED_ROWS.labels(**self._labels).inc(table.num_rows)
        return table, seconds

    def _gauge(self) -> None:
        metrics.MEMORY_BYTES.labels(**self._labels).set(self.memory.nbytes)

    # -- loads, coalesced ----------------------------------------------------------------------------
    def _shared_load(self, day: str, force: bool, progress: Progress | None = None,
                     wait_store: bool = False) -> Entry:
        """One load per day at a time in this process; the others wait for its result.

        The loaded table is returned as soon as PostgreSQL has delivered it; encoding it and storing it in
        Redis continues on a background thread (``wait_store`` waits for that too). Until the store is
        done, readers in this process get the same table from the in-flight future.
        """
        with self._lock:
            future = self._inflight.get(day)
            owner = future is None
            if owner:
                future = self._inflight[day] = Future()
        assert future is not None
        if not owner:
            self.stats["coalesced"] += 1
            return future.result()
        finish: Callable[[], Entry] | None = None
        try:
            entry, finish = self._locked_load(day, force, progress)
            future.set_result(entry)
        except BaseException as exc:
            future.set_exception(exc)
            with self._lock:
                self._inflight.pop(day, None)
            raise
        if finish is None:
            with self._lock:
                self._inflight.pop(day, None)
            return entry

        def complete() -> Entry:
            try:
                return finish()
            finally:
                with self._lock:
                    self._inflight.pop(day, None)

        if wait_store:
            return complete()
        thread = threading.Thread(target=complete, name=f"glcache-store-{day}", daemon=True)
        self._writers = [t for t in self._writers if t.is_alive()]
        self._writers.append(thread)
        thread.start()
        return entry

    def flush(self, timeout: float | None = None) -> None:
        """Wait for background stores to Redis to finish (before exit, or in benchmarks)."""
        while self._writers:
            self._writers.pop().join(timeout)

    def _locked_load(self, day: str, force: bool,
                     progress: Progress | None) -> tuple[Entry, Callable[[], Entry] | None]:
        """One load per day across processes: the Redis lock holder loads, the others wait for its base.

        Returns the entry and, for the lock holder, the step that stores it and releases the lock.
        """
        s = self.settings
        token = uuid.uuid4().hex
        deadline = time.monotonic() + s.load_wait
        start_epoch = self.store.head(day)[0] if force else None
        while True:
            if self.store.try_lock(day, token, s.lock_timeout):
                return self._holding_lock(day, token, force, progress)
            self.stats["waited"] += 1
            while time.monotonic() < deadline:
                time.sleep(0.02)
                epoch, _ = self.store.head(day)
                if epoch is not None and epoch != start_epoch:
                    break
                if not self.store.locked(day):
                    break
            entry = self._from_redis(day)
            if entry is not None and entry.epoch != start_epoch:
                self._count("redis", True)
                return entry, None
            if time.monotonic() >= deadline:
                log.warning("glcache: waited %.0fs for another process to load %s; reading it here",
                            s.load_wait, day)
                return self._direct(day), None

    def _holding_lock(self, day: str, token: str, force: bool,
                      progress: Progress | None) -> tuple[Entry, Callable[[], Entry] | None]:
        renewer = self.store.renewer(day, token, self.settings.lock_timeout)

        def release() -> None:
            renewer.stop()
            with contextlib.suppress(RedisDown):
                self.store.unlock(day, token)

        try:
            if not force:  # another process may have stored it between our miss and the lock
                entry = self._from_redis(day)
                if entry is not None:
                    self._count("redis", True)
                    release()
                    return entry, None
            gen = self.store.generation()
            _, applied = self.store.head(day)
            self._count("postgres", True)
            table, seconds = self._load_pg(day, progress)
        except BaseException:
            release()
            raise

        def finish() -> Entry:
            try:
                return self._store_base(day, table, seconds, gen, applied, "postgres")
            except RedisDown:
                return Entry(table, None, 0, time.time())
            except Exception:
                log.exception("glcache: storing %s in Redis failed", day)
                return Entry(table, None, 0, time.time())
            finally:
                release()

        return Entry(table, None, applied, time.time(), gen=gen), finish

    def _store_base(self, day: str, table: pa.Table, seconds: float, gen: int, applied: int,
                    source: str) -> Entry:
        chunks = ipc.encode(table, self.settings.chunk_bytes)
        size = sum(len(c) for c in chunks)
        meta = {
            "table": self.settings.table, "date": day, "rows": table.num_rows,
            "schema": ipc.schema_json(table.schema), "load_seconds": round(seconds, 6),
            "loaded_at": time.time(), "applied": applied, "bytes": size,
            "arrow_bytes": table.get_total_buffer_size(), "source": source,
        }
        epoch = self.store.write_base(day, chunks, meta, gen)
        if epoch is None:
            self.stats["raced"] += 1
            return Entry(table, None, applied, time.time())
        metrics.REDIS_BYTES.labels(**self._labels).set(size)
        entry = Entry(table, epoch, applied, time.time() + self.settings.ttl)
        refreshed = self._refresh(day, entry)
        entry = refreshed or entry
        self.memory.put(day, entry)
        self._gauge()
        return entry

    # -- commands -----------------------------------------------------------------------------------
    def warm(self, day: str | datetime.date, progress: Progress | None = None) -> dict[str, Any]:
        """Load the day from PostgreSQL now (replacing what is cached) and report what was stored."""
        d = day_str(day)
        started = time.perf_counter()
        raced = self.stats["raced"]
        try:
            entry = self._shared_load(d, force=True, progress=progress, wait_store=True)
        except RedisDown:
            entry = self._direct(d)
        out = {"date": d, "rows": entry.table.num_rows, "seconds": round(time.perf_counter() - started, 3),
               "cached": entry.epoch is not None, "arrow_bytes": entry.nbytes}
        if entry.epoch is None:
            out["not_cached"] = self._why_not_stored(self.stats["raced"] > raced)
        return out

    def _why_not_stored(self, raced: bool) -> str:
        """One line for a warm that stored nothing."""
        if not self.store.available():
            return f"Redis at {self.store.where} is unreachable ({self.store.failure or 'no answer'})"
        if raced:
            return "a write on the table invalidated the day while it loaded; warm it again"
        return "storing it in Redis failed (the log says why)"

    def invalidate(self, days: str | datetime.date | list[str] | None = None) -> list[str]:
        """Forget days (all cached days of the table if None); they reload on next read."""
        if days is None:
            targets = sorted(set(self.store.days()) | set(self.memory.days()))
        elif isinstance(days, list):
            targets = [day_str(d) for d in days]
        else:
            targets = [day_str(days)]
        for d in targets:
            self.memory.drop(d)
        self.store.invalidate(targets)
        self._gauge()
        return targets

    def compact(self, day: str) -> bool:
        """Fold the day's patch log into a new base (under the day's lock); False if busy or gone."""
        token = uuid.uuid4().hex
        if not self.store.try_lock(day, token, self.settings.lock_timeout):
            return False
        try:
            gen = self.store.generation()
            snap = self.store.read(day)
            if snap is None:
                return False
            table = self._patched(ipc.decode(snap.chunks), snap.patches)
            self._store_base(day, table, float(snap.meta.get("load_seconds", 0)), gen, snap.dn, "compaction")
            self.stats["compactions"] += 1
            return True
        finally:
            self.store.unlock(day, token)

    def apply_event(self, event: dict[str, str]) -> str:
        """Keep cached days fresh from one statement event: 'patched', 'invalidated' or 'ignored'.

        Raises RedisDown when a write on the ledger could not be recorded (do not acknowledge the event);
        the table's cached days are then invalidated as soon as Redis answers again.
        """
        self._settle()
        try:
            outcome = self.fresh.apply(event)
        except RedisDown:
            self._missed = True
            raise
        self.stats[f"events_{outcome}"] += 1
        metrics.EVENTS.labels(outcome=outcome, **self._labels).inc()
        return outcome

    def journal(self, day: str | datetime.date) -> pa.Table:
        """Totals per (debit, credit) account pair over the cached day (exact decimals)."""
        s = self.settings
        return journal_totals(self._get(day_str(day)).table, s.debit_column, s.credit_column, s.amount_column)

    def trial_balance(self, day: str | datetime.date) -> pa.Table:
        """Debits, credits and balance per account over the cached day."""
        s = self.settings
        return trial_balance(self._get(day_str(day)).table, s.debit_column, s.credit_column, s.amount_column)

    def estimate_rows(self, day: str | datetime.date) -> int:
        """Planner's estimate of the day's rows (progress bar total)."""
        info = self.info()
        with self.connection() as conn:
            return estimate_rows(conn, info, day_predicate(info, day_str(day)))

    def describe_cache(self) -> dict[str, Any]:
        """What is cached where (for `gl stats`)."""
        out: dict[str, Any] = {"table": self.settings.table, "prefix": self.settings.prefix,
                               "memory": {"bytes": self.memory.nbytes, "days": self.memory.days()},
                               "counters": dict(self.stats)}
        try:
            days = {}
            for d in self.store.days():
                meta = self.store.meta(d) or {}
                keys = ("rows", "bytes", "arrow_bytes", "load_seconds", "loaded_at", "source")
                days[d] = {k: meta.get(k) for k in keys}
                days[d]["ttl"] = round(self.store.ttl(d), 1)
            out["redis"] = days
        except RedisDown as exc:
            out["redis"] = f"unreachable: {exc}"
        return out

    def close(self) -> None:
        self.flush()
        with self._conn_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        self.store.close()

    def __enter__(self) -> GLCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Borrow:
    """Context manager lending the cache's small-query connection (reconnecting if it broke)."""

    def __init__(self, cache: GLCache):
        self.cache = cache

    def __enter__(self) -> psycopg.Connection:
        self.cache._conn_lock.acquire()
        conn = self.cache._conn
        if conn is None or conn.closed or conn.broken:
            try:
                conn = self.cache._conn = connect(self.cache.settings.dsn)
            except BaseException:
                self.cache._conn_lock.release()
                raise
        return conn

    def __exit__(self, *exc: object) -> None:
        self.cache._conn_lock.release()
