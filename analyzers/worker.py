"""One analyzer worker: a consumer in the group `analyzers` on `<prefix>:statements` (or on every shard
`<prefix>:statements:{i}` when `stream_shards` ≥ 2).

Loop: reclaim entries idle too long in dead consumers (XAUTOCLAIM), read a batch (XREADGROUP),
analyse it in memory, then apply every Redis effect of the batch together with its XACK in one Lua
script (`atomic`). Killed at any point, the worker leaves either nothing or everything of a batch.
Many workers can run; Redis hands each entry to one of them. A batch holds one shard's entries and
writes only that shard's keys (keys.py), so its commit touches one Redis Cluster slot.

What a statement contributes is decided elsewhere: the rules file's business rules, checks and anomaly
counter (ruleset.py, rebuilt on SIGHUP), findings (security.py), statement stats (stats.py); the
group's lag and this worker's heartbeat are upkeep.py's; what /metrics shows, metrics.py's,
stats.py's and business_metrics.py's.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from operator import itemgetter
from typing import Any

import redis
from prometheus_client.registry import Collector

from fasterdata.config.analyzer_settings import AnalyzerSettings
from fasterdata.proxy.streamkeys import other_layout_streams

from . import event
from .anomaly import Evaluator, describe_series
from .atomic import Committer, Writes, claim_floor
from .business import Match
from .business_metrics import DayValues, WorkerTallies
from .categories import Categories
from .drilldown import DrillSweeper
from .findings import Alerter
from .fingerprint import Normalized, Normalizer
from .keys import Keys, shard_keys
from .metrics import WorkerCollector, WorkerCounters
from .plans import PlanCollector, Planner
from .redisconn import clustered, connect, require_shards
from .retention import Sweeper
from .rules import RulesError, RulesFile
from .rules import load as load_rules
from .ruleset import Plan, RuleSet
from .samples import Item, Samples
from .security import Security
from .shape import Shape, ShapeCache
from .stats import BatchStats, StatsCollector, UserCap
from .streams import StreamSet
from .txshapes import Transactions
from .upkeep import GroupUpkeep

log = logging.getLogger("fasterdata.analyze")


def tune_gc(gen0: int = 50_000) -> None:
    """For a worker process, once set up. With the default threshold (700 allocations) every batch's
    containers (entry lists, events, matches: ~10k a batch) survive a few young collections and reach
    the old generation, whose full scans then walk sqlglot, redis-py and every cache again, at a cost
    paid by every statement. Frozen start-up objects leave those scans; a larger threshold lets batches die young."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(gen0, *gc.get_threshold()[1:])


def _raw(client: redis.Redis) -> redis.Redis:
    """Entries as [id, [field, value, …]]: dict-building in C (dict(zip)) beats redis-py's callback."""
    client.set_response_callback("XREADGROUP", lambda resp, **kw: resp)
    client.set_response_callback("XAUTOCLAIM", lambda resp, **kw: resp)
    return client


Entry = tuple[str, "list[str] | dict[str, str] | None"]  # fields flat (one Redis) or parsed (cluster client)


def _entries(entries: Any) -> list[Entry]:
    return [(e[0], e[1]) for e in entries if e and e[0] is not None]


class Shard:
    """One statement stream: its keys and the committer of its batches."""

    __slots__ = ("committer", "i", "keys", "stream")

    def __init__(self, i: int, keys: Keys, committer: Committer) -> None:
        self.i = i
        self.keys = keys
        self.stream = keys.statements
        self.committer = committer


class Batch:
    """What one batch produced, kept apart until its commit succeeds."""

    __slots__ = ("anomaly", "bad", "entry_id", "failed", "findings", "keys", "matches", "new_fps", "new_labels",
                 "new_pairs", "rows_only", "samples", "shapes", "slow_sent", "statements", "stats", "trimmed",
                 "unparsed", "writes")

    def __init__(self, keys: Keys) -> None:
        self.keys = keys  # the shard's: every key this batch writes
        self.writes = Writes()
        self.stats = BatchStats()
        self.anomaly: dict[tuple[int, str], int] = {}
        self.findings: list[tuple[str, str]] = []
        self.matches: list[Match] = []
        self.new_fps: dict[str, tuple[Normalized, Shape]] = {}
        self.new_pairs: set[tuple[str, str]] = set()
        self.new_labels: set[tuple[str, str]] = set()  # (rule, labels or one label) proposed as new categories
        self.samples: dict[str, list[Item]] = {}  # fp → its statements' (dur_us, entry id, event)
        self.slow_sent: dict[str, list[Item]] = {}  # fp → the slow samples its commit writes
        self.shapes: dict[str, list[Any]] = {}  # transaction shape → its aggregate in this batch
        self.entry_id = ""  # the stream entry being analysed
        self.rows_only: dict[str, int] = {}
        self.unparsed = 0
        self.bad = 0
        self.failed = 0
        self.trimmed = 0  # delivered entries the stream cap removed before they were analysed
        self.statements = 0  # in the batch's entries (a bundled entry holds several)


class Worker:
    """The analyzer loop; `run()` until `stop` is set."""

    def __init__(self, settings: AnalyzerSettings, rules: RulesFile, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.redis = client or connect(settings.redis, decode_responses=True, health_check_interval=30)
        require_shards(self.redis, settings.stream_shards)
        if not clustered(self.redis):
            _raw(self.redis)
        self.keys = Keys(settings.prefix)  # unsharded: heartbeats, rule descriptions, the anomaly lock
        self.consumer = settings.consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.group = settings.group
        sharded = settings.stream_shards > 1
        # A cluster keeps the floor in another slot than the shards' scripts: there every batch is checked.
        self.floor_key = None if clustered(self.redis) else self.keys.claim_floor(self.group)
        self.shards = [Shard(i, k, Committer(self.redis, k.statements, self.group, self.consumer, declare=sharded,
                                             floor_key=self.floor_key))
                       for i, k in enumerate(shard_keys(settings.prefix, settings.stream_shards))]
        self.streams = StreamSet(self.redis, [sh.stream for sh in self.shards], self.group, self.consumer)
        self.normalize = Normalizer(settings.cache_size)
        self.shapes = ShapeCache()
        self.ruleset = self._ruleset(rules)
        self.security = Security(self.ruleset.checks, settings.alerts_maxlen)
        all_keys = [sh.keys for sh in self.shards]
        self.evaluator = Evaluator(self.redis, all_keys, rules.anomaly, self.consumer, settings.alerts_maxlen,
                                   describe_series(self.redis, all_keys))
        self.sweeper = Sweeper(self.redis, all_keys, self.ruleset.names, settings.stats_max_fingerprints,
                               settings.stats_retention_days, settings.business_retention_days,
                               settings.stats_max_entries)
        self.counters = WorkerCounters()
        self.upkeep = GroupUpkeep(self.redis, self.shards, self.group, self.consumer, self.keys, self.counters)
        self.stats = StatsCollector(settings.top_k, settings.top_apps, top_users=settings.top_users)
        self.user_cap = UserCap(settings.stats_max_users)
        self.samples = Samples(settings.samples, settings.series_minutes, settings.samples_every)
        policy = rules.security
        self.transactions = Transactions(Alerter(settings.alerts_maxlen, policy.dedup_seconds), settings.txn_shapes,
                                         settings.n_plus_one, settings.n_plus_one_window)
        self.follow = self.transactions.add if self.transactions.on else None  # the hot path's one lookup
        self.categories = Categories(Alerter(settings.alerts_maxlen, policy.dedup_seconds),
                                     settings.new_category_learn_seconds, settings.new_categories)
        self.drill = DrillSweeper(self.redis, all_keys, settings.txn_shapes_max, settings.stats_retention_days)
        self.planner = Planner(self.redis, settings.explain_dsn, settings.explain_min_ms, settings.explain_per_minute,
                               settings.explain_timeout_ms, settings.explain_regress, settings.explain_analyze) \
            if settings.explain_dsn else None
        self.business_days = DayValues(self.redis, all_keys, rules.rules)
        self.business_tallies = WorkerTallies(rules.rules)
        self.known_fps: set[str] = set()
        self.stop = threading.Event()
        self.last_tick = time.monotonic()
        self.last_error: str | None = None
        self._next_claim = 0.0
        self._next_periodic = 0.0
        self._next_consumer_check = time.monotonic() + 60
        self._next_sweep = time.monotonic() + settings.sweep_seconds
        # Entries read at a time: about `batch` statements' worth, as a bundled entry holds several.
        self.per_entry = 10.0
        self.count = max(1, settings.batch // 10)
        # One Redis: each commit is sent as soon as its batch is analysed, and its reply read when the next
        # batch has been analysed (Committer.start). A cluster client routes by slot: there a helper thread
        # commits.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit") if clustered(self.redis) \
            else None
        self._inflight: tuple[Shard, list, Batch, Callable[[], list[str]]] | None = None
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="read")
        self._reading: Future | None = None
        self._recover = False  # a Redis error interrupted batches: read this consumer's pending entries again
        self.reload = threading.Event()  # SIGHUP: read the rules file again between two batches

    # ── set-up ──────────────────────────────────────────────────────────────────────────────────
    def _ruleset(self, rules: RulesFile) -> RuleSet:
        s = self.settings
        return RuleSet(rules, self.keys, s.events_maxlen, s.business_retention_days, s.cache_size)

    def collectors(self) -> list[Collector]:
        """What this worker puts on /metrics."""
        return [WorkerCollector(self.counters, self.consumer), self.stats, self.business_days, self.business_tallies,
                PlanCollector(self.planner)]

    def setup(self) -> None:
        """Create the group (and stream) on every shard if absent; publish rule descriptions for readers."""
        for stream in self.streams.create_group(self.settings.start_id):
            log.info("created consumer group %s on %s", self.group, stream)
        self._check_shards()
        self._describe_rules()

    def _describe_rules(self) -> None:
        described = self.ruleset.business.describe()
        if described:
            self.redis.hset(self.keys.biz_rules, mapping=described)

    def _check_shards(self) -> None:
        """Warn when the proxy seems to write streams this worker does not read (stream_shards differs)."""
        n = self.settings.stream_shards
        p = self.settings.prefix
        for stray in other_layout_streams(p, n):
            if self.redis.exists(stray):
                log.warning("%s exists but this worker reads %d stream(s): is stream_shards the same as the "
                            "proxy's?", stray, n)

    # ── loop ────────────────────────────────────────────────────────────────────────────────────
    def run(self) -> None:
        self.setup()
        self._own_pending()
        backoff = 0.5
        while not self.stop.is_set():
            try:
                if self._recover:  # before anything is in flight again: the batches the error interrupted
                    self._own_pending()
                    self._recover = False
                if self.reload.is_set():
                    self.reload.clear()
                    self.reload_rules()
                self.run_once()
                self.last_error = None
                backoff = 0.5
            except redis.RedisError as exc:
                # The batches read or being committed stay pending for this consumer: taken up again as
                # soon as Redis answers, rather than by another worker after claim_idle.
                self._reading = None
                self._finish_commit_after_error()
                self._recover = True
                self.last_error = f"redis: {exc}"
                if "NOGROUP" in str(exc) and self._recreate_group(exc):
                    continue
                log.warning("redis error, retrying in %.1fs: %s", backoff, exc)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 10)
            self.last_tick = time.monotonic()
        try:
            self.quiesce()
        except redis.RedisError as exc:
            log.warning("last batch failed (its entries stay pending for another worker): %s", exc)
        self.close()

    def close(self) -> None:
        """The helper threads and the committers' connections (after `quiesce`)."""
        if self._pool is not None:
            self._pool.shutdown()
        self._reader.shutdown()
        if self.planner is not None:
            self.planner.close()
        for shard in self.shards:
            shard.committer.close()

    def reload_rules(self) -> bool:
        """Use the rules file as it is now from the next batch on (SIGHUP). What was already read is
        analysed and committed under the old rules first; a file that does not load keeps them."""
        path = self.settings.rules
        try:
            rules = load_rules(path)
        except (RulesError, OSError) as exc:
            log.error("SIGHUP: rules file %s not loaded, the %d rules in force stay:\n%s", path,
                      len(self.ruleset.rules), exc)
            return False
        self.quiesce()
        before, self.ruleset = self.ruleset, self._ruleset(rules)
        self.security.use(self.ruleset.checks)
        self.evaluator.policy = rules.anomaly
        self.sweeper.rules = self.ruleset.names
        self.business_days.replace(rules.rules)
        self.business_tallies.replace(rules.rules)
        self._describe_rules()
        log.info("SIGHUP: rules reloaded from %s: %d rules (%s)", path, len(rules.rules),
                 self.ruleset.changes(before))
        return True

    def _recreate_group(self, exc: redis.RedisError) -> bool:
        """The stream or its group is gone (deleted, or Redis restarted without persistence); the proxy's
        next XADD makes a bare stream again, and without the group every read would fail alike."""
        log.warning("%s: creating it again", exc)
        try:
            self.setup()
        except redis.RedisError as again:
            log.warning("creating the consumer group failed: %s", again)
            return False
        return True

    def run_once(self) -> int:
        """One iteration: maybe reclaim, read one batch, commit it, maybe do periodic work."""
        now = time.monotonic()
        done = 0
        if now >= self._next_claim:
            done += self.claim()
            self._next_claim = now + max(0.5, self.settings.claim_idle / 2)
        reading, self._reading = self._reading, None
        if reading is not None and not reading.done():
            self.finish_commit()  # the read may block for `block` seconds: publish the last commit's counts first
        got = reading.result() if reading is not None else self._read()
        if got:
            if not self.stop.is_set():  # read the next batch while this one is analysed
                self._reading = self._reader.submit(self._read)
            for shard, entries, read_at in got:
                self.analyse_and_commit(shard, entries, wait=False, read_at=read_at)
                done += len(entries)
        else:
            self.finish_commit()
        if time.monotonic() >= self._next_periodic:
            self.periodic()
            self._next_periodic = time.monotonic() + 1.0
        return done

    def quiesce(self) -> int:
        """Finish the read-ahead (its entries are delivered to us already) and the commit in flight."""
        n = 0
        if self._reading is not None:
            got, self._reading = self._reading.result(), None
            for shard, entries, read_at in got:
                self.analyse_and_commit(shard, entries, read_at=read_at)
                n += len(entries)
        self.finish_commit()
        return n

    def _read(self) -> list[tuple[Shard, list[Entry], int | None]]:
        read_at, got = self.streams.read_new(self.count, int(self.settings.block * 1000))
        return [(self.shards[i], _entries(entries), read_at) for i, entries in got]

    def _own_pending(self) -> None:
        """Entries this consumer name read before a restart and never acknowledged."""
        for shard in self.shards:
            while not self.stop.is_set():
                got = self.streams.read(self.count, None, start="0", only=shard.i)
                entries = _entries(got[0][1]) if got else []
                if not entries:
                    break
                self.analyse_and_commit(shard, entries)

    def claim(self) -> int:
        """XAUTOCLAIM, on every shard, entries idle longer than claim_idle (their consumer is presumed dead)."""
        total = 0
        idle_ms = int(self.settings.claim_idle * 1000)
        if self.floor_key is not None:  # before taking anything: see atomic.claim_floor
            claim_floor(self.redis, self.floor_key, idle_ms)
        for shard in self.shards:
            cursor = "0-0"
            for _ in range(100):
                reply = self.redis.execute_command("XAUTOCLAIM", shard.stream, self.group, self.consumer, idle_ms,
                                               cursor, "COUNT", self.count)
                cursor = reply[0]
                entries = _entries(reply[1])
                if len(reply) > 2 and reply[2]:  # Redis 7: pending entries no longer in the stream, now unpended
                    self.count_trimmed(len(reply[2]))
                if entries:
                    log.info("reclaimed %d entries idle > %.0fs from %s", len(entries), self.settings.claim_idle,
                             shard.stream)
                    with self.counters.lock:
                        self.counters.claimed += len(entries)
                    self.analyse_and_commit(shard, entries)
                    total += len(entries)
                if cursor == "0-0" or self.stop.is_set():
                    break
        return total

    # ── a batch ─────────────────────────────────────────────────────────────────────────────────
    def analyse(self, shard: Shard, entries: list[Entry]) -> Batch:
        """Everything a batch of one shard will write, computed in memory."""
        batch = Batch(shard.keys)
        add_event = self.add_event
        for entry_id, flat in entries:
            if flat is None:  # delivered, then trimmed from the stream (stream_maxlen) before it was analysed
                batch.trimmed += 1
                continue
            try:
                evs = event.events_of(flat)  # fields flat (one Redis) or parsed (cluster client)
            except event.BadBundle as exc:
                batch.bad += 1
                log.debug("bad entry %s: %s", entry_id, exc)
                continue
            batch.statements += len(evs)
            batch.entry_id = entry_id
            for ev in evs:
                try:
                    add_event(batch, ev)
                except (event.BadEvent, ValueError) as exc:  # ValueError: a number field that is not one
                    batch.bad += 1
                    log.debug("bad event in %s: %s", entry_id, exc)
                except Exception:
                    batch.failed += 1
                    log.exception("analysing an event of entry %s failed; skipped", entry_id)
        self.write_stats(batch)
        return batch

    def analyse_and_commit(self, shard: Shard, entries: list[Entry], wait: bool = True,
                           read_at: int | None = None) -> None:
        """Analyse a batch and commit it. With wait=False the commit runs on a helper thread while the
        caller reads and analyses the next batch (Redis time overlaps Python time); commits stay in
        order because a new one starts only after the previous one has finished. read_at: see
        `Committer.commit` (None for reclaimed and re-read entries: those are always checked)."""
        batch = self.analyse(shard, entries)
        self.finish_commit()
        ids = [e[0] for e in entries]
        if self._pool is None:
            outcome = shard.committer.start(ids, batch.writes, read_at)
        else:
            outcome = self._pool.submit(shard.committer.commit, ids, batch.writes, read_at).result
        self._inflight = (shard, entries, batch, outcome)
        if wait:
            self.finish_commit()

    def finish_commit(self) -> None:
        """Wait for the commit in flight; on a reclaim race, recompute without the lost entries."""
        if self._inflight is None:
            return
        shard, entries, batch, outcome = self._inflight
        self._inflight = None
        lost = outcome()
        while lost:
            log.warning("%d entries were reclaimed by another consumer; recomputing without them", len(lost))
            with self.counters.lock:
                self.counters.conflicts += len(lost)
            gone = set(lost)
            entries = [e for e in entries if e[0] not in gone]
            if not entries:
                return
            batch = self.analyse(shard, entries)
            lost = shard.committer.commit([e[0] for e in entries], batch.writes)
        self.committed(batch, len(entries))

    def _finish_commit_after_error(self) -> None:
        """After a Redis error elsewhere (the read-ahead): learn the commit in flight's outcome while its
        connection still answers, so its entries are not read again as pending ones. On a second error
        they are read again, and such batches are always checked for ownership."""
        try:
            self.finish_commit()
        except redis.RedisError as exc:
            self._inflight = None
            log.warning("the commit in flight failed too (its entries stay pending): %s", exc)

    def add_event(self, batch: Batch, ev: dict[str, str]) -> None:
        """One event's contributions to the batch (hot path: keep it lean)."""
        get = ev.get
        kind = get("kind", "stmt")
        if kind != "stmt":
            self.add_txn_end(batch, ev, kind)
            return
        if get("v", event.SCHEMA) != event.SCHEMA:
            raise event.BadEvent(f"unknown schema version {get('v')!r}")
        sql = get("sql")
        if not sql:
            raise event.BadEvent("no sql")
        norm = self.normalize.cache.get(sql) or self.normalize(sql)
        fp = norm.fp
        ruleset = self.ruleset
        plan = ruleset.plans.get(fp) or self._plan(norm)
        ts = int(get("ts") or 0)
        rows = int(get("rows") or 0)
        err = get("err", "")
        app = get("app", "")
        dur = int(get("dur_us") or 0)
        batch.stats.add(fp, get("db", ""), app, dur, rows, err, ts, get("user", ""))
        smp = batch.samples.get(fp)
        if smp is None:
            batch.samples[fp] = [(dur, batch.entry_id, ev, ts)]
        else:
            smp.append((dur, batch.entry_id, ev, ts))
        shape = plan.shape
        txn = get("txn", "autocommit")
        follow = self.follow
        if follow is not None:
            follow(batch, ev, fp, shape.op, norm.text, dur, ts, txn, app)
        if fp not in self.known_fps and fp not in batch.new_fps:
            self.describe_fp(batch, norm, shape, ts)
        window = ts // ruleset.window_us
        anomaly = batch.anomaly
        if ts:
            key = (window, plan.series)
            anomaly[key] = anomaly.get(key, 0) + 1
        self.security.inspect(batch, ev, sql, norm, shape, plan.checks, rows, ts, app)
        if not shape.parsed:
            batch.unparsed += 1
            return
        rules = plan.rules
        if err or not rules:
            return
        if txn in event.COUNTED:
            w = batch.writes
        elif txn == "open":
            sid, txid = get("sid", ""), get("txid", "")
            w = batch.writes.parked(batch.keys.txn_outcome(sid, txid), batch.keys.txn_parked(sid, txid),
                                    self.settings.txn_ttl, get("n", ""))
        else:
            return  # rolled back or prepared: not (yet) committed work
        business = ruleset.business
        matches = business.evaluate(ev, norm, shape, rules)
        if not matches:
            return
        business.write(w, matches, ev, norm, ts, batch.keys)
        for m in matches:
            if m.rows_only:
                batch.rows_only[m.rule.name] = batch.rows_only.get(m.rule.name, 0) + m.count
        if txn != "open":
            batch.matches.extend(matches)
            if self.categories.on:
                self.categories.add(batch, matches, ev, fp, ts)
            for m in matches if ts else ():
                key = (window, "biz:" + m.rule.name)
                anomaly[key] = anomaly.get(key, 0) + 1

    def add_txn_end(self, batch: Batch, ev: dict[str, str], kind: str) -> None:
        if kind != "txn_end":
            raise event.BadEvent(f"unknown kind {kind!r}")
        sid, txid, outcome = ev.get("sid"), ev.get("txid"), ev.get("txn")
        if not sid or not txid or not outcome:
            raise event.BadEvent("txn_end needs sid, txid and txn")
        batch.writes.txn_end(batch.keys.txn_outcome(sid, txid), batch.keys.txn_parked(sid, txid), outcome,
                             self.settings.txn_ttl, ev.get("undone", ""))
        if self.transactions.on:
            self.transactions.end_marker(batch, sid, txid, outcome)

    def describe_fp(self, batch: Batch, norm: Normalized, shape: Shape, ts: int) -> None:
        """First sight of a fingerprint in this process: store its text (HSETNX: first writer wins)."""
        batch.new_fps[norm.fp] = (norm, shape)
        k = batch.keys.stats_fp(norm.fp)
        w = batch.writes
        w.setnx(k, "text", norm.text)
        w.setnx(k, "op", shape.op)
        w.setnx(k, "tables", ",".join(shape.tables))
        w.setnx(k, "first_seen", str(ts))
        if not shape.parsed:
            w.setnx(k, "parse_error", shape.error)

    def _plan(self, norm: Normalized) -> Plan:
        return self.ruleset.plan(norm.fp, self.shapes.get(norm.fp, norm.text))

    def write_stats(self, batch: Batch) -> None:
        batch.stats.write(batch.writes, batch.keys, self.user_cap)
        batch.slow_sent = self.samples.write(batch.writes, batch.keys, batch.samples, int(time.time()),
                                             batch.stats.errors())
        self.transactions.write(batch)
        self.ruleset.anomaly.write(batch.writes, batch.anomaly, batch.keys)
        if batch.unparsed:
            batch.writes.hincr(batch.keys.stats_totals, "unparsed", batch.unparsed)
        if batch.bad:
            batch.writes.hincr(batch.keys.stats_totals, "bad", batch.bad)

    def committed(self, batch: Batch, n: int) -> None:
        """The batch is in Redis: now (and only now) update this process's metrics and caches."""
        self.stats.merge(batch.stats)
        self.samples.committed(batch.slow_sent)
        self.transactions.committed(batch)
        self.categories.committed(batch)
        if self.planner is not None:
            self.offer_plans(batch)
        for fp, (norm, shape) in batch.new_fps.items():
            self.known_fps.add(fp)
            self.stats.describe_fp(fp, shape.op, norm.text)
        findings = self.security.committed(batch)
        if batch.writes.undescribed:
            self.describe_again(batch, batch.writes.undescribed)
        if batch.trimmed:
            self.count_trimmed(batch.trimmed)
        if batch.writes.expire_ats:
            self.ruleset.business.remember(batch.writes.expire_ats, time.time())
        if len(self.known_fps) > 200000:
            self.known_fps.clear()
        if batch.matches:
            self.business_tallies.merge(batch.matches)
            self.business_days.changed()
        c = self.counters
        settings = self.settings
        if n and batch.statements:  # read about `batch` statements at a time, whatever an entry holds
            self.per_entry = (self.per_entry + batch.statements / n) / 2
            self.count = max(1, min(settings.batch, round(settings.batch / self.per_entry)))
        with c.lock:
            c.entries += n
            c.statements += batch.statements
            c.batches += 1
            c.unparsed += batch.unparsed
            c.bad += batch.bad
            c.failed += batch.failed
            c.shapes = len(self.shapes.shapes)
            for key in findings:
                c.findings[key] = c.findings.get(key, 0) + 1
            for rule, rows in batch.rows_only.items():
                c.rows_only[rule] = c.rows_only.get(rule, 0) + rows

    def offer_plans(self, batch: Batch) -> None:
        """Each fingerprint's slowest sample of the batch, to the planner (which decides, off the loop)."""
        plans = self.ruleset.plans
        planner = self.planner
        assert planner is not None
        for fp, items in batch.samples.items():
            slowest = max(items, key=itemgetter(0))
            if slowest[0] < planner.min_us:
                continue
            plan = plans.get(fp)
            op = plan.shape.op if plan is not None else ""
            planner.offer(batch.keys, fp, op, slowest[0], (slowest[1], slowest[2]))

    def count_trimmed(self, n: int) -> None:
        """Count and say delivered entries that the stream cap removed before they were analysed."""
        with self.counters.lock:
            self.counters.trimmed_pending += n
        log.warning("%d stream entries delivered to group %s were trimmed from the stream (stream_maxlen) before "
                    "they were analysed: their statements are not counted anywhere", n, self.group)

    def describe_again(self, batch: Batch, fps: list[str]) -> None:
        """Fingerprints a sweep evicted while this process knew them (the commit found their description
        gone): describe them again in their next batch, and ask again whether the shape is new to each
        application (its `seen` entry went with them)."""
        gone = set(fps)
        self.known_fps -= gone
        for fp, _db, app, _user in batch.stats.data:
            if fp in gone:
                self.security.forget_pair(app, fp)

    # ── periodic: lag, heartbeat, anomalies, sweeps ─────────────────────────────────────────────
    def periodic(self) -> None:
        upkeep = self.upkeep
        upkeep.measure_lag()
        upkeep.heartbeat()
        now = time.monotonic()
        if now >= self._next_consumer_check:
            self._next_consumer_check = now + 300
            upkeep.forget_idle_consumers()
        if now >= self._next_sweep:
            self.sweep()
            self._next_sweep = time.monotonic() + (1.0 if self.sweeper.more else self.settings.sweep_seconds)
        if self.ruleset.file.anomaly.enabled:
            c = self.counters
            caught_up = c.pending == 0 and c.lag_entries == 0
            n = self.evaluator.run(now_us=int(time.time() * 1e6) if caught_up else None)
            if n:
                with self.counters.lock:
                    self.counters.anomaly_alerts = self.evaluator.alerts

    def sweep(self) -> tuple[list[str], int]:
        """Apply the performance summary's cap and the business days' retention (retention.py); what this
        worker evicted leaves its own memos too, so a fingerprint that comes back is described again."""
        evicted, days = self.sweeper.run()
        drilled, shapes = self.drill.run()
        self.samples.forget(set(drilled))
        self.transactions.forget(set(shapes))
        self.ruleset.business.forget_expired(time.time())
        if evicted:
            gone = set(evicted)
            self.known_fps -= gone
            self.security.forget(gone)
        for entry in self.sweeper.entries:  # fp|db|app: the application may have lost the shape from `seen`
            fp, _, member = entry.partition("|")
            self.security.forget_pair(member.partition("|")[2], fp)
        with self.counters.lock:
            self.counters.evicted_fingerprints += len(evicted)
            self.counters.evicted_entries += len(self.sweeper.entries)
            self.counters.expired_days += days
        return evicted, days

    # ── health ──────────────────────────────────────────────────────────────────────────────────
    def health(self) -> str | None:
        """None when the loop is alive (it ticks at least every `block` seconds)."""
        quiet = time.monotonic() - self.last_tick
        limit = max(60.0, self.settings.block * 10)
        if quiet > limit:
            return f"loop stalled for {quiet:.0f}s"
        return None

    def ready(self) -> str | None:
        return self.last_error
