"""The read model (analyzers/readmodel.py) after a known workload: what it answers equals what was sent."""

from __future__ import annotations

import json
import statistics

import pytest
import redis

from fasterdata.analyzers import readmodel as rm
from tests.kit.analysis import drain, make_worker
from tests.kit.eventwriter import Events

ITEMS = "SELECT * FROM items WHERE id = $1"
ORDER = "INSERT INTO orders (id, customer_id, region, total) VALUES ($1, $2, $3, $4)"


def workload(events: Events) -> list[int]:
    """Three transactions of BEGIN, 25 item lookups, an order, COMMIT; a failing statement; by two users."""
    durations = []
    with events:
        for t in range(3):
            user = "alice" if t < 2 else "bob"
            events.stmt("BEGIN", tag="BEGIN", txn="committed", txid=t + 1, user=user, dur_us=20)
            for i in range(25):
                dur = 100 + 40 * i + t
                durations.append(dur)
                events.stmt(ITEMS, [i + 100 * t], tag="SELECT", rows=1, txn="committed", txid=t + 1, dur_us=dur,
                            user=user)
            events.stmt(ORDER, [t, t, ["eu", "us", "eu"][t], "17790.51"], tag="INSERT", rows=1, txn="committed",
                        txid=t + 1, user=user, dur_us=2000)
            events.stmt("COMMIT", tag="COMMIT", txn="committed", txid=t + 1, user=user, dur_us=30)
        events.stmt("SELECT * FROM missing_table", err="42P01", sid="s2", user="bob")
    return durations


@pytest.fixture
def loaded(r: redis.Redis, prefix: str, events: Events) -> list[int]:
    durations = workload(events)
    worker = make_worker(prefix, n_plus_one=10, new_category_learn_seconds=0)
    try:
        drain(worker)
    finally:
        worker.close()
    return durations


def test_top_statements_fold_control_and_sort(r: redis.Redis, prefix: str, loaded: list[int]) -> None:
    ks = rm.keys_for(prefix)
    top = rm.top_statements(r, ks)
    assert [row["text"] for row in top["rows"]] == [ITEMS, ORDER, "SELECT * FROM missing_table"]
    assert top["folded"] == {"calls": 6, "total_us": 3 * 20 + 3 * 30, "entries": 2}
    items = top["rows"][0]
    assert items["calls"] == 75 and items["total_us"] == sum(loaded)
    assert items["min_us"] == min(loaded) and items["max_us"] == max(loaded)
    assert items["mean_us"] == round(statistics.fmean(loaded), 1)
    assert items["stddev_us"] == pytest.approx(statistics.pstdev(loaded), abs=0.1)
    assert min(loaded) <= items["p50_us"] <= items["p95_us"] <= items["p99_us"] <= max(loaded)
    assert items["p50_us"] == pytest.approx(statistics.median(loaded), rel=0.35)  # within its bucket
    unfolded = rm.top_statements(r, ks, sort="calls", fold=False)
    assert {row["text"] for row in unfolded["rows"]} >= {"BEGIN", "COMMIT"} and unfolded["folded"]["entries"] == 0
    assert [row["text"] for row in rm.top_statements(r, ks, sort="errors")["rows"]] == ["SELECT * FROM missing_table"]
    assert rm.top_statements(r, ks, sort="mean")["rows"][0]["text"] == ORDER
    assert rm.top_statements(r, ks, sort="rows")["rows"][0]["text"] == ITEMS
    assert rm.top_statements(r, ks, sort="p99")["rows"][0]["text"] == ORDER
    member = f"{items['fp']}|shop|shop"
    assert rm._p99s(r, ks, [member])[member] == pytest.approx(items["p99_us"], abs=0.1)  # the script's, as Python's
    with pytest.raises(ValueError, match="sort must be one of"):
        rm.top_statements(r, ks, sort="speed")
    json.dumps(top)


def test_filters_by_user_app_and_db(r: redis.Redis, prefix: str, loaded: list[int]) -> None:
    ks = rm.keys_for(prefix)
    bob = rm.top_statements(r, ks, user="bob")
    assert [(row["text"], row["calls"]) for row in bob["rows"]] == [
        (ITEMS, 25), (ORDER, 1), ("SELECT * FROM missing_table", 1)]
    assert bob["rows"][0]["total_us"] == sum(loaded[50:])
    assert rm.top_statements(r, ks, user="carol")["rows"] == []
    assert rm.top_statements(r, ks, app="nobody")["rows"] == [] and rm.top_statements(r, ks, db="shop")["matched"] == 3
    assert rm.filters(r, ks) == {"db": ["shop"], "app": ["shop"], "user": ["alice", "bob"]}


def test_a_fingerprints_detail(r: redis.Redis, prefix: str, loaded: list[int]) -> None:
    ks = rm.keys_for(prefix)
    fp = rm.top_statements(r, ks)["rows"][0]["fp"]
    d = rm.statement(r, ks, fp)
    assert d is not None and d["text"] == ITEMS and d["op"] == "select" and d["tables"] == ["items"]
    assert sum(b["count"] for b in d["histogram"]) == 75 and d["histogram"][-1]["le"] == "+Inf"
    assert [(u["user"], u["calls"]) for u in d["users"]] == [("alice", 50), ("bob", 25)]
    slowest = d["samples"]["slowest"]
    assert [s["dur_us"] for s in slowest] == sorted(loaded, reverse=True)[:5]  # samples: 5 (the default)
    assert json.loads(slowest[0]["params"]) == [24 + 200] and slowest[0]["user"] == "bob"
    assert slowest[0]["id"] and slowest[0]["sql"] == ITEMS and slowest[0]["sid"] == "s1"
    recent = d["samples"]["recent"]
    assert [json.loads(s["params"])[0] for s in recent] == [224, 223, 222, 221, 220]
    [shape] = d["shapes"]
    assert shape["count"] == 3 and shape["repeats"] == [1, 25, 1, 1] and len(shape["fps"]) == 4
    assert shape["fps"][1] == fp and shape["stmts_per_txn"] == 28.0 and shape["rollback_rate"] == 0.0
    assert d["plan"] is None
    minutes = d["series"]  # the workload's events fall in one minute (or two)
    assert sum(m["calls"] for m in minutes) == 75 and sum(m["total_us"] for m in minutes) == sum(loaded)
    assert 1 <= len(minutes) <= 2 and all(m["errors"] == 0 for m in minutes)
    assert rm.statement(r, ks, "0" * 16) is None
    json.dumps(d)


def test_business_alerts_and_workers(r: redis.Redis, prefix: str, loaded: list[int]) -> None:
    ks = rm.keys_for(prefix)
    biz = rm.business(r, ks)
    sales = next(x for x in biz["rules"] if x["rule"] == "sales")
    assert sales["values"] == [{"labels": {"region": "eu"}, "key": "region=eu", "value": "35581.02"},
                               {"labels": {"region": "us"}, "key": "region=us", "value": "17790.51"}]
    assert sales["total"] == "53371.53"
    days = rm.business_days(r, ks, "sales")
    assert [d["day"] for d in days["days"]] == [biz["day"]] and days["days"][0]["total"] == "53371.53"
    kinds = {a["kind"] for a in rm.alerts(r, ks)}
    assert {"n_plus_one", "new_category"} <= kinds
    [n1] = rm.alerts(r, ks, kind="n_plus_one")
    assert n1["count"] == "25" and n1["shape"] and "one transaction" in n1["evidence"]
    cats = rm.alerts(r, ks, kind="new_category")
    assert sorted(a["value"] for a in cats) == ["eu", "us"] and all(a["metric"] == "sales" for a in cats)
    assert rm.alert_counts(r, ks)["n_plus_one"] == 3  # counted every time, written once (dedup)
    view = rm.overview(r, ks)
    assert view["totals"]["calls"] == 85 and view["totals"]["fingerprints"] == 5
    assert view["stream"]["pending"] == 0 and view["workers"][0]["name"] == "w1"
    json.dumps(view)


SHARDS = 3


def sharded_workload(events: Events) -> None:
    with events:
        for s in range(6):  # six sessions, spread over the shards by session id
            sid = f"s{s}"
            events.stmt("BEGIN", tag="BEGIN", txn="committed", txid=1, sid=sid)
            for i in range(12):
                events.stmt(ITEMS, [i + 100 * s], tag="SELECT", rows=1, txn="committed", txid=1, sid=sid,
                            dur_us=100 + 10 * i + s, user=f"u{s % 2}")
            events.stmt(ORDER, [s, s, "eu", "0.10"], tag="INSERT", rows=1, txn="committed", txid=1, sid=sid)
            events.stmt("COMMIT", tag="COMMIT", txn="committed", txid=1, sid=sid)


def check_sharded(r, prefix: str, shards: int) -> None:
    ks = rm.keys_for(prefix, shards)
    top = rm.top_statements(r, ks)
    assert [(row["text"], row["calls"]) for row in top["rows"]] == [(ITEMS, 72), (ORDER, 6)]
    assert top["folded"]["calls"] == 12
    assert [row["calls"] for row in rm.top_statements(r, ks, user="u1")["rows"]] == [36]
    d = rm.statement(r, ks, top["rows"][0]["fp"])
    assert d["calls"] == 72 and d["max_us"] == 100 + 110 + 5 and d["min_us"] == 100
    assert [s["dur_us"] for s in d["samples"]["slowest"]][:2] == [215, 214]
    assert sum(u["calls"] for u in d["users"]) == 72 and d["shapes"][0]["count"] == 6
    sales = next(x for x in rm.business(r, ks)["rules"] if x["rule"] == "sales")
    assert sales["total"] == "0.60"
    assert rm.overview(r, ks)["totals"]["calls"] == 90


def test_shards_are_merged(r: redis.Redis, prefix: str) -> None:
    sharded_workload(Events(r, prefix, SHARDS))
    worker = make_worker(prefix, stream_shards=SHARDS)
    try:
        drain(worker)
    finally:
        worker.close()
    check_sharded(r, prefix, SHARDS)


def test_on_a_redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> None:
    import shutil
    import time

    from fasterdata.analyzers.rules import parse
    from fasterdata.analyzers.worker import Worker
    from fasterdata.config.analyzer_settings import AnalyzerSettings
    from tests.kit.analysis import RULES
    if shutil.which("redis-cli") is None or shutil.which("redis-server") is None:
        pytest.skip("redis-server/redis-cli are not installed")
    from tests.kit.rediscluster import Cluster
    with Cluster(tmp_path_factory.mktemp("rediscluster")) as cluster:
        rc = cluster.client()
        prefix = f"fdrm{int(time.time())}"
        try:
            sharded_workload(Events(rc, prefix, SHARDS))
            settings = AnalyzerSettings(redis=f"redis://127.0.0.1:{cluster.ports[0]}/0", prefix=prefix, metrics="",
                                        consumer="c1", block=0.05, stream_shards=SHARDS)
            worker = Worker(settings, parse(RULES, "test rules"))
            worker.setup()
            try:
                drain(worker)
            finally:
                worker.close()
            check_sharded(rc, prefix, SHARDS)
        finally:
            rc.close()
