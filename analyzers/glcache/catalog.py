"""The ledger table's columns from the catalog, mapped to Arrow types and to the COPY select list.

Types come from pg_attribute (with atttypmod), so NUMERIC(p, s) becomes decimal128(p, s) exactly and
nothing is guessed from the data. Each column also gets the SQL expression that makes its CSV text one
pyarrow parses exactly (e.g. timestamptz read as UTC wall time).
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
import pyarrow as pa
from psycopg import sql

STRING = pa.string()
DICT = pa.dictionary(pa.int32(), pa.string())

_SIMPLE: dict[str, pa.DataType] = {
    "int2": pa.int16(), "int4": pa.int32(), "int8": pa.int64(), "oid": pa.uint32(),
    "float4": pa.float32(), "float8": pa.float64(), "bool": pa.bool_(), "date": pa.date32(),
    "timestamp": pa.timestamp("us"), "timestamptz": pa.timestamp("us", tz="UTC"), "time": pa.time64("us"),
}
_TEXT = {"text", "varchar", "bpchar", "name", "citext"}


class CatalogError(Exception):
    """The table or one of its named columns does not exist."""


@dataclass(frozen=True)
class Column:
    """One column: Arrow type of the cached data, the type pyarrow's CSV reader parses, SQL expression."""

    name: str
    pg_type: str
    arrow: pa.DataType
    parse: pa.DataType
    expr: sql.Composable
    text: bool
    numeric_unconstrained: bool = False
    has_default: bool = False


@dataclass(frozen=True)
class TableInfo:
    """What a load needs to know about the table: qualified name, columns in order, the date column."""

    qualified: str
    columns: tuple[Column, ...]
    date_column: str
    key_column: str
    schema: str = "public"
    name: str = ""
    relations: frozenset[tuple[str, str]] = frozenset()
    """(schema, name) of the table and its partitions: statements on any of them change the ledger."""
    triggers: bool = False
    """User triggers or rules may change what a statement writes: never trust an event's values."""
    dbname: str = ""
    key_unique: bool = False
    """The key column has a unique index of its own, so patches may replace rows by key."""
    kind: str = "r"
    """pg_class.relkind: only a plain table ('r') has the physical row addresses a split load divides by."""
    date_indexed: bool = False
    """A valid btree index leads with the date column: a day's first and last row are found in it cheaply."""

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def plain_schema(self) -> pa.Schema:
        """Schema with strings undictionaried (what patches and events are built in)."""
        return pa.schema([pa.field(c.name, c.arrow) for c in self.columns])


def _column(name: str, typname: str, typmod: int, has_default: bool = False) -> Column:
    ident = sql.Identifier(name)
    if typname == "numeric":
        if typmod >= 4:
            precision, scale = ((typmod - 4) >> 16) & 0xFFFF, (typmod - 4) & 0xFFFF
            arrow = pa.decimal128(precision, scale) if precision <= 38 else pa.decimal256(precision, scale)
            return Column(name, typname, arrow, arrow, ident, False, has_default=has_default)
        return Column(name, typname, STRING, STRING, ident, False, numeric_unconstrained=True,
                      has_default=has_default)
    if typname == "timestamptz":
        expr = sql.SQL("({} AT TIME ZONE 'UTC')").format(ident)
        return Column(name, typname, _SIMPLE[typname], pa.timestamp("us"), expr, False,
                      has_default=has_default)
    if typname in _SIMPLE:
        return Column(name, typname, _SIMPLE[typname], _SIMPLE[typname], ident, False,
                      has_default=has_default)
    return Column(name, typname, STRING, STRING, ident, typname in _TEXT, has_default=has_default)


def describe(conn: psycopg.Connection, table: str, date_column: str, key_column: str = "") -> TableInfo:
    """Read the table's columns (in attnum order) from the catalog; raise CatalogError if missing."""
    row = conn.execute(
        """SELECT c.oid, c.oid::regclass::text, n.nspname, c.relname, current_database(), c.relkind
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.oid = to_regclass(%s)""", (table,)).fetchone()
    if row is None:
        raise CatalogError(f"table {table!r} does not exist")
    oid, qualified, schema, name, dbname, kind = row
    rows = conn.execute(
        """SELECT a.attname, t.typname, a.atttypmod,
                  a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> ''
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
            WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
            ORDER BY a.attnum""",
        (oid,),
    ).fetchall()
    columns = tuple(_column(*r) for r in rows)
    names = {c.name for c in columns}
    if date_column not in names:
        raise CatalogError(f"table {qualified} has no column {date_column!r}")
    if key_column and key_column not in names:
        raise CatalogError(f"table {qualified} has no key column {key_column!r}")
    relations = conn.execute(
        """WITH RECURSIVE tree(oid) AS (SELECT %s::oid UNION SELECT i.inhrelid FROM pg_inherits i
                                       JOIN tree ON i.inhparent = tree.oid)
           SELECT n.nspname, c.relname FROM tree JOIN pg_class c ON c.oid = tree.oid
             JOIN pg_namespace n ON n.oid = c.relnamespace""", (oid,)).fetchall()
    triggers = conn.execute(
        """SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = %s AND NOT tgisinternal)
               OR EXISTS (SELECT 1 FROM pg_rewrite WHERE ev_class = %s AND rulename <> '_RETURN')""",
        (oid, oid)).fetchone()
    unique = False
    if key_column:
        found = conn.execute(
            """SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a
                                ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                               WHERE i.indrelid = %s AND i.indisunique AND i.indnkeyatts = 1
                                 AND i.indpred IS NULL AND a.attname = %s)""", (oid, key_column)).fetchone()
        unique = bool(found and found[0])
    indexed = conn.execute(
        """SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                            JOIN pg_am am ON am.oid = ic.relam
                            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                           WHERE i.indrelid = %s AND i.indisvalid AND i.indpred IS NULL
                             AND am.amname = 'btree' AND a.attname = %s)""", (oid, date_column)).fetchone()
    return TableInfo(qualified, columns, date_column, key_column, schema, name,
                     frozenset((s, n) for s, n in relations), bool(triggers and triggers[0]), dbname, unique,
                     str(kind), bool(indexed and indexed[0]))


def day_predicate(info: TableInfo, day: str) -> sql.Composable:
    """WHERE clause for one day; a timestamp date column is matched by range so its index still works."""
    col = info.column(info.date_column)
    ident = sql.Identifier(info.date_column)
    if col.pg_type in ("timestamp", "timestamptz"):
        return sql.SQL("{} >= {}::date AND {} < {}::date + 1").format(ident, sql.Literal(day), ident,
                                                                      sql.Literal(day))
    return sql.SQL("{} = {}::date").format(ident, sql.Literal(day))


def table_ident(info: TableInfo) -> sql.Composable:
    return sql.SQL(".").join(sql.Identifier(p) for p in _split(info.qualified))


def _split(qualified: str) -> list[str]:
    """Split a regclass text (possibly quoted) into its parts."""
    parts, cur, quoted, i = [], [], False, 0
    while i < len(qualified):
        ch = qualified[i]
        if quoted:
            if ch == '"' and i + 1 < len(qualified) and qualified[i + 1] == '"':
                cur.append('"')
                i += 1
            elif ch == '"':
                quoted = False
            else:
                cur.append(ch)
        elif ch == '"':
            quoted = True
        elif ch == ".":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def _select(info: TableInfo, omit: tuple[str, ...] = ()) -> sql.Composable:
    return sql.SQL(", ").join(
        c.expr if c.expr == sql.Identifier(c.name)
        else sql.SQL("{} AS {}").format(c.expr, sql.Identifier(c.name))
        for c in info.columns if c.name not in omit
    )


def copy_query(info: TableInfo, where: sql.Composable, omit: tuple[str, ...] = ()) -> sql.Composable:
    """COPY of the selected rows in text format, with an empty first column that absorbs each CopyData header.

    Text, not CSV: the server's text output is one pass per value (CSV scans each value twice to decide on
    quoting), so the server spends less time on it, and values never hold a raw newline.
    ``omit`` leaves out columns whose value the caller already knows (the day of a date column).
    """
    return sql.SQL("COPY (SELECT '', {} FROM {} WHERE {}) TO STDOUT").format(
        _select(info, omit), table_ident(info), where)
