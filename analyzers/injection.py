"""SQL injection found in the structure of a statement, not in its raw text.

A statement is read as PostgreSQL reads it (`sqllex`), so a quote inside a correctly escaped literal is
part of that literal and never a finding. Two kinds of evidence:

**Structural signatures** hold for any statement, learnt or not, and never sleep (an attack sent while an
application is still being learnt is caught by them):
- `sqli_tautology`: a constant predicate, a comparison of two constants (`1=1`, `2>1`, `'a'='a'`,
  `9913=9464`, `NOT 1=2`, `OR TRUE`, `OR x=x`) anywhere: WHERE, ON, HAVING, CASE, ORDER BY;
- `sqli_subquery`: a subquery inside a CAST (`CAST((… (SELECT …)…) AS NUMERIC)`, `(SELECT version())::int`)
  or in ORDER BY: error-based extraction;
- `sqli_union`: a UNION arm of constants (`UNION ALL SELECT NULL,NULL,…`), one reading the catalogs, or one
  after an ORDER BY of the same query;
- `sqli_time` (pg_sleep*), `sqli_heavy` (generate_series in a predicate's subquery), `sqli_file`
  (pg_read_file, pg_read_binary_file, pg_ls_dir, pg_stat_file, lo_import, lo_export), `sqli_network`
  (dblink*), `sqli_obfuscation` (a chain of CHR() concatenations);
- `sqli_comment`: a -- or /* comment after which the statement ends, following a literal or a predicate
  (`'admin'--`, `ORDER BY 1-- x`, `admin'/*`), or an empty /**/ used in place of a space;
- `sqli_probe`: an unterminated quote or unbalanced parentheses (the server rejects it: a syntax probe);
- `sqli_stacked`: a second statement after a literal in the same text.
Correctly written SQL that does these things on purpose is rare: `WHERE 1=1 AND …` from a query builder
is one, and is reported.

**Learnt shapes**, per application. A shape (the statement's tokens, literals standing for `?`) counts as
learnt once it has been seen `learn_seen` times, from `learn_sessions` different sessions, and no finding
ever fired on it. Then:
- `sqli_shape`: a statement that is a learnt shape with one literal (or the identifier after ORDER BY)
  replaced by structure, or cut short by a comment, is an injection with high confidence. The finding
  names the offset and the fragment that sits where the learnt shape had its literal, and the shape.
  The fragment has to hold structure an input value cannot: an OR, a comparison of constants, a
  comment, a ';', a parenthesis it closes, a function call, a subquery, a UNION, ORDER/GROUP BY, LIMIT,
  a cast, two values or names side by side (a quote closed early), a literal where the shape sorts by
  a column, a lone name where the shape has a value (`id = id`). An extra `AND col = ?` from a query
  builder does not count;
- `sqli_catalog`: a read of pg_catalog, information_schema, pg_shadow, pg_authid, pg_user, version(),
  current_user … by an application that has learnt shapes and none of them reads them.
Learning is kept by each worker in memory: after a restart an application is learnt again, while the
signatures keep watching.

Cost: a text is tokenised once. Texts without comments, quoted identifiers, `$`, backslashes or `''`
tokenise the same as any other text of their fingerprint, so their analysis is kept per fingerprint;
other texts are kept by their exact text (a prepared statement's text repeats). Only a text that fires,
or a shape an application has not learnt, is looked at again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .sqllex import COMMENT, IDENT, NUM, OP, OPEN, PARAM, PUNCT, STR, WORD, Token, tokenize

_CACHE = 20000  # analyses kept per cache before it starts again
_APPS = 1000  # applications whose shapes are learnt
_PENDING = 20000  # shapes in learning per application

_BEFORE = frozenset({"where", "and", "or", "not", "on", "having", "when", "then", "else", "by", "select", "(", ",",
                     "return"})
_AFTER = frozenset({"and", "or", ")", "then", "else", "end", ";", "order", "group", "limit", "offset", "union",
                    "except", "intersect", ",", "", "when", "having", "is"})
_COMPARE = frozenset({"=", "<>", "!=", "<", ">", "<=", ">=", "like", "ilike"})
_ARITH = frozenset({"+", "-", "*", "/", "%", "||"})
_CONSTANT_WORDS = frozenset({"true", "false", "null"})
_TIME = frozenset({"pg_sleep", "pg_sleep_for", "pg_sleep_until"})
_FILE = frozenset({"pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file", "lo_import", "lo_export",
                   "pg_file_write"})
_CATALOG_TABLES = frozenset({"pg_shadow", "pg_authid", "pg_user", "pg_roles", "pg_tables", "pg_database",
                             "pg_namespace", "pg_class", "pg_attribute", "pg_proc", "pg_stat_activity",
                             "pg_settings", "pg_user_mappings", "pg_group", "pg_auth_members", "pg_type",
                             "pg_catalog", "information_schema", "current_user", "session_user"})
_CATALOG_CALLS = frozenset({"version", "current_database", "current_schema", "inet_server_addr",
                            "inet_server_port", "current_setting", "pg_backend_pid"})
_PREDICATE = frozenset({"where", "and", "or", "by", "limit", "offset", "having", "on", "set", "when", "then"})
_TELL_WORDS = frozenset({"or", "union", "select", "order", "group", "limit", "offset", "having", "into", "case",
                         "exec", "execute", "copy"})
_FOLLOW_VALUE = frozenset({"and", "or", "not", "is", "isnull", "notnull", "in", "like", "ilike", "similar", "between",
                           "escape", "collate", "as", "asc", "desc", "nulls", "from", "then", "else", "end", "when",
                           "at", "limit", "offset", "order", "group", "having", "union", "except", "intersect",
                           "returning", "for", "fetch", "where", "on", "using", "join", "window"})
_KEYWORDS = _FOLLOW_VALUE | frozenset({
    "by", "distinct", "all", "any", "some", "exists", "null", "true", "false", "default", "case", "cast", "interval",
    "date", "time", "timestamp", "with", "without", "zone", "first", "last", "values", "set", "into", "array",
    "row", "filter", "over", "partition", "rows", "range", "within", "lateral", "select", "current_date",
    "current_time", "current_timestamp", "localtime", "localtimestamp", "only", "unknown"})


def _operand(x: str) -> bool:
    """Whether a skeleton token is a value or a name (two in a row is no SQL)."""
    return x == "?" or x[0] == '"' or (x.isidentifier() and x not in _KEYWORDS)


_NOT_CALLS = frozenset({"and", "or", "not", "in", "any", "all", "some", "exists", "values", "where", "on", "when",
                        "then", "else", "between", "like", "ilike", "is", "as"})
_ORDER_END = frozenset({"limit", "offset", "fetch", "for", "union", "except", "intersect", ";"})
_TAGGED_COMMENT = re.compile(r"/\*\s*[\w.\-]+\s*(?:=\s*'|:)")  # sqlcommenter, marginalia


@dataclass(slots=True, frozen=True)
class Hit:
    """One piece of evidence: the rule, where it starts in the statement, the fragment, what it is."""

    rule: str
    offset: int
    fragment: str
    what: str
    shape: str = ""  # the learnt shape it broke (its fingerprint), for sqli_shape


@dataclass(slots=True)
class Analysis:
    """What a text's tokens say, whatever application sent it."""

    source: str  # the text analysed (offsets are into it)
    hits: list[Hit]
    catalog: int  # offset of a catalog read, or -1
    trailing_comment: bool
    _tokens: list[Token] | None = None

    def tokens(self) -> list[Token]:
        if self._tokens is None:
            self._tokens = tokenize(self.source)
        return self._tokens


def _sig(tokens: list[Token]) -> list[Token]:
    """The tokens that are SQL: comments (an unterminated one too) left out."""
    return [t for t in tokens if t.kind is not COMMENT and not (t.kind is OPEN and t.text.startswith("/*"))]


def _low(tok: Token) -> str:
    return tok.text.lower() if tok.kind is WORD or tok.kind is OP else tok.text


def _fragment(sql: str, start: int, end: int) -> str:
    text = " ".join(sql[start:end].split())
    return text if len(text) <= 160 else text[:157] + "…"


def analyse(sql: str) -> Analysis:
    """The structural signatures of one text (see the module's docstring)."""
    tokens = tokenize(sql)
    sig = _sig(tokens)
    low = [_low(t) for t in sig]
    hits: list[Hit] = []
    depth = [0] * len(sig)
    d = 0
    unbalanced = -1
    for i, t in enumerate(sig):
        if t.text == "(" and t.kind is PUNCT:
            d += 1
        elif t.text == ")" and t.kind is PUNCT:
            d -= 1
            if d < 0 and unbalanced < 0:
                unbalanced = i
        depth[i] = d
    _constants(sql, sig, low, hits)
    _functions(sql, sig, low, depth, hits)
    _subqueries(sql, sig, low, depth, hits)
    _unions(sql, sig, low, depth, hits)
    trailing = _comments(sql, tokens, sig, low, hits)
    if tokens and tokens[-1].kind is OPEN and not tokens[-1].text.startswith("/*"):
        t = tokens[-1]
        hits.append(Hit("sqli_probe", t.start, _fragment(sql, t.start, t.end), "an unterminated quote"))
    elif unbalanced >= 0 or d > 0:
        t = sig[unbalanced] if unbalanced >= 0 else sig[-1]
        hits.append(Hit("sqli_probe", t.start, _fragment(sql, max(0, t.start - 40), t.end + 40),
                        "unbalanced parentheses"))
    for i, t in enumerate(sig):
        if t.text == ";" and i + 1 < len(sig) and any(s.kind is STR or s.kind is NUM for s in sig[:i]):
            nxt = sig[i + 1]
            hits.append(Hit("sqli_stacked", nxt.start, _fragment(sql, nxt.start, len(sql)),
                            "a second statement after a literal"))
            break
    catalog = -1
    for i, t in enumerate(sig):
        name = low[i]
        if t.kind is WORD and (name in _CATALOG_TABLES or (name in _CATALOG_CALLS and i + 1 < len(sig)
                                                           and sig[i + 1].text == "(")):
            catalog = t.start
            break
    return Analysis(sql, hits, catalog, trailing, tokens)


def _constant_left(sig: list[Token], low: list[str], i: int) -> int:
    """Start of the constant expression ending at sig[i], or -1 (it must end there and hold a literal)."""
    depth = 0
    literal = False
    j = i
    while j >= 0:
        t = sig[j]
        x = low[j]
        if t.kind is STR or t.kind is NUM or (t.kind is WORD and x in _CONSTANT_WORDS):
            literal = True
        elif t.kind is PUNCT and x == ")":
            depth += 1
        elif t.kind is PUNCT and x == "(":
            if depth == 0:
                break
            depth -= 1
        elif t.kind is OP and x in _ARITH:
            pass
        elif t.kind is WORD and j > 0 and low[j - 1] == "::":
            j -= 2
            continue
        else:
            break
        j -= 1
    if depth or not literal or j == i:
        return -1
    start = j + 1
    while low[start] in _ARITH and start < i:  # a leading operator belongs to what came before
        start += 1
    before = low[start - 1] if start > 0 else ""
    return start if before in _BEFORE or before == "" else -1


def _constant_right(sig: list[Token], low: list[str], i: int) -> int:
    """End (exclusive) of the constant expression starting at sig[i], or -1."""
    depth = 0
    literal = False
    j = i
    n = len(sig)
    while j < n:
        t = sig[j]
        x = low[j]
        if t.kind is STR or t.kind is NUM or (t.kind is WORD and x in _CONSTANT_WORDS):
            literal = True
        elif t.kind is PUNCT and x == "(":
            depth += 1
        elif t.kind is PUNCT and x == ")":
            if depth == 0:
                break
            depth -= 1
        elif t.kind is OP and x in _ARITH:
            pass
        elif t.kind is PUNCT and x == "::" and j + 1 < n and sig[j + 1].kind is WORD:
            j += 2
            continue
        else:
            break
        j += 1
    if depth or not literal or j == i:
        return -1
    after = low[j] if j < n else ""
    return j if after in _AFTER else -1


def _constants(sql: str, sig: list[Token], low: list[str], hits: list[Hit]) -> None:
    n = len(sig)
    for i in range(1, n - 1):
        x = low[i]
        if x in _COMPARE and (sig[i].kind is OP or sig[i].kind is WORD):
            if sig[i - 1].kind is WORD and sig[i + 1].kind is WORD and low[i - 1] == low[i + 1] \
                    and low[i - 1] not in _CONSTANT_WORDS and i >= 2 and low[i - 2] in ("or", "and", "where") \
                    and (i + 2 >= n or low[i + 2] in _AFTER):
                start, end = sig[i - 1].start, sig[i + 1].end
                hits.append(Hit("sqli_tautology", start, _fragment(sql, start, end),
                                "a column compared with itself"))
                return
            left = _constant_left(sig, low, i - 1)
            if left < 0:
                continue
            right = _constant_right(sig, low, i + 1)
            if right < 0:
                continue
            if left > 0 and low[left - 1] in ("or", "and", "not"):  # the connector reads with it: OR 1=1
                left -= 1
            start, end = sig[left].start, sig[right - 1].end
            hits.append(Hit("sqli_tautology", start, _fragment(sql, start, end), "a comparison of two constants"))
            return
        if x in ("or", "and") and sig[i].kind is WORD and not (x == "and" and _in_between(low, i)):
            j = i + 1
            while j < n and low[j] == "not":
                j += 1
            if j < n:
                end = _constant_right(sig, low, j)
                if end > 0 and (end >= n or low[end] not in _COMPARE):
                    start = sig[i].start
                    hits.append(Hit("sqli_tautology", start, _fragment(sql, start, sig[end - 1].end),
                                    f"{x.upper()} with a constant"))
                    return


def _in_between(low: list[str], i: int) -> bool:
    """Whether the AND at low[i] is the one of `x BETWEEN a AND b`."""
    for k in range(i - 1, -1, -1):
        if low[k] == "between":
            return True
        if low[k] in ("and", "or", "where", "on", "having", "when", "(", "not"):
            return False
    return False


def _call(sig: list[Token], i: int) -> bool:
    return sig[i].kind is WORD and i + 1 < len(sig) and sig[i + 1].text == "("


def _functions(sql: str, sig: list[Token], low: list[str], depth: list[int], hits: list[Hit]) -> None:
    chr_calls = 0
    chr_start = -1
    for i, t in enumerate(sig):
        if not _call(sig, i):
            continue
        name = low[i]
        if name in _TIME:
            hits.append(Hit("sqli_time", t.start, _fragment(sql, t.start, t.end + 20), f"{name}(): a time probe"))
        elif name in _FILE:
            hits.append(Hit("sqli_file", t.start, _fragment(sql, t.start, t.end + 40),
                            f"{name}(): server file access"))
        elif name.startswith("dblink"):
            hits.append(Hit("sqli_network", t.start, _fragment(sql, t.start, t.end + 40),
                            f"{name}(): a connection out of the server"))
        elif name == "generate_series" and depth[i] > 0 and any(low[k] in ("where", "and", "or", "having", "on")
                                                                  and depth[k] < depth[i] for k in range(i)):
            hits.append(Hit("sqli_heavy", t.start, _fragment(sql, t.start, t.end + 30),
                            "generate_series() in a predicate: a heavy query"))
        elif name == "chr":
            chr_calls += 1
            if chr_start < 0:
                chr_start = t.start
    if chr_calls >= 3 and low.count("||") >= 2:
        hits.append(Hit("sqli_obfuscation", chr_start, _fragment(sql, chr_start, chr_start + 80),
                        f"{chr_calls} CHR() calls concatenated"))


def _closing(sig: list[Token], i: int) -> int:
    """Index of the ')' closing the '(' at sig[i] (len(sig) when it never closes)."""
    depth = 0
    for j in range(i, len(sig)):
        if sig[j].kind is PUNCT:
            if sig[j].text == "(":
                depth += 1
            elif sig[j].text == ")":
                depth -= 1
                if depth == 0:
                    return j
    return len(sig)


def _subqueries(sql: str, sig: list[Token], low: list[str], depth: list[int], hits: list[Hit]) -> None:
    n = len(sig)
    for i in range(n):
        x = low[i]
        if x == "cast" and _call(sig, i):
            end = _closing(sig, i + 1)
            if "select" in low[i + 2:end]:
                start = sig[i].start
                hits.append(Hit("sqli_subquery", start, _fragment(sql, start, sig[min(end, n - 1)].end),
                                "a subquery inside a CAST: error-based extraction"))
                return
        elif x == "(" and i + 1 < n and low[i + 1] == "select":
            end = _closing(sig, i)
            if end + 1 < n and low[end + 1] == "::":
                start = sig[i].start
                hits.append(Hit("sqli_subquery", start, _fragment(sql, start, sig[min(end + 2, n - 1)].end),
                                "a subquery cast to another type: error-based extraction"))
                return
        elif x == "order" and i + 1 < n and low[i + 1] == "by":
            d = depth[i]
            j = i + 2
            while j < n and depth[j] >= d and not (depth[j] == d and low[j] in _ORDER_END):
                if low[j] == "select" or (low[j] == "case" and depth[j] >= d):
                    start = sig[i].start
                    hits.append(Hit("sqli_subquery", start, _fragment(sql, start, start + 120),
                                    "a subquery or CASE in ORDER BY"))
                    return
                j += 1


def _unions(sql: str, sig: list[Token], low: list[str], depth: list[int], hits: list[Hit]) -> None:
    n = len(sig)
    for i in range(n):
        if low[i] != "union":
            continue
        j = i + 1
        if j < n and low[j] in ("all", "distinct"):
            j += 1
        while j < n and low[j] == "(":
            j += 1
        if j >= n or low[j] != "select":
            continue
        d = depth[i]
        end = j + 1
        while end < n and depth[end] >= d and not (depth[end] == d and low[end] in ("union", ";")):
            end += 1
        arm = low[j + 1:end]
        select_list = arm[:arm.index("from")] if "from" in arm else arm
        words = [w for k, w in enumerate(select_list) if sig[j + 1 + k].kind in (WORD, IDENT)]
        constant = all(w in _CONSTANT_WORDS or w in ("chr", "cast", "as", "text", "numeric", "int", "integer",
                                                     "varchar", "character") for w in words)
        ordered = any(low[k] == "order" and depth[k] == d for k in range(i - 1, -1, -1)
                      if depth[k] == d and low[k] != "union")
        catalog = any(w in _CATALOG_TABLES or w in _CATALOG_CALLS for w in arm)
        why = ("an arm of constants" if constant else "an arm reading the catalogs" if catalog
               else "after the ORDER BY of the query" if ordered else "")
        if why:
            start = sig[i].start
            hits.append(Hit("sqli_union", start, _fragment(sql, start, sig[end - 1].end), f"a UNION, {why}"))
            return


def _comments(sql: str, tokens: list[Token], sig: list[Token], low: list[str], hits: list[Hit]) -> bool:
    """Comment truncation and comments in place of spaces; returns whether a comment ends the text."""
    for k, t in enumerate(tokens):
        if t.kind is COMMENT and t.text == "/**/" and 0 < k < len(tokens) - 1 \
                and tokens[k - 1].end == t.start and tokens[k + 1].start == t.end:
            hits.append(Hit("sqli_comment", t.start, _fragment(sql, tokens[k - 1].start, tokens[k + 1].end),
                            "an empty comment in place of a space"))
            break
    if not tokens or not sig:
        return False
    last = tokens[-1]
    if not (last.kind is COMMENT or (last.kind is OPEN and last.text.startswith("/*"))):
        return False
    if last.text.startswith("/*") and _TAGGED_COMMENT.match(last.text):
        return False
    prev = sig[-1]
    if prev.start > last.start:
        return False
    after_value = prev.kind in (STR, NUM, PARAM) or (prev.kind is PUNCT and prev.text == ")") \
        or prev.kind is WORD or prev.kind is IDENT
    if after_value and any(x in _PREDICATE for x in low):
        hits.append(Hit("sqli_comment", last.start, _fragment(sql, max(0, prev.start - 30), last.end),
                        "a comment that cuts the statement short"))
    return True


# ── learnt shapes ────────────────────────────────────────────────────────────────────────────────────

def skeleton(tokens: list[Token]) -> tuple[list[str], list[Token]]:
    """A statement's significant tokens as a shape: literals and parameters stand for '?', words are
    lower-cased; and the tokens themselves, for offsets."""
    sig = _sig(tokens)
    out = []
    for t in sig:
        k = t.kind
        out.append("?" if k is STR or k is NUM or k is PARAM else t.text.lower() if k is WORD else t.text)
    return out, sig


def _tells(frag: list[str], sort_column: bool = False) -> str:
    """What in a fragment an input value cannot be, or '' (sort_column: it stands where the learnt shape
    sorts by a column)."""
    if sort_column and "?" in frag:
        return "a literal where the shape sorts by a column"
    if len(frag) == 1:
        return "" if sort_column or not _operand(frag[0]) or frag[0] == "?" else "a name where the shape has a value"
    depth = 0
    for k, x in enumerate(frag):
        if k + 1 < len(frag) and _operand(x) and _operand(frag[k + 1]):
            return "two values or names side by side (a quote closed early)"
        if x in _TELL_WORDS:
            return f"the keyword {x.upper()}"
        if x == ";":
            return "a ';'"
        if x == "::":
            return "a cast"
        if x == "(":
            if k > 0 and frag[k - 1] not in _NOT_CALLS and frag[k - 1].isidentifier():
                return f"a call of {frag[k - 1]}()"
            depth += 1
        elif x == ")":
            depth -= 1
            if depth < 0:
                return "a parenthesis it closes"
        elif x in _COMPARE and k > 0 and frag[k - 1] == "?" and k + 1 < len(frag) and frag[k + 1] == "?":
            return "a comparison of constants"
    return ""


@dataclass(slots=True)
class _Pending:
    seen: int = 0
    sessions: set[str] = field(default_factory=set)
    tainted: bool = False


@dataclass(slots=True)
class AppShapes:
    """One application's learnt shapes, and the ones being learnt."""

    learnt: dict[str, list[str]] = field(default_factory=dict)  # fp → skeleton
    by_head: dict[tuple[str, ...], list[tuple[str, list[str]]]] = field(default_factory=dict)
    pending: dict[str, _Pending] = field(default_factory=dict)
    reads_catalog: bool = False
    unbroken: dict[str, int] = field(default_factory=dict)  # fp → learnt shapes it was compared with, no match


_HEAD = 3  # shapes are compared with the learnt ones that start with the same tokens


def match(shape: list[str], learnt: list[str], truncated: bool) -> tuple[int, int] | None:
    """Where `shape` is `learnt` with one literal (or the identifier after ORDER BY) replaced by a
    fragment, or cut short after it by a comment: the fragment's first and last+1 token indices."""
    n, m = len(shape), len(learnt)
    p = 0
    limit = min(n, m)
    while p < limit and shape[p] == learnt[p]:
        p += 1
    if p == n == m:
        return None
    if p < m and _replaceable(learnt, p):
        j = p
    elif p > 0 and _replaceable(learnt, p - 1):
        j = p - 1
    else:
        return None
    rest = m - j - 1
    size = n - rest - j
    if n - j > rest and shape[n - rest:] == learnt[j + 1:] and (size >= 2 or (size == 1 and learnt[j] == "?")):
        return j, n - rest
    if truncated and n > j:
        return j, n
    return None


def _replaceable(learnt: list[str], j: int) -> bool:
    x = learnt[j]
    if x == "?":
        return True
    return x.isidentifier() and j >= 2 and learnt[j - 1] == "by" and learnt[j - 2] == "order"


class Injection:
    """Injection findings per statement; keeps the analyses and each application's learnt shapes."""

    def __init__(self, learn_seen: int = 5, learn_sessions: int = 2) -> None:
        self.learn_seen = learn_seen
        self.learn_sessions = learn_sessions
        self.by_text: dict[str, Analysis] = {}
        self.by_fp: dict[str, Analysis] = {}
        self.apps: dict[str, AppShapes] = {}
        self.analysed = 0  # texts tokenised (for tests and benches)

    def analysis(self, sql: str, fp: str) -> Analysis:
        """The text's analysis, from a cache when a text of the same tokens was analysed before."""
        a = self.by_text.get(sql)
        if a is not None:
            return a
        # a text with none of these tokenises like every other text of its fingerprint (str `in`: C speed)
        plain = not ("''" in sql or "--" in sql or "/*" in sql or '"' in sql or "$" in sql
                     or "\\" in sql or ";" in sql)
        if plain:
            a = self.by_fp.get(fp)
            if a is not None:
                return a
        a = analyse(sql)
        self.analysed += 1
        cache = self.by_fp if plain else self.by_text
        if len(cache) >= _CACHE:
            cache.clear()
        cache[fp if plain else sql] = a
        return a

    def inspect(self, sql: str, fp: str, app: str, sid: str, tainted: bool = False) -> list[Hit]:
        """The statement's hits; learns its shape for `app` when nothing fired (tainted: something the caller
        found, a stacked statement, fired)."""
        a = self.analysis(sql, fp)
        state = self.apps.get(app)
        if state is None:
            if len(self.apps) >= _APPS:
                self.apps.clear()
            state = self.apps[app] = AppShapes()
        hits: list[Hit] = []
        if a.hits:
            hits = a.hits if a.source == sql else self._exact(sql).hits
        if fp in state.learnt:  # stays learnt: an attacker replaying a shape must not erase it
            return hits
        exact: Analysis | None = None
        if state.by_head and (a.trailing_comment or state.unbroken.get(fp) != len(state.learnt)):
            # a text of the same tokens decides whether a learnt shape is broken; offsets come from this one
            broke = self._broken_shape(a, state)
            if broke is not None and a.source != sql:
                exact = self._exact(sql)
                broke = self._broken_shape(exact, state)
            if broke is not None:
                hits = [*hits, broke]
            elif not a.trailing_comment:  # the same tokens give the same answer (a comment may cut short)
                if len(state.unbroken) >= _PENDING:
                    state.unbroken.clear()
                state.unbroken[fp] = len(state.learnt)
        if a.catalog >= 0 and state.learnt and not state.reads_catalog:
            exact = exact or (a if a.source == sql else self._exact(sql))
            off = exact.catalog
            hits = [*hits, Hit("sqli_catalog", off, _fragment(sql, off, off + 60),
                               "a catalog read by an application that never reads the catalogs")]
        self._learn(state, fp, sid, a, tainted or bool(hits))
        return hits

    def _exact(self, sql: str) -> Analysis:
        self.analysed += 1
        return analyse(sql)

    def _broken_shape(self, a: Analysis, state: AppShapes) -> Hit | None:
        shape, sig = skeleton(a.tokens())
        candidates = state.by_head.get(tuple(shape[:_HEAD]))
        if not candidates:
            return None
        for fp, learnt in candidates:
            where = match(shape, learnt, a.trailing_comment)
            if where is None:
                continue
            i, j = where
            frag = shape[i:j]
            tell = _tells(frag, learnt[i] != "?")
            if not tell and j == len(shape) and a.trailing_comment:
                tell = "a comment that cuts the rest of the shape off"
            if not tell:
                continue
            start = sig[i].start
            end = sig[j - 1].end if j > i else start
            if j == len(shape) and a.trailing_comment:
                end = len(a.source)
            return Hit("sqli_shape", start, _fragment(a.source, start, end),
                       f"a learnt shape with its literal replaced by structure ({tell})", fp)
        return None

    def _learn(self, state: AppShapes, fp: str, sid: str, a: Analysis, fired: bool) -> None:
        p = state.pending.get(fp)
        if p is None:
            if len(state.pending) >= _PENDING:
                state.pending.clear()
            p = state.pending[fp] = _Pending()
        if fired:
            p.tainted = True
        if p.tainted:
            return
        p.seen += 1
        if len(p.sessions) < self.learn_sessions:
            p.sessions.add(sid)
        if p.seen >= self.learn_seen and len(p.sessions) >= self.learn_sessions:
            del state.pending[fp]
            shape, _ = skeleton(a.tokens())
            state.learnt[fp] = shape
            state.by_head.setdefault(tuple(shape[:_HEAD]), []).append((fp, shape))
            if a.catalog >= 0:
                state.reads_catalog = True

    def forget(self, app: str) -> None:
        self.apps.pop(app, None)


def describe(hit: Hit, app: str, sid: str, client: str, shape_text: str = "") -> str:
    """The finding as a note: what, where in the statement, who, and the shape it broke."""
    note = f"{hit.what} at offset {hit.offset}: {hit.fragment!r}; application {app!r}, session {sid or '?'}, " \
           f"client {client or '?'}"
    if hit.shape:
        note += f"; breaks learnt shape {hit.shape}" + (f" ({shape_text[:120]})" if shape_text else "")
    return note


