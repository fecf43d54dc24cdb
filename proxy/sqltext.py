"""Lexical helpers over SQL text: statement splitting, a small tokenizer, and fitting a long text.

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


# -- fitting a long text ---------------------------------------------------------------------------

# A number the analyzers' fingerprint reads as one literal; others ("5.", "0x1F", "1_000") are kept as text.
_PLAIN_NUMBER = re.compile(r"(?:\d+(?:\.\d+)?|\.\d+)(?:[eE][+-]?\d+)?")
_VALUE_WORDS = frozenset({"null", "true", "false"})
_LIST_OPENERS = {"in": "(", "array": "["}
_CLOSER = {"(": ")", "[": "]"}
Skeleton = tuple[str | None, ...]


def fit(text: str, limit: int) -> str:
    """The text in at most ``limit`` characters (plus a marker), keeping its fingerprint where it can.

    IN (…) and ARRAY[…] lists of literals and VALUES rows of one form fold to one element in the
    analyzers' fingerprint, so dropping their later elements changes no shape: the longest lists lose
    theirs first, leaving the first two and a ``/* …N more */`` comment. Only when that is not enough is
    the text cut, with a ``…[truncated N chars]`` marker (that shape is then its own).
    """
    if len(text) <= limit:
        return text
    excess = len(text) - limit
    edits: list[tuple[int, int, str]] = []
    covered: list[tuple[int, int]] = []
    for elems in sorted(_lists(text), key=lambda e: e[-1][1] - e[1][1], reverse=True):
        if excess <= 0:
            break
        lo, hi = elems[0][0], elems[-1][1]
        if any(a < hi and lo < b for a, b in covered):
            continue  # nested in (or holding) a list already shortened
        n = len(elems)
        marker_len = len(f" /* …{n} more */")
        need = excess + marker_len
        last = elems[-1][1]
        keep = 2  # elements kept: the fold needs two
        if last - elems[1][1] >= need:
            while keep < n - 1 and last - elems[keep][1] >= need:
                keep += 1
        marker = f" /* …{n - keep} more */"
        start = elems[keep - 1][1]
        edits.append((start, last, marker))
        covered.append((lo, hi))
        excess -= (last - start) - len(marker)
    out = text
    for start, end, marker in sorted(edits, reverse=True):
        out = out[:start] + marker + out[end:]
    if len(out) > limit:
        out = f"{out[:limit]}…[truncated {len(out) - limit} chars]"
    return out


def _lists(text: str) -> list[list[tuple[int, int]]]:
    """(start, end) of each element of every foldable list with three elements or more."""
    toks = tokens(text)
    match = _brackets(text, toks)
    out: list[list[tuple[int, int]]] = []
    rows_folded = False  # the fingerprint folds the rows of one VALUES: the first with two alike
    for i, (kind, start, end) in enumerate(toks):
        if kind != IDENT or i + 1 >= len(toks):
            continue
        word = text[start:end].lower()
        opener = _LIST_OPENERS.get(word)
        nxt = toks[i + 1]
        if nxt[0] != PUNCT or (j := match.get(i + 1)) is None:
            continue
        if opener is not None and text[nxt[1]] == opener:
            elems = _literal_items(text, toks, i + 2, j)
        elif word == "values" and text[nxt[1]] == "(" and not rows_folded:
            elems = _alike_rows(text, toks, match, i + 1)
            rows_folded = len(elems) >= 2
        else:
            continue
        if len(elems) >= 3:
            out.append(elems)
    return out


def _brackets(text: str, toks: list[tuple[int, int, int]]) -> dict[int, int]:
    """Token index of each opening bracket → index of its closing one (unbalanced ones left out)."""
    match: dict[int, int] = {}
    stack: list[int] = []
    for i, (kind, start, _end) in enumerate(toks):
        if kind != PUNCT:
            continue
        ch = text[start]
        if ch in "([":
            stack.append(i)
        elif ch in ")]":
            if stack and _CLOSER[text[toks[stack[-1]][1]]] == ch:
                match[stack.pop()] = i
            else:
                stack.clear()
    return match


def _literal_items(text: str, toks: list[tuple[int, int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    """The elements of toks[lo:hi] split at commas when each is a single literal, else []."""
    elems: list[tuple[int, int]] = []
    i = lo
    while i < hi:
        j = i + 1
        if toks[i][0] == OP and text[toks[i][1]:toks[i][2]] == "-" and j < hi:
            j += 1  # a signed number
        if _skeleton(text, toks, i, j) != (None,):
            return []
        elems.append((toks[i][1], toks[j - 1][2]))
        if j < hi and not _is(text, toks[j], ","):
            return []
        i = j + 1
    return elems


def _alike_rows(text: str, toks: list[tuple[int, int, int]], match: dict[int, int],
                first: int) -> list[tuple[int, int]]:
    """The VALUES rows from token ``first`` on that have the first row's form (literals aside)."""
    elems: list[tuple[int, int]] = []
    form: Skeleton | None = None
    i = first
    while i < len(toks) and _is(text, toks[i], "(") and (j := match.get(i)) is not None:
        row = _skeleton(text, toks, i, j + 1)
        if form is None:
            form = row
        elif row != form:
            break
        elems.append((toks[i][1], toks[j][2]))
        if j + 2 < len(toks) and _is(text, toks[j + 1], ","):
            i = j + 2
        else:
            break
    return elems


def _literal(text: str, kind: int, start: int, end: int) -> bool:
    """A token the fingerprint turns into a placeholder."""
    if kind in (STRING, PARAM):
        return True
    if kind == NUMBER:
        return _PLAIN_NUMBER.fullmatch(text, start, end) is not None
    return kind == IDENT and text[start:end].lower() in _VALUE_WORDS


def _is(text: str, tok: tuple[int, int, int], ch: str) -> bool:
    return tok[0] == PUNCT and text[tok[1]] == ch


def _skeleton(text: str, toks: list[tuple[int, int, int]], lo: int, hi: int) -> Skeleton:
    """toks[lo:hi] as the fingerprint sees them: each literal one None, other tokens as written, and
    where whitespace (or a comment) separates two tokens, a " "."""
    out: list[str | None] = []
    i = lo
    while i < hi:
        kind, start, end = toks[i]
        if i > lo and start > toks[i - 1][2]:
            out.append(" ")
        if _literal(text, kind, start, end):
            out.append(None)
        elif kind == OP and text[start:end] == "-" and i + 1 < hi and toks[i + 1][0] == NUMBER \
                and _PLAIN_NUMBER.fullmatch(text, toks[i + 1][1], toks[i + 1][2]) \
                and (i == lo or _is(text, toks[i - 1], "(") or _is(text, toks[i - 1], ",")):
            out.append(None)  # a sign: the fingerprint reads "-5" here as one literal
            i += 1
        else:
            out.append(text[start:end])
        i += 1
    return tuple(out)
