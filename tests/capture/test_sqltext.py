"""Statement splitting of simple Queries: every construct that can hide a ';' must be respected."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fasterdata.analyzers.fingerprint import normalize
from fasterdata.proxy import sqltext


@pytest.mark.parametrize(("text", "expected"), [
    ("SELECT 1", ["SELECT 1"]),
    ("SELECT 1;", ["SELECT 1"]),
    ("  SELECT 1 ;  \n", ["SELECT 1"]),
    ("", []),
    ("   ", []),
    (";", []),
    (";;", []),
    ("-- only a comment", []),
    ("/* only */ -- comments;", []),
    ("SELECT 1; SELECT 2", ["SELECT 1", "SELECT 2"]),
    ("SELECT 1;;SELECT 2;", ["SELECT 1", "SELECT 2"]),
    ("SELECT 'a;b'; SELECT 2", ["SELECT 'a;b'", "SELECT 2"]),
    ("SELECT 'it''s;'; SELECT 2", ["SELECT 'it''s;'", "SELECT 2"]),
    ("SELECT E'\\';'; SELECT 2", ["SELECT E'\\';'", "SELECT 2"]),
    ("SELECT e'a\\\\'; SELECT 2", ["SELECT e'a\\\\'", "SELECT 2"]),
    ("SELECT 'a\\'; SELECT 2", ["SELECT 'a\\'", "SELECT 2"]),  # standard string: \ is plain
    ('SELECT 1 AS ";"; SELECT 2', ['SELECT 1 AS ";"', "SELECT 2"]),
    ('SELECT 1 AS "a"";"; SELECT 2', ['SELECT 1 AS "a"";"', "SELECT 2"]),
    ("SELECT $$a;b$$; SELECT 2", ["SELECT $$a;b$$", "SELECT 2"]),
    ("SELECT $fn$ $$; $fn$; SELECT 2", ["SELECT $fn$ $$; $fn$", "SELECT 2"]),
    ("SELECT $1; SELECT 2", ["SELECT $1", "SELECT 2"]),
    ("SELECT a$b; SELECT 2", ["SELECT a$b", "SELECT 2"]),
    ("SELECT 1 -- c;\n; SELECT 2", ["SELECT 1 -- c;", "SELECT 2"]),
    ("SELECT /* ; /* nested ; */ ; */ 1; SELECT 2", ["SELECT /* ; /* nested ; */ ; */ 1", "SELECT 2"]),
    ("SELECT 1; -- trailing comment", ["SELECT 1"]),
    ("SELECT 1; /* c */ ; SELECT 2", ["SELECT 1", "SELECT 2"]),
    ("SELECT 4-2; SELECT 6/3", ["SELECT 4-2", "SELECT 6/3"]),
    ("BEGIN; INSERT INTO t VALUES (1); COMMIT;", ["BEGIN", "INSERT INTO t VALUES (1)", "COMMIT"]),
    ("CREATE FUNCTION f() RETURNS int AS $body$ BEGIN RETURN 1; END; $body$ LANGUAGE plpgsql; SELECT f()",
     ["CREATE FUNCTION f() RETURNS int AS $body$ BEGIN RETURN 1; END; $body$ LANGUAGE plpgsql", "SELECT f()"]),
    ("SELECT 'unterminated; SELECT 2", ["SELECT 'unterminated; SELECT 2"]),
])
def test_split(text: str, expected: list[str]) -> None:
    assert sqltext.split(text) == expected


def test_tokens_skip_comments_and_keep_literals() -> None:
    text = "SELECT /* x */ 'a''b', E'c\\'d', $$e$$, 1.5e3, $2, \"Q\"\"id\" -- tail"
    kinds = [(k, text[s:e]) for k, s, e in sqltext.tokens(text)]
    assert kinds == [
        (sqltext.IDENT, "SELECT"), (sqltext.STRING, "'a''b'"), (sqltext.PUNCT, ","),
        (sqltext.STRING, "E'c\\'d'"), (sqltext.PUNCT, ","), (sqltext.STRING, "$$e$$"), (sqltext.PUNCT, ","),
        (sqltext.NUMBER, "1.5e3"), (sqltext.PUNCT, ","), (sqltext.PARAM, "$2"), (sqltext.PUNCT, ","),
        (sqltext.QIDENT, '"Q""id"'),
    ]


def test_tokens_never_fail_on_garbage() -> None:
    for text in ["'", '"', "$a$", "/*", "E'\\", "\x00\xff", "U&'x", "$$", "--"]:
        sqltext.tokens(text)
        sqltext.split(text)


# -- fitting a long text within max_sql_chars ---------------------------------------------------------

LIMIT = 16384


def in_list(n: int) -> str:
    return ("SELECT id, name FROM customers WHERE id IN (" + ", ".join(str(100_000 + i) for i in range(n))
            + ") AND status = 'active' ORDER BY id")


def bulk_literals(n: int) -> str:
    """What an ORM's client-side bulk INSERT sends on the simple protocol."""
    rows = ", ".join(f"({i}, {i}.50, 'note {i}', -{i}, NULL, now())" for i in range(n))
    return f"INSERT INTO orders (customer_id, amount, note, delta, extra, created) VALUES {rows} RETURNING id"


def bulk_params(n: int) -> str:
    """The same INSERT with bound parameters (extended protocol)."""
    rows = ", ".join(f"(${3 * i + 1}, ${3 * i + 2}, ${3 * i + 3})" for i in range(n))
    return f'INSERT INTO "public"."orders" ("customer_id", "amount", "note") VALUES {rows} ON CONFLICT DO NOTHING'


def array_any(n: int) -> str:
    return "DELETE FROM sessions WHERE id = ANY(ARRAY[" + ",".join(f"'s{i:06d}'" for i in range(n)) + "])"


@pytest.mark.parametrize(("make", "sizes"), [
    (in_list, range(2500, 4501, 250)),
    (bulk_literals, range(800, 1201, 50)),
    (bulk_params, range(800, 1201, 50)),
    (array_any, range(1500, 2501, 250)),
])
def test_fit_keeps_one_shape_whatever_the_length(make, sizes) -> None:
    """Every length, short or far past the limit, has the fingerprint of the short statement."""
    short = normalize(make(3)).fp
    fitted = [sqltext.fit(make(n), LIMIT) for n in sizes]
    assert any(len(make(n)) > LIMIT for n in sizes)
    assert all(len(text) <= LIMIT for text in fitted)
    assert "truncated" not in "".join(fitted)
    assert {normalize(text).fp for text in fitted} == {short}


def test_fit_says_how_many_elements_it_dropped() -> None:
    text = in_list(4000)
    fitted = sqltext.fit(text, LIMIT)
    kept = fitted.partition("IN (")[2].partition(" /*")[0].count(",") + 1
    assert f"/* …{4000 - kept} more */) AND status = 'active' ORDER BY id" in fitted
    assert fitted.startswith(text[:1000])


def test_fit_leaves_short_texts_alone() -> None:
    text = in_list(10)
    assert sqltext.fit(text, LIMIT) is text


def test_fit_cuts_what_no_list_can_shorten() -> None:
    text = "SELECT '" + "x" * 20000 + "'"
    assert sqltext.fit(text, LIMIT) == text[:LIMIT] + f"…[truncated {len(text) - LIMIT} chars]"


def test_fit_drops_only_rows_of_the_first_row_form() -> None:
    """Rows that fold together in the fingerprint go; a row of another form, and what follows it, stay."""
    rows = ", ".join(f"({i}, 'a')" for i in range(3000))
    text = f"INSERT INTO t (a, b) VALUES {rows}, (DEFAULT, 'z'), (7, 'b')"
    fitted = sqltext.fit(text, LIMIT)
    assert fitted.endswith("more */, (DEFAULT, 'z'), (7, 'b')")
    assert normalize(fitted).fp == normalize(text).fp


@pytest.mark.parametrize("text", [
    "SELECT * FROM t WHERE a IN (" + ", ".join(f"a{i}" for i in range(5000)) + ")",  # columns, not literals
    "SELECT * FROM t WHERE a IN (" + ", ".join(f"{i}::int" for i in range(4000)) + ")",  # casts: not folded
    "SELECT '(1), (2), (3)' || '" + "x" * 17000 + "'",  # lists inside a string are no lists
])
def test_fit_never_shortens_what_the_fingerprint_does_not_fold(text: str) -> None:
    assert "more */" not in sqltext.fit(text, LIMIT)


def test_fit_shortens_the_rows_of_the_first_values_only() -> None:
    """The fingerprint folds one VALUES list: the first with two rows alike. A later one keeps its rows."""
    later = ", ".join(f"({i}, 'x')" for i in range(4000))
    text = f"WITH k (v) AS (VALUES (1), (2)) INSERT INTO t (a, b) VALUES {later}"
    fitted = sqltext.fit(text, LIMIT)
    assert "more */" not in fitted
    assert fitted.endswith(f"…[truncated {len(text) - LIMIT} chars]")


_LITERALS = st.one_of(
    st.integers(-10**6, 10**6).map(str),
    st.decimals(-1000, 1000, places=2, allow_nan=False).map(str),
    st.text(alphabet="ab' ,()[]$-/*;\\é", max_size=8).map(lambda v: "'" + v.replace("'", "''") + "'"),
    st.sampled_from(["NULL", "true", "FALSE", "$1", "$22", "E'x\\'y'", "$$a,b$$", "-5", "- 7"]),
)


@settings(max_examples=150, deadline=None)
@given(form=st.sampled_from(["({0}, {1})", "({0},{1}, now())", "( {0} , lower({1}) )", "({0}, {1}::text)"]),
       values=st.lists(st.tuples(_LITERALS, _LITERALS), min_size=3, max_size=300),
       in_values=st.lists(_LITERALS, min_size=3, max_size=300),
       limit=st.integers(120, 1200))
def test_fit_never_changes_the_fingerprint(form: str, values: list, in_values: list, limit: int) -> None:
    """Whatever the literals and the limit: a shortened text has the fingerprint of the whole one."""
    rows = ", ".join(form.format(a, b) for a, b in values)
    text = (f"INSERT INTO t (a, b) SELECT * FROM (VALUES {rows}) v WHERE a IN ({', '.join(in_values)})"
            " RETURNING a")
    fitted = sqltext.fit(text, limit)
    if "truncated" not in fitted:
        assert len(fitted) <= limit
        assert normalize(fitted).fp == normalize(text).fp, (text, fitted)
