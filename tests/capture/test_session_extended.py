"""Extended-protocol capture, sans-I/O: statements, portals, pipelining and error recovery."""

from __future__ import annotations

import json
import struct

import pytest

from .pgmsg import (
    Harness,
    bind,
    bind_complete,
    close,
    close_complete,
    complete,
    copy_data,
    copy_done,
    copy_in_response,
    data_row,
    describe,
    empty_query,
    error,
    execute,
    flush,
    no_data,
    param_description,
    parse,
    parse_complete,
    query,
    ready,
    row_description,
    suspended,
    sync,
)

pytestmark = pytest.mark.usefixtures("session_class")  # both Session implementations (conftest)

OK_SELECT = (parse_complete(), bind_complete(), row_description("a"), data_row(b"1"), complete("SELECT 1"))


def test_unnamed_statement_with_params() -> None:
    h = Harness()
    h.client(parse("SELECT * FROM t WHERE a = $1 AND b = $2", oids=(23, 25)),
             bind([b"42", b"it's"]), describe("P"), execute(), sync(), at=2_000_000)
    h.server(*OK_SELECT, at=2_000_300)
    h.server(ready(), at=2_000_310)
    [ev] = h.take()
    assert ev["proto"] == "extended" and "stmt" not in ev
    assert ev["sql"] == "SELECT * FROM t WHERE a = $1 AND b = $2"
    assert json.loads(ev["params"]) == [42, "it's"] and ev["ptypes"] == "[23,25]"
    assert (ev["ts"], ev["dur_us"], ev["tag"], ev["rows"], ev["txn"]) == ("2000000", "300", "SELECT", "1",
                                                                          "autocommit")
    assert h.session.idle


def test_named_statement_prepared_once_executed_many_times() -> None:
    h = Harness()
    h.client(parse("UPDATE t SET a = $1 WHERE id = $2", "upd", (23, 23)), sync())
    h.server(parse_complete(), ready())
    for i in range(3):
        h.client(bind([str(i).encode(), b"7"], stmt="upd"), execute(), sync())
        h.server(bind_complete(), complete(f"UPDATE {i}"), ready())
    evs = h.take()
    assert [(e["stmt"], e["params"], e.get("rows")) for e in evs] == [
        ("upd", "[0,7]", "0"), ("upd", "[1,7]", "1"), ("upd", "[2,7]", "2")]
    assert [e["txid"] for e in evs] == ["1", "2", "3"]


def test_parameter_description_gives_the_types() -> None:
    h = Harness()
    h.client(parse("SELECT $1::int + $2", "s1"), describe("S", "s1"), sync())
    h.server(parse_complete(), param_description(23, 23), row_description("?column?"), ready())
    h.client(bind([struct.pack("!i", 5), b"6"], stmt="s1", formats=(1, 0)), execute(), sync())
    h.server(bind_complete(), data_row(b"11"), complete("SELECT 1"), ready())
    [ev] = h.take()
    assert ev["ptypes"] == "[23,23]" and json.loads(ev["params"]) == [5, 6]


def test_binary_and_null_params_and_unspecified_types() -> None:
    h = Harness()
    h.client(parse("INSERT INTO t (a, b, c, d) VALUES ($1, $2, $3, $4)", oids=(20, 0, 17)),
             bind([struct.pack("!q", -5), None, b"\x00\xff", b"plain"], formats=(1, 0, 1, 0)),
             execute(), sync())
    h.server(parse_complete(), bind_complete(), complete("INSERT 0 1"), ready())
    [ev] = h.take()
    assert json.loads(ev["params"]) == [-5, None, "\\x00ff", "plain"]
    assert ev["ptypes"] == "[20,0,17]"


def test_sensitive_params_are_hidden() -> None:
    h = Harness()
    h.client(parse("INSERT INTO users (name, password) VALUES ($1, $2)"), bind([b"bob", b"hunter2"]),
             execute(), sync())
    h.server(parse_complete(), bind_complete(), complete("INSERT 0 1"), ready())
    [ev] = h.take()
    assert json.loads(ev["params"]) == ["bob", "***"] and "hunter2" not in repr(ev)


def test_pipeline_one_sync_is_one_implicit_transaction() -> None:
    h = Harness()
    stmts = [f"INSERT INTO t (a) VALUES ({i})" for i in range(3)]
    h.client(*[m for s in stmts for m in (parse(s), bind(), execute())], sync(), at=2_000_000)
    h.server(parse_complete(), bind_complete(), complete("INSERT 0 1"), at=2_000_100)
    h.server(parse_complete(), bind_complete(), complete("INSERT 0 1"), at=2_000_250)
    h.server(parse_complete(), bind_complete(), complete("INSERT 0 1"), ready(), at=2_000_300)
    evs = h.take()
    assert [e["sql"] for e in evs] == stmts
    # Pipelined statements start when the previous one completed, not when the bytes arrived.
    assert [(e["ts"], e["dur_us"]) for e in evs] == [("2000000", "100"), ("2000100", "150"), ("2000250", "50")]
    assert {e["txn"] for e in evs} == {"autocommit"} and {e["txid"] for e in evs} == {"1"}


def test_pipeline_error_drops_requests_until_sync() -> None:
    h = Harness()
    h.client(parse("INSERT INTO t (a) VALUES (1)"), bind(), execute(),
             parse("INSERT INTO t (a) VALUES (1/0)"), bind(), execute(),
             parse("INSERT INTO t (a) VALUES (3)"), bind(), execute(), sync(),
             parse("SELECT 4"), bind(), execute(), sync())
    h.server(parse_complete(), bind_complete(), complete("INSERT 0 1"),
             parse_complete(), bind_complete(), error("22012", "division by zero"), ready(),
             *OK_SELECT, ready())
    evs = h.take()
    assert [(e["sql"], e.get("err"), e["txn"], e["txid"]) for e in evs] == [
        ("INSERT INTO t (a) VALUES (1)", None, "rolled_back", "1"),
        ("INSERT INTO t (a) VALUES (1/0)", "22012", "rolled_back", "1"),
        ("SELECT 4", None, "autocommit", "2"),
    ]
    assert h.session.idle


def test_several_syncs_in_flight() -> None:
    h = Harness()
    for i in range(3):
        h.client(bind(stmt="") if i else parse(f"SELECT {i}"), bind(), execute(), sync())
    assert h.session.outstanding == 3
    h.server(parse_complete(), bind_complete(), complete("SELECT 1"), ready())
    assert h.session.outstanding == 2 and not h.session.idle
    h.server(bind_complete(), bind_complete(), error("57014", "canceling statement"), ready())
    h.server(bind_complete(), bind_complete(), complete("SELECT 1"), ready())
    evs = h.take()
    assert [(e.get("err"), e["txn"]) for e in evs] == [(None, "autocommit"), ("57014", "rolled_back"),
                                                        (None, "autocommit")]
    assert h.session.idle


def test_error_before_the_client_sent_its_sync() -> None:
    h = Harness()
    h.client(parse("SELECT 1/0"), bind(), execute(), flush())
    h.server(parse_complete(), bind_complete(), error("22012", "division by zero"))
    # The server now ignores everything up to Sync, including messages sent after the error arrived.
    h.client(parse("SELECT 2"), bind(), execute(), query("SELECT 3"))
    h.client(sync())
    h.server(ready())
    h.client(parse("SELECT 5"), bind(), execute(), sync())
    h.server(*OK_SELECT, ready())
    assert [(e["sql"], e.get("err")) for e in h.take()] == [("SELECT 1/0", "22012"), ("SELECT 5", None)]
    assert h.session.idle


def test_parse_error_is_an_event_and_the_rest_is_skipped() -> None:
    h = Harness()
    h.client(parse("SELEC 1", "bad"), describe("S", "bad"), bind(stmt="bad"), execute(), sync())
    h.server(error("42601", 'syntax error at or near "SELEC"'), ready())
    [ev] = h.take()
    assert (ev["sql"], ev["err"], ev["stmt"], ev["txn"]) == ("SELEC 1", "42601", "bad", "rolled_back")
    assert "tag" not in ev
    # The server has no statement "bad": neither has the session.
    assert b"bad" not in h.session._stmts


def test_failed_reparse_of_a_name_keeps_the_old_statement() -> None:
    h = Harness()
    h.client(parse("SELECT 1", "s"), sync())
    h.server(parse_complete(), ready())
    h.client(parse("SELECT 2", "s"), sync())
    h.server(error("42P05", 'prepared statement "s" already exists'), ready())
    h.client(bind(stmt="s"), execute(), sync())
    h.server(bind_complete(), complete("SELECT 1"), ready())
    assert [e["sql"] for e in h.take()] == ["SELECT 2", "SELECT 1"]


def test_bind_error_is_reported_on_its_execute() -> None:
    h = Harness()
    h.client(parse("SELECT $1::int"), bind([b"abc"]), execute(), sync())
    h.server(parse_complete(), error("22P02", 'invalid input syntax for type integer: "abc"'), ready())
    [ev] = h.take()
    assert ev["err"] == "22P02" and ev["params"] == '["abc"]'


def test_portal_fetched_in_several_executes_is_one_event() -> None:
    h = Harness()
    h.client(query("BEGIN"))
    h.server(complete("BEGIN"), ready("T"))
    h.client(parse("SELECT * FROM generate_series(1, 5)"), bind(portal="c1"), execute("c1", 2), sync(),
             at=2_000_000)
    h.server(parse_complete(), bind_complete(), data_row(b"1"), data_row(b"2"), suspended(), ready("T"),
             at=2_000_100)
    h.client(execute("c1", 2), sync(), at=2_000_500)
    h.server(data_row(b"3"), data_row(b"4"), suspended(), ready("T"), at=2_000_600)
    h.client(execute("c1", 2), sync(), at=2_001_000)
    h.server(data_row(b"5"), complete("SELECT 1"), ready("T"), at=2_001_100)
    h.client(close("P", "c1"), query("COMMIT"))
    h.server(close_complete(), complete("COMMIT"), ready())
    evs = h.take()
    assert [(e["sql"], e.get("tag"), e.get("rows")) for e in evs] == [
        ("BEGIN", "BEGIN", None), ("SELECT * FROM generate_series(1, 5)", "SELECT", "5"), ("COMMIT", "COMMIT", None)]
    assert (evs[1]["ts"], evs[1]["dur_us"]) == ("2000000", "1100")
    assert {e["txn"] for e in evs} == {"committed"}


def test_portal_abandoned_after_suspension() -> None:
    h = Harness()
    h.client(parse("SELECT * FROM big"), bind(), execute("", 100), sync(), at=2_000_000)
    h.server(parse_complete(), bind_complete(), suspended(), at=2_000_040)
    h.server(ready(), at=2_000_050)  # Sync ended the implicit transaction and with it the portal
    [ev] = h.take()
    assert (ev["rows"], ev["dur_us"], ev["txn"]) == ("100", "40", "autocommit") and "tag" not in ev


def test_close_and_reparse_of_the_unnamed_statement() -> None:
    h = Harness()
    h.client(parse("SELECT 1", "a"), parse("SELECT 2"), bind(stmt="a"), execute(), bind(), execute(),
             close("S", "a"), parse("SELECT 3"), bind(), execute(), sync())
    h.server(parse_complete(), parse_complete(), bind_complete(), complete("SELECT 1"), bind_complete(),
             complete("SELECT 1"), close_complete(), parse_complete(), bind_complete(), complete("SELECT 1"),
             ready())
    assert [e["sql"] for e in h.take()] == ["SELECT 1", "SELECT 2", "SELECT 3"]
    assert b"a" not in h.session._stmts


def test_deallocate_all_forgets_only_earlier_statements() -> None:
    h = Harness()
    h.client(parse("SELECT 1", "old"), sync())
    h.server(parse_complete(), ready())
    # Pipelined: a statement parsed after DEALLOCATE ALL was sent must survive its completion.
    h.client(query("DEALLOCATE ALL"), parse("SELECT 2", "new"), sync())
    h.server(complete("DEALLOCATE ALL"), ready(), parse_complete(), ready())
    assert set(h.session._stmts) == {b"new"}
    h.client(query("DEALLOCATE new"))
    h.server(complete("DEALLOCATE"), ready())
    assert h.session._stmts == {}


def test_discard_all() -> None:
    h = Harness()
    h.client(parse("SELECT 1", "s1"), parse("SELECT 2", "s2"), sync())
    h.server(parse_complete(), parse_complete(), ready())
    h.client(query("DISCARD ALL"))
    h.server(complete("DISCARD ALL"), ready())
    assert h.session._stmts == {}


def test_copy_in_through_extended_protocol() -> None:
    """libpq sends Sync right after Execute; the server ignores it during COPY, and libpq sends another."""
    h = Harness()
    h.client(parse("COPY t FROM STDIN"), bind(), describe("P"), execute(), sync())
    h.server(parse_complete(), bind_complete(), no_data(), copy_in_response())
    h.client(copy_data(b"1\n"), copy_done(), sync())
    h.server(complete("COPY 1"), ready())
    [ev] = h.take()
    assert (ev["tag"], ev["rows"], ev["txn"]) == ("COPY", "1", "autocommit")
    assert h.session.idle and h.session.outstanding == 0


def test_empty_statement_in_extended_protocol() -> None:
    h = Harness()
    h.client(parse(""), bind(), execute(), sync())
    h.server(parse_complete(), bind_complete(), empty_query(), ready())
    assert h.take() == []
    assert h.session.idle
