"""Bounded Redis growth: per-day business keys expire (end of day + business_retention_days) and leave the
days index; the performance summary keeps at most stats_max_fingerprints fingerprints per shard, evicting
the least recently seen with everything that names them, safely with several workers and with shards."""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from fasterdata.analyzers import merged, top
from fasterdata.analyzers.fingerprint import Normalizer
from fasterdata.analyzers.keys import Keys, shard_keys
from fasterdata.analyzers.worker import Worker
from fasterdata.config.analyzer_settings import AnalyzerSettings
from tests.analyzers.kit import samples
from tests.kit.analysis import biz, drain, group_done, make_worker, rules_file
from tests.kit.eventwriter import Events
from tests.kit.metrics import http_get
from tests.kit.polling import wait_until
from tests.kit.services import REDIS_URL

DAY_US = 86_400_000_000
INSERT = "INSERT INTO orders (id, customer_id, region, total) VALUES ($1, $2, $3, $4)"
BULK = "INSERT INTO orders (id, customer_id, region, total) SELECT id, 1, 'eu', 1 FROM staging"
ITEM = "INSERT INTO order_items (order_id, sku, quantity) VALUES ($1, $2, $3)"
ORDER_RULES = ("sales", "orders_placed", "order_count", "biggest", "smallest", "customers")  # kit.RULES on orders
NEW_FP = {"new_fingerprint": {"enabled": True, "learn_seconds": 0}}


def day_of(ts_us: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts_us // 1_000_000))


def expiry(ts_us: int, days: int) -> int:
    """End of the event's UTC day plus the retention, in epoch seconds."""
    return (ts_us // DAY_US + 1 + days) * 86400


# ── business aggregates ─────────────────────────────────────────────────────────────────────────────

def test_every_day_key_expires_at_day_end_plus_retention(r: redis.Redis, prefix: str, events: Events) -> None:
    today = events.ts
    yesterday = today - DAY_US
    with events:
        events.stmt(INSERT, [1, 7, "eu", "10.00"], tag="INSERT", rows=1)  # hashes (sum … max) and a distinct set
        events.stmt(BULK, tag="INSERT", rows=5)  # rows_only
        # a long transaction sent early: its writes are parked, then replayed by the marker; the item's day is
        # yesterday, so the replay creates that key
        events.stmt(ITEM, [1, "A", 2], tag="INSERT", rows=1, txn="open", sid="long", txid=1, ts=yesterday, n=1)
    raw = redis.Redis.from_url(REDIS_URL)
    w = make_worker(prefix, business_retention_days=30)
    drain(w)
    k = Keys(prefix)
    parked = raw.lrange(k.txn_parked("long", "1"), 0, -1)
    raw.close()
    events.txn_end("long", 1, "committed")
    drain(w)
    d = day_of(today)
    keys = [k.biz(rule, d) for rule in ORDER_RULES] + [k.biz_set("customers", d, "-"), k.biz_rows_only("sales", d)]
    assert all(r.exists(key) for key in keys)
    assert {key: r.expiretime(key) for key in keys} == {key: expiry(today, 30) for key in keys}
    replayed = k.biz("items_sold", day_of(yesterday))
    assert r.hgetall(replayed) == {"sku=A": "2000000"}
    # the replay sets the seconds left when the statement was parked: the same moment, or a little later
    assert expiry(yesterday, 30) <= r.expiretime(replayed) <= expiry(yesterday, 30) + 3600
    # what is parked is replayed by whichever release's script handles the marker: only ops every release
    # knows (msgpack strings: relative `E`, never `EA`)
    assert parked and all(b"\xa2EA" not in blob and b"\xa1E" in blob for blob in parked)
    for rule in ORDER_RULES:
        assert r.ttl(k.biz_days(rule)) == -1  # the index itself stays; its expired days are swept out

    # the expiry goes out with the first write of a key in a process, not with every statement
    for key in keys:
        r.persist(key)
    events.stmt(INSERT, [2, 8, "eu", "1.00"], tag="INSERT", rows=1)
    drain(w)
    assert [r.ttl(key) for key in keys] == [-1] * len(keys)
    events.stmt(INSERT, [3, 9, "eu", "1.00"], tag="INSERT", rows=1)
    events.stmt(BULK, tag="INSERT", rows=1)
    drain(make_worker(prefix, consumer="w2", business_retention_days=30))  # a new process sends it again
    assert {key: r.expiretime(key) for key in keys} == {key: expiry(today, 30) for key in keys}


def test_days_past_retention_expire_and_leave_the_index(r: redis.Redis, prefix: str, events: Events) -> None:
    old = events.ts - 5 * DAY_US
    with events:
        events.stmt(INSERT, [1, 7, "eu", "10.00"], tag="INSERT", rows=1, ts=old)
        events.stmt(INSERT, [2, 8, "us", "5.00"], tag="INSERT", rows=1)
    w = make_worker(prefix, business_retention_days=2)
    drain(w)
    k = Keys(prefix)
    gone, today = day_of(old), day_of(events.ts)
    assert not r.exists(k.biz("sales", gone), k.biz_set("customers", gone, "-"))  # its time had come
    assert r.smembers(k.biz_days("sales")) == {gone, today}
    assert biz(r, prefix, "sales") == {"region=us": 500}  # readers take a listed day without data as empty
    assert w.sweep() == ([], len(ORDER_RULES))
    assert all(r.smembers(k.biz_days(rule)) == {today} for rule in ORDER_RULES)
    assert biz(r, prefix, "sales") == {"region=us": 500}
    assert w.counters.expired_days == len(ORDER_RULES)
    assert w.sweep() == ([], 0)


# ── the performance summary's cap ───────────────────────────────────────────────────────────────────

def shape(i: int) -> str:
    return f"SELECT * FROM tenant_{i}.items WHERE id = $1"


FP = Normalizer(1000)


def fp_of(i: int) -> str:
    return FP(shape(i)).fp


def summary(r: redis.Redis, k: Keys) -> dict[str, set[str]]:
    """Fingerprints named by each kind of summary key of one shard."""
    def fps(pattern: str) -> set[str]:
        return {name.rsplit(":", 1)[1].split("|")[0] for name in r.scan_iter(pattern, count=1000)}

    tops = set()
    for by in ("time", "calls", "errors"):
        tops |= {m.split("|")[0] for m in r.zrange(k.stats_top(by), 0, -1)}
    seen = set()
    for name in r.scan_iter(k.seen("*"), count=1000):
        if name != k.seen_since:
            seen |= r.smembers(name)
    return {"last": set(r.zrange(k.stats_last, 0, -1)), "q": fps(k.stats_q("*")), "fp": fps(k.stats_fp("*")),
            "members": fps(k.stats_members("*")), "top": tops, "seen": seen}


def consistent(r: redis.Redis, k: Keys) -> None:
    """Whatever exists is indexed: each stats:q member is in its fingerprint's member set and the fingerprint in
    stats:last; each top member has its counters; each indexed fingerprint has its description."""
    s = summary(r, k)
    for name in r.scan_iter(k.stats_q("*"), count=1000):
        fp, rest = name[len(k.stats_q("")):].split("|", 1)
        assert fp in s["last"] and r.sismember(k.stats_members(fp), rest), name
    for by in ("time", "calls", "errors"):
        for member in r.zrange(k.stats_top(by), 0, -1):
            assert r.exists(k.stats_q(member)), member
    assert s["members"] == s["last"] and s["fp"] == s["last"] and s["q"] == s["last"]
    assert s["seen"] <= s["last"]


def test_the_cap_keeps_the_most_recently_seen(r: redis.Redis, prefix: str, events: Events) -> None:
    cap, n = 10, 40
    base = events.ts - 3600 * 1_000_000
    with events:
        for i in range(n):
            ts = base + i * 2_000_000  # a fingerprint every two seconds: the eviction order is known
            events.stmt(shape(i), [i], tag="SELECT", rows=1, app="shop" if i % 2 else "admin", ts=ts, sid=f"s{i}")
            if i % 5 == 0:  # a second member (another db and application) of the same fingerprint
                events.stmt(shape(i), [i], tag="SELECT", rows=1, app="report", db="dw", ts=ts + 1, err="57014")
        events.stmt(shape(0), [0], tag="SELECT", rows=1, app="admin", ts=base + n * 2_000_000)  # the oldest, again
    rules = rules_file(security=NEW_FP)
    w = make_worker(prefix, rules, stats_max_fingerprints=cap)
    drain(w)
    k = Keys(prefix)
    assert len(summary(r, k)["q"]) == n  # no sweep yet: over the cap until the next one
    evicted, _ = w.sweep()
    kept = {fp_of(0)} | {fp_of(i) for i in range(n - cap + 1, n)}
    after = summary(r, k)
    assert (after["q"], after["fp"], after["top"], after["seen"]) == (kept, kept, kept, kept)
    assert set(evicted) == {fp_of(i) for i in range(n)} - kept and len(evicted) == n - cap
    assert after["last"] == after["members"] == kept
    consistent(r, k)
    assert w.counters.evicted_fingerprints == n - cap
    assert merged.stats_totals(r, [k])["calls"] == n + n // 5 + 1  # totals are not per fingerprint: kept whole
    snap = top.snapshot(r, prefix, n=50)
    assert {row["fp"] for row in snap["by_calls"]} == kept
    assert all(row["text"].startswith("SELECT * FROM tenant_") and row["calls"] for row in snap["by_calls"])
    assert {(row["fp"], row["app"], row["errors"]) for row in snap["by_errors"]} == {
        (fp_of(0), "report", 1), (fp_of(35), "report", 1)}  # the failed members of what was kept
    assert w.sweep() == ([], 0)  # at the cap: nothing more to do


def test_an_evicted_fingerprint_comes_back_described_and_new(r: redis.Redis, prefix: str, events: Events) -> None:
    """Evicted by another worker's sweep while this worker still knew it: the commit that finds its description
    gone makes the worker describe it again, and its `seen` entry being gone, it alerts as new again."""
    base = events.ts - 3600 * 1_000_000
    with events:
        for i in range(6):
            events.stmt(shape(i), [i], tag="SELECT", rows=1, ts=base + i * 2_000_000)
    rules = rules_file(security=NEW_FP)
    w = make_worker(prefix, rules, stats_max_fingerprints=3)
    drain(w)
    k = Keys(prefix)
    sweeper = make_worker(prefix, rules, consumer="sweeper", stats_max_fingerprints=3)
    assert sorted(sweeper.sweep()[0]) == sorted(fp_of(i) for i in range(3))
    assert not r.exists(k.stats_fp(fp_of(1)))
    for _ in range(2):  # the first batch finds the description missing, the next one writes it
        events.stmt(shape(1), [1], tag="SELECT", rows=1)
        drain(w)
    assert r.hget(k.stats_fp(fp_of(1)), "text") == "SELECT * FROM tenant_1.items WHERE id = $1"
    assert r.hget(k.stats_q(f"{fp_of(1)}|shop|shop"), "calls") == "2"  # counted from zero again
    new = [f["fp"] for _, f in r.xrange(k.alerts) if f["rule"] == "new_fingerprint"]
    assert sorted(new) == sorted([fp_of(i) for i in range(6)] + [fp_of(1)])
    consistent(r, k)


def test_top_skips_a_member_evicted_while_it_reads(r: redis.Redis, prefix: str, events: Events) -> None:
    with events:
        for i in range(3):
            events.stmt(shape(i), [i], tag="SELECT", rows=1)
    drain(make_worker(prefix))
    k = Keys(prefix)
    r.delete(k.stats_q(f"{fp_of(1)}|shop|shop"), k.stats_fp(fp_of(1)))  # as if evicted after the top set was read
    snap = top.snapshot(r, prefix)
    assert sorted(row["fp"] for row in snap["by_calls"]) == sorted([fp_of(0), fp_of(2)])
    assert top.render(snap)


def test_retention_days_evicts_what_was_not_seen_for_that_long(r: redis.Redis, prefix: str, events: Events) -> None:
    with events:
        events.stmt(shape(1), [1], tag="SELECT", rows=1, ts=events.ts - 3 * DAY_US)
        events.stmt(shape(2), [2], tag="SELECT", rows=1, ts=events.ts - DAY_US // 2)
    w = make_worker(prefix, stats_max_fingerprints=0, stats_retention_days=2)
    drain(w)
    evicted, _ = w.sweep()
    assert summary(r, Keys(prefix))["q"] == {fp_of(2)}
    assert evicted == [fp_of(1)]


def test_two_workers_sweeping_at_once(r: redis.Redis, prefix: str, packed_events: Events) -> None:
    """Two workers commit and sweep concurrently while fingerprints keep arriving: each fingerprint is evicted
    once, the cap holds after the last sweep, the newest are the ones kept, and nothing is left half-evicted."""
    cap, n = 25, 300
    base = packed_events.ts - 3600 * 1_000_000

    def produce(lo: int, hi: int) -> None:
        with packed_events:
            for i in range(lo, hi):
                packed_events.stmt(shape(i), [i], tag="SELECT", rows=1, ts=base + i * 1_000_000, sid=f"s{i % 7}",
                                   app=f"app{i % 3}")

    produce(0, n // 2)
    workers = [make_worker(prefix, consumer=name, stats_max_fingerprints=cap, batch=20) for name in ("a", "b")]
    evicted: dict[str, list[str]] = {"a": [], "b": []}
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def run(w: Worker) -> None:
        try:
            start.wait()
            for _ in range(400):
                w.run_once()
                w.quiesce()
                evicted[w.consumer] += w.sweep()[0]
                if group_done(w.redis, w.streams.names) and len(produced) == 2:
                    break
            start.wait()  # both finished committing: a last sweep, at the same moment
            evicted[w.consumer] += w.sweep()[0]
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            start.abort()

    produced = [1]
    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    start.wait()
    produce(n // 2, n)
    produced.append(2)
    start.wait()
    for t in threads:
        t.join(120)
    assert not errors, errors
    k = Keys(prefix)
    assert summary(r, k)["q"] == {fp_of(i) for i in range(n - cap, n)}
    consistent(r, k)
    every = evicted["a"] + evicted["b"]
    assert len(every) == len(set(every)) == n - cap  # each evicted once (counted once)
    assert evicted["a"] and evicted["b"], "one worker did every eviction: the test proves less than it says"
    assert sum(w.counters.evicted_fingerprints for w in workers) == n - cap
    assert merged.stats_totals(r, [k])["calls"] == n


def test_application_names_that_change_per_process_are_capped(r: redis.Redis, prefix: str,
                                                               events: Events) -> None:
    """A steady fingerprint from applications named per process (`worker-<n>`): the fingerprint cap never bites,
    the entry cap keeps the newest fp|db|app entries, and an application gone whole leaves `seen` and its
    first-seen mark; a fingerprint left with no entry goes whole."""
    cap = 6
    base = events.ts - 3600 * 1_000_000
    with events:
        events.stmt(shape(99), [1], tag="SELECT", rows=1, app="batch", ts=base - 10_000_000)  # only ever from batch
        for i in range(20):
            ts = base + i * 1_000_000
            events.stmt(shape(0), [i], tag="SELECT", rows=1, app=f"worker-{i}", ts=ts, sid=f"s{i}")
            events.stmt(shape(1), [i], tag="SELECT", rows=1, app=f"worker-{i}", ts=ts, sid=f"s{i}")
        events.stmt(shape(0), [0], tag="SELECT", rows=1, app="shop", ts=base + 30_000_000)
    rules = rules_file(security=NEW_FP)
    w = make_worker(prefix, rules, stats_max_entries=cap)
    drain(w)
    k = Keys(prefix)
    assert r.zcard(k.stats_entries) == 2 * 20 + 2
    evicted, _ = w.sweep()
    assert evicted == []  # three fingerprints: far below the fingerprint cap
    kept = {f"{fp_of(0)}|shop|shop"} | {f"{fp_of(j)}|shop|worker-{i}" for i in (17, 18, 19) for j in (0, 1)}
    kept = set(sorted(kept, key=lambda e: (e.endswith("|shop"), e))[-cap:])  # the newest six
    assert set(r.zrange(k.stats_entries, 0, -1)) == kept
    assert {name[len(k.stats_q("")):] for name in r.scan_iter(k.stats_q("*"))} == kept
    for by in ("time", "calls"):
        assert set(r.zrange(k.stats_top(by), 0, -1)) == kept
    assert len(w.sweeper.entries) == 2 * 20 + 2 - cap and w.counters.evicted_entries == len(w.sweeper.entries)
    apps = {e.rsplit("|", 1)[1] for e in kept}
    assert {name[len(k.seen("")):] for name in r.scan_iter(k.seen("*")) if name != k.seen_since} == apps
    assert set(r.hkeys(k.seen_since)) == apps
    assert not r.exists(k.stats_fp(fp_of(99))) and r.zscore(k.stats_last, fp_of(99)) is None  # no entry left
    consistent(r, k)
    assert w.sweep() == ([], 0) and w.sweeper.entries == []  # at the cap: nothing more to do

    # an evicted application that comes back is learnt anew, its shape counted from zero
    events.stmt(shape(0), [5], tag="SELECT", rows=1, app="worker-3")
    drain(w)
    assert r.hget(k.stats_q(f"{fp_of(0)}|shop|worker-3"), "calls") == "1"
    assert r.sismember(k.seen("worker-3"), fp_of(0)) and r.hexists(k.seen_since, "worker-3")
    consistent(r, k)


# ── shards: one slot per eviction ───────────────────────────────────────────────────────────────────

SHARDS = 3


def populate_tenants(events: Events, n: int, base: int) -> None:
    with events:
        for i in range(n):
            events.stmt(shape(i), [i], tag="SELECT", rows=1, ts=base + i * 1_000_000, sid=f"s{i % 9}",
                        app=f"app{i % 2}")


def test_sharded_sweep_caps_each_shard_in_its_slot(r: redis.Redis, prefix: str) -> None:
    cap, n = 8, 90
    events = Events(r, prefix, SHARDS)
    populate_tenants(events, n, events.ts - 3600 * 1_000_000)
    w = make_worker(prefix, rules_file(security=NEW_FP), stream_shards=SHARDS, stats_max_fingerprints=cap)
    drain(w)
    ks = shard_keys(prefix, SHARDS)
    per = [summary(r, k)["q"] for k in ks]
    assert all(len(fps) > cap for fps in per)
    evicted, _ = w.sweep()
    for k, before in zip(ks, per, strict=True):
        kept = summary(r, k)["q"]
        assert len(kept) == cap and kept <= before
        consistent(r, k)
    assert len(evicted) == sum(len(p) for p in per) - SHARDS * cap
    for name in r.scan_iter(f"{prefix}:*", count=1000):  # every summary key still carries its shard's tag
        rest = name[len(prefix) + 1:]
        if rest not in ("workers", "biz:rules", "anomaly:lock", "claim_floor:analyzers"):
            m = re.search(r":\{(\d+)\}", rest)
            assert m and key_slot(name.encode()) == key_slot(ks[int(m.group(1))].statements.encode()), name
    snap = top.snapshot(r, prefix, n=100, shards=SHARDS)
    assert {row["fp"] for row in snap["by_calls"]} == set().union(*(summary(r, k)["last"] for k in ks))
    assert all(row["text"] for row in snap["by_calls"])


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    if shutil.which("redis-cli") is None or shutil.which("redis-server") is None:
        pytest.skip("redis-server/redis-cli are not installed")
    from tests.kit.rediscluster import Cluster
    with Cluster(tmp_path_factory.mktemp("rediscluster")) as cluster:
        yield cluster


def test_sweeps_on_a_redis_cluster(redis_cluster, tmp_path: Path) -> None:
    """A cluster refuses a script whose keys span slots: commits and evictions each stay in one shard's slot."""
    prefix = f"fdret{int(time.time())}"
    rc = redis_cluster.client()
    try:
        events = Events(rc, prefix, SHARDS)
        base = events.ts - 3600 * 1_000_000
        for i in range(60):
            events.stmt(shape(i), [i], tag="SELECT", rows=1, ts=base + i * 1_000_000, sid=f"s{i % 9}")
            events.stmt(INSERT, [i, i, "eu", "1.00"], tag="INSERT", rows=1, ts=base - 9 * DAY_US, sid=f"s{i % 9}")
        ks = shard_keys(prefix, SHARDS)
        assert len({rc.get_node_from_key(k.statements).port for k in ks}) > 1, "one node holds every shard"
        settings = AnalyzerSettings(redis=f"redis://127.0.0.1:{redis_cluster.ports[0]}/0", prefix=prefix, metrics="",
                                    consumer="c1", block=0.05, stream_shards=SHARDS, stats_max_fingerprints=5,
                                    stats_max_entries=4, business_retention_days=3)
        w = Worker(settings, rules_file(security=NEW_FP))
        w.setup()
        drain(w)
        before = [len(summary(rc, k)["q"]) for k in ks]
        assert all(n > 5 for n in before)
        evicted, days = w.sweep()
        # five fingerprints kept per shard (one entry each), then the entry cap takes the oldest of them too
        assert [len(summary(rc, k)["q"]) for k in ks] == [4] * SHARDS
        assert len(w.sweeper.entries) == SHARDS
        assert days == len(ORDER_RULES) * SHARDS  # the old day, from every shard's index
        for k in ks:
            consistent(rc, k)
        assert len(evicted) == sum(before) - 5 * SHARDS
        assert all(not rc.exists(k.stats_fp(fp)) for k in ks for fp in evicted)
        snap = top.snapshot(rc, prefix, n=50, shards=SHARDS)
        assert snap["by_calls"] and all(row["text"] for row in snap["by_calls"])
    finally:
        for node in range(len(redis_cluster.ports)):
            with redis_cluster.node(node) as r:
                for name in r.scan_iter(f"{prefix}*"):
                    r.delete(name)
        rc.close()


# ── /metrics and the log, from a worker run as operators run it ─────────────────────────────────────

def test_evictions_are_counted_in_metrics_and_logged(r: redis.Redis, prefix: str, events: Events,
                                                     start_worker) -> None:
    base = events.ts - 3600 * 1_000_000
    with events:
        for i in range(15):
            events.stmt(shape(i), [i], tag="SELECT", rows=1, ts=base + i * 1_000_000)
    w = start_worker("m1", env={"FASTERDATA_STATS_MAX_FINGERPRINTS": "5", "FASTERDATA_SWEEP_SECONDS": "0.2"})

    def evicted() -> float | None:
        try:
            status, text = http_get(w.metrics_port)
        except OSError:
            return None  # not listening yet
        got = samples(text).get(("fasterdata_analyzer_evicted_fingerprints_total", ())) if status == 200 else None
        return got if got == 10 else None

    wait_until(evicted, what=f"10 evictions in /metrics\n{w.log()}")
    assert re.search(r"sweep: evicted \d+ fingerprint", w.log())
    assert len(summary(r, Keys(prefix))["q"]) == 5
