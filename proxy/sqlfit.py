"""Fitting a statement text within ``max_sql_chars`` without changing its shape.

The analyzers' fingerprint folds IN (…) and ARRAY[…] lists of literals to one element, and the rows
of a VALUES list to one row when they differ only in their literals. Dropping the later elements of
such a list therefore changes no fingerprint, where cutting the text would: a cut list cannot be
folded, so one shape split into as many as there were lengths past the limit.

The lists are found on a masked copy of the text, of the same length, where each literal (string,
number, parameter, NULL/TRUE/FALSE), read as the fingerprint reads it, is one mark followed by
filler, and comments are blanked. Brackets, commas and keywords left in the copy are structure.
"""

from __future__ import annotations

import re

_NUM = r"(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)"  # as the fingerprint reads numbers
# What can hide a bracket or a comma: comments, quoted names, strings (E'…' with backslash escapes),
# dollar quotes. Strings become a mark and filler, comments blanks; quoted names stay.
_HIDING = re.compile(
    r"""(?=[-/"'$])(?:
     (?P<c>/\*.*?\*/|--[^\n]*)
    |(?P<q>"[^"]*(?:""[^"]*)*")
    |(?P<e>(?<=[Ee])(?<![\w$][Ee])'[^'\\]*(?:(?:\\.|'')[^'\\]*)*')
    |(?P<s>'[^']*(?:''[^']*)*')
    |(?P<d>\$(?P<tag>(?:[A-Za-z_][A-Za-z_0-9]*)?)\$.*?\$(?P=tag)\$)
    )""",
    re.S | re.X,
)
LIT, ODD, FILL = "\x01", "\x03", "\x02"  # a literal; a number ending in '.' (the sign rule reads it apart)
MINUS = "\x04"  # "-5" elsewhere: a subtraction or a sign, as what precedes it says
_STRING = f"{LIT}{FILL}*"
_WORD = r"(?<![\w$])(?i:null|true|false)(?![\w$])"
_ITEM = rf"(?:\$\d+|{_STRING}|{_WORD}|(?:-\s*)?(?<![\w$.]){_NUM}(?![\w$.]))"  # one literal of an IN list
_CAST = r"(?:::[A-Za-z_][\w.]*(?:\[\])?)?"  # each element may carry one cast, the same for all
_IN_LIST = re.compile(rf"\(\s*{_ITEM}(?P<c>{_CAST})(?:\s*,\s*{_ITEM}(?P=c))*\s*\)")
_ARRAY_LIST = re.compile(rf"\[\s*{_ITEM}(?P<c>{_CAST})(?:\s*,\s*{_ITEM}(?P=c))*\s*\]")
_ITEMS = re.compile(rf"(?=[-\d.$\x01NnTtFf]){_ITEM}{_CAST}")  # the lookahead lets the engine skip at C speed
_OPENER = re.compile(r"(in|array|values)\s*([(\[])")  # on the lower-cased copy; the word's start is checked
_WORD_CHAR = re.compile(r"[\w$]")
_ROW_RE = r"\((?:[^()]++|\([^()]*+\))*+\)"  # the fingerprint folds rows of one nesting level at most
_ROW = re.compile(_ROW_RE)
_ROWS = re.compile(rf"{_ROW_RE}(?:\s*,\s*{_ROW_RE})*")
_RUN = re.compile(rf"({_ROW_RE})((?:\s*,\s*\1)*)")
# Rows compared as the fingerprint compares them: each literal one mark, whitespace runs one space.
_ODD_NUMBER = re.compile(r"\d(?<![\w$.]\d)\d*\.(?![\w$.])")
_SIGNED = re.compile(rf"([(,]\s*)-\s*{_NUM}(?![\w$.])")  # after '(' or ',' "-5" is one literal
_MINUS_NUMBER = re.compile(rf"-\s*{_NUM}(?![\w$.])")
_LITERAL = re.compile(rf"(?=[\d.$\x01NnTtFf])(?:\$\d+|{_STRING}|{_WORD}|(?<![\w$.]){_NUM}(?![\w$.]))")
_QUOTED_NAME = re.compile(r'"[^"]*(?:""[^"]*)*"')
_ODD_NAME = re.compile(r"[()\[\],']")


def fit(text: str, limit: int) -> str:
    """The text in at most ``limit`` characters (plus a marker), keeping its fingerprint where it can.

    The longest foldable lists lose their later elements first, keeping two (the fold needs them) and
    a ``/* …N more */`` comment in their place. Only when that is not enough is the text cut, with a
    ``…[truncated N chars]`` marker (that shape is then its own).
    """
    if len(text) <= limit:
        return text
    masked = _masked(text)
    lists = _lists(masked) if masked is not None else []
    excess = len(text) - limit
    edits: list[tuple[int, int, str]] = []
    covered: list[tuple[int, int]] = []
    for elems in sorted(lists, key=lambda e: e[-1][1] - e[1][1], reverse=True):
        if excess <= 0:
            break
        lo, hi = elems[0][0], elems[-1][1]
        if any(a < hi and lo < b for a, b in covered):
            continue  # nested in (or holding) a list already shortened
        n = len(elems)
        need = excess + len(f" /* …{n} more */")
        last = elems[-1][1]
        keep = 2
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


def _hide(m: re.Match[str]) -> str:
    kind = m.lastgroup
    tok = m.group(0)
    if kind == "q":
        return tok
    if kind == "c":
        # the fingerprint reads the sign of "-5" from the raw text before it, comment included
        after = m.string[m.end():m.end() + 64].lstrip()
        return " " * len(tok) if not after.startswith("-") else MINUS + " " * (len(tok) - 1)
    return LIT + FILL * (len(tok) - 1)  # a string or dollar quote (whose match may end on group "tag")


def _masked(text: str) -> str | None:
    """The same-length copy with strings marked and comments blanked, or None when it cannot vouch
    for the structure: a nested or unterminated comment or string, a comment before a '-', a quoted
    name holding brackets, commas or quotes, or a character of the copy's own alphabet in the text."""
    if LIT in text or ODD in text or FILL in text or MINUS in text:
        return None
    masked = _HIDING.sub(_hide, text)
    if "/*" in masked or "*/" in masked or "'" in masked or MINUS in masked:
        return None
    if '"' in masked and any(_ODD_NAME.search(q) for q in _QUOTED_NAME.findall(masked)):
        return None
    return masked


def _lists(masked: str) -> list[list[tuple[int, int]]]:
    """(start, end) of each element of every foldable list with three elements or more."""
    out: list[list[tuple[int, int]]] = []
    rows_decided = False  # the fingerprint folds the rows of one VALUES: the first whose two first rows match
    low = masked.lower()
    for m in _OPENER.finditer(low):
        if m.start() and _WORD_CHAR.match(low, m.start() - 1):
            continue  # the end of a longer word (main(…), xarray[…])
        word, bracket = m.group(1), m.start(2)
        if word == "values":
            if rows_decided or masked[bracket] != "(":
                continue
            elems, rows = _alike_rows(masked, bracket)
            # a second row unlike the first by this reading may still match it in the fingerprint's
            # (which then folds this VALUES, not a later one): no later VALUES is shortened
            rows_decided = rows >= 2
        else:
            pattern = _IN_LIST if word == "in" else _ARRAY_LIST
            if masked[bracket] != ("(" if word == "in" else "["):
                continue
            whole = pattern.match(masked, bracket)
            if whole is None:
                continue
            elems = [i.span() for i in _ITEMS.finditer(masked, bracket + 1, whole.end() - 1)]
        if len(elems) >= 3:
            out.append(elems)
    return out


def _alike_rows(masked: str, pos: int) -> tuple[list[tuple[int, int]], int]:
    """The VALUES rows from ``pos`` on that read as the first row does, and how many rows there are."""
    seq = _ROWS.match(masked, pos)
    if seq is None:
        return [], 0
    rows = [r.span() for r in _ROW.finditer(masked, pos, seq.end())]
    if len(rows) < 2:
        return rows, len(rows)
    region = _ODD_NUMBER.sub(ODD, masked[pos:seq.end()])
    if "-" in region:
        region = _MINUS_NUMBER.sub(MINUS, _SIGNED.sub(lambda m: m.group(1) + LIT, region))
    region = " ".join(_LITERAL.sub(LIT, region).split())
    run = _RUN.match(region)
    alike = 1 + run.group(2).count(run.group(1)) if run else 1
    return rows[:alike], len(rows)
