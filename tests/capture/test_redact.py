"""Redaction: passwords always, sensitive columns in literals and parameters, or everything."""

from __future__ import annotations

import pytest

from fasterdata.proxy.events import DEFAULT_REDACT_COLUMNS
from fasterdata.proxy.redact import ALL_PARAMS, Redactor


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
