"""Redaction of SQL text and bound parameters, cached per SQL text.

Passwords must never leave the proxy (``CREATE/ALTER ROLE … PASSWORD '…'``, user-mapping options),
and neither should values of sensitive columns. The analysis works on tokens (``sqltext.tokens``)
rather than a parser: it is cheap, never fails on SQL it does not understand, and runs at most once
per distinct text. A statement that mentions nothing sensitive costs one regex search on a cache
miss, and a dict lookup on a hit.

Recognised places of a sensitive value (a *sensitive name* is an identifier matching the column
regex, or the keyword PASSWORD):

* ``name 'lit'`` — PASSWORD 'x', OPTIONS (password 'x');
* ``name = expr`` / ``expr = name`` and the other comparisons, LIKE/ILIKE, ``SET name TO expr``, in
  WHERE, SET, ON … — every literal and ``$n`` inside the expression;
* ``name IN (…)`` — every literal and ``$n`` in the list;
* ``INSERT INTO t (c1, c2, …) VALUES (…), (…)`` — the expressions at the positions of sensitive
  columns, in every row.

Where a statement mentions something sensitive but its values cannot be tied to columns — an INSERT
without a column list, a row-valued ``SET (a, b) = (…)`` — every literal and parameter of it is
hidden. SQL-level ``EXECUTE name(args)`` is always hidden whole: its arguments' columns live in an
earlier PREPARE.

Mode ``all`` hides every literal and every parameter.
"""

from __future__ import annotations

import re

from . import sqltext
from .sqltext import IDENT, NUMBER, OP, PARAM, PUNCT, QIDENT, STRING

MASK = "'***'"


class AllParams:
    """Marker: every bound parameter is hidden."""

    __slots__ = ()

    def __contains__(self, index: object) -> bool:
        return True

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return "ALL_PARAMS"


ALL_PARAMS = AllParams()

Hidden = frozenset[int] | AllParams | None
"""0-based indexes of hidden parameters, ``ALL_PARAMS``, or None when nothing is hidden."""

_WORDS = re.compile(r"\w+(?:\|\w+)*")
_COMPARE = frozenset(("=", "<>", "!=", "<", ">", "<=", ">=", "~~", "~~*", "!~~", "!~~*", "~", "~*"))
_COMPARE_WORDS = frozenset(("like", "ilike", "to"))
# Words that end an expression at depth 0 (so `password = 'x' AND name = 'y'` hides only 'x').
_STOP_WORDS = frozenset((
    "and", "or", "where", "from", "returning", "group", "order", "limit", "offset", "on", "then",
    "else", "when", "end", "having", "window", "union", "intersect", "except", "using", "set",
    "values", "select", "into", "for", "fetch", "do", "conflict", "not", "is", "in", "between",
))


class Redactor:
    """Redacts SQL texts; one per proxy process (the cache is shared by its sessions)."""

    __slots__ = ("_all", "_cache", "_cache_size", "_column", "_prefilter", "_words")

    def __init__(self, mode: str = "columns", columns: str = "", cache_size: int = 4096) -> None:
        self._all = mode == "all"
        self._column = re.compile(columns, re.IGNORECASE) if columns else None
        # The prefilter runs on every statement text not in the cache. A case-insensitive regex
        # alternation costs ~3 µs on a short statement; substring tests on the lowered text ~0.3 µs,
        # so a column regex made only of words joined by '|' (the default) is tested that way.
        self._words: tuple[str, ...] | None = None
        if not columns or _WORDS.fullmatch(columns):
            self._words = tuple(dict.fromkeys(("password", *columns.lower().split("|")) if columns
                                              else ("password",)))
            self._prefilter = None
        else:
            self._prefilter = re.compile(f"password|(?:{columns})", re.IGNORECASE)
        self._cache: dict[str, tuple[str, Hidden]] = {}
        self._cache_size = max(cache_size, 1)

    def __call__(self, sql: str, remember: bool = False) -> tuple[str, Hidden]:
        """(redacted text, hidden parameter indexes) for one statement's text. Never raises.

        Texts that need redaction are always cached. ``remember`` caches clean texts too: worth it
        for texts that recur (Parse of an unnamed statement), not for literal-laden simple Queries
        that would only push useful entries out.
        """
        cache = self._cache
        hit = cache.get(sql)
        if hit is not None:
            return hit
        if self._all:
            result = self._redact(sql, everything=True)
        else:
            words = self._words
            clean = True
            if words is not None:
                low = sql.lower()
                for word in words:
                    if word in low:
                        clean = False
                        break
            else:
                clean = self._prefilter.search(sql) is None  # type: ignore[union-attr]
            if clean and sql.lstrip()[:7].lower() == "execute":
                clean = False  # SQL-level EXECUTE: its arguments' columns are in an earlier PREPARE
            if clean:
                result = (sql, None)
                if not remember:
                    return result
            else:
                result = self._redact(sql, everything=False)
        if len(cache) >= self._cache_size:
            cache.clear()  # bounded; a burst of misses after a clear is cheaper than LRU bookkeeping
        cache[sql] = result
        return result

    def _redact(self, sql: str, everything: bool) -> tuple[str, Hidden]:
        try:
            toks = sqltext.tokens(sql)
            if everything:
                spans = [(s, e) for k, s, e in toks if k in (STRING, NUMBER)]
                return _apply(sql, spans), ALL_PARAMS
            if _unmappable(sql, toks):
                spans = [(s, e) for k, s, e in toks if k in (STRING, NUMBER)]
                return _apply(sql, spans), ALL_PARAMS
            hidden_toks = self._sensitive(sql, toks)
        except Exception:  # redaction must not break capture: hide it all instead
            return "/* redaction failed */", ALL_PARAMS
        spans = []
        params: set[int] = set()
        for i in sorted(hidden_toks):
            kind, start, end = toks[i]
            if kind == PARAM:
                digits = sql[start + 1 : end]
                if digits.isdigit():
                    params.add(int(digits) - 1)
            else:
                spans.append((start, end))
        return _apply(sql, spans), (frozenset(params) if params else None)

    def _is_sensitive(self, sql: str, tok: tuple[int, int, int]) -> bool:
        kind, start, end = tok
        if kind != IDENT and kind != QIDENT:
            return False
        name = sqltext.ident_name(sql, kind, start, end)
        if name == "password":
            return True
        return self._column is not None and self._column.search(name) is not None

    def _sensitive(self, sql: str, toks: list[tuple[int, int, int]]) -> set[int]:
        """Indexes of the literal and parameter tokens to hide."""
        hide: set[int] = set()
        n = len(toks)

        def text(i: int) -> str:
            return sql[toks[i][1] : toks[i][2]]

        def word(i: int) -> str:
            return text(i).lower() if 0 <= i < n and toks[i][0] == IDENT else ""

        def is_compare(i: int) -> bool:
            if not 0 <= i < n:
                return False
            k = toks[i][0]
            return (k == OP and text(i) in _COMPARE) or (k == IDENT and text(i).lower() in _COMPARE_WORDS)

        def expr_values(i: int) -> int:
            """Hide literals/params of the expression starting at token i; returns the index after it."""
            depth = 0
            while i < n:
                kind = toks[i][0]
                if kind == PUNCT:
                    ch = text(i)
                    if ch in "([":
                        depth += 1
                    elif ch in ")]":
                        if depth == 0:
                            return i
                        depth -= 1
                    elif ch in ",;" and depth == 0:
                        return i
                elif kind == IDENT and depth == 0 and text(i).lower() in _STOP_WORDS:
                    return i
                elif kind in (STRING, NUMBER, PARAM):
                    hide.add(i)
                i += 1
            return i

        for i in range(n):
            kind = toks[i][0]
            if kind in (STRING, NUMBER, PARAM):
                # name 'lit'  (PASSWORD 'x', OPTIONS (password 'x'))  or  'lit' = name
                after_name = i and kind != PARAM and self._is_sensitive(sql, toks[i - 1])
                if after_name or (is_compare(i + 1) and i + 2 < n and self._is_sensitive(sql, toks[i + 2])):
                    hide.add(i)
                continue
            if not self._is_sensitive(sql, toks[i]):
                continue
            j = i + 1
            if word(j) == "not":
                j += 1
            if is_compare(j):
                expr_values(j + 1)
            elif word(j) == "in" and j + 1 < n and text(j + 1) == "(":
                expr_values(j + 1)  # from the '(' so the list's commas are inside it
        self._insert_values(sql, toks, hide)
        return hide

    def _insert_values(self, sql: str, toks: list[tuple[int, int, int]], hide: set[int]) -> None:
        """INSERT INTO t (cols) VALUES (…), (…): hide values at the positions of sensitive columns."""
        n = len(toks)
        i = 0
        while i < n:
            kind, start, end = toks[i]
            if not (kind == IDENT and sql[start:end].lower() == "insert"):
                i += 1
                continue
            # Find the column list: the first '(' after INSERT INTO name.
            j = i + 1
            while j < n and not (toks[j][0] == PUNCT and sql[toks[j][1]] == "("):
                if toks[j][0] == IDENT and sql[toks[j][1] : toks[j][2]].lower() in ("values", "select",
                                                                                     "default"):
                    break
                j += 1
            if j >= n or toks[j][0] != PUNCT:
                i = j
                continue
            columns: list[bool] = []
            j += 1
            while j < n and not (toks[j][0] == PUNCT and sql[toks[j][1]] == ")"):
                # a column name: an identifier right after '(' or ','
                if toks[j][0] in (IDENT, QIDENT) and toks[j - 1][0] == PUNCT and sql[toks[j - 1][1]] in "(,":
                    columns.append(self._is_sensitive(sql, toks[j]))
                j += 1
            if not any(columns):
                i = j
                continue
            # Skip to VALUES.
            while j < n and not (toks[j][0] == IDENT and sql[toks[j][1] : toks[j][2]].lower() == "values"):
                if toks[j][0] == IDENT and sql[toks[j][1] : toks[j][2]].lower() in ("select", "insert"):
                    break
                j += 1
            if j >= n or sql[toks[j][1] : toks[j][2]].lower() != "values":
                i = j
                continue
            j += 1
            # Rows: ( e, e, … ) , ( … ) …
            while j < n and toks[j][0] == PUNCT and sql[toks[j][1]] == "(":
                j += 1
                pos = 0
                depth = 0
                while j < n:
                    kind = toks[j][0]
                    ch = sql[toks[j][1]] if kind == PUNCT else ""
                    if ch in ("(", "["):
                        depth += 1
                    elif ch in (")", "]"):
                        if depth == 0:
                            break
                        depth -= 1
                    elif ch == "," and depth == 0:
                        pos += 1
                    elif kind in (STRING, NUMBER, PARAM) and pos < len(columns) and columns[pos]:
                        hide.add(j)
                    j += 1
                j += 1  # past ')'
                if j < n and toks[j][0] == PUNCT and sql[toks[j][1]] == ",":
                    j += 1
                else:
                    break
            i = j


def _unmappable(sql: str, toks: list[tuple[int, int, int]]) -> bool:
    """Values whose columns the text does not say: EXECUTE args, INSERT without columns, SET (a, b) = …"""
    after_name = ("values", "select", "default", "overriding")
    words = [(sql[s:e].lower() if k == IDENT else "", k, s) for k, s, e in toks]
    if words and words[0][0] == "execute":
        return True
    for i, (word, _kind, _start) in enumerate(words):
        nxt = words[i + 1] if i + 1 < len(words) else ("", -1, 0)
        if word == "set" and nxt[1] == PUNCT and sql[nxt[2]] == "(":
            return True
        if word == "into" and i and words[i - 1][0] == "insert":
            j = i + 1
            while j < len(words):  # past the table name (maybe schema-qualified) and an alias
                name_part = words[j][1] in (IDENT, QIDENT) and words[j][0] not in after_name
                dot = words[j][1] == PUNCT and sql[words[j][2]] == "."
                if not (name_part or dot):
                    break
                j += 1
            if j < len(words) and words[j][0] in after_name:
                return True
    return False


def _apply(sql: str, spans: list[tuple[int, int]]) -> str:
    if not spans:
        return sql
    parts = []
    last = 0
    for start, end in spans:
        parts.append(sql[last:start])
        parts.append(MASK)
        last = end
    parts.append(sql[last:])
    return "".join(parts)

