"""Capture against the real PostgreSQL: real drivers (psycopg 3, asyncpg, a raw protocol client)
talk to the server through an in-test byte relay that taps every chunk into a Session.

Each test checks the events against what the server really did (row counts, what is left in the
table), so the semantics are proven by the server, not by our reading of the protocol docs.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from decimal import Decimal

import asyncpg
import psycopg
import pytest

from fasterdata.proxy.events import ALWAYS_STMT, ALWAYS_TXN_END, FIELDS, CaptureOptions
from tests.kit.services import PG_HOST, PG_PORT, RUN_ID

from . import pgmsg
from .relay import RawClient, Relay

pytestmark = pytest.mark.usefixtures("session_class")  # both Session implementations (conftest)


@pytest.fixture
def relay() -> Iterator[Relay]:
    r = Relay((PG_HOST, PG_PORT))
    yield r
    r.stop()
    assert not r.errors, r.errors


@pytest.fixture
def db(scratch_db: str) -> str:
    with psycopg.connect(f"host={PG_HOST} port={PG_PORT} user=postgres dbname={scratch_db}",
                         autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, note text)")
        conn.execute("CREATE TABLE users (name text, password text)")
    return scratch_db


def stmts(relay: Relay, **match: str) -> list[dict[str, str]]:
    """Statement events, leaving out the driver's own chatter at connect time."""
    out = [e for e in relay.events if e["kind"] == "stmt"]
    return [e for e in out if all(e.get(k) == v for k, v in match.items())]


def of_sql(relay: Relay, fragment: str) -> list[dict[str, str]]:
    return [e for e in stmts(relay) if fragment in e["sql"]]


def count_rows(dbname: str) -> int:
    with psycopg.connect(f"host={PG_HOST} port={PG_PORT} user=postgres dbname={dbname}") as conn:
        return conn.execute("SELECT count(*) FROM t").fetchone()[0]


def test_every_event_keeps_the_contract(relay: Relay, db: str) -> None:
    with psycopg.connect(relay.dsn(db, application_name="live-test"), autocommit=True) as conn:
        conn.execute("INSERT INTO t (id, note) VALUES (%s, %s)", (1, "a"))
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0")
        pid = conn.info.backend_pid
    relay.wait_closed()
    assert relay.events
    for ev in relay.events:
        assert ev.keys() <= FIELDS.keys()
        assert (ALWAYS_STMT if ev["kind"] == "stmt" else ALWAYS_TXN_END) <= ev.keys()
        assert all(isinstance(v, str) for v in ev.values())
    [ins] = of_sql(relay, "INSERT")
    assert (ins["user"], ins["db"], ins["app"], ins["pid"]) == ("postgres", db, "live-test", str(pid))
    assert ins["client"].startswith("127.0.0.1:") and int(ins["dur_us"]) >= 0
    assert (ins["tag"], ins["rows"], ins["txn"], ins["proto"]) == ("INSERT", "1", "autocommit", "extended")
    assert json.loads(ins["params"]) == [1, "a"]
    [bad] = of_sql(relay, "1/0")
    assert (bad["err"], bad["txn"]) == ("22012", "rolled_back") and "division" in bad["errmsg"]


def test_simple_protocol_multi_statement(relay: Relay, db: str) -> None:
    with psycopg.connect(relay.dsn(db), autocommit=True) as conn:
        cur = psycopg.ClientCursor(conn)
        cur.execute("INSERT INTO t (id) VALUES (1), (2); UPDATE t SET note = 'x;y' WHERE id > 0; SELECT * FROM t")
        with pytest.raises(psycopg.errors.DivisionByZero):
            cur.execute("INSERT INTO t (id) VALUES (3); SELECT 1/0; INSERT INTO t (id) VALUES (4)")
        cur.execute("")  # empty query: no event
    got = [(e["sql"], e.get("tag"), e.get("rows"), e.get("err"), e["txn"]) for e in stmts(relay, proto="simple")
           if e["sql"].startswith(("INSERT", "UPDATE", "SELECT"))]
    assert got == [
        ("INSERT INTO t (id) VALUES (1), (2)", "INSERT", "2", None, "autocommit"),
        ("UPDATE t SET note = 'x;y' WHERE id > 0", "UPDATE", "2", None, "autocommit"),
        ("SELECT * FROM t", "SELECT", "2", None, "autocommit"),
        ("INSERT INTO t (id) VALUES (3)", "INSERT", "1", None, "rolled_back"),
        ("SELECT 1/0", None, None, "22012", "rolled_back"),
    ]
    assert count_rows(db) == 2  # the server agrees: row 3 was rolled back, row 4 never inserted
    first = stmts(relay, proto="simple", sql="INSERT INTO t (id) VALUES (1), (2)")[0]
    second = stmts(relay, proto="simple", sql="UPDATE t SET note = 'x;y' WHERE id > 0")[0]
    assert int(second["ts"]) == int(first["ts"]) + int(first["dur_us"])  # starts when the first ended


def test_extended_params_text_and_binary(relay: Relay, db: str) -> None:
    values = (7, "héllo", Decimal("12.3400"), dt.date(2024, 2, 29),
              dt.datetime(2024, 1, 2, 3, 4, 5, 600000, tzinfo=dt.UTC), uuid.UUID(int=42), b"\x00\xff",
              [1, None, 3], True, None, 2.5)
    sql = "SELECT %s::int, %s, %s::numeric, %s, %s, %s, %s, %s, %s, %s::text, %s"
    with psycopg.connect(relay.dsn(db), autocommit=True) as conn:
        conn.execute(sql, values)
        conn.execute(sql.replace("%s", "%b"), values)
        conn.execute(sql.replace("%s", "%t"), values)
    evs = of_sql(relay, "$11")
    assert len(evs) == 3
    expected = [7, "héllo", "12.3400", "2024-02-29", "\\x00ff", [1, None, 3], True, None, 2.5]
    for ev in evs:
        got = json.loads(ev["params"])
        ts = got.pop(4)
        assert uuid.UUID(got.pop(4)) == uuid.UUID(int=42)  # text form as the client wrote it
        assert got == expected
        assert ts.startswith("2024-01-02") and ts.endswith(("+00", "+00:00"))
        assert len(json.loads(ev["ptypes"])) == 11


def test_prepared_statements_and_deallocation(relay: Relay, db: str) -> None:
    with psycopg.connect(relay.dsn(db), autocommit=True, prepare_threshold=0) as conn:
        for i in range(3):
            conn.execute("INSERT INTO t (id, note) VALUES (%s, %s)", (i, f"n{i}"))
        conn.execute("DEALLOCATE ALL")
        conn.execute("SELECT note FROM t WHERE id = %s", (2,))
        conn.execute("DISCARD ALL")
        conn.execute("SELECT note FROM t WHERE id = %s", (1,))
    ins = of_sql(relay, "INSERT INTO t")
    assert len(ins) == 3 and all(e.get("stmt", "").startswith("_pg3_") for e in ins)
    assert [json.loads(e["params"]) for e in ins] == [[0, "n0"], [1, "n1"], [2, "n2"]]
    sel = of_sql(relay, "SELECT note")
    assert [json.loads(e["params"]) for e in sel] == [[2], [1]]
    assert all(e["sql"] == "SELECT note FROM t WHERE id = $1" and e["rows"] == "1" for e in sel)


def test_explicit_transactions_and_savepoints(relay: Relay, db: str) -> None:
    with psycopg.connect(relay.dsn(db)) as conn:  # not autocommit: psycopg sends BEGIN
        conn.execute("INSERT INTO t (id) VALUES (1)")
        with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():  # a savepoint
            conn.execute("INSERT INTO t (id) VALUES (2)")
            conn.execute("INSERT INTO t (id) VALUES (1)")
        conn.execute("INSERT INTO t (id) VALUES (3)")
        conn.commit()
        conn.execute("INSERT INTO t (id) VALUES (4)")
        conn.rollback()
    by_sql = {}
    for e in of_sql(relay, "INSERT"):
        by_sql.setdefault(e["sql"], []).append((e["txn"], e.get("err")))
    assert by_sql == {
        "INSERT INTO t (id) VALUES (1)": [("committed", None), ("rolled_back", "23505")],
        "INSERT INTO t (id) VALUES (2)": [("rolled_back", None)],
        "INSERT INTO t (id) VALUES (3)": [("committed", None)],
        "INSERT INTO t (id) VALUES (4)": [("rolled_back", None)],
    }
    with psycopg.connect(f"host={PG_HOST} port={PG_PORT} user=postgres dbname={db}") as conn:
        assert [r[0] for r in conn.execute("SELECT id FROM t ORDER BY id")] == [1, 3]  # the server agrees
    txids = {e["txid"] for e in of_sql(relay, "VALUES (3)")} | {e["txid"] for e in of_sql(relay, "VALUES (2)")}
    assert len(txids) == 1  # the savepoint's statements belong to the outer transaction


def test_commit_of_failed_transaction(relay: Relay, db: str) -> None:
    with psycopg.connect(relay.dsn(db), autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t (id) VALUES (1)")
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0")
        conn.execute("COMMIT")
    evs = [e for e in stmts(relay) if e["sql"] in ("BEGIN", "INSERT INTO t (id) VALUES (1)", "SELECT 1/0", "COMMIT")]
    assert [(e["sql"], e.get("tag"), e["txn"]) for e in evs] == [
        ("BEGIN", "BEGIN", "rolled_back"), ("INSERT INTO t (id) VALUES (1)", "INSERT", "rolled_back"),
        ("SELECT 1/0", None, "rolled_back"), ("COMMIT", "ROLLBACK", "rolled_back")]
    assert count_rows(db) == 0


def test_pipeline_error_rolls_back_the_implicit_transaction(relay: Relay, db: str) -> None:
    with psycopg.connect(relay.dsn(db), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.UniqueViolation), conn.pipeline():
            conn.execute("INSERT INTO t (id) VALUES (%s)", (1,))
            conn.execute("INSERT INTO t (id) VALUES (%s)", (2,))
            conn.execute("INSERT INTO t (id) VALUES (%s)", (1,))
            conn.execute("INSERT INTO t (id) VALUES (%s)", (3,))
        with conn.pipeline():
            conn.execute("INSERT INTO t (id) VALUES (%s)", (10,))
            conn.execute("INSERT INTO t (id) VALUES (%s)", (11,))
    evs = of_sql(relay, "INSERT INTO t")
    assert [(json.loads(e["params"]), e.get("err"), e["txn"]) for e in evs] == [
        ([1], None, "rolled_back"), ([2], None, "rolled_back"), ([1], "23505", "rolled_back"),
        ([10], None, "autocommit"), ([11], None, "autocommit")]
    assert evs[0]["txid"] == evs[2]["txid"] != evs[3]["txid"] == evs[4]["txid"]
    with psycopg.connect(f"host={PG_HOST} port={PG_PORT} user=postgres dbname={db}") as conn:
        assert [r[0] for r in conn.execute("SELECT id FROM t ORDER BY id")] == [10, 11]


def test_portal_fetched_with_row_limits(relay: Relay, db: str) -> None:
    c = RawClient(relay.port, db)
    c.send(pgmsg.query("BEGIN"))
    c.until_ready()
    c.send(pgmsg.parse("SELECT g FROM generate_series(1, 5) g"), pgmsg.bind(portal="c1"),
           pgmsg.execute("c1", 2), pgmsg.sync())
    assert [m[0] for m in c.until_ready()] == ["1", "s", "Z"]
    c.send(pgmsg.execute("c1", 2), pgmsg.sync())
    assert [m[0] for m in c.until_ready()] == ["s", "Z"]
    c.send(pgmsg.execute("c1", 2), pgmsg.sync())
    answer = c.until_ready()
    assert [m[0] for m in answer] == ["C", "Z"] and answer[0][1] == b"SELECT 1\0"  # the server counts 1
    # A second portal left after one fetch, closed when the transaction ends.
    c.send(pgmsg.bind(portal="c2", stmt=""), pgmsg.execute("c2", 3), pgmsg.sync())
    c.until_ready()
    c.send(pgmsg.query("COMMIT"))
    c.until_ready()
    c.close()
    relay.wait_closed()
    evs = of_sql(relay, "generate_series")
    assert [(e.get("tag"), e["rows"], e["txn"]) for e in evs] == [("SELECT", "5", "committed"),
                                                                  (None, "3", "committed")]


def test_copy_from_stdin_simple_and_extended(relay: Relay, db: str) -> None:
    with psycopg.connect(relay.dsn(db), autocommit=True) as conn:
        with conn.cursor().copy("COPY t (id) FROM STDIN") as copy:
            for i in range(3):
                copy.write_row((i,))
        conn.execute("SELECT 1")
    # Extended protocol, the way libpq does it: Sync right after Execute (ignored by the server
    # during COPY), then another Sync after CopyDone.
    c = RawClient(relay.port, db)
    c.send(pgmsg.parse("COPY t (id) FROM STDIN"), pgmsg.bind(), pgmsg.describe("P"), pgmsg.execute(),
           pgmsg.sync())
    c.read_until("G")
    c.send(pgmsg.copy_data(b"10\n11\n"), pgmsg.copy_done(), pgmsg.sync())
    assert [m[0] for m in c.until_ready()] == ["C", "Z"]
    c.send(pgmsg.query("SELECT 2"))
    c.until_ready()
    session = relay.sessions[-1]
    assert session.idle and session.outstanding == 0
    c.close()
    evs = of_sql(relay, "COPY")
    assert [(e["proto"], e["tag"], e["rows"], e["txn"]) for e in evs] == [
        ("simple", "COPY", "3", "autocommit"), ("extended", "COPY", "2", "autocommit")]
    assert of_sql(relay, "SELECT 2")[0]["tag"] == "SELECT"
    assert count_rows(db) == 5


def test_close_with_open_transaction(relay: Relay, db: str) -> None:
    conn = psycopg.connect(relay.dsn(db))
    conn.execute("INSERT INTO t (id) VALUES (1)")
    conn.close()  # without commit: the server rolls back
    relay.wait_closed()
    [ev] = of_sql(relay, "INSERT")
    assert ev["txn"] == "rolled_back"
    assert count_rows(db) == 0


def test_application_name_and_password_redaction(relay: Relay, db: str) -> None:
    role = f"fdtest_role_{RUN_ID}"
    with psycopg.connect(relay.dsn(db, application_name="first"), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} PASSWORD 'hunter2-secret'")
        conn.execute("SET application_name = 'second'")
        # Positional mapping needs the column list (the proxy knows no schema).
        conn.execute("INSERT INTO users (name, password) VALUES (%s, %s)", ("bob", "pw-123"))
        conn.execute("UPDATE users SET password = 'pw-456' WHERE name = 'bob'")
        conn.execute(f"DROP ROLE {role}")
    assert "hunter2" not in repr(relay.events) and "pw-123" not in repr(relay.events)
    assert "pw-456" not in repr(relay.events)
    [create] = of_sql(relay, "CREATE ROLE")
    assert create["sql"] == f"CREATE ROLE {role} PASSWORD '***'" and create["app"] == "first"
    [ins] = of_sql(relay, "INSERT INTO users")
    assert json.loads(ins["params"]) == ["bob", "***"] and ins["app"] == "second"
    [upd] = of_sql(relay, "UPDATE users")
    assert upd["sql"] == "UPDATE users SET password = '***' WHERE name = 'bob'"


def test_held_bound_sends_open_and_marker(db: str) -> None:
    r = Relay((PG_HOST, PG_PORT), CaptureOptions(max_held=2))
    try:
        with psycopg.connect(r.dsn(db)) as conn:
            for i in range(4):
                conn.execute("INSERT INTO t (id) VALUES (%s)", (i,))
            conn.commit()
    finally:
        r.stop()
    ins = [e for e in r.events if e["kind"] == "stmt" and "INSERT" in e["sql"]]
    assert [e["txn"] for e in ins] == ["open"] * 4
    [marker] = [e for e in r.events if e["kind"] == "txn_end"]
    assert marker["txn"] == "committed" and marker["txid"] == ins[0]["txid"]
    assert marker["stmts"] == "6"  # BEGIN, 4 INSERTs, COMMIT


async def test_asyncpg_binary_params_and_described_types(relay: Relay, db: str) -> None:
    conn = await asyncpg.connect(host="127.0.0.1", port=relay.port, user="postgres", database=db, ssl=False)
    try:
        await conn.execute("INSERT INTO t (id, note) VALUES ($1, $2)", 5, "five")
        row = await conn.fetchrow("SELECT $1::numeric + 1, $2::timestamp, $3::int[]", Decimal("1.5"),
                                  dt.datetime(2020, 5, 6, 7, 8, 9), [1, 2])
        assert row[0] == Decimal("2.5")
        async with conn.transaction():
            await conn.execute("UPDATE t SET note = $1 WHERE id = $2", "FIVE", 5)
    finally:
        await conn.close()
    [ins] = of_sql(relay, "INSERT INTO t")
    assert json.loads(ins["params"]) == [5, "five"] and ins["ptypes"] == "[23,25]"
    assert ins["stmt"].startswith("__asyncpg_stmt_") and ins["txn"] == "autocommit"
    [sel] = of_sql(relay, "::numeric")
    assert json.loads(sel["params"]) == ["1.5", "2020-05-06 07:08:09", [1, 2]]
    assert sel["ptypes"] == "[1700,1114,1007]"
    [upd] = of_sql(relay, "UPDATE t")
    assert upd["txn"] == "committed" and json.loads(upd["params"]) == ["FIVE", 5]
