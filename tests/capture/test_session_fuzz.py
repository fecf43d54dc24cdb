"""Whatever arrives, in whatever order, the Session never raises and its events keep the contract; and the
compiled Session (proxy/_session.c) gives exactly the reference's events and state for the same bytes."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fasterdata.proxy import wire
from fasterdata.proxy.events import ALWAYS_STMT, ALWAYS_TXN_END, FIELDS, OUTCOMES, CaptureOptions
from fasterdata.proxy.session import Session

try:
    from fasterdata.proxy._session import Session as Compiled
except ImportError:  # built without a compiler
    Compiled = None

from . import pgmsg

both_sessions = pytest.mark.usefixtures("session_class")  # run on both Session implementations (conftest)

FRONT = [
    pgmsg.query("SELECT 1; SELECT 2"), pgmsg.query("BEGIN"), pgmsg.query("COMMIT"), pgmsg.query("SAVEPOINT a"),
    pgmsg.query("ROLLBACK TO a"), pgmsg.query("DEALLOCATE ALL"), pgmsg.query(""),
    pgmsg.parse("SELECT $1", oids=(23,)), pgmsg.parse("SELECT 2", "n"), pgmsg.bind([b"1"]),
    pgmsg.bind([b"x"], stmt="n", portal="p"), pgmsg.bind([b"\x00\x01"], formats=(1,)),
    pgmsg.execute(), pgmsg.execute("p", 1), pgmsg.describe("S", "n"), pgmsg.describe("P"),
    pgmsg.close("S", "n"), pgmsg.close("P", "p"), pgmsg.sync(), pgmsg.flush(), pgmsg.copy_done(),
    wire.message("F", b"\0\0\0\1"), wire.message("f", b"oops\0"),
    # malformed bodies
    wire.message("B", b"x"), wire.message("B", b"\0\0\xff"), wire.message("E", b""), wire.message("P", b""),
    wire.message("P", b"a\0b"), wire.message("D", b""), wire.message("C", b""), wire.message("Q", b"no-nul"),
]
BACK = [
    pgmsg.complete("SELECT 1"), pgmsg.complete("COMMIT"), pgmsg.complete("ROLLBACK"), pgmsg.complete("BEGIN"),
    pgmsg.complete("SAVEPOINT"), pgmsg.complete("DEALLOCATE ALL"), pgmsg.complete("INSERT 0 3"),
    pgmsg.ready("I"), pgmsg.ready("T"), pgmsg.ready("E"), pgmsg.error("22012", "x"), pgmsg.parse_complete(),
    pgmsg.suspended(), pgmsg.empty_query(), pgmsg.param_description(23), pgmsg.copy_in_response(),
    pgmsg.parameter_status("application_name", "z"), pgmsg.backend_key(5),
    # malformed bodies
    wire.message("Z", b""), wire.message("C", b""), wire.message("E", b""), wire.message("t", b"\0"),
    wire.message("K", b"\0"), wire.message("S", b"x"),
]


@both_sessions
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # budget: the profile (tests/conftest.py)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 1000)), min_size=1, max_size=60),
       st.sampled_from([CaptureOptions(), CaptureOptions(max_held=1), CaptureOptions(sample_rate=0.5),
                        CaptureOptions(redact="all")]))
def test_random_traffic_never_raises(steps: list[tuple[bool, int]], options: CaptureOptions) -> None:
    h = pgmsg.Harness(options)
    for from_client, pick in steps:
        h.tick(pick % 50)
        if from_client:
            h.client(FRONT[pick % len(FRONT)])
        else:
            h.server(BACK[pick % len(BACK)])
        # outstanding counts exactly the queued requests that ReadyForQuery will answer
        assert h.session.outstanding == sum(1 for e in h.session._queue if e[0] <= 3)
    h.session.close(h.now)
    assert h.session.outstanding == 0
    for ev in h.events:
        assert ev.keys() <= FIELDS.keys()
        assert (ALWAYS_STMT if ev["kind"] == "stmt" else ALWAYS_TXN_END) <= ev.keys()
        assert ev["txn"] in OUTCOMES
        assert all(isinstance(v, str) for v in ev.values())


# -- conversations: every message valid, the order a server could really answer in -------------------

Step = tuple[bool, bytes]  # (from the client, one whole message)
SIMPLE = [("SELECT 1", "SELECT 1"), ("INSERT INTO t (a) VALUES (1)", "INSERT 0 1"), ("UPDATE t SET a = 2", "UPDATE 3"),
          ("DELETE FROM t", "DELETE 0"), ("SELECT $$a;b$$", "SELECT 1"), ("CREATE TABLE u (a int)", "CREATE TABLE")]
NAMES = ["", "s1", "s2"]


class Conversation:
    """Builds exchanges in order, tracking the transaction state a server would report."""

    def __init__(self) -> None:
        self.steps: list[list[Step]] = []  # one list per exchange; see pipelined()
        self.copy: list[bool] = []
        self.sqls: list[str] = []  # statement texts in the order their events must come out
        self.state = "I"  # I idle, T in a transaction block, E failed block
        self.savepoint = False

    def __repr__(self) -> str:
        return f"Conversation(sqls={self.sqls!r}, steps={self.steps!r})"

    def add(self, steps: list[Step], sqls: list[str], copy: bool = False) -> None:
        self.steps.append(steps)
        self.copy.append(copy)
        self.sqls += sqls

    def ready(self) -> bytes:
        return pgmsg.ready(self.state)

    def fail(self) -> None:
        if self.state != "I":
            self.state = "E"

    def simple(self, sql: str, tag: str) -> None:
        if self.state == "E":
            self.add([(True, pgmsg.query(sql)), (False, pgmsg.error("25P02", "aborted")), (False, self.ready())],
                     [sql])
        else:
            self.add([(True, pgmsg.query(sql)), (False, pgmsg.complete(tag)), (False, self.ready())], [sql])

    def control(self, which: str) -> None:
        """Transaction control as the server answers it in each state."""
        sql, tag, after = {
            "begin": ("BEGIN", "BEGIN", "T" if self.state == "I" else self.state),
            "commit": ("COMMIT", "ROLLBACK" if self.state == "E" else "COMMIT", "I"),
            "rollback": ("ROLLBACK", "ROLLBACK", "I"),
            "savepoint": ("SAVEPOINT s", "SAVEPOINT", self.state),
            "rollback_to": ("ROLLBACK TO s", "ROLLBACK", "T"),
        }[which]
        if which in ("savepoint", "rollback_to") and (self.state == "I" or (which == "rollback_to") != self.savepoint):
            return  # outside a block, or ROLLBACK TO without its SAVEPOINT: the generator skips it
        if which == "savepoint" and self.state == "E":
            return
        self.state = after
        self.savepoint = which == "savepoint" or (which == "rollback_to" and self.savepoint)
        if self.state == "I":
            self.savepoint = False
        self.add([(True, pgmsg.query(sql)), (False, pgmsg.complete(tag)), (False, self.ready())], [sql])

    def error(self, sql: str) -> None:
        self.fail()
        self.add([(True, pgmsg.query(sql)), (False, pgmsg.error("22012", "division by zero")),
                  (False, self.ready())], [sql])

    def multi(self, second_fails: bool = False) -> None:
        if self.state == "E":  # the first statement fails, the second never runs
            return self.add([(True, pgmsg.query("SELECT 1; SELECT 2")), (False, pgmsg.error("25P02", "aborted")),
                             (False, self.ready())], ["SELECT 1"])
        if second_fails:
            self.fail()
            return self.add([(True, pgmsg.query("SELECT 1; SELECT 1/0")), (False, pgmsg.complete("SELECT 1")),
                             (False, pgmsg.error("22012", "division by zero")), (False, self.ready())],
                            ["SELECT 1", "SELECT 1/0"])
        self.add([(True, pgmsg.query("SELECT 1; SELECT 2")), (False, pgmsg.complete("SELECT 1")),
                  (False, pgmsg.complete("SELECT 1")), (False, self.ready())], ["SELECT 1", "SELECT 2"])

    def empty(self) -> None:
        self.add([(True, pgmsg.query("")), (False, pgmsg.empty_query()), (False, self.ready())], [])

    def extended(self, name: str, sql: str, tag: str, outcome: str, describe: bool, fetch: int) -> None:
        """Parse/Bind/[Describe]/Execute…/Sync; outcome: ok, exec_error or parse_error."""
        if self.state == "E":
            outcome = "parse_error"
        portal = "p" if fetch else ""
        client = [pgmsg.parse(sql, name, (23,)), pgmsg.bind([b"7"], stmt=name, portal=portal)]
        if describe:
            client.append(pgmsg.describe("S", name))
        client.append(pgmsg.execute(portal, fetch))
        if fetch:
            client.append(pgmsg.execute(portal, 0))
        client.append(pgmsg.sync())
        if outcome == "parse_error":
            self.fail()
            server = [pgmsg.error("42601", "syntax error"), self.ready()]
        else:
            server = [pgmsg.parse_complete(), pgmsg.bind_complete()]
            if describe:
                server += [pgmsg.param_description(23), pgmsg.no_data()]
            if fetch:
                server += [pgmsg.data_row(b"1")] * fetch + [pgmsg.suspended()]
            if outcome == "exec_error":
                self.fail()
                server += [pgmsg.error("22012", "division by zero"), self.ready()]
            else:
                server += [pgmsg.complete(tag), self.ready()]
        self.add([(True, m) for m in client] + [(False, m) for m in server], [sql])

    def copy_in(self, rows: int) -> None:
        steps = [(True, pgmsg.query("COPY t FROM STDIN")), (False, pgmsg.copy_in_response())]
        steps += [(True, pgmsg.copy_data(b"%d\n" % i)) for i in range(rows)]
        steps += [(True, pgmsg.copy_done()), (False, pgmsg.complete(f"COPY {rows}")), (False, self.ready())]
        if self.state == "E":
            steps = [(True, pgmsg.query("COPY t FROM STDIN")), (False, pgmsg.error("25P02", "aborted")),
                     (False, self.ready())]
        self.add(steps, ["COPY t FROM STDIN"], copy=True)

    def function_call(self) -> None:
        self.add([(True, wire.message("F", b"\0\0\0\1\0\0\0\0\0\1")), (False, wire.message("V", b"\xff\xff\xff\xff")),
                  (False, self.ready())], [])

    def pipelined(self, depth: int) -> list[Step]:
        """All messages, the client running up to ``depth`` exchanges ahead of the answers (never
        across a COPY, which needs the server's CopyInResponse before its data)."""
        out: list[Step] = []
        waiting: list[list[Step]] = []
        for steps, copy in zip(self.steps, self.copy, strict=True):
            if copy:
                for answer in waiting:
                    out += answer
                waiting = []
                out += steps
                continue
            out += [s for s in steps if s[0]]
            waiting.append([s for s in steps if not s[0]])
            while len(waiting) > depth:
                out += waiting.pop(0)
        for answer in waiting:
            out += answer
        return out


ACTIONS = st.one_of(
    st.tuples(st.just("simple"), st.sampled_from(SIMPLE)),
    st.tuples(st.just("control"), st.sampled_from(["begin", "commit", "rollback", "savepoint", "rollback_to"])),
    st.tuples(st.just("error"), st.just("SELECT 1/0")),
    st.tuples(st.just("multi"), st.booleans()),
    st.tuples(st.just("empty"), st.none()),
    st.tuples(st.just("extended"), st.tuples(st.sampled_from(NAMES), st.sampled_from(SIMPLE),
                                             st.sampled_from(["ok", "ok", "exec_error", "parse_error"]),
                                             st.booleans(), st.integers(0, 2))),
    st.tuples(st.just("copy"), st.integers(0, 3)),
    st.tuples(st.just("function"), st.none()),
)


@st.composite
def conversations(draw: st.DrawFn) -> Conversation:
    c = Conversation()
    for action, arg in draw(st.lists(ACTIONS, min_size=1, max_size=30)):
        if action == "simple":
            c.simple(*arg)
        elif action == "control":
            c.control(arg)
        elif action == "error":
            c.error(arg)
        elif action == "multi":
            c.multi(arg)
        elif action == "empty":
            c.empty()
        elif action == "extended":
            name, (sql, tag), outcome, describe, fetch = arg
            c.extended(name, sql, tag, outcome, describe, fetch)
        elif action == "copy":
            c.copy_in(arg)
        else:
            c.function_call()
    return c


EDITS = st.lists(st.tuples(st.sampled_from(["drop", "repeat", "swap", "hoist"]), st.integers(0, 10_000),
                           st.integers(1, 8)), min_size=1, max_size=6)


def edited(steps: list[Step], edits: list[tuple[str, int, int]]) -> list[Step]:
    """The steps with messages dropped, repeated, swapped or moved early (a server answer before its request)."""
    for op, at, span in edits:
        if not steps:  # every drawn action was skipped
            break
        i = at % len(steps)
        if op == "drop" and len(steps) > 1:
            del steps[i]
        elif op == "repeat":
            steps.insert(i, steps[i])
        elif op == "swap" and i + 1 < len(steps):
            steps[i], steps[i + 1] = steps[i + 1], steps[i]
        elif op == "hoist":
            steps.insert(max(0, i - span), steps.pop(i))
    return steps


def check_contract(h: pgmsg.Harness, options: CaptureOptions) -> None:
    for ev in h.events:
        assert ev.keys() <= FIELDS.keys()
        assert (ALWAYS_STMT if ev["kind"] == "stmt" else ALWAYS_TXN_END) <= ev.keys()
        assert ev["txn"] in OUTCOMES
        assert all(isinstance(v, str) for v in ev.values())
    assert len(h.session._held) <= options.max_held  # held statements stay bounded whatever arrives


@both_sessions
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # budget: the profile (tests/conftest.py)
@given(conversations(), st.integers(0, 3), st.sampled_from([CaptureOptions(), CaptureOptions(max_held=1)]))
def test_valid_conversations_give_one_event_per_statement(c: Conversation, depth: int,
                                                           options: CaptureOptions) -> None:
    """In order (pipelined or not), every statement the server answered is one event, in execution order."""
    h = pgmsg.Harness(options)
    for from_client, message in c.pipelined(depth):
        (h.client if from_client else h.server)(message)
        h.tick(3)
    assert h.session.outstanding == 0 and h.session.idle == (c.state == "I")
    h.session.close(h.now)
    check_contract(h, options)
    assert [ev["sql"] for ev in h.stmts()] == c.sqls
    assert all(ev["txn"] != "committed" for ev in h.stmts() if "err" in ev)


@both_sessions
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # budget: the profile (tests/conftest.py)
@given(conversations(), st.integers(0, 3), EDITS,
       st.sampled_from([CaptureOptions(), CaptureOptions(max_held=1), CaptureOptions(redact="all")]))
def test_valid_messages_out_of_order_never_raise(c: Conversation, depth: int,
                                                 edits: list[tuple[str, int, int]], options: CaptureOptions) -> None:
    """Each message valid alone, but dropped, repeated, swapped or answered early: never a raise, the contract holds."""
    steps = edited(c.pipelined(depth), edits)
    h = pgmsg.Harness(options)
    for from_client, message in steps:
        (h.client if from_client else h.server)(message)
        h.tick(3)
        assert h.session.outstanding == sum(1 for e in h.session._queue if e[0] <= 3)
    h.session.close(h.now)
    assert h.session.outstanding == 0
    check_contract(h, options)


# -- the compiled Session against the reference --------------------------------------------------------

compiled = pytest.mark.skipif(Compiled is None, reason="proxy._session not built (no C compiler)")
OPTIONS = st.sampled_from([
    CaptureOptions(), CaptureOptions(max_held=1), CaptureOptions(max_held=3), CaptureOptions(sample_rate=0.5),
    CaptureOptions(redact="all"), CaptureOptions(capture_params=False), CaptureOptions(max_sql_chars=16),
    CaptureOptions(max_param_bytes=16), CaptureOptions(redact_columns=""),
])


def replayed(cls: type, steps: list[Step], options: CaptureOptions, keep: int, seed: int) -> tuple[list, list]:
    """The events one implementation gives for the steps, and its visible state after each one."""
    random.seed(seed)  # sampling draws from random.random in both
    h = pgmsg.Harness(options, session_class=cls, keep=keep)
    states = []
    for from_client, message in steps:
        try:
            (h.client if from_client else h.server)(message)
            raised = None
        except Exception as exc:  # neither should raise; if one does, the other must too
            raised = type(exc).__name__
        h.tick(7)
        s = h.session
        states.append((raised, s.outstanding, s.idle, s.status, s.backend_pid, s.app, sorted(s._stmts),
                       len(s._held), [e[0] for e in s._queue]))
    h.session.close(h.now)
    states.append((h.session.closed, h.session.outstanding))
    return h.events, states


def same_on_both(steps: list[Step], options: CaptureOptions, keep: int = wire.DEFAULT_KEEP, seed: int = 0) -> None:
    reference = replayed(Session, steps, options, keep, seed)
    assert replayed(Compiled, steps, options, keep, seed) == reference


@compiled
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # budget: the profile (tests/conftest.py)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 1000)), min_size=1, max_size=60), OPTIONS,
       st.sampled_from([wire.DEFAULT_KEEP, 8]), st.integers(0, 3))
def test_compiled_session_matches_on_random_traffic(picks: list[tuple[bool, int]], options: CaptureOptions,
                                                    keep: int, seed: int) -> None:
    """Any message in any order, malformed bodies and bodies cut by the decoder's keep limit included."""
    steps = [(c, FRONT[p % len(FRONT)] if c else BACK[p % len(BACK)]) for c, p in picks]
    same_on_both(steps, options, keep, seed)


@compiled
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # budget: the profile (tests/conftest.py)
@given(conversations(), st.integers(0, 3), OPTIONS, st.integers(0, 3))
def test_compiled_session_matches_on_valid_conversations(c: Conversation, depth: int, options: CaptureOptions,
                                                         seed: int) -> None:
    same_on_both(c.pipelined(depth), options, seed=seed)


@compiled
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # budget: the profile (tests/conftest.py)
@given(conversations(), st.integers(0, 3), EDITS, OPTIONS)
def test_compiled_session_matches_when_messages_come_out_of_order(c: Conversation, depth: int,
                                                                  edits: list[tuple[str, int, int]],
                                                                  options: CaptureOptions) -> None:
    same_on_both(edited(c.pipelined(depth), edits), options)


# Simple Query texts near the compiled Session's shortcuts (one plain ASCII statement: split and found
# clean in C) and just past them: several statements, comments, literals, INSERT, EXECUTE, secrets, non-ASCII.
FRAGMENTS = ["SELECT ", "select", "1", ";", " ", "\t", "\x1c", "\n", "\f", "--c\n", "/*c*/", "'a;b'", "insert",
             "INSERT INTO t VALUES (1)", "INSERT INTO t (a) VALUES (1)", " EXECUTE p", "execute", "Password = 'x'",
             "token", "CARD", "é", "İ", "x", "$$;$$"]
TEXTS = st.lists(st.sampled_from(FRAGMENTS), max_size=8).map("".join)


@compiled
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # budget: the profile (tests/conftest.py)
@given(TEXTS, st.sampled_from([CaptureOptions(), CaptureOptions(redact_columns=""), CaptureOptions(redact="all"),
                               CaptureOptions(redact_columns="pin|^x$"), CaptureOptions(redact_columns="card||x"),
                               CaptureOptions(max_sql_chars=16)]),
       st.integers(1, 3))
def test_compiled_session_matches_on_simple_query_texts(text: str, options: CaptureOptions, answers: int) -> None:
    steps = [(True, pgmsg.query(text)), *[(False, pgmsg.complete("SELECT 1"))] * answers, (False, pgmsg.ready())]
    same_on_both(steps, options)
