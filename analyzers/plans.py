"""Plans: why a slow statement is slow. A side connection (`explain_dsn`, meant for a read-only role) runs
`EXPLAIN (FORMAT JSON)` of a slow fingerprint's sample with that sample's own parameters.

Which statements are explained: SELECT (WITH … SELECT, VALUES and TABLE too) — nothing that writes. INSERT,
UPDATE, DELETE, MERGE, COPY, DDL, role and utility statements, a WITH holding a data-modifying statement,
and SELECT … INTO are refused, and the refusal is recorded. Nothing is executed: plain EXPLAIN only
plans (`explain_analyze` opts into EXPLAIN ANALYZE, which runs the SELECT). The side connection works in
read-only transactions (`default_transaction_read_only`) under `explain_timeout_ms` (statement_timeout).

All of it happens on a thread of its own: the worker's loop only offers (fingerprint, slowest sample) after
a commit, a bounded queue takes it or drops it, and a slow or absent server never slows analysis. The
thread runs at most `explain_per_minute` EXPLAINs a minute. Per fingerprint the outcome is cached: a plan
is explained again only when a sample `explain_regress` times slower than the one explained arrives (at
most every REFRESH_SECONDS); a refusal is final; a timeout or an error (a redacted parameter that does not
fit its column, the side connection down) is recorded and tried again only after RETRY_SECONDS, never in
a loop; while the connection is down it is tried again after a back-off and requests are recorded as
`error` without waiting for it.

The record is the hash `plan:<fp>` (the shard of the sample): status (ok, refused, timeout, error), reason,
plan (the JSON plan), total_cost, sql, params, sample (its stream entry id), dur_us of the sample, at.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from .keys import Keys

log = logging.getLogger("fasterdata.analyze")

EXPLAINED = ("select",)  # shape ops explained: SELECT, WITH … SELECT, VALUES, TABLE
STATUSES = ("ok", "refused", "timeout", "error")
REFRESH_SECONDS = 300.0  # a regressed fingerprint is explained again at most this often
RETRY_SECONDS = 3600.0  # after a timeout or an error
_WRITING = re.compile(r"(?is)\b(?:insert|update|delete|merge)\b|\binto\b")
_HEADS = ("select", "with", "values", "table", "(")


def refusal(op: str, text: str) -> str | None:
    """Why a statement is not explained (None: it is)."""
    if op not in EXPLAINED:
        return f"{op.upper() or 'this statement'} is not explained (only SELECT, WITH … SELECT, VALUES, TABLE)"
    head = text.lstrip().lower()
    if not head.startswith(_HEADS):
        return "only a statement starting with SELECT, WITH, VALUES or TABLE is explained"
    if _WRITING.search(text):
        return "a SELECT that writes (a data-modifying WITH, or SELECT … INTO) is not explained"
    return None


class Request:
    __slots__ = ("dur_us", "fp", "keys", "op", "sample")

    def __init__(self, keys: Keys, fp: str, op: str, dur_us: int, sample: tuple[str, dict[str, str]]) -> None:
        self.keys = keys
        self.fp = fp
        self.op = op
        self.dur_us = dur_us
        self.sample = sample  # (stream entry id, event)


class Planner:
    """Explains slow fingerprints' samples on its own thread; `offer` is all the worker's loop calls."""

    def __init__(self, client: Any, dsn: str, min_ms: float = 100.0, per_minute: int = 6, timeout_ms: int = 2000,
                 regress: float = 2.0, analyze: bool = False, queue_size: int = 64,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.redis = client
        self.dsn = dsn
        self.min_us = int(min_ms * 1000)
        self.interval = 60.0 / per_minute
        self.timeout_ms = timeout_ms
        self.regress = regress
        self.analyze = analyze
        self.clock = clock
        self.queue: queue.Queue[Request | None] = queue.Queue(maxsize=queue_size)
        self.lock = threading.Lock()
        self.cache: dict[str, tuple[str, float, float]] = {}  # fp → (status, dur_us explained, when)
        self.waiting: set[str] = set()  # fingerprints queued
        self.counts = dict.fromkeys(STATUSES, 0)
        self.dropped = 0  # offers the full queue turned away
        self.conn: psycopg.Connection | None = None
        self.down_until = 0.0
        self.down_reason = ""
        self.next_at = 0.0
        self.thread = threading.Thread(target=self._run, name="explain", daemon=True)
        self.thread.start()

    # ── the worker's side ───────────────────────────────────────────────────────────────────────
    def wanted(self, fp: str, dur_us: int) -> bool:
        """Whether a sample this slow should be explained (cheap: the loop asks after each commit)."""
        if dur_us < self.min_us or fp in self.waiting:
            return False
        got = self.cache.get(fp)
        if got is None:
            return True
        status, explained, when = got
        age = self.clock() - when
        if status == "refused":
            return False
        if status in ("timeout", "error"):
            return age >= RETRY_SECONDS
        return dur_us >= explained * self.regress and age >= REFRESH_SECONDS

    def offer(self, keys: Keys, fp: str, op: str, dur_us: int, sample: tuple[str, dict[str, str]]) -> bool:
        """Queue a fingerprint's slow sample unless it need not be explained (or the queue is full)."""
        if not self.wanted(fp, dur_us):
            return False
        try:
            self.queue.put_nowait(Request(keys, fp, op, dur_us, sample))
        except queue.Full:
            self.dropped += 1
            return False
        with self.lock:
            self.waiting.add(fp)
        return True

    def close(self, timeout: float = 5.0) -> None:
        with contextlib.suppress(queue.Full):
            self.queue.put(None, timeout=timeout)
        self.thread.join(timeout)
        if self.conn is not None:
            self.conn.close()

    # ── the thread ──────────────────────────────────────────────────────────────────────────────
    def _run(self) -> None:
        while True:
            req = self.queue.get()
            if req is None:
                return
            try:
                record = self.handle(req)
            except Exception as exc:  # never let the thread die: the next request gets its turn
                log.exception("explaining %s failed", req.fp)
                record = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"[:500]}
            try:
                self.store(req, record)
            except Exception as exc:
                log.warning("plan of %s not stored: %s", req.fp, exc)
            finally:
                with self.lock:
                    self.waiting.discard(req.fp)

    def handle(self, req: Request) -> dict[str, Any]:
        """The record of one request (refused at once; otherwise explained when the rate allows)."""
        _, ev = req.sample
        sql = ev.get("sql", "")
        why = refusal(req.op, sql)
        if why is not None:
            return {"status": "refused", "reason": why}
        now = self.clock()
        if now < self.down_until:
            return {"status": "error", "reason": f"side connection unavailable: {self.down_reason}"}
        if now < self.next_at:
            time.sleep(self.next_at - now)
        self.next_at = self.clock() + self.interval
        try:
            params = json.loads(ev["params"]) if ev.get("params") else None
        except ValueError:
            return {"status": "error", "reason": "the sample's parameters are not JSON"}
        return self.explain(sql, params)

    def _connect(self) -> psycopg.Connection:
        if self.conn is not None and not self.conn.closed:
            return self.conn
        conn = psycopg.connect(self.dsn, autocommit=True, cursor_factory=psycopg.RawCursor, connect_timeout=5,
                               application_name="fasterdata-explain")
        conn.execute(f"SET statement_timeout = {int(self.timeout_ms)}")
        conn.execute("SET default_transaction_read_only = on")
        self.conn = conn
        return conn

    def explain(self, sql: str, params: list[Any] | None) -> dict[str, Any]:
        options = "ANALYZE, FORMAT JSON" if self.analyze else "FORMAT JSON"
        try:
            conn = self._connect()
        except psycopg.Error as exc:
            self.down_reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            self.down_until = self.clock() + 30.0
            log.warning("explain: side connection unavailable (%s); tried again in 30s", self.down_reason)
            return {"status": "error", "reason": f"side connection unavailable: {self.down_reason}"}
        started = time.perf_counter()
        try:
            cur = conn.execute(f"EXPLAIN ({options}) {sql}", params or None)
            doc = cur.fetchone()[0]
        except psycopg.errors.QueryCanceled as exc:
            return {"status": "timeout", "reason": f"statement_timeout {self.timeout_ms} ms: {str(exc).strip()}"}
        except psycopg.OperationalError as exc:
            self.conn = None
            return {"status": "error", "reason": str(exc).strip()[:500]}
        except psycopg.Error as exc:
            return {"status": "error", "reason": str(exc).strip().splitlines()[0][:500] if str(exc).strip()
                    else type(exc).__name__}
        if isinstance(doc, str):
            doc = json.loads(doc)
        root = doc[0].get("Plan", {}) if doc else {}
        return {"status": "ok", "plan": json.dumps(doc), "total_cost": str(root.get("Total Cost", "")),
                "node": str(root.get("Node Type", "")), "took_ms": f"{(time.perf_counter() - started) * 1000:.1f}",
                "explain": f"EXPLAIN ({options})"}

    def store(self, req: Request, record: dict[str, Any]) -> None:
        entry_id, ev = req.sample
        status = record["status"]
        fields = {"status": status, "reason": record.get("reason", ""), "sql": ev.get("sql", ""),
                  "params": ev.get("params", ""), "sample": entry_id, "dur_us": str(req.dur_us), "op": req.op,
                  "at": f"{time.time():.3f}", **{k: v for k, v in record.items() if k not in ("status", "reason")}}
        key = req.keys.plan(req.fp)
        old = self.redis.hget(key, "status") if status != "ok" else None
        if old == "ok":  # a refresh that failed keeps the plan it had, and says why it was not refreshed
            self.redis.hset(key, mapping={"refresh": status, "refresh_reason": fields["reason"],
                                          "refresh_at": fields["at"]})
        else:
            self.redis.hset(key, mapping=fields)
            if status == "ok":
                self.redis.hdel(key, "refresh", "refresh_reason", "refresh_at")
        with self.lock:
            self.counts[status] = self.counts.get(status, 0) + 1
            if len(self.cache) > 50_000:
                self.cache.clear()
            self.cache[req.fp] = (status, float(req.dur_us), self.clock())


class PlanCollector(Collector):
    """fasterdata_analyzer_plans_total{status}: this worker's EXPLAIN outcomes (none without explain_dsn)."""

    def __init__(self, planner: Planner | None) -> None:
        self.planner = planner

    def collect(self) -> Iterator[Metric]:
        fam = CounterMetricFamily("fasterdata_analyzer_plans", "EXPLAINs of slow samples by outcome (ok, refused, "
                                  "timeout, error), this worker's", labels=["status"])
        if self.planner is not None:
            with self.planner.lock:
                counts = dict(self.planner.counts)
            for status, n in sorted(counts.items()):
                fam.add_metric([status], n)
        yield fam
