"""One day over several COPY connections that share one snapshot, so the server formats on several cores.

The server's text output (numeric and date formatting above all) runs on one core per backend and is most
of a cold load's time; two backends halve it when the cores are there. The day is split by physical row
address (ctid) ranges: each backend then scans only its pages (PostgreSQL's TID range scan), the ranges come
from the day's first and last row in the date index (two index probes, no scan), and concatenating the
ranges in order gives the rows in the same physical order as one COPY. The first range is open below and
the last open above, so every row of the day is read whatever the probes found (they only set the balance).

Consistency: the first connection opens a REPEATABLE READ transaction and exports its snapshot, the others
import it (``SET TRANSACTION SNAPSHOT``) before any COPY starts, so all ranges see one point in time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import psycopg
from psycopg import sql

from .catalog import TableInfo, copy_query, day_predicate, table_ident

MIN_PAGES = 512
"""Fewest heap pages (8 kB each, ~4 MB) a range must span: below that an extra backend costs more than it saves."""

_BEGIN = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"


def splittable(info: TableInfo) -> bool:
    """Only a plain table has row addresses to divide by (views, foreign and partitioned tables load whole)."""
    return info.kind == "r"


def _edges(info: TableInfo, day: str) -> sql.Composable:
    """First and last heap page holding the day, from the date index when there is one, else the table."""
    col = sql.Identifier(info.date_column)
    table = table_ident(info)
    if not info.date_indexed:
        return sql.SQL("0::bigint, pg_relation_size({}::regclass) / current_setting('block_size')::bigint - 1"
                       ).format(sql.Literal(info.qualified))
    # A range rather than `=` so ORDER BY is not dropped as redundant: the index is then read forward and
    # backward, one entry each (equal keys are kept in row-address order, so these are the day's edges).
    edge = sql.SQL("(SELECT (ctid::text::point)[0]::bigint FROM {} WHERE {} >= {}::date AND {} < {}::date + 1 "
                   "ORDER BY {} {} LIMIT 1)")
    day_lit = sql.Literal(day)
    return sql.SQL(", ").join(edge.format(table, col, day_lit, col, day_lit, col, sql.SQL(order))
                              for order in ("ASC", "DESC"))


def ranges(first: int | None, last: int | None, parts: int, min_pages: int = MIN_PAGES) -> list[tuple[int, int]]:
    """Page boundaries [start, stop) for up to ``parts`` ranges over first..last; -1 means unbounded."""
    if first is None or last is None or last < first:
        return [(-1, -1)]
    span = last - first + 1
    parts = max(1, min(parts, span // max(1, min_pages)))
    cuts = [first + span * k // parts for k in range(1, parts)]
    return list(zip([-1, *cuts], [*cuts, -1], strict=True))


def _where(info: TableInfo, day: str, start: int, stop: int) -> sql.Composable:
    where = day_predicate(info, day)
    if start >= 0:
        where = sql.SQL("{} AND ctid >= {}::tid").format(where, sql.Literal(f"({start},0)"))
    if stop >= 0:
        where = sql.SQL("{} AND ctid < {}::tid").format(where, sql.Literal(f"({stop},0)"))
    return where


def open_split(open_conn: Callable[[], psycopg.Connection], info: TableInfo, day: str, connections: int,
               omit: tuple[str, ...], pool: ThreadPoolExecutor,
               min_pages: int = MIN_PAGES) -> list[tuple[psycopg.Connection, bytes]]:
    """Connections in one snapshot, each with the COPY of its range (in row order), ready to send.

    The other connections are opened on ``pool`` while the first plans; those the day turns out too small
    for are closed again. On failure every connection is closed.
    """
    pending: list[Future[psycopg.Connection]] = [pool.submit(open_conn) for _ in range(connections - 1)]
    conns: list[psycopg.Connection] = []
    try:
        first = open_conn()
        conns.append(first)
        first.execute(_BEGIN)
        row = first.execute(sql.SQL("SELECT pg_export_snapshot(), {}").format(_edges(info, day))).fetchone()
        assert row is not None
        snapshot, lo, hi = row
        bounds = ranges(lo, hi, connections, min_pages)
        while pending:
            conns.append(pending.pop(0).result())
        used = conns[:len(bounds)]
        for conn in conns[len(bounds):]:
            conn.close()
        importing = sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot))
        for done in [pool.submit(_import, conn, importing) for conn in used[1:]]:
            done.result()
        return [(conn, copy_query(info, _where(info, day, start, stop), omit).as_bytes(conn))
                for conn, (start, stop) in zip(used, bounds, strict=True)]
    except BaseException:
        for f in pending:
            with contextlib.suppress(BaseException):
                conns.append(f.result())
        for conn in conns:
            conn.close()
        raise


def _import(conn: psycopg.Connection, importing: sql.Composable) -> None:
    """Join the first connection's snapshot: must be the transaction's first statement."""
    conn.execute(_BEGIN)
    conn.execute(importing)
