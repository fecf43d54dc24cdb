"""The tokenizer splits SQL as PostgreSQL's scanner does: the tricky cases, and generated literals."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fasterdata.analyzers.sqllex import COMMENT, IDENT, NUM, OP, OPEN, PARAM, PUNCT, STR, WORD, string_value, tokenize


def kinds(sql: str) -> list[tuple[str, str]]:
    return [(t.kind, t.text) for t in tokenize(sql)]


@pytest.mark.parametrize(("sql", "expected"), [
    ("last_name = 'Smith'';SELECT PG_SLEEP(5)--'",
     [(WORD, "last_name"), (OP, "="), (STR, "'Smith'';SELECT PG_SLEEP(5)--'")]),
    # standard_conforming_strings: a backslash in a plain literal is a character, so 'a\' ends there
    ("'a\\' OR 1=1", [(STR, "'a\\'"), (WORD, "OR"), (NUM, "1"), (OP, "="), (NUM, "1")]),
    # E'…' escapes with backslashes: \' does not end it
    ("E'a\\'b' x", [(STR, "E'a\\'b'"), (WORD, "x")]),
    ("e'a\\\\' x", [(STR, "e'a\\\\'"), (WORD, "x")]),
    ("E'it''s'", [(STR, "E'it''s'")]),
    ("U&'d\\0061t' UESCAPE '!'", [(STR, "U&'d\\0061t'"), (WORD, "UESCAPE"), (STR, "'!'")]),
    ("N'x' B'101' X'0f'", [(STR, "N'x'"), (STR, "B'101'"), (STR, "X'0f'")]),
    ("$$it's -- not a comment$$", [(STR, "$$it's -- not a comment$$")]),
    ("$fn$ a $b$ c $fn$ + 1", [(STR, "$fn$ a $b$ c $fn$"), (OP, "+"), (NUM, "1")]),
    ("$1::int, $12", [(PARAM, "$1"), (PUNCT, "::"), (WORD, "int"), (PUNCT, ","), (PARAM, "$12")]),
    ("foo$bar$ x", [(WORD, "foo$bar$"), (WORD, "x")]),  # $ inside an identifier is not a dollar quote
    ('"we""ird" U&"d\\0061t"', [(IDENT, '"we""ird"'), (IDENT, 'U&"d\\0061t"')]),
    ('"a -- b"', [(IDENT, '"a -- b"')]),
    ("1 -- the rest\n2", [(NUM, "1"), (COMMENT, "-- the rest"), (NUM, "2")]),
    ("/* a /* b */ c */ 1", [(COMMENT, "/* a /* b */ c */"), (NUM, "1")]),
    ("1/**/OR/**/1=1", [(NUM, "1"), (COMMENT, "/**/"), (WORD, "OR"), (COMMENT, "/**/"), (NUM, "1"), (OP, "="),
                        (NUM, "1")]),
    ("x =-1", [(WORD, "x"), (OP, "="), (OP, "-"), (NUM, "1")]),  # =- is not one operator
    ("a @- b", [(WORD, "a"), (OP, "@-"), (WORD, "b")]),  # … but @- is
    ("a--b", [(WORD, "a"), (COMMENT, "--b")]),
    ("a*/*c*/b", [(WORD, "a"), (OP, "*"), (COMMENT, "/*c*/"), (WORD, "b")]),
    ("3.5e-2 .5 1. 0x1F 1_000", [(NUM, "3.5e-2"), (NUM, ".5"), (NUM, "1."), (NUM, "0x1F"), (NUM, "1_000")]),
    ("t.col", [(WORD, "t"), (PUNCT, "."), (WORD, "col")]),
    ("größe", [(WORD, "größe")]),
    ("'open", [(OPEN, "'open")]),
    ("'admin'/*' AND x", [(STR, "'admin'"), (OPEN, "/*' AND x")]),
    ("/* a /* b */", [(OPEN, "/* a /* b */")]),
    ("$q$ never closed", [(OPEN, "$q$ never closed")]),
    ('"open', [(OPEN, '"open')]),
    ("", []),
    ("   \n\t", []),
])
def test_tokens(sql: str, expected: list[tuple[str, str]]) -> None:
    assert kinds(sql) == expected


def test_offsets_point_into_the_text() -> None:
    sql = "SELECT  'a''b' ,\n\"x\" -- c\n FROM t"
    for t in tokenize(sql):
        assert sql[t.start:t.end] == t.text


@pytest.mark.parametrize(("literal", "value"), [
    ("'it''s'", "it's"), ("E'a\\nb\\'c'", "a\nb'c"), ("$t$x'y$t$", "x'y"), ("$$$$", ""), ("N'x'", "x"),
])
def test_string_value(literal: str, value: str) -> None:
    [tok] = tokenize(literal)
    assert string_value(tok) == value


_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


def _plain(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _escaped(s: str) -> str:
    return "E'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _dollar(s: str) -> str:
    tag = "q"
    while f"${tag}$" in s or s.endswith(f"${tag}") or s.endswith("$"):
        tag += "q"
        if s.endswith("$"):
            s = s + " "
    return f"${tag}${s}${tag}$"


def _ident(s: str) -> str:
    return '"' + s.replace('"', '""') + '"'


@settings(max_examples=300, deadline=None)
@given(_TEXT, st.sampled_from(["plain", "escaped", "dollar", "ident"]))
def test_a_quoted_value_is_always_one_token(value: str, how: str) -> None:
    """Whatever the input, quoted by the rules it is one literal (or identifier), and the SQL around it
    tokenises the same: this is what correct escaping buys, and the checks must honour it."""
    quoted = {"plain": _plain, "escaped": _escaped, "dollar": _dollar, "ident": _ident}[how](value)
    sql = f"SELECT * FROM users WHERE last_name = {quoted} AND id = 5"
    toks = tokenize(sql)
    assert [t.kind for t in toks] == [WORD, OP, WORD, WORD, WORD, WORD, OP, IDENT if how == "ident" else STR,
                                      WORD, WORD, OP, NUM]
    assert toks[7].text == quoted
    if how in ("plain", "escaped"):
        assert string_value(toks[7]) == value


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_any_text_is_covered_by_its_tokens(sql: str) -> None:
    """Every non-space character is in exactly one token, in order (so offsets and fragments are honest)."""
    toks = tokenize(sql)
    pos = 0
    for t in toks:
        assert sql[t.start:t.end] == t.text and t.start >= pos
        assert sql[pos:t.start].strip() == ""
        pos = t.end
    assert sql[pos:].strip() == ""
