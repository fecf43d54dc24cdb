"""Reading only the rows a cached day lacks, instead of the whole day.

A ledger is append-mostly and its keys come from a sequence, so the rows an INSERT, INSERT … SELECT or
COPY added to a cached day are, nearly always, the day's rows whose key is above the cached maximum. One
REPEATABLE READ transaction (one snapshot) reads those rows and, beside them, the day's row count and key
sum. The tail is patched in only if the cached rows and the tail together have that count and that sum.

The check is what makes "nearly always" safe. Sequence values are handed out in one order and committed
in another: a transaction holding key 100 may commit after one holding key 101 was read, and a row can
come with an explicit key below the maximum. Either way the day then has a row the cache neither holds
nor can find above its maximum, the count or the sum disagrees, and the day is invalidated (loaded whole
on its next read) as before. Updates and deletes have their own events; one the cache has not applied
yet also makes the check fail, which is the safe side. The check scans the day's rows in the index on the
date column (an index on (date column, key column) makes it index-only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from .catalog import TableInfo, day_predicate, table_ident
from .load import DictPolicy, read_where

_EXACT = 1 << 62  # an int64 sum of keys is exact while |max key| × rows stays below this


@dataclass(frozen=True)
class Holding:
    """What the cache holds of a day, as the check needs it."""

    rows: int
    key_sum: int | None  # None: too large to add exactly in int64 (the check then fails)
    key_max: int | None  # None: the day is empty


@dataclass(frozen=True)
class Tail:
    """A day's rows above a key, and the whole day's row count and key sum, from one snapshot."""

    rows: pa.Table
    day_rows: int
    day_key_sum: int


def holding_of(table: pa.Table, key: str) -> Holding:
    """The day's row count, key sum and key maximum as cached."""
    keys = table.column(key)
    if table.num_rows == 0:
        return Holding(0, 0, None)
    low, high = pc.min_max(keys).values()
    largest = max(abs(low.as_py()), abs(high.as_py()))
    total = pc.sum(keys.cast(pa.int64())).as_py() if largest * table.num_rows < _EXACT else None
    return Holding(table.num_rows, total, high.as_py())


def key_sum(rows: pa.Table, key: str) -> int | None:
    """Sum of the keys of a tail (None when it could overflow)."""
    return holding_of(rows, key).key_sum


def complete(held: Holding, tail: Tail, key: str) -> bool:
    """The cached day plus the tail is the day in the tail's snapshot (by count and key sum)."""
    added = key_sum(tail.rows, key)
    if held.key_sum is None or added is None:
        return False
    return (held.rows + tail.rows.num_rows == tail.day_rows
            and held.key_sum + added == tail.day_key_sum)


def read_tail(conn: psycopg.Connection, info: TableInfo, day: str, above: Any) -> Tail:
    """Rows of ``day`` whose key is above ``above`` (all of them if None) and the day's count and key
    sum, in one snapshot; on a long-lived connection in autocommit, left as it was found."""
    key = sql.Identifier(info.key_column)
    where = day_predicate(info, day)
    if above is not None:
        where = sql.SQL("{} AND {} > {}").format(where, key, sql.Literal(above))
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    try:
        counted = conn.execute(sql.SQL("SELECT count(*), coalesce(sum({}), 0) FROM {} WHERE {}").format(
            key, table_ident(info), day_predicate(info, day))).fetchone()
        rows = read_where(conn, info, where, DictPolicy("none"))
    finally:
        conn.execute("ROLLBACK")  # read only: nothing to keep
    assert counted is not None
    return Tail(rows, int(counted[0]), int(counted[1]))
