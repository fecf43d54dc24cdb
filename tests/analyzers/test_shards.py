"""stream_shards ≥ 2 on one Redis: every key a commit writes carries its shard's hash tag, readers merge
the shards (sums add, extremes compare, distinct sets union), and `top` shows the merged numbers."""

from __future__ import annotations

import re

import redis
from redis.crc import key_slot

from fasterdata.analyzers import merged, top
from fasterdata.analyzers.keys import shard_keys
from tests.kit.analysis import biz, drain, make_worker, rules_file
from tests.kit.eventwriter import Events

SHARDS = 3
INSERT = "INSERT INTO orders (id, customer_id, region, total) VALUES ($1, $2, $3, $4)"
ITEM = "INSERT INTO order_items (order_id, sku, quantity) VALUES ($1, $2, $3)"
# written outside commits, one key per command
UNSHARDED = {"workers", "biz:rules", "anomaly:lock", "claim_floor:analyzers"}


def populate(events: Events) -> None:
    """Orders from 9 sessions (spread over the shards), parked transactions, alerts of every kind."""
    with events:
        for i in range(90):
            sid = f"s{i % 9}"
            events.stmt(INSERT, [i, i % 20, "eu" if i % 2 else "us", f"{i}.50"], tag="INSERT", rows=1, sid=sid,
                        txid=i, app=f"app{i % 4}")
        for n in range(9):  # long transactions: sent early as open, then their marker
            sid = f"t{n}"
            events.stmt(ITEM, [n, "A", 2], tag="INSERT", rows=1, txn="open", sid=sid, txid=1)
            events.txn_end(sid, 1, "committed" if n % 3 else "rolled_back")
        for n in range(6):
            events.stmt("SELECT * FROM users WHERE name = 'x' OR 1=1", tag="SELECT", rows=3, sid=f"x{n}")
            events.stmt("SELECT * FROM missing_table", err="42P01", sid=f"x{n}")


def test_sharded_commits_touch_one_slot_each(r: redis.Redis, prefix: str) -> None:
    events = Events(r, prefix, SHARDS)
    populate(events)
    assert all(r.xlen(s) for s in events.streams)
    rules = rules_file(security={"new_fingerprint": {"enabled": True, "learn_seconds": 0}},
                       anomaly={"enabled": True})
    w = make_worker(prefix, rules, stream_shards=SHARDS)
    assert drain(w) == sum(r.xlen(s) for s in events.streams)
    names = list(r.scan_iter(f"{prefix}:*", count=1000))
    tagged = {}
    for name in names:
        rest = name[len(prefix) + 1:]
        m = re.search(r":\{(\d+)\}", rest)
        if m is None:
            assert rest in UNSHARDED, f"{name} has no shard tag"
            continue
        assert rest.index("{") == rest.index(m.group(0)) + 1, f"{name}: the first brace must be the shard tag"
        tagged.setdefault(int(m.group(1)), set()).add(key_slot(name.encode()))
    assert sorted(tagged) == list(range(SHARDS))
    assert all(len(slots) == 1 for slots in tagged.values()), tagged  # one slot per shard
    kinds = {re.sub(r":\{\d+\}.*", "", n[len(prefix) + 1:]) for n in names}
    assert {"statements", "events", "alerts", "alerts:counts", "stats:q", "stats:fp", "stats:top", "stats:totals",
            "biz", "seen", "seen:apps", "anomaly:w", "anomaly:meta", "txn", "alerts:dedup"} <= kinds


def test_readers_merge_the_shards(r: redis.Redis, prefix: str) -> None:
    events = Events(r, prefix, SHARDS)
    populate(events)
    drain(make_worker(prefix, stream_shards=SHARDS))
    ks = shard_keys(prefix, SHARDS)
    # sums add, extremes compare, distinct customers are a union (the same ids came through every shard)
    assert biz(r, prefix, "sales", SHARDS) == {"region=eu": sum(i * 100 + 50 for i in range(1, 90, 2)),
                                                "region=us": sum(i * 100 + 50 for i in range(0, 90, 2))}
    assert biz(r, prefix, "biggest", SHARDS, "max") == {"-": 89.5}
    assert biz(r, prefix, "smallest", SHARDS, "min") == {"-": 0.5}
    assert biz(r, prefix, "customers", SHARDS, "distinct") == {"-": 20}
    assert biz(r, prefix, "items_sold", SHARDS) == {"sku=A": 6 * 2 * 10**6}  # 6 of 9 parked transactions committed
    assert merged.stats_totals(r, ks)["calls"] == 90 + 9 + 12
    assert merged.alert_counts(r, ks)["sqli_tautology"] == 6
    snap = top.snapshot(r, prefix, shards=SHARDS)
    assert snap["totals"]["calls"] == 111
    inserts = {row["app"]: row["calls"] for row in snap["by_calls"] if row["text"].startswith("INSERT INTO orders")}
    assert inserts == {"app0": 23, "app1": 23, "app2": 22, "app3": 22}  # each app's sessions span the shards
    assert snap["by_errors"][0]["errors"] == 6 and snap["by_errors"][0]["by_state"] == {"42P01": 6}
    sales = dict(next(b for b in snap["business"] if b["rule"] == "sales")["values"])
    assert str(sales["region=eu"]) == f"{sum(i + 0.5 for i in range(1, 90, 2)):.2f}"
    assert dict(next(b for b in snap["business"] if b["rule"] == "customers")["values"]) == {"-": 20}
    assert snap["lag"]["length"] == sum(r.xlen(s) for s in events.streams) and snap["lag"]["pending"] == 0
    assert {a["rule"] for a in snap["alerts"]} == {"sqli_tautology"}


def test_a_worker_with_the_wrong_shard_count_warns(r: redis.Redis, prefix: str, caplog) -> None:
    events = Events(r, prefix, SHARDS)
    populate(events)
    make_worker(prefix)  # reads the unsharded stream only
    assert "is stream_shards the same as the proxy's?" in caplog.text
