"""Redaction of SQL text and bound parameters, cached per SQL text.

Passwords must never leave the proxy (``CREATE/ALTER ROLE … PASSWORD '…'``, user-mapping options),
and neither should values of sensitive columns. The analysis works on tokens (``sqltext.tokens``)
rather than a parser: it is cheap, never fails on SQL it does not understand, and runs at most once
per distinct text. A statement that mentions nothing sensitive and holds no INSERT costs a few
substring tests on a cache miss, and a dict lookup on a hit; an INSERT that names its columns adds
one regex match.

Recognised places of a sensitive value (a *sensitive name* is an identifier matching the column
regex, or the keyword PASSWORD):

* ``name 'lit'`` — PASSWORD 'x', OPTIONS (password 'x');
* ``name = expr`` / ``expr = name`` and the other comparisons, LIKE/ILIKE, ``SET name TO expr``, in
  WHERE, SET, ON CONFLICT … DO UPDATE SET — every literal and ``$n`` inside the expression;
* ``name IN (…)`` — every literal and ``$n`` in the list;
* ``expr AS name``, ``'lit' name`` — a value named for a column (a CTE or subquery feeding a write);
* ``INSERT INTO t (c1, c2, …) VALUES (…), (…)`` — the expressions at the positions of sensitive
  columns, in every row, and any expression past the last named column.

Where the column of a value cannot be known, the value is hidden:

* ``INSERT INTO t VALUES (…)`` without a column list, whatever the table is called: every value,
  unless the session has learned t's column order (below); then by position, and every value past
  the learned columns;
* an INSERT whose rows come from a query (``INSERT … SELECT``, ``WITH``, ``TABLE``) when it has no
  column list or its list names a sensitive column: every literal and parameter of the statement;
* MERGE's ``INSERT VALUES (…)`` without a column list, and a VALUES list outside an INSERT in a
  statement that mentions a sensitive name: every value of that list;
* a row-valued ``SET (a, b) = (…)`` and SQL-level ``EXECUTE name(args)`` (its arguments' columns live
  in an earlier PREPARE): every value of the statement.

Learning a column order: the session hands ``learn`` each RowDescription with its statement's text,
once the process has met an INSERT without a column list (``learns``; before, RowDescriptions cost
nothing more). Only ``SELECT * FROM t [WHERE …]`` and ``INSERT INTO t … RETURNING *`` teach, since
their field names are t's columns in order (the latter teaches its own event). The order is kept per
session (as a search_path and temporary tables are) and keyed by t as written. The session forgets
what it learned when it runs DDL, SET, RESET, DISCARD or a ROLLBACK (``FORGET_TAGS``); DDL it does
not see (another connection) is covered for added columns (values past the learned ones are
hidden), not for columns dropped and re-added in another order, until the next ``SELECT *``.

CopyData is never decoded (``session.FRONTEND_WANTED``): COPY FROM STDIN rows do not leave the proxy.

Mode ``all`` hides every literal and every parameter.
"""

from __future__ import annotations

import re
import struct

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

Orders = dict[str, tuple[bool, ...]]
"""A session's learned column orders: table as written (folded) → sensitivity of each column."""


class Provisional(tuple):  # type: ignore[type-arg]
    """A (text, hidden) pair worked out from a session's learned column orders: valid for this
    execution only, so not to be kept on a prepared statement."""

    __slots__ = ()


# Command tags after which a session's learned column orders may be wrong.
FORGET_TAGS = ("CREATE", "ALTER", "DROP", "SET", "RESET", "DISCARD", "ROLLBACK", "IMPORT")

_WORDS = re.compile(r"\w+(?:\|\w+)*")
_COMPARE = frozenset(("=", "<>", "!=", "<", ">", "<=", ">=", "~~", "~~*", "!~~", "!~~*", "~", "~*"))
_COMPARE_WORDS = frozenset(("like", "ilike", "to"))
# Words that end an expression at depth 0 (so `password = 'x' AND name = 'y'` hides only 'x').
_STOP_WORDS = frozenset((
    "and", "or", "where", "from", "returning", "group", "order", "limit", "offset", "on", "then",
    "else", "when", "end", "having", "window", "union", "intersect", "except", "using", "set",
    "values", "select", "into", "for", "fetch", "do", "conflict", "not", "is", "in", "between",
))
_QUERY_WORDS = frozenset(("select", "values", "with", "table"))
_VALUE = frozenset((STRING, NUMBER, PARAM))

_NAME = r'(?:"(?:[^"]|"")*"|[^\W\d][\w$]*)'
_QNAME = rf"{_NAME}(?:\s*\.\s*{_NAME})*"
_NAME_WORD = re.compile(_NAME)
# After INSERT, on lowered text: INTO name [AS alias] ( — a column list, not a parenthesised query.
_NAMED_COLUMNS = re.compile(rf"\s+into\s+{_QNAME}(?:\s+as\s+{_NAME})?\s*\(\s*(?!(?:select|values|with|table)\b|\()")
# Statements whose RowDescription lists a table's columns in their order.
_TEACHES = re.compile(
    rf"\s*(?:select\s+\*\s+from\s+(?P<s>{_QNAME})\s*(?:;|$|(?:where|order|limit|offset|fetch|for)\b)"
    rf"|insert\s+into\s+(?P<i>{_QNAME})(?![\w$\"])(?:(?!--|/\*)[^;])*\breturning\s+\*\s*;?\s*$)",
    re.IGNORECASE | re.DOTALL,
)
_i16 = struct.Struct("!h").unpack_from
_MAX_ORDERS = 256  # tables a session remembers


class Redactor:
    """Redacts SQL texts; one per proxy process (the cache is shared by its sessions)."""

    __slots__ = ("_all", "_cache", "_cache_size", "_column", "_words", "learns")

    def __init__(self, mode: str = "columns", columns: str = "", cache_size: int = 4096) -> None:
        self._all = mode == "all"
        self._column = re.compile(columns, re.IGNORECASE) if columns else None
        # The prefilter runs on every statement text not in the cache. A column regex made only of
        # words joined by '|' (the default) is tested as substrings of the lowered text, the
        # cheapest test; any other regex is searched in each name-like word of the text, as it is
        # meant for names (``^pin$`` must match the column pin, not the text).
        self._words: tuple[str, ...] | None = None
        if not columns or _WORDS.fullmatch(columns):
            self._words = tuple(dict.fromkeys(("password", *columns.lower().split("|")) if columns
                                              else ("password",)))
        self._cache: dict[str, tuple[str, Hidden] | _Plan] = {}
        self._cache_size = max(cache_size, 1)
        # Whether column orders are worth learning: from the first INSERT without a column list on,
        # so traffic without one pays nothing for its RowDescriptions.
        self.learns = False

    @property
    def plain_words(self) -> tuple[str, ...] | None:
        """The words the prefilter looks for in a lowered text when that is the whole test (mode "columns",
        a column regex of words only), else None. The compiled Session (proxy/_session.c) runs the same
        test on plain simple Queries instead of calling here."""
        return None if self._all else self._words

    def __call__(self, sql: str, remember: bool = False, orders: Orders | None = None) -> tuple[str, Hidden]:
        """(redacted text, hidden parameter indexes) for one statement's text. Never raises.

        Texts that need redaction are cached (an INSERT without a column list only when remembered).
        ``remember`` caches clean texts too: worth it for texts that recur (Parse of an unnamed
        statement), not for literal-laden simple Queries that would only push useful entries out.
        ``orders``: the session's learned column orders; a result that used them is a ``Provisional``.
        """
        cache = self._cache
        hit = cache.get(sql)
        if hit is not None:
            return hit if hit.__class__ is tuple else hit.resolve(orders)  # type: ignore[union-attr,return-value]
        result: tuple[str, Hidden] | _Plan
        if self._all:
            result = self._redact(sql, everything=True, mentions=True)
        else:
            low = sql.lower()
            words = self._words
            mentions = False
            if words is not None:
                for word in words:
                    if word in low:
                        mentions = True
                        break
            else:
                mentions = "password" in low or _names_match(self._column, sql)  # type: ignore[arg-type]
            clean = not mentions
            if clean and low.lstrip()[:7] == "execute":
                clean = False  # SQL-level EXECUTE: its arguments' columns are in an earlier PREPARE
            if clean and "insert" in low and _bare_insert(low):
                clean = False  # an INSERT whose values' columns the text does not name
            if clean:
                result = (sql, None)
                if not remember:
                    return result
            else:
                result = self._redact(sql, everything=False, mentions=mentions)
        if not remember and result.__class__ is not tuple:  # a plan (large) of a text unlikely to recur
            return result.resolve(orders)  # type: ignore[union-attr]
        if len(cache) >= self._cache_size:
            cache.clear()  # bounded; a burst of misses after a clear is cheaper than LRU bookkeeping
        cache[sql] = result
        return result if result.__class__ is tuple else result.resolve(orders)  # type: ignore[union-attr,return-value]

    def learn(self, orders: Orders, sql: str, row_description: bytes) -> None:
        """A RowDescription answered ``sql``: if its fields are a table's columns in order, keep them."""
        if "*" not in sql or self._all:
            return
        m = _TEACHES.match(sql)
        if m is None:
            return
        table = _fold(m.group("s") or m.group("i"))
        if len(orders) >= _MAX_ORDERS and table not in orders:
            orders.clear()
        orders[table] = tuple(self._name_is_sensitive(name) for name in _field_names(row_description))

    def _name_is_sensitive(self, name: str) -> bool:
        if name.lower() == "password":
            return True
        return self._column is not None and self._column.search(name) is not None

    def _redact(self, sql: str, everything: bool, mentions: bool) -> tuple[str, Hidden] | _Plan:
        try:
            toks = sqltext.tokens(sql)
            if everything or _unmappable(sql, toks):
                return _hide_all(sql, toks)
            hide = self._sensitive(sql, toks) if mentions else set()
            slots = self._inserts(sql, toks, hide, mentions)
            if slots is None:
                return _hide_all(sql, toks)
        except Exception:  # redaction must not break capture: hide it all instead
            return "/* redaction failed */", ALL_PARAMS
        if slots:
            self.learns = True
            return _Plan(sql, toks, hide, slots)
        return _result(sql, [toks[i] for i in hide])

    def _is_sensitive(self, sql: str, tok: tuple[int, int, int]) -> bool:
        kind, start, end = tok
        if kind != IDENT and kind != QIDENT:
            return False
        name = sqltext.ident_name(sql, kind, start, end)
        if name == "password":
            return True
        return self._column is not None and self._column.search(name) is not None

    def _sensitive(self, sql: str, toks: list[tuple[int, int, int]]) -> set[int]:
        """Indexes of the literal and parameter tokens to hide for the names the statement mentions."""
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
                elif kind in _VALUE:
                    hide.add(i)
                i += 1
            return i

        def alias_values(i: int) -> None:
            """Hide literals/params of the select-list expression ending at token i (walking back)."""
            depth = 0
            while i >= 0:
                kind = toks[i][0]
                if kind == PUNCT:
                    ch = text(i)
                    if ch in ")]":
                        depth += 1
                    elif ch in "([":
                        if depth == 0:
                            return
                        depth -= 1
                    elif ch in ",;" and depth == 0:
                        return
                elif kind == IDENT and depth == 0 and text(i).lower() in ("select", "distinct", "all", "returning"):
                    return
                elif kind in _VALUE:
                    hide.add(i)
                i -= 1

        for i in range(n):
            kind = toks[i][0]
            if kind in _VALUE:
                # name 'lit'  (PASSWORD 'x', OPTIONS (password 'x')),  'lit' = name,  'lit' name (an alias)
                after_name = i and kind != PARAM and self._is_sensitive(sql, toks[i - 1])
                if (after_name or (is_compare(i + 1) and i + 2 < n and self._is_sensitive(sql, toks[i + 2]))
                        or (i + 1 < n and word(i + 1) not in _STOP_WORDS and self._is_sensitive(sql, toks[i + 1]))):
                    hide.add(i)
                continue
            if word(i) == "as" and i + 1 < n and self._is_sensitive(sql, toks[i + 1]):
                alias_values(i - 1)  # expr AS password: a value named for a column (a CTE, a subquery)
                continue
            if not self._is_sensitive(sql, toks[i]):
                continue
            if i >= 2 and toks[i - 1][0] == IDENT and text(i - 2) == "::":
                alias_values(i - 1)  # 'lit'::type name: an alias too
            j = i + 1
            if word(j) == "not":
                j += 1
            if is_compare(j):
                expr_values(j + 1)
            elif word(j) == "in" and j + 1 < n and text(j + 1) == "(":
                expr_values(j + 1)  # from the '(' so the list's commas are inside it
        return hide

    def _inserts(self, sql: str, toks: list[tuple[int, int, int]], hide: set[int],
                 mentions: bool) -> list[tuple[str, int, int]] | None:
        """Values of INSERTs and VALUES lists: hidden by column, or slots (table, position, token)
        for rows of INSERTs without a column list. None: every value of the statement must go."""
        n = len(toks)
        slots: list[tuple[str, int, int]] = []
        consumed: set[int] = set()  # VALUES keywords whose rows are accounted for

        def word(i: int) -> str:
            return sql[toks[i][1] : toks[i][2]].lower() if 0 <= i < n and toks[i][0] == IDENT else ""

        def punct(i: int, ch: str) -> bool:
            return 0 <= i < n and toks[i][0] == PUNCT and sql[toks[i][1]] == ch

        def rows(j: int, each: dict[int, list[int]]) -> None:
            """VALUES (…), (…) from the token after VALUES: each value token by its position."""
            while punct(j, "("):
                j += 1
                pos = depth = 0
                while j < n:
                    kind = toks[j][0]
                    if kind == PUNCT:
                        ch = sql[toks[j][1]]
                        if ch in "([":
                            depth += 1
                        elif ch in ")]":
                            if depth == 0:
                                break
                            depth -= 1
                        elif ch == "," and depth == 0:
                            pos += 1
                    elif kind in _VALUE:
                        each.setdefault(pos, []).append(j)
                    j += 1
                if not punct(j + 1, ","):
                    return
                j += 2

        for i in range(n):
            if word(i) != "insert":
                continue
            j = i + 1
            table = ""
            if word(j) == "into":
                j += 1
                parts = []
                while j < n and toks[j][0] in (IDENT, QIDENT):
                    parts.append(sqltext.ident_name(sql, *toks[j]))
                    j += 1
                    if not punct(j, "."):
                        break
                    j += 1
                table = ".".join(parts)
                if word(j) == "as":
                    j += 2
            columns: list[bool] | None = None
            if punct(j, "(") and word(j + 1) not in _QUERY_WORDS and not punct(j + 1, "("):
                columns = []
                j += 1
                expect = True  # a column name comes after '(' or ','
                while j < n and not punct(j, ")"):
                    if expect and toks[j][0] in (IDENT, QIDENT):
                        columns.append(self._is_sensitive(sql, toks[j]))
                    expect = punct(j, ",")
                    j += 1
                j += 1
            if word(j) == "overriding":
                j += 3
            if word(j) == "default":
                continue  # DEFAULT VALUES
            if word(j) != "values":  # the rows come from a query
                if columns is None or any(columns):
                    return None
                continue
            consumed.add(j)
            each: dict[int, list[int]] = {}
            rows(j + 1, each)
            for pos, found in each.items():
                if columns is not None:
                    if pos >= len(columns) or columns[pos]:
                        hide.update(found)
                elif table:
                    slots.extend((table, pos, t) for t in found)
                else:
                    hide.update(found)  # MERGE … INSERT VALUES: the target is not followed here
        if mentions:  # other VALUES lists (FROM (VALUES …) AS v(id, password)): columns not followed
            for i in range(n):
                if word(i) == "values" and i not in consumed:
                    each = {}
                    rows(i + 1, each)
                    for found in each.values():
                        hide.update(found)
        return slots


class _Plan:
    """The redaction of an INSERT without a column list, to be completed by a session's orders."""

    __slots__ = ("_memo", "fixed", "slots", "sql", "tables")

    def __init__(self, sql: str, toks: list[tuple[int, int, int]], hide: set[int],
                 slots: list[tuple[str, int, int]]) -> None:
        self.sql = sql
        # Only the value tokens are kept: a plan can live in the cache for long.
        self.fixed = [toks[i] for i in hide]
        self.slots = [(table, pos, toks[i]) for table, pos, i in slots]
        self.tables = tuple(dict.fromkeys(t for t, _, _ in slots))
        self._memo: tuple[object, Provisional] | None = None

    def resolve(self, orders: Orders | None) -> Provisional:
        """The result under these orders; the last one is remembered (a session inserts again)."""
        key = tuple(orders.get(t) for t in self.tables) if orders else None
        memo = self._memo
        if memo is not None and memo[0] == key:
            return memo[1]
        chosen = list(self.fixed)
        for table, pos, tok in self.slots:
            order = orders.get(table) if orders else None
            if order is None or pos >= len(order) or order[pos]:
                chosen.append(tok)
        result = Provisional(_result(self.sql, chosen))
        self._memo = (key, result)
        return result


def _names_match(column: re.Pattern[str], sql: str) -> bool:
    for m in _NAME_WORD.finditer(sql):
        name = m.group()
        if name[0] == '"':
            name = name[1:-1].replace('""', '"')
        if column.search(name) is not None:
            return True
    return False


def _in_word(ch: str) -> bool:
    return ch.isalnum() or ch in ("_", "$")  # '' (the text's edge) is not


def _bare_insert(low: str) -> bool:
    """The lowered text may hold an INSERT that does not name its columns (or hides them from a regex)."""
    pos = low.find("insert")
    while pos >= 0:
        end = pos + 6
        if (not _in_word(low[pos - 1 : pos]) and not _in_word(low[end : end + 1])
                and _NAMED_COLUMNS.match(low, end) is None):
            return True
        pos = low.find("insert", end)
    return False


def _unmappable(sql: str, toks: list[tuple[int, int, int]]) -> bool:
    """Every value goes: SQL-level EXECUTE arguments, a row-valued SET (a, b) = …"""
    words = [(sql[s:e].lower() if k == IDENT else "", k, s) for k, s, e in toks]
    if words and words[0][0] == "execute":
        return True
    for i, (word, _kind, _start) in enumerate(words):
        if word == "set" and i + 1 < len(words) and words[i + 1][1] == PUNCT and sql[words[i + 1][2]] == "(":
            return True
    return False


def _fold(name: str) -> str:
    """A (maybe qualified) name as written → the key INSERT targets are looked up by."""
    return ".".join(sqltext.ident_name(name, k, s, e) for k, s, e in sqltext.tokens(name) if k in (IDENT, QIDENT))


def _field_names(body: bytes) -> list[str]:
    """RowDescription → field names, as far as the body goes (the decoder may keep a prefix only)."""
    names: list[str] = []
    try:
        count = _i16(body, 0)[0]
    except struct.error:
        return names
    pos = 2
    for _ in range(count):
        end = body.find(0, pos)
        if end < 0 or end + 19 > len(body):  # name NUL, then table oid, attnum, type, size, typmod, format
            break
        names.append(body[pos:end].decode("utf-8", "replace"))
        pos = end + 19
    return names


def _hide_all(sql: str, toks: list[tuple[int, int, int]]) -> tuple[str, Hidden]:
    return _apply(sql, [(s, e) for k, s, e in toks if k in (STRING, NUMBER)]), ALL_PARAMS


def _result(sql: str, hidden: list[tuple[int, int, int]]) -> tuple[str, Hidden]:
    """The text with these value tokens masked, and the parameters among them."""
    spans = []
    params: set[int] = set()
    for kind, start, end in sorted(hidden, key=_start):
        if kind == PARAM:
            digits = sql[start + 1 : end]
            if digits.isdigit():
                params.add(int(digits) - 1)
        else:
            spans.append((start, end))
    return _apply(sql, spans), (frozenset(params) if params else None)


def _start(tok: tuple[int, int, int]) -> int:
    return tok[1]


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
