"""Redaction: passwords always, sensitive columns in literals and parameters, or everything.

Where the text does not say which column a value goes to (an INSERT without a column list, rows from a
query), the value is hidden, whatever the table is called, until the session has seen the table's
columns in a RowDescription.
"""

from __future__ import annotations

import json
import struct

import pytest

from fasterdata.proxy.events import DEFAULT_REDACT_COLUMNS, CaptureOptions
from fasterdata.proxy.redact import ALL_PARAMS, Orders, Provisional, Redactor

from .pgmsg import (
    Harness,
    bind,
    bind_complete,
    complete,
    copy_data,
    copy_done,
    copy_in_response,
    data_row,
    describe,
    execute,
    no_data,
    param_description,
    parse,
    parse_complete,
    query,
    ready,
    row_description,
    sync,
)

pytestmark = pytest.mark.usefixtures("session_class")  # both Session implementations (conftest)


@pytest.fixture
def red() -> Redactor:
    return Redactor("columns", DEFAULT_REDACT_COLUMNS, 64)


@pytest.mark.parametrize(("sql", "expected"), [
    ("ALTER ROLE bob PASSWORD 'hunter2'", "ALTER ROLE bob PASSWORD '***'"),
    ("CREATE USER bob WITH ENCRYPTED PASSWORD 'x''y' VALID UNTIL '2030-01-01'",
     "CREATE USER bob WITH ENCRYPTED PASSWORD '***' VALID UNTIL '2030-01-01'"),
    ("alter user bob password E'a\\'b'", "alter user bob password '***'"),
    ("ALTER ROLE bob PASSWORD $q$secret$q$", "ALTER ROLE bob PASSWORD '***'"),
    ("CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'bob', password 'pw')",
     "CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'bob', password '***')"),
    ("UPDATE users SET password = 'x', name = 'y' WHERE id = 1",
     "UPDATE users SET password = '***', name = 'y' WHERE id = 1"),
    ("SELECT * FROM users WHERE api_token='abc' AND name='n'",
     "SELECT * FROM users WHERE api_token='***' AND name='n'"),
    ("SELECT * FROM u WHERE u.ssn = 123456789", "SELECT * FROM u WHERE u.ssn = '***'"),
    ("SELECT * FROM u WHERE 'abc' = secret_key", "SELECT * FROM u WHERE '***' = secret_key"),
    ("SELECT * FROM u WHERE card_no IN ('1', '2') AND x = '3'",
     "SELECT * FROM u WHERE card_no IN ('***', '***') AND x = '3'"),
    ("SELECT * FROM u WHERE \"Password\" LIKE 'a%'", "SELECT * FROM u WHERE \"Password\" LIKE '***'"),
    ("UPDATE u SET password = crypt('pw', gen_salt('bf')) WHERE id = 2",
     "UPDATE u SET password = crypt('***', gen_salt('***')) WHERE id = 2"),
    ("INSERT INTO users (name, password, cvv) VALUES ('a', 'b', 123), ('c', 'd', 456)",
     "INSERT INTO users (name, password, cvv) VALUES ('a', '***', '***'), ('c', '***', '***')"),
    ("INSERT INTO s.users AS u (id, \"token\") VALUES (1, lower('T')) ON CONFLICT DO NOTHING",
     "INSERT INTO s.users AS u (id, \"token\") VALUES (1, lower('***')) ON CONFLICT DO NOTHING"),
    ("SELECT 'my password is long' FROM t WHERE id = 1", "SELECT 'my password is long' FROM t WHERE id = 1"),
    ("SELECT abalance FROM pgbench_accounts WHERE aid = 1", "SELECT abalance FROM pgbench_accounts WHERE aid = 1"),
])
def test_sql_literals(red: Redactor, sql: str, expected: str) -> None:
    assert red(sql)[0] == expected


def test_params_by_position(red: Redactor) -> None:
    assert red("INSERT INTO users (name, password, email) VALUES ($1, $2, $3)")[1] == frozenset({1})
    assert red("UPDATE users SET password = $1 WHERE id = $2")[1] == frozenset({0})
    assert red("SELECT * FROM users WHERE id = $1 AND token = $2::text")[1] == frozenset({1})
    assert red("INSERT INTO t (a, secret) VALUES ($1, $2), ($3, $4)")[1] == frozenset({1, 3})
    assert red("SELECT * FROM accounts WHERE aid = $1")[1] is None


def test_mode_all_hides_every_literal_and_param() -> None:
    red = Redactor("all", DEFAULT_REDACT_COLUMNS, 64)
    text, hidden = red("SELECT * FROM t WHERE a = 'x' AND b = 42 AND c = $1 -- 'comment'")
    assert text == "SELECT * FROM t WHERE a = '***' AND b = '***' AND c = $1 -- 'comment'"
    assert hidden is ALL_PARAMS and 0 in hidden and 7 in hidden


def test_custom_regex_and_no_columns() -> None:
    red = Redactor("columns", r"^pin$|iban", 64)
    assert red("UPDATE a SET pin = '1234', spin = '5', iban_no = 'DE00'")[0] == (
        "UPDATE a SET pin = '***', spin = '5', iban_no = '***'")
    # Without a column regex, passwords are still hidden.
    red = Redactor("columns", "", 64)
    assert red("ALTER ROLE x PASSWORD 'p'; UPDATE t SET token = 'x'")[0] == (
        "ALTER ROLE x PASSWORD '***'; UPDATE t SET token = 'x'")


def test_cache_is_bounded_and_consistent(red: Redactor) -> None:
    for i in range(500):
        assert red(f"UPDATE u SET password = '{i}'")[0] == "UPDATE u SET password = '***'"
    assert len(red._cache) <= 64


def test_garbage_never_raises(red: Redactor) -> None:
    for sql in ["password '", "INSERT INTO (", "INSERT INTO t (password) VALUES (", "token = ", "token IN (",
                "\x00password\xff", "INSERT INTO t (a, password VALUES ('x'"]:
        red(sql)


# -- values whose column the text does not name ------------------------------------------------------

# The statement of the issue: the table's name matches nothing, so nothing in the text looks sensitive.
ISSUE = "INSERT INTO users VALUES ('q@y.z', 'pw-nocols', '4000000000000002')"


def fields(*names: str) -> bytes:
    """A RowDescription body (what the session hands to ``learn``)."""
    body = struct.pack("!h", len(names))
    for n in names:
        body += n.encode() + b"\0" + struct.pack("!ihihih", 16400, 1, 25, -1, -1, 0)
    return body


@pytest.mark.parametrize(("sql", "expected"), [
    (ISSUE, "INSERT INTO users VALUES ('***', '***', '***')"),
    ("insert into public.users values (1, 'a'), (2, 'b') on conflict do nothing",
     "insert into public.users values ('***', '***'), ('***', '***') on conflict do nothing"),
    ('INSERT INTO "Users" AS u OVERRIDING SYSTEM VALUE VALUES (lower(\'A\'), -3)',
     'INSERT INTO "Users" AS u OVERRIDING SYSTEM VALUE VALUES (lower(\'***\'), -\'***\')'),
    ("INSERT INTO users SELECT 'a', 'b' FROM t WHERE id = 1",
     "INSERT INTO users SELECT '***', '***' FROM t WHERE id = '***'"),
    ("INSERT INTO users (SELECT 'a', 'b')", "INSERT INTO users (SELECT '***', '***')"),
    ("WITH x AS (SELECT 1) INSERT INTO users TABLE x", "WITH x AS (SELECT '***') INSERT INTO users TABLE x"),
    ("INSERT INTO users (email, password) SELECT 'a', 'b'", "INSERT INTO users (email, password) SELECT '***', '***'"),
    ("INSERT INTO users (email, note) SELECT 'a', 'b'", "INSERT INTO users (email, note) SELECT 'a', 'b'"),
    ("INSERT INTO users (email, note) VALUES ('a', 'b')", "INSERT INTO users (email, note) VALUES ('a', 'b')"),
    ("INSERT INTO users DEFAULT VALUES", "INSERT INTO users DEFAULT VALUES"),
    ("INSERT /* hint */ INTO users (email, note) VALUES ('a', 'b')",
     "INSERT /* hint */ INTO users (email, note) VALUES ('a', 'b')"),
    ("INSERT INTO t (email, card) VALUES ('a', 'b', 'c')", "INSERT INTO t (email, card) VALUES ('a', '***', '***')"),
    ("INSERT INTO users (id, email, password) VALUES (1, 'a', 'b') "
     "ON CONFLICT (id) DO UPDATE SET password = 'c', email = 'd'",
     "INSERT INTO users (id, email, password) VALUES (1, 'a', '***') "
     "ON CONFLICT (id) DO UPDATE SET password = '***', email = 'd'"),
    ("INSERT INTO users VALUES (1, 'a') ON CONFLICT (id) DO UPDATE SET card_no = EXCLUDED.card_no, n = 'v'",
     "INSERT INTO users VALUES ('***', '***') ON CONFLICT (id) DO UPDATE SET card_no = EXCLUDED.card_no, n = 'v'"),
    ("UPDATE users u SET password = v.pw FROM (VALUES (1, 'x')) AS v(id, pw) WHERE u.id = v.id",
     "UPDATE users u SET password = v.pw FROM (VALUES ('***', '***')) AS v(id, pw) WHERE u.id = v.id"),
    ("UPDATE users SET (email, token) = ('a', 'b') WHERE id = 1",
     "UPDATE users SET (email, token) = ('***', '***') WHERE id = '***'"),
    ("MERGE INTO users u USING s ON u.id = s.id WHEN NOT MATCHED THEN INSERT VALUES (s.id, 'pw')",
     "MERGE INTO users u USING s ON u.id = s.id WHEN NOT MATCHED THEN INSERT VALUES (s.id, '***')"),
    ("MERGE INTO users u USING s ON true WHEN NOT MATCHED THEN INSERT (id, secret) VALUES (1, 'pw')",
     "MERGE INTO users u USING s ON true WHEN NOT MATCHED THEN INSERT (id, secret) VALUES (1, '***')"),
    ("SELECT 'insert into users values (1)' FROM t", "SELECT 'insert into users values (1)' FROM t"),
    ("SELECT * FROM (VALUES (1, 'x')) v(a, b)", "SELECT * FROM (VALUES (1, 'x')) v(a, b)"),
    ("WITH v AS (SELECT 1 AS id, lower('pw') AS password) UPDATE users u SET password = v.password FROM v",
     "WITH v AS (SELECT 1 AS id, lower('***') AS password) UPDATE users u SET password = v.password FROM v"),
    ("UPDATE users u SET token = s.t FROM (SELECT 'a'::text token, 2 AS id) s WHERE u.id = s.id",
     "UPDATE users u SET token = s.t FROM (SELECT '***'::text token, 2 AS id) s WHERE u.id = s.id"),
    ("SELECT 'x' card_no, 'y' AS note", "SELECT '***' card_no, 'y' AS note"),
    ("COPY users FROM STDIN", "COPY users FROM STDIN"),
    ("COPY (SELECT id FROM users WHERE token = 'abc') TO STDOUT",
     "COPY (SELECT id FROM users WHERE token = '***') TO STDOUT"),
])
def test_values_of_unnamed_columns_are_hidden(red: Redactor, sql: str, expected: str) -> None:
    assert red(sql)[0] == expected


def test_unnamed_columns_hide_their_params(red: Redactor) -> None:
    assert red("INSERT INTO users VALUES ($1, $2, $3)")[1] == frozenset({0, 1, 2})
    assert red("INSERT INTO users VALUES ($1, $2), ($3, now())")[1] == frozenset({0, 1, 2})
    assert red("INSERT INTO users SELECT $1, $2")[1] is ALL_PARAMS
    assert red("INSERT INTO users (email, password) SELECT $1, $2 WHERE $3")[1] is ALL_PARAMS
    assert red("INSERT INTO users (email, note) SELECT $1, $2")[1] is None
    assert red("INSERT INTO users (email, note) VALUES ($1, $2)")[1] is None
    assert red("UPDATE users u SET token = s.t FROM (SELECT $1::text AS token, $2 AS id) s")[1] == frozenset({0})
    assert red("UPDATE users u SET token = s.t FROM (SELECT $1::text token, $2 AS id) s")[1] == frozenset({0})
    # Extra expressions past the column list: their column is unknown (the server will say so).
    assert red("INSERT INTO t (email, token) VALUES ($1, $2, $3)")[1] == frozenset({1, 2})


def test_a_custom_regex_prefilter_hides_unnamed_columns_too() -> None:
    red = Redactor("columns", r"^pin$|iban", 64)
    assert red(ISSUE)[0] == "INSERT INTO users VALUES ('***', '***', '***')"
    assert red("INSERT INTO a (pin, x) VALUES ('1', '2')")[0] == "INSERT INTO a (pin, x) VALUES ('***', '2')"
    assert red("SELECT 1")[0] == "SELECT 1"
    # An anchored regex is meant for names, not for the whole text.
    red = Redactor("columns", r"^pin$", 64)
    assert red("UPDATE a SET pin = '1234', spin = '5'")[0] == "UPDATE a SET pin = '***', spin = '5'"
    assert red('UPDATE a SET "pin" = $1')[1] == frozenset({0})


def test_a_learned_column_order_hides_by_position(red: Redactor) -> None:
    orders: Orders = {}
    red.learn(orders, "SELECT * FROM users WHERE id = 1", fields("email", "password", "card_number"))
    assert orders == {"users": (False, True, True)}
    text, hidden = red(ISSUE, orders=orders)
    assert text == "INSERT INTO users VALUES ('q@y.z', '***', '***')"
    assert isinstance((text, hidden), tuple) and isinstance(red(ISSUE, orders=orders), Provisional)
    assert red("INSERT INTO users VALUES ($1, $2, $3), ($4, $5, $6)", orders=orders)[1] == frozenset({1, 2, 4, 5})
    # A column added since (or a value too many): past the learned columns, hidden.
    assert red("INSERT INTO users VALUES ($1, $2, $3, $4)", orders=orders)[1] == frozenset({1, 2, 3})
    # Another session (no orders), another table, a query as the source: all hidden as before.
    assert red(ISSUE)[0] == "INSERT INTO users VALUES ('***', '***', '***')"
    assert red("INSERT INTO other VALUES ('x')", orders=orders)[0] == "INSERT INTO other VALUES ('***')"
    assert red("INSERT INTO users SELECT 'a', 'b', 'c'", orders=orders)[0] == (
        "INSERT INTO users SELECT '***', '***', '***'")
    # A table with nothing sensitive: its values stay readable.
    red.learn(orders, "SELECT * FROM audit", fields("id", "what"))
    assert red("INSERT INTO audit VALUES (1, 'login')", orders=orders)[0] == "INSERT INTO audit VALUES (1, 'login')"


def test_plans_of_texts_that_recur_are_cached_and_follow_the_orders(red: Redactor) -> None:
    red(ISSUE)  # a simple Query's literals: not kept
    assert ISSUE not in red._cache
    sql = "INSERT INTO users VALUES ($1, $2, $3)"
    assert red(sql, True)[1] == frozenset({0, 1, 2}) and sql in red._cache
    orders: Orders = {"users": (False, True, False)}
    assert red(sql, True, orders)[1] == frozenset({1})
    assert red(sql, True)[1] == frozenset({0, 1, 2})  # another session: its own orders
    for i in range(200):
        red(f"INSERT INTO users VALUES ($1, $2, {i})", True)
    assert len(red._cache) <= 64


@pytest.mark.parametrize(("sql", "table"), [
    ("SELECT * FROM users", "users"),
    ("select *\nfrom Public.\"Users\"\norder by 1 limit 5;", 'public.Users'),
    ("INSERT INTO users VALUES ($1, $2, $3) RETURNING *", "users"),
    ("INSERT INTO users AS u VALUES (1, 2, 3) ON CONFLICT DO NOTHING RETURNING *", "users"),
])
def test_what_teaches_a_column_order(red: Redactor, sql: str, table: str) -> None:
    orders: Orders = {}
    red.learn(orders, sql, fields("email", "password", "card_number"))
    assert orders == {table: (False, True, True)}


@pytest.mark.parametrize("sql", [
    "SELECT email, password AS p, card_number FROM users",  # names may be aliases
    "SELECT * FROM users u",
    "SELECT * FROM users JOIN cards USING (id)",
    "SELECT * FROM users, cards",
    "SELECT * FROM (SELECT password AS p FROM users) users",
    "WITH users AS (SELECT 1 AS a) SELECT * FROM users",
    "SELECT * FROM users -- comment",
    "INSERT INTO users VALUES (1, 2, 3) RETURNING id",
    "INSERT INTO users VALUES (1, 2, 3) RETURNING id -- RETURNING *",
    "UPDATE users SET a = 1 RETURNING *",
    "TABLE users",
])
def test_what_does_not_teach(red: Redactor, sql: str) -> None:
    orders: Orders = {}
    red.learn(orders, sql, fields("email", "p", "card_number"))
    assert orders == {}


def test_learning_is_off_in_mode_all_and_survives_a_cut_row_description() -> None:
    orders: Orders = {}
    Redactor("all", DEFAULT_REDACT_COLUMNS, 64).learn(orders, "SELECT * FROM users", fields("a"))
    assert orders == {}
    red = Redactor("columns", DEFAULT_REDACT_COLUMNS, 64)
    red.learn(orders, "SELECT * FROM users", fields("email", "note", "password")[:-12])  # the decoder kept a prefix
    assert orders == {"users": (False, False)}
    assert red("INSERT INTO users VALUES ('a', 'b', 'c')", orders=orders)[0] == (
        "INSERT INTO users VALUES ('a', 'b', '***')")


# -- through the session: what it learns from RowDescriptions, and when it forgets -----------------


def _values(ev: dict[str, str]) -> list[object]:
    return json.loads(ev["params"])


_fresh = iter(range(1000, 2000))


def learning(options: CaptureOptions | None = None) -> Harness:
    """A session whose process has met an INSERT without a column list (so it learns orders) on a
    Redactor of its own (sessions of one setting share one: the cache size tells them apart)."""
    h = Harness(options or CaptureOptions(redact_cache_size=next(_fresh)))
    assert not h.session._redactor.learns  # RowDescriptions cost nothing until then
    h.client(query("INSERT INTO audit VALUES (1)"))
    h.server(complete("INSERT 0 1"), ready())
    assert h.session._redactor.learns and h.take()[0]["sql"] == "INSERT INTO audit VALUES ('***')"
    return h


def test_session_hides_unnamed_columns_in_both_protocols() -> None:
    h = Harness()
    h.client(query(ISSUE))
    h.server(complete("INSERT 0 1"), ready())
    h.client(parse("INSERT INTO users VALUES ($1, $2, $3)"), bind([b"q@y.z", b"pw-nocols", b"4000000000000002"]),
             describe("P"), execute(), sync())
    h.server(parse_complete(), bind_complete(), no_data(), complete("INSERT 0 1"), ready())
    simple, extended = h.take()
    assert simple["sql"] == "INSERT INTO users VALUES ('***', '***', '***')"
    assert _values(extended) == ["***", "***", "***"]
    assert "pw-nocols" not in repr((simple, extended)) and "4000000000000002" not in repr((simple, extended))


def test_session_learns_from_select_star_then_hides_by_column() -> None:
    h = learning()
    h.client(query("SELECT * FROM users"))
    h.server(row_description("email", "password", "card_number"), complete("SELECT 0"), ready())
    h.client(query(ISSUE))
    h.server(complete("INSERT 0 1"), ready())
    h.client(parse("INSERT INTO users VALUES ($1, $2, $3)", "ins"), describe("S", "ins"), sync())
    h.server(parse_complete(), param_description(25, 25, 25), no_data(), ready())
    h.client(bind([b"q@y.z", b"pw-prep", b"4000000000000003"], stmt="ins"), execute(), sync())
    h.server(bind_complete(), complete("INSERT 0 1"), ready())
    _select, simple, prepared = h.take()
    assert simple["sql"] == "INSERT INTO users VALUES ('q@y.z', '***', '***')"
    assert _values(prepared) == ["q@y.z", "***", "***"]
    # DDL may reorder columns: the session forgets, and hides everything again.
    h.client(query("ALTER TABLE users ADD COLUMN note text"))
    h.server(complete("ALTER TABLE"), ready())
    h.client(bind([b"q@y.z", b"pw-prep", b"4000000000000003"], stmt="ins"), execute(), sync())
    h.server(bind_complete(), complete("INSERT 0 1"), ready())
    _alter, again = h.take()
    assert _values(again) == ["***", "***", "***"]


def test_session_learns_from_returning_star_of_the_statement_itself() -> None:
    h = learning()
    sql = "INSERT INTO users VALUES ($1, $2, $3) RETURNING *"
    h.client(parse(sql), bind([b"q@y.z", b"pw-ret", b"4000000000000004"]), describe("P"), execute(), sync())
    h.server(parse_complete(), bind_complete(), row_description("email", "password", "card_number"),
             data_row(b"q@y.z", b"pw-ret", b"4000000000000004"), complete("INSERT 0 1"), ready())
    [ev] = h.take()
    assert _values(ev) == ["q@y.z", "***", "***"]


def test_session_does_not_credit_a_describe_statement_answer_to_another_statement() -> None:
    h = learning()
    # Describe S of an INSERT answers NoData; the RowDescription that follows is a Describe P of a
    # SELECT * FROM users running in the same pipeline, and does not teach what 'cards' holds.
    h.client(parse("INSERT INTO cards VALUES ($1)", "a"), describe("S", "a"),
             parse("SELECT * FROM users", "b"), bind(stmt="b"), describe("P"), execute(), sync())
    h.server(parse_complete(), param_description(25), no_data(), parse_complete(), bind_complete(),
             row_description("email", "note"), complete("SELECT 0"), ready())
    assert h.session._orders == {}  # the RowDescription could have answered the Describe S: skipped
    # A Describe S of a teaching statement is answered by its own RowDescription.
    h.client(parse("SELECT * FROM users", "c"), describe("S", "c"), sync())
    h.server(parse_complete(), param_description(), row_description("email", "password"), ready())
    assert h.session._orders == {"users": (False, True)}


def test_session_copy_data_never_reaches_an_event() -> None:
    h = Harness()
    h.client(query("COPY users FROM STDIN"))
    h.server(copy_in_response())
    h.client(copy_data(b"q@y.z\tpw-copy\t4000000000000005\n"), copy_done())
    h.server(complete("COPY 1"), ready())
    [ev] = h.take()
    assert ev["sql"] == "COPY users FROM STDIN" and ev["rows"] == "1" and "params" not in ev
    assert "pw-copy" not in repr(ev) and "4000000000000005" not in repr(ev)


def test_redact_all_session_learns_nothing() -> None:
    h = Harness(CaptureOptions(redact="all", redact_cache_size=next(_fresh)))
    for _ in range(2):
        h.client(query("SELECT * FROM users"))
        h.server(row_description("email", "note"), complete("SELECT 0"), ready())
        h.client(query("INSERT INTO users VALUES ('a', 'b')"))
        h.server(complete("INSERT 0 1"), ready())
    assert [ev["sql"] for ev in h.take()][1::2] == ["INSERT INTO users VALUES ('***', '***')"] * 2
    assert not h.session._redactor.learns and h.session._orders == {}


def test_session_learns_nothing_before_an_insert_without_columns_is_met() -> None:
    h = Harness(CaptureOptions(redact_cache_size=next(_fresh)))
    h.client(query("SELECT * FROM users"))
    h.server(row_description("email", "note"), complete("SELECT 0"), ready())
    h.client(parse("SELECT * FROM users", "s"), describe("S", "s"), sync())
    h.server(parse_complete(), param_description(), row_description("email", "note"), ready())
    assert h.session._orders == {}
    # Learning starts; the Describe above was answered, so a later RowDescription is not taken for its.
    h.client(query("INSERT INTO users VALUES ('a', 'b')"))
    h.server(complete("INSERT 0 1"), ready())
    h.client(parse("SELECT password, email FROM cards"), bind(), describe("P"), execute(), sync())
    h.server(parse_complete(), bind_complete(), row_description("password", "email"), complete("SELECT 0"),
             ready())
    assert h.session._orders == {}
