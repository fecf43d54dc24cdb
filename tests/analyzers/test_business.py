"""Business rules on synthetic events: values from literals and parameters, committed work only,
parked open transactions, and exactly-once under reclaim races."""

from __future__ import annotations

import json
import time

import pytest
import redis

from fasterdata.analyzers.atomic import claim_floor
from fasterdata.analyzers.worker import _entries
from fasterdata.proxy.streamkeys import stream_name
from tests.kit.analysis import biz, drain, make_worker, rules_file
from tests.kit.eventwriter import Events

INSERT_EXT = "INSERT INTO orders (id, customer_id, region, total) VALUES ($1, $2, $3, $4)"


def test_values_from_literals_and_parameters_alike(r: redis.Redis, prefix: str, events: Events) -> None:
    events.stmt(INSERT_EXT, [1, 10, "eu", "19.99"], tag="INSERT", rows=1)
    events.stmt("INSERT INTO orders (id, customer_id, region, total) VALUES (2, 11, 'us', 5.01)", tag="INSERT", rows=1)
    events.stmt("INSERT INTO orders (id, customer_id, region, total) VALUES "
                "(3, 10, 'eu', 1.00), (4, 12, 'us', 2.50), (5, 13, 'eu', 0.01)", tag="INSERT", rows=3)
    events.stmt("INSERT INTO orders (id, customer_id, region, total) VALUES ($1, $2, $3, $4), ($5, $6, $7, $8) "
                "RETURNING id", [6, 14, "eu", 100, 7, 10, "ap", "7.5"], tag="INSERT", rows=2)
    w = make_worker(prefix)
    assert drain(w) == 4
    assert biz(r, prefix, "sales") == {"region=eu": 1999 + 100 + 1 + 10000, "region=us": 501 + 250,
                                       "region=ap": 750}
    assert biz(r, prefix, "orders_placed") == {"-": 7 * 10**6}
    assert biz(r, prefix, "order_count") == {"-": 7}
    assert biz(r, prefix, "biggest") == {"-": 100}
    assert biz(r, prefix, "smallest") == {"-": 0.01}
    assert biz(r, prefix, "customers") == {"-": 5}  # 10, 11, 12, 13, 14
    # one business event per match, with its labels
    evs = [f for _, f in r.xrange(f"{prefix}:events") if f["rule"] == "sales"]
    assert len(evs) == 7
    assert {e["value"] for e in evs} >= {"19.99", "0.01", "7.5"}


def test_the_business_event_stream_keeps_to_its_cap(r: redis.Redis, prefix: str, events: Events) -> None:
    """events_maxlen is approximate (whole stream nodes of 100 entries go) and is applied once a batch."""
    with events:
        for i in range(300):
            events.stmt(INSERT_EXT, [i, i, "eu", "1.00"], tag="INSERT", rows=1)
    w = make_worker(prefix, events_maxlen=100)
    drain(w)
    stream = f"{prefix}:events"
    last = r.xrevrange(stream, count=1)[0][1]["ts"]
    per_order = sum(1 for _, f in r.xrange(stream) if f["ts"] == last)
    assert per_order >= 2  # several rules match each order: the batch wrote far more than the cap
    assert 100 <= r.xlen(stream) < 200
    assert biz(r, prefix, "order_count") == {"-": 300}


def test_only_committed_and_autocommit_work_counts(r: redis.Redis, prefix: str, events: Events) -> None:
    sql = "UPDATE inventory SET qty = qty - $1 WHERE sku = $2"
    events.stmt(sql, [2, "A"], tag="UPDATE", rows=1, txn="committed", txid=1)
    events.stmt(sql, [5, "A"], tag="UPDATE", rows=1, txn="rolled_back", txid=2)
    events.stmt(sql, [7, "A"], tag="UPDATE", rows=1, txn="prepared", txid=3)
    events.stmt("UPDATE inventory SET qty = qty + 10 WHERE sku = 'B'", tag="UPDATE", rows=3, txn="autocommit")
    events.stmt(sql, [1, "A"], err="40001", txn="rolled_back", txid=4)
    events.stmt(sql, [1, "C"], tag="UPDATE", rows=0, txn="autocommit")  # matched no row: no change
    w = make_worker(prefix)
    drain(w)
    assert biz(r, prefix, "stock_moves") == {"sku=A": -2 * 10**6, "sku=B": 30 * 10**6}


def test_open_transactions_wait_for_their_marker(r: redis.Redis, prefix: str, events: Events) -> None:
    ins = "INSERT INTO order_items (order_id, sku, quantity) VALUES ($1, $2, $3)"
    events.stmt(ins, [1, "A", 2], tag="INSERT", rows=1, txn="open", sid="s9", txid=3)
    events.stmt(ins, [1, "B", 4], tag="INSERT", rows=1, txn="open", sid="s9", txid=3)
    events.stmt(ins, [2, "A", 100], tag="INSERT", rows=1, txn="open", sid="s9", txid=4)
    w = make_worker(prefix)
    drain(w)
    assert biz(r, prefix, "items_sold") == {}  # parked, not counted
    assert r.llen(f"{prefix}:txn:s9:3:parked") == 2
    events.txn_end("s9", 3, "committed", stmts=2)
    events.txn_end("s9", 4, "rolled_back", stmts=1)
    drain(w)
    assert biz(r, prefix, "items_sold") == {"sku=A": 2 * 10**6, "sku=B": 4 * 10**6}
    assert not r.exists(f"{prefix}:txn:s9:3:parked", f"{prefix}:txn:s9:4:parked")


def test_marker_seen_before_the_statements_still_counts_once(r: redis.Redis, prefix: str, events: Events) -> None:
    """Another worker may handle the txn_end before a slow worker commits the statements."""
    ins = "INSERT INTO order_items (order_id, sku, quantity) VALUES ($1, $2, $3)"
    events.txn_end("s5", 1, "committed")
    events.txn_end("s5", 2, "rolled_back")
    events.stmt(ins, [1, "A", 3], tag="INSERT", rows=1, txn="open", sid="s5", txid=1)
    events.stmt(ins, [1, "A", 50], tag="INSERT", rows=1, txn="open", sid="s5", txid=2)
    drain(make_worker(prefix))
    assert biz(r, prefix, "items_sold") == {"sku=A": 3 * 10**6}


@pytest.mark.parametrize("marker_first", [False, True])
def test_statements_undone_by_a_savepoint_rollback_do_not_count(r: redis.Redis, prefix: str, events: Events,
                                                                 marker_first: bool) -> None:
    """Sent early (txn=open, numbered n), then undone by ROLLBACK TO SAVEPOINT: the committed
    transaction's marker lists them in `undone`, whichever of marker and statements a worker sees first."""
    ins = "INSERT INTO order_items (order_id, sku, quantity) VALUES ($1, $2, $3)"
    if marker_first:
        events.txn_end("s7", 1, "committed", stmts=4, undone="2-3")
    for n, qty in enumerate((1, 10, 100, 1000), 1):  # 2 and 3 were undone
        events.stmt(ins, [1, "A", qty], tag="INSERT", rows=1, txn="open", sid="s7", txid=1, n=n)
    if not marker_first:
        w = make_worker(prefix)
        drain(w)
        assert biz(r, prefix, "items_sold") == {}
        events.txn_end("s7", 1, "committed", stmts=4, undone="2-3")
    drain(make_worker(prefix))
    assert biz(r, prefix, "items_sold") == {"sku=A": 1001 * 10**6}


def test_parked_writes_of_an_earlier_release_still_replay(r: redis.Redis, prefix: str, events: Events) -> None:
    """Blobs parked without a statement number (before `n` existed) are applied at commit as before."""
    ins = "INSERT INTO order_items (order_id, sku, quantity) VALUES ($1, $2, $3)"
    events.stmt(ins, [1, "A", 5], tag="INSERT", rows=1, txn="open", sid="s8", txid=1)  # no n: old format
    events.stmt(ins, [1, "A", 7], tag="INSERT", rows=1, txn="open", sid="s8", txid=1, n=2)
    drain(make_worker(prefix))
    events.txn_end("s8", 1, "committed", stmts=2, undone="2-2")
    drain(make_worker(prefix))
    assert biz(r, prefix, "items_sold") == {"sku=A": 5 * 10**6}


def test_insert_select_and_copy_count_rows_only_and_say_so(r: redis.Redis, prefix: str, events: Events) -> None:
    events.stmt("INSERT INTO orders (id, customer_id, region, total) SELECT id, 1, 'eu', 1 FROM staging",
                tag="INSERT", rows=40)
    events.stmt("COPY orders (id, customer_id, region, total) FROM STDIN", tag="COPY", rows=25)
    events.stmt("COPY orders TO STDOUT", tag="COPY", rows=65)  # a read: no rule
    w = make_worker(prefix)
    drain(w)
    assert biz(r, prefix, "orders_placed") == {"-": 40 * 10**6}
    assert biz(r, prefix, "bulk_loaded") == {"-": 25 * 10**6}
    assert biz(r, prefix, "sales") == {}
    day = next(iter(r.smembers(f"{prefix}:biz:sales:days")))
    assert r.hgetall(f"{prefix}:biz:sales:{day}:rows_only") == {"region=": "40"}  # labels unknown
    flagged = [f for _, f in r.xrange(f"{prefix}:events") if f.get("rows_only") == "true"]
    assert {f["rule"] for f in flagged} == {"sales", "biggest", "smallest", "customers"}
    assert w.counters.rows_only["sales"] == 40


def test_match_filter_and_labels(r: redis.Redis, prefix: str, events: Events) -> None:
    sql = "INSERT INTO gl_entries (trx_date, account, side, amount) VALUES ($1, $2, $3, $4), ($5, $6, $7, $8)"
    events.stmt(sql, ["2024-01-01", "1000", "D", "250.00", "2024-01-01", "4000", "C", "250.00"], tag="INSERT",
                rows=2)
    events.stmt("INSERT INTO gl_entries (trx_date, account, side, amount) VALUES ('2024-01-01', '1000', 'D', 12.5)",
                tag="INSERT", rows=1)
    drain(make_worker(prefix))
    assert biz(r, prefix, "gl_postings") == {"account=1000": 26250, "account=4000": 25000}
    assert biz(r, prefix, "gl_debits") == {"-": 26250}


def test_label_cardinality_is_capped(r: redis.Redis, prefix: str, events: Events) -> None:
    rules = rules_file(rules=[{"name": "per_sku", "table": "order_items", "operation": "insert",
                               "value": "quantity", "labels": ["sku"], "max_series": 3}])
    with events:
        for i in range(10):
            events.stmt("INSERT INTO order_items (order_id, sku, quantity) VALUES ($1, $2, $3)",
                        [i, f"sku{i}", 1], tag="INSERT", rows=1)
    drain(make_worker(prefix, rules))
    got = biz(r, prefix, "per_sku")
    assert len(got) == 4 and got["other"] == 7 * 10**6


def test_a_reclaimed_batch_is_applied_once(r: redis.Redis, prefix: str, packed_events: Events) -> None:
    """A stalled worker whose entries were reclaimed must not apply them when it wakes up."""
    with packed_events:
        for i in range(20):
            packed_events.stmt(INSERT_EXT, [i, i, "eu", "1.00"], tag="INSERT", rows=1)
    slow = make_worker(prefix, consumer="slow")
    fast = make_worker(prefix, consumer="fast", claim_idle=0.001)
    stream = stream_name(prefix)
    taken = _entries(slow.streams.read(20, None)[0][1])
    assert len(taken) == 20
    # the slow worker stalls; the other reclaims and commits everything
    time.sleep(0.01)  # > claim_idle
    assert fast.claim() == 20
    slow.analyse_and_commit(slow.shards[0], taken)  # wakes up: the script refuses, nothing is applied twice
    assert slow.counters.conflicts == 20 and slow.counters.entries == 0
    assert biz(r, prefix, "sales") == {"region=eu": 2000}
    assert r.xpending(stream, "analyzers")["pending"] == 0


def test_a_commit_whose_connection_dies_before_its_reply_counts_once(r: redis.Redis, prefix: str,
                                                                     packed_events: Events) -> None:
    """A commit is sent on the committer's own connection and its reply read a batch later: killed in
    between, the batch stays pending, is taken up again as this consumer's own, and counts once."""
    with packed_events:
        packed_events.stmt(INSERT_EXT, [0, 0, "eu", "1.00"], tag="INSERT", rows=1)
    w = make_worker(prefix)
    drain(w)
    conn = w.shards[0].committer._conn
    assert conn is not None
    conn.send_command("CLIENT", "ID")
    cid = conn.read_response()
    with packed_events:
        for i in range(1, 6):
            packed_events.stmt(INSERT_EXT, [i, i, "eu", "1.00"], tag="INSERT", rows=1)
    [(shard, entries, read_at)] = w._read()
    assert r.client_kill_filter(_id=cid) == 1
    with pytest.raises(redis.ConnectionError):
        w.analyse_and_commit(shard, entries, wait=False, read_at=read_at)
        w.finish_commit()
    assert biz(r, prefix, "sales") == {"region=eu": 100}
    assert r.xpending(stream_name(prefix), "analyzers")["pending"] == 5
    w._own_pending()
    assert biz(r, prefix, "sales") == {"region=eu": 600}
    with packed_events:
        packed_events.stmt(INSERT_EXT, [6, 6, "eu", "1.00"], tag="INSERT", rows=1)
    drain(w)  # on a new connection
    assert biz(r, prefix, "sales") == {"region=eu": 700}


def test_a_commit_after_redis_dropped_its_scripts_loads_it_again(r: redis.Redis, prefix: str,
                                                                 events: Events) -> None:
    with events:
        events.stmt(INSERT_EXT, [0, 0, "eu", "1.00"], tag="INSERT", rows=1)
    w = make_worker(prefix)
    drain(w)
    r.script_flush()  # as after a restart: the next EVALSHA gets NOSCRIPT and nothing ran
    with events:
        events.stmt(INSERT_EXT, [1, 1, "eu", "1.00"], tag="INSERT", rows=1)
    drain(w)
    assert biz(r, prefix, "sales") == {"region=eu": 200}
    assert r.script_exists(w.shards[0].committer.script.sha) == [True]


def test_a_young_batch_skips_the_entry_check_and_an_old_one_does_not(r: redis.Redis, prefix: str,
                                                                    events: Events) -> None:
    """No consumer takes an entry idle for less than the group's claim floor, so a batch read less than
    half of it ago commits without XPENDING; an older one is checked entry by entry."""
    with events:
        for i in range(10):
            events.stmt(INSERT_EXT, [i, i, "eu", "1.00"], tag="INSERT", rows=1)
    w = make_worker(prefix)  # claim_idle 30 s: its first step publishes a 30 s floor
    committer = w.shards[0].committer
    drain(w)
    assert r.get(f"{prefix}:claim_floor:analyzers") == "30000"
    assert committer.checked == 0
    with events:
        for i in range(10, 15):
            events.stmt(INSERT_EXT, [i, i, "eu", "1.00"], tag="INSERT", rows=1)
    [(shard, entries, read_at)] = w._read()
    w.analyse_and_commit(shard, entries, read_at=read_at - 16_000)  # read 16 s ago by the server's clock
    assert committer.checked == 1
    with events:
        events.stmt(INSERT_EXT, [15, 15, "eu", "1.00"], tag="INSERT", rows=1)
    r.delete(f"{prefix}:claim_floor:analyzers")  # no floor (lapsed, or deleted): nothing is taken on trust
    [(shard, entries, read_at)] = w._read()
    w.analyse_and_commit(shard, entries, read_at=read_at)
    assert committer.checked == 2
    assert biz(r, prefix, "sales") == {"region=eu": 1600}


def test_a_lower_claim_idle_lowers_the_floor_before_it_takes_anything(r: redis.Redis, prefix: str,
                                                                       packed_events: Events) -> None:
    """The stalled worker's batch is young by its own claim_idle (30 s) but not by the claimer's (1 ms),
    which published its floor before reclaiming: the commit checks, finds the entries gone, applies nothing."""
    with packed_events:
        for i in range(20):
            packed_events.stmt(INSERT_EXT, [i, i, "eu", "1.00"], tag="INSERT", rows=1)
    slow = make_worker(prefix, consumer="slow")
    slow.claim()  # the 30 s floor
    [(shard, taken, read_at)] = slow._read()
    assert len(taken) == 20
    fast = make_worker(prefix, consumer="fast", claim_idle=0.001)
    time.sleep(0.01)  # > claim_idle
    assert fast.claim() == 20
    assert r.get(f"{prefix}:claim_floor:analyzers") == "1"
    slow.analyse_and_commit(shard, taken, read_at=read_at)
    assert slow.counters.conflicts == 20 and slow.counters.entries == 0
    assert biz(r, prefix, "sales") == {"region=eu": 2000}


def test_the_claim_floor_only_goes_down_and_lapses_without_its_setter(r: redis.Redis, prefix: str) -> None:
    key = f"{prefix}:claim_floor:analyzers"
    assert claim_floor(r, key, 30_000) == 30_000
    assert claim_floor(r, key, 5_000) == 5_000
    assert claim_floor(r, key, 30_000) == 5_000  # a higher claimer does not raise it
    assert 0 < r.pttl(key) <= 60_000  # unless renewed by its setter's next pass
    assert claim_floor(r, key, 600_000) == 5_000 and r.pttl(key) <= 60_000
    r.delete(key)
    assert claim_floor(r, key, 600_000) == 600_000 and r.pttl(key) > 1_700_000  # 3 × claim_idle


def test_a_dead_workers_entries_are_reclaimed(r: redis.Redis, prefix: str, packed_events: Events) -> None:
    with packed_events:
        for i in range(7):
            packed_events.stmt(INSERT_EXT, [i, i, "us", "2.00"], tag="INSERT", rows=1)
    stream = stream_name(prefix)
    make_worker(prefix, consumer="dead")
    r.xreadgroup("analyzers", "dead", {stream: ">"}, count=5)  # read, then "killed" before committing
    survivor = make_worker(prefix, consumer="alive", claim_idle=0.001)
    time.sleep(0.01)  # > claim_idle
    drain(survivor)
    assert survivor.counters.claimed == 5
    assert biz(r, prefix, "sales") == {"region=us": 1400}


def test_bad_and_unparsable_events_are_counted_and_skipped(r: redis.Redis, prefix: str, events: Events) -> None:
    stream = stream_name(prefix)
    r.xadd(stream, {"v": "1", "kind": "stmt", "ts": "1", "sql": "SELECT 1", "params": "not json",
                    "proto": "extended"})
    r.xadd(stream, {"v": "1", "kind": "stmt", "ts": "x", "sql": "SELECT 1"})
    r.xadd(stream, {"v": "1", "kind": "mystery"})
    events.stmt("SELEKT * FRUM nothing", tag="SELECT", rows=0)
    events.stmt("INSERT INTO orders (id, customer_id, region, total) VALUES (1, 1, 'eu', 3)", tag="INSERT", rows=1)
    w = make_worker(prefix)
    drain(w)
    assert w.counters.bad == 2 and w.counters.unparsed == 1 and w.counters.entries == 5
    totals = r.hgetall(f"{prefix}:stats:totals")
    assert totals["unparsed"] == "1" and totals["bad"] == "2"
    assert biz(r, prefix, "sales") == {"region=eu": 300}
    assert r.xpending(stream, "analyzers")["pending"] == 0


def test_rules_are_published_for_readers(r: redis.Redis, prefix: str) -> None:
    make_worker(prefix)
    desc = json.loads(r.hget(f"{prefix}:biz:rules", "sales"))
    assert desc["aggregate"] == "sum" and desc["scale"] == 2 and desc["labels"] == ["region"]


def test_parked_and_direct_events_are_identical(r: redis.Redis, prefix: str, events: Events) -> None:
    """Direct writes send a statement's events as one compact op, parked writes as one op per event (which
    the previous release replays too): Redis must end up with the same fields, in the same order."""
    tagged = ("INSERT INTO orders (id, customer_id, region, total) VALUES ($1, $2, $3, $4), ($5, $6, $7, $8) "
              "/*route='/checkout',traceparent='00-ab-cd-01'*/")
    bulk = "INSERT INTO orders (id, customer_id, region, total) SELECT id, 1, 'eu', 1 FROM staging"
    with events:
        for sid, txn in (("direct", "autocommit"), ("parked", "open")):
            events.stmt(tagged, [1, 10, "eu", "1.50", 2, 11, "us", "2.25"], tag="INSERT", rows=2, txn=txn, sid=sid)
            events.stmt(bulk, tag="INSERT", rows=40, txn=txn, sid=sid)
            for customer in range(20, 26):  # several members of one distinct set in one batch
                events.stmt(INSERT_EXT, [customer, customer, "ap", "1"], tag="INSERT", rows=1, txn=txn, sid=sid)
        events.txn_end("parked", 1, "committed", stmts=8)
    drain(make_worker(prefix))

    def fields(sid: str) -> list[list[tuple[str, str]]]:
        return [[(k, v) for k, v in f.items() if k not in ("ts", "sid")] for _, f in r.xrange(f"{prefix}:events")
                if f["sid"] == sid]

    direct = fields("direct")
    assert direct == fields("parked")
    assert len(direct) == 6 * 2 + 6 + 6 * 6  # six rules on orders, one event each a row; six for the bulk insert
    assert [k for k, _ in direct[0]] == ["rule", "value", "labels", "txid", "app", "fp", "comment"]
    assert json.loads(dict(direct[0])["comment"])["route"] == "/checkout"
    counted = [f for f in direct if ("count", "40") in f]
    assert sorted(dict(f).get("rows_only", "-") for f in counted) == ["-", "true", "true", "true", "true"]
    assert [k for k, _ in counted[-1]][-2:] == ["count", "rows_only"]
    assert biz(r, prefix, "customers") == {"-": 8}  # 10, 11, 20…25: both sessions add the same members
