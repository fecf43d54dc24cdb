"""Transaction outcomes, savepoints, the held-events bound, sampling and closing, sans-I/O."""

from __future__ import annotations

import random

import pytest

from fasterdata.proxy.events import ALWAYS_TXN_END, FIELDS, CaptureOptions

from .pgmsg import Harness, bind, bind_complete, complete, error, execute, parse, parse_complete, query, ready, sync

pytestmark = pytest.mark.usefixtures("session_class")  # both Session implementations (conftest)


def run(h: Harness, sql: str, *answers: bytes, status: str = "T") -> None:
    h.client(query(sql))
    h.server(*answers, ready(status))


def outcomes(h: Harness) -> list[tuple[str, str, str]]:
    return [(e["sql"], e["txn"], e["txid"]) for e in h.take() if e["kind"] == "stmt"]


def test_commit() -> None:
    h = Harness()
    run(h, "BEGIN", complete("BEGIN"))
    run(h, "INSERT INTO t (a) VALUES (1)", complete("INSERT 0 1"))
    assert h.events == []  # held while the transaction is open
    run(h, "COMMIT", complete("COMMIT"), status="I")
    run(h, "SELECT 1", complete("SELECT 1"), status="I")
    assert outcomes(h) == [("BEGIN", "committed", "1"), ("INSERT INTO t (a) VALUES (1)", "committed", "1"),
                           ("COMMIT", "committed", "1"), ("SELECT 1", "autocommit", "2")]


def test_rollback_and_abort() -> None:
    h = Harness()
    run(h, "START TRANSACTION ISOLATION LEVEL SERIALIZABLE", complete("START TRANSACTION"))
    run(h, "DELETE FROM t", complete("DELETE 3"))
    run(h, "ABORT", complete("ROLLBACK"), status="I")
    assert {txn for _, txn, _ in outcomes(h)} == {"rolled_back"}


def test_commit_of_a_failed_transaction_is_a_rollback() -> None:
    h = Harness()
    run(h, "BEGIN", complete("BEGIN"))
    run(h, "INSERT INTO t (a) VALUES (1)", complete("INSERT 0 1"))
    run(h, "INSERT INTO t (a) VALUES ('x')", error("22P02", "invalid input"), status="E")
    run(h, "COMMIT", complete("ROLLBACK"), status="I")
    evs = h.take()
    assert [e["txn"] for e in evs] == ["rolled_back"] * 4
    assert evs[3]["tag"] == "ROLLBACK"


def test_savepoints() -> None:
    h = Harness()
    run(h, "BEGIN", complete("BEGIN"))
    run(h, "INSERT INTO t (a) VALUES (1)", complete("INSERT 0 1"))
    run(h, "SAVEPOINT a", complete("SAVEPOINT"))
    run(h, "INSERT INTO t (a) VALUES (2)", complete("INSERT 0 1"))
    run(h, 'SAVEPOINT "B"', complete("SAVEPOINT"))
    run(h, "INSERT INTO t (a) VALUES (3)", complete("INSERT 0 1"))
    run(h, "SELECT 1/0", error("22012", "division by zero"), status="E")
    run(h, 'ROLLBACK TO SAVEPOINT "B"', complete("ROLLBACK"))
    run(h, "INSERT INTO t (a) VALUES (4)", complete("INSERT 0 1"))
    run(h, "RELEASE a", complete("RELEASE"))  # releases "B" too
    run(h, "COMMIT", complete("COMMIT"), status="I")
    assert [(sql, txn) for sql, txn, _ in outcomes(h)] == [
        ("BEGIN", "committed"), ("INSERT INTO t (a) VALUES (1)", "committed"), ("SAVEPOINT a", "committed"),
        ("INSERT INTO t (a) VALUES (2)", "committed"), ('SAVEPOINT "B"', "committed"),
        ("INSERT INTO t (a) VALUES (3)", "rolled_back"), ("SELECT 1/0", "rolled_back"),
        ('ROLLBACK TO SAVEPOINT "B"', "committed"), ("INSERT INTO t (a) VALUES (4)", "committed"),
        ("RELEASE a", "committed"), ("COMMIT", "committed"),
    ]
    assert h.session._savepoints == []
    # Second transaction: a rollback to a savepoint that stays usable.
    run(h, "BEGIN", complete("BEGIN"))
    run(h, "SAVEPOINT s", complete("SAVEPOINT"))
    run(h, "INSERT INTO t (a) VALUES (5)", complete("INSERT 0 1"))
    run(h, "ROLLBACK TRANSACTION TO s", complete("ROLLBACK"))
    run(h, "INSERT INTO t (a) VALUES (6)", complete("INSERT 0 1"))
    run(h, "ROLLBACK WORK TO SAVEPOINT s", complete("ROLLBACK"))
    run(h, "INSERT INTO t (a) VALUES (7)", complete("INSERT 0 1"))
    run(h, "COMMIT", complete("COMMIT"), status="I")
    assert outcomes(h) == [
        ("BEGIN", "committed", "2"), ("SAVEPOINT s", "committed", "2"),
        ("INSERT INTO t (a) VALUES (5)", "rolled_back", "2"), ("ROLLBACK TRANSACTION TO s", "committed", "2"),
        ("INSERT INTO t (a) VALUES (6)", "rolled_back", "2"), ("ROLLBACK WORK TO SAVEPOINT s", "committed", "2"),
        ("INSERT INTO t (a) VALUES (7)", "committed", "2"), ("COMMIT", "committed", "2"),
    ]


def test_savepoint_rollback_marks_only_statements_after_it() -> None:
    h = Harness()
    run(h, "BEGIN; INSERT INTO t (a) VALUES (1); SAVEPOINT sp; INSERT INTO t (a) VALUES (2)",
        complete("BEGIN"), complete("INSERT 0 1"), complete("SAVEPOINT"), complete("INSERT 0 1"))
    run(h, "SELECT 1/0", error("22012", "division by zero"), status="E")
    run(h, "ROLLBACK TO sp; INSERT INTO t (a) VALUES (3); COMMIT",
        complete("ROLLBACK"), complete("INSERT 0 1"), complete("COMMIT"), status="I")
    assert [(sql, txn) for sql, txn, _ in outcomes(h)] == [
        ("BEGIN", "committed"), ("INSERT INTO t (a) VALUES (1)", "committed"), ("SAVEPOINT sp", "committed"),
        ("INSERT INTO t (a) VALUES (2)", "rolled_back"), ("SELECT 1/0", "rolled_back"),
        ("ROLLBACK TO sp", "committed"), ("INSERT INTO t (a) VALUES (3)", "committed"), ("COMMIT", "committed"),
    ]


def test_prepare_transaction() -> None:
    h = Harness()
    run(h, "BEGIN", complete("BEGIN"))
    run(h, "UPDATE t SET a = 1", complete("UPDATE 1"))
    run(h, "PREPARE TRANSACTION 'gx'", complete("PREPARE TRANSACTION"), status="I")
    run(h, "COMMIT PREPARED 'gx'", complete("COMMIT PREPARED"), status="I")
    assert outcomes(h) == [("BEGIN", "prepared", "1"), ("UPDATE t SET a = 1", "prepared", "1"),
                           ("PREPARE TRANSACTION 'gx'", "prepared", "1"),
                           ("COMMIT PREPARED 'gx'", "autocommit", "2")]


def test_multi_statement_query_with_transaction_control() -> None:
    h = Harness()
    # Statements before BEGIN join the explicit transaction; after COMMIT a new implicit one starts.
    run(h, "INSERT INTO t (a) VALUES (0); BEGIN; INSERT INTO t (a) VALUES (1); COMMIT; "
        "INSERT INTO t (a) VALUES (2); SELECT 1/0",
        complete("INSERT 0 1"), complete("BEGIN"), complete("INSERT 0 1"), complete("COMMIT"),
        complete("INSERT 0 1"), error("22012", "division by zero"), status="I")
    assert outcomes(h) == [
        ("INSERT INTO t (a) VALUES (0)", "committed", "1"), ("BEGIN", "committed", "1"),
        ("INSERT INTO t (a) VALUES (1)", "committed", "1"), ("COMMIT", "committed", "1"),
        ("INSERT INTO t (a) VALUES (2)", "rolled_back", "2"), ("SELECT 1/0", "rolled_back", "2"),
    ]


def test_begin_left_open_across_queries() -> None:
    h = Harness()
    run(h, "INSERT INTO t (a) VALUES (1); BEGIN; INSERT INTO t (a) VALUES (2)",
        complete("INSERT 0 1"), complete("BEGIN"), complete("INSERT 0 1"), status="T")
    assert h.events == []
    run(h, "COMMIT", complete("COMMIT"), status="I")
    assert {txn for _, txn, _ in outcomes(h)} == {"committed"}


def test_deferred_commit_failure_at_sync() -> None:
    h = Harness()
    h.client(parse("INSERT INTO t (a) VALUES (1)"), bind(), execute(), sync())
    h.server(parse_complete(), bind_complete(), complete("INSERT 0 1"),
             error("23503", "violates foreign key constraint"), ready())
    [ev] = h.take()
    assert ev["txn"] == "rolled_back" and "err" not in ev  # the statement ran; its transaction failed


def test_bound_on_held_events_sends_open_then_txn_end() -> None:
    h = Harness(CaptureOptions(max_held=3))
    run(h, "BEGIN", complete("BEGIN"))
    for i in range(3):
        run(h, f"INSERT INTO t (a) VALUES ({i})", complete("INSERT 0 1"))
    assert [e["txn"] for e in h.events] == ["open"] * 4
    run(h, "INSERT INTO t (a) VALUES (9)", complete("INSERT 0 1"))
    assert len(h.events) == 5  # past the bound, statements go out at once
    run(h, "COMMIT", complete("COMMIT"), status="I", )
    evs = h.take()
    assert [e["kind"] for e in evs] == ["stmt"] * 6 + ["txn_end"]
    marker = evs[-1]
    assert ALWAYS_TXN_END <= marker.keys() <= FIELDS.keys()
    assert (marker["txn"], marker["txid"], marker["stmts"]) == ("committed", "1", "6")
    assert {e["txid"] for e in evs} == {"1"}
    # The next transaction is held again.
    run(h, "SELECT 1", complete("SELECT 1"), status="I")
    assert [e["txn"] for e in h.take()] == ["autocommit"]


def test_rollback_to_savepoint_after_statements_went_out_open() -> None:
    """Statements already sent with txn=open cannot be re-marked: txn_end names them in ``undone``."""
    h = Harness(CaptureOptions(max_held=2))
    run(h, "BEGIN", complete("BEGIN"))  # 1
    run(h, "SAVEPOINT a", complete("SAVEPOINT"))  # 2
    run(h, "INSERT INTO t (a) VALUES (1)", complete("INSERT 0 1"))  # 3: the bound is passed, 1-3 go out
    run(h, "SAVEPOINT b", complete("SAVEPOINT"))  # 4
    run(h, "INSERT INTO t (a) VALUES (2)", complete("INSERT 0 1"))  # 5
    run(h, "ROLLBACK TO SAVEPOINT b", complete("ROLLBACK"))  # 6: undoes 5
    run(h, "INSERT INTO t (a) VALUES (3)", complete("INSERT 0 1"))  # 7
    run(h, "ROLLBACK TO a", complete("ROLLBACK"))  # 8: undoes 3-7
    run(h, "INSERT INTO t (a) VALUES (4)", complete("INSERT 0 1"))  # 9
    run(h, "COMMIT", complete("COMMIT"), status="I")  # 10
    evs = h.take()
    stmts = [e for e in evs if e["kind"] == "stmt"]
    assert [e["n"] for e in stmts] == [str(i) for i in range(1, 11)]
    assert {e["txn"] for e in stmts} == {"open"}
    marker = evs[-1]
    assert (marker["kind"], marker["txn"], marker["stmts"], marker["undone"]) == ("txn_end", "committed", "10",
                                                                                 "5-5,3-7")
    run(h, "BEGIN", complete("BEGIN"))
    run(h, "COMMIT", complete("COMMIT"), status="I")
    assert all("n" not in e and "undone" not in e for e in h.take())  # held again, nothing undone


def test_savepoint_taken_before_the_bound_rolls_back_what_went_out() -> None:
    h = Harness(CaptureOptions(max_held=3))
    run(h, "BEGIN", complete("BEGIN"))  # 1
    run(h, "SAVEPOINT s", complete("SAVEPOINT"))  # 2, held
    run(h, "DELETE FROM t", complete("DELETE 4"))  # 3
    run(h, "UPDATE t SET a = 1", complete("UPDATE 0"))  # 4: spill, 1-4 out
    run(h, "ROLLBACK TO s", complete("ROLLBACK"))  # 5: undoes 3-4
    run(h, "COMMIT", complete("COMMIT"), status="I")
    assert h.take()[-1]["undone"] == "3-4"


def test_close_inside_a_transaction_rolls_it_back() -> None:
    h = Harness()
    run(h, "BEGIN", complete("BEGIN"))
    run(h, "INSERT INTO t (a) VALUES (1)", complete("INSERT 0 1"))
    h.client(query("SELECT pg_sleep(10)"))  # still running: no event
    h.session.close(h.now)
    assert [(e["sql"], e["txn"]) for e in h.take()] == [("BEGIN", "rolled_back"),
                                                        ("INSERT INTO t (a) VALUES (1)", "rolled_back")]
    h.session.close(h.now)
    assert h.events == []


def test_close_after_complete_before_ready() -> None:
    h = Harness()
    h.client(query("INSERT INTO t (a) VALUES (1)"))
    h.server(complete("INSERT 0 1"))  # the server committed before CommandComplete
    h.session.close(h.now)
    assert [e["txn"] for e in h.take()] == ["autocommit"]
    h = Harness()
    h.client(parse("INSERT INTO t (a) VALUES (1)"), bind(), execute(), sync())
    h.server(parse_complete(), bind_complete(), complete("INSERT 0 1"))  # commit happens at Sync
    h.session.close(h.now)
    assert [e["txn"] for e in h.take()] == ["rolled_back"]


def test_sampling_zero_and_partial() -> None:
    h = Harness(CaptureOptions(sample_rate=0.0))
    run(h, "SELECT 1", complete("SELECT 1"), status="I")
    assert h.events == []
    random.seed(7)
    h = Harness(CaptureOptions(sample_rate=0.5))
    for _ in range(40):
        run(h, "BEGIN", complete("BEGIN"))
        run(h, "INSERT INTO t (a) VALUES (1); INSERT INTO t (a) VALUES (2)", complete("INSERT 0 1"),
            complete("INSERT 0 1"))
        run(h, "COMMIT", complete("COMMIT"), status="I")
    evs = h.take()
    by_txn: dict[str, int] = {}
    for e in evs:
        by_txn[e["txid"]] = by_txn.get(e["txid"], 0) + 1
    assert set(by_txn.values()) == {4}  # sampled transactions are complete
    assert 5 < len(by_txn) < 35  # and some are left out; txids keep counting all transactions
    assert max(int(t) for t in by_txn) > len(by_txn)


def test_no_emit_means_no_events_but_state_is_kept() -> None:
    from . import pgmsg
    s = pgmsg.SESSION("x", "c", {"user": "u"})
    h = Harness()
    h.session = s
    h.server(pgmsg.login_answer(99))
    run(h, "BEGIN", complete("BEGIN"))
    assert s.backend_pid == 99 and s.database == "u" and not s.idle
    run(h, "COMMIT", complete("COMMIT"), status="I")
    assert s.idle


@pytest.mark.parametrize("mode", ["columns", "all"])
def test_redaction_modes_through_the_session(mode: str) -> None:
    h = Harness(CaptureOptions(redact=mode))
    h.client(parse("SELECT * FROM t WHERE name = $1 AND note = 'x'"), bind([b"bob"]), execute(), sync())
    h.server(parse_complete(), bind_complete(), complete("SELECT 0"), ready())
    [ev] = h.take()
    if mode == "all":
        assert ev["sql"] == "SELECT * FROM t WHERE name = $1 AND note = '***'" and ev["params"] == '["***"]'
    else:
        assert ev["sql"] == "SELECT * FROM t WHERE name = $1 AND note = 'x'" and ev["params"] == '["bob"]'


def test_params_can_be_turned_off_and_truncated() -> None:
    h = Harness(CaptureOptions(capture_params=False))
    h.client(parse("SELECT $1"), bind([b"v"]), execute(), sync())
    h.server(parse_complete(), bind_complete(), complete("SELECT 1"), ready())
    assert "params" not in h.take()[0]
    h = Harness(CaptureOptions(max_param_bytes=16))
    h.client(parse("SELECT $1"), bind([b"v" * 100]), execute(), sync())
    h.server(parse_complete(), bind_complete(), complete("SELECT 1"), ready())
    assert h.take()[0]["params"] == '["' + "v" * 16 + '…[truncated 84 bytes]"]'


def test_options_are_validated() -> None:
    with pytest.raises(ValueError):
        CaptureOptions(sample_rate=1.5)
    with pytest.raises(ValueError):
        CaptureOptions(redact="none")
