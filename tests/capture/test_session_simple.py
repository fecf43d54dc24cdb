"""Simple-protocol capture, sans-I/O: Session driven by real message bytes through the decoders."""

from __future__ import annotations

import pytest

from fasterdata.proxy.events import ALWAYS_STMT, FIELDS
from fasterdata.proxy.session import BACKEND_WANTED, FRONTEND_WANTED

from .pgmsg import (
    Harness,
    complete,
    copy_data,
    copy_done,
    copy_in_response,
    data_row,
    empty_query,
    error,
    parameter_status,
    password,
    query,
    ready,
    row_description,
)

pytestmark = pytest.mark.usefixtures("session_class")  # both Session implementations (conftest)


def test_wanted_sets_are_minimal_and_never_hold_passwords() -> None:
    assert "p" not in FRONTEND_WANTED  # PasswordMessage / SASL responses
    assert "R" not in BACKEND_WANTED  # authentication requests (SASL challenges)
    assert "D" not in BACKEND_WANTED and "d" not in FRONTEND_WANTED  # DataRow, CopyData: skipped by length
    assert len(set(FRONTEND_WANTED)) == len(FRONTEND_WANTED) and len(set(BACKEND_WANTED)) == len(BACKEND_WANTED)


def test_password_message_is_never_decoded() -> None:
    h = Harness(login=False)
    msgs = h.fe.feed(password("hunter2") + query("SELECT 1"))
    assert [m[0] for m in msgs] == [ord("Q")]
    assert all(b"hunter2" not in m[1] for m in msgs)


def test_single_statement_event_fields() -> None:
    h = Harness()
    h.client(query("SELECT abalance FROM pgbench_accounts WHERE aid = 7;"), at=5_000_000)
    h.server(row_description("abalance"), data_row(b"0"), complete("SELECT 1"), at=5_000_250)
    assert h.events == []  # held until the transaction's end is known
    h.server(ready("I"), at=5_000_300)
    [ev] = h.take()
    assert ALWAYS_STMT <= ev.keys() <= FIELDS.keys()
    assert ev == {
        "v": "1", "kind": "stmt", "sid": "t-1", "client": "10.0.0.1:5555", "user": "alice", "db": "shop",
        "app": "web", "pid": "4242", "ts": "5000000", "dur_us": "250", "proto": "simple",
        "sql": "SELECT abalance FROM pgbench_accounts WHERE aid = 7", "txid": "1", "tag": "SELECT",
        "rows": "1", "txn": "autocommit",
    }
    assert all(isinstance(v, str) and v != "" for v in ev.values())
    assert h.session.idle


def test_multi_statement_query_one_event_each_with_own_rows_and_latency() -> None:
    h = Harness()
    h.client(query("INSERT INTO t (a) VALUES (1), (2); UPDATE t SET a = 3; SELECT 'x;y' FROM t"), at=2_000_100)
    h.server(complete("INSERT 0 2"), at=2_000_150)
    h.server(complete("UPDATE 2"), at=2_000_400)
    h.server(row_description("?column?"), data_row(b"x;y"), data_row(b"x;y"), complete("SELECT 2"),
             at=2_001_000)
    h.server(ready(), at=2_001_001)
    evs = h.take()
    assert [(e["sql"], e["tag"], e["rows"], e["ts"], e["dur_us"]) for e in evs] == [
        ("INSERT INTO t (a) VALUES (1), (2)", "INSERT", "2", "2000100", "50"),
        ("UPDATE t SET a = 3", "UPDATE", "2", "2000150", "250"),
        ("SELECT 'x;y' FROM t", "SELECT", "2", "2000400", "600"),
    ]
    assert {e["txn"] for e in evs} == {"autocommit"} and {e["txid"] for e in evs} == {"1"}


def test_error_aborts_the_rest_and_rolls_back_the_implicit_transaction() -> None:
    h = Harness()
    h.client(query("INSERT INTO t (a) VALUES (1); SELECT 1/0; INSERT INTO t (a) VALUES (2)"))
    h.server(complete("INSERT 0 1"), error("22012", "division by zero"), ready())
    evs = h.take()
    assert [(e["sql"], e.get("tag"), e.get("err"), e["txn"]) for e in evs] == [
        ("INSERT INTO t (a) VALUES (1)", "INSERT", None, "rolled_back"),
        ("SELECT 1/0", None, "22012", "rolled_back"),
    ]
    assert evs[1]["errmsg"] == "division by zero" and "rows" not in evs[1]


def test_single_failed_statement_is_rolled_back() -> None:
    h = Harness()
    h.client(query("SELECT * FROM missing"))
    h.server(error("42P01", 'relation "missing" does not exist'), ready())
    [ev] = h.take()
    assert ev["err"] == "42P01" and ev["txn"] == "rolled_back" and "tag" not in ev


def test_empty_query_makes_no_event() -> None:
    h = Harness()
    h.client(query("  -- nothing\n"))
    h.server(empty_query(), ready())
    h.client(query("SELECT 1"))
    h.server(complete("SELECT 1"), ready())
    assert [e["sql"] for e in h.take()] == ["SELECT 1"]
    assert h.session.idle


def test_statements_in_later_queries_get_new_txids() -> None:
    h = Harness()
    for i in range(3):
        h.client(query(f"SELECT {i}"))
        h.server(complete("SELECT 1"), ready())
    assert [e["txid"] for e in h.take()] == ["1", "2", "3"]


def test_application_name_follows_parameter_status() -> None:
    h = Harness()
    h.client(query("SET application_name = 'batch'"))
    h.server(complete("SET"), parameter_status("application_name", "batch"), ready())
    h.client(query("SELECT 1"))
    h.server(complete("SELECT 1"), ready())
    evs = h.take()
    assert evs[1]["app"] == "batch" and h.session.app == "batch"


def test_copy_from_stdin() -> None:
    h = Harness()
    h.client(query("COPY t FROM STDIN"), at=2_000_010)
    h.server(copy_in_response(), at=2_000_020)
    h.client(copy_data(b"1\n2\n3\n"), copy_done(), at=2_000_030)
    h.server(complete("COPY 3"), ready(), at=2_000_040)
    [ev] = h.take()
    assert (ev["tag"], ev["rows"], ev["dur_us"]) == ("COPY", "3", "30")
    assert h.session.idle


def test_password_statements_are_redacted() -> None:
    h = Harness()
    h.client(query("ALTER ROLE bob PASSWORD 'hunter2'; CREATE USER eve PASSWORD 'pw2'"))
    h.server(complete("ALTER ROLE"), complete("CREATE ROLE"), ready())
    evs = h.take()
    assert [e["sql"] for e in evs] == ["ALTER ROLE bob PASSWORD '***'", "CREATE USER eve PASSWORD '***'"]
    assert "hunter2" not in repr(evs) and "pw2" not in repr(evs)


def test_long_sql_is_cut() -> None:
    from fasterdata.proxy.events import CaptureOptions

    h = Harness(CaptureOptions(max_sql_chars=20))
    h.client(query("SELECT " + "1 + " * 20 + "1"))
    h.server(complete("SELECT 1"), ready())
    [ev] = h.take()
    assert ev["sql"].startswith("SELECT 1 + 1 + 1 + ") and ev["sql"].endswith("…[truncated 68 chars]")


def test_messages_split_across_reads() -> None:
    h = Harness()
    stream = query("SELECT 1; SELECT 2")
    for i in range(len(stream)):
        h.client(stream[i : i + 1])
    answer = complete("SELECT 1") + complete("SELECT 1") + ready()
    for i in range(len(answer)):
        h.server(answer[i : i + 1])
    assert [e["sql"] for e in h.take()] == ["SELECT 1", "SELECT 2"]


def test_outstanding_and_idle() -> None:
    h = Harness(login=False)
    assert not h.session.idle  # the login is in flight
    h.server(ready())
    assert h.session.idle
    h.client(query("BEGIN"))
    assert h.session.outstanding == 1 and not h.session.idle
    h.server(complete("BEGIN"), ready("T"))
    assert h.session.outstanding == 0 and not h.session.idle  # a transaction is open
    h.client(query("COMMIT"))
    h.server(complete("COMMIT"), ready("I"))
    assert h.session.idle


def test_login_failure_makes_no_event() -> None:
    h = Harness(login=False)
    h.server(error("28P01", "password authentication failed", "FATAL"))
    h.session.close(h.now)
    assert h.events == []



def test_multi_statement_query_marks_each_part() -> None:
    """Analyzers tell `1; DROP TABLE t` from two separate Queries by this field, not by timing."""
    h = Harness()
    h.client(query("SELECT 1; DROP TABLE t"))
    h.server(complete("SELECT 1"), complete("DROP TABLE"), ready("I"))
    h.client(query("SELECT 2"))
    h.server(complete("SELECT 1"), ready("I"))
    assert [ev.get("part") for ev in h.take()] == ["1/2", "2/2", None]
