"""psycopg 3 scripts through the real proxy: each statement's event, read back from Redis, carries the
sql, params, tag, rows, error and transaction outcome the server really produced.

Each test runs under its own application_name and finds its events by it; the database's contents
after the script are the truth the outcomes are checked against.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable
from decimal import Decimal

import psycopg
import pytest
import redis

from fasterdata.proxy.events import AUTOCOMMIT, COMMITTED, ROLLED_BACK
from tests.kit.metrics import settle
from tests.kit.processes import ProxyProcess, StartProxy
from tests.kit.services import direct_dsn
from tests.kit.streams import Event, statements


@pytest.fixture
def db(scratch_db: str) -> str:
    with psycopg.connect(direct_dsn(scratch_db), autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, note text)")
    return scratch_db


@pytest.fixture
def proxy(start_proxy: StartProxy) -> ProxyProcess:
    return start_proxy()


def run(proxy: ProxyProcess, rds: redis.Redis, db: str, app: str, script: Callable[[psycopg.Connection], None],
        autocommit: bool = True) -> list[Event]:
    """Run ``script`` on one connection through the proxy; return that session's events once all are in."""
    with psycopg.connect(proxy.dsn(db), autocommit=autocommit, application_name=app) as conn:
        script(conn)
    settle(proxy)
    events = statements(rds, proxy.prefix, app=app)
    assert len({ev["sid"] for ev in events}) <= 1
    return events


def only(events: list[Event], sql: str) -> Event:
    """The one event whose sql is exactly ``sql``."""
    found = [ev for ev in events if ev["sql"] == sql]
    assert len(found) == 1, (sql, found)
    return found[0]


def ids(db: str) -> set[int]:
    with psycopg.connect(direct_dsn(db)) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM t")}


def test_autocommit_committed_and_rolled_back(proxy: ProxyProcess, rds: redis.Redis, db: str, app_name: str) -> None:
    def script(conn: psycopg.Connection) -> None:
        conn.execute("INSERT INTO t (id, note) VALUES (1, 'auto'), (2, 'auto')")
        conn.execute("UPDATE t SET note = %s WHERE id = %s", ("changed", 2))
        with conn.transaction():
            conn.execute("INSERT INTO t (id, note) VALUES (%s, %s)", (10, "kept"))
            conn.execute("DELETE FROM t WHERE id = 1")
        with conn.transaction(force_rollback=True):
            conn.execute("INSERT INTO t (id, note) VALUES (%s, %s)", (20, "undone"))
            conn.execute("UPDATE t SET note = 'undone' WHERE id = 2")

    events = run(proxy, rds, db, app_name, script)
    assert ids(db) == {2, 10}
    assert len(events) == 10, events  # 2 autocommit + BEGIN, 2, COMMIT + BEGIN, 2, ROLLBACK

    ins = only(events, "INSERT INTO t (id, note) VALUES (1, 'auto'), (2, 'auto')")
    assert (ins["proto"], ins["tag"], ins["rows"], ins["txn"]) == ("simple", "INSERT", "2", AUTOCOMMIT)
    assert "params" not in ins
    upd = only(events, "UPDATE t SET note = $1 WHERE id = $2")
    assert (upd["proto"], upd["tag"], upd["rows"], upd["txn"]) == ("extended", "UPDATE", "1", AUTOCOMMIT)
    assert json.loads(upd["params"]) == ["changed", 2]
    assert ins["txid"] != upd["txid"]

    committed = events[2:6]
    assert [ev["sql"] for ev in committed] == ["BEGIN", "INSERT INTO t (id, note) VALUES ($1, $2)",
                                               "DELETE FROM t WHERE id = 1", "COMMIT"]
    assert [ev["tag"] for ev in committed] == ["BEGIN", "INSERT", "DELETE", "COMMIT"]
    assert [ev.get("rows") for ev in committed] == [None, "1", "1", None]
    assert {ev["txn"] for ev in committed} == {COMMITTED}
    assert len({ev["txid"] for ev in committed}) == 1
    assert json.loads(committed[1]["params"]) == [10, "kept"]

    undone = events[6:10]
    assert [ev["sql"] for ev in undone] == ["BEGIN", "INSERT INTO t (id, note) VALUES ($1, $2)",
                                            "UPDATE t SET note = 'undone' WHERE id = 2", "ROLLBACK"]
    assert [ev.get("rows") for ev in undone] == [None, "1", "1", None]
    assert {ev["txn"] for ev in undone} == {ROLLED_BACK}
    assert len({ev["txid"] for ev in undone}) == 1
    assert len({ins["txid"], upd["txid"], committed[0]["txid"], undone[0]["txid"]}) == 4


def test_savepoint_rollback_to(proxy: ProxyProcess, rds: redis.Redis, db: str, app_name: str) -> None:
    def script(conn: psycopg.Connection) -> None:
        with conn.transaction():
            conn.execute("INSERT INTO t (id, note) VALUES (1, 'before the savepoint')")
            with conn.transaction("sp1", force_rollback=True):  # SAVEPOINT … ROLLBACK TO SAVEPOINT
                conn.execute("INSERT INTO t (id, note) VALUES (2, 'after the savepoint')")
                conn.execute("UPDATE t SET note = 'touched after the savepoint' WHERE id = 1")
            conn.execute("INSERT INTO t (id, note) VALUES (3, 'after the rollback to')")

    events = run(proxy, rds, db, app_name, script)
    assert ids(db) == {1, 3}
    with psycopg.connect(direct_dsn(db)) as conn:
        assert conn.execute("SELECT note FROM t WHERE id = 1").fetchone() == ("before the savepoint",)
    # Work after the savepoint is rolled back; work before it, and after ROLLBACK TO, commits with the
    # transaction (as do the savepoint statements themselves: they are part of the committed transaction).
    assert [(ev["sql"], ev["tag"], ev["txn"]) for ev in events] == [
        ("BEGIN", "BEGIN", COMMITTED),
        ("INSERT INTO t (id, note) VALUES (1, 'before the savepoint')", "INSERT", COMMITTED),
        ('SAVEPOINT "sp1"', "SAVEPOINT", COMMITTED),
        ("INSERT INTO t (id, note) VALUES (2, 'after the savepoint')", "INSERT", ROLLED_BACK),
        ("UPDATE t SET note = 'touched after the savepoint' WHERE id = 1", "UPDATE", ROLLED_BACK),
        ('ROLLBACK TO "sp1"', "ROLLBACK", COMMITTED),
        ('RELEASE "sp1"', "RELEASE", COMMITTED),
        ("INSERT INTO t (id, note) VALUES (3, 'after the rollback to')", "INSERT", COMMITTED),
        ("COMMIT", "COMMIT", COMMITTED),
    ]
    assert len({ev["txid"] for ev in events}) == 1


def test_pipeline_mode(proxy: ProxyProcess, rds: redis.Redis, db: str, app_name: str) -> None:
    def script(conn: psycopg.Connection) -> None:
        with conn.pipeline():
            conn.execute("INSERT INTO t (id, note) VALUES (%s, %s)", (1, "p1"))
            conn.execute("INSERT INTO t (id, note) VALUES (%s, %s)", (2, "p2"))
            conn.execute("UPDATE t SET note = %s WHERE id >= %s", ("px", 1))
        # An error inside a pipeline: the server skips what follows until Sync and undoes the implicit
        # transaction, so the statement before it is rolled back and the one after never ran.
        with pytest.raises(psycopg.errors.UniqueViolation), conn.pipeline():
            conn.execute("INSERT INTO t (id, note) VALUES (%s, %s)", (30, "undone by the error"))
            conn.execute("INSERT INTO t (id, note) VALUES (%s, %s)", (1, "duplicate"))
            conn.execute("INSERT INTO t (id, note) VALUES (%s, %s)", (31, "never ran"))

    events = run(proxy, rds, db, app_name, script)
    assert ids(db) == {1, 2}
    assert [json.loads(ev["params"]) for ev in events] == [[1, "p1"], [2, "p2"], ["px", 1],
                                                           [30, "undone by the error"], [1, "duplicate"]]
    assert {ev["proto"] for ev in events} == {"extended"}
    ok, failed = events[:3], events[3:]
    assert [(ev["tag"], ev["rows"], ev["txn"]) for ev in ok] == [
        ("INSERT", "1", AUTOCOMMIT), ("INSERT", "1", AUTOCOMMIT), ("UPDATE", "2", AUTOCOMMIT)]
    assert failed[0]["txn"] == ROLLED_BACK and failed[0]["tag"] == "INSERT"
    assert failed[1]["txn"] == ROLLED_BACK and failed[1]["err"] == "23505" and "tag" not in failed[1]
    assert "duplicate key" in failed[1]["errmsg"]


def test_copy_from_stdin(proxy: ProxyProcess, rds: redis.Redis, db: str, app_name: str) -> None:
    def script(conn: psycopg.Connection) -> None:
        with conn.cursor().copy("COPY t (id, note) FROM STDIN") as copy:
            for i in range(100, 137):
                copy.write_row((i, f"copied {i}"))
        with conn.transaction(), conn.cursor().copy("COPY t FROM STDIN") as copy:
            copy.write_row((500, "copied in a transaction"))

    events = run(proxy, rds, db, app_name, script)
    assert len(ids(db)) == 38
    first = only(events, "COPY t (id, note) FROM STDIN")
    assert (first["tag"], first["rows"], first["txn"]) == ("COPY", "37", AUTOCOMMIT)
    second = only(events, "COPY t FROM STDIN")
    assert (second["tag"], second["rows"], second["txn"]) == ("COPY", "1", COMMITTED)
    assert len(events) == 4  # and BEGIN, COMMIT


def test_failing_statement(proxy: ProxyProcess, rds: redis.Redis, db: str, app_name: str) -> None:
    def script(conn: psycopg.Connection) -> None:
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0")
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM no_such_table WHERE id = %s", (1,))
        conn.execute("SELECT 1")

    events = run(proxy, rds, db, app_name, script)
    assert len(events) == 3
    div = only(events, "SELECT 1/0")
    assert (div["err"], div["txn"], div["proto"]) == ("22012", ROLLED_BACK, "simple")
    assert div["errmsg"] == "division by zero" and "tag" not in div and "rows" not in div
    missing = only(events, "SELECT * FROM no_such_table WHERE id = $1")
    assert (missing["err"], missing["txn"]) == ("42P01", ROLLED_BACK)
    assert 'relation "no_such_table" does not exist' in missing["errmsg"]
    fine = only(events, "SELECT 1")
    assert (fine["tag"], fine["rows"], fine["txn"]) == ("SELECT", "1", AUTOCOMMIT) and "err" not in fine


def test_multi_statement_simple_query(proxy: ProxyProcess, rds: redis.Redis, db: str, app_name: str) -> None:
    sql = ("INSERT INTO t (id, note) VALUES (1, 'a'), (2, 'b'), (3, 'c'); UPDATE t SET note = 'x' WHERE id >= 2;"
           " DELETE FROM t WHERE id = 3; SELECT * FROM t ORDER BY id")

    def script(conn: psycopg.Connection) -> None:
        conn.execute(sql)
        # The implicit transaction of a multi-statement Query: one error undoes it all.
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO t (id, note) VALUES (7, 'undone'); "
                         "INSERT INTO t (id, note) VALUES (1, 'duplicate'); SELECT 1")

    events = run(proxy, rds, db, app_name, script)
    assert ids(db) == {1, 2}
    assert [(ev["sql"], ev["tag"], ev["rows"], ev["txn"]) for ev in events[:4]] == [
        ("INSERT INTO t (id, note) VALUES (1, 'a'), (2, 'b'), (3, 'c')", "INSERT", "3", AUTOCOMMIT),
        ("UPDATE t SET note = 'x' WHERE id >= 2", "UPDATE", "2", AUTOCOMMIT),
        ("DELETE FROM t WHERE id = 3", "DELETE", "1", AUTOCOMMIT),
        ("SELECT * FROM t ORDER BY id", "SELECT", "2", AUTOCOMMIT),
    ]
    assert {ev["proto"] for ev in events} == {"simple"}
    assert len({ev["txid"] for ev in events[:4]}) == 1
    undone, dup = events[4:]
    assert (undone["sql"], undone["tag"], undone["txn"]) == ("INSERT INTO t (id, note) VALUES (7, 'undone')", "INSERT",
                                                             ROLLED_BACK)
    assert (dup["sql"], dup["err"], dup["txn"]) == ("INSERT INTO t (id, note) VALUES (1, 'duplicate')", "23505",
                                                    ROLLED_BACK)


def test_multi_statement_query_keeps_its_whole_time(proxy: ProxyProcess, rds: redis.Redis, db: str,
                                                    app_name: str) -> None:
    """The server answers all parts in one write at the end, so the time is kept whole, not split."""
    events = run(proxy, rds, db, app_name, lambda conn: conn.execute("SELECT 1; SELECT pg_sleep(0.05); SELECT 2"))
    assert [ev["part"] for ev in events] == ["1/3", "2/3", "3/3"]
    assert sum(int(ev["dur_us"]) for ev in events) >= 50_000  # pg_sleep sleeps at least that long
    first, last = events[0], events[-1]
    assert int(last["ts"]) + int(last["dur_us"]) - int(first["ts"]) >= 50_000


def test_bound_parameters_of_many_types(proxy: ProxyProcess, rds: redis.Redis, db: str, app_name: str) -> None:
    when = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    uid = uuid.UUID("0b9e5a52-8d3e-4c6f-9a51-2d1c0e6f7a80")
    amount = Decimal("12345678901234567890.000000001")
    values = (42, amount, "text with 'quotes' and ünïcode", when, uid, b"\x00\x01\xfe\xff", [1, 2, None, 4], None)

    def script(conn: psycopg.Connection) -> None:
        conn.execute("CREATE TABLE typed (i int, n numeric, s text, ts timestamptz, u uuid, b bytea, a int[], "
                     "z text)")
        insert = "INSERT INTO typed (i, n, s, ts, u, b, a, z) VALUES "
        conn.execute(insert + "(%s, %s, %s, %s, %s, %s, %s, %s)", values)  # text where it can
        conn.execute(insert + "(%b, %b, %b, %b, %b, %b, %b, %b)", values)  # binary format
        conn.execute("SELECT count(*) FROM typed WHERE i = %s AND n = %s AND u = %s AND ts = %s",
                     (42, amount, uid, when))

    events = run(proxy, rds, db, app_name, script)
    with psycopg.connect(direct_dsn(db)) as conn:
        assert conn.execute("SELECT count(*) FROM typed").fetchone() == (2,)
    inserts = [ev for ev in events if ev["sql"].startswith("INSERT INTO typed")]
    assert len(inserts) == 2
    for ev in inserts:
        assert (ev["tag"], ev["rows"], ev["txn"], ev["proto"]) == ("INSERT", "1", AUTOCOMMIT, "extended")
        params = json.loads(ev["params"])
        assert len(params) == 8 and len(json.loads(ev["ptypes"])) == 8
        i, n, s, ts, u, b, a, z = params
        assert i == 42 and isinstance(i, int)
        assert n == "12345678901234567890.000000001"  # numeric stays exact: a string, never a float
        assert s == "text with 'quotes' and ünïcode"
        assert dt.datetime.fromisoformat(ts) == when
        assert u == str(uid)
        assert b == "\\x0001feff"
        assert a == [1, 2, None, 4]
        assert z is None
    [sel] = [ev for ev in events if ev["sql"].startswith("SELECT count(*)")]
    i, n, u, ts = json.loads(sel["params"])
    assert (i, n, u, sel["rows"]) == (42, "12345678901234567890.000000001", str(uid), "1")
    assert dt.datetime.fromisoformat(ts) == when
