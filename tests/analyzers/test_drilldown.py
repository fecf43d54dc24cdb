"""Drill-down data stays bounded and right: samples per fingerprint, users per fingerprint, the drill sweep after
the fingerprint cap, the shape cap, N+1 within a session, new categories after their learning time, and
the user label's cap on Prometheus."""

from __future__ import annotations

import json
import time

import redis

from fasterdata.analyzers import readmodel as rm
from fasterdata.analyzers.stats import BatchStats, StatsCollector
from tests.kit.analysis import drain, make_worker
from tests.kit.eventwriter import Events

ITEMS = "SELECT * FROM items WHERE id = $1"
ORDER = "INSERT INTO orders (id, customer_id, region, total) VALUES ($1, $2, $3, $4)"


def _fp(r: redis.Redis, prefix: str, text: str) -> str:
    return next(row["fp"] for row in rm.top_statements(r, rm.keys_for(prefix), limit=100, fold=False)["rows"]
                if row["text"] == text)


def test_samples_keep_the_slowest_and_the_newest_few_across_batches(r: redis.Redis, prefix: str,
                                                                     events: Events) -> None:
    worker = make_worker(prefix, samples=3, samples_every=0)
    try:
        durations = [500, 90, 7000, 300, 6500, 20, 800, 40]
        with events:
            for i, dur in enumerate(durations):
                events.stmt(ITEMS, [i], tag="SELECT", rows=1, dur_us=dur)
        drain(worker)
        with events:  # a second batch: one slower than all, the rest faster than the slowest three
            for i, dur in enumerate([10, 9000, 15], start=len(durations)):
                events.stmt(ITEMS, [i], tag="SELECT", rows=1, dur_us=dur)
        drain(worker)
    finally:
        worker.close()
    ks = rm.keys_for(prefix)
    fp = _fp(r, prefix, ITEMS)
    got = rm.samples(r, ks, fp)
    assert [s["dur_us"] for s in got["slowest"]] == [9000, 7000, 6500]
    assert [json.loads(s["params"]) for s in got["recent"]] == [[10], [9], [8]]
    assert r.zcard(ks[0].samples_slow(fp)) == 3 and r.llen(ks[0].samples_recent(fp)) == 3
    assert all(s["id"] in {e[0] for e in r.xrange(ks[0].statements)} for s in got["slowest"])


def test_users_beyond_the_cap_are_other(r: redis.Redis, prefix: str, events: Events) -> None:
    with events:
        for user in ("ann", "ben", "cat", "dan"):
            events.stmt(ITEMS, [1], tag="SELECT", rows=1, user=user, dur_us=100)
    worker = make_worker(prefix, stats_max_users=2)
    try:
        drain(worker)
    finally:
        worker.close()
    users = {(u["app"], u["user"]): u["calls"] for u in rm.users_of(r, rm.keys_for(prefix), _fp(r, prefix, ITEMS))}
    assert users == {("shop", "ann"): 1, ("shop", "ben"): 1, ("other", "other"): 2}


def test_the_drill_sweep_follows_the_fingerprint_cap(r: redis.Redis, prefix: str, events: Events) -> None:
    old = int((time.time() - 3600) * 1e6)
    with events:
        for i in range(4):
            events.stmt(f"SELECT * FROM t{i} WHERE id = $1", [i], tag="SELECT", rows=1, user=f"u{i}",
                        ts=old + i * 1_000_000 if i < 2 else None)
    worker = make_worker(prefix, stats_max_fingerprints=2)
    try:
        drain(worker)
        ks = rm.keys_for(prefix)
        fps = {i: _fp(r, prefix, f"SELECT * FROM t{i} WHERE id = $1") for i in range(4)}
        assert all(r.exists(ks[0].samples_recent(fp), ks[0].stats_users(fp)) == 2 for fp in fps.values())
        evicted, _ = worker.sweep()
        assert set(evicted) == {fps[0], fps[1]}
    finally:
        worker.close()
    for i, fp in fps.items():
        kept = i >= 2
        assert bool(r.exists(ks[0].samples_recent(fp))) == kept and bool(r.exists(ks[0].samples_slow(fp))) == kept
        assert bool(r.exists(ks[0].stats_users(fp))) == kept
        assert (r.zscore(ks[0].drill_index, fp) is not None) == kept
        assert (rm.statement(r, ks, fp) is not None) == kept


def test_shapes_beyond_their_cap_are_evicted_with_their_links(r: redis.Redis, prefix: str, events: Events) -> None:
    with events:
        for t in range(12):
            events.stmt("BEGIN", tag="BEGIN", txn="committed", txid=t + 1, ts=int((time.time() - 100 + t) * 1e6))
            events.stmt(f"SELECT * FROM s{t} WHERE id = $1", [t], tag="SELECT", rows=1, txn="committed", txid=t + 1,
                        ts=int((time.time() - 100 + t) * 1e6) + 10)
            events.stmt("COMMIT", tag="COMMIT", txn="committed", txid=t + 1, ts=int((time.time() - 100 + t) * 1e6) + 20)
    worker = make_worker(prefix, txn_shapes_max=10)
    try:
        drain(worker)
        ks = rm.keys_for(prefix)
        assert len(rm.shapes(r, ks)) == 12
        worker.sweep()
    finally:
        worker.close()
    left = rm.shapes(r, ks)
    assert len(left) == 10 and r.zcard(ks[0].txshapes) == 10
    first, second = (_fp(r, prefix, f"SELECT * FROM s{t} WHERE id = $1") for t in (0, 1))
    assert not r.exists(ks[0].txshapes_of(first)) and not r.exists(ks[0].txshapes_of(second))
    kept = _fp(r, prefix, "SELECT * FROM s11 WHERE id = $1")
    assert [s["fps"][1] for s in rm.statement(r, ks, kept)["shapes"]] == [kept]
    begin = _fp(r, prefix, "BEGIN")
    assert r.scard(ks[0].txshapes_of(begin)) == 10  # BEGIN is in every shape left


def test_n_plus_one_in_one_session_outside_transactions(r: redis.Redis, prefix: str, events: Events) -> None:
    with events:
        for i in range(12):
            events.stmt(ITEMS, [i], tag="SELECT", rows=1, sid="loop")
        for _ in range(12):
            events.stmt(ORDER.replace("orders", "carts"), [1, 1, "eu", "1.00"], tag="INSERT", rows=1, sid="same")
    worker = make_worker(prefix, n_plus_one=10, n_plus_one_window=5)
    try:
        drain(worker)
    finally:
        worker.close()
    [alert] = rm.alerts(r, rm.keys_for(prefix), kind="n_plus_one")
    assert alert["fp"] == _fp(r, prefix, ITEMS) and alert["sid"] == "loop" and alert["count"] == "10"
    assert "outside a transaction" in alert["evidence"] and alert["shape"] == ""


def test_new_categories_alert_after_the_learning_time(r: redis.Redis, prefix: str, events: Events) -> None:
    with events:
        for i, region in enumerate(["eu", "us", "eu"]):
            events.stmt(ORDER, [i, i, region, "10.00"], tag="INSERT", rows=1)
    worker = make_worker(prefix, new_category_learn_seconds=600)
    try:
        drain(worker)
        ks = rm.keys_for(prefix)
        assert rm.alerts(r, ks, kind="new_category") == []  # learnt
        assert r.smembers(ks[0].biz_labels("sales")) == {"region=eu", "region=us"}
        since = int(r.hget(ks[0].biz_labels_since, "sales"))
        r.hset(ks[0].biz_labels_since, "sales", since - 601)  # as if the rule had been learning for long
        with events:
            for i, region in enumerate(["eu", "ap", "ap", "us"], start=10):
                events.stmt(ORDER, [i, i, region, "10.00"], tag="INSERT", rows=1)
        drain(worker)
        assert worker.counters.findings.get(("new_category", "info")) == 1
    finally:
        worker.close()
    [alert] = rm.alerts(r, ks, kind="new_category")
    assert (alert["metric"], alert["label"], alert["value"]) == ("sales", "region", "ap")
    assert rm.alert_counts(r, ks)["new_category"] == 1


def test_prometheus_users_are_capped() -> None:
    coll = StatsCollector(top_k=5, top_users=1)
    batch = BatchStats()
    batch.add("a", "db", "app", dur_us=1000, rows=1, err="", ts=1, user="heavy")
    for i in range(5):
        batch.add("a", "db", "app", dur_us=10, rows=1, err="", ts=1, user=f"tenant{i}")
    coll.merge(batch)
    calls = {s.labels["user"]: int(s.value) for fam in coll.collect() for s in fam.samples
             if s.name == "fasterdata_statements_total"}
    assert calls == {"heavy": 1, "other": 5}


def test_a_series_slot_starts_again_for_a_new_minute(r: redis.Redis, prefix: str) -> None:
    from fasterdata.analyzers.atomic import Committer, Writes
    stream = f"{prefix}:stream"
    r.xgroup_create(stream, "g", id="0", mkstream=True)
    key = f"{prefix}:ts"
    for minute, calls in ((100, 2), (100, 3), (100 + 1440, 1)):
        w = Writes()
        w.add_op(["TS", key, "1440", str(minute), str(calls), str(calls * 100), "1"])
        assert Committer(r, stream, "g", "c").commit([], w) == []
        if minute == 100 and calls == 3:
            assert r.hget(key, "100") == "100:5:500:2"
    assert r.hgetall(key) == {"100": "1540:1:100:1"}


def test_recent_samples_are_written_at_most_every_samples_every() -> None:
    from fasterdata.analyzers.atomic import Writes
    from fasterdata.analyzers.keys import Keys
    from fasterdata.analyzers.samples import Samples
    now = [100.0]
    samples = Samples(2, every=1.0, clock=lambda: now[0])
    items = [(10 + i, f"1-{i}", {"sql": "SELECT 1", "ts": str(i)}, i) for i in range(3)]

    def codes(batch: list) -> list[str]:
        w = Writes()
        samples.committed(samples.write(w, Keys("p"), {"fp": batch}, 1))
        return [op for op in w.ordered if op in ("ZKEEP", "LKEEP")]
    assert codes(items) == ["ZKEEP", "LKEEP"]
    faster = [(1, "2-0", {"sql": "SELECT 1", "ts": "9"}, 9)]
    now[0] += 0.5
    assert codes(faster) == []  # nothing slower, and the recent ones were written half a second ago
    now[0] += 0.6
    assert codes(faster) == ["LKEEP"]


def test_a_user_row_adds_up_and_keeps_its_maximum(r: redis.Redis, prefix: str) -> None:
    from fasterdata.analyzers.atomic import Committer, Writes
    stream = f"{prefix}:stream"
    r.xgroup_create(stream, "g", id="0", mkstream=True)
    for calls, us, rows, errors, top in ((2, 300, 2, 0, 200), (1, 5000, 0, 1, 5000), (3, 30, 3, 0, 10)):
        w = Writes()
        w.add_op(("UROW", f"{prefix}:u", "shop|web|ann", str(calls), str(us), str(rows), str(errors), str(top)))
        assert Committer(r, stream, "g", "c").commit([], w) == []
    assert r.hgetall(f"{prefix}:u") == {"shop|web|ann": "6:5330:5:1:5000"}


def test_a_transaction_sent_early_is_folded_at_its_end_marker(r: redis.Redis, prefix: str, events: Events) -> None:
    with events:
        events.stmt("BEGIN", tag="BEGIN", txn="open", sid="t1", txid=4, n=1)
        for i in range(3):
            events.stmt(ITEMS, [i], tag="SELECT", rows=1, txn="open", sid="t1", txid=4, n=2 + i)
        events.txn_end("t1", 4, "rolled_back", stmts=4)  # the ROLLBACK itself never reaches the stream
    worker = make_worker(prefix)
    try:
        drain(worker)
    finally:
        worker.close()
    [shape] = rm.shapes(r, rm.keys_for(prefix))
    assert shape["count"] == 1 and shape["repeats"] == [1, 3] and shape["rollback_rate"] == 1.0
    assert shape["stmts_per_txn"] == 4.0
