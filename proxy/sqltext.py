"""Lexical helpers over SQL text: statement splitting and a small tokenizer.

A simple Query may carry several statements; the server answers each with its own
CommandComplete, so the tap needs the text of each one. Splitting must respect everything that can
hide a semicolon: standard strings ('it''s'), escape strings (E'\\''), quoted identifiers, dollar
quotes ($fn$ … $fn$), line comments and nested block comments. Most Queries hold one statement, so
``split`` answers those without scanning character by character.

``standard_conforming_strings`` is assumed on (the default since PostgreSQL 9.1).
"""

from __future__ import annotations

import re

# Where scanning must stop and look: anything that can start a quote, a comment or end a statement.
_SPECIAL = re.compile(r"[;'\"$/\-]")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\u0080-\uffff][A-Za-z_0-9\u0080-\uffff]*)?\$")
_SPACE = " \t\n\r\f\v"


def _is_ident_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_" or ch == "$"


def _skip_block_comment(text: str, pos: int) -> int:
    """``pos`` is just after an opening ``/*``; returns the index after the matching ``*/`` (nested)."""
    depth = 1
    n = len(text)
    while depth:
        close = text.find("*/", pos)
        if close < 0:
            return n
        opening = text.find("/*", pos, close)
        if opening >= 0:
            depth += 1
            pos = opening + 2
        else:
            depth -= 1
            pos = close + 2
    return pos


def _skip_quoted(text: str, pos: int, quote: str) -> int:
    """``pos`` is just after an opening quote; doubled quotes escape. Returns the index after the close."""
    n = len(text)
    while True:
        end = text.find(quote, pos)
        if end < 0:
            return n
        if end + 1 < n and text[end + 1] == quote:
            pos = end + 2
            continue
        return end + 1


def _skip_escape_string(text: str, pos: int) -> int:
    """E'…' with backslash escapes; ``pos`` is just after the opening quote."""
    n = len(text)
    while pos < n:
        ch = text[pos]
        if ch == "\\":
            pos += 2
        elif ch == "'":
            if pos + 1 < n and text[pos + 1] == "'":
                pos += 2
            else:
                return pos + 1
        else:
            pos += 1
    return n


def skip_token(text: str, pos: int) -> tuple[int, bool]:
    """At a special character: (index after the construct it starts, whether it was a comment)."""
    ch = text[pos]
    if ch == "'":
        if pos >= 1 and text[pos - 1] in "eE" and (pos < 2 or not _is_ident_char(text[pos - 2])):
            return _skip_escape_string(text, pos + 1), False
        return _skip_quoted(text, pos + 1, "'"), False
    if ch == '"':
        return _skip_quoted(text, pos + 1, '"'), False
    if ch == "$":
        if pos and _is_ident_char(text[pos - 1]):
            return pos + 1, False
        m = _DOLLAR_TAG.match(text, pos)
        if m is None:
            return pos + 1, False
        tag = m.group()
        end = text.find(tag, m.end())
        return (len(text) if end < 0 else end + len(tag)), False
    if ch == "/":
        if text.startswith("/*", pos):
            return _skip_block_comment(text, pos + 2), True
        return pos + 1, False
    if ch == "-":
        if text.startswith("--", pos):
            end = text.find("\n", pos)
            return (len(text) if end < 0 else end + 1), True
        return pos + 1, False
    return pos + 1, False


def split(text: str) -> list[str]:
    """Statements of a simple Query, stripped, without their ';', empty ones (only comments) dropped."""
    stripped = text.strip(_SPACE)
    semi = stripped.find(";")
    if semi < 0 or semi == len(stripped) - 1:
        # One statement at most: no ';' or only a final one. Empty or comment-only text is no statement.
        body = stripped[:semi] if semi >= 0 else stripped
        body = body.rstrip(_SPACE)
        if not body or (body.startswith(("--", "/*")) and not _has_content(body)):
            return []
        return [body]
    return _split_slow(stripped)


def _has_content(text: str) -> bool:
    """True if the text holds anything besides whitespace and comments."""
    pos = 0
    n = len(text)
    while pos < n:
        ch = text[pos]
        if ch in _SPACE:
            pos += 1
            continue
        if text.startswith("--", pos) or text.startswith("/*", pos):
            pos = skip_token(text, pos)[0]
            continue
        return True
    return False


def _split_slow(text: str) -> list[str]:
    out: list[str] = []
    n = len(text)
    start = 0  # where the current statement begins
    content = False  # has the current statement anything besides whitespace and comments
    pos = 0
    search = _SPECIAL.search
    while pos < n:
        m = search(text, pos)
        stop = n if m is None else m.start()
        if not content and text[pos:stop].strip(_SPACE):
            content = True
        if m is None:
            break
        if text[stop] == ";":
            if content:
                out.append(text[start:stop].strip(_SPACE))
            start = pos = stop + 1
            content = False
            continue
        pos, comment = skip_token(text, stop)
        if not comment:
            content = True
    if content:
        tail = text[start:].strip(_SPACE)
        if tail:
            out.append(tail)
    return out


# -- tokens ----------------------------------------------------------------------------------------

# Token kinds.
IDENT, QIDENT, STRING, NUMBER, PARAM, OP, PUNCT = range(7)

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<lc>--[^\n]*)
  | (?P<bc>/\*)
  | (?P<estr>[eE]')
  | (?P<pstr>(?:[uU]&|[bBxXnN])')
  | (?P<str>')
  | (?P<qid>(?:[uU]&)?")
  | (?P<dollar>\$(?:[A-Za-z_\u0080-\uffff][A-Za-z_0-9\u0080-\uffff]*)?\$)
  | (?P<param>\$\d+)
  | (?P<num>(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][+-]?\d+)?|0[xX][0-9A-Fa-f_]+|0[oO][0-7_]+|0[bB][01_]+)
  | (?P<ident>[A-Za-z_\u0080-\uffff][A-Za-z_0-9$\u0080-\uffff]*)
  | (?P<op>[+\-*/<>=~!@\#%^&|`?]+|::)
  | (?P<punct>.)
    """,
    re.VERBOSE | re.DOTALL,
)


def tokens(text: str) -> list[tuple[int, int, int]]:
    """(kind, start, end) for every token but whitespace and comments. Never raises."""
    out: list[tuple[int, int, int]] = []
    append = out.append
    pos = 0
    n = len(text)
    match = _TOKEN.match
    while pos < n:
        m = match(text, pos)
        if m is None:  # cannot happen with the catch-all, but never loop forever
            pos += 1
            continue
        kind = m.lastgroup
        end = m.end()
        if kind == "ws" or kind == "lc":
            pass
        elif kind == "bc":
            end = _skip_block_comment(text, end)
        elif kind == "ident":
            append((IDENT, pos, end))
        elif kind == "num":
            append((NUMBER, pos, end))
        elif kind == "str" or kind == "pstr":
            end = _skip_quoted(text, end, "'")
            append((STRING, pos, end))
        elif kind == "estr":
            end = _skip_escape_string(text, end)
            append((STRING, pos, end))
        elif kind == "qid":
            end = _skip_quoted(text, end, '"')
            append((QIDENT, pos, end))
        elif kind == "dollar":
            tag = m.group()
            close = text.find(tag, end)
            end = n if close < 0 else close + len(tag)
            append((STRING, pos, end))
        elif kind == "param":
            append((PARAM, pos, end))
        elif kind == "op":
            # '--' or '/*' inside an operator run starts a comment (PostgreSQL lexes it so too).
            op = text[pos:end]
            cut = min((i for i in (op.find("--"), op.find("/*")) if i >= 0), default=-1)
            if cut == 0:
                end = pos + 1  # cannot happen: the comment alternatives come first
            elif cut > 0:
                end = pos + cut
            append((OP, pos, end))
        else:
            append((PUNCT, pos, end))
        pos = end
    return out


def ident_name(text: str, kind: int, start: int, end: int) -> str:
    """An identifier as PostgreSQL folds it: unquoted → lower case; "Quoted" → as written."""
    if kind == QIDENT:
        raw = text[start:end]
        if raw[:1] in "uU":
            raw = raw[2:]
        return raw[1:-1].replace('""', '"')
    return text[start:end].lower()
