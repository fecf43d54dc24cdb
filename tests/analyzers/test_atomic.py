"""The commit's op language: ops.py's declaration and commit.lua's handlers agree, every op steps to the next
one as declared, the declared key positions are the keys the script writes, and what `Writes` emits parses."""

from __future__ import annotations

import time

import pytest
import redis

from fasterdata.analyzers import ops, scripts
from fasterdata.analyzers.atomic import Committer, Writes
from tests.kit.analysis import make_worker, rules_file
from tests.kit.eventwriter import Events

SCRIPT = scripts.read("commit.lua")


def examples(k: str) -> dict[str, list[str]]:
    """One instance of each op, written out by hand (not from the declaration), its keys under `k`."""
    return {
        "H": ["H", f"{k}:h", "f", "2"],
        "Z": ["Z", f"{k}:z", "m", "1.5"],
        "MAX": ["MAX", f"{k}:h", "max", "5"],
        "MIN": ["MIN", f"{k}:h", "min", "4"],
        "NX": ["NX", f"{k}:h", "nx", "v"],
        "HS": ["HS", f"{k}:hs", "f", "v"],
        "S": ["S", f"{k}:s", "m"],
        "D": ["D", f"{k}:d:set", f"{k}:d:hash", "f", "m"],
        "DS": ["DS", f"{k}:ds:set", f"{k}:ds:hash", "f", "2", "m1", "m2"],
        "E": ["E", f"{k}:h", "1000"],
        "EA": ["EA", f"{k}:z", str(int(time.time()) + 1000)],
        "L": ["L", f"{k}:last", "fp1", "20", f"{k}:fp:fp1", f"{k}:members:fp1", f"{k}:entries", "2",
              "db|a", "db|b", "10", "20"],
        "X": ["X", f"{k}:alerts", "100", "4", "rule", "r", "v", "1"],
        "B": ["B", f"{k}:events", "100", "123", "s1", "7", "app", "fp1", "", "2",
              "r1", "5", "l=a", "", "", "r2", "6", "l=b", "3", "true"],
        "IFNX": ["IFNX", f"{k}:dedup", "100", "4", "HS", f"{k}:ifnx", "f", "v"],
        "IFADD": ["IFADD", f"{k}:seen", "fp1", "4", "HS", f"{k}:ifadd", "f", "v"],
        "IFAGE": ["IFAGE", f"{k}:age", "f", "100", "0", "4", "HS", f"{k}:ifage", "f", "v"],
        "G": ["G", f"{k}:outcome:g", f"{k}:parked:g", "100", "4", "HS", f"{k}:g", "f", "v"],
        "GN": ["GN", f"{k}:outcome:gn", f"{k}:parked:gn", "100", "3", "4", "HS", f"{k}:gn", "f", "v"],
        "C": ["C", f"{k}:outcome:gn", f"{k}:parked:gn", "committed", "100"],
        "N": ["N", "said"],
        "HF": ["HF", f"{k}:hf", "sq", "2.5"],
        "ZGT": ["ZGT", f"{k}:zgt", "m", "7"],
        "ZKEEP": ["ZKEEP", f"{k}:slow", "2", "3", "5", "a", "9", "b", "1", "c"],
        "LKEEP": ["LKEEP", f"{k}:recent", "2", f"{k}:fps", "fp1", "30", "3", "x", "y", "z"],
        "TS": ["TS", f"{k}:ts", "1440", "100", "2", "300", "1"],
        "UROW": ["UROW", f"{k}:u", "db|app|ann", "2", "300", "2", "0", "200"],
    }


def test_the_script_handles_exactly_the_declared_ops() -> None:
    assert list(ops.handlers(SCRIPT)) and set(ops.handlers(SCRIPT)) == {op.code for op in ops.OPS}
    assert set(examples("k")) == set(ops.BY_CODE)  # a new op gets an example below
    rendered = ops.render(SCRIPT)
    for op in ops.OPS:
        assert rendered.count(f"op == '{op.code}' then") == 1


@pytest.mark.parametrize(("edit", "complaint"), [
    (lambda s: s.replace("--- op EA\n", "--- op EAX\n"), "no handler for EA; EAX not declared"),
    (lambda s: s.replace("--- op N\n", "--- op N\n--- op N\n"), "handles op N twice"),
    (lambda s: s.replace("--@ops\n", ""), "no --@ops"),
])
def test_a_script_that_disagrees_with_the_declaration_does_not_load(edit, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        ops.render(edit(SCRIPT))


def test_every_op_runs_and_steps_to_the_next_one(r: redis.Redis, prefix: str) -> None:
    """Each op is followed by a marker op: the marker lands only if the op took exactly its declared length."""
    stream = f"{prefix}:stream"
    r.xgroup_create(stream, "g", id="0", mkstream=True)
    flat: list[str] = []
    for code, op in examples(prefix).items():
        flat += [*op, "HS", f"{prefix}:after", code, "1"]
    parents = {"IFNX", "IFADD", "IFAGE", "G", "GN"}  # each example of these has one child, an HS
    expected = [c for code in examples(prefix) for c in [code, *(["HS"] if code in parents else []), "HS"]]
    assert [op.code for _, op in ops.parse(flat)] == expected
    writes = Writes()
    writes.ordered += flat
    assert Committer(r, stream, "g", "c").commit([], writes) == []

    assert set(r.hgetall(f"{prefix}:after")) == set(examples(prefix))
    assert r.hgetall(f"{prefix}:h") == {"f": "2", "max": "5", "min": "4", "nx": "v"}
    assert r.hget(f"{prefix}:ds:hash", "f") == "2" and r.hget(f"{prefix}:d:hash", "f") == "1"
    assert [f["rule"] for _, f in r.xrange(f"{prefix}:events")] == ["r1", "r2"]
    assert r.xrange(f"{prefix}:events")[1][1]["rows_only"] == "true"
    assert r.zrange(f"{prefix}:entries", 0, -1, withscores=True) == [("fp1|db|a", 10.0), ("fp1|db|b", 20.0)]
    assert all(r.exists(f"{prefix}:{c}") for c in ("ifnx", "ifadd", "ifage", "gn"))
    assert not r.exists(f"{prefix}:g") and r.llen(f"{prefix}:parked:g") == 1  # outcome unknown: parked
    assert not r.exists(f"{prefix}:parked:gn")  # replayed by C
    assert writes.undescribed == ["fp1"] and writes.noted == ["said"]

    declared = ops.keys_in(flat)
    assert all(k.startswith(f"{prefix}:") for k in declared)  # no argument taken for a key
    written = set(r.scan_iter(f"{prefix}:*")) - {stream}
    assert written <= declared, written - declared  # no key written that its op does not declare


def test_an_unknown_op_is_refused(r: redis.Redis, prefix: str) -> None:
    stream = f"{prefix}:stream"
    r.xgroup_create(stream, "g", id="0", mkstream=True)
    writes = Writes()
    writes.ordered += ["Q", f"{prefix}:x"]
    with pytest.raises(redis.ResponseError, match="unknown op Q"):
        Committer(r, stream, "g", "c").commit([], writes)


def test_what_a_worker_writes_parses_and_declares_its_keys(r: redis.Redis, prefix: str) -> None:
    """A batch with aggregates, business events, a parked transaction, its end and alerts: the flat list parses
    under the declaration, and the keys a sharded commit declares are the keys its ops name."""
    events = Events(r, prefix)
    insert = "INSERT INTO orders (id, customer_id, region, total) VALUES ($1, $2, $3, $4)"
    with events:
        for i in range(20):
            events.stmt(insert, [i, i % 3, "eu", f"{i}.50"], tag="INSERT", rows=1, sid=f"s{i % 4}", txid=i)
        events.stmt("INSERT INTO order_items (order_id, sku, quantity) VALUES ($1, $2, $3)", [1, "A", 2],
                    tag="INSERT", rows=1, txn="open", sid="t1", txid=1, n=1)
        events.txn_end("t1", 1, "committed", stmts=1)
        events.stmt("SELECT * FROM users WHERE name = 'x' OR 1=1", tag="SELECT", rows=3, sid="x1")
    rules = rules_file(security={"new_fingerprint": {"enabled": True, "learn_seconds": 0}})
    worker = make_worker(prefix, rules)
    shard = worker.shards[0]
    batch = worker.analyse(shard, list(r.xrange(shard.stream)))
    flat = batch.writes.args()
    codes = {op.code for _, op in ops.parse(flat)}
    assert {"H", "Z", "MAX", "L", "B", "GN", "C", "IFADD", "X"} <= codes, codes
    assert batch.writes.key_names() == ops.keys_in(flat)
    assert all(k.startswith(f"{prefix}:") for k in batch.writes.key_names())


@pytest.mark.parametrize("portable", [False, True])
def test_every_kind_of_write_declares_the_keys_its_ops_name(portable: bool) -> None:
    w = Writes(portable)
    w.hincr("k:h", "a", 1)
    w.zincr_("k:z", "m", 1.5)
    w.hmax("k:h", "max", 5)
    w.hmin("k:h", "min", 2)
    w.setnx("k:nx", "f", "v")
    w.hset("k:hs", "f", "v")
    w.add("k:s", "m")
    w.distinct("k:ds", "k:dh", "f", "m")
    w.expire("k:e", 100)
    w.expire_at("k:ea", int(time.time()) + 100)
    w.touch("k:last", "fp", "k:fp", "k:members", "k:entries", ["db|a"], [1])
    w.xadd("k:alerts", 10, {"f": "v"})
    w.once("k:dedup", 10).xadd("k:alerts2", 10, {"f": "v"})
    w.if_new_member("k:seen", "fp").hincr("k:h2", "f", 1)
    w.if_older("k:age", "f", 100, 10).hset("k:hs2", "f", "v")
    w.parked("k:out", "k:park", 10, "1").distinct("k:ds2", "k:dh2", "f", "m")
    w.parked("k:out", "k:park", 10).hincr("k:h3", "f", 1)
    w.txn_end("k:out2", "k:park2", "committed", 10, "1-2")
    if not portable:
        w.note("said")
    flat = w.args()
    ops.parse(flat)
    assert w.key_names() == ops.keys_in(flat)
    assert w.key_names() == {f"k:{name}" for name in (
        "h", "z", "nx", "hs", "s", "ds", "dh", "e", "ea", "last", "fp", "members", "entries", "alerts", "dedup",
        "alerts2", "seen", "h2", "age", "hs2", "out", "park", "ds2", "dh2", "h3", "out2", "park2")}
