"""Statement splitting of simple Queries: every construct that can hide a ';' must be respected."""

from __future__ import annotations

import pytest

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
