#!/usr/bin/env python3
"""Soak of the whole pipeline: proxy → Redis stream → two analyzer workers, under steady load for a long time.

What a database engineer would see after days: do the business totals in Redis still equal what the
database committed, does every statement reach the stream and get analysed exactly once, do memory,
descriptors and Redis grow, and does the analyzers' lag recover after a worker crash and a Redis restart?

1. Set-up: the pgbench tables (benchkit.ensure_database) and fresh shop/ledger tables (shopload.py) in
   --dbname, directly; a private redis-server (append-only, fsync always; run.py's PrivateRedis); the
   proxy with capture on and its default stream cap (--stream-maxlen); two `fasterdata analyze`
   processes with --rules (the shipped config/rules.yaml); a reader that counts the stream per
   application without trimming it (the analyzers' group still needs every entry).
2. Maximum rate: unthrottled pgbench (--bulk, -M --bulk-mode, -c --clients) through the proxy for
   --max-seconds, then the time the analyzers need to catch up. Statements ÷ (run + catch-up) is what the
   whole pipeline sustains on this machine now; the bulk load runs at --fraction of it.
3. Soak, --minutes: pgbench --rate (bulk), plus shopload.py (orders, stock moves, cancellations, ledger
   postings; commits, rollbacks, savepoints, duplicate-key errors, COPY, long transactions; simple and
   extended protocol) at --biz-rate units/s. Halfway, analyzer 2 is SIGKILLed and started again after
   --restart-after s (new consumer name: its pending entries wait --claim-idle, then the other worker
   reclaims them). At three quarters the private Redis is SIGKILLed and restarted (--redis-down, 0 skips).
4. Every --sample-every s: RSS and descriptors of the proxy, each analyzer and redis-server; the group's
   pending and undelivered entries and the age of the oldest unprocessed event (computed from XINFO /
   XPENDING as the workers do, and the workers' own fasterdata_analyzer_lag_seconds); used_memory, the
   MEMORY USAGE of every key but the three capped streams (what the analyzers keep), and the key count.
5. After the load: wait until the proxy has nothing queued or spooled and the group nothing pending or
   undelivered; then compare every business total in Redis (summed over days, merged as `fasterdata top`
   reads them) with SQL over the committed rows, statements executed with stream entries and with the
   analyzers' per-application call counts, and report PASS/FAIL with reasons.

    .venv/bin/python bench/soak/pipeline.py                      # 30 minutes (+ ~2 min around it)
    .venv/bin/python bench/soak/pipeline.py --minutes 2 --output /tmp/pipe.md   # smoke check

FDPIPE_KEEP=1 in the environment keeps the temporary directory (logs, Redis AOF, spool) for a look after.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
import redis

from fasterdata.proxy.streamkeys import stream_name

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MB = 1048576
sys.path.insert(0, str(HERE.parent))  # bench/: benchkit
sys.path.insert(0, str(HERE))  # bench/soak/: run, shopload
import shopload  # noqa: E402
from benchkit import ensure_database, loadavg, proc_tree, publish, terminate  # noqa: E402
from run import (  # noqa: E402
    HOST,
    Bench,
    Outage,
    PrivateRedis,
    Proxy,
    Reader,
    fd_count,
    first_line,
    free_port,
    mib,
    parse_bench,
    pg_env,
    restart_redis,
    rss_kb,
    scrape,
    wait_for,
)

from fasterdata.analyzers import merged  # noqa: E402
from fasterdata.analyzers.keys import GROUP, shard_keys  # noqa: E402
from fasterdata.analyzers.rules import RulesFile  # noqa: E402
from fasterdata.analyzers.rules import load as load_rules  # noqa: E402

# pgbench's own statements (prepared: $n; simple: literals); anything else of its application is its
# start-up catalog queries
SCRIPTS = {"tpcb": (("BEGIN", "UPDATE pgbench_", "SELECT abalance", "INSERT INTO pgbench_history", "END"), 7),
           "select": (("SELECT abalance",), 1)}


# -- processes -------------------------------------------------------------------------------------


class Analyzer:
    """One `fasterdata analyze` process. Restarted on the same metrics port, as a supervisor would."""

    def __init__(self, index: int, workdir: Path, redis_url: str, prefix: str, rules: Path, claim_idle: float) -> None:
        self.index = index
        self.workdir = workdir
        self.metrics_port = free_port()
        exe = Path(sys.executable).parent / "fasterdata"
        self.cmd = [str(exe) if exe.exists() else "fasterdata", "analyze", "--redis", redis_url, "--prefix", prefix,
                    "--rules", str(rules), "--metrics", f"{HOST}:{self.metrics_port}",
                    "--claim-idle", f"{claim_idle:g}", "--log-level", "info"]
        self.lives = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []
        self.start()

    @property
    def name(self) -> str:
        return f"analyzer {self.index}" + (" (restarted)" if self.lives > 1 else "")

    def start(self) -> None:
        self.lives += 1
        log = self.workdir / f"analyzer-{self.index}.{self.lives}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=ROOT)
        proc = self.proc

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {proc.returncode}:\n{log.read_text()[-2000:]}")
            with contextlib.suppress(OSError), \
                    urllib.request.urlopen(f"http://{HOST}:{self.metrics_port}/healthz", timeout=2):
                return True
            return False

        wait_for(up, f"{self.name} to serve /healthz", 60, 0.1)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def metrics(self) -> dict[str, float]:
        return scrape(self.metrics_port) if self.alive() else {}

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(15)

    def stop(self) -> int | None:
        """SIGTERM (the worker finishes its batch) and the exit code; SIGKILL after a bounded wait."""
        return None if self.proc is None else terminate(self.proc, 60)


# -- the stream, counted per application -----------------------------------------------------------


@dataclass
class AppTally:
    stmts: int = 0  # kind=stmt entries
    errors: int = 0  # … with err
    script: int = 0  # pgbench's own script statements without err
    by_txn: dict[str, int] = field(default_factory=dict)
    by_proto: dict[str, int] = field(default_factory=dict)


@dataclass
class StreamTally:
    entries: int = 0
    reconnects: int = 0
    txn_end: int = 0
    txn_end_undone: int = 0  # txn_end markers carrying `undone` ranges
    out_of_order: int = 0  # a session's txid going backwards: a replayed or reordered entry
    apps: dict[str, AppTally] = field(default_factory=dict)
    last_txid: dict[str, int] = field(default_factory=dict)


class Counter(Reader):
    """run.py's reader without the XTRIM: counts kind=stmt entries per application, protocol and outcome.
    It keeps up with the proxy (XREAD of 5,000 a call), so the stream cap never trims what it has not seen."""

    trim = False

    def __init__(self, url: str, key: str, script: tuple[str, ...]) -> None:
        super().__init__(url, key, "")
        self.script = script
        self.tally = StreamTally()  # type: ignore[assignment]

    def count(self, ev: dict[str, str]) -> None:
        t: StreamTally = self.tally  # type: ignore[assignment]
        t.entries += 1
        if ev.get("kind") == "txn_end":
            t.txn_end += 1
            t.txn_end_undone += "undone" in ev
            return
        sid, txid = ev.get("sid", ""), int(ev.get("txid") or 0)
        if txid < t.last_txid.get(sid, 0):
            t.out_of_order += 1
        t.last_txid[sid] = txid
        a = t.apps.get(ev.get("app", ""))
        if a is None:
            a = t.apps[ev.get("app", "")] = AppTally()
        a.stmts += 1
        if "err" in ev:
            a.errors += 1
        elif ev.get("sql", "").startswith(self.script):
            a.script += 1
        txn, proto = ev.get("txn", "?"), ev.get("proto", "?")
        a.by_txn[txn] = a.by_txn.get(txn, 0) + 1
        a.by_proto[proto] = a.by_proto.get(proto, 0) + 1


# -- lag and Redis ---------------------------------------------------------------------------------


def _ms(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


@dataclass
class Lag:
    pending: int
    undelivered: int  # 0 when nothing follows the group's last-delivered-id, else XINFO GROUPS `lag` (less offset)
    age_s: float  # age of the oldest event not yet acknowledged (pending) or not yet delivered
    added: int  # entries ever added to the stream (XINFO entries-added: trimming does not lower it)
    length: int
    phantom: int  # XINFO GROUPS `lag` while nothing is undelivered (see group_lag)


def group_lag(r: redis.Redis, stream: str, offset: int = 0) -> Lag | None:
    """The group's lag as `fasterdata top` and the workers see it, measured from outside the workers.
    ``offset``: a stale excess of XINFO's `lag` seen earlier (phantom), taken off while entries are undelivered."""
    try:
        info = r.xinfo_stream(stream)
        groups = {g["name"]: g for g in r.xinfo_groups(stream)}
    except redis.ResponseError:
        return None  # no stream yet
    g = groups.get(GROUP)
    if g is None:
        return None
    pending = int(g.get("pending") or 0)
    oldest: int | None = None
    if pending:
        summary = r.xpending(stream, GROUP)
        if summary and summary.get("min"):
            oldest = _ms(summary["min"])
    nxt = r.xrange(stream, min="(" + str(g.get("last-delivered-id") or "0-0"), count=1)
    if nxt:
        oldest = _ms(nxt[0][0]) if oldest is None else min(oldest, _ms(nxt[0][0]))
    # Redis 7.0 does not persist the group's entries-read across an AOF rewrite + restart (XREADGROUP is
    # replayed as XCLAIM … LASTID, which leaves it alone; fixed upstream by redis/redis#12898), so `lag`
    # can stay too high for good: trust it only while something really follows last-delivered-id.
    lag = g.get("lag")
    field_lag = int(lag) if lag is not None else None
    undelivered = (max(1, field_lag - offset) if field_lag is not None else 1) if nxt else 0
    phantom = field_lag if not nxt and field_lag else 0
    age = max(0.0, time.time() - oldest / 1000) if oldest else 0.0
    return Lag(pending, undelivered, age, int(info.get("entries-added") or 0), int(info.get("length") or 0),
               phantom)


def analyzer_memory(r: redis.Redis, prefix: str) -> int:
    """Bytes (MEMORY USAGE) of every key but the three capped streams (statements, business events,
    alerts): what the analyzers keep — aggregates, stats, sets, markers — which must not creep. Summed
    key by key because MEMORY USAGE of a large stream is a sampled estimate, too rough to subtract."""
    streams = {f"{prefix}:{name}" for name in ("statements", "events", "alerts")}
    names = [k for k in r.scan_iter(count=1000) if k not in streams]
    pipe = r.pipeline(transaction=False)
    for k in names:
        pipe.memory_usage(k)
    return sum(int(v or 0) for v in pipe.execute(raise_on_error=False) if not isinstance(v, Exception))


# -- sampling --------------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float  # seconds since the soak's load started
    procs: dict[str, tuple[int, int]]  # process → (VmRSS kB, open descriptors)
    lag: Lag | None
    reported_lag_s: float | None  # max fasterdata_analyzer_lag_seconds over live workers
    reported_entries: float | None  # max fasterdata_analyzer_lag_entries over live workers (XINFO `lag`)
    used_memory: int | None
    keys_memory: int | None  # analyzer_memory()
    keys: int | None
    note: str = ""


class Sampler(threading.Thread):
    """Every ``every`` seconds, on its own thread (its own Redis connection)."""

    def __init__(self, every: float, t0: float, prefix: str, url: str, proxy: Proxy, analyzers: list[Analyzer],
                 server: PrivateRedis) -> None:
        super().__init__(daemon=True)
        self.every, self.t0, self.prefix = every, t0, prefix
        self.proxy, self.analyzers, self.server = proxy, analyzers, server
        self.r = redis.Redis.from_url(url, decode_responses=True, socket_timeout=5, socket_connect_timeout=2)
        self.samples: list[Sample] = []
        self.halt = threading.Event()
        self.redis_lives = 1
        self.offset = 0  # XINFO GROUPS `lag` seen while nothing was undelivered (group_lag)
        self.notes: list[str] = []  # events to show in the next sample's row
        self.lock = threading.Lock()

    def note(self, text: str) -> None:
        with self.lock:
            self.notes.append(text)

    def take(self) -> Sample:
        procs: dict[str, tuple[int, int]] = {}
        pids = proc_tree(self.proxy.proc.pid)
        procs["proxy"] = (rss_kb(pids), fd_count(pids))
        reported: float | None = None
        entries: float | None = None
        for a in self.analyzers:
            if a.alive():
                assert a.proc is not None
                procs[a.name] = (rss_kb([a.proc.pid]), fd_count([a.proc.pid]))
                with contextlib.suppress(OSError, ValueError):
                    m = a.metrics()
                    v, e = m.get("fasterdata_analyzer_lag_seconds"), m.get("fasterdata_analyzer_lag_entries")
                    if v is not None:
                        reported = v if reported is None else max(reported, v)
                    if e is not None:
                        entries = e if entries is None else max(entries, e)
        if self.server.proc is not None and self.server.proc.poll() is None:
            name = "redis-server" + (" (restarted)" if self.redis_lives > 1 else "")
            procs[name] = (rss_kb([self.server.proc.pid]), fd_count([self.server.proc.pid]))
        lag = used = kmem = keys = None
        try:
            lag = group_lag(self.r, stream_name(self.prefix), self.offset)
            if lag is not None and lag.phantom:
                self.offset = lag.phantom
            used = int(self.r.info("memory")["used_memory"])
            kmem = analyzer_memory(self.r, self.prefix)
            keys = int(self.r.dbsize())
        except (redis.ConnectionError, redis.TimeoutError):
            pass  # Redis is being restarted
        with self.lock:
            note, self.notes = "; ".join(self.notes), []
        s = Sample(time.monotonic() - self.t0, procs, lag, reported, entries, used, kmem, keys, note)
        self.samples.append(s)
        return s

    def run(self) -> None:
        last_print = 0.0
        while not self.halt.wait(self.every):
            s = self.take()
            if s.t - last_print >= 60:
                last_print = s.t
                procs = "  ".join(f"{n} {mib(kb)} MiB/{fds} fds" for n, (kb, fds) in s.procs.items())
                print(f"  {s.t:5.0f} s  {procs}"
                      + (f"  pending {s.lag.pending} undelivered {s.lag.undelivered} lag {s.lag.age_s:.1f} s"
                         if s.lag else "") + (f"  used_memory {mib(s.used_memory / 1024)} MiB keys {s.keys}"
                                              if s.used_memory is not None else ""), flush=True)


# -- pgbench ---------------------------------------------------------------------------------------


def bulk_cmd(args: argparse.Namespace, seconds: int, rate: int | None) -> list[str]:
    cmd = ["pgbench", "-n", "-M", args.bulk_mode, "-c", str(args.clients), "-j", str(min(2, args.clients)),
           "-T", str(seconds), "-P", str(args.progress)]
    cmd += ["-S"] if args.bulk == "select" else ["-b", "tpcb-like"]
    if rate is not None:
        cmd += ["-R", str(rate)]
    return cmd


def prepare_bulk(dbname: str, user: str) -> None:
    """What pgbench would otherwise do itself (-n skips it), directly: the history starts empty each run."""
    with psycopg.connect(host=HOST, port=5432, dbname=dbname, user=user, autocommit=True) as conn:
        conn.execute("TRUNCATE pgbench_history")
        conn.execute("VACUUM pgbench_branches")
        conn.execute("VACUUM pgbench_tellers")


# -- waiting for the pipeline ------------------------------------------------------------------------


def caught_up(proxy: Proxy, r: redis.Redis, stream: str) -> bool:
    """The proxy holds nothing back and the group has nothing pending or undelivered."""
    m = proxy.metrics()
    if not (m.get("fasterdata_sink_queued", 1) == 0 and m.get("fasterdata_sink_spool_events", 1) == 0
            and m.get("fasterdata_sink_redis_up", 0) == 1):
        return False
    lag = group_lag(r, stream)
    return lag is not None and lag.pending == 0 and lag.undelivered == 0


def wait_caught_up(proxy: Proxy, r: redis.Redis, stream: str, counter: Counter, timeout: float) -> float | None:
    """Seconds until the pipeline is caught up twice in a row (1 s apart) and the counting reader has
    found nothing new twice; None on timeout."""
    t = time.monotonic()

    def twice() -> bool:
        with contextlib.suppress(redis.RedisError, OSError):
            if caught_up(proxy, r, stream):
                time.sleep(1.0)
                return caught_up(proxy, r, stream)
        return False

    try:
        wait_for(twice, "the analyzers to catch up", timeout, 0.5)
        seen = counter.empty_reads
        wait_for(lambda: counter.empty_reads >= seen + 2 or not counter.is_alive(), "the counter", 60)
    except RuntimeError:
        return None
    return time.monotonic() - t - 1.0


# -- what Redis says -------------------------------------------------------------------------------


def redis_totals(r: redis.Redis, prefix: str, rules: RulesFile) -> tuple[dict[str, dict[str, Decimal]], set[str]]:
    """Every rule's values summed over days (max/min compared, distinct: the union of the day sets), read
    with analyzers/merged.py as `fasterdata top` reads them; plus the distinct rules' members."""
    ks = shard_keys(prefix, 1)
    out: dict[str, dict[str, Decimal]] = {}
    members: set[str] = set()
    for rule in rules.rules:
        agg = rule.aggregate
        scale = rule.scale if agg == "sum" else 0
        acc: dict[str, Decimal] = {}
        rows_only: dict[str, Decimal] = {}
        union: dict[str, set[str]] = {}
        for day in sorted(merged.biz_days(r, ks, rule.name)):
            for labels, raw in merged.biz_values(r, ks, rule.name, day, agg).items():
                v = Decimal(raw).scaleb(-scale)
                if agg == "distinct":
                    union.setdefault(labels, set()).update(r.sscan_iter(ks[0].biz_set(rule.name, day, labels)))
                elif agg in ("sum", "count"):
                    acc[labels] = acc.get(labels, Decimal(0)) + v
                elif agg == "max":
                    acc[labels] = max(acc.get(labels, v), v)
                else:
                    acc[labels] = min(acc.get(labels, v), v)
            for labels, n in merged.biz_rows_only(r, ks, rule.name, day).items():
                rows_only[labels] = rows_only.get(labels, Decimal(0)) + n
        for labels, s in union.items():
            acc[labels] = Decimal(len(s))
            members |= s
        out[rule.name] = acc
        if rows_only:
            out[f"rows_only:{rule.name}"] = rows_only
    return out, members


def app_stats(r: redis.Redis, prefix: str) -> dict[str, dict[str, int]]:
    """Calls and errors per application from the analyzers' performance summary (stats:q per fp|db|app)."""
    ks = shard_keys(prefix, 1)
    out: dict[str, dict[str, int]] = {}
    for member, _score in merged.top_members(r, ks, "calls", 1_000_000):
        app = ([*member.split("|", 2), "", ""])[2]
        q = merged.stats_q(r, ks, member)
        a = out.setdefault(app, {"calls": 0, "errors": 0})
        a["calls"] += int(q.get("calls", 0))
        a["errors"] += int(q.get("errors", 0))
    return out


# -- checking and reporting ------------------------------------------------------------------------


@dataclass
class RuleCheck:
    name: str
    aggregate: str
    labels: int
    redis_total: Decimal | None
    sql_total: Decimal | None
    mismatches: list[tuple[str, Decimal | None, Decimal | None]]


def compare(measured: dict[str, dict[str, Decimal]], truth: dict[str, dict[str, Decimal]],
            aggregates: dict[str, str]) -> list[RuleCheck]:
    """Per rule: every label set equal (zeros dropped: a stock move that nets out is absent from SQL)."""
    out = []
    for name in sorted(set(truth) | {n for n in measured if n in aggregates or n.startswith("rows_only:")}):
        got = {k: v for k, v in measured.get(name, {}).items() if v != 0}
        want = {k: v for k, v in truth.get(name, {}).items() if v != 0}
        bad = [(lab, got.get(lab), want.get(lab)) for lab in sorted(set(got) | set(want))
               if got.get(lab) != want.get(lab)]
        agg = aggregates.get(name, "count" if name.startswith("rows_only:") else "?")

        def total(d: dict[str, Decimal], agg: str = agg) -> Decimal | None:
            if not d:
                return None
            return max(d.values()) if agg == "max" else min(d.values()) if agg == "min" else sum(d.values(), Decimal(0))

        out.append(RuleCheck(name, agg, len(set(got) | set(want)), total(got), total(want), bad))
    return out


def series(samples: list[Sample], name: str) -> list[tuple[float, int, int]]:
    return [(s.t, *s.procs[name]) for s in samples if name in s.procs]


def growth(points: list[tuple[float, int, int]]) -> tuple[float, float]:
    """RSS kB: median of the last quarter minus median of the second quarter of a process's samples under
    load (the first quarter is warm-up: caches filling, the stream reaching its cap)."""
    n = len(points)
    if n < 8:
        return 0.0, 0.0
    q2 = statistics.median(p[1] for p in points[n // 4: n // 2])
    q4 = statistics.median(p[1] for p in points[3 * n // 4:])
    return q4 - q2, q2


def secs(v: float | None) -> str:
    return "—" if v is None else f"{v:.0f} s"


def fmt_dec(v: Decimal | None) -> str:
    if v is None:
        return "—"
    return f"{int(v):,}" if v == v.to_integral_value() else f"{v:,}"


@dataclass
class Run:
    """Everything the report needs."""

    args: argparse.Namespace
    info: dict[str, str]
    peak: Bench
    peak_drain: float
    sustain: float
    target: int
    bench: Bench
    shop: dict[str, Any]
    shop_rc: int
    kill_at: float
    restart_at: float
    outage: Outage | None
    load_end: float
    drain_s: float | None
    samples: list[Sample]
    tally: StreamTally
    stats: dict[str, dict[str, int]]
    checks: list[RuleCheck]
    members_ok: bool
    totals: dict[str, int]
    alerts: dict[str, int]
    worker_metrics: dict[str, dict[str, float]]
    exits: dict[str, int | None]
    deaths: list[str]
    log_problems: dict[str, int]
    apps: dict[str, str]  # application → role
    proxy_final: dict[str, float]


def evaluate(run: Run) -> tuple[list[str], dict[str, Any]]:
    """Reasons to fail (empty: PASS) and derived numbers for the report."""
    a = run.args
    why: list[str] = []
    d: dict[str, Any] = {}
    per_txn = SCRIPTS[a.bulk][1]
    bulk_app = run.apps["bulk"]
    bt = run.tally.apps.get(bulk_app, AppTally())
    d["bulk_executed"] = run.bench.txns * per_txn
    if run.bench.rc != 0 or run.bench.failed:
        why.append(f"pgbench exit {run.bench.rc}, {run.bench.failed} failed transactions")
    if bt.script != d["bulk_executed"]:
        why.append(f"bulk: {d['bulk_executed']:,} statements executed, {bt.script:,} in the stream")
    if bt.errors:
        why.append(f"bulk: {bt.errors} statements with err in the stream")
    if run.shop_rc != 0 or run.shop.get("unexpected_count"):
        why.append(f"business driver exit {run.shop_rc}, unexpected errors: {run.shop.get('unexpected', [])[:3]}")
    rows = []
    for role, app in sorted(run.apps.items(), key=lambda x: x[0]):
        if role == "max":
            continue
        t = run.tally.apps.get(app, AppTally())
        st = run.stats.get(app, {"calls": 0, "errors": 0})
        if role == "bulk":
            executed, errors = d["bulk_executed"] + (t.stmts - t.script - t.errors), 0
        else:
            s = run.shop.get("apps", {}).get(app, {"statements": 0, "errors": 0})
            executed, errors = s["statements"], s["errors"]
        ok = t.stmts == executed and st["calls"] == t.stmts and t.errors == errors and st["errors"] == t.errors
        if role != "bulk" and t.stmts != executed:
            why.append(f"{role}: {executed:,} statements executed, {t.stmts:,} in the stream")
        if st["calls"] != t.stmts:
            why.append(f"{role}: {t.stmts:,} statements in the stream, {st['calls']:,} analysed (stats calls)")
        if t.errors != errors or st["errors"] != t.errors:
            why.append(f"{role}: errors executed {errors} / in the stream {t.errors} / analysed {st['errors']}")
        rows.append((role, app, t, st, executed, errors, ok))
    d["app_rows"] = rows
    if run.tally.out_of_order:
        why.append(f"{run.tally.out_of_order} stream entries out of order (a session's txid went backwards)")
    bad_rules = [c.name for c in run.checks if c.mismatches]
    if bad_rules:
        why.append(f"business totals differ from SQL: {', '.join(bad_rules)}")
    if not run.members_ok:
        why.append("distinct customers in Redis are not the customers with committed orders")
    if run.drain_s is None:
        why.append(f"the analyzers did not catch up within {a.drain_timeout:g} s after the load")
    for name, rc in run.exits.items():
        if rc != 0:
            why.append(f"{name} exit code {rc} on SIGTERM")
    why += run.deaths
    for w, m in run.worker_metrics.items():
        for k in ("fasterdata_analyzer_failed_events_total", "fasterdata_analyzer_bad_events_total"):
            if m.get(k):
                why.append(f"{w}: {k} = {m[k]:.0f}")
    if run.log_problems.get("tracebacks"):
        why.append(f"{run.log_problems['tracebacks']} tracebacks in the analyzers' logs")
    if run.proxy_final.get("fasterdata_sink_dropped_total"):
        why.append(f"the proxy's sink dropped {run.proxy_final['fasterdata_sink_dropped_total']:.0f} events")

    load = [s for s in run.samples if 0 < s.t <= run.load_end]
    lags = [(s.t, s.lag) for s in load if s.lag is not None]
    d["lag_max"] = max(lags, key=lambda x: x[1].age_s) if lags else None
    d["pending_max"] = max((lag.pending for _, lag in lags), default=0)
    d["undelivered_max"] = max((lag.undelivered for _, lag in lags), default=0)
    d["lag_p50"] = statistics.median(lag.age_s for _, lag in lags) if lags else 0.0
    steady = [lag.age_s for t, lag in lags if t < run.kill_at]
    d["lag_steady_p95"] = sorted(steady)[int(0.95 * (len(steady) - 1))] if steady else 0.0
    d["lag_end_load"] = lags[-1][1].age_s if lags else None
    # a fault's entries wait claim_idle, then up to claim_idle / 2 for the next XAUTOCLAIM round: the end of
    # the load is judged only when the last fault was longer ago than that (not in a 2-minute smoke run)
    last_fault = max(run.kill_at, run.outage.at_s if run.outage else 0.0)
    settle = 1.5 * a.claim_idle + 2 * a.sample_every
    d["end_judged"] = run.load_end - last_fault > settle
    if d["end_judged"] and d["lag_end_load"] is not None and d["lag_end_load"] > a.max_end_lag:
        why.append(f"lag {d['lag_end_load']:.1f} s when the load ended (> --max-end-lag {a.max_end_lag:g})")
    after_start = [(s.t, s.lag) for s in run.samples if s.t > 0 and s.lag is not None]  # the drain included

    def recovered(after: float) -> float | None:
        """Seconds from ``after`` until the oldest unprocessed event is younger than 2 s again."""
        worst = False
        for t, lag in after_start:
            if t <= after:
                continue
            if lag.age_s >= 2:
                worst = True
            elif worst or t > after + a.sample_every * 2:
                return t - after
        return None

    d["recover_kill"] = recovered(run.kill_at)
    d["recover_redis"] = recovered(run.outage.at_s) if run.outage else None
    for what, v in (("the analyzer crash", d["recover_kill"]), ("the Redis restart", d["recover_redis"])):
        if v is None and (what != "the Redis restart" or run.outage):
            why.append(f"lag did not get back under 2 s after {what}")

    procs: dict[str, dict[str, Any]] = {}
    names = list(dict.fromkeys(n for s in run.samples for n in s.procs))
    for name in names:
        pts = series(run.samples, name)
        under = [p for p in pts if 0 < p[0] <= run.load_end]
        g, base = growth(under)
        top_rss = max(pts, key=lambda p: p[1])
        top_fds = max(pts, key=lambda p: p[2])
        procs[name] = {"start": pts[0], "end": pts[-1], "rss_peak": top_rss, "fds_peak": top_fds, "growth_kb": g,
                       "samples": len(pts)}
        if name.startswith("redis-server"):
            continue  # its RSS follows the stream filling to its cap: judged by used_memory below
        limit = max(a.rss_growth_mib * 1024, 0.10 * base)
        if g > limit:
            why.append(f"{name}: RSS grew {g / 1024:.1f} MiB from the second to the last quarter of the load")
        slack = 2 if name == "proxy" else 4
        if pts[-1][2] > pts[0][2] + slack:
            why.append(f"{name}: {pts[-1][2]} open descriptors at the end, {pts[0][2]} at the start")
    d["procs"] = procs

    mem = [(s.t, s.used_memory, s.keys_memory, s.keys) for s in run.samples
           if s.used_memory is not None and s.keys_memory is not None and s.keys is not None]
    d["mem"] = mem
    if mem:
        d["mem_start"], d["mem_end"] = mem[0], mem[-1]
        d["mem_peak"] = max(mem, key=lambda m: m[1])
        # the analyzers' own keys over the second half of the load (the capped streams filled long before)
        half = [m for m in mem if run.load_end / 2 <= m[0] <= run.load_end]
        if len(half) >= 4:
            k = max(1, len(half) // 4)
            first = statistics.median(m[2] for m in half[:k])
            last = statistics.median(m[2] for m in half[-k:])
            d["keys_growth"] = (first, last, half[-1][0] - half[0][0])
            if last - first > a.redis_growth_mib * MB:
                why.append(f"the analyzers' Redis keys grew {(last - first) / MB:.1f} MiB in the second half of "
                           "the load")
    phantom = [(s.t, s.lag.phantom) for s in run.samples if s.lag is not None and s.lag.phantom]
    d["phantom"] = phantom
    return why, d


def report(run: Run) -> tuple[str, bool]:
    a = run.args
    why, d = evaluate(run)
    ok = not why
    per_txn = SCRIPTS[a.bulk][1]
    b = run.bench
    shop = run.shop
    lagmax = d["lag_max"]
    p = d["procs"]
    mem = d.get("mem_start"), d.get("mem_peak"), d.get("mem_end")
    bulk_label = f"pgbench {'-S' if a.bulk == 'select' else 'TPC-B-like'} -M {a.bulk_mode} -c {a.clients}"
    exec_total = sum(r[4] for r in d["app_rows"])
    stream_total = sum(r[2].stmts for r in d["app_rows"])
    stats_total = sum(r[3]["calls"] for r in d["app_rows"])
    rules_equal = sum(1 for c in run.checks if not c.mismatches)
    wm = run.worker_metrics
    claimed = sum(m.get("fasterdata_analyzer_claimed_total", 0) for m in wm.values())
    conflicts = sum(m.get("fasterdata_analyzer_conflicts_total", 0) for m in wm.values())
    units = shop.get("units", {})
    events_cap = 100_000  # the analyzers' events_maxlen default

    def fin(name: str) -> float:
        return run.proxy_final.get(f"fasterdata_sink_{name}_total", 0.0)

    def sink(name: str) -> float:
        """A sink counter's change since just before the Redis kill."""
        return fin(name) - (run.outage.before.get(f"fasterdata_sink_{name}_total", 0.0) if run.outage else 0.0)

    rows = [
        (f"maximum rate ({bulk_label}, {a.max_seconds} s unthrottled, through the pipeline)",
         f"{run.peak.tps:,.0f} tps = {run.peak.txns * per_txn / a.max_seconds:,.0f} statements/s; analyzers caught up "
         f"{run.peak_drain:.1f} s after → sustained {run.sustain:,.0f} statements/s"),
        ("bulk target rate (--rate)", f"{run.target:,} tps = {run.target * per_txn:,} statements/s "
                                      f"({a.fraction:.0%} of the sustained rate)"),
        ("soak run", f"{a.minutes:g} min planned; {bulk_label} -R {run.target}; business {a.biz_rate:g} units/s on "
                     f"{a.shoppers} connections (half simple, half extended protocol), a ledger batch every "
                     f"{a.batch_every:g} s"),
        ("bulk achieved", f"{b.tps:,.0f} tps; latency avg {b.lat_ms:.2f} ms; schedule lag avg "
                          f"{b.lag_ms if b.lag_ms is not None else float('nan'):.2f} ms (max "
                          f"{b.lag_max_ms if b.lag_max_ms is not None else float('nan'):.0f} ms); "
                          f"{b.txns:,} transactions, {b.failed} failed"),
        ("business achieved", f"{sum(v for k, v in units.items() if k != 'ledger_batch'):,} units "
                              f"({', '.join(f'{k} {v:,}' for k, v in sorted(units.items()))}); "
                              f"{shop.get('committed', 0):,} transactions committed, "
                              f"{shop.get('rolled_back', 0):,} rolled back; {shop.get('connects', 0)} connections; "
                              f"schedule lag p99 {shop.get('lag_ms', {}).get('p99', 0):.0f} ms, max "
                              f"{shop.get('lag_ms', {}).get('max', 0):.0f} ms; unexpected errors "
                              f"{shop.get('unexpected_count', '?')}"),
        ("analyzer crash", f"analyzer 2 SIGKILLed at {run.kill_at:.0f} s, started again {a.restart_after:g} s later "
                           f"(new consumer name); entries reclaimed (XAUTOCLAIM) {claimed:,.0f}, commit conflicts "
                           f"{conflicts:,.0f}"),
        ("Redis restart", "—" if run.outage is None else
         f"SIGKILL at {run.outage.at_s:.0f} s, back after {run.outage.down_s:.1f} s; sink spooled "
         f"{sink('spooled'):,.0f}, replayed {sink('replayed'):,.0f}, deduplicated {fin('deduplicated'):,.0f}, "
         f"dropped {fin('dropped'):,.0f}"),
        ("**statements** executed / in the stream / analysed (soak applications)",
         f"**{exec_total:,} / {stream_total:,} / {stats_total:,}** (per application below); out of order "
         f"{run.tally.out_of_order}; txn_end markers {run.tally.txn_end} ({run.tally.txn_end_undone} with undone "
         "ranges)"),
        ("**business totals** Redis = SQL", f"**{rules_equal} of {len(run.checks)}** rules and rows-only counts equal; "
                                            f"distinct customers: {'same members' if run.members_ok else 'DIFFERENT'}"),
        ("analyzer lag during the load", "—" if lagmax is None else
         f"oldest unprocessed event: median {d['lag_p50']:.2f} s, p95 before the crash {d['lag_steady_p95']:.2f} s, "
         f"max {lagmax[1].age_s:.1f} s at {lagmax[0]:.0f} s; pending max {d['pending_max']:,}, undelivered max "
         f"{d['undelivered_max']:,}"),
        ("lag back under 2 s", f"{secs(d['recover_kill'])} after the crash; {secs(d['recover_redis'])} after the "
                               "Redis restart"),
        ("lag when the load ended / drain after it", f"{d['lag_end_load']:.2f} s"
         + ("" if d["end_judged"] else " (not judged: the last fault was less than 1.5 × claim-idle before)")
         + " / " + ("did not drain" if run.drain_s is None else f"{run.drain_s:.1f} s; at the end: nothing pending")),
        ("Redis used_memory MiB start / peak / end", "—" if mem[0] is None or mem[1] is None or mem[2] is None else
         f"{mem[0][1] / MB:.1f} / {mem[1][1] / MB:.1f} (at {mem[1][0]:.0f} s) / {mem[2][1] / MB:.1f} (the statement "
         f"stream grows to its cap of {a.stream_maxlen:,} entries, business events to {events_cap:,})"),
        ("Redis keys other than the three streams (MEMORY USAGE summed)", "—" if mem[0] is None or mem[2] is None else
         f"{mem[0][2] / MB:.2f} MiB at the start, {mem[2][2] / MB:.2f} MiB at the end"
         + ("" if "keys_growth" not in d else f"; second half of the load: {d['keys_growth'][0] / MB:.2f} → "
            f"{d['keys_growth'][1] / MB:.2f} MiB in {d['keys_growth'][2] / 60:.0f} min")),
        ("Redis keys start / peak / end", "—" if mem[0] is None or mem[2] is None else
         f"{mem[0][3]:,} / {max(m[3] for m in d['mem']):,} / {mem[2][3]:,}"),
        ("statement stream", f"{run.tally.entries:,} entries read by the counter; cap --stream-maxlen "
                             f"{a.stream_maxlen:,}"),
        ("XINFO GROUPS lag while nothing was undelivered", "never" if not d["phantom"] else
         f"{len(d['phantom'])} samples from {d['phantom'][0][0]:.0f} s on, up to {max(v for _, v in d['phantom']):,} "
         "entries (Redis 7.0 loses the group's entries-read over an AOF rewrite + restart; the workers' "
         "fasterdata_analyzer_lag_entries and `fasterdata top` show it)"),
        ("COPY rows committed (ledger)", f"{shop.get('copy_rows_committed', 0):,}: operation copy, so the shipped "
                                         "insert rules do not count them, and SQL truth leaves them out"),
        ("analyzers' totals", f"calls {run.totals.get('calls', 0):,}, errors {run.totals.get('errors', 0):,}, "
                              f"unparsed {run.totals.get('unparsed', 0):,}, bad {run.totals.get('bad', 0):,}"),
        ("alerts (alerts:counts)", ", ".join(f"{k} {v:,}" for k, v in sorted(run.alerts.items())) or "none"),
        ("analyzer logs", ", ".join(f"{k} {v}" for k, v in sorted(run.log_problems.items())) or "clean"),
        ("exit codes on SIGTERM", ", ".join(f"{k} {v}" for k, v in run.exits.items())),
        ("**result**", "**PASS**" if ok else "**FAIL**: " + "; ".join(why)),
    ]
    table = ["| measure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]

    biz = ["| rule | aggregate | label sets | Redis | SQL (committed rows) | equal |", "|---|---|---|---|---|---|"]
    for c in run.checks:
        biz.append(f"| {c.name} | {c.aggregate} | {c.labels} | {fmt_dec(c.redis_total)} | {fmt_dec(c.sql_total)} | "
                   + ("yes" if not c.mismatches else "**no**: " + ", ".join(
                       f"{lab} {fmt_dec(g)} vs {fmt_dec(w)}" for lab, g, w in c.mismatches[:3])) + " |")

    apps = ["| application | protocol | outcomes | executed | in the stream | analysed (calls) | errors exec / "
            "stream / analysed | equal |", "|---|---|---|---|---|---|---|---|"]
    for role, _app, t, st, executed, errors, eq in d["app_rows"]:
        proto = ", ".join(f"{k} {v:,}" for k, v in sorted(t.by_proto.items()))
        txn = ", ".join(f"{k} {v:,}" for k, v in sorted(t.by_txn.items()))
        apps.append(f"| {role} | {proto} | {txn} | {executed:,} | {t.stmts:,} | {st['calls']:,} | {errors} / "
                    f"{t.errors} / {st['errors']} | {'yes' if eq else '**no**'} |")

    procs = ["| process | RSS MiB start / peak / end | RSS growth, 2nd → last quarter of the load | open fds start / "
             "peak / end | samples |", "|---|---|---|---|---|"]
    for name, v in p.items():
        procs.append(f"| {name} | {mib(v['start'][1])} / {mib(v['rss_peak'][1])} (at {v['rss_peak'][0]:.0f} s) / "
                     f"{mib(v['end'][1])} | {v['growth_kb'] / 1024:+.1f} MiB | {v['start'][2]} / {v['fds_peak'][2]} "
                     f"(at {v['fds_peak'][0]:.0f} s) / {v['end'][2]} | {v['samples']} |")

    samples = run.samples
    step = max(1, len(samples) // 24)
    chosen = [s for i, s in enumerate(samples) if i % step == 0 or s.note or i == len(samples) - 1]
    names = [n for n in p if not n.startswith("redis-server")]
    cols = ["proxy", "analyzer 1", "analyzer 2"]
    series_rows = ["| t s | " + " | ".join(f"{c} MiB / fds" for c in cols) + " | pending | undelivered (XINFO lag) "
                   "| oldest unprocessed s (workers say) | used_memory MiB (other keys) | keys | event |",
                   "|---|" + "---|" * (len(cols) + 6)]
    for s in chosen:
        cells = []
        for c in cols:
            n = next((n for n in names if n.split(" (")[0] == c and n in s.procs), None)
            cells.append(f"{mib(s.procs[n][0])} / {s.procs[n][1]}" if n else "—")
        lag = s.lag
        series_rows.append(
            f"| {s.t:.0f} | " + " | ".join(cells) + " | "
            + (f"{lag.pending:,} | {lag.undelivered:,}{f' ({lag.phantom:,})' if lag.phantom else ''} | "
               f"{lag.age_s:.2f}" if lag else "— | — | —")
            + (f" ({s.reported_lag_s:.2f})" if s.reported_lag_s is not None else "") + " | "
            + (f"{s.used_memory / MB:.1f} ({(s.keys_memory or 0) / MB:.2f})" if s.used_memory else "—")
            + f" | {s.keys if s.keys is not None else '—'} | {s.note} |")

    windows = b.progress
    pstep = max(1, len(windows) // 20)
    progress = ["| t s | tps | latency ms |", "|---|---|---|"]
    progress += [f"| {t:.0f} | {tps:,.0f} | {lat:.2f} |" for t, tps, lat in windows[::pstep]]
    info = run.info
    head = [
        f"# fasterdata pipeline soak{' (smoke check)' if a.minutes < 10 else ''}",
        "",
        f"- run: {info['started']} UTC; command: `{' '.join(['.venv/bin/python', *sys.argv])}`",
        f"- machine: nproc={os.cpu_count()}; load average before/after: {info['load_before']} / {info['load_after']}",
        f"- PostgreSQL {info['postgres']}; {info['pgbench']}; {info['redis']}; code at {info['commit']}",
        f"- database {a.dbname}: pgbench tables {info['db_note']}, shop/ledger tables created afresh; a private "
        f"redis-server (appendonly, fsync always); proxy stream cap "
        f"{a.stream_maxlen:,}; two `fasterdata analyze` with {info['rules']} (claim-idle {a.claim_idle:g} s); "
        f"samples every {a.sample_every:g} s",
    ]
    doc = "\n".join([
        *head, "", *table, "",
        "Business totals (Redis summed over days as `fasterdata top` merges them; SQL over committed rows):", "",
        *biz, "",
        "Statements per application (executed: counted by the client; bulk = transactions × "
        f"{per_txn} + pgbench's start-up queries):", "", *apps, "",
        "Processes (start: just before the soak's load; end: after the drain):", "", *procs, "",
        "Samples (pending/undelivered: the consumer group; oldest unprocessed: measured from XPENDING/XRANGE, in "
        "brackets the workers' own fasterdata_analyzer_lag_seconds, max over live workers):", "", *series_rows, "",
        f"pgbench progress (-P {a.progress}; latency includes the schedule lag):", "", *progress])
    return doc, ok


# -- the run ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="length of the soak's load [30]")
    p.add_argument("--fraction", type=float, default=0.6,
                   help="bulk rate as a share of the measured sustained statement rate [0.6]")
    p.add_argument("--max-seconds", type=int, default=15, help="length of the unthrottled measurement [15]")
    p.add_argument("--bulk", choices=sorted(SCRIPTS), default="tpcb",
                   help="pgbench built-in: tpcb (TPC-B-like, 7 statements a transaction) or select (-S) [tpcb]")
    p.add_argument("--bulk-mode", choices=["prepared", "extended", "simple"], default="prepared",
                   help="pgbench -M for the bulk load [prepared]")
    p.add_argument("--clients", type=int, default=8, help="pgbench -c (-j 2) [8]")
    p.add_argument("--biz-rate", type=float, default=40.0, help="business units of work per second [40]")
    p.add_argument("--shoppers", type=int, default=4, help="business connections, half simple protocol [4]")
    p.add_argument("--batch-every", type=float, default=60.0,
                   help="seconds between long ledger batches (1,227 statements in one transaction; 0: none) [60]")
    p.add_argument("--restart-after", type=float, default=2.0, help="seconds the killed analyzer stays down [2]")
    p.add_argument("--claim-idle", type=float, default=30.0,
                   help="the analyzers' --claim-idle: how long a dead worker's entries wait [30, their default]")
    p.add_argument("--redis-down", type=float, default=5.0,
                   help="seconds the private Redis stays down at three quarters (0: no restart) [5]")
    p.add_argument("--stream-maxlen", type=int, default=1_000_000,
                   help="the proxy's stream cap (FASTERDATA_STREAM_MAXLEN) [1000000, its default]")
    p.add_argument("--rules", type=Path, default=ROOT / "config" / "rules.yaml",
                   help="the analyzers' rules file [config/rules.yaml]; totals are checked for its rules that "
                        "shopload.truth() knows")
    p.add_argument("--sample-every", type=float, default=5.0, help="seconds between samples [5]")
    p.add_argument("--progress", type=int, default=10, help="pgbench -P interval, seconds [10]")
    p.add_argument("--drain-timeout", type=float, default=300.0,
                   help="most seconds to wait for the analyzers to catch up after the load [300]")
    p.add_argument("--max-end-lag", type=float, default=10.0,
                   help="FAIL if the oldest unprocessed event is older than this when the load ends [10]")
    p.add_argument("--rss-growth-mib", type=float, default=16.0,
                   help="FAIL if a process's RSS grows more than this (and 10%%) from the second to the last "
                        "quarter of the load [16]")
    p.add_argument("--redis-growth-mib", type=float, default=8.0,
                   help="FAIL if the analyzers' Redis keys (all but the three capped streams) grow more than this "
                        "over the second half of the load [8]")
    p.add_argument("--dbname", default="fdpipe", help="database, created if missing [fdpipe]")
    p.add_argument("--scale", type=int, default=10, help="pgbench -i -s [10]")
    p.add_argument("--user", default="postgres", help="database user [postgres]")
    p.add_argument("--output", default=str(HERE / "pipeline-results.md"),
                   help="Markdown file, overwritten ['' skips] [bench/soak/pipeline-results.md]")
    args = p.parse_args(argv)
    if args.minutes <= 0 or not 0 < args.fraction <= 1 or args.clients < 1 or args.max_seconds < 1:
        p.error("--minutes > 0, 0 < --fraction ≤ 1, --clients ≥ 1, --max-seconds ≥ 1")
    return args


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # so the finally block stops everything we started


def log_problems(analyzers: list[Analyzer]) -> dict[str, int]:
    """What the workers' logs say that an operator would look at."""
    out: dict[str, int] = {}
    pats = {"tracebacks": re.compile(r"^Traceback", re.M), "redis errors retried": re.compile(r"redis error, retrying"),
            "reclaim lines": re.compile(r"reclaimed \d+ entries"),
            "conflict lines": re.compile(r"reclaimed by another consumer"),
            "ERROR lines": re.compile(r"^\S+ \S+ ERROR ", re.M)}
    for a in analyzers:
        for log in a.logs:
            text = log.read_text(errors="replace") if log.exists() else ""
            for k, rx in pats.items():
                n = len(rx.findall(text))
                if n:
                    out[k] = out.get(k, 0) + n
    return out


def git_state() -> str:
    commit = first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "proxy", "analyzers", "config"],
                           capture_output=True, text=True).stdout.strip()
    return commit + (" + uncommitted changes in proxy/, analyzers/ or config/" if dirty else "")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("pgbench", "redis-server"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found (apt-get install -y postgresql-client redis-server)")
    signal.signal(signal.SIGTERM, _terminate)
    rules = load_rules(str(args.rules))
    aggregates = {r.name: r.aggregate for r in rules.rules}
    info = {"started": f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}",
            "load_before": loadavg(),
            "pgbench": first_line(["pgbench", "--version"]), "redis": first_line(["redis-server", "--version"]),
            "commit": git_state(), "rules": str(args.rules.relative_to(ROOT) if args.rules.is_relative_to(ROOT)
                                                else args.rules)}
    info["db_note"] = ensure_database(args.dbname, args.user, args.scale)
    with psycopg.connect(host=HOST, port=5432, dbname=args.dbname, user=args.user) as conn:
        info["postgres"] = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
        shopload.create_schema(conn)
    prepare_bulk(args.dbname, args.user)
    token = f"{os.getpid()}-{secrets.token_hex(3)}"
    prefix = f"fdpipe-{token}"
    apps = {"max": f"fdpipe-max-{token}", "bulk": f"fdpipe-bulk-{token}", "shop-simple": f"fdpipe-shop-{token}-simple",
            "shop-ext": f"fdpipe-shop-{token}-ext", "ledger": f"fdpipe-shop-{token}-ledger"}
    prefixes, per_txn = SCRIPTS[args.bulk]
    workdir = Path(tempfile.mkdtemp(prefix="fdpipe-"))
    server: PrivateRedis | None = None
    proxy: Proxy | None = None
    counter: Counter | None = None
    sampler: Sampler | None = None
    analyzers: list[Analyzer] = []
    children: list[subprocess.Popen[Any]] = []
    outage: Outage | None = None
    deaths: list[str] = []
    try:
        server = PrivateRedis(workdir)
        proxy = Proxy(workdir, server.url, prefix, stream_maxlen=args.stream_maxlen)
        wait_for(lambda: proxy.metrics().get("fasterdata_sink_redis_up") == 1, "the sink to connect", 30)
        analyzers = [Analyzer(i, workdir, server.url, prefix, args.rules, args.claim_idle) for i in (1, 2)]
        stream = stream_name(prefix)
        r = redis.Redis.from_url(server.url, decode_responses=True, socket_timeout=10)
        wait_for(lambda: group_lag(r, stream) is not None, "the consumer group", 30)
        counter = Counter(server.url, stream, prefixes)
        counter.start()

        print(f"measuring the sustained rate: {' '.join(bulk_cmd(args, args.max_seconds, None))} …", flush=True)
        run_max = subprocess.run(bulk_cmd(args, args.max_seconds, None), capture_output=True, text=True,
                                 env=pg_env(proxy.port, args.dbname, args.user, apps["max"]),
                                 timeout=args.max_seconds + 120)
        peak = parse_bench(run_max.returncode, run_max.stdout + run_max.stderr)
        if peak.rc != 0 or peak.tps <= 0:
            raise RuntimeError(f"the maximum-rate run failed:\n{peak.out[-2000:]}")
        peak_drain = wait_caught_up(proxy, r, stream, counter, args.drain_timeout)
        if peak_drain is None:
            raise RuntimeError("the analyzers did not catch up after the maximum-rate run")
        sustain = peak.txns * per_txn / (args.max_seconds + peak_drain)
        target = max(1, round(args.fraction * sustain / per_txn))
        seconds = max(1, round(args.minutes * 60))
        print(f"maximum {peak.tps:,.0f} tps, caught up {peak_drain:.1f} s later: {sustain:,.0f} statements/s "
              f"sustained; soak at {target:,} tps for {seconds} s", flush=True)

        t0 = time.monotonic()
        sampler = Sampler(args.sample_every, t0, prefix, server.url, proxy, analyzers, server)
        sampler.take()
        sampler.start()
        bench_out = workdir / "pgbench.out"
        shop_json = workdir / "shop.json"
        with bench_out.open("w") as out:
            bench_proc = subprocess.Popen(bulk_cmd(args, seconds, target), stdout=out, stderr=subprocess.STDOUT,
                                          text=True, env=pg_env(proxy.port, args.dbname, args.user, apps["bulk"]))
        children.append(bench_proc)
        shop_log = (workdir / "shop.log").open("w")
        shop_proc = subprocess.Popen(
            [sys.executable, str(HERE / "shopload.py"), "--port", str(proxy.port), "--dbname", args.dbname,
             "--user", args.user, "--app", f"fdpipe-shop-{token}", "--seconds", str(seconds), "--rate",
             str(args.biz_rate), "--shoppers", str(args.shoppers), "--batch-every", str(args.batch_every),
             "--out", str(shop_json)], stdout=shop_log, stderr=subprocess.STDOUT, cwd=ROOT)
        children.append(shop_proc)

        def at(fraction: float) -> None:
            time.sleep(max(0.0, t0 + seconds * fraction - time.monotonic()))
            for a in analyzers:
                if not a.alive():
                    deaths.append(f"{a.name} died on its own (exit {a.proc.returncode if a.proc else '?'})")
            if bench_proc.poll() is not None:
                raise RuntimeError(f"pgbench ended early:\n{bench_out.read_text()[-2000:]}")

        at(0.5)
        victim = analyzers[1]
        kill_at = time.monotonic() - t0
        print(f"{kill_at:.0f} s: SIGKILL {victim.name} (pid {victim.proc.pid if victim.proc else '?'})", flush=True)
        victim.kill()
        sampler.note(f"SIGKILL {victim.name}")
        time.sleep(args.restart_after)
        victim.start()
        restart_at = time.monotonic() - t0
        sampler.note(f"{victim.name} started")
        if args.redis_down > 0:
            at(0.75)
            print(f"{time.monotonic() - t0:.0f} s: killing Redis for {args.redis_down:g} s", flush=True)
            sampler.note("Redis SIGKILL")
            outage = restart_redis(server, proxy, args.redis_down, t0)
            sampler.redis_lives += 1
            sampler.note(f"Redis back after {outage.down_s:.1f} s")
            print(f"{time.monotonic() - t0:.0f} s: Redis is back", flush=True)
        rc_bench = bench_proc.wait(timeout=seconds + 300)
        rc_shop = shop_proc.wait(timeout=seconds + 300)
        shop_log.close()
        load_end = time.monotonic() - t0
        bench = parse_bench(rc_bench, bench_out.read_text())
        shop = json.loads(shop_json.read_text()) if shop_json.exists() else {}
        if not shop:
            print((workdir / "shop.log").read_text()[-3000:], file=sys.stderr)
        sampler.note("load ended")
        for a in analyzers:
            if not a.alive():
                deaths.append(f"{a.name} died on its own (exit {a.proc.returncode if a.proc else '?'})")
        print(f"load done: pgbench {bench.txns:,} transactions ({bench.failed} failed), business "
              f"{sum(v['statements'] for v in shop.get('apps', {}).values()):,} statements; draining …", flush=True)
        drain_s = wait_caught_up(proxy, r, stream, counter, args.drain_timeout)
        sampler.halt.set()
        sampler.join(30)
        sampler.take()
        sampler.samples[-1].note = "drained" if drain_s is not None else "drain timed out"

        print("comparing with SQL …", flush=True)
        measured, members = redis_totals(r, prefix, rules)
        with psycopg.connect(host=HOST, port=5432, dbname=args.dbname, user=args.user) as conn:
            truth = shopload.truth(conn)
            want_members = shopload.customers(conn)
        checks = compare({k: v for k, v in measured.items() if k in truth or k.startswith("rows_only:")}, truth,
                         aggregates)
        stats = app_stats(r, prefix)
        totals = merged.stats_totals(r, shard_keys(prefix, 1))
        alerts = merged.alert_counts(r, shard_keys(prefix, 1))
        worker_metrics = {a.name: a.metrics() for a in analyzers}
        proxy_final = proxy.metrics()
        counter.halt.set()
        counter.join(30)
        if counter.error:
            raise RuntimeError(f"the stream counter failed: {counter.error}")
        exits: dict[str, int | None] = {a.name: a.stop() for a in analyzers}
        exits["proxy"] = proxy.stop()
        problems = log_problems(analyzers)
    finally:
        for c in children:
            if c.poll() is None:
                c.kill()
                c.wait()
        if sampler is not None:
            sampler.halt.set()
        if counter is not None:
            counter.halt.set()
        for a in analyzers:
            a.kill()
        if proxy is not None:
            proxy.stop()
        if server is not None:
            server.stop()
        if os.environ.get("FDPIPE_KEEP"):
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    info["load_after"] = loadavg()
    run = Run(args, info, peak, peak_drain, sustain, target, bench, shop, rc_shop, kill_at, restart_at, outage,
              load_end, drain_s, sampler.samples, counter.tally, stats, checks,  # type: ignore[arg-type]
              members == want_members, totals, alerts, worker_metrics, exits, deaths, problems, apps, proxy_final)
    doc, ok = report(run)
    publish(doc, args.output)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
