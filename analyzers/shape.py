"""What a statement shape does, from sqlglot (postgres dialect), computed once per fingerprint.

The normalised text has numbered placeholders ($1…$n); here we learn the operation, the tables
and columns it touches, and where each placeholder lands: which INSERT column, which SET column
(or `col = col ± $k` delta), which WHERE equality. Business rules then read values per event from
the slot table without parsing again.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

import sqlglot
from sqlglot import exp

logging.getLogger("sqlglot").setLevel(logging.ERROR)

# A value reference: ("slot", k) — the k-th placeholder (0-based); ("neg", k) — its negation;
# ("const", v) — a constant left in the text (e.g. NULL after IS); None — an expression we do not evaluate.
Ref = tuple[str, Any] | None

_DDL = frozenset({"create", "alter", "drop", "truncate", "comment", "reindex", "cluster", "security"})
_ROLE_OBJECTS = frozenset({"role", "user", "group"})
_TXN = frozenset({"begin", "start", "commit", "end", "rollback", "abort", "savepoint", "release", "prepare"})
_UTILITY = frozenset({
    "show", "set", "reset", "vacuum", "analyze", "explain", "listen", "notify", "unlisten", "discard", "deallocate",
    "execute", "fetch", "move", "close", "declare", "lock", "checkpoint", "load", "do", "call", "refresh", "import",
})
_PLACEHOLDER = re.compile(r"\$(\d+)")
_PARSED_OPS = frozenset({"select", "insert", "update", "delete", "merge", "with", "copy", "values", "table"})


@dataclass(slots=True)
class Shape:
    """Facts about one fingerprint's statement text."""

    op: str  # select insert update delete merge copy ddl role txn utility other
    parsed: bool = True  # False: sqlglot could not parse it (counted, and rules skip it)
    error: str = ""
    table: str = ""  # the target of INSERT/UPDATE/DELETE/COPY/MERGE; the first table of a SELECT
    tables: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    functions: frozenset[str] = frozenset()
    insert_cols: tuple[str, ...] | None = None  # INSERT's column list (None: not given)
    row: tuple[Ref, ...] = ()  # the VALUES row, one ref per column
    insert_select: bool = False  # INSERT … SELECT: values unknown, only the row count
    returning: bool = False
    sets: dict[str, Ref] = field(default_factory=dict)  # UPDATE SET col = ref
    deltas: dict[str, tuple[int, Ref]] = field(default_factory=dict)  # SET col = col ± ref
    where_eq: dict[str, Ref] = field(default_factory=dict)  # top-level AND of col = ref
    has_where: bool = False
    copy_from: bool = False  # COPY … FROM (a write)
    prepared: bool = False  # PREPARE name AS …: the facts of the statement it prepares, which it does not run


def _name(node: exp.Expression | None) -> str:
    if node is None:
        return ""
    ident = node.this if isinstance(node, exp.Table) else node
    if isinstance(ident, exp.Identifier):
        return ident.this if ident.quoted else ident.this.lower()
    return str(getattr(ident, "name", "") or "").lower()


def _ref(node: exp.Expression | None) -> Ref:
    while isinstance(node, exp.Cast | exp.Paren):
        node = node.this
    if isinstance(node, exp.Parameter):
        try:
            return ("slot", int(node.this.this) - 1)
        except (AttributeError, ValueError):
            return None
    if isinstance(node, exp.Neg):
        inner = _ref(node.this)
        if inner and inner[0] == "slot":
            return ("neg", inner[1])
        return None
    if isinstance(node, exp.Null):
        return ("const", None)
    if isinstance(node, exp.Boolean):
        return ("const", node.this)
    if isinstance(node, exp.Literal):
        return ("const", node.this)
    return None


def _where_eq(where: exp.Expression | None) -> dict[str, Ref]:
    out: dict[str, Ref] = {}
    if where is None:
        return out
    stack = [where.this if isinstance(where, exp.Where) else where]
    while stack:
        node = stack.pop()
        if isinstance(node, exp.And):
            stack.extend((node.this, node.expression))
        elif isinstance(node, exp.Paren):
            stack.append(node.this)
        elif isinstance(node, exp.EQ):
            left, right = node.this, node.expression
            if isinstance(right, exp.Column) and not isinstance(left, exp.Column):
                left, right = right, left
            if isinstance(left, exp.Column):
                ref = _ref(right)
                if ref is not None:
                    out[_name(left.this)] = ref
    return out


def _cte_names(tree: exp.Expression) -> set[str]:
    return {_name(cte.args.get("alias").this) for cte in tree.find_all(exp.CTE) if cte.args.get("alias")}


def leading_keyword(text: str) -> str:
    """The statement's first word, lower-case ('(' stripped), without parsing."""
    head = text.lstrip("( \t\n").split(None, 2)
    return head[0].lower().rstrip(";(") if head else ""


def classify(text: str) -> str | None:
    """The op of statements we never hand to sqlglot; None when the text needs parsing."""
    words = text.lstrip("( \t\n").split(None, 3)
    first = words[0].lower().rstrip(";") if words else ""
    if first in _PARSED_OPS:
        return None
    if first in _TXN:
        return "txn"
    second = words[1].lower() if len(words) > 1 else ""
    if first in ("grant", "revoke") or (first in ("create", "alter", "drop") and second in _ROLE_OBJECTS):
        return "role"
    if first == "set" and second == "role":
        return "role"
    if first in _DDL:
        return "ddl"
    if first in _UTILITY:
        return "utility"
    return "unknown"


# PREPARE name [ ( type, … ) ] AS statement; a type may carry its own parentheses (numeric(10, 2)).
_PREPARE = re.compile(r'(?is)\s*prepare\s+(?:"(?:[^"]|"")*"|[\w$]+)\s*(?:\((?:[^()]|\([^()]*\))*\))?\s*as\s+(.+)')
_IDENT = r'(?:"(?:[^"]|"")*"|[^\W\d][\w$]*)'
# COPY [ONLY] [schema.]table [ ( column, … ) ] FROM|TO …
_COPY_TABLE = re.compile(
    rf"(?is)\s*copy\s+(?:only\s+)?((?:{_IDENT}\s*\.\s*)*{_IDENT})\s*(\((?:[^()\"]|{_IDENT})*\))?\s*(from|to)\b")
_COPY_QUERY = re.compile(r"(?is)\s*copy\s*\(")
_IDENT_RE = re.compile(_IDENT)


def analyze(text: str) -> Shape:
    """Parse a normalised text (placeholders $1…$n) into a Shape; never raises."""
    head = leading_keyword(text)
    if head == "prepare":
        m = _PREPARE.match(text)
        if m is not None:
            inner = analyze(m.group(1))
            inner.prepared = True
            return inner
    elif head == "copy":
        shape = _copy(text)
        if shape is not None:
            return shape
    op = classify(text)
    if op == "unknown":
        return Shape(op="other", parsed=False, error=f"unknown statement {leading_keyword(text)!r}")
    if op is not None:
        return Shape(op=op)
    try:
        # sqlglot's tokenizer reads "$1,$2" as the start of a $tag$ string: give placeholders room
        trees = sqlglot.parse(_PLACEHOLDER.sub(r"$\1 ", text), dialect="postgres")
    except Exception as exc:  # sqlglot raises several error types; any of them means "cannot parse"
        return Shape(op=leading_keyword(text) or "other", parsed=False, error=str(exc).split("\n")[0][:200])
    tree = next((t for t in trees if t is not None), None)
    if tree is None:
        return Shape(op="other", parsed=False, error="empty statement")
    return _describe(tree)


def _ident(raw: str) -> str:
    """A name as PostgreSQL folds it: "Quoted" as written, anything else in lower case."""
    if raw.startswith('"'):
        return raw[1:-1].replace('""', '"')
    return raw.lower()


def _copy(text: str) -> Shape | None:
    """COPY read without sqlglot, which rejects many of its option forms (asyncpg's FORMAT binary among
    them): the table and columns of `COPY t (…) FROM|TO …`, the query's facts for `COPY (query) TO …`."""
    m = _COPY_TABLE.match(text)
    if m is not None:
        table = _ident(_IDENT_RE.findall(m.group(1))[-1])
        cols = tuple(_ident(c) for c in _IDENT_RE.findall(m.group(2))) if m.group(2) else None
        return Shape(op="copy", table=table, tables=(table,), insert_cols=cols,
                     copy_from=m.group(3).lower() == "from")
    m = _COPY_QUERY.match(text)
    if m is None:
        return None
    end = _closing(text, m.end())
    if end < 0:
        return None
    inner = analyze(text[m.end():end])
    if not inner.parsed:
        return Shape(op="copy", parsed=False, error=inner.error)
    return Shape(op="copy", table=inner.tables[0] if inner.tables else "", tables=inner.tables,
                 columns=inner.columns, functions=inner.functions)


def _closing(text: str, pos: int) -> int:
    """Index of the ')' closing the '(' just before ``pos`` (quoted names skipped; literals are already
    placeholders in a normalised text), or -1."""
    depth = 1
    i = pos
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            close = text.find('"', i + 1)
            while close >= 0 and text.startswith('""', close):
                close = text.find('"', close + 2)
            if close < 0:
                return -1
            i = close
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _describe(tree: exp.Expression) -> Shape:
    ctes = _cte_names(tree)
    tables = []
    for t in tree.find_all(exp.Table):
        name = _name(t)
        if name and name not in ctes and name not in tables:
            tables.append(name)
    columns = sorted({_name(c.this) for c in tree.find_all(exp.Column) if _name(c.this)})
    functions = frozenset(
        (f.name if isinstance(f, exp.Anonymous) else f.sql_name()).lower()
        for f in tree.find_all(exp.Func)
        if not isinstance(f, exp.Binary | exp.Connector | exp.Cast | exp.Unary)
    )
    shape = Shape(op="other", tables=tuple(tables), columns=tuple(columns), functions=functions)
    if isinstance(tree, exp.Insert):
        shape.op = "insert"
        target = tree.this
        if isinstance(target, exp.Schema):
            shape.insert_cols = tuple(_name(i) for i in target.expressions)
            target = target.this
        shape.table = _name(target)
        source = tree.expression
        if isinstance(source, exp.Values) and source.expressions:
            first = source.expressions[0]
            items = first.expressions if isinstance(first, exp.Tuple) else [first]
            shape.row = tuple(_ref(v) for v in items)
        else:
            shape.insert_select = True
        shape.returning = tree.args.get("returning") is not None
    elif isinstance(tree, exp.Update):
        shape.op = "update"
        shape.table = _name(tree.this)
        for assign in tree.expressions:
            if not isinstance(assign, exp.EQ):
                continue
            col = _name(assign.this.this if isinstance(assign.this, exp.Column) else assign.this)
            value = assign.expression
            if isinstance(value, exp.Add | exp.Sub) and isinstance(value.this, exp.Column) \
                    and _name(value.this.this) == col:
                sign = 1 if isinstance(value, exp.Add) else -1
                shape.deltas[col] = (sign, _ref(value.expression))
            else:
                shape.sets[col] = _ref(value)
        where = tree.args.get("where")
        shape.has_where = where is not None
        shape.where_eq = _where_eq(where)
        shape.returning = tree.args.get("returning") is not None
    elif isinstance(tree, exp.Delete):
        shape.op = "delete"
        shape.table = _name(tree.this)
        where = tree.args.get("where")
        shape.has_where = where is not None
        shape.where_eq = _where_eq(where)
        shape.returning = tree.args.get("returning") is not None
    elif isinstance(tree, exp.Copy):
        shape.op = "copy"
        target = tree.this
        if isinstance(target, exp.Schema):
            shape.insert_cols = tuple(_name(i) for i in target.expressions)
            target = target.this
        shape.table = _name(target) if isinstance(target, exp.Table) else (tables[0] if tables else "")
        shape.copy_from = bool(tree.args.get("kind"))
    elif isinstance(tree, exp.Merge):
        shape.op = "merge"
        shape.table = _name(tree.this)
    elif isinstance(tree, exp.Query | exp.Values):
        shape.op = "select"
        shape.table = tables[0] if tables else ""
        where = tree.args.get("where")
        shape.has_where = where is not None
        shape.where_eq = _where_eq(where)
    elif isinstance(tree, exp.Create | exp.Drop | exp.Alter | exp.TruncateTable):
        shape.op = "ddl"
        shape.table = tables[0] if tables else ""
    elif isinstance(tree, exp.Grant):
        shape.op = "role"
    elif isinstance(tree, exp.Transaction | exp.Commit | exp.Rollback):
        shape.op = "txn"
    else:
        shape.op = "utility"
    return shape


class ShapeCache:
    """fingerprint → Shape; sqlglot runs once per distinct shape."""

    def __init__(self, size: int = 50000) -> None:
        self.size = size
        self.shapes: dict[str, Shape] = {}
        self.parsed = 0
        self.failed = 0

    def get(self, fp: str, text: str) -> Shape:
        shape = self.shapes.get(fp)
        if shape is None:
            shape = analyze(text)
            self.parsed += 1
            if not shape.parsed:
                self.failed += 1
            if len(self.shapes) >= self.size:
                self.shapes.clear()
            self.shapes[fp] = shape
        return shape
