"""What a statement event asks of the cached days: a plan, made from the event and the table alone.

Planning does no I/O and changes nothing: ``Planner.plan`` turns one statement event into actions, and
``OpenTransactions`` remembers what a still-open transaction planned until its end is seen. fresh.py carries
the plans out. Per statement on the ledger table (or one of its partitions):

- INSERT … VALUES with literals or bound parameters covering every column: the rows are built from the
  event (exact decimals, rounded as PostgreSQL rounds): ``rows``. Columns with defaults left out, casts with
  modifiers, functions, triggers on the table, ON CONFLICT: if the keys are known, those rows are re-read
  by key instead: ``reread``.
- An INSERT that leaves the key to its default (a sequence: the usual case, with or without RETURNING),
  INSERT … SELECT and COPY FROM, on a table with an integer unique key, no triggers and no ON CONFLICT:
  ``tail``, read the rows each day it can reach lacks (see tail.py) — the days its dates name, else every
  cached day.
- UPDATE … WHERE key = …/IN/ANY: the named rows are re-read by key: ``reread`` (a row that moved to
  another day leaves its old day). DELETE … WHERE key = …: ``delete``, the keys leave every cached day.
- Anything else (arbitrary WHERE, TRUNCATE, MERGE, ALTER, a CTE that writes, an INSERT the above does not
  cover): the days it can touch are invalidated — ``days`` pinned by ``date_column = '…'`` if there are
  any, else ``all``. ALTER and DROP also mean the table's columns must be read again.
"""

from __future__ import annotations

import datetime
import json
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
from sqlglot import exp

from .catalog import Column, TableInfo

_FLOAT_OIDS = {700, 701}
_WRITE_NODES = (exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.TruncateTable, exp.Copy, exp.Alter,
                exp.Drop)
_UNKNOWN = object()
_INTEGER_KEYS = ("int2", "int4", "int8")


@dataclass
class Action:
    """What one statement asks for: rows to upsert, keys to re-read or delete, days to read the new rows
    of (``tail``; no days: every cached day), days or all to invalidate."""

    kind: str  # none | rows | reread | delete | tail | days | all
    rows: pa.Table | None = None
    keys: list[Any] = field(default_factory=list)
    days: set[str] = field(default_factory=set)
    shape_changed: bool = False  # ALTER/DROP: the table's columns must be read again


NONE = Action("none")
ALL = Action("all")
TAIL_EVERY_DAY = Action("tail")


def tail_allowed(info: TableInfo) -> bool:
    """New rows can be told by their key: an integer unique key, and no trigger that may write elsewhere."""
    return (info.key_unique and not info.triggers
            and info.column(info.key_column).pg_type in _INTEGER_KEYS)


@lru_cache(maxsize=4096)
def _parse(text: str) -> tuple[exp.Expression, ...] | None:
    """sqlglot once per distinct statement text (prepared statements repeat theirs)."""
    try:
        return tuple(e for e in sqlglot.parse(text, read="postgres") if e is not None)
    except (sqlglot.errors.ParseError, sqlglot.errors.TokenError, ValueError):
        return None


def _rows_from_tag(event: dict[str, str]) -> int | None:
    raw = event.get("rows", "")
    if raw.strip().lstrip("-").isdigit():
        return int(raw)
    parts = event.get("tag", "").split()
    return int(parts[-1]) if parts and parts[-1].isdigit() else None


class Planner:
    """Statement events → actions on the cached days of one table (pure: no I/O, no state)."""

    def __init__(self, trust_values: bool = True):
        self.trust_values = trust_values  # patch_mode 'values': INSERT rows may come from the event itself

    def plan(self, event: dict[str, str], info: TableInfo) -> list[Action]:
        """The actions one statement event asks for ([] or only NONE: it changes nothing cached)."""
        if (event.get("kind", "stmt") or "stmt") != "stmt" or event.get("err") \
                or event.get("txn") == "rolled_back":
            return []
        if event.get("db") and info.dbname and event["db"] != info.dbname:
            return []
        text = event.get("sql", "")
        if not self._mentions(text, info):
            return []
        return self._plan_all(text, event, info)

    # -- which statements matter ------------------------------------------------------------------------
    @staticmethod
    def _mentions(text: str, info: TableInfo) -> bool:
        lowered = text.lower()
        if "commit prepared" in lowered:
            return True
        return any(re.search(rf"\b{re.escape(name.lower())}\b", lowered) for _, name in info.relations)

    @staticmethod
    def _ours(table: exp.Expression | None, info: TableInfo) -> bool:
        if isinstance(table, exp.Schema):
            table = table.this
        if not isinstance(table, exp.Table):
            return False
        name, schema = table.name, table.db
        return any(name == n and (not schema or schema == s) for s, n in info.relations)

    def _plan_all(self, text: str, event: dict[str, str], info: TableInfo) -> list[Action]:
        if "commit prepared" in text.lower():
            return [ALL]
        statements = _parse(text)
        if statements is None:
            verb = event.get("tag", "").split(" ")[0].upper()
            return [NONE] if verb in ("SELECT", "SHOW", "FETCH", "EXPLAIN") else [ALL]
        rows = _rows_from_tag(event)
        if len(statements) == 1 and rows == 0 and event.get("tag", "").split(" ")[0].upper() in (
                "INSERT", "UPDATE", "DELETE", "COPY", "MERGE"):
            return [NONE]
        return [self._plan(st, event, info) for st in statements]

    def _plan(self, st: exp.Expression, event: dict[str, str], info: TableInfo) -> Action:
        if isinstance(st, exp.Insert) and self._ours(st.this, info):
            return self._plan_insert(st, event, info)
        if isinstance(st, exp.Update) and self._ours(st.this, info) and not st.args.get("from_"):
            return self._plan_update(st, event, info)
        if isinstance(st, exp.Delete) and self._ours(st.this, info):
            return self._plan_delete(st, event, info)
        if isinstance(st, exp.Copy):
            if not (st.args.get("kind") and self._ours(st.this, info)):
                return NONE  # COPY … TO, or another table
            return TAIL_EVERY_DAY if tail_allowed(info) else ALL
        if isinstance(st, exp.TruncateTable):
            return ALL if any(self._ours(t, info) for t in st.expressions) else NONE
        if isinstance(st, (exp.Alter, exp.Drop)):
            return Action("all", shape_changed=True) if self._ours(st.this, info) else NONE
        for node in st.find_all(*_WRITE_NODES):
            target = node.this if not isinstance(node, exp.TruncateTable) else None
            if target is None or self._ours(target, info) or isinstance(node, exp.Merge):
                return ALL
        return NONE

    # -- INSERT -----------------------------------------------------------------------------------------
    def _plan_insert(self, st: exp.Insert, event: dict[str, str], info: TableInfo) -> Action:
        # Rows the statement adds that nothing here can name are found by their new keys (see tail.py).
        fallback = TAIL_EVERY_DAY if tail_allowed(info) and not st.args.get("conflict") else ALL
        values = st.expression
        if not isinstance(values, exp.Values):
            return fallback
        target = st.this
        if isinstance(target, exp.Schema) and target.expressions:
            names = [e.name for e in target.expressions]
        else:
            names = info.names
        if len(set(names)) != len(names) or any(n not in info.names for n in names):
            return fallback
        params = self._params(event)
        ptypes = self._ptypes(event)
        trusted = (self.trust_values and not info.triggers
                   and not st.args.get("conflict") and info.key_unique)
        rows: list[dict[str, Any]] = []
        for tup in values.expressions:
            exprs = tup.expressions if isinstance(tup, exp.Tuple) else [tup]
            if len(exprs) != len(names):
                return fallback
            row: dict[str, Any] = {}
            for name, node in zip(names, exprs, strict=True):
                col = info.column(name)
                raw, oid = self._value(node, params, ptypes, col)
                if raw is _DEFAULT:
                    value = _UNKNOWN if col.has_default else None
                elif raw is _UNKNOWN:
                    value = _UNKNOWN
                else:
                    value = _convert(col, raw, oid)
                row[name] = value
            for col in info.columns:
                if col.name not in row:
                    row[col.name] = _UNKNOWN if col.has_default else None
            rows.append(row)
        key, date = info.key_column, info.date_column
        if trusted and all(v is not _UNKNOWN for r in rows for v in r.values()):
            table = pa.Table.from_pylist(rows, schema=info.plain_schema())
            return Action("rows", rows=table)
        if info.key_unique and rows and all(r[key] is not _UNKNOWN and r[key] is not None for r in rows):
            return Action("reread", keys=[r[key] for r in rows])
        days = {_day_of(r[date]) for r in rows}
        known = {d for d in days if d} if rows and None not in days else None
        if fallback is TAIL_EVERY_DAY:
            return Action("tail", days=known) if known else TAIL_EVERY_DAY
        return Action("days", days=known) if known else ALL

    @staticmethod
    def _params(event: dict[str, str]) -> list[Any]:
        try:
            params = json.loads(event.get("params") or "[]", parse_float=Decimal)
        except ValueError:
            return []
        return params if isinstance(params, list) else []

    @staticmethod
    def _ptypes(event: dict[str, str]) -> list[int]:
        try:
            ptypes = json.loads(event.get("ptypes") or "[]")
        except ValueError:
            return []
        return [int(t) if isinstance(t, (int, str)) and str(t).isdigit() else 0 for t in ptypes] \
            if isinstance(ptypes, list) else []

    def _value(self, node: exp.Expression, params: list[Any], ptypes: list[int],
               col: Column | None = None) -> tuple[Any, int]:
        """A literal or parameter's value and the parameter's type OID (0 when none): else _UNKNOWN.

        A cast is looked through only when it cannot change the value the column ends up with.
        """
        if isinstance(node, exp.Parameter) and isinstance(node.this, exp.Literal) and not node.this.is_string:
            try:
                n = int(node.this.this)
            except ValueError:
                return _UNKNOWN, 0
            if 1 <= n <= len(params):
                return params[n - 1], (ptypes[n - 1] if n <= len(ptypes) else 0)
            return _UNKNOWN, 0
        if isinstance(node, exp.Literal):
            return (node.this if node.is_string else _number(node.this)), 0
        if isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal) and not node.this.is_string:
            value = _number(node.this.this)
            return (-value if value is not _UNKNOWN else _UNKNOWN), 0
        if isinstance(node, exp.Null):
            return None, 0
        if isinstance(node, exp.Boolean):
            return bool(node.this), 0
        if isinstance(node, exp.Var) and node.name.upper() == "DEFAULT":
            return _DEFAULT, 0
        if isinstance(node, exp.Cast) and not node.to.expressions and _cast_keeps(node.to, col):
            return self._value(node.this, params, ptypes, col)
        return _UNKNOWN, 0

    # -- UPDATE / DELETE --------------------------------------------------------------------------------
    def _plan_update(self, st: exp.Update, event: dict[str, str], info: TableInfo) -> Action:
        assigned = {e.this.name for e in st.expressions
                    if isinstance(e, exp.EQ) and isinstance(e.this, exp.Column)}
        if len(assigned) != len(st.expressions):
            return ALL
        where = st.args.get("where")
        keys = self._keys(where.this if where else None, event, info, pure=False)
        if keys is not None and info.key_unique and info.key_column not in assigned:
            return Action("reread", keys=keys)
        if info.date_column not in assigned:
            days = self._where_days(where.this if where else None, event, info)
            if days:
                return Action("days", days=days)
        return ALL

    def _plan_delete(self, st: exp.Delete, event: dict[str, str], info: TableInfo) -> Action:
        where = st.args.get("where")
        cond = where.this if where else None
        if info.key_unique and not st.args.get("using"):
            keys = self._keys(cond, event, info, pure=True)
            if keys is not None:
                return Action("delete", keys=keys)
        keys = self._keys(cond, event, info, pure=False)
        if keys is not None and info.key_unique:
            return Action("reread", keys=keys)
        days = self._where_days(cond, event, info)
        return Action("days", days=days) if days else ALL

    def _conjuncts(self, cond: exp.Expression | None) -> list[exp.Expression]:
        if cond is None:
            return []
        while isinstance(cond, exp.Paren):
            cond = cond.this
        if isinstance(cond, exp.And):
            return self._conjuncts(cond.this) + self._conjuncts(cond.expression)
        return [cond]

    def _column_values(self, pred: exp.Expression, column: str, event: dict[str, str]) -> list[Any] | None:
        """Values v of `column = v`, `column IN (…)`, `column = ANY(array)`; None if not that shape."""
        params, ptypes = self._params(event), self._ptypes(event)

        def is_col(e: exp.Expression) -> bool:
            return isinstance(e, exp.Column) and e.name == column

        values: list[Any] = []
        if isinstance(pred, exp.EQ):
            other = pred.expression if is_col(pred.this) else pred.this if is_col(pred.expression) else None
            if other is None:
                return None
            if isinstance(other, exp.Any):
                inner = other.this.this if isinstance(other.this, exp.Paren) else other.this
                if isinstance(inner, exp.Array):
                    nodes = inner.expressions
                else:
                    value, _ = self._value(inner, params, ptypes)
                    if isinstance(value, str) and value.startswith("{") and value.endswith("}"):
                        value = [v.strip().strip('"') for v in value[1:-1].split(",") if v.strip()]
                    return list(value) if isinstance(value, list) else None
            else:
                nodes = [other]
        elif isinstance(pred, exp.In) and is_col(pred.this) and pred.expressions:
            nodes = pred.expressions
        else:
            return None
        for node in nodes:
            value, _ = self._value(node, params, ptypes)
            if value is _UNKNOWN or value is _DEFAULT or value is None:
                return None
            values.append(value)
        return values

    def _keys(self, cond: exp.Expression | None, event: dict[str, str], info: TableInfo,
              pure: bool) -> list[Any] | None:
        """Keys the WHERE names (key = …, IN, ANY), converted to the key's type; None if it names none.

        ``pure``: the key predicate must be the whole WHERE (so the named rows are exactly the deleted ones).
        """
        if not info.key_column:
            return None
        parts = self._conjuncts(cond)
        col = info.column(info.key_column)
        for pred in parts:
            values = self._column_values(pred, info.key_column, event)
            if values is None:
                continue
            if pure and len(parts) != 1:
                return None
            converted = [_convert(col, v, 0) for v in values]
            if any(v is _UNKNOWN or v is None for v in converted):
                return None
            return converted
        return None

    def _where_days(self, cond: exp.Expression | None, event: dict[str, str], info: TableInfo) -> set[str]:
        """Days pinned by `date_column = …` / IN in the WHERE (empty if it pins none)."""
        col = info.column(info.date_column)
        if col.pg_type != "date":
            return set()
        for pred in self._conjuncts(cond):
            values = self._column_values(pred, info.date_column, event)
            if values is None:
                continue
            days = {_day_of(_convert(col, v, 0)) for v in values}
            if None not in days:
                return {d for d in days if d}
        return set()


def row_days(rows: pa.Table, date_column: str) -> list[datetime.date]:
    """The distinct days of ``rows`` (a date column, or timestamps within the day)."""
    dates = rows.column(date_column)
    if pa.types.is_timestamp(dates.type):
        dates = pc.cast(dates, pa.date32())
    return [d for d in pc.unique(dates).to_pylist() if d is not None]


@dataclass
class _Open:
    """What an open transaction's statements planned, folded."""

    invalidate: set[str] = field(default_factory=set)
    tail: set[str] = field(default_factory=set)
    tail_every_day: bool = False
    everything: bool = False


class OpenTransactions:
    """Writes of transactions still open, by (sid, txid), until their ``txn_end`` says how they ended.

    Only days are remembered, never rows or keys (a transaction may write a lot before it ends): at commit
    the days it inserted into are read for their new rows, the days it otherwise wrote are invalidated,
    and a re-read, delete or unbounded write invalidates everything.
    """

    def __init__(self, limit: int = 10000):
        self._open: OrderedDict[str, _Open] = OrderedDict()
        self.limit = limit

    def remember(self, txid: str, actions: list[Action], info: TableInfo) -> None:
        state = self._open.pop(txid, None) or _Open()
        for a in actions:
            if a.kind == "none":
                continue
            if a.kind == "days":
                state.invalidate |= a.days
            elif a.kind == "rows" and a.rows is not None:
                days = {d.isoformat() for d in row_days(a.rows, info.date_column)}
                (state.tail if tail_allowed(info) else state.invalidate).update(days)
            elif a.kind == "tail":
                state.tail |= a.days
                state.tail_every_day |= not a.days
            else:
                state.everything = True
        self._open[txid] = state
        while len(self._open) > self.limit:  # the oldest, whose end was never seen, are forgotten
            self._open.popitem(last=False)

    def finish(self, txid: str, committed: bool) -> list[Action]:
        """The actions a transaction's end calls for ([] if it wrote nothing cached or did not commit)."""
        state = self._open.pop(txid, None)
        if state is None or not committed:
            return []
        if state.everything:
            return [ALL]
        out = [Action("days", days=state.invalidate)] if state.invalidate else []
        if state.tail_every_day:
            out.append(TAIL_EVERY_DAY)
        elif state.tail - state.invalidate:
            out.append(Action("tail", days=state.tail - state.invalidate))
        return out


_DEFAULT = object()


_INTS = {exp.DataType.Type.INT, exp.DataType.Type.BIGINT, exp.DataType.Type.SMALLINT}
_CASTS: dict[str, set[exp.DataType.Type]] = {
    "decimal": {exp.DataType.Type.DECIMAL, *_INTS},
    "integer": _INTS,
    "date": {exp.DataType.Type.DATE},
    "string": {exp.DataType.Type.TEXT, exp.DataType.Type.VARCHAR},
    "bool": {exp.DataType.Type.BOOLEAN},
}


def _cast_keeps(to: exp.DataType, col: Column | None) -> bool:
    """A cast to ``to`` then into ``col`` stores the same value as the uncast literal would."""
    if col is None:
        return False
    t = col.arrow
    kind = ("decimal" if pa.types.is_decimal(t) else "integer" if pa.types.is_integer(t)
            else "date" if pa.types.is_date32(t) else "string" if pa.types.is_string(t)
            else "bool" if pa.types.is_boolean(t) else "")
    return to.this in _CASTS.get(kind, set())


def _number(text: str) -> Any:
    try:
        return int(text) if re.fullmatch(r"[0-9]+", text) else Decimal(text)
    except (InvalidOperation, ValueError):
        return _UNKNOWN


def _day_of(value: Any) -> str | None:
    if isinstance(value, datetime.datetime):
        return value.date().isoformat()
    if isinstance(value, datetime.date):
        return value.isoformat()
    return None


def _convert(col: Column, value: Any, oid: int) -> Any:
    """A value as PostgreSQL would store it in ``col``, exactly; _UNKNOWN when we cannot be sure."""
    if value is None or value is _UNKNOWN:
        return value
    t = col.arrow
    try:
        if pa.types.is_integer(t) and not isinstance(value, bool):
            number = Decimal(str(value).strip())
            if number != number.to_integral_value():
                return _UNKNOWN
            return int(number)
        if pa.types.is_decimal(t) and not isinstance(value, bool) and oid not in _FLOAT_OIDS:
            number = Decimal(str(value).strip())
            if not number.is_finite():
                return _UNKNOWN
            rounded = number.quantize(Decimal(1).scaleb(-t.scale), rounding=ROUND_HALF_UP)
            digits = len(rounded.as_tuple().digits)
            if digits > t.precision and rounded != 0:
                return _UNKNOWN
            return rounded
        if pa.types.is_date32(t):
            if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
                return value
            if isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value.strip()):
                return datetime.date.fromisoformat(value.strip())
            return _UNKNOWN
        if pa.types.is_boolean(t):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            return {"t": True, "true": True, "f": False, "false": False}.get(text, _UNKNOWN)
        if pa.types.is_float64(t) and isinstance(value, (int, Decimal)) and not isinstance(value, bool):
            return float(value)
        if pa.types.is_string(t) and col.pg_type in ("text", "varchar", "name") and isinstance(value, str):
            return value
    except (InvalidOperation, ValueError, TypeError):
        return _UNKNOWN
    return _UNKNOWN
